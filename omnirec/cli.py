"""`omnirec` command line: one entry point, a sub-command per job.

Each command imports what it runs inside its body, so `omnirec --help` or `omnirec serve` never loads the
training libraries (implicit, LightFM) or the simulator.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from omnirec import campaign_cli, logs
from omnirec.config import OmnirecConfig

if TYPE_CHECKING:
    from omnirec.feature_store.materialize import MemberListSource
    from omnirec.simulator.run import SimulationSummary

app = typer.Typer(help="omnirec: recommendations and personalised offers for omnichannel retailers.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()
log = logging.getLogger("omnirec.jobs")
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML config file (default: $OMNIREC_CONFIG).")]
AsOfOpt = Annotated[str | None, typer.Option(
    "--as-of", help="Compute at this time: ISO date/time or unix seconds (default: the config's as_of, else now).")]
_debug = {"on": False}
"""Set by `--debug`; read once, by `main`, when a command fails."""


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False) -> None:
    _debug["on"] = debug


def main(argv: list[str] | None = None) -> None:
    """The `omnirec` entry point: a user error (bad input, missing file, invalid config or data) prints one
    line and exits 1; the traceback only with `--debug`."""
    from pydantic import ValidationError

    from omnirec.domain.errors import OmnirecError

    try:
        app(args=sys.argv[1:] if argv is None else argv, prog_name="omnirec")
    except (OmnirecError, FileNotFoundError, ValidationError) as exc:
        if _debug["on"]:
            raise
        message = _first_error(exc) if isinstance(exc, ValidationError) else str(exc)
        print(f"omnirec: error: {message} (--debug for details)", file=sys.stderr)
        raise SystemExit(1) from None


def _setup(config: Path | None) -> OmnirecConfig:
    cfg = OmnirecConfig.load(config)
    logs.setup(cfg.logging)
    return cfg


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

    from omnirec.simulator import SimulationConfig
    from omnirec.simulator import simulate as run

    cfg = _setup(config)
    try:
        sim = SimulationConfig(n_members=members, n_items=items, n_stores=stores, days=days, seed=seed,
                               channels=channels, tiers=cfg.tiers)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise typer.BadParameter(_first_error(exc)) from None
    summary = run(sim, out or cfg.data_dir, rules=cfg.lifecycle)
    logs.stage_done(log, "simulate", "total", summary.seconds, members=summary.members, events=summary.events)
    print_summary(summary)


def _first_error(exc: Exception) -> str:
    errors = exc.errors()  # type: ignore[attr-defined]
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)


def print_summary(s: SimulationSummary) -> None:
    table = Table(title=f"Simulated retailer in {s.out_dir} ({s.seconds:.1f}s)")
    table.add_column("what")
    table.add_column("count", justify="right")
    for label, value in [("members", s.members), ("items", s.items), ("stores", s.stores),
                         ("events", s.events), ("coupon exposures", s.exposures)]:
        table.add_row(label, f"{value:,}")
    for title, counter in [("event", s.by_event_type), ("channel", s.by_channel), ("tier", s.tiers),
                           ("stage", s.stages)]:
        for key, value in counter.most_common():
            table.add_row(f"{title}: {key}", f"{value:,}")
    console.print(table)


@app.command()
def serve(
    workers: Annotated[int | None, typer.Option(help="Worker processes sharing the port (default: config).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default: config).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Serve the gRPC API (recommendations, events, admin) until SIGTERM; hot-swaps newly published models."""
    from omnirec.service.server import run

    cfg = _setup(config)
    overrides = {k: v for k, v in (("workers", workers), ("port", port)) if v is not None}
    if overrides:
        service = type(cfg.service).model_validate({**cfg.service.model_dump(), **overrides})
        cfg = cfg.model_copy(update={"service": service})
    code = run(cfg)
    if code:
        raise typer.Exit(code)


