"""What every Spark job of omnirec shares: the session, and the event log read the way `RetailData.read`
reads it (offline export plus the service's logged events, anonymous events credited to linked members).

Only the Spark jobs import this module (`pyspark` is the optional extra `spark`); nothing else in
omnirec needs Java.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from omnirec.domain.readers import EVENTS_FILE, LIVE_EVENTS_DIR
from omnirec.domain.vocab import Col
from omnirec.spark.config import SparkConfig


def session(config: SparkConfig) -> SparkSession:
    """The active session (a `spark-submit` job, a test run's shared one), else one on `config.master`."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if config.master.startswith("local"):  # Python workers run here: this interpreter, with its packages
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (SparkSession.builder.appName("omnirec").master(config.master)
            .config("spark.sql.shuffle.partitions", config.shuffle_partitions)
            .config("spark.driver.memory", config.driver_memory)
            .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").getOrCreate())


def event_paths(config: SparkConfig, data_dir: Path) -> list[str]:
    """`config.events_uri`, else the offline export and the service's logged events in `data_dir`."""
    if config.events_uri:
        return [config.events_uri]
    return [str(data_dir / EVENTS_FILE), *map(str, sorted((data_dir / LIVE_EVENTS_DIR).glob("events-*.parquet")))]


def read_events(spark: SparkSession, paths: Sequence[str], links_path: str | None) -> DataFrame:
    """Every event, with anonymous ones credited to the member their id was linked to (`links_path`)."""
    events = spark.read.parquet(*paths)
    if links_path is None:
        return events
    links = spark.read.parquet(links_path).select(F.col("anonymous_id").alias("_anon"),
                                                  F.col("member_id").alias("_linked"))
    return (events.join(F.broadcast(links), events[Col.ANONYMOUS_ID] == links["_anon"], "left")
            .withColumn(Col.MEMBER_ID, F.coalesce(F.col(Col.MEMBER_ID), F.col("_linked")))
            .drop("_anon", "_linked"))
