"""Risk events: each unsuppressed finding adds risk to the entities it names.

Risk events are rebuilt from the unsuppressed findings at each risk step: one per risk object a
finding names (field, type, score), with the finding's message, the detection's ATT&CK
techniques and their tactics, the finding's time and key. The entity resolver
(enrich/identities.py) maps a system (an IP or host name) to its user where `identities:` lists
the host or the asset inventory names an `owner`, so a user's VPN session and their laptop's
traffic add up on one entity. Risk modifiers from `risk_modifiers:` then multiply and add.
Rebuilding makes a change to identities, inventory or modifiers apply to old findings too.

The score cap ("one detection adds at most 3x its largest single score to an entity in the
window") lives in the incident rule's SQL, because it depends on the rule's window.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import duckdb
import pyarrow as pa

from exfilwatch.attack import tactics_of
from exfilwatch.config import Settings
from exfilwatch.enrich.identities import EntityResolver
from exfilwatch.events.engine import _drop_temp
from exfilwatch.findings.store import findings_for_risk
from exfilwatch.findings.suppressions import decide_suppressions
from exfilwatch.risk.modifiers import apply_modifiers
from exfilwatch.riskconfig import RiskModifier
from exfilwatch.sources.arrow import table_of
from exfilwatch.models import RISK_EVENT_COLUMNS
from exfilwatch.state import StateStore, dumps
from exfilwatch.timeexpr import as_time



@dataclass
class RiskEvent:
    event_key: str
    finding_key: str
    detection_id: str
    time: datetime
    risk_object: str
    risk_object_type: str
    source_object: str
    source_object_type: str
    risk_object_field: str
    raw_score: float
    score: float
    modifiers: list[dict[str, Any]]
    message: str
    techniques: list[str]
    tactics: list[str]
    session_id: str | None
    available: datetime | None = None

    def row(self) -> tuple:
        return (self.event_key, self.finding_key, self.detection_id, self.time.isoformat(), self.risk_object,
                self.risk_object_type, self.source_object, self.source_object_type, self.risk_object_field,
                self.raw_score, self.score, dumps(self.modifiers), self.message, dumps(self.techniques),
                dumps(self.tactics), self.session_id, (self.available or self.time).isoformat())

    def as_json(self) -> dict[str, Any]:
        return {"time": self.time.isoformat(), "risk_object": self.risk_object, "risk_object_type": self.risk_object_type,
                "source_object": self.source_object, "detection_id": self.detection_id, "raw_score": self.raw_score,
                "score": self.score, "modifiers": self.modifiers, "message": self.message,
                "techniques": self.techniques, "tactics": self.tactics, "session_id": self.session_id,
                "finding_key": self.finding_key}


_TIME_FIELDS = ("_time", "session_end", "end_time", "end", "time")


def finding_time(finding: dict[str, Any], fallback: datetime) -> datetime:
    """When a finding happened: its time if that is a time (a session-bucketed finding's may be an id)."""
    for candidate in (finding.get("time"), *(finding.get("fields", {}).get(name) for name in _TIME_FIELDS)):
        parsed = as_time(candidate)
        if parsed is not None:
            return parsed
    return fallback


def risk_events_for(
    finding: dict[str, Any],
    techniques: list[str],
    resolver: EntityResolver,
    modifiers: list[RiskModifier],
    fallback_time: datetime,
    detected: datetime | None = None,
) -> list[RiskEvent]:
    """One risk event per risk object of the finding that has a value.

    `detected` is when the finding was first detected (its first run's now): an incident rule
    replaying history sees the event only from then, as it would have live. Without it (findings
    loaded by hand) the event is available from its own time.
    """
    events = []
    when = finding_time(finding, fallback_time)
    available = max(when, detected) if detected is not None else when
    fields = finding.get("fields", {})
    session_id = fields.get("session_id")
    for obj in finding["risk_objects"]:
        value = obj.get("value")
        if value is None or str(value) == "":
            continue
        resolved = resolver.resolve(str(value), obj.get("type", "other"), when)
        attributes = {**resolved.attributes, "risk_object": resolved.risk_object,
                      "risk_object_type": resolved.risk_object_type, "source_object": str(value),
                      "detection_id": finding["detection_id"]}
        raw = float(obj.get("score") or 0)
        score, applied = apply_modifiers(raw, attributes, modifiers)
        events.append(RiskEvent(
            event_key=f"{finding['finding_key']}|{obj.get('field')}",
            finding_key=finding["finding_key"], detection_id=finding["detection_id"], time=when,
            risk_object=resolved.risk_object, risk_object_type=resolved.risk_object_type,
            source_object=str(value), source_object_type=obj.get("type", "other"),
            risk_object_field=str(obj.get("field")), raw_score=raw, score=score, modifiers=applied,
            message=finding.get("message", ""), techniques=list(techniques), tactics=tactics_of(techniques),
            session_id=str(session_id) if session_id is not None else None, available=available,
        ))
    return events


def techniques_by_detection(detections: Iterable[Any]) -> dict[str, list[str]]:
    return {d.id: list(d.tags.mitre_attack_id) for d in detections}


@dataclass
class RebuildResult:
    findings: int = 0
    newly_decided: int = 0
    newly_suppressed: int = 0
    suppressed: int = 0
    events: int = 0


def rebuild_risk_events(
    state: StateStore,
    settings: Settings,
    techniques: dict[str, list[str]],
    now: datetime,
) -> RebuildResult:
    """Decide suppressions for new findings, then rebuild every risk event from the unsuppressed ones."""
    result = RebuildResult()
    result.newly_decided, result.newly_suppressed = decide_suppressions(state, settings, now)
    resolver = EntityResolver(settings)
    events: list[RiskEvent] = []
    for row in findings_for_risk(state):
        result.findings += 1
        if row["suppression_id"] is not None:
            result.suppressed += 1
            continue
        finding = row
        fallback = datetime.fromisoformat(row["decided_at"])
        detected = datetime.fromisoformat(row["detected"]) if row["detected"] else None
        events += risk_events_for(finding, techniques.get(row["detection_id"], []), resolver, settings.risk_modifiers,
                                  fallback, detected)
    with state.transaction() as db:
        db.execute("DELETE FROM risk_events")
        db.executemany(f"INSERT INTO risk_events VALUES ({','.join('?' * 17)})", [e.row() for e in events])
    result.events = len(events)
    return result


def stored_risk_events(state: StateStore, where: str = "", params: tuple = ()) -> list[dict[str, Any]]:
    rows = state.query(f"SELECT * FROM risk_events {where} ORDER BY time, detection_id, risk_object", params)
    out = []
    for row in rows:
        item = dict(row)
        for name in ("modifiers", "techniques", "tactics"):
            item[name] = json.loads(item[name])
        out.append(item)
    return out


def _risk_events_arrow(rows: list[dict[str, Any]]) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in RISK_EVENT_COLUMNS}
    for row in rows:
        for name in RISK_EVENT_COLUMNS:
            if name == "_time":
                value = datetime.fromisoformat(row["time"])
            elif name == "_available":
                value = datetime.fromisoformat(row.get("available") or row["time"])
            else:
                value = row.get(name)
            columns[name].append(value)
    types = {"TIMESTAMPTZ": pa.timestamp("us", tz="UTC"), "VARCHAR": pa.string(), "DOUBLE": pa.float64(),
             "VARCHAR[]": pa.list_(pa.string())}
    schema = pa.schema([(name, types[typ]) for name, typ in RISK_EVENT_COLUMNS.items()])
    return table_of(columns, schema)


