"""The features stage's tables in the state store: derived builds (see features/sessions.py, Storage,
and state.py, Schema)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from exfilwatch.events.tables import relativise_paths
from exfilwatch.state import StageSchema, sql_statements

TABLES = """
CREATE TABLE IF NOT EXISTS derived_builds (
    name TEXT PRIMARY KEY,
    built_until TEXT NOT NULL,
    settings_hash TEXT NOT NULL,
    counts TEXT  -- what the last build saw and could not use (SessionCounts, JSON)
);
CREATE TABLE IF NOT EXISTS derived_inputs (
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (name, path)
);
"""


def _create_derived(db: sqlite3.Connection, _root: Path) -> None:
    for statement in sql_statements(TABLES):
        db.execute(statement)
    columns = {row[1] for row in db.execute("PRAGMA table_info(derived_builds)")}
    if "counts" not in columns:  # a state store from before the column
        db.execute("ALTER TABLE derived_builds ADD COLUMN counts TEXT")


def _relative_inputs(db: sqlite3.Connection, root: Path) -> None:
    relativise_paths(db, root, "derived_inputs", "name")


SCHEMA = StageSchema("features", (_create_derived, _relative_inputs))
