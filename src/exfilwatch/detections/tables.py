"""The detections stage's tables in the state store: runs and watermarks (see state.py, Schema);
since migration 2, the parameter overrides and disabled detections an admin set in the console.
"""

from __future__ import annotations

from exfilwatch.state import StageSchema

SCHEMA = StageSchema("detections", (
    """
CREATE TABLE IF NOT EXISTS detection_runs (
    run_id INTEGER PRIMARY KEY,
    detection_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    now TEXT NOT NULL,
    earliest TEXT NOT NULL,
    latest TEXT NOT NULL,
    findings INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS watermarks (
    detection_id TEXT PRIMARY KEY,
    last_fire TEXT NOT NULL
);
""",
    # detections/overrides.py: set in the console, applied by the pipeline over config.yaml's
    """
CREATE TABLE IF NOT EXISTS detection_overrides (
    detection_id TEXT NOT NULL,
    parameter TEXT NOT NULL,
    value TEXT NOT NULL,                 -- JSON
    PRIMARY KEY (detection_id, parameter)
);
CREATE TABLE IF NOT EXISTS detection_disabled (
    detection_id TEXT PRIMARY KEY
);
""",
))
