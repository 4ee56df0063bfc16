"""The `exfilwatch` command line (a front end: no logic of its own)."""

from exfilwatch.cli.main import app

__all__ = ["app"]
