"""What every command shares: the home and config, the clock at the edge, output formats.

The CLI is a front end only: it parses arguments, calls the stages and prints. `--now` defaults
to the wall clock here and nowhere else. A command fails by raising an `ExfilwatchError`; the
app (main.py) prints it as one line.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import typer
from rich.console import Console

from exfilwatch.config import Home, Settings, load_settings
from exfilwatch.detections.schema import Detection, load_detections
from exfilwatch.errors import UsageError
from exfilwatch.home import reader, writer
from exfilwatch.homelock import DEFAULT_TIMEOUT
from exfilwatch.outputs.formats import print_table, to_csv, to_jsonl
from exfilwatch.state import StateStore
from exfilwatch.timeexpr import as_time, parse_time

console = Console(width=None if sys.stdout.isatty() else 200)
errors = Console(stderr=True)


class Context:
    """The home and its settings, read once per command, and the detection catalog."""

    def __init__(self, home: Home, detection_folders: list[Path] | None = None,
                 lock_timeout: float = DEFAULT_TIMEOUT):
        self.home = home
        self._detection_folders = detection_folders or []
        self.lock_timeout = lock_timeout
        self.command: typer.Context | None = None  # the running command's context: it holds the home's locks
        self._settings: Settings | None = None
        self._detections: dict[str, Detection] | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.home)
        return self._settings

    @property
    def detection_folders(self) -> list[Path]:
        """The user's own detection folders: the config's `detections_path`, then `--detections`."""
        folders = [*self.settings.detections_path, *self._detection_folders]
        return list({folder.resolve(): folder for folder in folders}.values())  # a folder named twice counts once

    @property
    def detections(self) -> dict[str, Detection]:
        """The catalog: the shipped detections and the user's."""
        if self._detections is None:
            self._detections = load_detections(self.detection_folders)
        return self._detections

    def writer(self) -> StateStore:
        """The state store for a command that changes the home: holds the writer lock until the command ends."""
        assert self.command is not None, "call context(ctx) first"
        return self.command.with_resource(writer(self.home, self.lock_timeout))

    def reader(self) -> StateStore:
        """The state store for a command that only reads: holds the readers lock until the command ends.

        It never writes where it cannot, so it works on a read-only home.
        """
        assert self.command is not None, "call context(ctx) first"
        return self.command.with_resource(reader(self.home))


def context(ctx: typer.Context) -> Context:
    """The command's home and settings, checked before any work: the config, its detections, the folder."""
    c: Context = ctx.obj
    c.command = ctx
    if c.settings.detections:  # else the catalog is not loaded here: `detections lint` must reach a broken one
        # imported here: the runner brings sqlglot, which a command that runs no detection (ingest) does not need
        from exfilwatch.detections.runner import check_configured_detections

        check_configured_detections(c.settings, c.detections, str(c.home.config_path))
    c.home.create()
    return c


def now_from(text: str | None, settings: Settings) -> datetime:
    wall = datetime.now(timezone.utc)
    if text is None:
        return wall
    return parse_time(text, wall, settings.timezone)


def parse_sets(values: list[str] | None) -> dict[str, str]:
    out = {}
    for item in values or []:
        if "=" not in item:
            raise UsageError(f"--set {item!r}: expected NAME=VALUE, e.g. --set deviation_threshold=4")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def select(all_detections: dict[str, Detection], ids: list[str] | None) -> list[Detection]:
    if not ids:
        return list(all_detections.values())
    unknown = [i for i in ids if i not in all_detections]
    if unknown:
        raise UsageError(f"unknown detection {', '.join(unknown)}; known: {', '.join(all_detections)}")
    return [all_detections[i] for i in ids]


def emit(records: list[dict[str, Any]], fmt: str, title: str, columns: list[str]) -> None:
    if fmt == "jsonl":
        sys.stdout.write(to_jsonl(records))
    elif fmt == "csv":
        flat = [{**r, **{f"fields.{k}": v for k, v in r.get("fields", {}).items()}} for r in records]
        extra = sorted({k for r in flat for k in r if k.startswith("fields.")})
        sys.stdout.write(to_csv(flat, columns + extra))
    elif fmt == "table":
        print_table(console, title, records, columns)
    else:
        raise UsageError(f"--format {fmt!r}: expected table, jsonl or csv")


def local_time(text: str | None, tz: str) -> str:
    """An ISO time from the store on the configured zone's clock, for a table."""
    value = as_time(text)
    if value is None:
        return text or ""
    return value.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")
