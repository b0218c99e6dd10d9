"""The Spark jobs' shared pieces: `config` (no pyspark needed) and `session` (imports pyspark)."""
