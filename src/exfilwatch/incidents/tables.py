"""The incidents stage's tables in the state store (see state.py, Schema): incidents, with the
analyst's workflow (status, disposition, assignee) since migration 2, and their comments; since
migration 3 every incident rule that contributed to an incident (`rules`, a JSON list, the rule
that opened it first), because one incident per entity and episode is continued by any rule.
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
    # The workflow (incidents/workflow.py). Incidents raised before it are untriaged: `new`.
    """
ALTER TABLE incidents ADD COLUMN status TEXT NOT NULL DEFAULT 'new';   -- new | in_progress | closed
ALTER TABLE incidents ADD COLUMN disposition TEXT;                      -- when closed
ALTER TABLE incidents ADD COLUMN assignee TEXT;
ALTER TABLE incidents ADD COLUMN closed_at TEXT;
CREATE INDEX IF NOT EXISTS incidents_status ON incidents(status, last_time);
CREATE TABLE IF NOT EXISTS incident_comments (
    comment_id INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL REFERENCES incidents(incident_id) ON DELETE CASCADE,
    at TEXT NOT NULL,
    author TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incident_comments_incident ON incident_comments(incident_id);
""",
    # Incidents raised before it had one rule each: the one that opened them.
    """
ALTER TABLE incidents ADD COLUMN rules TEXT NOT NULL DEFAULT '[]';   -- JSON list, in order of contribution
UPDATE incidents SET rules = json_array(detection_id);
""",
))
