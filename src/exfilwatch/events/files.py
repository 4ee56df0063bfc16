"""Log files as batches of lines with a `FileCursor`: fingerprint, byte offsets, rotation, gzip.

`read_file` opens a file where its checkpoint (`file_checkpoints`) says reading stopped and
yields its remaining lines in chunks, each with the `FileCursor` that `ingest_lines` commits
in the batch's transaction: the file's fingerprint, the byte offset and line number after
the chunk. So a re-read reads nothing twice, a file that grew is read from where it stopped,
a rotated (different fingerprint) or truncated file is read from the start, and a file
renamed by rotation keeps its place. Gzip files are read through their uncompressed content.

A file that cannot be read at all (a truncated or damaged gzip, binary content) is a
`SourceError` naming it, before any of it is read.

Lines never pass through a Python loop: newlines are found with numpy and a chunk becomes an
Arrow string array over the same bytes (no copy), which DuckDB reads directly.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sqlite3
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
from binaryornot.helpers import is_binary_string

from exfilwatch.errors import SourceError, UsageError
from exfilwatch.state import StateStore

CHUNK_BYTES = 64 * 1024 * 1024
FINGERPRINT_BYTES = 1024
BINARY_SNIFF_BYTES = 1024
HEAD_LINES = 64


@dataclass(frozen=True)
class LineChunk:
    first_line: int  # 1-based number of the chunk's first line
    lines: pa.LargeStringArray  # each element still ends with its newline
    end_offset: int  # uncompressed byte offset just after the chunk


@dataclass(frozen=True)
class FileCursor:
    """A batch of a file's lines: where they came from, and the file's checkpoint after them."""

    name: str  # the path as the user gave it: raw_ref and quarantine show it
    key: str  # the resolved path: the checkpoint's key
    fingerprint: str
    inode: int
    first_line: int
    last_line: int
    end_offset: int
    header_lines: tuple[str, ...]  # the file's first lines
    reference_time: datetime  # the file's last write: dates yearless syslog lines

    @property
    def receiver(self) -> str:
        return self.name

    @property
    def line_origins(self) -> tuple[tuple[int, str], ...]:
        return ()

    @property
    def batch_key(self) -> str:
        return f"{self.fingerprint.split(':')[1][:16]}-{self.first_line}"

    def commit(self, db: sqlite3.Connection, source: str) -> None:
        db.execute(
            """INSERT INTO file_checkpoints VALUES (?,?,?,?,?,?)
               ON CONFLICT(path) DO UPDATE SET source=excluded.source, fingerprint=excluded.fingerprint,
               inode=excluded.inode, offset=excluded.offset, line_no=excluded.line_no""",
            (self.key, source, self.fingerprint, self.inode, self.end_offset, self.last_line),
        )


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


def _read_after(handle: BinaryIO, carry: bytes, chunk_bytes: int) -> tuple[np.ndarray, int]:
    """`carry` followed by up to `chunk_bytes` read from `handle`, in a buffer of its own (a
    chunk's Arrow array points into it), and how many bytes were read (0 at the end of the file).

    Read in place into a numpy buffer: joining each block to the carry and cutting it at the
    last newline copied every chunk twice, and a fresh `bytes` or `bytearray` of 64 MB costs
    0.03 CPU-s in page faults where numpy's allocator costs 0.005 (measured)."""
    buffer = np.empty(len(carry) + chunk_bytes, dtype=np.uint8)
    buffer[:len(carry)] = np.frombuffer(carry, dtype=np.uint8)
    with memoryview(buffer) as view:
        read = handle.readinto(view[len(carry):]) or 0
    return buffer[:len(carry) + read], read


def _is_clean(data: np.ndarray) -> bool:
    """No NUL and only ASCII: valid UTF-8 without decoding the chunk into a string (what most
    logs are; the decode cost 0.03 CPU-s per 64 MB, these two scans 0.005)."""
    return len(data) == 0 or (int(data.max()) < 0x80 and int(data.min()) > 0)


def iter_line_chunks(handle: BinaryIO, start_offset: int, start_line: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[LineChunk]:
    """Whole lines from `start_offset`, in chunks; the last line may lack its newline."""
    offset, line_no, carry = start_offset, start_line, b""
    while True:
        data, read = _read_after(handle, carry, chunk_bytes)
        if not len(data):
            return
        newlines = np.flatnonzero(data == 10)
        if read:
            if not len(newlines):  # one line longer than a chunk: keep reading
                carry = data.tobytes()
                continue
            cut = int(newlines[-1]) + 1
            data, carry = data[:cut], data[cut:].tobytes()
        else:
            carry = b""
        consumed = len(data)
        if not _is_clean(data):
            data = np.frombuffer(_as_valid_utf8(data.tobytes()), dtype=np.uint8)
            newlines = np.flatnonzero(data == 10)
        starts = np.concatenate(([0], newlines + 1))
        if starts[-1] != len(data):
            starts = np.append(starts, len(data))
        offsets = starts.astype(np.int64)
        count = len(offsets) - 1
        lines = pa.LargeStringArray.from_buffers(count, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data))
        yield LineChunk(first_line=line_no + 1, lines=lines, end_offset=offset + consumed)
        offset += consumed
        line_no += count
        if not read:
            return


def expand_paths(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        elif path.exists():
            files.append(path)
        else:
            raise UsageError("no such file or folder", where=str(path))
    return files


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


def readable_size(path: Path) -> int:
    """The size of the file's (uncompressed) content, once it is known to be a readable text log."""
    try:
        size = _content_size(path)  # for gzip this decompresses the file, so a damaged one fails here
        with open_log(path) as handle:
            head = handle.read(BINARY_SNIFF_BYTES)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise SourceError(f"truncated or damaged gzip file ({exc}); nothing read from it", where=str(path)) from None
    except OSError as exc:
        raise SourceError(f"cannot read the file: {exc.strerror or exc}", where=str(path)) from None
    if _is_binary(head):
        raise SourceError("binary content, not a text log; nothing read from it", where=str(path))
    return size


def _is_binary(head: bytes) -> bool:
    """binaryornot's judgement of the file's head, unless the file starts with a clean line of text.

    A log that starts well but holds junk further on (a run of NULs after a crash, a corrupted
    line) is still read, its bad lines quarantined one by one.
    """
    if not head or not is_binary_string(head):
        return False
    try:
        first = head.split(b"\n", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        return True
    return not first.strip() or any(char < " " and char not in "\t\r\x1b" for char in first)


@dataclass(frozen=True)
class FileReading:
    """A file opened at its checkpoint; `batches()` reads on from there."""

    path: Path
    head: list[str]
    fingerprint: str
    size: int  # uncompressed bytes
    offset: int  # where reading resumes
    line_no: int  # lines before `offset`
    chunk_bytes: int

    def batches(self) -> Iterator[tuple[pa.LargeStringArray, FileCursor]]:
        """(lines, cursor) for each chunk from the resume point to the end of the file."""
        stat = self.path.stat()
        modified = datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc)
        key, head = str(self.path.resolve()), tuple(self.head)
        with open_log(self.path) as handle:
            handle.seek(self.offset)
            for chunk in iter_line_chunks(handle, self.offset, self.line_no, self.chunk_bytes):
                yield chunk.lines, FileCursor(
                    name=str(self.path), key=key, fingerprint=self.fingerprint, inode=stat.st_ino,
                    first_line=chunk.first_line, last_line=chunk.first_line + len(chunk.lines) - 1,
                    end_offset=chunk.end_offset, header_lines=head, reference_time=modified)


def read_file(path: Path, state: StateStore, chunk_bytes: int = CHUNK_BYTES) -> FileReading:
    """The file at the point its checkpoint says reading stopped (the start for a new or rotated file)."""
    size = readable_size(path)  # for gzip this decompresses the file: do it once
    fingerprint = content_fingerprint(path)
    offset, line_no = _resume_point(path, state, fingerprint, size)
    return FileReading(path=path, head=read_head(path), fingerprint=fingerprint, size=size,
                       offset=offset, line_no=line_no, chunk_bytes=chunk_bytes)
