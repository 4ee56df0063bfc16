"""The one root of every error a user can cause, and what the front ends do with it.

Each stage raises a subclass of `ExfilwatchError` that says what went wrong and where (a file,
a line, a key); the CLI prints `str(error)` as one line on stderr and exits with `exit_code`:
2 for a mistake in how exfilwatch was called or configured, 1 for a run that failed. Nothing a
user can cause ends in a traceback.
"""

from __future__ import annotations


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
