"""The Parquet lake: normalised events as `lake/<model>/day=YYYY-MM-DD/<batch>_<attempt>_<n>.parquet`.

A batch is written by DuckDB into `lake/.staging/<batch>/` and each file is then renamed into
its partition. The files become visible to readers only once the state store records them
(`commit_batch`), so readers list committed files instead of globbing: a process killed
between the rename and the commit leaves orphans that `remove_orphans` deletes, and the next
ingest rewrites that batch from the unchanged checkpoint. The `day` partition is the UTC date
of `_time`; local-day buckets are computed by queries in the configured time zone.

Replaced files. A writer that replaces committed files (the sessions build, `ingest --replace`)
does not delete the old ones: in the transaction that drops them from `batch_files` it lists
them in `superseded_files` (`supersede`), and `remove_superseded` deletes them when no reader
holds the home's readers lock (homelock.py): a reader that listed them listed them before that
commit and holds the lock until its last query, so a file goes only when no reader can hold it.
If a reader is active the files wait for the next writer's sweep (each writer sweeps when it
starts). A path listed in `batch_files` again (a batch rewritten under the same name) is never
deleted; the orphan sweep keeps superseded files too.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb

from exfilwatch.models import DataModel
from exfilwatch.homelock import no_readers
from exfilwatch.state import StateStore, home_relative

STAGING = ".staging"


@dataclass(frozen=True)
class LakeFile:
    path: str
    day: str
    rows: int


# A batch whose rows fall on at most this many UTC days is written one COPY per day instead of one
# partitioned COPY (see `write_batch`); past it, scanning the rows once per day would cost more.
DAYS_BY_RANGE = 8
# Below this many rows the per-day COPY does not pay: its extra statements cost about 4 ms of CPU
# per batch (a batch of 20 rows over two days: 7-9 ms partitioned, 11-12 per day; measured), and
# it saves about 0.6 µs per row.
BY_DAY_MIN_ROWS = 10_000
_DAY = re.compile(r"\d{4}-\d\d-\d\d")
_COPY_OPTIONS = "FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1, ROW_GROUP_SIZE 122880, RETURN_STATS"


def write_batch(con: duckdb.DuckDBPyConnection, lake: Path, model: DataModel, batch_id: str, relation: str,
                by_day: bool = True) -> list[LakeFile]:
    """Write the rows of `relation` (a table or view with the model's columns) as one batch.

    Each attempt's files get names of their own, so a batch read again never overwrites a file a
    reader may hold: the earlier attempt's files are superseded when the new one commits.
    `by_day=False`: always one partitioned COPY (the reference of `_write_by_day`), for batches
    known to have fewer than `BY_DAY_MIN_ROWS` rows.
    """
    attempt = uuid.uuid4().hex[:8]
    staging = lake / STAGING / batch_id
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    columns = ", ".join(f'CAST("{name}" AS {typ}) AS "{name}"' for name, typ in model.columns)
    # The UTC day by integer arithmetic: no time-zone lookup per row.
    day = "(DATE '1970-01-01' + CAST(epoch_us(\"_time\") // 86400000000 AS INTEGER))"
    files = _write_by_day(con, staging, columns, day, batch_id, attempt, relation) if by_day else None
    if files is None:
        files = [(filename, count, partition_keys) for filename, count, *_rest, partition_keys, _extra in con.execute(
            f"""
            COPY (SELECT {columns}, {day} AS day FROM {relation})
            TO '{staging}' ({_COPY_OPTIONS}, PARTITION_BY (day), FILENAME_PATTERN '{batch_id}_{attempt}_{{i}}')
            """
        ).fetchall()]
    written: list[LakeFile] = []
    for filename, count, partition_keys in sorted(files):
        source = Path(filename)
        target_dir = lake / model.name / source.parent.name
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / source.name
        os.replace(source, target)
        written.append(LakeFile(path=str(target), day=partition_keys["day"], rows=int(count)))
    shutil.rmtree(staging, ignore_errors=True)
    return written


def _write_by_day(con: duckdb.DuckDBPyConnection, staging: Path, columns: str, day: str, batch_id: str, attempt: str,
                  relation: str) -> list[tuple[str, int, dict[str, str]]] | None:
    """The files of a batch of a few days (what a chunk of a log file is) written one COPY per day,
    each of the rows whose `_time` lies in its UTC day: the files, names and rows the partitioned
    COPY writes, or None (nothing kept) where that does not apply.

    DuckDB's partitioned COPY buffers every row once more before writing: 25-40 % of the write
    (a batch of 290 k Pulse lines: 0.53 against 0.42 CPU-s; SRX and Postfix alike, measured),
    more than scanning the rows once per day, which a range on `_time` reads from the parse
    table's own scan. Only days after 1970-01-01, where the integer day of `write_batch` is the
    floor; each file's row count is checked against the day's, so rows are never lost or doubled.
    """
    days = dict(con.execute(f"SELECT CAST({day} AS VARCHAR), count(*) FROM {relation} GROUP BY ALL").fetchall())
    if not 0 < len(days) <= DAYS_BY_RANGE or not all(
            d is not None and _DAY.fullmatch(d) and "1970-01-01" < d < "9999-12-31" for d in days):
        return None
    files = []
    for value, expected in sorted(days.items()):
        folder = staging / f"day={value}"
        folder.mkdir()
        target = folder / f"{batch_id}_{attempt}_0.parquet"
        after = date.fromisoformat(value) + timedelta(days=1)
        [(_, count, *_rest)] = con.execute(
            f"""COPY (SELECT {columns} FROM {relation} WHERE "_time" >= TIMESTAMPTZ '{value} 00:00:00+00'
                      AND "_time" < TIMESTAMPTZ '{after} 00:00:00+00') TO '{target}' ({_COPY_OPTIONS})"""
        ).fetchall()
        if count != expected:
            shutil.rmtree(staging)
            staging.mkdir(parents=True)
            return None
        files.append((str(target), count, {"day": value}))
    return files


def remove_orphans(lake: Path, state: StateStore) -> int:
    """Delete staged or renamed files of batches that were never committed (a killed run).

    A file is kept when the state lists it, committed or superseded, under any spelling: both
    sides are compared as home-relative POSIX paths, never as absolute spellings.
    """
    removed = 0
    staging = lake / STAGING
    if staging.exists():
        shutil.rmtree(staging, ignore_errors=True)
    if not lake.exists():
        return 0
    listed = state.committed_lake_paths() | state.normalised(
        row["path"] for row in state.query("SELECT path FROM superseded_files"))
    for dirpath, _dirnames, filenames in os.walk(lake):
        for name in filenames:
            path = os.path.join(dirpath, name)
            relative = home_relative(path, state.root)
            if name.endswith(".parquet") and relative is not None and relative not in listed:
                os.remove(path)
                removed += 1
    return removed


def supersede(db: sqlite3.Connection, paths: list[str], by: str) -> None:
    """Record stored lake paths that `by` replaced (in the transaction that drops them from `batch_files`)."""
    db.executemany("INSERT OR IGNORE INTO superseded_files VALUES (?, ?)", [(path, by) for path in paths])


def remove_superseded(state: StateStore) -> int:
    """Delete superseded lake files if no reader can hold them (see the module docstring); how many went."""
    waiting = [row["path"] for row in state.query("SELECT path FROM superseded_files")]
    if not waiting:
        return 0
    removed = 0
    with no_readers(state.writes_to) as free:
        if not free:
            return 0
        committed = state.committed_lake_paths()
        for stored in waiting:
            path = state.absolute(stored)
            if state.normalised([stored]).isdisjoint(committed) and state.owns(path):
                Path(path).unlink(missing_ok=True)
                removed += 1
        with state.transaction() as db:
            db.executemany("DELETE FROM superseded_files WHERE path = ?", [(p,) for p in waiting])
    return removed


def path_list_sql(paths: list[str]) -> str:
    """SQL: a list literal of file paths, for read_parquet."""
    return "[" + ", ".join("'" + path.replace("'", "''") + "'" for path in paths) + "]"


def parquet_source(model: DataModel, files: list[str]) -> str:
    """SQL for the model's stored columns over the given files (the empty schema when none).

    Files written before a column was added to the model (`DataModel.added_columns`) read it as
    null: such a model's files are read by name and unioned by name with its empty schema. That
    costs a scan about twice the plain one (measured on 20M rows), so models with no added column
    are read plainly."""
    if not files:
        return model.empty_select()
    listed = path_list_sql(files)
    columns = ", ".join(f'"{name}"' for name in model.column_names)
    if not model.added_columns:
        return f"SELECT {columns} FROM read_parquet({listed})"
    return (f"SELECT {columns} FROM (SELECT * FROM read_parquet({listed}, union_by_name = true) "
            f"UNION ALL BY NAME {model.empty_select()})")
