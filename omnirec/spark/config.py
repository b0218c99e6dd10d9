"""`SparkConfig`: the `[spark]` section, where omnirec's Spark jobs run (read without importing pyspark)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SparkConfig(BaseModel):
    """Where the Spark jobs run: any Spark master (`local[2]`, `yarn`, `spark://...`, `k8s://...`); in a
    `spark-submit` job the session that exists already is used as it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    master: str = Field("local[2]", description="Spark master URL for a session this process starts")
    shuffle_partitions: int = Field(8, ge=1, description="spark.sql.shuffle.partitions (scale with the cluster)")
    driver_memory: str = Field("2g", description="spark.driver.memory of a session this process starts")
    events_uri: str | None = Field(None, description="Spark-readable event log (s3a://, hdfs://, a local path); "
                                                     "default: events.parquet and events_live/ in the data dir")
