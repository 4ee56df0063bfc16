"""Every shipped detection written for Spark gives the same findings there as on DuckDB.

Runs each detection's own test datasets through both engines. Skipped when PySpark or Java is
not installed (`make test` installs both).
"""

from __future__ import annotations

import math
import shutil
from datetime import datetime, timezone

import pytest

from exfilwatch.config import Home, parse_settings
from .pipelinekit import detect_once
from exfilwatch.detections.schema import load_detections
from exfilwatch.events.engine import connect
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.home import open_state
from exfilwatch.timeexpr import parse_time

pyspark = pytest.importorskip("pyspark")
if shutil.which("java") is None:
    pytest.skip("Spark needs Java", allow_module_level=True)

from exfilwatch.events.spark import spark_session  # noqa: E402

CASES = [(d, t) for d in load_detections().values() if "spark" in d.engines for t in d.tests]


@pytest.fixture(scope="module")
def spark():
    session = spark_session(parse_settings({"memory_limit": "1GB"}, "test"))
    yield session
    session.stop()


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


@pytest.mark.parametrize("detection,test", CASES, ids=[f"{d.id}:{t.kind}" for d, t in CASES])
def test_spark_findings_equal_duckdb_findings(spark, tmp_path, detection, test):
    home = Home(root=tmp_path, config_path=tmp_path / "config.yaml")
    settings = parse_settings(test.config, "test")
    for data in test.data:
        ingest_paths([detection.folder / data.file], home, settings, data.source)
    now = parse_time(test.now, datetime(1970, 1, 1, tzinfo=timezone.utc), settings.timezone)
    state = open_state(home)
    con = connect(settings)
    duck = detect_once(con, state, settings, [detection], now, overrides=test.set, store=False)[0].findings
    sparked = detect_once(con, state, settings, [detection], now, overrides=test.set, store=False, spark=spark)[0].findings
    assert [f.key for f in sparked] == [f.key for f in duck]
    for ours, theirs in zip(duck, sparked):
        assert ours.fields.keys() == theirs.fields.keys()
        assert all(same(ours.fields[k], theirs.fields[k]) for k in ours.fields), (ours.fields, theirs.fields)
        assert ours.message == theirs.message
    if test.kind == "positive":
        assert duck


def test_spark_words_findings_as_duckdb_does(spark):
    """The DuckDB-only functions rules word their findings with (observed values, sizes) give the
    same text on Spark: sizes in powers of 1000 with one decimal cut, and 6 significant digits with
    ties rounded half to even and trailing zeros dropped."""
    import duckdb

    from exfilwatch.events.spark import to_spark_sql

    sizes = [0, 1, -1, 5, 999, 1000, 1499, 1949, 1950, 999_999, 1_000_000, 1_234_567, 12_345_678_901, 2**40,
             10**16, 10**18 + 5, 9 * 10**18]
    numbers = [0.0, 1.0, 0.5, 0.125, 2.5, 12.0, 30.75, -3.25, 142.857142857, 100000.0, 123456.5, 999999.5,
               1e6, 1234567.0, 1234565.0, 1234575.0, 0.0001234, 0.00001234, 1e-5, 2.0**60, 1e300]
    sql = "SELECT " + ", ".join(
        [f"formatReadableDecimalSize(CAST({v} AS BIGINT)) AS s{i}" for i, v in enumerate(sizes)]
        + [f"format('{{:.6g}}', CAST({v!r} AS DOUBLE)) AS g{i}" for i, v in enumerate(numbers)]
        + ["format('{:.6g}', CAST(NULL AS DOUBLE)) AS g_null", "formatReadableDecimalSize(CAST(NULL AS BIGINT)) AS s_null"])
    duck = duckdb.sql(sql).fetchall()[0]
    sparked = tuple(spark.sql(to_spark_sql(sql, {})).collect()[0])
    assert sparked == duck
    assert duck[sizes.index(1949)] == "1.9 kB" and duck[len(sizes) + numbers.index(123456.5)] == "123456"


def test_a_duckdb_format_spark_cannot_write_is_named():
    from exfilwatch.events.spark import SparkUnavailable, to_spark_sql

    with pytest.raises(SparkUnavailable, match=r"format\('\{:>10\}'"):
        to_spark_sql("SELECT format('{:>10}', name) FROM t", {})
