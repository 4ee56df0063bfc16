"""Incident rules: correlation detections over risk events raise one incident per entity and episode.

Correlation detections (type `correlation`, `data_model: risk_events`) run over a `risk_events`
view at each cron fire time since their watermark, like any scheduled detection (the pipeline's
schedule). Each output row is an incident candidate; it names the risk events behind it
(`event_keys`). A candidate that shares a risk event with an incident of the same rule and
object continues that incident (its score and severity can only grow); otherwise it is a new
incident. So one episode is one incident, however many hourly fires see it.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import duckdb

from exfilwatch.config import Settings
from exfilwatch.detections.runner import data_range, execute, resolve_parameters, run_window
from exfilwatch.events.engine import _drop_temp, plain
from exfilwatch.findings.record import display
from exfilwatch.risk.events import load_risk_events, stored_risk_events
from exfilwatch.state import StateStore, dumps

SEVERITY_RANK = {"informational": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}


@dataclass
class CorrelationResult:
    detection_id: str
    fires: int = 0
    evaluated: int = 0
    candidates: int = 0
    new: int = 0
    updated: int = 0


def upsert_incident(state: StateStore, detection: Any, row: dict[str, Any], now: datetime, tz: str) -> str:
    """Store an incident candidate: 'new', 'updated' (continues an incident) or 'unchanged'."""
    fields = {name: plain(value) for name, value in row.items()}
    entity = str(fields.get(detection.finding.entity))
    object_type = str(fields.get("risk_object_type") or "other")
    keys = sorted(str(k) for k in (fields.get("event_keys") or []))
    last = str(fields.get(detection.finding.time))
    first = str(fields.get("first_time") or last)
    score = fields.get(detection.finding.value) if detection.finding.value else None
    severity = str(fields.get("severity") or "medium").lower()
    message = detection.risk_message({name: display(value, tz) for name, value in row.items()})
    with state.transaction() as db:
        candidates = db.execute(
            "SELECT * FROM incidents WHERE detection_id = ? AND risk_object = ? ORDER BY incident_id DESC LIMIT 20",
            (detection.id, entity),
        ).fetchall()
        match = None
        for incident in candidates:
            old_keys = set(json.loads(incident["event_keys"]))
            if (keys and old_keys & set(keys)) or (not keys and incident["last_time"] == last):
                match = incident
                break
        if match is None:
            db.execute(
                """INSERT INTO incidents (incident_key, detection_id, risk_object, risk_object_type, severity, score,
                   first_time, last_time, raised_at, updated_at, updates, message, event_keys, fields)
                   VALUES (?,?,?,?,?,?,?,?,?,?,0,?,?,?)""",
                (f"{detection.id}|{entity}|{first}", detection.id, entity, object_type, severity, score, first, last,
                 now.isoformat(), now.isoformat(), message, dumps(keys), dumps(fields)),
            )
            return "new"
        old_keys = set(json.loads(match["event_keys"]))
        grew = (score is not None and (match["score"] is None or score > match["score"])) or not set(keys) <= old_keys
        escalated = SEVERITY_RANK.get(severity, 0) > SEVERITY_RANK.get(match["severity"], 0)
        if not grew and not escalated:
            return "unchanged"
        better = score is not None and (match["score"] is None or score >= match["score"])
        db.execute(
            """UPDATE incidents SET severity=?, score=?, first_time=min(first_time, ?), last_time=max(last_time, ?),
               updated_at=?, updates=updates+1, message=?, event_keys=?, fields=? WHERE incident_id=?""",
            (severity if escalated else match["severity"], score if better else match["score"], first, last,
             now.isoformat(), message if better else match["message"], dumps(sorted(old_keys | set(keys))),
             dumps(fields) if better else match["fields"], match["incident_id"]),
        )
        return "updated"


class RiskEventTimeline:
    """Every stored risk event's time and when it became available, loaded once per risk step."""

    def __init__(self, con: duckdb.DuckDBPyConnection, state: StateStore):
        load_risk_events(con, stored_risk_events(state), "risk_events_all")
        self.pairs = [(t.astimezone(timezone.utc), a.astimezone(timezone.utc)) for t, a in con.execute(
            "SELECT _time, _available FROM risk_events_all ORDER BY _time").fetchall()]
        self.times = [t for t, _ in self.pairs]
        _drop_temp(con, "risk_events")

    @property
    def first(self) -> datetime | None:
        return self.times[0] if self.times else None

    @property
    def last(self) -> datetime | None:
        return self.times[-1] if self.times else None


def evaluate_fires(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings, detection: Any,
                   fires: list[datetime], events: RiskEventTimeline,
                   overrides: dict[str, Any] | None = None) -> CorrelationResult:
    """Run one incident rule at each of `fires`, in order, and store its incidents.

    Each fire sees the risk events in its window whose findings had been detected by then, as it
    would have live. A rule's result depends only on those events, so a fire that sees exactly
    the events of the previous evaluated fire is skipped, and so is a fire that sees none.
    """
    result = CorrelationResult(detection.id, fires=len(fires))
    previous: tuple[int, ...] | None = None
    for fire in fires:
        window = run_window(detection, fire, settings.timezone)
        params = resolve_parameters(detection, settings, overrides or {}, window)
        start, end = data_range(params)
        lo, hi = bisect.bisect_left(events.times, start), bisect.bisect_left(events.times, end)
        seen = tuple(i for i in range(lo, hi) if events.pairs[i][1] <= fire)
        if not seen or seen == previous:
            continue
        previous = seen
        result.evaluated += 1
        con.execute(f"CREATE OR REPLACE TEMP VIEW risk_events AS SELECT * FROM risk_events_all "
                    f"WHERE _available <= TIMESTAMPTZ '{fire.isoformat()}'")
        for row in execute(con, detection, params):
            result.candidates += 1
            outcome = upsert_incident(state, detection, row, fire, settings.timezone)
            result.new += outcome == "new"
            result.updated += outcome == "updated"
    return result


def decoded_incident(row: Any) -> dict[str, Any]:
    """A stored incident row as a dict, its JSON columns (event_keys, fields) decoded."""
    item = dict(row)
    item["event_keys"] = json.loads(item["event_keys"])
    item["fields"] = json.loads(item["fields"])
    return item


def stored_incidents(state: StateStore, where: str = "", params: tuple = ()) -> list[dict[str, Any]]:
    return [decoded_incident(row) for row in
            state.query(f"SELECT * FROM incidents {where} ORDER BY first_time, incident_id", params)]


def forget_rule(state: StateStore, detection_id: str) -> None:
    """Drop an incident rule's incidents (a backtest's copy of the store starts fresh)."""
    with state.transaction() as db:
        db.execute("DELETE FROM incidents WHERE detection_id = ?", (detection_id,))
