"""The events stage's tables in the state store: file checkpoints, committed lake batches and their
files, quarantined lines and skipped counts (see state.py, Schema).

Lake file paths are stored relative to the home (migration 2 makes those of a home from the
release before relative). `superseded_files` lists lake files that a newer batch replaced and
that a reader may still be reading: lake.py deletes them once no reader can hold them.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path, PurePosixPath

from exfilwatch.state import StageSchema, home_relative

LAKE = "lake"

TABLES = """
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
"""

SUPERSEDED = """
CREATE TABLE IF NOT EXISTS superseded_files (
    path TEXT PRIMARY KEY,               -- home-relative, like batch_files.path
    superseded_by TEXT NOT NULL          -- the batch or command that replaced it
);
"""


def stored_spelling(path: str, root: Path) -> str:
    """A lake path as a home made by the release before stored it, in today's spelling.

    That release stored the path it wrote to: absolute, or relative to the working folder of a
    home reached by a relative path. Paths under the home become home-relative; a path into
    another home's lake (this home was copied from it) or relative to some working folder
    becomes this home's file of the same name under `lake/` when that exists.
    """
    parts = PurePosixPath(path).parts
    if parts[:1] == (LAKE,):
        return path
    if os.path.isabs(path):
        relative = home_relative(path, root)
        if relative is not None:
            return relative
    if LAKE in parts:
        own = PurePosixPath(*parts[len(parts) - 1 - parts[::-1].index(LAKE):])
        if (root / own).is_file():
            return own.as_posix()
    return path


def relativise_paths(db: sqlite3.Connection, root: Path, table: str, *key: str) -> None:
    """Rewrite `table.path` in today's spelling (see `stored_spelling`), keeping its other key columns."""
    for base in dict.fromkeys((os.path.abspath(root), os.path.realpath(root))):
        prefix = base.rstrip(os.sep) + os.sep  # the common case, in one statement
        db.execute(f"UPDATE OR REPLACE {table} SET path = substr(path, ?) WHERE substr(path, 1, ?) = ?",
                   (len(prefix) + 1, len(prefix), prefix))
    columns = ("path", *key)
    where = " AND ".join(f"{name} = ?" for name in columns)
    left = db.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE substr(path, 1, ?) != ?",
                      (len(LAKE) + 1, LAKE + "/")).fetchall()
    for row in left:
        spelled = stored_spelling(row[0], root)
        if spelled != row[0]:
            db.execute(f"UPDATE OR REPLACE {table} SET path = ? WHERE {where}", (spelled, *row))


def _relative_batch_files(db: sqlite3.Connection, root: Path) -> None:
    relativise_paths(db, root, "batch_files")


# A receiver's write-ahead spool (service/spool.py): how far its records are committed to the lake,
# and, while a batch of several sources is half committed, where that batch ends, so that a
# restart cuts the replayed batch at the same place and its retried parts replace their attempts.
SPOOL_POSITIONS = """
CREATE TABLE IF NOT EXISTS spool_positions (
    spool TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    pending_end INTEGER NOT NULL
);
"""

# When each batch was received and through which file or listener, so the Sources page can show
# lines over time per receiver. `received_at` is the cursor's reference time: a file's last write,
# or the service's receipt time (never the wall clock of the ingest). Batches committed before this
# migration have no receipt time; their receiver is their `file`.
RECEIPT = """
ALTER TABLE batches ADD COLUMN received_at TEXT;   -- ISO 8601, UTC
ALTER TABLE batches ADD COLUMN receiver TEXT;
UPDATE batches SET receiver = file;
CREATE INDEX IF NOT EXISTS batches_received_at ON batches(received_at);
"""

SCHEMA = StageSchema("events", (TABLES, _relative_batch_files, SUPERSEDED, SPOOL_POSITIONS, RECEIPT))
