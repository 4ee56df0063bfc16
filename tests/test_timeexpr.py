from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import duckdb
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from exfilwatch.timeexpr import (
    TimeModifierError,
    day_range,
    day_start,
    epoch_us,
    parse_time,
    relative_time,
)

UTC = timezone.utc
NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args):
    return datetime(*args, tzinfo=UTC)


# now = Sunday 2026-03-08 12:34:56 EDT (16:34:56Z), the US spring-forward day.
NOW = datetime(2026, 3, 8, 12, 34, 56, tzinfo=NY)


@pytest.mark.parametrize(
    "modifier, expected",
    [
        ("now", utc(2026, 3, 8, 16, 34, 56)),
        ("", utc(2026, 3, 8, 16, 34, 56)),
        ("@d", utc(2026, 3, 8, 5)),  # local midnight was still EST
        ("-1d@d", utc(2026, 3, 7, 5)),
        ("-70m@m", utc(2026, 3, 8, 15, 24)),
        ("-10m@m", utc(2026, 3, 8, 16, 24)),
        ("@h", utc(2026, 3, 8, 16)),
        ("@s", utc(2026, 3, 8, 16, 34, 56)),
        ("@w1", utc(2026, 3, 2, 5)),  # Monday before
        ("@w", utc(2026, 3, 8, 5)),  # today is Sunday
        ("@w0", utc(2026, 3, 8, 5)),
        ("@w7", utc(2026, 3, 8, 5)),
        ("@w6", utc(2026, 3, 7, 5)),
        ("@mon", utc(2026, 3, 1, 5)),
        ("@q", utc(2026, 1, 1, 5)),
        ("@y", utc(2026, 1, 1, 5)),
        ("-1d@d-2h", utc(2026, 3, 7, 3)),
        ("@d+8h", utc(2026, 3, 8, 13)),  # 8 real hours after midnight = 09:00 EDT
        ("+1h", utc(2026, 3, 8, 17, 34, 56)),
        ("-1d", utc(2026, 3, 7, 17, 34, 56)),  # calendar day: 12:34:56 EST
        ("-d", utc(2026, 3, 7, 17, 34, 56)),
        ("-24h", utc(2026, 3, 7, 16, 34, 56)),  # exact duration
        ("-1mon@mon", utc(2026, 2, 1, 5)),
        ("-30d@d", utc(2026, 2, 6, 5)),
        ("-1q@q", utc(2025, 10, 1, 4)),  # Oct 1 is EDT
        ("-1y@y", utc(2025, 1, 1, 5)),
        ("-2weeks@w1", utc(2026, 2, 16, 5)),  # Sun Feb 22 -> Mon Feb 16
        ("-90secs", utc(2026, 3, 8, 16, 33, 26)),
        ("+3hrs@h", utc(2026, 3, 8, 19)),
        ("-1QTR", utc(2025, 12, 8, 17, 34, 56)),
    ],
)
def test_splunk_examples(modifier, expected):
    got = relative_time(NOW, modifier, "America/New_York")
    assert got == expected
    assert got.tzinfo is UTC


@pytest.mark.parametrize(
    "now, modifier, tz, expected",
    [
        # US spring forward (2026-03-08) and fall back (2026-11-01)
        (datetime(2026, 3, 9, 12, tzinfo=NY), "-1d", NY, utc(2026, 3, 8, 16)),
        (datetime(2026, 3, 8, 1, 30, tzinfo=NY), "+1h", NY, utc(2026, 3, 8, 7, 30)),  # 03:30 EDT
        (datetime(2026, 11, 1, 12, tzinfo=NY), "@d", NY, utc(2026, 11, 1, 4)),
        (datetime(2026, 10, 31, 12, tzinfo=NY), "+1d", NY, utc(2026, 11, 1, 17)),
        # 02:30 does not exist on 2026-03-08: fold=0 uses the EST offset -> 03:30 EDT
        (datetime(2026, 3, 9, 2, 30, tzinfo=NY), "-1d", NY, utc(2026, 3, 8, 7, 30)),
        # 01:30 happens twice on 2026-11-01: fold=0 takes the first (EDT)
        (datetime(2026, 11, 2, 1, 30, tzinfo=NY), "-1d", NY, utc(2026, 11, 1, 5, 30)),
        # @h inside the repeated hour stays in the same occurrence
        (utc(2026, 11, 1, 6, 30), "@h", NY, utc(2026, 11, 1, 6)),
        (utc(2026, 11, 1, 5, 30), "@h", NY, utc(2026, 11, 1, 5)),
        # Europe/Berlin: spring forward 2026-03-29, fall back 2026-10-25
        (datetime(2026, 3, 29, 12, tzinfo=BERLIN), "@d", BERLIN, utc(2026, 3, 28, 23)),
        (datetime(2026, 3, 30, 12, tzinfo=BERLIN), "-1d", BERLIN, utc(2026, 3, 29, 10)),
        (datetime(2026, 10, 25, 12, tzinfo=BERLIN), "@d", BERLIN, utc(2026, 10, 24, 22)),
        (datetime(2026, 10, 26, 12, tzinfo=BERLIN), "-1d@d", BERLIN, utc(2026, 10, 24, 22)),
        (datetime(2026, 10, 25, 12, tzinfo=BERLIN), "-1w", BERLIN, utc(2026, 10, 18, 10)),
        # Sao Paulo 2018-11-04: clocks jumped 00:00 -> 01:00, so the day starts at 01:00
        (utc(2018, 11, 4, 14), "@d", "America/Sao_Paulo", utc(2018, 11, 4, 3)),
        # month arithmetic clamps the day
        (datetime(2026, 3, 31, 9, tzinfo=NY), "-1mon", NY, datetime(2026, 2, 28, 9, tzinfo=NY)),
        (datetime(2028, 3, 31, 9, tzinfo=NY), "-1mon", NY, datetime(2028, 2, 29, 9, tzinfo=NY)),
        (datetime(2028, 2, 29, 9, tzinfo=NY), "+1y", NY, datetime(2029, 2, 28, 9, tzinfo=NY)),
        (datetime(2026, 5, 31, 9, tzinfo=NY), "-1q", NY, datetime(2026, 2, 28, 9, tzinfo=NY)),
        # snapping uses the local day, not the UTC day
        (utc(2026, 3, 8, 3), "@d", NY, utc(2026, 3, 7, 5)),
        (utc(2026, 3, 8, 20), "@d", "Asia/Kolkata", utc(2026, 3, 8, 18, 30)),
        (utc(2026, 3, 8, 20), "@d", timezone.utc, utc(2026, 3, 8)),
    ],
)
def test_dst_and_calendar(now, modifier, tz, expected):
    assert relative_time(now, modifier, tz) == expected


