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
separator cannot shift the fields. A record whose meta is a newline (`BLOCK`, which JSON text
never is) holds a block of lines instead, separated by newlines, none empty: what a syslog
stream framed by newlines brought in one read (`encode_block`), spooled as one record, so that
receiving, spooling and reading back cost per read rather than per line. Readers see its lines
as records of their own (each with the block's end as its position) and an empty meta.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


# `Spool.read_table`'s columns: Record's fields
TABLE_SCHEMA = (("source", pa.large_string()), ("origin", pa.large_string()), ("received", pa.float64()),
                ("meta", pa.large_string()), ("line", pa.large_string()), ("end", pa.int64()))


# A payload's fields before its line (none holds the separator: see the module docstring)
PREFIX_PATTERN = r"^(?P<source>[^\x1f]*)\x1f(?P<origin>[^\x1f]*)\x1f(?P<received>[^\x1f]*)\x1f(?P<meta>[^\x1f]*)\x1f"


def _cut(data: bytes, cuts: np.ndarray) -> pa.LargeBinaryArray:
    """`data` seen by Arrow, zero copy, as the values between consecutive `cuts` (offsets into it)."""
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(cuts) - 1,
                                            [None, pa.py_buffer(cuts), pa.py_buffer(data)])


BLOCK = "\n"  # the meta of a record holding several lines
BLOCK_BYTES = BLOCK.encode()
BLOCK_PREFIX_BYTES = 512  # more than a block's prefix takes: source, origin (a listener and address), time


