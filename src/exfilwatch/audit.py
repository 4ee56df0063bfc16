"""The audit trail: who changed what, when, from what to what, for every object a person can change.

`record` writes one row (at, actor, action, object type and id, the value before and after as
JSON) and `trail` reads them back, newest first. It is in the core because every stage with
something an analyst or an admin changes (incidents, detections, suppressions, users) records
here, and none of them should depend on another to do so.

A change and its audit row are one transaction: `record` joins the caller's open transaction
(so a change that rolls back leaves no row, and a row never describes a change that did not
happen), and opens its own when there is none. Times are the caller's `now`, never the clock.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from exfilwatch.errors import UsageError
from exfilwatch.state import StageSchema, StateStore, dumps

SCHEMA = StageSchema("audit", (
    """
CREATE TABLE IF NOT EXISTS audit (
    audit_id INTEGER PRIMARY KEY,        -- orders rows written in the same instant
    at TEXT NOT NULL,                    -- ISO 8601, the caller's now
    actor TEXT NOT NULL,                 -- a user name, or exfilwatch for what the pipeline did
    action TEXT NOT NULL,
    object_type TEXT NOT NULL,           -- incident, detection, suppression, user, ...
    object_id TEXT NOT NULL,
    before TEXT,                         -- JSON
    after TEXT                           -- JSON
);
CREATE INDEX IF NOT EXISTS audit_object ON audit(object_type, object_id);
""",
))


def record(state: StateStore, *, actor: str, now: datetime, action: str, object_type: str, object_id: str,
           before: Any = None, after: Any = None) -> None:
    """One audit row, within the caller's transaction if one is open."""
    if not actor or not actor.strip():
        raise UsageError("an audit row needs an actor: who made the change")
    if now.tzinfo is None:
        raise UsageError(f"an audit time needs a time zone: {now.isoformat()}")
    row = (now.isoformat(), actor.strip(), action, object_type, str(object_id),
           None if before is None else dumps(before), None if after is None else dumps(after))
    sql = "INSERT INTO audit (at, actor, action, object_type, object_id, before, after) VALUES (?,?,?,?,?,?,?)"
    with state.atomic() as db:
        db.execute(sql, row)


def trail(state: StateStore, *, object_type: str | None = None, object_id: str | None = None,
          limit: int = 500) -> list[dict[str, Any]]:
    """Audit rows, newest first, of one object type (and id) or of everything; before/after decoded."""
    where, params = [], []
    if object_type is not None:
        where.append("object_type = ?")
        params.append(object_type)
    if object_id is not None:
        where.append("object_id = ?")
        params.append(str(object_id))
    sql = ("SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY julianday(at) DESC, audit_id DESC LIMIT ?")
    rows = []
    for row in state.query(sql, (*params, limit)):
        item = dict(row)
        for name in ("before", "after"):
            item[name] = None if item[name] is None else json.loads(item[name])
        rows.append(item)
    return rows
