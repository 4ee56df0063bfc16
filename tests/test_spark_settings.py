"""`spark:` in config.yaml: where Spark runs and how its executors reach the lake (no Spark needed here)."""

from __future__ import annotations

import pytest

from exfilwatch.config import Home, parse_settings
from exfilwatch.events.spark import SparkUnavailable, spark_lake_paths
from exfilwatch.errors import ConfigError
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.home import open_state

LINE = ("2026-03-03 09:15:02 - ive - [203.0.113.5] Default Network::jdoe(Users)[Users, VPN] - "
        "Login succeeded for jdoe/Users (session:5f3a9c01) from 203.0.113.5 with Pulse-Secure/9.1.3.\n")


def test_executors_read_the_lake_where_the_config_says_it_is(tmp_path):
    (tmp_path / "vpn.log").write_text(LINE)
    home = Home(root=tmp_path / "home", config_path=tmp_path / "home" / "config.yaml")
    ingest_paths([tmp_path / "vpn.log"], home, parse_settings({}, "test"), "pulse_secure")
    state = open_state(home)
    [local] = state.lake_files("authentication")

    assert spark_lake_paths(parse_settings({}, "test"), state, "authentication") == [local]
    on_s3 = parse_settings({"spark": {"master": "spark://head:7077", "lake_uri": "s3a://corp-sec/exfilwatch/lake/",
                                      "conf": {"spark.executor.memory": "8g"}}}, "test")
    [mapped] = spark_lake_paths(on_s3, state, "authentication")
    assert mapped == "s3a://corp-sec/exfilwatch/lake/" + local.split("/lake/", 1)[1]
    assert mapped.startswith("s3a://corp-sec/exfilwatch/lake/authentication/day=2026-03-03/")


def test_a_misspelt_spark_setting_is_named():
    with pytest.raises(ConfigError, match="spark"):
        parse_settings({"spark": {"lake": "s3a://x"}}, "config.yaml")


def test_a_lake_file_outside_the_lake_folder_is_not_silently_mapped(tmp_path):
    class Elsewhere:
        def lake_files(self, model):
            return ["/elsewhere/x.parquet"]

        def relative(self, path):
            return path

    with pytest.raises(SparkUnavailable, match="outside the home's lake"):
        spark_lake_paths(parse_settings({"spark": {"lake_uri": "hdfs://nn/lake"}}, "test"), Elsewhere(), "email")


def test_spark_rows_come_back_as_duckdb_gives_them():
    """A rule's evidence columns (lists of structs) read the same from both engines: Spark's Row is a
    tuple, DuckDB gives a dict; naive Spark times are UTC."""
    pyspark_sql = pytest.importorskip("pyspark.sql")
    from datetime import datetime, timezone

    from exfilwatch.events.spark import python_value

    Row = pyspark_sql.Row
    sparked = [Row(domain="gmail.com", messages=2, seen=datetime(2026, 10, 15, 14, 0)), Row(domain="x.example",
                                                                                           messages=None, seen=None)]
    assert python_value(sparked) == [
        {"domain": "gmail.com", "messages": 2, "seen": datetime(2026, 10, 15, 14, 0, tzinfo=timezone.utc)},
        {"domain": "x.example", "messages": None, "seen": None}]
    assert python_value(Row(outer=[Row(inner=1)])) == {"outer": [{"inner": 1}]}


@pytest.mark.parametrize("command", ["detect", "run", "sessions"])
def test_an_unknown_engine_is_one_line_and_exit_2(tmp_path, command):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "from exfilwatch.cli import app; app()", "--home", str(tmp_path),
                           command, "--engine", "sparkk", "--now", "2026-10-05T12:00:00Z"],
                          capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "--engine 'sparkk'" in line and "duckdb or spark" in line