@pytest.mark.parametrize(
    "modifier, message",
    [
        ("-3x@d", "unknown time unit 'x' in '-3x@d': expected one of s, m, h, d, w, mon, q, y"),
        ("-5", "missing time unit"),
        ("@x", "unknown snap '@x'"),
        ("-1d@", "unknown snap '@'"),
        ("@d3", "only week snaps take a day number"),
        ("@w8", "'@w0'..'@w7'"),
        ("yesterday", "cannot parse time modifier 'yesterday'"),
        ("1d", "cannot parse time modifier '1d'"),
        ("-1 d", "unknown time unit ' d'"),
        ("-99999y", "out of range"),
        ("+99999999999999999999d", "out of range"),
        ("-1d-" + "9" * 5000 + "h", "out of range"),
    ],
)
def test_errors(modifier, message):
    with pytest.raises(TimeModifierError) as err:
        relative_time(NOW, modifier, NY)
    assert message in str(err.value)


def test_other_errors():
    assert issubclass(TimeModifierError, ValueError)
    with pytest.raises(TimeModifierError, match="time zone 'Mars/Base'"):
        relative_time(NOW, "@d", "Mars/Base")
    with pytest.raises(TimeModifierError, match="timezone-aware"):
        relative_time(datetime(2026, 1, 1), "@d", NY)
    for bad in ("yesterday", "13/45/2026:00:00:00", "2026-13-01", "1e9", "-5"):
        with pytest.raises(TimeModifierError, match=repr(bad)):
            parse_time(bad, NOW, NY)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1700000000", utc(2023, 11, 14, 22, 13, 20)),
        ("1700000000.5", utc(2023, 11, 14, 22, 13, 20, 500000)),
        ("0", utc(1970, 1, 1)),
        ("10/31/2026:23:00:00", utc(2026, 11, 1, 3)),
        ("2026-10-31", utc(2026, 10, 31, 4)),
        ("2026-10-31T23:00", utc(2026, 11, 1, 3)),
        ("2026-10-31 23:00:00", utc(2026, 11, 1, 3)),
        ("2026-10-31T23:00+01:00", utc(2026, 10, 31, 22)),
        ("2026-10-31T23:00Z", utc(2026, 10, 31, 23)),
        ("-1d@d", utc(2026, 3, 7, 5)),
        (" now ", utc(2026, 3, 8, 16, 34, 56)),
        ("", utc(2026, 3, 8, 16, 34, 56)),
    ],
)
def test_parse_time(text, expected):
    got = parse_time(text, NOW, "America/New_York")
    assert got == expected
    assert got.tzinfo is UTC


def test_day_start_and_range():
    assert day_start(utc(2026, 10, 25, 12), BERLIN) == utc(2026, 10, 24, 22)
    days = day_range(utc(2026, 10, 24, 12), utc(2026, 10, 27, 0), "Europe/Berlin")
    assert days == [utc(2026, 10, 23, 22), utc(2026, 10, 24, 22), utc(2026, 10, 25, 23), utc(2026, 10, 26, 23)]
    # an end exactly on a midnight excludes that day; empty and inverted ranges are empty
    assert day_range(utc(2026, 3, 7, 5), utc(2026, 3, 9, 4), NY) == [utc(2026, 3, 7, 5), utc(2026, 3, 8, 5)]
    assert day_range(utc(2026, 3, 7, 5), utc(2026, 3, 7, 5), NY) == []
    assert day_range(utc(2026, 3, 9), utc(2026, 3, 7), NY) == []


