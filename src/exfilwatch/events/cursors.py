"""Cursors: where a batch of lines came from, and the position to commit with it.

`ingest_lines(source, lines, cursor, …)` takes one batch of lines and a cursor. The cursor
gives:

* `name` and `first_line`: the origin shown in `raw_ref` and quarantine (`<name>:<line>`);
  `line_origins`, when a batch holds lines of several origins (a listener's peers), the origin of
  each run of its lines instead (sources.base.ParseContext.line_origins);
* `receiver`: the file or listener the lines came through, the same for every batch of it (a
  spool batch's `name` also says where in the spool it starts); the Sources page counts by it;
* `batch_key`: the batch's identity among all batches of this origin, the same when the same
  lines are read again, so a retried batch replaces its earlier attempt instead of adding to it;
* `header_lines` and `reference_time`: what sources may need besides the lines (a format's
  header lines; when the lines were written, which dates yearless syslog timestamps);
* `commit(db, source)`: records the position after the batch, inside the transaction that
  commits the batch, so the batch and the position are committed together or not at all.

Kinds: `events.files.FileCursor` (fingerprint, byte offset, line number in `file_checkpoints`);
`SpoolCursor` is a batch of a receiver's write-ahead spool (`spool_positions`); `StreamCursor` is lines
handed over in memory, whose position the caller keeps (tests, tools that already hold lines).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol


class Cursor(Protocol):
    name: str
    first_line: int
    header_lines: Sequence[str]
    reference_time: datetime | None

    @property
    def receiver(self) -> str:
        """The file or listener the lines came through, the same for each of its batches."""

    @property
    def line_origins(self) -> Sequence[tuple[int, str]]:
        """(first line number, origin) of each run of lines from one origin; empty: all are `name`'s."""

    @property
    def batch_key(self) -> str:
        """Identifies the batch within its origin; stable when the same lines are read again."""

    def commit(self, db: sqlite3.Connection, source: str) -> None:
        """Record the position after this batch, inside the batch's transaction."""


@dataclass(frozen=True)
class StreamCursor:
    """Lines received in memory, e.g. by a syslog receiver: named `syslog:udp/127.0.0.1:5514`.

    Line numbers count from the stream's first line; `received_at` is when the batch was
    received (it dates yearless syslog timestamps). The caller keeps the position: `commit`
    records nothing, so the lines are lost unless the caller can hand them over again.
    """

    name: str
    received_at: datetime
    first_line: int = 1
    header_lines: tuple[str, ...] = ()

    @property
    def reference_time(self) -> datetime:
        return self.received_at

    @property
    def receiver(self) -> str:
        return self.name

    @property
    def line_origins(self) -> tuple[tuple[int, str], ...]:
        return ()

    @property
    def batch_key(self) -> str:
        origin = hashlib.sha256(self.name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        received = self.received_at.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        return f"{origin}-{received}-{self.first_line}"

    def following(self, lines: int, received_at: datetime) -> StreamCursor:
        """The cursor of the next batch, after `lines` lines of this one."""
        return StreamCursor(self.name, received_at, self.first_line + lines, self.header_lines)

    def commit(self, db: sqlite3.Connection, source: str) -> None:
        return None


@dataclass(frozen=True)
class SpoolCursor:
    """Part of a batch of spool records [start, end): the lines of one source from one origin (a
    listener), parsed together whichever of its peers sent them.

    A batch of a spool may hold several sources, each committed by its own `ingest_lines`. Every
    part records `end` as the batch's pending end, and the last part moves the position to it;
    after a crash between parts, the replay cuts the same batch again (`pending_end`) and the
    parts already committed are replaced (same `batch_key`), so no line is stored twice.
    `peers` names the sender of each run of the lines, in order (`<listener>@<peer address>` and
    the number of lines): raw_ref and quarantine show a line's own peer and its number among that
    peer's lines of the batch.
    """

    spool: str
    origin: str  # the listener (or the listener and peer, or the HEC client), the receiver counted
    start: int
    end: int
    last: bool
    received_at: datetime
    first_line: int = 1
    header_lines: tuple[str, ...] = ()
    peers: tuple[tuple[str, int], ...] = ()

    @property
    def line_origins(self) -> tuple[tuple[int, str], ...]:
        runs, first = [], self.first_line
        for peer, lines in self.peers:
            runs.append((first, f"{peer}@{self.start}"))
            first += lines
        return tuple(runs)

    @property
    def name(self) -> str:
        return f"{self.origin}@{self.start}"

    @property
    def reference_time(self) -> datetime:
        return self.received_at

    @property
    def receiver(self) -> str:
        return self.origin

    @property
    def batch_key(self) -> str:
        origin = hashlib.sha256(self.origin.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return f"{self.spool}-{self.start}-{self.end}-{origin}"

    def commit(self, db: sqlite3.Connection, source: str) -> None:
        commit_spool_position(db, self.spool, self.end if self.last else None, self.end)


def commit_spool_position(db: sqlite3.Connection, spool: str, position: int | None, pending_end: int) -> None:
    """Record a spool's batch end as pending and, when `position` is given, as committed."""
    db.execute("INSERT OR IGNORE INTO spool_positions VALUES (?, 0, 0)", (spool,))
    if position is None:
        db.execute("UPDATE spool_positions SET pending_end = ? WHERE spool = ?", (pending_end, spool))
    else:
        db.execute("UPDATE spool_positions SET position = ?, pending_end = ? WHERE spool = ?",
                   (position, pending_end, spool))


def spool_position(db: sqlite3.Connection, spool: str) -> tuple[int, int]:
    """(committed position, pending batch end) of a spool; (0, 0) for a new one."""
    row = db.execute("SELECT position, pending_end FROM spool_positions WHERE spool = ?", (spool,)).fetchone()
    return (row[0], row[1]) if row else (0, 0)
