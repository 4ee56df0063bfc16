"""Splunk-style time expressions for search windows and daily buckets.

Detections and the command line describe their time windows the way Splunk
users are used to: ``earliest=-1d@d latest=@d``.  This module turns such text
into timezone-aware UTC datetimes, relative to an explicit ``now`` (it never
reads the wall clock, so results are reproducible and testable).

* ``relative_time(now, "-1d@d-2h", tz)`` -- SPL ``relative_time``: a chain of
  offsets (``+1h``, ``-30d``, ``-mon``) and snaps (``@d``, ``@w1``, ``@q``),
  applied left to right.  Offsets in s/m/h are exact durations; offsets in
  d/w/mon/q/y are calendar arithmetic on the local wall clock in ``tz`` (so
  ``-1d`` keeps the time of day across a DST change).  Snaps truncate the local
  wall clock in ``tz``.  A local time that does not exist or is ambiguous is
  resolved as ``zoneinfo`` does with ``fold=0``.
* ``parse_time(text, now, tz)`` -- for ``--earliest/--latest/--now`` options:
  a relative modifier, epoch seconds, Splunk's ``%m/%d/%Y:%H:%M:%S`` or ISO 8601.
* ``day_start`` / ``day_range`` -- local midnights, for daily buckets.
"""

from __future__ import annotations

from exfilwatch.errors import TimeError

import functools
import re
from calendar import monthrange
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["TimeModifierError", "relative_time", "parse_time", "day_start", "day_range", "epoch_us"]

UTC = timezone.utc

_UNITS = {
    "s": ("s", "sec", "secs", "second", "seconds"),
    "m": ("m", "min", "mins", "minute", "minutes"),
    "h": ("h", "hr", "hrs", "hour", "hours"),
    "d": ("d", "day", "days"),
    "w": ("w", "week", "weeks"),
    "mon": ("mon", "month", "months"),
    "q": ("q", "qtr", "qtrs", "quarter", "quarters"),
    "y": ("y", "yr", "yrs", "year", "years"),
}
_UNIT_OF = {alias: unit for unit, aliases in _UNITS.items() for alias in aliases}
_UNIT_LIST = ", ".join(_UNITS)
_SNAP_LIST = "s, m, h, d, w0-w7, mon, q, y"

_CHAIN = re.compile(r"(?:[-+@][^-+@]*)+")
_PART = re.compile(r"[-+@][^-+@]*")
_OFFSET = re.compile(r"([-+])([0-9]*)(.*)", re.S)
_SNAP = re.compile(r"@([a-z]*)([0-9]*)")
_EPOCH = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_SPLUNK_ABS = "%m/%d/%Y:%H:%M:%S"


class TimeModifierError(TimeError):
    """A time modifier, timestamp or time zone could not be understood."""


def relative_time(now: datetime, modifier: str, tz: str | tzinfo) -> datetime:
    """Apply a Splunk relative time modifier to ``now``; return aware UTC."""
    return _relative_time(now, modifier, tz)


# The result depends only on the instant `now` (equal aware datetimes are the same instant), the
# text and the zone, and a catch-up asks the same few for every detection on the same schedule:
# 49,290 calls and 0.66 s of a 1000 x 30 first run's profile, for a few thousand distinct ones.
@functools.lru_cache(maxsize=65536)
def _relative_time(now: datetime, modifier: str, tz: str | tzinfo) -> datetime:
    zone = _zone(tz)
    t = _utc(now)
    text = modifier.strip().lower()
    if text in ("", "now"):
        return t
    if not _CHAIN.fullmatch(text):
        raise TimeModifierError(
            f"cannot parse time modifier {modifier!r}: expected 'now', offsets like"
            " '-1d' or '+30m' and snaps like '@d' or '@w1', e.g. '-1d@d-2h'"
        )
    for part in _PART.findall(text):
        step = _snap if part[0] == "@" else _offset
        try:
            t = step(t, part, modifier, zone)
        except TimeModifierError:
            raise
        except (OverflowError, ValueError) as exc:  # date arithmetic left years 1..9999
            raise TimeModifierError(f"time modifier {modifier!r} is out of range") from exc
    return t