@app.command()
def demo(config: ConfigOpt = None) -> None:
    """Run the main job end to end on embedded defaults: simulate -> train -> publish -> materialize -> serve,
    then answer a sample request with examples/client.py and shut the server down."""
    cfg = _setup(config)
    from omnirec.feature_store.embedded import embedded
    from omnirec.feature_store.materialize import materialize as load_features
    from omnirec.service.demo import serve_demo
    from omnirec.simulator import SimulationConfig
    from omnirec.simulator import simulate as run
    from omnirec.training.pipeline import print_summary as print_training
    from omnirec.training.pipeline import train as run_training
    from omnirec.training.publish import publish_version

    print_summary(run(SimulationConfig(tiers=cfg.tiers), cfg.data_dir, rules=cfg.lifecycle))
    result = run_training(cfg.data_dir, cfg.train, publish=False)
    print_training(result, console)
    # The demo publishes even a model that does not beat popularity, so the serving step has one to serve.
    console.print(f"published v{publish_version(cfg.train.bundle_root, result.version, force=True)}")
    with embedded(cfg.redis) as redis_config:  # started for the demo, stopped (and saved) when it ends
        cfg = cfg.model_copy(update={"redis": redis_config})
        loaded = load_features(cfg.data_dir, cfg.redis, cfg.tiers, cfg.lifecycle, progress=False,
                               member_lists=_member_lists(cfg))
        console.print(f"materialised {loaded.load.members:,} members into generation {loaded.load.generation}")
        code = serve_demo(cfg)
    if code:
        raise typer.Exit(code)


@app.command()
def train(
    data: Annotated[Path | None, typer.Option(help="Retailer files to train on (default: the config's data_dir).")]
        = None,
    bundles: Annotated[Path | None, typer.Option(help="Bundle root (default: the config's train.bundle_root).")]
        = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: config); same seed, same metrics.")] = None,
    publish: Annotated[bool, typer.Option(help="Publish the new bundle when it passes the publish gate.")] = True,
    force: Annotated[bool, typer.Option("--force", help="Publish even if the publish gate refuses.")] = False,
    as_of: AsOfOpt = None,
    engine: Annotated[str | None, typer.Option(help="Fit ALS with `local` (implicit) or `spark` (MLlib; needs "
                                                    "pyspark and Java) (default: the config's train.engine).")]
        = None,
    config: ConfigOpt = None,
) -> None:
    """Train every model, evaluate on a time split, write the next versioned bundle and publish it."""
    from pydantic import ValidationError

    from omnirec.training.pipeline import print_summary as print_training
    from omnirec.training.pipeline import train as run

    cfg = _setup(config)
    overrides = {k: v for k, v in (("bundle_root", bundles), ("seed", seed), ("engine", engine)) if v is not None}
    try:
        train_cfg = type(cfg.train).model_validate(cfg.train.model_dump() | overrides)
    except ValidationError as exc:
        raise typer.BadParameter(_first_error(exc)) from None
    result = run(data or cfg.data_dir, train_cfg, force=force, publish=publish, spark=cfg.spark,
                 as_of=_as_of_ts(as_of, cfg), rules=cfg.lifecycle)
    logs.job_done(log, "train", result.seconds, model_version=str(result.version))
    print_training(result, console)
    if publish and not result.published:
        reason = result.gate.reason() if result.gate is not None else "the model does not beat popularity"
        console.print(f"[red]v{result.version} not published: {reason} (use --force)[/red]")
        raise typer.Exit(code=1)


@app.command()
def publish(
    version: Annotated[int | None, typer.Option(help="Bundle version to publish (default: the newest).")] = None,
    bundles: Annotated[Path | None, typer.Option(help="Bundle root (default: the config's train.bundle_root).")]
        = None,
    force: Annotated[bool, typer.Option("--force", help="Publish even if the bundle's publish gate refused it.")]
        = False,
    config: ConfigOpt = None,
) -> None:
    """Point `current` at a bundle version atomically; the service hot-swaps to it."""
    from omnirec.training.publish import publish_version

    cfg = _setup(config)
    published = publish_version(bundles or cfg.train.bundle_root, version, force=force)
    console.print(f"published v{published}")


