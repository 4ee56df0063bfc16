"""What the writers share: address and offset macros, evaluating macros for Python callers, and
writing a query's lines to a file (plain or gzip, between a header and a trailer)."""

from __future__ import annotations

import gzip as _gzipmod
import os
import shutil
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import duckdb
import numpy as np
import pyarrow as pa


def install(con: duckdb.DuckDBPyConnection) -> None:
    """`ew_ip(int)`: dotted quad of an IPv4 address held as an integer; `ew_offset(seconds)`: ±hh:mm."""
    con.execute("""
        CREATE OR REPLACE TEMP MACRO ew_ip(x) AS
            printf('%d.%d.%d.%d', (x >> 24) & 255, (x >> 16) & 255, (x >> 8) & 255, x & 255);
        CREATE OR REPLACE TEMP MACRO ew_offset(off) AS
            CASE WHEN off < 0 THEN '-' ELSE '+' END || printf('%02d:%02d', abs(off) // 3600, (abs(off) % 3600) // 60);
    """)


_ARROW = {"BIGINT": pa.int64(), "VARCHAR": pa.string(), "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_(),
          "TIMESTAMP": pa.timestamp("us")}
_LOCK = threading.Lock()
_CONNECTIONS: dict[Callable, duckdb.DuckDBPyConnection] = {}


def render(installer: Callable[[duckdb.DuckDBPyConnection], None], expression: str,
           columns: Sequence[tuple[str, str]], records: Iterable[Mapping[str, object]]) -> list[str]:
    """Evaluate `expression` (over `columns`, each `(name, DuckDB type)`) once per record, in order.

    The Python side of a writer goes through here so that its lines come from the very macros the
    generators use in bulk: one definition of each format.
    """
    records = list(records)
    if not records:
        return []
    table = pa.table({name: pa.array([r.get(name) for r in records], _ARROW[kind]) for name, kind in columns})
    with _LOCK:
        con = _CONNECTIONS.get(installer)
        if con is None:
            con = duckdb.connect()
            con.execute("SET TimeZone = 'UTC'")
            installer(con)
            _CONNECTIONS[installer] = con
        con.register("ew_records", table)
        try:
            rows = con.execute(f"SELECT {expression} FROM (SELECT *, row_number() OVER () AS ew_n FROM ew_records) "
                               "ORDER BY ew_n").fetchall()
        finally:
            con.unregister("ew_records")
    return [row[0] for row in rows]


# DuckDB's default memory limit is 80% of the machine: the generator's sorts of 20 M mail lines
# kept 8.6 GB at 3000 users x 90 days (and what it freed stayed with the process). Within this limit
# they spill to a scratch folder instead, and the writer's peak stops growing with the organisation.
WRITER_MEMORY = "1GB"


