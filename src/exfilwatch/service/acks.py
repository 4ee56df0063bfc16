"""Splunk indexer acknowledgement: ack ids counted per channel, and which of them are stored.

As Splunk does it, each `X-Splunk-Request-Channel` numbers its requests 0, 1, 2, … and
`/services/collector/ack` answers for ids of the channel that asks: an id issued on another
channel, or never issued, is false. An id is true once its request's last record is committed
to the lake (its spool position is at or before the committed one).

Unlike Splunk, whose ack state is lost when an indexer restarts (its forwarders then send
again, and the events are stored twice), the book survives a restart or a SIGKILL: every id is
appended to `HOME/spool/acks` as `[channel, id, spool position]` before the request is
answered, and fsynced with the spool's records (`sync`), so an answered id is in the file. At
start the file is read (a torn last line is ignored), ids whose records never reached the spool
are dropped (their request was never answered), and it is rewritten short: per channel the
highest id already committed, and the ids still waiting.

Within a channel ids grow with spool positions (both are given in the event loop, one request
at a time), so a channel is its last committed id and the positions of the ids after it.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

FILE = "acks"
COMPACT_AFTER = 100_000  # ids issued since the file was last rewritten


@dataclass
class _Channel:
    confirmed: int = -1  # every id up to this one is committed
    waiting: deque[int] = field(default_factory=deque)  # spool positions of ids confirmed+1, confirmed+2, …

    @property
    def next_id(self) -> int:
        return self.confirmed + 1 + len(self.waiting)

    def advance(self, committed: int) -> None:
        while self.waiting and self.waiting[0] <= committed:
            self.waiting.popleft()
            self.confirmed += 1


class AckBook:
    """The ack ids of every channel; `issue` from the event loop, `status` from any request."""

    def __init__(self, folder: Path, committed: int, spool_end: int):
        self.path = folder / FILE
        self._lock = threading.Lock()  # `sync` runs in another thread while `issue` may rewrite the file
        self.channels: dict[str, _Channel] = {}
        issued: dict[str, list[tuple[int, int]]] = {}
        if self.path.exists():
            for raw in self.path.read_bytes().splitlines():
                try:
                    channel, ack_id, position = json.loads(raw)
                except ValueError:  # a line torn by a crash mid-write: its request was not answered
                    continue
                if position <= spool_end:
                    issued.setdefault(channel, []).append((int(ack_id), int(position)))
        for channel, entries in issued.items():
            entries.sort()
            book = self.channels[channel] = _Channel()
            for ack_id, position in entries:
                if position <= committed:
                    book.confirmed = max(book.confirmed, ack_id)
                elif ack_id > book.confirmed:
                    book.waiting.append(position)
        self._rewrite()

    def _rewrite(self) -> None:
        lines = []
        for channel, book in self.channels.items():
            if book.confirmed >= 0:
                lines.append(json.dumps([channel, book.confirmed, 0]))
            lines.extend(json.dumps([channel, book.confirmed + 1 + i, p]) for i, p in enumerate(book.waiting))
        temporary = self.path.with_suffix(".new")
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._since_rewrite = 0

    def issue(self, channel: str, position: int, committed: int) -> int:
        """The next id of `channel` for a request whose records end at `position` (durable after `sync`)."""
        book = self.channels.setdefault(channel, _Channel())
        book.advance(committed)
        ack_id = book.next_id
        book.waiting.append(position)
        os.write(self._fd, (json.dumps([channel, ack_id, position]) + "\n").encode("utf-8"))
        self._since_rewrite += 1
        if self._since_rewrite >= COMPACT_AFTER:
            with self._lock:
                os.close(self._fd)
                self._rewrite()
        return ack_id

    def sync(self) -> None:
        with self._lock:
            fd = os.dup(self._fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def status(self, channel: str, ids: list[int], committed: int) -> dict[str, bool]:
        book = self.channels.get(channel)
        if book is None:
            return {str(i): False for i in ids}
        book.advance(committed)
        return {str(i): 0 <= i <= book.confirmed for i in ids}

    def close(self) -> None:
        os.close(self._fd)
