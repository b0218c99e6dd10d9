"""`omnirec audience`, `omnirec confirm-send` and `omnirec lift`: the campaign job's commands.

They run the same `omnirec.audience` code as `AudienceService`, on the same model, feature store, offer
state and decision log, so a file from the CLI holds the rows the stream would have sent.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from omnirec.config import OmnirecConfig

console = Console()
Many = Annotated[list[str] | None, typer.Option()]
ROWS_SCHEMA_COLUMNS = ("member_id", "score", "rank", "tier", "lifecycle_stage", "holdout")


@contextmanager
def _campaigns(cfg: OmnirecConfig):  # type: ignore[no-untyped-def]
    """The service's composition, outside a server: the published bundle, the offers engine, the stores
    (on the embedded Redis, for the command's duration, when no URL is configured)."""
    import asyncio

    from omnirec.feature_store.embedded import embedded
    from omnirec.service import wiring
    from omnirec.service.bundles import holder_for

    holder = holder_for(cfg.train.bundle_root, cfg.data_dir)
    asyncio.run(holder.reload())
    with embedded(cfg.redis) as redis_config:
        yield wiring.campaign_jobs(cfg.model_copy(update={"redis": redis_config}), holder)


def _write(rows, out: Path) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    table = pa.table({"member_id": pa.array(rows.member_ids.astype(str)), "score": rows.scores,
                      "rank": rows.ranks, "tier": pa.array(rows.tiers.astype(str)),
                      "lifecycle_stage": pa.array(rows.stages.astype(str)), "holdout": rows.holdout})
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        pcsv.write_csv(table, out)
    else:
        pq.write_table(table, out)


def audience(
    out: Annotated[Path, typer.Option(help="Where to write the rows (.parquet, or .csv).")],
    channel: Annotated[str, typer.Option(help="Channel the campaign sends on (app, web, ...).")],
    max_size: Annotated[int, typer.Option(help="At most this many members.")],
    offer: Annotated[str, typer.Option(help="Offer id from the catalogue (its rules apply).")] = "",
    item: Many = None, category: Many = None, brand: Many = None,
    tier: Many = None, stage: Many = None, home_store: Many = None, region: Many = None,
    min_score: Annotated[float | None, typer.Option(help="Only members scoring at least this.")] = None,
    ranking: Annotated[str, typer.Option(help="affinity or uplift.")] = "affinity",
    holdout_share: Annotated[float, typer.Option(help="Share carved out as this send's control group.")] = 0.0,
    send_id: Annotated[str, typer.Option(help="Names the send (required with --holdout-share).")] = "",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    engine: Annotated[str, typer.Option(help="local (this process) or spark (the active or a new Spark session; "
                                             "affinity ranking only).")] = "local",
    config: Annotated[Path | None, typer.Option("--config", help="TOML config file.")] = None,
) -> None:
    """Members who should get an offer (or like a target), scored, filtered and suppressed; contacts nobody."""
    from omnirec.audience import AudienceRequest, RankBy
    from omnirec.domain.vocab import Channel, LifecycleStage
    from omnirec.offers.catalogue import Target

    cfg = OmnirecConfig.load(config)
    scopes = [(s, tuple(ids)) for s, ids in (("items", item), ("categories", category), ("brands", brand)) if ids]
    if len(scopes) > 1:
        raise typer.BadParameter("give --item, --category or --brand, not several")
    request = AudienceRequest(
        channel=Channel(channel), max_size=max_size, offer_id=offer,
        target=Target(scope=scopes[0][0], ids=scopes[0][1]) if scopes else None,  # type: ignore[arg-type]
        tiers=frozenset(tier or ()), stages=frozenset(LifecycleStage(s) for s in stage or ()),
        home_stores=frozenset(home_store or ()), regions=frozenset(region or ()), min_score=min_score,
        rank_by=RankBy(ranking),
        holdout_share=holdout_share, send_id=send_id)
    if engine not in ("local", "spark"):
        raise typer.BadParameter(f"--engine is local or spark, not {engine!r}")
    with _campaigns(cfg) as campaigns:
        result = _pull_on_spark(campaigns, request) if engine == "spark" else _pull(campaigns, request, progress)
    _write(result.rows, out)
    table = Table(title=f"Audience: {len(result.rows):,} members ({result.holdout_count:,} held out) -> {out}")
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [("examined", result.examined), ("scored", result.scored),
            *sorted((f"kept out: {k}", v) for k, v in result.suppressed.items())]
    for label, value in rows:
        table.add_row(label, f"{value:,}")
    table.add_row("versions", f"model {result.model_version}, features {result.feature_generation}, "
                              f"catalogue {result.catalogue_version}")
    console.print(table)


def _pull(campaigns, request, progress: bool):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    with tqdm(total=request.max_size, unit="member", desc="audience", disable=not progress) as bar:
        def step(examined: int, selected: int) -> None:
            bar.update(selected - bar.n)
            bar.set_postfix(examined=examined)

        return campaigns.pull(request, caller="cli", progress=step)


def _pull_on_spark(campaigns, request):  # type: ignore[no-untyped-def]
    """The same pull with scoring and rules on Spark; its inputs are exported to a scratch folder (Spark's
    progress is its own: the Spark UI, or the console bar of a session that enables it)."""
    import tempfile

    from omnirec.audience import spark

    now = campaigns.clock()
    with tempfile.TemporaryDirectory(prefix="omnirec-audience-") as work:
        result = spark.build(spark.session(), campaigns.builder, request, campaigns.sources(), now, Path(work))
    campaigns.record(request, result, caller="cli", now=now)
    return result


def confirm_send(
    send_id: Annotated[str, typer.Option(help="The send's id (idempotency key).")],
    channel: Annotated[str, typer.Option(help="Channel it was sent on.")],
    audience_file: Annotated[Path, typer.Option("--audience", help="The file `omnirec audience` wrote.")],
    offer: Annotated[str, typer.Option(help="Offer id that was sent.")] = "",
    sent_at: Annotated[str | None, typer.Option(help="ISO time it was sent (default: now).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config file.")] = None,
) -> None:
    """Record what was sent: contacts for the non-holdout rows, the holdout kept for `omnirec lift`."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from omnirec.domain.vocab import Channel

    cfg = OmnirecConfig.load(config)
    table = pcsv.read_csv(audience_file) if audience_file.suffix == ".csv" else pq.read_table(audience_file)
    members = table["member_id"].to_numpy(zero_copy_only=False).astype(str)
    held = table["holdout"].to_numpy(zero_copy_only=False).astype(bool)
    when = datetime.fromisoformat(sent_at).replace(tzinfo=UTC).timestamp() if sent_at else None
    with _campaigns(cfg) as campaigns:
        new = campaigns.confirm(send_id, offer, Channel(channel), members[~held].tolist(), members[held].tolist(),
                                caller="cli", sent_at=when)
    verb = "recorded" if new else "already confirmed; nothing new recorded for"
    console.print(f"send {send_id}: {verb} {int((~held).sum()):,} contacts, {int(held.sum()):,} held out")


def lift(
    offer: Annotated[str, typer.Option(help="Offer id.")],
    since: Annotated[str | None, typer.Option(help="Only sends on or after this ISO date.")] = None,
    window_days: Annotated[float, typer.Option(help="Days after a send in which purchases count.")] = 14.0,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config file.")] = None,
) -> None:
    """Response of treated members vs their holdout, per send and pooled, with 95% confidence intervals."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from omnirec.audience import estimate_lift, sends
    from omnirec.domain.readers import RetailData
    from omnirec.offers.catalogue import load_catalogue
    from omnirec.offers.decision_log import DecisionLog

    cfg = OmnirecConfig.load(config)
    start = datetime.fromisoformat(since).replace(tzinfo=UTC).timestamp() if since else 0.0
    found = sends(DecisionLog(cfg.offers.decision_log_dir).records(), offer, start)
    if not found:
        raise typer.BadParameter(f"no confirmed send of offer {offer!r} in {cfg.offers.decision_log_dir}")
    data = RetailData.read(cfg.data_dir)
    target = None
    spec = load_catalogue(cfg.offers.catalogue_path, cfg.tiers).get(offer)
    if spec is not None and spec.target.scope != "basket":
        column = {"items": "item_id", "categories": "category", "brands": "brand"}[spec.target.scope]
        matched = data.items.filter(pc.is_in(data.items[column], pa.array(list(spec.target.ids))))
        target = frozenset(matched["item_id"].to_pylist())
    table = Table(title=f"Lift of {offer} ({window_days:g}-day window; 95% intervals)")
    for col in ("send", "treated", "holdout", "response treated", "response holdout", "lift", "95% CI",
                "extra purchases/member", "95% CI"):
        table.add_column(col, justify="right")
    for e in estimate_lift(found, data.events, window_days, target):
        table.add_row(e.scope, f"{e.n_treated:,}", f"{e.n_holdout:,}", f"{e.rate_treated:.3f}",
                      f"{e.rate_holdout:.3f}", f"{e.rate_lift:+.3f}",
                      f"[{e.rate_ci95[0]:+.3f}, {e.rate_ci95[1]:+.3f}]", f"{e.incremental_purchases:+.3f}",
                      f"[{e.incremental_ci95[0]:+.3f}, {e.incremental_ci95[1]:+.3f}]")
    console.print(table)
