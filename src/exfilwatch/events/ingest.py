"""Ingest: log files → source parser (DuckDB SQL) → Parquet lake, resumable and idempotent.

A file is read in chunks of whole lines. Each chunk becomes one batch: parsed by its source,
written to the lake, and committed to the state store together with the quarantined lines,
the skipped counts and the file's new checkpoint (byte offset and line number), in one
transaction. So a re-ingest reads nothing twice, a file that grew is read from where it
stopped, a rotated (different fingerprint) or truncated file is read from the start, and a
killed process loses no committed batch and leaves no visible half batch.

Lines never pass through a Python loop: newlines are found with numpy and the chunk becomes an
Arrow string array over the same bytes (no copy), which DuckDB reads directly.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

import duckdb
import numpy as np
import pyarrow as pa

from exfilwatch.config import Home, Settings
from exfilwatch.events.engine import connect
from exfilwatch.events.lake import remove_orphans, write_batch
from exfilwatch.events.tables import SCHEMA as EVENTS_TABLES
from exfilwatch.sources import ParseContext, Source, detect_source, get_source
from exfilwatch.sources.tables import SCHEMA as SOURCE_TABLES
from exfilwatch.state import StateStore

CHUNK_BYTES = 64 * 1024 * 1024
FINGERPRINT_BYTES = 1024
HEAD_LINES = 64
RAW_LINE_LIMIT = 4096  # longest raw line kept in quarantine


@dataclass
class FileReport:
    file: str
    source: str
    resumed_from_line: int = 0
    lines: int = 0
    events: int = 0
    quarantined: int = 0
    skipped: Counter = field(default_factory=Counter)
    batches: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def parsed(self) -> int:
        return self.lines - self.quarantined - sum(self.skipped.values())


@dataclass(frozen=True)
class LineChunk:
    first_line: int  # 1-based number of the chunk's first line
    lines: pa.StringArray  # each element still ends with its newline
    end_offset: int  # uncompressed byte offset just after the chunk


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def open_log(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")  # type: ignore[return-value]


def content_fingerprint(path: Path, length: int = FINGERPRINT_BYTES) -> str:
    """`<n>:<sha256>` of the first n (at most `length`) bytes of the file's content."""
    with open_log(path) as handle:
        head = handle.read(length)
    return f"{len(head)}:{hashlib.sha256(head).hexdigest()}"


def read_head(path: Path, lines: int = HEAD_LINES) -> list[str]:
    with open_log(path) as handle:
        data = handle.read(256 * 1024)
    text = data.decode("utf-8", errors="replace")
    return [line.rstrip("\r") for line in text.split("\n")[:lines]]


def _as_valid_utf8(data: bytes) -> bytes:
    # NUL and invalid UTF-8 are replaced (U+FFFD) so every line reaches the parser and is
    # quarantined there with its line number, rather than failing the whole chunk.
    if b"\x00" in data:
        data = data.replace(b"\x00", "\ufffd".encode())
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace").encode("utf-8")


