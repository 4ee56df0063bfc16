"""Local times as instants (sources.syslog_header.local_time_sql): the UTC shortcut gives exactly
what DuckDB's `timezone('UTC', …)` gives, the infinities and nulls included."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import duckdb
from hypothesis import given, strategies as st

from exfilwatch.sources.syslog_header import UTC_ZONES, local_time_sql

_NAIVE = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999))


def _connection() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'Europe/Berlin'")  # the shortcut must not depend on the session's zone
    return con


@given(st.lists(_NAIVE.map(lambda d: d.isoformat(sep=" ")) | st.sampled_from(["infinity", "-infinity", "not a time"]),
                min_size=1, max_size=20), st.sampled_from(sorted(UTC_ZONES)))
def test_utc_shortcut_is_timezone_of_the_same_wall_clock_time(texts: list[str], zone: str) -> None:
    naive = "TRY_CAST(x AS TIMESTAMP)"
    rows = _connection().execute(
        f"SELECT x, CAST({local_time_sql(naive, zone)} AS VARCHAR), CAST(timezone('{zone}', {naive}) AS VARCHAR) "
        "FROM unnest(?) t(x)", [texts]).fetchall()
    for text, shortcut, reference in rows:
        assert shortcut == reference, text


@given(_NAIVE, st.sampled_from(sorted(UTC_ZONES)))
def test_every_utc_zone_is_utc_at_every_instant(moment: datetime, zone: str) -> None:
    assert ZoneInfo(zone).utcoffset(moment) == timedelta(0)


def test_other_zones_still_convert_their_wall_clock_time() -> None:
    summer = _connection().execute(
        f"SELECT {local_time_sql(chr(39) + '2026-07-01 12:00:00' + chr(39) + '::TIMESTAMP', 'Europe/Berlin')}").fetchone()[0]
    assert summer == datetime(2026, 7, 1, 10, tzinfo=timezone.utc)
