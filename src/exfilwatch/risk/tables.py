"""The risk stage's table in the state store: risk events, rebuilt from findings on every risk run
(see state.py, Schema)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from exfilwatch.state import StageSchema, sql_statements

RISK_EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS risk_events (
    event_key TEXT PRIMARY KEY,          -- finding_key|risk object field
    finding_key TEXT NOT NULL,
    detection_id TEXT NOT NULL,
    time TEXT NOT NULL,                  -- ISO 8601 UTC
    risk_object TEXT NOT NULL,           -- after identity resolution
    risk_object_type TEXT NOT NULL,
    source_object TEXT NOT NULL,         -- as the finding named it
    source_object_type TEXT NOT NULL,
    risk_object_field TEXT NOT NULL,
    raw_score REAL NOT NULL,
    score REAL NOT NULL,                 -- after risk modifiers
    modifiers TEXT NOT NULL,             -- JSON: the modifiers applied
    message TEXT NOT NULL,
    techniques TEXT NOT NULL,            -- JSON list of ATT&CK ids
    tactics TEXT NOT NULL,               -- JSON list of tactic short names
    session_id TEXT,
    available TEXT NOT NULL              -- when its finding was first detected: incident rules see it from then
);
CREATE INDEX IF NOT EXISTS risk_events_object_time ON risk_events(risk_object, time);
"""


def _create_risk_events(db: sqlite3.Connection, _root: Path) -> None:
    columns = {row[1] for row in db.execute("PRAGMA table_info(risk_events)")}
    if columns and "available" not in columns:  # from before the column: the table is derived, rebuild it
        db.execute("DROP TABLE risk_events")
    for statement in sql_statements(RISK_EVENTS_DDL):
        db.execute(statement)


SCHEMA = StageSchema("risk", (_create_risk_events,))