def spilling_connection(scratch: Path, memory_limit: str | None = WRITER_MEMORY) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that keeps to `memory_limit` (None: DuckDB's default) and spills what it sorts
    beyond it into `scratch`."""
    scratch.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    if memory_limit is not None:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET temp_directory = '{sql_path(scratch)}'")
    return con


def copy_lines(con: duckdb.DuckDBPyConnection, sql: str, path: Path, append: bool = False) -> int:
    """Write the `line` column of a query as text lines, in the query's order; return the file's line count."""
    target = path if not append else path.with_name(path.name + ".part")
    _copy(con, sql, target)
    if append:
        with open(path, "ab") as out, open(target, "rb") as part:
            shutil.copyfileobj(part, out, 16 * 1024 * 1024)
        target.unlink()
    with open(path, "rb") as handle:
        return sum(block.count(b"\n") for block in _blocks(handle))


# Lines sorted at once: DuckDB ran out of memory sorting 20 M maillog lines at a 1-2 GB memory limit
# (spilling or not); slices of ~3 M lines did at 10,000 users x 90 days, 2 M lines sort within 1 GB.
LINES_PER_SLICE = 2_000_000
BEFORE_ALL, AFTER_ALL = -(1 << 62), 1 << 62


def time_slices(times: np.ndarray, lines: int, lines_per_slice: int = LINES_PER_SLICE) -> list[int]:
    """Bounds of consecutive time slices (`[b[i], b[i + 1])`) covering everything, cut at quantiles of `times`
    (when the lines happen, or when their messages do) so that each holds about `lines_per_slice` of `lines`
    (cut evenly in time instead, slices of weekdays held half as much again as the average); the outer
    bounds are open."""
    n = max(1, -(-lines // lines_per_slice))
    if n == 1 or times.size == 0:
        return [BEFORE_ALL, AFTER_ALL]
    cuts = np.unique(np.quantile(times, np.arange(1, n) / n, method="lower").astype(np.int64))
    return [BEFORE_ALL, *(int(c) for c in cuts), AFTER_ALL]


def copy_slices(con: duckdb.DuckDBPyConnection, queries: Iterable[str], path: Path) -> int:
    """Write the `line` column of each query in turn into `path`; return the line count. Queries that each
    sort one time slice (of `time_slices`) write the file one sort of the whole would."""
    part = path.with_name(path.name + ".part")
    count = 0
    try:
        with open(path, "wb") as out:
            for sql in queries:
                _copy(con, sql, part)
                with open(part, "rb") as src:
                    for block in _blocks(src):
                        count += block.count(b"\n")
                        out.write(block)
    finally:
        part.unlink(missing_ok=True)
    return count


def _blocks(handle: BinaryIO) -> Iterator[bytes]:
    """A file's bytes in 16 MB blocks (its line count without holding it)."""
    return iter(lambda: handle.read(16 * 1024 * 1024), b"")


def _copy(con: duckdb.DuckDBPyConnection, sql: str, target: Path) -> None:
    con.execute(f"COPY (SELECT line FROM ({sql})) TO '{sql_path(target)}' "
                "(FORMAT csv, HEADER false, QUOTE '', ESCAPE '', DELIMITER e'\\x01')")


def sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def write_between(con: duckdb.DuckDBPyConnection, sql: str | Iterable[str], path: Path, header: str,
                  trailer: str, compress: bool = False) -> int:
    """`header`, the query's `line` column, `trailer` into `path` (gzip with `compress`); return the line count
    of the body. `sql` may be several queries, whose lines follow each other (`copy_slices`)."""
    body = path.with_name(f".{path.name}.body.tmp")
    try:
        lines = copy_lines(con, sql, body) if isinstance(sql, str) else copy_slices(con, sql, body)
        if compress:
            _gzip_concat(path, header.encode(), body, trailer.encode())
        else:
            with open(path, "wb") as out, open(body, "rb") as src:
                out.write(header.encode())
                out.flush()
                _copy_range(src, out, os.fstat(src.fileno()).st_size)
                out.write(trailer.encode())
    finally:
        body.unlink(missing_ok=True)
    return lines


def _copy_range(src, out, size: int) -> None:
    # copy_file_range keeps a large body inside the kernel; where it is missing, copy by blocks
    done = 0
    try:
        while done < size:
            sent = os.copy_file_range(src.fileno(), out.fileno(), size - done)
            if sent == 0:
                break
            done += sent
    except (AttributeError, OSError):
        pass
    if done < size:
        src.seek(done)
        out.seek(0, os.SEEK_END)
        while chunk := src.read(1 << 24):
            out.write(chunk)
    out.seek(0, os.SEEK_END)


_GZIP_CHUNK = 8 << 20
_GZIP_LEVEL = 6


def _gzip_member(data: bytes) -> bytes:
    co = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31)
    return co.compress(data) + co.flush()


def _gzip_concat(path: Path, header: bytes, body: Path, close: bytes) -> None:
    """gzip in independent 8 MiB members compressed in parallel (a valid multi-member .gz; no mtime)."""
    workers = max(1, min(os.cpu_count() or 1, 8))
    with open(path, "wb") as out, open(body, "rb") as src, ThreadPoolExecutor(workers) as pool:
        out.write(_gzipmod.compress(header, compresslevel=_GZIP_LEVEL, mtime=0))
        pending = []
        while True:
            chunk = src.read(_GZIP_CHUNK)
            if chunk:
                pending.append(pool.submit(_gzip_member, chunk))
            while pending and (len(pending) > 2 * workers or not chunk):
                out.write(pending.pop(0).result())
            if not chunk:
                break
        out.write(_gzipmod.compress(close, compresslevel=_GZIP_LEVEL, mtime=0))