def iter_line_chunks(handle: BinaryIO, start_offset: int, start_line: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[LineChunk]:
    """Whole lines from `start_offset`, in chunks; the last line may lack its newline."""
    offset, line_no, carry = start_offset, start_line, b""
    while True:
        block = handle.read(chunk_bytes)
        data = carry + block
        if not data:
            return
        if block:
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # one line longer than a chunk: keep reading
                carry = data
                continue
            data, carry = data[:cut], data[cut:]
        else:
            carry = b""
        consumed = len(data)
        clean = _as_valid_utf8(data)
        newlines = np.flatnonzero(np.frombuffer(clean, dtype=np.uint8) == 10)
        starts = np.concatenate(([0], newlines + 1))
        if starts[-1] != len(clean):
            starts = np.append(starts, len(clean))
        offsets = starts.astype(np.int64)
        count = len(offsets) - 1
        lines = pa.LargeStringArray.from_buffers(count, pa.py_buffer(offsets.tobytes()), pa.py_buffer(clean))
        yield LineChunk(first_line=line_no + 1, lines=lines, end_offset=offset + consumed)
        offset += consumed
        line_no += count
        if not block:
            return


def expand_paths(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


@contextmanager
def ingest_lock(home: Home) -> Iterator[None]:
    """One ingest at a time per home: orphan clean-up must not touch another run's batch."""
    home.root.mkdir(parents=True, exist_ok=True)
    with open(home.root / "ingest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _resume_point(path: Path, state: StateStore, fingerprint: str, size_hint: int) -> tuple[int, int]:
    """(byte offset, line number) to continue this file from."""
    key = str(path.resolve())
    previous = state.checkpoint(key)
    if previous is not None:
        stored_len = int(previous["fingerprint"].split(":", 1)[0])
        if content_fingerprint(path, stored_len) == previous["fingerprint"] and previous["offset"] <= size_hint:
            return previous["offset"], previous["line_no"]
        return 0, 0  # rotated or truncated: a new file under the old name
    if fingerprint.startswith(f"{FINGERPRINT_BYTES}:"):
        renamed = state.checkpoint_by_fingerprint(fingerprint)  # the same file, rotated to a new name
        if renamed is not None and renamed["offset"] <= size_hint:
            return renamed["offset"], renamed["line_no"]
    return 0, 0


def _content_size(path: Path) -> int:
    if not is_gzip(path):
        return path.stat().st_size
    with gzip.open(path, "rb") as handle:
        return handle.seek(0, os.SEEK_END)


def ingest_file(
    path: Path,
    home: Home,
    settings: Settings,
    state: StateStore,
    con: duckdb.DuckDBPyConnection,
    source: Source | None = None,
    source_tz: str | None = None,
    year: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    progress: Callable[[Path, int], Callable[[int], None]] | None = None,
    mapping: Path | None = None,
) -> FileReport:
    """Ingest one file from its checkpoint; `progress(path, size)` may return an advance callback."""
    head = read_head(path)
    chosen = source or detect_source(head, str(path))
    fingerprint = content_fingerprint(path)
    size = _content_size(path)  # for gzip this decompresses the file: do it once
    offset, line_no = _resume_point(path, state, fingerprint, size)
    on_progress = progress(path, size) if progress else None
    if on_progress and offset:
        on_progress(offset)
    report = FileReport(file=str(path), source=chosen.name, resumed_from_line=line_no)
    reference_time = None
    if year is None:  # syslog without a year: the file's last write dates it (with rollover)
        reference_time = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
        year = reference_time.year
    file_key = str(path.resolve())
    inode = path.stat().st_ino
    with open_log(path) as handle:
        handle.seek(offset)
        for chunk in iter_line_chunks(handle, offset, line_no, chunk_bytes):
            batch_id = f"{chosen.name}-{fingerprint.split(':')[1][:16]}-{chunk.first_line}"
            ctx = ParseContext(file=str(path), head=head, settings=settings,
                               source_tz=source_tz or settings.timezone, year=year, reference_time=reference_time,
                               batch_id=batch_id,
                               state=state, mapping=mapping)
            _ingest_chunk(chunk, chosen, ctx, home, state, con, report, file_key, fingerprint, inode)
            if on_progress:
                on_progress(chunk.end_offset - offset)
            offset = chunk.end_offset
    return report


def batch_addresses(con: duckdb.DuckDBPyConnection, files: list[str]) -> list[tuple[str]]:
    """The distinct source and destination addresses in a batch's flow files."""
    if not files:
        return []
    return con.execute(
        "SELECT DISTINCT ip FROM (SELECT src_ip AS ip FROM read_parquet($f) UNION ALL "
        "SELECT dest_ip FROM read_parquet($f)) WHERE ip IS NOT NULL", {"f": files}
    ).fetchall()


def _ingest_chunk(chunk: LineChunk, source: Source, ctx: ParseContext, home: Home, state: StateStore,
                  con: duckdb.DuckDBPyConnection, report: FileReport, file_key: str, fingerprint: str,
                  inode: int) -> None:
    count = len(chunk.lines)
    table = pa.table({
        "line_no": pa.array(np.arange(chunk.first_line, chunk.first_line + count, dtype=np.int64)),
        "line": chunk.lines,
    })
    con.register("raw_lines_arrow", table)
    # Each line still ends with its newline; cutting a known suffix is 4x cheaper than rtrim.
    con.execute("CREATE OR REPLACE TEMP VIEW raw_lines AS SELECT line_no, CAST("
                "CASE WHEN ends_with(line, chr(13) || chr(10)) THEN left(line, -2) "
                "WHEN ends_with(line, chr(10)) THEN left(line, -1) ELSE line END AS VARCHAR) AS line "
                "FROM raw_lines_arrow")
    parsed = source.parse(con, ctx)
    con.execute(f"CREATE OR REPLACE TEMP TABLE batch_outcomes AS SELECT * FROM {parsed.classified}")
    outcome_counts = dict(con.execute("SELECT outcome, count(*) FROM batch_outcomes GROUP BY outcome").fetchall())
    classified = sum(outcome_counts.values())
    if classified != count:
        raise RuntimeError(f"{ctx.file}: source {source.name} classified {classified} of {count} lines")
    skipped = con.execute(
        "SELECT reason, count(*) FROM batch_outcomes WHERE outcome = 'skipped' GROUP BY reason"
    ).fetchall()
    quarantined = con.execute(
        f"""SELECT o.line_no, o.reason, left(r.line, {RAW_LINE_LIMIT}) FROM batch_outcomes o
            JOIN raw_lines r USING (line_no) WHERE o.outcome = 'quarantined' ORDER BY o.line_no"""
    ).fetchall()
    files = write_batch(con, home.lake, source.data_model, ctx.batch_id, parsed.events)
    events = sum(f.rows for f in files)
    addresses = batch_addresses(con, [f.path for f in files]) if source.data_model.name == "network_traffic" else []
    with state.transaction() as db:
        db.execute("DELETE FROM quarantine WHERE batch_id = ?", (ctx.batch_id,))
        db.execute("DELETE FROM skipped WHERE batch_id = ?", (ctx.batch_id,))
        db.execute("DELETE FROM batch_files WHERE batch_id = ?", (ctx.batch_id,))
        db.execute("DELETE FROM batches WHERE batch_id = ?", (ctx.batch_id,))
        db.execute(
            "INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?,?)",
            (ctx.batch_id, source.data_model.name, source.name, ctx.file, chunk.first_line,
             chunk.first_line + count - 1, count, events, len(quarantined), sum(n for _, n in skipped)),
        )
        db.executemany(
            "INSERT INTO batch_files VALUES (?,?,?,?,?)",
            [(state.relative(f.path), ctx.batch_id, source.data_model.name, f.day, f.rows) for f in files],
        )
        db.executemany(
            "INSERT INTO quarantine (batch_id, source, file, line_no, reason, raw) VALUES (?,?,?,?,?,?)",
            [(ctx.batch_id, source.name, ctx.file, line, reason, raw) for line, reason, raw in quarantined],
        )
        db.executemany("INSERT INTO skipped VALUES (?,?,?)", [(ctx.batch_id, kind, n) for kind, n in skipped])
        db.executemany("INSERT OR IGNORE INTO lake_addresses VALUES (?)", addresses)
        db.execute(
            """INSERT INTO file_checkpoints VALUES (?,?,?,?,?,?)
               ON CONFLICT(path) DO UPDATE SET source=excluded.source, fingerprint=excluded.fingerprint,
               inode=excluded.inode, offset=excluded.offset, line_no=excluded.line_no""",
            (file_key, source.name, fingerprint, inode, chunk.end_offset, chunk.first_line + count - 1),
        )
    con.unregister("raw_lines_arrow")
    report.lines += count
    report.events += events
    report.quarantined += len(quarantined)
    report.skipped.update(dict(skipped))
    report.batches += 1
    report.notes.extend(note for note in parsed.notes if note not in report.notes)


def ingest_paths(
    paths: list[Path],
    home: Home,
    settings: Settings,
    source_name: str | None = None,
    source_tz: str | None = None,
    year: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    progress: Callable[[Path, int], Callable[[int], None]] | None = None,
    mapping: Path | None = None,
) -> list[FileReport]:
    """Ingest files and folders; `progress(path, size)` may return a per-file advance callback."""
    files = expand_paths(paths)
    source = get_source(source_name) if source_name else None
    reports: list[FileReport] = []
    with ingest_lock(home):
        state = StateStore(home.state_path, (SOURCE_TABLES, EVENTS_TABLES), root=home.root)
        con = connect(settings, home.spill_dir)
        try:
            remove_orphans(home.lake, state)
            for path in files:
                reports.append(ingest_file(path, home, settings, state, con, source, source_tz, year,
                                           chunk_bytes, progress, mapping))
        finally:
            con.close()
            state.close()
    return reports