def register_risk_events_view(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings,
                              start: datetime | None = None, end: datetime | None = None) -> None:
    """Make `risk_events` a temporary table of the stored risk events in [start, end) detected by `end`."""
    where, params = [], []
    if start is not None:
        where.append("time >= ?")
        params.append(start.astimezone(timezone.utc).isoformat())
    if end is not None:
        where.append("time < ? AND available <= ?")
        params += [end.astimezone(timezone.utc).isoformat()] * 2
    rows = stored_risk_events(state, ("WHERE " + " AND ".join(where)) if where else "", tuple(params))
    load_risk_events(con, rows)


def load_risk_events(con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]], name: str = "risk_events") -> None:
    _drop_temp(con, name)
    con.register("risk_events_arrow", _risk_events_arrow(rows))
    con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM risk_events_arrow ORDER BY _time")
    con.unregister("risk_events_arrow")


def describe_event(event: dict[str, Any]) -> str:
    """One line for a report: +score object (type) <- source [techniques / tactics] message."""
    source = "" if event["source_object"] == event["risk_object"] else f" <- {event['source_object']}"
    mods = f" (raw {event['raw_score']:g})" if event["score"] != event["raw_score"] else ""
    return (f"+{event['score']:g}{mods} {event['risk_object']} ({event['risk_object_type']}){source} "
            f"[{', '.join(event['techniques']) or '-'} / {', '.join(event['tactics']) or '-'}] {event['message']}")
