"""The local day of a flow or message outside VPN sessions, by the zone's offsets in the build's
window (features/sessions.py `LocalDays`, what DuckDB runs), is the one DuckDB's time-zone conversion
gives (the reference, what Spark runs): in zones with DST, with half- and quarter-hour offsets, with
changes at local midnight, over windows that cross one or several changes, and for instants outside
the window."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import duckdb
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from exfilwatch.features import sessions as ses

ZONES = ["America/New_York", "Europe/Dublin", "Australia/Lord_Howe", "Asia/Kolkata", "Asia/Kathmandu",
         "Pacific/Chatham", "America/Santiago", "America/Havana", "Africa/Casablanca", "Asia/Tehran", "UTC",
         "America/St_Johns", "Pacific/Apia"]

_CON = duckdb.connect()


def _days(days_of: ses.LocalDays, instants: list[datetime]) -> list[int]:
    _CON.execute("CREATE OR REPLACE TEMP TABLE t AS SELECT unnest($i) AS _time", {"i": instants})
    sql = days_of.number_sql(_CON, "_time")
    return [row[0] for row in _CON.execute(f"SELECT {sql} FROM t ORDER BY _time").fetchall()]


_starts = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2036, 1, 1), timezones=st.just(timezone.utc))


@hsettings(max_examples=60, deadline=None)
@given(zone=st.sampled_from(ZONES), lo=_starts, hours=st.integers(1, 24 * 400),
       offsets=st.lists(st.integers(-3 * 86_400_000_000, 403 * 86_400_000_000), min_size=1, max_size=60))
def test_local_days_by_offsets_are_those_of_the_time_zone_conversion(zone, lo, hours, offsets):
    hi = lo + timedelta(hours=hours)
    instants = sorted(lo + timedelta(microseconds=o) for o in offsets)
    by_offsets = ses._local_days(_CON, zone, lo, hi)
    assert _days(by_offsets, instants) == _days(ses.LocalDays(zone), instants)


def test_the_instants_around_the_clocks_going_back_and_forward_take_the_reference_day():
    # New York: back at 2026-11-01 06:00 UTC (01:59:59 EDT -> 01:00 EST); Lord Howe: forward by
    # half an hour at 2026-10-03 15:30 UTC; Havana changes at local midnight
    for zone, change in [("America/New_York", datetime(2026, 11, 1, 6)), ("Australia/Lord_Howe", datetime(2026, 10, 3, 15, 30)),
                         ("America/Havana", datetime(2026, 11, 1, 5)), ("America/Havana", datetime(2026, 3, 8, 5))]:
        change = change.replace(tzinfo=timezone.utc)
        days_of = ses._local_days(_CON, zone, change - timedelta(days=20), change + timedelta(days=20))
        assert len(days_of.changes) >= 2, "the window's offset change was found"
        instants = [change + timedelta(hours=h, microseconds=u) for h in range(-30, 30) for u in (-1, 0, 1)]
        assert _days(days_of, instants) == _days(ses.LocalDays(zone), instants)
