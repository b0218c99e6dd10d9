"""Materialisation on Spark (`omnirec materialize --engine spark`): member features computed by Spark from
the event log and written to Redis (or Redis Cluster) by the executors, then one generation switch.

The stages that grow with events and members run on Spark: per-member aggregates (last seen, activity
per channel, purchases, spend, last two purchase times), the recent, purchased and anonymous item lists,
and the three RFM quintile cuts (exact order statistics, four numbers each). Each partition then turns
its members into packed records with the batch job's own `profile_columns` and `resp` encoders and sends
them on its own pipelined connections (`resp.BulkSender`, one batch in flight per node), so the driver
never holds the members. When member state is in the store the member table is joined with the bundle's
member rows (read by the executors from the bundle's memory-mapped id file), and each partition also
writes its members' lists (`member_top`), read from the bundle's memory-mapped arrays in row order, or an
empty entry for a member the bundle does not know: the bundle folder must be on storage every executor
reads, as the event log is. Items, stock and identity links (catalogue-sized) are loaded by the driver.
Readers keep serving the old generation until the driver's one `HSET` of the pointer, as in the batch job.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from omnirec.bundle.reader import ModelBundle, member_count, member_ids
from omnirec.domain.errors import InvalidArgument
from omnirec.domain.lifecycle import LifecycleRules
from omnirec.domain.member_lists import ListColumns, encode, encode_none
from omnirec.domain.readers import IDENTITY_FILE, INVENTORY_FILE, ITEMS_FILE, MEMBERS_FILE
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Col, EventType
from omnirec.feature_store import packed, resp
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.connection import connect
from omnirec.feature_store.keys import Keys, key_column
from omnirec.feature_store.materialize import (
    Materializer,
    MaterializeSummary,
    MemberAggregates,
    MemberListSource,
    catalogue_features,
    profile_columns,
    quintile_ranks,
)
from omnirec.feature_store.model import CHANNELS
from omnirec.spark.config import SparkConfig
from omnirec.spark.session import event_paths, read_events, session

RECENCY, FREQUENCY, MONETARY = "_recency", "_frequency", "_monetary"
LAST_SEEN, LAST_BUY, PREV_BUY, RECENT, PURCHASED = "_last_seen", "_last_buy", "_prev_buy", "_recent", "_purchased"
BUNDLE_ROW = "_bundle_row"


def _newest_distinct(events: DataFrame, owner: str, limit: int, name: str, timed: bool = False) -> DataFrame:
    """Each owner's `limit` most recently touched distinct items, newest first, packed: `newest_distinct`'s
    order (ties in time: larger catalogue index first); `timed` packs each id with its latest time."""
    newest = events.groupBy(owner, Col.ITEM_ID, "_item_idx").agg(F.max(Col.TS).alias("_ts"))
    ordered = F.sort_array(F.collect_list(F.struct("_ts", "_item_idx", Col.ITEM_ID)), asc=False)

    def entry(x: Column) -> Column:
        if not timed:
            return x[Col.ITEM_ID]
        return F.concat_ws(packed.SEP, x[Col.ITEM_ID], x["_ts"].cast("long").cast("string"))

    return newest.groupBy(owner).agg(F.array_join(F.transform(F.slice(ordered, 1, limit), entry),
                                                  packed.SEP).alias(name))


def _count(condition: Column) -> Column:
    return F.sum(F.when(condition, 1).otherwise(0))


def member_table(events: DataFrame, members: DataFrame, items: DataFrame, recent_items: int,
                 purchased_items: int) -> tuple[DataFrame, DataFrame]:
    """(members with their aggregates and packed lists, anonymous ids with their packed recent lists)."""
    known = events.join(members.select(Col.MEMBER_ID), Col.MEMBER_ID, "left_semi")
    is_buy = F.col(Col.EVENT_TYPE) == EventType.PURCHASE.value
    purchase_ts = F.sort_array(F.collect_list(F.when(is_buy, F.col(Col.TS))), asc=False)
    aggregates = known.groupBy(Col.MEMBER_ID).agg(
        F.max(Col.TS).alias(LAST_SEEN),
        *(_count(F.col(Col.CHANNEL) == c.value).alias(f"_act_{c.value}") for c in CHANNELS),
        _count(is_buy).alias(FREQUENCY),
        F.sum(F.when(is_buy, F.col(Col.PRICE) * F.col(Col.QUANTITY)).otherwise(0.0)).alias(MONETARY),
        F.get(purchase_ts, 0).alias(LAST_BUY), F.get(purchase_ts, 1).alias(PREV_BUY))
    catalogued = events.join(items, Col.ITEM_ID)
    touched = catalogued.join(members.select(Col.MEMBER_ID), Col.MEMBER_ID, "left_semi").where(
        F.col(Col.EVENT_TYPE) != EventType.RETURN.value)
    bought = touched.where(is_buy)
    anonymous = (catalogued.join(members.select(Col.MEMBER_ID), Col.MEMBER_ID, "left_anti")
                 .where(F.col(Col.ANONYMOUS_ID).isNotNull()))
    table = (members.join(aggregates, Col.MEMBER_ID, "left")
             .join(_newest_distinct(touched, Col.MEMBER_ID, recent_items, RECENT), Col.MEMBER_ID, "left")
             .join(_newest_distinct(bought, Col.MEMBER_ID, purchased_items, PURCHASED, timed=True), Col.MEMBER_ID,
                   "left"))
    return table, _newest_distinct(anonymous, Col.ANONYMOUS_ID, recent_items, RECENT)


def quintile_cuts(table: DataFrame, now: float) -> np.ndarray:
    """(3, 4) exact cuts of recency, frequency and monetary among buyers (see `materialize.quintile_scores`)."""
    buyers = table.where(F.col(FREQUENCY) > 0).select(
        (-(F.lit(now) - F.col(LAST_BUY)) / F.lit(86_400.0)).alias(RECENCY),
        F.col(FREQUENCY).cast("double").alias(FREQUENCY), F.col(MONETARY).alias(MONETARY)).cache()
    n = buyers.count()
    cuts = np.full((3, 4), np.inf)
    if n:
        ranks = [int(r) for r in quintile_ranks(n)]
        for row, column in enumerate((RECENCY, FREQUENCY, MONETARY)):
            ordered = buyers.select(column).rdd.map(lambda r: r[0]).sortBy(lambda v: v).zipWithIndex()
            found = dict(ordered.filter(lambda pair: pair[1] in ranks).map(lambda pair: (pair[1], pair[0])).collect())
            cuts[row] = [found[r] for r in ranks]
    buyers.unpersist()
    return cuts


@functools.lru_cache(maxsize=1)
def _bundle(path: str) -> ModelBundle:
    """The bundle, opened once per executor process (Python workers are reused across tasks)."""
    return ModelBundle.load(Path(path), member_index=False)


@dataclass(frozen=True)
class BundleLists:
    """The published bundle's member lists as executors read them, from the bundle folder itself."""

    path: str
    depth: int
    """Collaborative items per member."""
    version: int

    @classmethod
    def of(cls, source: MemberListSource) -> BundleLists:
        if source.path is None:
            raise InvalidArgument("member_lists", "Spark executors read the member lists from the bundle folder; "
                                                  "this source names none")
        return cls(str(source.path), source.depth, source.bundle_version)

    def rows(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """mapInArrow over `spark.range(members)`: each bundle row's member id, from the mapped id file."""
        ids = member_ids(Path(self.path))
        for batch in batches:
            rows = batch.column(0).to_numpy()
            yield pa.RecordBatch.from_pydict({Col.MEMBER_ID: pa.array(np.asarray(ids[rows]), pa.string()),
                                              BUNDLE_ROW: pa.array(rows, pa.int64())})

    def columns(self, rows: np.ndarray) -> list[ListColumns]:
        return _bundle(self.path).member_list_columns(rows, self.depth)


@dataclass(frozen=True)
class PartitionWriter:
    """What an executor needs to write its members: plain, picklable settings (no clients)."""

    config: RedisConfig
    generation: int
    tiers: TierLadder
    rules: LifecycleRules
    now: float
    cuts: np.ndarray
    stamp: str
    lists: BundleLists | None = None
    """Also write each member's `member_top` (member state in the store)."""

    def members(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """mapInArrow: write the members of each Arrow batch; yield how many commands went out."""
        k = Keys(self.config.namespace, self.generation)
        client = connect(self.config, socket_timeout_s=self.config.bulk_timeout_s)
        try:
            with resp.BulkSender(client) as sender:
                for batch in batches:
                    if batch.num_rows:
                        self._send(sender, k, batch)
            yield pa.RecordBatch.from_pydict({"commands": [sender.commands_sent]})
        finally:
            client.close()

    def anonymous(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """mapInArrow: write the anonymous ids' recent lists."""
        k = Keys(self.config.namespace, self.generation)
        client = connect(self.config, socket_timeout_s=self.config.bulk_timeout_s)
        try:
            with resp.BulkSender(client) as sender:
                for batch in batches:
                    keys = key_column(k.anon_recent, batch[Col.ANONYMOUS_ID])
                    sender.send(keys, resp.set_values(keys, batch[RECENT], self.config.feature_ttl_s))
            yield pa.RecordBatch.from_pydict({"commands": [sender.commands_sent]})
        finally:
            client.close()

    def _send(self, sender: resp.BulkSender, k: Keys, rows: pa.RecordBatch) -> None:
        def floats(name: str) -> np.ndarray:
            return rows[name].to_numpy(zero_copy_only=False).astype(np.float64)

        frequency = pc.fill_null(rows[FREQUENCY], 0).to_numpy()
        aggregates = MemberAggregates(
            floats(LAST_SEEN), np.stack([pc.fill_null(rows[f"_act_{c.value}"], 0).to_numpy() for c in CHANNELS], 1),
            floats(LAST_BUY), floats(PREV_BUY), frequency, np.nan_to_num(floats(MONETARY)))
        profile = profile_columns(rows, aggregates, self.tiers, self.rules, self.now, self.cuts)
        ids = rows[Col.MEMBER_ID]
        keys = key_column(k.member, ids)
        ttl = self.config.feature_ttl_s
        sender.send(keys, resp.set_values(keys, pc.binary_join_element_wise(*profile.values(), self.stamp,
                                                                            packed.SEP), ttl))
        for name, key in ((RECENT, k.recent), (PURCHASED, k.purchased)):
            has = pc.is_valid(rows[name])
            list_keys = key_column(key, ids.filter(has))
            sender.send(list_keys, resp.set_values(list_keys, rows[name].filter(has), ttl))
        if self.lists is not None:
            self._send_lists(sender, k, ids, pc.fill_null(rows[BUNDLE_ROW], -1).to_numpy(), self.lists)

    def _send_lists(self, sender: resp.BulkSender, k: Keys, ids: pa.Array, bundle_rows: np.ndarray,
                    lists: BundleLists) -> None:
        """The members' lists from the bundle, read in bundle row order (sequential pages of the mapped
        arrays), and an empty entry for each member the bundle does not know (`Materializer.write_no_lists`)."""
        ttl = self.config.feature_ttl_s
        known = bundle_rows >= 0
        order = np.argsort(bundle_rows[known], kind="stable")
        if len(order):
            keys = key_column(k.member_top, ids.filter(pa.array(known)).take(pa.array(order)))
            values = encode(lists.version, lists.columns(bundle_rows[known][order]))
            sender.send(keys, resp.set_values(keys, values, ttl))
        if not known.all():
            keys = key_column(k.member_top, ids.filter(pa.array(~known)))
            sender.send(keys, resp.set_values(keys, encode_none(lists.version, len(keys)), ttl))


def materialize_spark(data_dir: Path, config: RedisConfig, spark_config: SparkConfig, tiers: TierLadder,
                      rules: LifecycleRules, now: float | None = None,
                      member_lists: MemberListSource | None = None) -> MaterializeSummary:
    """`omnirec materialize --engine spark`: see the module docstring. `read_seconds` covers the Spark
    aggregation; the load, timed from the first write, includes computing profiles on the executors."""
    if config.url is None:
        raise InvalidArgument("redis.url", "Spark executors need a Redis they can reach; the embedded one is local")
    begun = time.perf_counter()
    spark = session(spark_config)
    links = data_dir / IDENTITY_FILE
    events = read_events(spark, event_paths(spark_config, data_dir), str(links) if links.exists() else None)
    item_table = pq.read_table(data_dir / ITEMS_FILE)
    items = spark.createDataFrame(pa.table({Col.ITEM_ID: item_table["item_id"],
                                            "_item_idx": np.arange(item_table.num_rows, dtype=np.int64)}))
    members = spark.read.parquet(str(data_dir / MEMBERS_FILE))
    now = float(events.agg(F.max(Col.TS)).first()[0]) if now is None else now
    table, anonymous = member_table(events, members, items, config.recent_items, config.purchased_items)
    lists = BundleLists.of(member_lists) if member_lists is not None else None
    if lists is not None:
        rows = spark.range(member_count(Path(lists.path)), numPartitions=spark_config.shuffle_partitions)
        table = table.join(rows.mapInArrow(lists.rows, f"{Col.MEMBER_ID} string, {BUNDLE_ROW} long"), Col.MEMBER_ID,
                           "left")
    table = table.cache()
    cuts = quintile_cuts(table, now)

    started = time.perf_counter()
    client = connect(config, socket_timeout_s=config.bulk_timeout_s)
    try:
        materializer = Materializer(client, config)
        generation = materializer.begin()
        writer = PartitionWriter(config, generation, tiers, rules, now, cuts, str(int(time.time())), lists)
        commands = sum(r[0] for r in table.mapInArrow(writer.members, "commands long").collect())
        commands += sum(r[0] for r in anonymous.mapInArrow(writer.anonymous, "commands long").collect())
        n_members = table.count()
        table.unpersist()
        catalogue = catalogue_features(item_table, pq.read_table(data_dir / INVENTORY_FILE),
                                       pq.read_table(links) if links.exists() else
                                       pa.table({"anonymous_id": pa.array([], pa.string()),
                                                 "member_id": pa.array([], pa.string())}), now)
        with resp.BulkSender(client) as sender:
            materializer.write_catalogue(catalogue, generation, sender, writer.stamp)
        report = materializer.finish(generation, n_members, item_table.num_rows, commands + sender.commands_sent,
                                     started)
        return MaterializeSummary(report, started - begun, 0.0)
    finally:
        client.close()
