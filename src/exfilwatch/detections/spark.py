"""Detections on Spark: a detection's compiled SQL, transpiled (events/spark.py), over the same lake.

`tests/test_spark_conformance.py` checks that every shipped detection marked `engines: [duckdb,
spark]` finds on Spark what it finds on DuckDB.
"""

from __future__ import annotations

from typing import Any

from exfilwatch.config import Settings
from exfilwatch.detections.runner import compiled_sql, data_range
from exfilwatch.detections.schema import Detection
from exfilwatch.events.spark import SparkUnavailable, python_value, register_spark_views, to_spark_sql
from exfilwatch.state import StateStore


def execute_spark(spark, state: StateStore, settings: Settings, detection: Detection,
                  params: dict[str, Any]) -> list[dict[str, Any]]:
    """`runner.execute` on Spark: the same compiled SQL, transpiled, over the same committed lake files."""
    if "spark" not in detection.engines:
        raise SparkUnavailable(f"{detection.id}: not written for Spark (its `engines` are {detection.engines})")
    start, end = data_range(params)
    register_spark_views(spark, settings, state, start, end)
    rows = spark.sql(to_spark_sql(compiled_sql(detection), params)).collect()
    return [{k: python_value(v) for k, v in row.asDict().items()} for row in rows]
