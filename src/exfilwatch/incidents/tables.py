"""The incidents stage's table in the state store (see state.py, Schema).
"""

from __future__ import annotations

from exfilwatch.state import StageSchema

SCHEMA = StageSchema("incidents", (
    """
CREATE TABLE IF NOT EXISTS incidents (
    incident_id INTEGER PRIMARY KEY,
    incident_key TEXT NOT NULL UNIQUE,   -- rule|risk object|first risk event time
    detection_id TEXT NOT NULL,
    risk_object TEXT NOT NULL,
    risk_object_type TEXT NOT NULL,
    severity TEXT NOT NULL,
    score REAL,
    first_time TEXT NOT NULL,
    last_time TEXT NOT NULL,
    raised_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    updates INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL,
    event_keys TEXT NOT NULL,            -- JSON list of risk event keys
    fields TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_object ON incidents(risk_object, detection_id);
""",
))
