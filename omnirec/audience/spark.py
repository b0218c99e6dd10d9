"""An audience built on Spark (`omnirec audience --engine spark`): the same rows as `AudienceBuilder`, with
the scoring and the rules spread over the executors.

What runs where:
- The driver validates the request, resolves the offer and the target's item vectors (`AudienceBuilder`,
  as the single-machine pull does), and exports the job's inputs as Parquet: the bundle's member factors,
  the member profiles from the feature store, and the contact ledger and wallets (`offers.export`).
- Each partition (`mapInPandas`) scores its members with one block product against the target vectors (max
  over targets, `scoring.affinity_scores`), rebuilds each member's profile, contact history and wallet from
  the joined exports, and decides with `AudienceBuilder.verdict`: the very filters and offer rules of the
  single-machine pull, so the engines cannot drift. The send's holdout flag is the same stable hash.
- Spark keeps the included members, best first (score, then model row: the single-machine tie order), cut
  at `max_size`; the driver ranks them and the CLI writes them like a local pull.

Unlike the single-machine pull, which reads the stores only as far down the ranking as the audience needs,
every member is examined, so the suppression counts cover all of them. pyspark is imported only here, and
only when a job runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from omnirec.audience.builder import AudienceBuilder, AudienceSources
from omnirec.audience.model import Audience, AudienceRequest, AudienceRows, RankBy, Suppression
from omnirec.audience.scoring import affinity_scores
from omnirec.domain.errors import InvalidArgument
from omnirec.domain.vocab import Channel, LifecycleStage
from omnirec.feature_store.model import MemberProfile
from omnirec.offers.catalogue import Offer
from omnirec.offers.export import CONTACTS_FILE, COUPONS_FILE, export_ledger, history, wallet
from omnirec.offers.policy import in_holdout

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

FACTORS_FILE = "member_factors.parquet"
PROFILES_FILE = "profiles.parquet"
CHANNELS = tuple(Channel)
PROFILES_SCHEMA = pa.schema([
    ("member_id", pa.string()), ("tier", pa.string()), ("lifecycle_stage", pa.string()),
    ("recency_score", pa.int32()), ("frequency_score", pa.int32()), ("monetary_score", pa.int32()),
    ("points", pa.int64()), ("home_store", pa.string()), ("region", pa.string()),
    *[(f"act_{c.value}", pa.int64()) for c in CHANNELS], *[(f"consent_{c.value}", pa.bool_()) for c in CHANNELS],
    ("signup_ts", pa.float64()), ("last_seen_ts", pa.float64()), ("last_purchase_ts", pa.float64()),
    ("prev_purchase_ts", pa.float64()), ("written_ts", pa.float64())])
VERDICTS_SCHEMA = ("member_id string, row long, score float, tier string, lifecycle_stage string, holdout boolean, "
                   "suppression string")


def profile_row(p: MemberProfile) -> dict[str, Any]:
    """A profile as one row of the profiles export (channels' activity and consent as columns)."""
    row = {f: getattr(p, f) for f in PROFILES_SCHEMA.names if hasattr(p, f)}
    row["lifecycle_stage"] = p.lifecycle_stage.value
    row.update({f"act_{c.value}": p.activity[c] for c in CHANNELS})
    row.update({f"consent_{c.value}": p.consent[c] for c in CHANNELS})
    return row


def _optional(value: Any) -> float | None:
    return None if value is None or value != value else float(value)  # NaN: a null read back by pandas


def profile_from_row(row: dict[str, Any]) -> MemberProfile:
    return MemberProfile(
        member_id=row["member_id"], tier=row["tier"], lifecycle_stage=LifecycleStage(row["lifecycle_stage"]),
        recency_score=int(row["recency_score"]), frequency_score=int(row["frequency_score"]),
        monetary_score=int(row["monetary_score"]), points=int(row["points"]), home_store=row["home_store"],
        region=row["region"], activity={c: int(row[f"act_{c.value}"]) for c in CHANNELS},
        consent={c: bool(row[f"consent_{c.value}"]) for c in CHANNELS}, signup_ts=float(row["signup_ts"]),
        last_seen_ts=_optional(row["last_seen_ts"]), last_purchase_ts=_optional(row["last_purchase_ts"]),
        prev_purchase_ts=_optional(row["prev_purchase_ts"]), written_ts=float(row["written_ts"]))


class _IdSlices(Sequence[str]):
    """The bundle's member ids as `export_ledger` reads them, one slice at a time as Python strings: the
    driver never holds every member's id twice (a copy of the fixed-width array, a list of N strings)."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        return self.ids[index].tolist() if isinstance(index, slice) else str(self.ids[index])


def export_inputs(request: AudienceRequest, offer: Offer | None, sources: AudienceSources, since: float,
                  now: float, out_dir: Path, chunk: int = 65_536) -> int:
    """Write the job's inputs to `out_dir` (see the module docstring), `chunk` members at a time, so the
    driver's memory for it does not grow with members; returns the features generation read."""
    model = sources.model
    if model is None:
        raise InvalidArgument("model", "no model bundle is loaded")
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = model.members.external_ids
    dim = model.member_factors.shape[1]
    generation = 0
    factors_schema = pa.schema([("member_id", pa.string()), ("row", pa.int64()),
                                ("factors", pa.list_(pa.float32()))])
    with pq.ParquetWriter(out_dir / FACTORS_FILE, factors_schema) as factors, \
            pq.ParquetWriter(out_dir / PROFILES_FILE, PROFILES_SCHEMA) as profiles:
        for start in range(0, len(ids), chunk):
            block_ids = ids[start:start + chunk].tolist()
            block = np.ascontiguousarray(model.member_factors[start:start + chunk], dtype=np.float32)
            offsets = pa.array(np.arange(0, (len(block) + 1) * dim, dim, dtype=np.int32))
            factors.write_table(pa.table({
                "member_id": pa.array(block_ids, pa.string()),
                "row": pa.array(np.arange(start, start + len(block), dtype=np.int64)),
                "factors": pa.ListArray.from_arrays(offsets, pa.array(block.ravel()))}, factors_schema))
            generation, found = sources.profiles(block_ids)
            profiles.write_table(pa.Table.from_pylist([profile_row(p) for p in found if p is not None],
                                                      PROFILES_SCHEMA))
    export_ledger(sources.marketing, _IdSlices(ids), since, now, out_dir, wallets=offer is not None)
    return generation


@dataclass(frozen=True)
class _Decide:
    """The per-partition work, shipped to the executors (everything in it pickles)."""

    builder: AudienceBuilder
    request: AudienceRequest
    offer: Offer | None
    targets: np.ndarray | None
    since: float
    now: float

    def __call__(self, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        request = self.request
        for frame in batches:
            records = frame.to_dict("records")
            vectors = np.stack(frame["factors"].to_numpy()) if len(frame) else np.zeros((0, 1), np.float32)
            scores = (np.zeros(len(frame), np.float32) if self.targets is None
                      else affinity_scores(vectors, self.targets))
            profiles = [profile_from_row(r) if r["has_profile"] is True else None for r in records]
            stages = self.builder.stages(profiles, self.now)
            why: list[str | None] = []
            for r, score, profile, stage in zip(records, scores, profiles, stages, strict=True):
                if request.min_score is not None and score < request.min_score:
                    verdict: Suppression | None = Suppression.BELOW_MIN_SCORE
                else:
                    verdict = self.builder.verdict(request, self.offer, profile, stage,
                                                   history(r["contacts"], self.since), wallet(r["coupons"], self.now),
                                                   self.now)[0]
                why.append(None if verdict is None else verdict.value)
            yield pd.DataFrame({
                "member_id": frame["member_id"], "row": frame["row"], "score": scores,
                "tier": [None if p is None else p.tier for p in profiles],
                "lifecycle_stage": [None if s is None else s.value for s in stages],
                "holdout": [in_holdout(f"send:{request.send_id}", m, request.holdout_share)
                            for m in frame["member_id"]],
                "suppression": why})


def session() -> SparkSession:
    """The active session (a `spark-submit` job, a test run's), else one from Spark's own defaults."""
    import os
    import sys

    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # local workers need this interpreter's packages
    return SparkSession.builder.appName("omnirec-audience").getOrCreate()


def build(spark: SparkSession, builder: AudienceBuilder, request: AudienceRequest, sources: AudienceSources,
          now: float, work_dir: Path) -> Audience:
    """The audience for `request`, scored and suppressed on `spark`; `work_dir` holds the exported inputs
    (a path every executor reads: local, or shared storage on a cluster)."""
    from pyspark.sql import functions as F

    offer = builder.offer(request, sources.catalogue, now)
    if request.rank_by is not RankBy.AFFINITY:
        raise InvalidArgument("rank_by", "the spark engine ranks by affinity only (uplift runs on --engine local)")
    model, targets = builder.targets(request, offer, sources)
    since = builder.since(request, offer, now)
    generation = export_inputs(request, offer, sources, since, now, work_dir)

    def grouped(name: str, file: str) -> Any:
        rows = spark.read.parquet(str(work_dir / file))
        return rows.groupBy("member_id").agg(F.collect_list(F.struct(*rows.columns)).alias(name))

    members = (spark.read.parquet(str(work_dir / FACTORS_FILE))
               .join(spark.read.parquet(str(work_dir / PROFILES_FILE)).withColumn("has_profile", F.lit(True)),
                     "member_id", "left")
               .join(grouped("contacts", CONTACTS_FILE), "member_id", "left")
               .join(grouped("coupons", COUPONS_FILE), "member_id", "left"))
    decided = members.mapInPandas(_Decide(builder, request, offer, targets, since, now), VERDICTS_SCHEMA).persist()
    try:
        counts = Counter({Suppression(r["suppression"]): int(r["count"]) for r in
                          decided.where(F.col("suppression").isNotNull()).groupBy("suppression").count().collect()})
        kept = (decided.where(F.col("suppression").isNull()).orderBy(F.desc("score"), F.asc("row"))
                .limit(request.max_size).toPandas())
    finally:
        decided.unpersist()
    rows = AudienceRows(kept["member_id"].to_numpy(object), kept["score"].to_numpy(np.float32),
                        kept["tier"].to_numpy(object), kept["lifecycle_stage"].to_numpy(object),
                        kept["holdout"].to_numpy(bool)) if len(kept) else AudienceRows.empty()
    return Audience(rows, len(model.members), len(model.members), dict(counts), model.version, generation,
                    sources.catalogue.version)
