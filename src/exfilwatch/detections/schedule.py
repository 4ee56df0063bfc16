"""Which fire times of a detection are due: one watermark mechanism for detections and incident rules.

A scheduled detection runs once at each cron fire time after its watermark (the last fire it
ran), oldest first; a first run starts from `since` or from the start of its data. Fires whose
window can hold no data are skipped in bulk: once a fire's window starts after the last row the
detection can read, every later fire's window does too (windows move forward with the fire), so
the catch-up jumps straight to the last fire before `now`. A run over logs from years ago with
the wall clock as `now` costs what a run at the end of the data costs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from croniter import croniter

from exfilwatch.state import StateStore


def fire_times(cron: str, after: datetime, until: datetime, tz: str) -> list[datetime]:
    """Cron fire times in (after, until], evaluated on the local clock of `tz`, in UTC."""
    return list(iter_fire_times(cron, after, until, tz))


def iter_fire_times(cron: str, after: datetime, until: datetime, tz: str) -> Iterator[datetime]:
    while True:
        block = _next_fires(cron, after, tz)
        for fire in block:
            if fire > until:
                return
            yield fire
        after = block[-1]


# Fires are asked for in blocks of a week of hourly fires, each block remembered by where it
# starts: the detections and incident rules of one run that share a schedule and a start (the
# four session rules; the three network rules) step croniter once between them. croniter's
# get_next was 6,537 calls and 0.7 s of a 1000 x 30 first run's profile, for 7 detections and
# 3 incident rules on two schedules.
_FIRE_BLOCK = 168


@functools.lru_cache(maxsize=1024)
def _next_fires(cron: str, after: datetime, tz: str) -> tuple[datetime, ...]:
    """The next _FIRE_BLOCK cron fire times after `after` on the local clock of `tz`, in UTC."""
    iterator = croniter(cron, after.astimezone(ZoneInfo(tz)))
    return tuple(iterator.get_next(datetime).astimezone(timezone.utc) for _ in range(_FIRE_BLOCK))


def last_fire_time(cron: str, until: datetime, tz: str) -> datetime:
    """The last cron fire time at or before `until`."""
    zone = ZoneInfo(tz)
    fire = croniter(cron, (until + timedelta(microseconds=1)).astimezone(zone)).get_prev(datetime)
    return fire.astimezone(timezone.utc)


def watermark(state: StateStore, detection_id: str) -> datetime | None:
    rows = state.query("SELECT last_fire FROM watermarks WHERE detection_id = ?", (detection_id,))
    return datetime.fromisoformat(rows[0]["last_fire"]) if rows else None


def set_watermark(state: StateStore, detection_id: str, fire: datetime) -> None:
    with state.atomic() as db:
        db.execute("INSERT INTO watermarks VALUES (?, ?) ON CONFLICT(detection_id) DO UPDATE SET last_fire=excluded.last_fire",
                   (detection_id, fire.isoformat()))


def clear_watermark(state: StateStore, detection_id: str) -> None:
    """Forget where a detection's schedule stopped: its next run catches up from the start."""
    with state.transaction() as db:
        db.execute("DELETE FROM watermarks WHERE detection_id = ?", (detection_id,))


@dataclass(frozen=True)
class DuePlan:
    """The fires to run, in order, and the fire the watermark ends at (later than the last run
    fire when empty fires at the end were skipped in bulk)."""

    fires: list[datetime]
    last: datetime | None
    skipped: int


def due_fires(state: StateStore, detection_id: str, cron: str, now: datetime, tz: str, *,
              data_start: datetime | None, data_end: datetime | None,
              window_start: Callable[[datetime], datetime], since: datetime | None = None) -> DuePlan:
    """The fires due at `now`: after the watermark (or from `since`, else the start of the data).

    `window_start(fire)` is the earliest time the fire's search reads; `data_end` the time of
    the last row it can read. A fire whose window starts after `data_end` finds nothing, and so
    does every later fire: those are counted as skipped and not listed.
    """
    after = watermark(state, detection_id)
    if after is None:
        start = since or data_start
        if start is None:
            return DuePlan([], None, 0)
        after = start - timedelta(microseconds=1)
    fires: list[datetime] = []
    for fire in iter_fire_times(cron, after, now, tz):
        if data_end is None or window_start(fire) > data_end:
            final = last_fire_time(cron, now, tz)
            skipped = _count_between(cron, fire, final, tz)
            return DuePlan(fires, final, skipped)
        fires.append(fire)
    return DuePlan(fires, fires[-1] if fires else None, 0)


def _count_between(cron: str, first: datetime, last: datetime, tz: str) -> int:
    """How many fires lie in [first, last] — estimated from the first two fires' spacing, since
    counting them one by one is what skipping avoids; only reported, never used for results."""
    if last < first:
        return 0
    zone = ZoneInfo(tz)
    iterator = croniter(cron, first.astimezone(zone))
    second = iterator.get_next(datetime).astimezone(timezone.utc)
    step = (second - first).total_seconds() or 1.0
    return 1 + int((last - first).total_seconds() // step)


def run_summary(state: StateStore) -> dict[str, dict[str, Any]]:
    """Per detection: its last run's `now`, how many runs and findings it has had, and its watermark."""
    marks = {r["detection_id"]: r["last_fire"] for r in state.query("SELECT * FROM watermarks")}
    out = {r["detection_id"]: {"last_run": r["now"], "runs": r["runs"], "findings": r["findings"],
                               "watermark": marks.get(r["detection_id"])}
           for r in state.query("SELECT detection_id, max(now) AS now, count(*) AS runs, sum(findings) AS findings "
                                "FROM detection_runs GROUP BY detection_id ORDER BY detection_id")}
    for detection_id, mark in marks.items():
        out.setdefault(detection_id, {"last_run": None, "runs": 0, "findings": 0, "watermark": mark})
    return out
