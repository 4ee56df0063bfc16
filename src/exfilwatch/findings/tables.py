"""The findings stage's tables in the state store: findings and their suppressions (see state.py,
Schema); since migration 2, the catch-up's stored daily sums (findings/dailysums.py).
"""

from __future__ import annotations

from exfilwatch.state import StageSchema

SCHEMA = StageSchema("findings", (
    """
CREATE TABLE IF NOT EXISTS findings (
    finding_key TEXT PRIMARY KEY,
    detection_id TEXT NOT NULL,
    entity TEXT NOT NULL,
    bucket TEXT NOT NULL,
    time TEXT NOT NULL,
    value REAL,
    risk_score REAL NOT NULL,
    message TEXT NOT NULL,
    risk_objects TEXT NOT NULL,
    fields TEXT NOT NULL,
    first_run_id INTEGER,
    last_run_id INTEGER,
    updates INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS findings_detection_time ON findings(detection_id, time);
CREATE TABLE IF NOT EXISTS suppressions (
    suppression_id TEXT PRIMARY KEY,
    detection_id TEXT NOT NULL,          -- or '*'
    entity TEXT,                         -- glob
    conditions TEXT NOT NULL,            -- JSON: field -> value, glob, list or {min,max,gt,lt}
    owner TEXT NOT NULL,
    reason TEXT NOT NULL,
    created TEXT NOT NULL,
    expires TEXT                         -- ISO 8601 UTC; NULL = never
);
CREATE TABLE IF NOT EXISTS finding_suppressions (
    finding_key TEXT PRIMARY KEY,        -- every finding once risk has seen it
    suppression_id TEXT,                 -- NULL = not suppressed
    decided_at TEXT NOT NULL             -- the run's now
);
""",
    # findings/dailysums.py: one Parquet file of a day's sums per definition and local day, with
    # the lake files it was summed from (their hash): another set of files means it is stale
    """
CREATE TABLE IF NOT EXISTS daily_sums (
    definition TEXT NOT NULL,            -- hash of what is summed: model, keys, sums, condition, zone, inventory
    day TEXT NOT NULL,                   -- the local day, ISO date
    signature TEXT NOT NULL,             -- hash of the committed lake files the day was summed from
    path TEXT NOT NULL,                  -- home-relative, like batch_files.path
    PRIMARY KEY (definition, day)
);
""",
))
