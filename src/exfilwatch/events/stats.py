"""What the lake has taken in, per source and receiver: the counts behind `exfilwatch status` and
the console's Sources page, and the quarantined lines with their reasons.

Read-only functions over the state store; a receiver is the batch's `file` (a file path, or
`<protocol>:<port>@<peer>` / `hec` for what `exfilwatch serve` received).
"""

from __future__ import annotations

from typing import Any

from exfilwatch.state import StateStore


def source_totals(state: StateStore) -> list[dict[str, Any]]:
    """Per source and receiver: batches, lines read, events written, lines skipped and quarantined."""
    return [dict(row) for row in state.query(
        "SELECT source, file AS receiver, count(*) AS batches, sum(lines) AS lines, sum(events) AS events, "
        "sum(skipped) AS skipped, sum(quarantined) AS quarantined FROM batches "
        "GROUP BY source, file ORDER BY source, file")]


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