def encode_block(source: str, origin: str, received: float, block: bytes) -> bytes:
    """One record of lines that share their source, origin and time of receipt: `block` is the
    lines joined by newlines, none of them empty."""
    return encode_many(source, origin, received, (block,), BLOCK)


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

    def _spans(self, start: int, stop: int, max_records: int) -> Iterator[tuple[bytes, list[int], int]]:
        """Per segment read: its bytes, the end in them of each whole record (from `start` to at
        most `stop`, no more than `max_records` in all: records follow each other, so record i's
        payload starts at the end of record i - 1 plus the header), and the spool position of the
        bytes' first byte."""
        with self._lock:
            segments = list(self._segments)
        position, taken = start, 0
        unpack, size = HEADER.unpack_from, HEADER.size
        for i, base in enumerate(segments):
            limit = segments[i + 1] if i + 1 < len(segments) else stop
            if limit <= position:
                continue
            if position >= stop or position < base:  # `stop` fell before this segment, or cut the one before
                break
            with open(self._path(base), "rb") as handle:
                handle.seek(position - base)
                data = handle.read(min(limit, stop) - position)
            ends: list[int] = []
            append, last_header, offset = ends.append, len(data) - size, 0
            wanted = max_records - taken
            while offset <= last_header and len(ends) < wanted:  # the one loop per record: kept lean
                end = offset + size + unpack(data, offset)[0]
                if end > len(data):
                    break
                append(end)
                offset = end
            taken += len(ends)
            yield data, ends, position
            position += offset
            if taken >= max_records:
                break

    def read(self, start: int, stop: int, max_records: int) -> list[Record]:
        """Records from `start` to at most `stop`, no more than `max_records`."""
        records: list[Record] = []
        for data, ends, base in self._spans(start, stop, max_records):
            begin = 0
            for end in ends:
                source, origin, received, meta, text = data[begin + HEADER.size:end].split(SEPARATOR, 4)
                lines, meta = (text.split(b"\n"), b"") if meta == BLOCK_BYTES else ((text,), meta)
                records.extend(Record(source.decode(), origin.decode("utf-8", "replace"), float(received),
                                      meta.decode("utf-8", "replace"), line.decode("utf-8", "replace"), base + end)
                               for line in lines)
                begin = end
        return records

    def read_table(self, start: int, stop: int, max_records: int) -> pa.Table:
        """`read` as an Arrow table (columns as Record's), built without a Python object per record
        and with one copy of the lines: Arrow sees the segment bytes, zero copy, as values cut
        at chosen offsets (`_cut`), first each record's payload (its prefix fields are read by
        one anchored regex, which copies only them), then each record's line (taken out, the one
        copy). Bytes that are not UTF-8 (or hold NUL) become U+FFFD, as in `read` and file ingest."""
        columns: dict[str, list[pa.Array]] = {name: [] for name, _ in TABLE_SCHEMA}
        for data, record_ends, base in self._spans(start, stop, max_records):
            if not record_ends:
                continue
            ends = np.array(record_ends, np.int64)
            count = len(ends)
            # value 2i of a cut is record i's payload (then its line), value 2i + 1 what lies
            # between it and the next one
            cuts = np.empty(2 * count, np.int64)
            cuts[0] = HEADER.size
            cuts[2::2] = ends[:-1] + HEADER.size
            cuts[1::2] = ends
            evens = pa.array(np.arange(count, dtype=np.int64) * 2)
            fields = pc.extract_regex(_cut(data, cuts), PREFIX_PATTERN).take(evens)
            if fields.null_count:  # not a payload encode_many wrote: `read` says what is wrong
                return self._table_of_records(start, stop, max_records)
            lengths = [np.asarray(pc.binary_length(fields.field(i))) for i in range(4)]
            cuts[0::2] += lengths[0] + lengths[1] + lengths[2] + lengths[3] + 4
            columns["line"].append(_cut(data, cuts).take(evens))
            for i, name in enumerate(("source", "origin", "received", "meta")):
                columns[name].append(fields.field(i))
            columns["end"].append(pa.array(base + ends))
        if not columns["end"]:
            return pa.table({name: pa.array([], typ) for name, typ in TABLE_SCHEMA})
        joined = {name: pa.concat_arrays(arrays) if len(arrays) > 1 else arrays[0] for name, arrays in columns.items()}
        try:
            line = joined["line"].cast(pa.large_string())  # the UTF-8 check
        except pa.ArrowInvalid:  # not UTF-8: decode record by record, as `read` does
            return self._table_of_records(start, stop, max_records)
        table = pa.table({"source": joined["source"].cast(pa.large_string()),
                          "origin": joined["origin"].cast(pa.large_string()),
                          "received": joined["received"].cast(pa.string()).cast(pa.float64()),
                          "meta": joined["meta"].cast(pa.large_string()), "line": line, "end": joined["end"]})
        return self._without_nul(self._lines_of_blocks(table))

    @staticmethod
    def _lines_of_blocks(table: pa.Table) -> pa.Table:
        """Each block record as its lines, in place and in order (split by Arrow)."""
        blocks = np.asarray(pc.equal(table["meta"], BLOCK).combine_chunks())
        if not blocks.any():
            return table
        lines = table["line"].combine_chunks()
        everything = blocks.all()  # a syslog stream's records: no line to keep whole
        pieces = pc.split_pattern(lines if everything else lines.filter(pa.array(blocks)), "\n")
        counts = np.ones(len(blocks), np.int64)
        counts[blocks] = np.asarray(pc.list_value_length(pieces))
        line = pc.list_flatten(pieces)
        if not everything:  # output row i is the next line of a block, or the next line of its own
            singles = lines.filter(pa.array(~blocks))
            of_block = np.repeat(blocks, counts)
            index = np.empty(len(of_block), np.int64)
            index[of_block] = np.arange(len(line))
            index[~of_block] = len(line) + np.arange(len(singles))
            line = pa.concat_arrays([line, singles]).take(pa.array(index))
        expanded = table.drop_columns(["line"]).take(pa.array(np.repeat(np.arange(len(blocks)), counts)))
        meta = expanded["meta"]
        expanded = expanded.set_column(expanded.schema.get_field_index("meta"), "meta",
                                       pc.if_else(pc.equal(meta, BLOCK), "", meta))
        return expanded.add_column(4, "line", line)

    def _table_of_records(self, start: int, stop: int, max_records: int) -> pa.Table:
        records = self.read(start, stop, max_records)
        return self._without_nul(pa.table({name: pa.array([getattr(r, name) for r in records], typ)
                                           for name, typ in TABLE_SCHEMA}))

    @staticmethod
    def _without_nul(table: pa.Table) -> pa.Table:
        line = table["line"]
        # a NUL anywhere in the lines' bytes (one memchr-speed scan per chunk) before Arrow looks line by line
        if any(re.search(b"\x00", chunk.buffers()[2]) for chunk in line.chunks if chunk.buffers()[2] is not None):
            table = table.set_column(4, "line", pc.replace_substring(line, "\x00", "\ufffd"))
        return table

    def count(self, start: int, stop: int) -> int:
        """How many lines lie between two positions (the replay's depth at start); a block's lines
        are counted by their newlines, nothing is decoded."""
        lines = 0
        for data, ends, _ in self._spans(start, stop, 1 << 62):
            begin = 0
            for end in ends:
                # a block's short prefix lies in the record's first bytes (a HEC record's JSON meta may not)
                fields = data[begin + HEADER.size:min(end, begin + HEADER.size + BLOCK_PREFIX_BYTES)].split(SEPARATOR, 4)
                if len(fields) == 5 and fields[3] == BLOCK_BYTES:
                    lines += data.count(b"\n", begin + HEADER.size + sum(map(len, fields[:4])) + 4, end) + 1
                else:
                    lines += 1
                begin = end
        return lines

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