# -- properties ----------------------------------------------------------------

# zones whose midnights always exist in the generated range (DST changes are not at midnight)
ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe", "America/St_Johns"]
SNAPS = ["@s", "@m", "@h", "@d", "@w", "@w1", "@w3", "@w6", "@w7", "@mon", "@q", "@y"]

instants = st.datetimes(
    min_value=datetime(1980, 1, 1), max_value=datetime(2080, 1, 1), timezones=st.just(UTC)
)
zones = st.sampled_from(ZONES)
fast = settings(max_examples=150, deadline=None)


@fast
@given(instants, zones, st.sampled_from(SNAPS))
def test_snap_is_idempotent_and_not_later(t, tz, snap):
    once = relative_time(t, snap, tz)
    assert once <= t
    assert relative_time(once, snap, tz) == once


@fast
@given(instants, zones)
def test_day_snap_is_local_midnight(t, tz):
    d = relative_time(t, "@d", tz)
    local = d.astimezone(ZoneInfo(tz))
    assert local.time() == time(0)
    assert local.date() == t.astimezone(ZoneInfo(tz)).date()
    assert d == day_start(t, tz)


@fast
@given(instants, zones, st.integers(0, 10_000))
def test_hours_round_trip(t, tz, n):
    assert relative_time(relative_time(t, f"+{n}h", tz), f"-{n}h", tz) == t
    assert relative_time(t, f"+{n}h-{n}h", tz) == t


@fast
@given(instants, zones, st.integers(0, 400))
def test_minus_days_then_snap_is_calendar(t, tz, n):
    zone = ZoneInfo(tz)
    day = t.astimezone(zone).date() - timedelta(days=n)
    expected = datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
    assert relative_time(t, f"-{n}d@d", tz) == expected
    assert relative_time(relative_time(t, f"-{n}d", tz), "@d", tz) == expected


@fast
@given(instants, instants, zones)
@example(datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(1981, 1, 1, tzinfo=timezone.utc), "Australia/Lord_Howe")
def test_day_range_is_consecutive_midnights(a, b, tz):
    start, end = min(a, b), min(max(a, b), min(a, b) + timedelta(days=60))
    days = day_range(start, end, tz)
    if start == end:
        assert days == []
        return
    assert days[0] == day_start(start, tz) <= start
    assert days[-1] < end <= relative_time(days[-1], "+1d@d", tz)
    for x, y in zip(days, days[1:]):
        # "+1d@d", not "+1d": where a zone skipped midnight (Lord Howe, 1981-03-01) a day starts at
        # its first real moment, and +1d keeps that time of day on the next date.
        assert relative_time(x, "+1d@d", tz) == y


@fast
@given(st.integers(0, 4_000_000_000), st.integers(0, 999_999))
def test_epoch_round_trip(seconds, micros):
    assert parse_time(str(seconds), NOW, NY).timestamp() == seconds
    text = f"{seconds}.{micros:06d}"
    assert abs(parse_time(text, NOW, NY).timestamp() - float(text)) < 1e-6


modifier_like = st.text(alphabet="+-@0123456789 smhdwonqyeckraxé.:/TZ", max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(modifier_like, st.text(max_size=20)), zones)
def test_garbage_only_raises_time_modifier_error(text, tz):
    for fn in (relative_time, lambda now, s, z: parse_time(s, now, z)):
        try:
            result = fn(NOW, text, tz)
        except TimeModifierError:
            continue
        assert result.tzinfo is UTC


@fast
@given(instants, zones, zones, st.sampled_from(["-90d", "-1d@d", "-10m@m", "@h", "-1h@h", "@w1", "now", "-mon@mon"]))
def test_the_same_instant_in_any_zone_gives_the_same_utc_result(t, tz, shown_in, modifier):
    # relative_time remembers its answers by instant: one written in another zone, asked first, must
    # not lend its offset to the answer (a run's windows are stored as text)
    local = t.astimezone(ZoneInfo(shown_in))
    first, second = relative_time(local, modifier, tz), relative_time(t, modifier, tz)
    assert first == second and first.utcoffset() == second.utcoffset() == timedelta(0)
    assert relative_time(t, modifier, tz).isoformat() == relative_time(local, modifier, tz).isoformat()


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
                    timezones=st.sampled_from([timezone.utc, ZoneInfo("America/New_York"), ZoneInfo("Asia/Kathmandu")])))
@example(datetime(2026, 11, 1, 5, 59, 59, 999999, tzinfo=timezone.utc))
def test_epoch_microseconds_are_duckdbs_exactly(t):
    assert epoch_us(t) == duckdb.connect().execute("SELECT epoch_us($t::TIMESTAMPTZ)", {"t": t}).fetchall()[0][0]
