"""What the lake has taken in, per source and receiver: the counts behind `exfilwatch status` and
the console's Sources page, and the quarantined lines with their reasons.

Read-only functions over the state store; a receiver is the file or listener a batch came
through (a file path, or `<protocol>:<port>@<peer>` / `hec` for what `exfilwatch serve` received).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from exfilwatch.state import StateStore


UNRECOGNISED = "(no source recognised)"  # the row of lines no source claimed


def source_totals(state: StateStore, per_receiver: bool = True) -> list[dict[str, Any]]:
    """Per source (and receiver): batches, lines read, events written, lines skipped and
    quarantined; then a row for the lines no source recognised (an `auto` listener's lines whose
    program tag names no product: the service quarantines them in batches of their own, with no
    lake batch, service/ingester.py), when there are any."""
    group = "source, receiver" if per_receiver else "source"
    rows = [dict(row) for row in state.query(
        f"SELECT {group}, count(*) AS batches, sum(lines) AS lines, sum(events) AS events, "
        f"sum(skipped) AS skipped, sum(quarantined) AS quarantined FROM batches GROUP BY {group} ORDER BY {group}")]
    unclaimed = state.query(
        "SELECT count(DISTINCT batch_id) AS batches, count(*) AS lines FROM quarantine q "
        "WHERE NOT EXISTS (SELECT 1 FROM batches b WHERE b.batch_id = q.batch_id)")[0]
    if unclaimed["lines"]:
        rows.append({"source": UNRECOGNISED, **({"receiver": ""} if per_receiver else {}),
                     "batches": unclaimed["batches"], "lines": unclaimed["lines"], "events": 0, "skipped": 0,
                     "quarantined": unclaimed["lines"]})
    return rows


def lines_per_day(state: StateStore, timezone: str = "UTC") -> list[dict[str, Any]]:
    """Per source, receiver and day the lines were received (in `timezone`): lines read, events
    written, lines skipped and quarantined. Batches committed before receipt times were recorded
    are left out (their totals are in `source_totals`)."""
    # Summed per UTC hour in SQL (a busy listener commits a batch a second), then each hour goes
    # to the local day its start falls in: exact for every zone whose offset is whole hours.
    rows = state.query(
        "SELECT source, receiver, substr(received_at, 1, 13) AS hour, sum(lines) AS lines, sum(events) AS events, "
        "sum(skipped) AS skipped, sum(quarantined) AS quarantined FROM batches WHERE received_at IS NOT NULL "
        "GROUP BY source, receiver, hour")
    zone = ZoneInfo(timezone)
    days: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        hour = datetime.fromisoformat(row["hour"] + ":00+00:00")
        day = hour.astimezone(zone).date().isoformat()
        totals = days.setdefault((row["source"], row["receiver"], day), {
            "source": row["source"], "receiver": row["receiver"], "day": day,
            "lines": 0, "events": 0, "skipped": 0, "quarantined": 0})
        for measure in ("lines", "events", "skipped", "quarantined"):
            totals[measure] += row[measure]
    return sorted(days.values(), key=lambda r: (r["day"], r["source"], r["receiver"]))


def events_per_day(state: StateStore) -> list[dict[str, Any]]:
    """Events written to the lake per source and UTC day (the lake's partitions)."""
    return [dict(row) for row in state.query(
        "SELECT b.source, f.day, sum(f.rows) AS events FROM batch_files f JOIN batches b USING (batch_id) "
        "GROUP BY b.source, f.day ORDER BY f.day, b.source")]


def quarantined(state: StateStore, limit: int = 200, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
    """How many lines are quarantined, and a page of them (file, line, source, reason, raw line)."""
    total = state.query("SELECT count(*) AS n FROM quarantine")[0]["n"]
    rows = [dict(r) for r in state.query(
        "SELECT file, line_no, source, reason, raw FROM quarantine ORDER BY file, line_no LIMIT ? OFFSET ?",
        (limit, offset))]
    return total, rows
