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

from exfilwatch.detections.spark import spark_session  # noqa: E402

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