@app.command()
def materialize(
    data: Annotated[Path | None, typer.Option(help="Folder with the retail Parquet files (default: data_dir).")] = None,
    as_of: AsOfOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar while loading.")] = True,
    engine: Annotated[str, typer.Option(help="`local` (this process) or `spark` (features computed on Spark and "
                                             "written by its executors; needs pyspark, Java and a Redis URL).")]
        = "local",
    config: ConfigOpt = None,
) -> None:
    """Load member, item and stock features from the event log into Redis as a new generation, then switch to it."""
    from omnirec.feature_store.embedded import embedded

    cfg = _setup(config)
    lists = _member_lists(cfg)
    if engine == "spark":
        from omnirec.feature_store.spark import materialize_spark

        s = materialize_spark(data or cfg.data_dir, cfg.redis, cfg.spark, cfg.tiers, cfg.lifecycle,
                              now=_as_of_ts(as_of, cfg), member_lists=lists)
    elif engine == "local":
        from omnirec.feature_store.materialize import materialize as run

        with embedded(cfg.redis) as redis_config:
            s = run(data or cfg.data_dir, redis_config, cfg.tiers, cfg.lifecycle, now=_as_of_ts(as_of, cfg),
                    progress=progress, member_lists=lists)
    else:
        raise typer.BadParameter(f"--engine must be local or spark, not {engine!r}")
    logs.job_done(log, "materialize", {"read": s.read_seconds, "compute": s.compute_seconds, "load": s.load.seconds},
                  generation=s.load.generation, members=s.load.members)
    table = Table(title=f"Materialised generation {s.load.generation} into {cfg.redis.url or cfg.redis.embedded_path}")
    table.add_column("what")
    table.add_column("value", justify="right")
    for label, value in [("members", f"{s.load.members:,}"), ("items", f"{s.load.items:,}"),
                         ("commands", f"{s.load.commands:,}"),
                         ("read + compute", f"{s.read_seconds + s.compute_seconds:.2f} s"),
                         ("load + switch", f"{s.load.seconds:.2f} s"),
                         ("members/s (load)", f"{s.load.members_per_s:,.0f}"),
                         ("members/s (end to end)", f"{s.end_to_end_members_per_s:,.0f}"),
                         ("previous generation expiring", str(s.load.previous_generation)),
                         ("member lists (member state in the store)",
                          f"bundle v{lists.bundle_version}" if lists is not None else "no")]:
        table.add_row(label, value)
    console.print(table)


@app.command("migrate-durable")
def migrate_durable(config: ConfigOpt = None) -> None:
    """Move wallets, ledgers, budgets, links and the pointer from the v1 durable layout to v2 (hash-tagged for
    Redis Cluster); run with the service and materialisation stopped (feature_store/FORMAT.md)."""
    from omnirec.feature_store.connection import connect
    from omnirec.feature_store.embedded import embedded
    from omnirec.feature_store.migrate import migrate_durable_v1

    cfg = _setup(config)
    with embedded(cfg.redis) as redis_config:
        client = connect(redis_config, socket_timeout_s=30.0)
        report = migrate_durable_v1(client, redis_config.namespace)
        client.close()
    console.print(f"moved {report.moved:,} durable records to v2; {report.skipped_claims:,} v1 dedup claims left to "
                  f"expire; {report.conflicts:,} kept because their v2 key already existed")


def _member_lists(cfg: OmnirecConfig) -> MemberListSource | None:
    """The published bundle's member lists when its member count is above `[service]
    member_state_in_store_above` (replicas then read them from the store); None otherwise."""
    from omnirec.bundle import BundleRegistry
    from omnirec.bundle.reader import member_count
    from omnirec.feature_store.materialize import MemberListSource
    from omnirec.service.config import member_state_in_store

    path = BundleRegistry(cfg.train.bundle_root).current_path()
    if path is None or not member_state_in_store(cfg.service, member_count(path)):
        return None
    return MemberListSource.from_path(path, cfg.service.member_state_top_k)


