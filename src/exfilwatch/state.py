"""The state store: everything that is not event data, in one SQLite file in WAL mode.

Ingest checkpoints and committed lake batches, quarantined lines, detection runs and
watermarks, and findings. WAL lets the service, the CLI and the UI use it at once. A lake
batch becomes visible only when its row in `batch_files` is committed here, in the same
transaction that moves its cursor (a file's checkpoint), so a killed ingest never leaves half a
batch.

Schema. Each stage owns its tables and declares them as a `StageSchema`: its name and its
ordered migrations (SQL scripts, or functions of the connection and the home root for what SQL
cannot say). `schema_versions(stage, version)` records how many of a stage's migrations a store
has had; opening a store applies the pending ones of the stages it is given, in order, in one
transaction. The core imports no stage: whoever opens the store passes the stages
(`exfilwatch.home` passes them all; a stage that opens a store of its own passes the ones it
needs). `StateStore(path)` with no stages opens the store as it is.

Paths. Every path stored under the home (lake files) is relative to the home root, in POSIX
spelling, so a home reached by a relative path or a symlink, moved, or copied uses its own
files; `StateStore.root` is the home root the relative paths resolve against (`lake_files`
returns absolute paths, for DuckDB), which a copy of the store elsewhere (backtest) keeps
pointing at the real home. Such a copy is given a `scratch` folder: the lake files it derives go
there (stored absolute), and it never deletes a file of the home it reads.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A migration: an SQL script, or a function of the connection (inside the migrating
# transaction) and the home root.
Migration = str | Callable[[sqlite3.Connection, Path], None]


@dataclass(frozen=True)
class StageSchema:
    """The tables one stage owns: its ordered migrations; a store at version n has had the first n."""

    stage: str
    migrations: tuple[Migration, ...]

    @property
    def version(self) -> int:
        return len(self.migrations)


VERSIONS_DDL = "CREATE TABLE IF NOT EXISTS schema_versions (stage TEXT PRIMARY KEY, version INTEGER NOT NULL)"


def sql_statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, one by one (executescript would commit the open transaction)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                yield pending
            pending = ""
    if pending.strip(" \t\r\n;"):
        raise ValueError(f"an incomplete SQL statement in a migration: {pending.strip()[:80]!r}")


def home_relative(path: str | os.PathLike[str], root: Path) -> str | None:
    """A file-system path (absolute, or relative to the working folder) as a POSIX path relative
    to the home `root`, under any spelling of either (symlinks, `..`); None when outside the home."""
    spellings = (lambda: (os.path.abspath(root), os.path.abspath(path)),  # resolving is slower: only if needed
                 lambda: (os.path.realpath(root), os.path.realpath(path)))
    for spelling in spellings:
        base, target = spelling()
        if target == base or target.startswith(base.rstrip(os.sep) + os.sep):
            return Path(os.path.relpath(target, base)).as_posix()
    return None


class StateStore:
    """A thin, explicit wrapper over the SQLite state file of the home at `root` (default: its folder).

    `writes_to` is the folder whose lake this store writes and may delete from: the home, or the
    `scratch` folder of a throwaway copy that reads another home's lake.
    """

    def __init__(self, path: Path, stages: Sequence[StageSchema] = (), root: Path | None = None,
                 scratch: Path | None = None, read_only: bool = False):
        self.path = path
        self.root = Path(os.path.abspath(root if root is not None else path.parent))
        self.writes_to = Path(os.path.abspath(scratch)) if scratch is not None else self.root
        if read_only:
            self.conn = _open_read_only(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        if stages:
            self.migrate(stages)

    def close(self) -> None:
        self.conn.close()

    # --- schema -----------------------------------------------------------------------------

    def versions(self) -> dict[str, int]:
        exists = self.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_versions'")
        return {r["stage"]: r["version"] for r in self.query("SELECT * FROM schema_versions")} if exists else {}

    def migrate(self, stages: Sequence[StageSchema]) -> None:
        """Apply the stages' pending migrations, in order, in one transaction (nothing when all are applied)."""
        if all(self.versions().get(s.stage, 0) >= s.version for s in stages):
            return  # no write at all: a read-only home still opens
        with self.transaction() as db:
            db.execute(VERSIONS_DDL)
            applied = {r["stage"]: r["version"] for r in db.execute("SELECT * FROM schema_versions")}
            for schema in stages:
                current = applied.get(schema.stage, 0)
                for migration in schema.migrations[current:]:
                    if isinstance(migration, str):
                        for statement in sql_statements(migration):
                            db.execute(statement)
                    else:
                        migration(db, self.root)
                if schema.version > current:
                    db.execute("INSERT INTO schema_versions VALUES (?, ?) ON CONFLICT(stage) DO UPDATE SET "
                               "version = excluded.version", (schema.stage, schema.version))

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """The caller's open transaction, or a new one: a change made of several writes uses it, so
        that a caller can make several such changes one (all or none)."""
        if self.conn.in_transaction:
            yield self.conn
            return
        with self.transaction() as db:
            yield db

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    # --- paths under the home ------------------------------------------------------------------

    @property
    def lake(self) -> Path:
        """Where this store writes lake files."""
        return self.writes_to / "lake"

    def relative(self, path: str | os.PathLike[str]) -> str:
        """How a lake file this store wrote is stored: relative to the home root, POSIX spelling
        (absolute when it is in a scratch folder outside the home)."""
        relative = home_relative(path, self.root)
        if relative is None:
            if self.writes_to == self.root:
                raise ValueError(f"{path} is not under the home {self.root}")
            return os.path.abspath(path)
        return relative

    def owns(self, path: str | os.PathLike[str]) -> bool:
        """Whether this store may delete the lake file at `path` (one under the lake it writes)."""
        return home_relative(path, self.lake) is not None

    def absolute(self, stored: str) -> str:
        """A stored path resolved against the home root (a path stored absolute stays as it is)."""
        return str(self.root / stored)

    def normalised(self, stored: Iterable[str]) -> set[str]:
        """Stored paths in one spelling, home-relative POSIX (those outside the home absolute)."""
        spelled = set()
        for path in stored:
            if os.path.isabs(path):
                spelled.add(home_relative(path, self.root) or path)
            else:
                spelled.add(Path(os.path.normpath(path)).as_posix())
        return spelled

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
        """Committed Parquet files of a model (absolute paths), optionally only partitions in [first_day, last_day]."""
        sql = "SELECT path FROM batch_files WHERE model = ?"
        params: list[Any] = [model]
        if first_day:
            sql += " AND day >= ?"
            params.append(first_day)
        if last_day:
            sql += " AND day <= ?"
            params.append(last_day)
        return [self.absolute(row["path"]) for row in self.query(sql + " ORDER BY day, path", tuple(params))]

    def committed_lake_paths(self) -> set[str]:
        """Every committed lake file, home-relative (see `normalised`)."""
        return self.normalised(row["path"] for row in self.query("SELECT path FROM batch_files"))


def _open_read_only(path: Path) -> sqlite3.Connection:
    """A connection that never writes, for commands that only read: they work on a read-only home.

    A home with no state yet reads as empty (an in-memory store the stages' tables are made in).
    WAL needs the `-shm` file; where it is missing and the folder cannot be written (a read-only
    mount or permissions), the database is opened as immutable, which is exact because then no
    writer can be changing it either. A store that still needs a migration cannot be read so:
    that needs a writing command first.
    """
    if not path.exists():
        return sqlite3.connect(":memory:", isolation_level=None)
    uri = path.resolve().as_uri()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30, isolation_level=None)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        return conn
    except sqlite3.OperationalError:
        conn.close()
        return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
