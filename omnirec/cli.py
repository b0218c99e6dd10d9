"""`omnirec` command line: one entry point, a sub-command per job."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from omnirec.config import OmnirecConfig

app = typer.Typer(help="omnirec: recommendations and personalised offers for omnichannel retailers.",
                  no_args_is_help=True, add_completion=False)
console = Console()
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML config file (default: $OMNIREC_CONFIG).")]


def _setup(config: Path | None) -> OmnirecConfig:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return OmnirecConfig.load(config)


@app.command()
def simulate(
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the config's data_dir).")] = None,
    members: Annotated[int, typer.Option(help="Members to simulate.")] = 1_000,
    items: Annotated[int, typer.Option(help="Items in the catalogue.")] = 500,
    stores: Annotated[int | None, typer.Option(help="Physical stores (default scales with members).")] = None,
    days: Annotated[int, typer.Option(help="Days of history.")] = 365,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 0,
    channels: Annotated[str, typer.Option(help="Comma-separated channels to simulate.")] =
        "app,mini_program,web,pos,store",
    config: ConfigOpt = None,
) -> None:
    """Generate a seeded omnichannel retailer (members, items, stores, stock, events, coupons) as Parquet."""
    from pydantic import ValidationError

    from simulator import SimulationConfig
    from simulator import simulate as run

    cfg = _setup(config)
    try:
        sim = SimulationConfig(n_members=members, n_items=items, n_stores=stores, days=days, seed=seed,
                               channels=channels, tiers=cfg.tiers)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise typer.BadParameter(_first_error(exc)) from None
    summary = run(sim, out or cfg.data_dir, rules=cfg.lifecycle)
    print_summary(summary)


def _first_error(exc: Exception) -> str:
    errors = exc.errors()  # type: ignore[attr-defined]
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)


def print_summary(summary: object) -> None:
    s = summary
    table = Table(title=f"Simulated retailer in {s.out_dir} ({s.seconds:.1f}s)")  # type: ignore[attr-defined]
    table.add_column("what")
    table.add_column("count", justify="right")
    for label, value in [("members", s.members), ("items", s.items), ("stores", s.stores),  # type: ignore
                         ("events", s.events), ("coupon exposures", s.exposures)]:  # type: ignore
        table.add_row(label, f"{value:,}")
    for title, counter in [("event", s.by_event_type), ("channel", s.by_channel), ("tier", s.tiers),  # type: ignore
                           ("stage", s.stages)]:  # type: ignore
        for key, value in counter.most_common():
            table.add_row(f"{title}: {key}", f"{value:,}")
    console.print(table)


@app.command()
def demo(config: ConfigOpt = None) -> None:
    """Run the main job end to end on embedded defaults: simulate a 1,000-member retailer and summarise it."""
    cfg = _setup(config)
    from simulator import SimulationConfig
    from simulator import simulate as run

    print_summary(run(SimulationConfig(tiers=cfg.tiers), cfg.data_dir, rules=cfg.lifecycle))


if __name__ == "__main__":
    app()
