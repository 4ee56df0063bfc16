"""The one root of every error a user can cause, and what the front ends do with it.

Each stage raises a subclass of `ExfilwatchError` that says what went wrong and where (a file,
a line, a key); the CLI prints `str(error)` as one line on stderr and exits with `exit_code`:
2 for a mistake in how exfilwatch was called or configured, 1 for a run that failed. Nothing a
user can cause ends in a traceback: what the machine raises (a full disk, a read-only home,
DuckDB out of memory) is turned into these by `from_environment`.
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
from pathlib import Path

import duckdb


class ExfilwatchError(Exception):
    """An error the user can act on. `where` names the file, line or key when known."""

    exit_code = 1

    def __init__(self, message: str, where: str | None = None):
        super().__init__(f"{where}: {message}" if where else message)
        self.message = message
        self.where = where


class UsageError(ExfilwatchError, ValueError):
    """A wrong argument, option or config value: the user must change how they call exfilwatch."""

    exit_code = 2


class ConfigError(UsageError):
    """A config, mapping, label or detection file that cannot be used, with the file and the key at fault."""


class TimeError(UsageError):
    """A time or Splunk time modifier that cannot be read."""


class SourceError(ExfilwatchError, ValueError):
    """Log input that cannot be read at all (not a line to quarantine: the file or stream itself)."""


class HomeError(ExfilwatchError):
    """The home folder cannot be used: not writable, locked by another writer, disk full."""


class EngineError(ExfilwatchError):
    """DuckDB could not run a query: out of memory, or a detection's SQL failed."""


class OutputError(ExfilwatchError):
    """An output could not deliver (it stays queued and is retried)."""


DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_SQLITE_NOT_WRITABLE = ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")
_DUCKDB_FILE = re.compile(r'file \\?"([^"\\]+)\\?"')


def disk_full(path: str | Path) -> HomeError:
    return HomeError("no space left on the device: free some, or move the home to a bigger disk", where=str(path))


def read_only_home(path: str | Path, reason: str) -> HomeError:
    return HomeError(f"cannot write ({reason}): this command needs a writable home; findings, incidents, entity "
                     "and quarantine still read a read-only one", where=str(path))


def _under(path: str | Path, folder: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


def from_environment(exc: BaseException, home: Path, config: Path, memory_limit: str | None) -> ExfilwatchError | None:
    """An error the machine raised (disk full, a read-only home, a file it cannot open, out of memory)
    as the user should read it: one line naming the path, or what to raise.

    Writes happen in many places (the lake, the state store, DuckDB's spill folder, output
    files); the machine's errors name the path they concern at best, so a front end passes them
    here once instead of every writer catching them. None for anything else: that is a bug.
    """
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return disk_full(exc.filename or home)
    if isinstance(exc, OSError) and exc.filename:
        if exc.errno in NOT_WRITABLE and _under(exc.filename, home):
            return read_only_home(exc.filename, exc.strerror or "not writable")
        return ExfilwatchError(exc.strerror or str(exc), where=str(exc.filename))
    if isinstance(exc, sqlite3.OperationalError):
        name = getattr(exc, "sqlite_errorname", "")
        if name == "SQLITE_FULL":
            return disk_full(home / "state.sqlite")
        if name.startswith(_SQLITE_NOT_WRITABLE):
            return read_only_home(home / "state.sqlite", str(exc))
        return None
    if isinstance(exc, duckdb.OutOfMemoryException):
        now = f" (now {memory_limit})" if memory_limit else ""
        return EngineError(f"DuckDB ran out of memory: raise memory_limit in {config}{now}, e.g. to 8GB or 80% "
                           "of the machine's memory")
    if isinstance(exc, duckdb.IOException):
        text = str(exc)
        named = _DUCKDB_FILE.search(text)
        path = named.group(1) if named else home
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return disk_full(path)
        if "Read-only file system" in text or "Permission denied" in text:
            return read_only_home(path, "read-only file system" if "Read-only" in text else "permission denied")
    return None