def parse_time(text: str, now: datetime, tz: str | tzinfo) -> datetime:
    """Parse a relative modifier, epoch seconds, Splunk absolute time or ISO 8601.

    Returns aware UTC.  Times without an explicit offset are local to ``tz``.
    """
    s = text.strip()
    zone = _zone(tz)
    if not s or s[0] in "+-@" or s.lower() == "now":
        return relative_time(now, s, zone)
    if _EPOCH.fullmatch(s):
        try:
            return datetime.fromtimestamp(float(s), UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise TimeModifierError(f"epoch time {text!r} is out of range") from exc
    try:
        if "/" in s:
            t = datetime.strptime(s, _SPLUNK_ABS)
        else:
            t = datetime.fromisoformat(s)
    except ValueError as exc:
        raise TimeModifierError(
            f"cannot parse time {text!r}: expected a relative modifier like '-1d@d',"
            " epoch seconds, 'MM/DD/YYYY:HH:MM:SS' or ISO 8601 like '2026-10-31T23:00'"
        ) from exc
    if t.tzinfo is None:
        t = t.replace(tzinfo=zone)
    try:
        return t.astimezone(UTC)
    except OverflowError as exc:
        raise TimeModifierError(f"time {text!r} is out of range") from exc


def day_start(t: datetime, tz: str | tzinfo) -> datetime:
    """Local midnight (in ``tz``) of the day containing ``t``, as aware UTC."""
    zone = _zone(tz)
    return _at_midnight(_utc(t).astimezone(zone).date(), zone)


def day_range(start: datetime, end: datetime, tz: str | tzinfo) -> list[datetime]:
    """Local midnights (aware UTC) of the days that overlap ``[start, end)``."""
    zone = _zone(tz)
    start, end = _utc(start), _utc(end)
    if start >= end:
        return []
    day = start.astimezone(zone).date()
    out = []
    while (m := _at_midnight(day, zone)) < end:
        out.append(m)
        day += timedelta(days=1)
    return out


# -- internals ---------------------------------------------------------------


def _zone(tz: str | tzinfo) -> tzinfo:
    if isinstance(tz, tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise TimeModifierError(f"unknown time zone {tz!r}: expected an IANA name like 'Europe/Berlin'") from exc


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise TimeModifierError(f"time {t.isoformat()} must be timezone-aware")
    try:
        return t.astimezone(UTC)
    except OverflowError as exc:
        raise TimeModifierError(f"time {t.isoformat()} is out of range") from exc


def _local_to_utc(wall: datetime, zone: tzinfo) -> datetime:
    """Naive local wall-clock time -> aware UTC, resolving gaps/overlaps with fold=0."""
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def _at_midnight(day: date, zone: tzinfo) -> datetime:
    return _local_to_utc(datetime.combine(day, time()), zone)


def _offset(t: datetime, part: str, modifier: str, zone: tzinfo) -> datetime:
    sign, digits, unit_text = _OFFSET.fullmatch(part).groups()
    if not unit_text:
        raise TimeModifierError(
            f"missing time unit after {part!r} in {modifier!r}: expected one of {_UNIT_LIST}"
        )
    unit = _UNIT_OF.get(unit_text)
    if unit is None:
        raise TimeModifierError(
            f"unknown time unit {unit_text!r} in {modifier!r}: expected one of {_UNIT_LIST}"
        )
    if len(digits) > 12:
        raise TimeModifierError(f"time modifier {modifier!r} is out of range")
    n = int(digits or "1") * (-1 if sign == "-" else 1)
    if unit in ("s", "m", "h"):  # exact durations
        return t + timedelta(seconds=n * {"s": 1, "m": 60, "h": 3600}[unit])
    wall = t.astimezone(zone).replace(tzinfo=None)
    if unit in ("d", "w"):
        wall += timedelta(days=n * (7 if unit == "w" else 1))
    else:
        wall = _add_months(wall, n * {"mon": 1, "q": 3, "y": 12}[unit])
    return _local_to_utc(wall, zone)


def _add_months(wall: datetime, months: int) -> datetime:
    """Calendar month arithmetic; the day is clamped to the target month's length."""
    y, m0 = divmod(wall.year * 12 + wall.month - 1 + months, 12)
    if not 1 <= y <= 9999:
        raise OverflowError("year out of range")
    return wall.replace(year=y, month=m0 + 1, day=min(wall.day, monthrange(y, m0 + 1)[1]))


def _snap(t: datetime, part: str, modifier: str, zone: tzinfo) -> datetime:
    match = _SNAP.fullmatch(part)
    unit = _UNIT_OF.get(match.group(1)) if match else None
    if unit is None:
        raise TimeModifierError(
            f"unknown snap {part!r} in {modifier!r}: expected '@' and one of {_SNAP_LIST}"
        )
    weekday = match.group(2)
    if weekday and (unit != "w" or int(weekday) > 7):
        raise TimeModifierError(
            f"bad snap {part!r} in {modifier!r}: only week snaps take a day number, '@w0'..'@w7'"
        )
    local = t.astimezone(zone)
    if unit in ("s", "m", "h"):  # keep fold so a repeated hour stays the same hour
        fields = {"microsecond": 0}
        if unit in ("m", "h"):
            fields["second"] = 0
        if unit == "h":
            fields["minute"] = 0
        return local.replace(**fields).astimezone(UTC)
    day = local.date()
    if unit == "w":  # Splunk weekdays: 0 = Sunday ... 6 = Saturday, 7 = Sunday
        splunk_weekday = (day.weekday() + 1) % 7
        day -= timedelta(days=(splunk_weekday - int(weekday or "0")) % 7)
    elif unit == "mon":
        day = day.replace(day=1)
    elif unit == "q":
        day = day.replace(month=(day.month - 1) // 3 * 3 + 1, day=1)
    elif unit == "y":
        day = day.replace(month=1, day=1)
    return _at_midnight(day, zone)


_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_us(t: datetime) -> int:
    """Microseconds since the epoch of an aware datetime, exactly (DuckDB's `epoch_us`):
    `t.timestamp() * 1e6` is a float and can land a microsecond off."""
    return (t - _EPOCH_UTC) // timedelta(microseconds=1)


def as_time(value: object) -> datetime | None:
    """A stored time (ISO 8601 text or a datetime) as an aware UTC datetime; naive means UTC.
    None for anything that is not a time (a session id in a bucket, an empty field)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