@app.command("train-uplift")
def train_uplift(
    data: Annotated[Path | None, typer.Option(help="Folder with the retail and coupon exposure Parquet files.")] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write uplift_model.npz and uplift_scores.npz "
                                                  "(default: beside offers.uplift_path, else data_dir).")] = None,
    as_of: AsOfOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Train the coupon uplift model (T-learner) on logged exposures and score every member for the service."""
    from omnirec.offers.uplift import train_uplift as run

    cfg = _setup(config)
    dest = out or (cfg.offers.uplift_path.parent if cfg.offers.uplift_path else cfg.data_dir)
    scores = run(data or cfg.data_dir, dest, cfg.tiers, as_of=_as_of_ts(as_of, cfg))
    lift = scores.p_treated - scores.p_control
    console.print(f"uplift model {scores.model_version}: {len(lift):,} members scored into {dest}; "
                  f"mean estimated uplift {lift.mean():+.3f}, share positive {(lift > 0).mean():.0%}. "
                  f"Set offers.uplift_path = {dest / 'uplift_scores.npz'} to use it.")



@app.command("import")
def import_(
    mapping: Annotated[str, typer.Argument(help="Mapping TOML file, or the name of a shipped mapping "
                                                 "(completejourney).")],
    out: Annotated[Path | None, typer.Option(help="Data directory to write (default: the config's data_dir).")]
        = None,
    source: Annotated[Path | None, typer.Option(help="Folder the mapping's paths are relative to (default: the "
                                                     "mapping file's folder; the installed data set for a "
                                                     "shipped mapping).")] = None,
    as_of: AsOfOpt = None,
    strict: Annotated[bool, typer.Option("--strict", help="Write nothing if any row fails a check.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Write into a folder that holds other files.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Import a retailer's export (CSV or Parquet) into the data directory, checking every row."""
    from omnirec.importer import ImportFailed, Mapping, import_data, shipped_mapping
    from omnirec.importer import completejourney as cj

    cfg = _setup(config)
    path = shipped_mapping(mapping) if not mapping.endswith(".toml") else None
    if path is not None:
        source = source or (cj.data_dir() if mapping == cj.NAME else path.parent)
    else:
        path = Path(mapping)
        source = source or path.parent
    try:
        result = import_data(Mapping.load(path), source, out or cfg.data_dir, cfg.tiers, cfg.lifecycle,
                             as_of=_as_of(as_of, cfg), strict=strict, force=force)
    except ImportFailed as exc:
        typer.echo(exc.report.render(), err=True)
        raise
    typer.echo(result.report.render())
    logs.stage_done(log, "import", "total", result.seconds, events=result.events, members=result.members)
    console.print(f"imported {result.events:,} events, {result.members:,} members, {result.items:,} items into "
                  f"{result.out_dir} in {result.seconds:.1f} s; newest event {result.newest_event:%Y-%m-%d %H:%M}")


def _as_of(value: str | None, cfg: OmnirecConfig) -> datetime | None:
    from omnirec.domain.clock import parse_time

    return parse_time(value, "--as-of") if value else cfg.as_of


def _as_of_ts(value: str | None, cfg: OmnirecConfig) -> float:
    """The batch jobs' clock: --as-of, else the config's as_of, else now."""
    from omnirec.domain.clock import as_of_ts

    return as_of_ts(_as_of(value, cfg))


@app.command("check-catalogue")
def check_catalogue(
    path: Annotated[Path | None, typer.Argument(help="Offer catalogue (default: the config's offers.catalogue_path).")]
        = None,
    data: Annotated[Path | None, typer.Option(help="Data directory whose items.parquet the targets must exist in "
                                                   "(default: the config's data_dir, when it has one).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Validate an offer catalogue and its targets against the imported items; lists every error, exits 1."""
    import pyarrow.parquet as pq

    from omnirec.domain.readers import ITEMS_FILE
    from omnirec.offers.catalogue import CatalogueError, check_catalogue

    cfg = _setup(config)
    items_path = (data or cfg.data_dir) / ITEMS_FILE
    if data is not None and not items_path.exists():
        raise FileNotFoundError(f"{items_path} not found; import your data first (omnirec import)")
    items = pq.read_table(items_path, columns=["item_id", "category", "brand"]) if items_path.exists() else None
    try:
        catalogue = check_catalogue(path or cfg.offers.catalogue_path, cfg.tiers, items)
    except CatalogueError as exc:
        typer.echo(str(exc))
        raise typer.Exit(code=1) from None
    checked = f", targets checked against {items_path}" if items is not None else ""
    console.print(f"catalogue {catalogue.version}: {len(catalogue.offers)} offers OK{checked}")

app.command()(campaign_cli.audience)
app.command("confirm-send")(campaign_cli.confirm_send)
app.command()(campaign_cli.lift)

if __name__ == "__main__":
    main()
