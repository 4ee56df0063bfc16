"""Who may write a home, and when a replaced lake file may go: two advisory locks (fcntl) in the home.

`writing(root)`: one writer per home. Every command that changes the home (ingest, sessions,
run, detect, risk, suppress add/remove, demo) holds `HOME/writer.lock` exclusively for its whole
run, with its pid written in the file; a second writer waits up to `timeout` seconds, then fails
with "another exfilwatch is writing to HOME (pid N)". The lock is re-entrant within a process
(the front end takes it around a command; ingest and the sessions build take it again inside),
and the kernel drops it when its process dies, even on SIGKILL.

`reading(root)`: a reader (a command that lists lake files and then scans them) holds
`HOME/readers.lock` shared from before it lists the files until its last query. A writer that
replaced lake files deletes the old ones only inside `no_readers(root)`, which takes the same
lock exclusively without waiting: any reader that could still hold an old file listed it
before the replacement was committed, so it still holds the shared lock, and deletion is put
off to a later writer (events/lake.py `remove_superseded`). Readers never wait on a writer's
work, only on the few milliseconds a sweep deletes files.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from exfilwatch.errors import HomeError

WRITER_LOCK = "writer.lock"
READERS_LOCK = "readers.lock"
DEFAULT_TIMEOUT = 60.0  # seconds a writer waits for another: a cron `run` outlasting its interval waits, not fails
POLL_SECONDS = 0.05

_held: dict[str, int] = {}  # home (real path) -> depth of this process's writer lock
_guard = threading.Lock()


def _key(root: Path) -> str:
    return os.path.realpath(root)


def lock_holder(root: Path) -> str:
    """The pid written in the writer lock file, or 'unknown'."""
    try:
        return (root / WRITER_LOCK).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def writing(root: Path, timeout: float = DEFAULT_TIMEOUT) -> Iterator[None]:
    """Hold the home's writer lock (re-entrant in a process); HomeError after `timeout` seconds."""
    key = _key(root)
    with _guard:
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _guard:
                _held[key] -= 1
        return
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / WRITER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise HomeError(f"another exfilwatch is writing to {root} (pid {lock_holder(root)}); "
                                    f"waited {timeout:g}s") from None
                time.sleep(POLL_SECONDS)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        with _guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _guard:
                del _held[key]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_readers_lock(root: Path) -> int | None:
    try:
        return os.open(root / READERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT):
            return None  # a home this process cannot write: nor can it replace files under a reader
        raise


@contextmanager
def reading(root: Path) -> Iterator[None]:
    """Hold the home's readers lock shared while listing and scanning lake files."""
    fd = _open_readers_lock(root)
    if fd is None:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing drops the lock


@contextmanager
def no_readers(root: Path) -> Iterator[bool]:
    """True (holding readers off meanwhile) when no reader holds the home's readers lock, else False."""
    fd = _open_readers_lock(root)
    if fd is None:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
