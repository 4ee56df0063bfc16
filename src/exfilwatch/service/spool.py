"""The write-ahead spool: every received line is appended here before it is acknowledged.

Records are appended to segment files `HOME/spool/<offset>.spool` (the offset of the segment's
first byte in the spool, which only grows), each as `length, crc32, payload`; a record's
position is the offset just after it. `append` writes (in the page cache: a SIGKILL loses
nothing written), `sync` fsyncs, and a HEC acknowledgement waits for the sync that covers its
records. The ingester reads records from the committed position (`spool_positions`), commits
batches with a `SpoolCursor`, and `release` deletes segments that are wholly committed. On
start, a torn record at the tail (a crash in the middle of a write) is cut off and what comes
before it after the committed position is replayed.

A payload is `source \\x1f origin \\x1f received (epoch seconds) \\x1f meta \\x1f line`: `meta` is
what a HEC sender said about the event besides its line (models.ORIGIN: JSON text, where a
control character is always escaped) or empty; the line is last, so a hostile line holding the
separator cannot shift the fields.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

HEADER = struct.Struct("<II")  # payload length, crc32 of the payload
SEGMENT_BYTES = 64 * 1024 * 1024
SEPARATOR = b"\x1f"
SUFFIX = ".spool"
FOLDER = "spool"  # in the home


class Record(NamedTuple):  # a tuple: the ingester reads tens of thousands a second
    source: str  # a source name, or "auto": routed by program tag when batched
    origin: str
    received: float  # epoch seconds
    meta: str  # JSON text (models.ORIGIN), or "" when the sender said nothing besides the line
    line: str
    end: int  # spool position just after this record


def encode(source: str, origin: str, received: float, line: bytes, meta: str = "") -> bytes:
    return encode_many(source, origin, received, (line,), meta)


def encode_many(source: str, origin: str, received: float, lines: Iterable[bytes], meta: str = "") -> bytes:
    """Records of lines that share their source, origin, time of receipt and meta."""
    prefix = b"%s\x1f%s\x1f%.6f\x1f%s\x1f" % (source.encode(), origin.encode("utf-8", "replace"), received,
                                              meta.encode("utf-8", "replace"))
    prefix_crc, pack, crc32 = zlib.crc32(prefix), HEADER.pack, zlib.crc32
    return b"".join(pack(len(prefix) + len(line), crc32(line, prefix_crc)) + prefix + line for line in lines)


class Spool:
    """One receiver spool in a folder; appends from one thread, reads from another."""

    def __init__(self, folder: Path, committed: int):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._segments = sorted(int(p.name.removesuffix(SUFFIX)) for p in folder.glob(f"*{SUFFIX}"))
        if not self._segments:
            self._segments = [committed]
            self._path(committed).touch()
        self.end = self._repair_tail()
        self.synced = self.end
        self._fd = os.open(self._path(self._segments[-1]), os.O_WRONLY | os.O_APPEND)
        self.release(committed)

    def _path(self, base: int) -> Path:
        return self.folder / f"{base:020d}{SUFFIX}"

    def _repair_tail(self) -> int:
        """The end of the last whole record; a torn record after it (a crash mid-write) is cut off."""
        base = self._segments[-1]
        path = self._path(base)
        data = path.read_bytes()
        good = 0
        while good + HEADER.size <= len(data):
            length, crc = HEADER.unpack_from(data, good)
            payload = data[good + HEADER.size:good + HEADER.size + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            good += HEADER.size + length
        if good < len(data):
            os.truncate(path, good)
        return base + good

    def append(self, records: bytes) -> int:
        """Write encoded records; the spool position after them (durable after the next `sync`)."""
        with self._lock:
            if self.end - self._segments[-1] >= SEGMENT_BYTES:
                os.close(self._fd)
                self._segments.append(self.end)
                self._fd = os.open(self._path(self.end), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            view = memoryview(records)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self.end += len(records)
            return self.end

    def sync(self) -> int:
        """fsync what was appended; the position up to which records are durable."""
        with self._lock:
            end, fd = self.end, os.dup(self._fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.synced = max(self.synced, end)
        return end

    def read(self, start: int, stop: int, max_records: int) -> list[Record]:
        """Records from `start` to at most `stop`, no more than `max_records`."""
        with self._lock:
            segments = list(self._segments)
        records: list[Record] = []
        position = start
        for i, base in enumerate(segments):
            limit = segments[i + 1] if i + 1 < len(segments) else stop
            if limit <= position or position >= stop:
                continue
            with open(self._path(base), "rb") as handle:
                handle.seek(position - base)
                data = handle.read(min(limit, stop) - position)
            offset = 0
            while offset + HEADER.size <= len(data) and len(records) < max_records:
                length, _ = HEADER.unpack_from(data, offset)
                payload = data[offset + HEADER.size:offset + HEADER.size + length]
                if len(payload) < length:
                    break
                offset += HEADER.size + length
                source, origin, received, meta, line = payload.split(SEPARATOR, 4)
                records.append(Record(source.decode(), origin.decode("utf-8", "replace"), float(received),
                                      meta.decode("utf-8", "replace"), line.decode("utf-8", "replace"),
                                      position + offset))
            position += offset
            if len(records) >= max_records:
                break
        return records

    def count(self, start: int, stop: int) -> int:
        """How many records lie between two positions (the replay's depth at start)."""
        return len(self.read(start, stop, 1 << 62))

    def release(self, committed: int) -> None:
        """Delete the segments wholly before the committed position (never the one being written)."""
        with self._lock:
            while len(self._segments) > 1 and self._segments[1] <= committed:
                self._path(self._segments.pop(0)).unlink(missing_ok=True)

    def size_bytes(self) -> int:
        with self._lock:
            return self.end - self._segments[0]

    def close(self) -> None:
        os.close(self._fd)
