"""The state store: everything that is not event data, in one SQLite file in WAL mode.

Ingest checkpoints and committed lake batches, quarantined lines, detection runs and
watermarks, and findings. WAL lets the service, the CLI and the UI use it at once. A lake
batch becomes visible only when its row in `batch_files` is committed here, in the same
transaction that moves the file's checkpoint, so a killed ingest never leaves half a batch.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS file_checkpoints (
    path TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    inode INTEGER,
    offset INTEGER NOT NULL,
    line_no INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    source TEXT NOT NULL,
    file TEXT NOT NULL,
    first_line INTEGER NOT NULL,
    last_line INTEGER NOT NULL,
    lines INTEGER NOT NULL,
    events INTEGER NOT NULL,
    quarantined INTEGER NOT NULL,
    skipped INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_files (
    path TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL REFERENCES batches(batch_id),
    model TEXT NOT NULL,
    day TEXT NOT NULL,
    rows INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS batch_files_model_day ON batch_files(model, day);
-- Every address seen in committed network_traffic batches: the asset inventory is matched
-- against these at query time without scanning the lake.
CREATE TABLE IF NOT EXISTS lake_addresses (
    ip TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    batch_id TEXT NOT NULL,
    source TEXT NOT NULL,
    file TEXT NOT NULL,
    line_no INTEGER NOT NULL,
    reason TEXT NOT NULL,
    raw TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS skipped (
    batch_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (batch_id, kind)
);
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
-- risk-based alerting (risk.py): risk events are rebuilt from findings on every risk run;
-- suppression decisions, incidents and deliveries are kept.
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
CREATE TABLE IF NOT EXISTS deliveries (
    output TEXT NOT NULL,
    kind TEXT NOT NULL,                  -- incident | finding
    item_key TEXT NOT NULL,
    status TEXT NOT NULL,                -- delivered | pending
    attempts INTEGER NOT NULL,
    last_error TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (output, kind, item_key)
);
-- mail sources (sources/postfix.py, sources/mailcommon.py): lines of Postfix messages not yet
-- complete, and keys of messages already written (Exchange/M365 dedup across batches). A row
-- counts only once its producing batch is in `batches`; see mailcommon.recover.
CREATE TABLE IF NOT EXISTS postfix_pending (
    key TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    time INTEGER NOT NULL,
    message_id TEXT, sender TEXT, size INTEGER, nrcpt INTEGER, client_ip TEXT,
    rcpt TEXT, relay TEXT, dsn TEXT, status TEXT, hop INTEGER, subject TEXT, file_name TEXT,
    raw_ref TEXT NOT NULL,
    produced_by TEXT NOT NULL,
    consumed_by TEXT
);
CREATE INDEX IF NOT EXISTS postfix_pending_key ON postfix_pending(key);
CREATE TABLE IF NOT EXISTS mail_seen (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    time INTEGER NOT NULL,
    produced_by TEXT NOT NULL,
    PRIMARY KEY (source, key)
);
CREATE INDEX IF NOT EXISTS mail_seen_time ON mail_seen(source, time);
"""


class StateStore:
    """A thin, explicit wrapper over the SQLite state file."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    # --- ingest ---------------------------------------------------------------------------

    def checkpoint(self, path: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM file_checkpoints WHERE path = ?", (path,))
        return rows[0] if rows else None

    def checkpoint_by_fingerprint(self, fingerprint: str) -> sqlite3.Row | None:
        rows = self.query(
            "SELECT * FROM file_checkpoints WHERE fingerprint = ? ORDER BY offset DESC LIMIT 1", (fingerprint,)
        )
        return rows[0] if rows else None

    def lake_files(self, model: str, first_day: str | None = None, last_day: str | None = None) -> list[str]:
        """Committed Parquet files of a model, optionally only partitions in [first_day, last_day]."""
        sql = "SELECT path FROM batch_files WHERE model = ?"
        params: list[Any] = [model]
        if first_day:
            sql += " AND day >= ?"
            params.append(first_day)
        if last_day:
            sql += " AND day <= ?"
            params.append(last_day)
        return [row["path"] for row in self.query(sql + " ORDER BY day, path", tuple(params))]

    def committed_lake_paths(self) -> set[str]:
        return {row["path"] for row in self.query("SELECT path FROM batch_files")}

    # --- detections -------------------------------------------------------------------------

    def watermark(self, detection_id: str) -> str | None:
        rows = self.query("SELECT last_fire FROM watermarks WHERE detection_id = ?", (detection_id,))
        return rows[0]["last_fire"] if rows else None


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
