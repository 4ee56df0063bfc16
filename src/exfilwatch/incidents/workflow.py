"""The analyst's side of an incident: status, disposition, assignee and comments, each change audited.

An incident is `new` when raised, `in_progress` while someone works it, and `closed` with a
disposition (true positive, benign true positive, false positive) that says what it was: the
dispositions of a rule's incidents are its precision. Every change takes who made it (`actor`)
and when (`now`, never the clock) and writes one audit row (audit.py) in the same transaction,
so the trail on an incident is complete and never describes a change that did not happen. A
call that changes nothing writes nothing. Each call joins the caller's open transaction, so
several changes (assign, then close, then comment) can be made all or none.

The queue (`list_incidents`, `severity_counts`) and one incident (`get_incident`) are what the
CLI and the console read; both front ends hold no SQL of their own. A bad value (a status, a
disposition, a severity, an empty comment, an unknown incident) is a `UsageError` naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from exfilwatch import audit
from exfilwatch.errors import UsageError
from exfilwatch.incidents.correlation import INCIDENT, SEVERITY_RANK, decoded_incident
from exfilwatch.risk.events import stored_risk_events
from exfilwatch.state import StateStore

STATUSES = ("new", "in_progress", "closed")
DISPOSITIONS = ("true_positive", "benign_true_positive", "false_positive")


@dataclass(frozen=True)
class IncidentFilter:
    """Which incidents to list; every field set narrows the list (None: any)."""

    status: str | None = None
    severity: str | None = None  # this severity or above
    detection_id: str | None = None  # any rule that contributed to the incident
    entity: str | None = None  # the incident's risk object
    assignee: str | None = None
    start: datetime | None = None  # on last_time: incidents still active at or after start
    end: datetime | None = None  # on last_time: before end


def _one_of(kind: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise UsageError(f"{kind} {value!r}: expected one of {', '.join(allowed)}")
    return value


def _where(where: IncidentFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if where.status is not None:
        clauses.append("status = ?")
        params.append(_one_of("status", where.status, STATUSES))
    if where.severity is not None:
        floor = SEVERITY_RANK[_one_of("severity", where.severity, tuple(SEVERITY_RANK))]
        at_least = [name for name, rank in SEVERITY_RANK.items() if rank >= floor]
        clauses.append(f"severity IN ({','.join('?' * len(at_least))})")
        params += at_least
    if where.detection_id is not None:
        clauses.append("EXISTS (SELECT 1 FROM json_each(incidents.rules) WHERE json_each.value = ?)")
        params.append(where.detection_id)
    for column, value in (("risk_object", where.entity),
                          ("assignee", where.assignee)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    # julianday: the stored times are ISO 8601 with an offset, compared as instants, not as text
    for bound, op in ((where.start, ">="), (where.end, "<")):
        if bound is not None:
            if bound.tzinfo is None:
                raise UsageError(f"an incident filter time needs a time zone: {bound.isoformat()}")
            clauses.append(f"julianday(last_time) {op} julianday(?)")
            params.append(bound.isoformat())
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def list_incidents(state: StateStore, where: IncidentFilter = IncidentFilter(), *, limit: int | None = 200,
                   offset: int = 0) -> list[dict[str, Any]]:
    """The queue: incidents matching `where`, newest (latest activity) first; `limit` None: all."""
    sql, params = _where(where)
    rows = state.query(f"SELECT * FROM incidents{sql} ORDER BY julianday(last_time) DESC, incident_id DESC "
                       "LIMIT ? OFFSET ?", (*params, -1 if limit is None else limit, offset))
    return [decoded_incident(row) for row in rows]


def severity_counts(state: StateStore, where: IncidentFilter = IncidentFilter()) -> dict[str, int]:
    """How many incidents matching `where` there are of each severity (every severity named, 0 included)."""
    sql, params = _where(where)
    counts = {row["severity"]: row["n"] for row in state.query(
        f"SELECT severity, count(*) AS n FROM incidents{sql} GROUP BY severity", tuple(params))}
    return {name: counts.get(name, 0) for name in SEVERITY_RANK}


def _row(state: StateStore, incident_id: int) -> dict[str, Any]:
    rows = state.query("SELECT * FROM incidents WHERE incident_id = ?", (incident_id,))
    if not rows:
        raise UsageError(f"no incident {incident_id}")
    return dict(rows[0])


def get_incident(state: StateStore, incident_id: int) -> dict[str, Any] | None:
    """One incident with its comments (oldest first), its audit trail (newest first) and the risk
    events behind it (in time order); None when there is no such incident."""
    rows = state.query("SELECT * FROM incidents WHERE incident_id = ?", (incident_id,))
    if not rows:
        return None
    incident = decoded_incident(rows[0])
    incident["comments"] = [dict(r) for r in state.query(
        "SELECT comment_id, at, author, text FROM incident_comments WHERE incident_id = ? "
        "ORDER BY julianday(at), comment_id", (incident_id,))]
    incident["audit"] = audit.trail(state, object_type=INCIDENT, object_id=str(incident_id))
    keys = incident["event_keys"]
    events: list[dict[str, Any]] = []
    for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
        chunk = keys[start:start + 500]
        events += stored_risk_events(state, f"WHERE event_key IN ({','.join('?' * len(chunk))})", tuple(chunk))
    incident["risk_events"] = sorted(events, key=lambda e: (e["time"], e["event_key"]))
    return incident


def dispositions_by_detection(state: StateStore) -> dict[str, dict[str, int]]:
    """How the closed incidents were closed, per detection that contributed to them (one of the
    incident's rules, or the detection of one of its risk events): the precision an engineer
    tunes by. One query, however many incidents are closed."""
    rows = state.query(
        """SELECT detection_id, disposition, count(*) AS incidents FROM (
               SELECT i.incident_id, i.disposition, r.detection_id
               FROM incidents i, json_each(i.event_keys) k JOIN risk_events r ON r.event_key = k.value
               WHERE i.status = 'closed'
               UNION
               SELECT i.incident_id, i.disposition, rule.value FROM incidents i, json_each(i.rules) rule
               WHERE i.status = 'closed')
           GROUP BY detection_id, disposition""")
    outcomes: dict[str, dict[str, int]] = {}
    for row in rows:
        outcomes.setdefault(row["detection_id"], {})[row["disposition"]] = row["incidents"]
    return outcomes


def _change(state: StateStore, incident_id: int, action: str, after: Callable[[dict[str, Any]], dict[str, Any]], *,
            actor: str, now: datetime) -> None:
    """Set the columns `after(current incident)` returns and audit the change, in one transaction."""
    with state.atomic() as db:
        current = _row(state, incident_id)
        changed = after(current)
        before = {name: current[name] for name in changed}
        if before == changed:
            return
        db.execute(f"UPDATE incidents SET {', '.join(f'{name} = ?' for name in changed)} WHERE incident_id = ?",
                   (*changed.values(), incident_id))
        audit.record(state, actor=actor, now=now, action=action, object_type=INCIDENT,
                     object_id=str(incident_id), before=before, after=changed)


def assign(state: StateStore, incident_id: int, assignee: str | None, *, actor: str, now: datetime) -> None:
    """Give the incident to `assignee` (None: nobody)."""
    if assignee is not None:
        assignee = assignee.strip()
        if not assignee:
            raise UsageError("an assignee must not be empty (None unassigns)")
    _change(state, incident_id, "assign", lambda _: {"assignee": assignee}, actor=actor, now=now)


def set_status(state: StateStore, incident_id: int, status: str, *, disposition: str | None = None, actor: str,
               now: datetime) -> None:
    """Move the incident to `status`; `closed` needs a disposition, the others clear it."""
    _one_of("status", status, STATUSES)
    if status == "closed":
        if disposition is None:
            raise UsageError(f"closing incident {incident_id} needs a disposition: one of {', '.join(DISPOSITIONS)}")
        _one_of("disposition", disposition, DISPOSITIONS)
    elif disposition is not None:
        raise UsageError(f"disposition {disposition!r} goes only with status closed, not {status}")

    def after(current: dict[str, Any]) -> dict[str, Any]:
        # Closing again with another disposition keeps when it was first closed.
        closed_at = (current["closed_at"] or now.isoformat()) if status == "closed" else None
        return {"status": status, "disposition": disposition, "closed_at": closed_at}

    _change(state, incident_id, "set_status", after, actor=actor, now=now)


def add_comment(state: StateStore, incident_id: int, text: str, *, actor: str, now: datetime) -> None:
    """Add a comment by `actor` to the incident."""
    if not text or not text.strip():
        raise UsageError("a comment must not be empty")
    with state.atomic() as db:
        _row(state, incident_id)
        db.execute("INSERT INTO incident_comments (incident_id, at, author, text) VALUES (?,?,?,?)",
                   (incident_id, now.isoformat(), actor, text))
        audit.record(state, actor=actor, now=now, action="comment", object_type=INCIDENT,
                     object_id=str(incident_id), after={"text": text})

