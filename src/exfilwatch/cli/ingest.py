"""`ingest`, `quarantine`, `sources`: log files into the lake, and what could not be read."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from exfilwatch.events.stats import quarantined
from exfilwatch.cli.common import console, context, emit, errors
from exfilwatch.errors import SourceError
from exfilwatch.events.ingest import FileReport, ingest_paths
from exfilwatch.outputs.formats import print_table, terminal_safe
from exfilwatch.sources import SOURCES

commands = typer.Typer()


def register(app: typer.Typer) -> None:
    app.registered_commands += commands.registered_commands


def _progress_factory(progress: Progress | None):
    if progress is None:
        return None

    def start(path: Path, size: int):
        task = progress.add_task(terminal_safe(path.name), total=size)
        return lambda n: progress.advance(task, n)

    return start


def print_ingest_reports(reports: list[FileReport], detected: bool) -> None:
    rows = []
    for report in reports:
        rows.append({
            "file": report.file,
            "source": report.source + (" (detected)" if detected and report.batches else ""),
            "from line": report.resumed_from_line + 1,
            "lines read": report.lines,
            "events written": report.events,
            "parsed lines": report.parsed,
            "skipped": ", ".join(f"{k}: {v}" for k, v in sorted(report.skipped.items())) or "0",
            "quarantined": report.quarantined,
        })
    print_table(console, "ingest", rows, list(rows[0]) if rows else ["file"])
    lines = sum(r.lines for r in reports)
    skipped = sum(sum(r.skipped.values()) for r in reports)
    quarantined = sum(r.quarantined for r in reports)
    parsed = sum(r.parsed for r in reports)
    console.print(
        f"read {lines} lines = {parsed} parsed + {skipped} skipped + {quarantined} quarantined; "
        f"{sum(r.events for r in reports)} events written"
    )
    for report in reports:
        for note in report.time_notes + report.notes:
            console.print(f"[yellow]note:[/] {terminal_safe(report.file)}: {terminal_safe(note)}")
    if quarantined:
        console.print(f"[yellow]{quarantined} lines quarantined[/]: see `exfilwatch quarantine`")


@commands.command()
def ingest(
    ctx: typer.Context,
    paths: list[Path] = typer.Argument(..., help="Log files or folders (plain or gzip)."),
    source: str | None = typer.Option(None, "--source", help="Format name (see `exfilwatch sources`); else detected."),
    source_tz: str | None = typer.Option(None, "--source-tz", help="Zone of local timestamps in the logs."),
    year: int | None = typer.Option(None, "--year", help="Year for syslog timestamps that lack one."),
    mapping: Path | None = typer.Option(None, "--mapping", help="Column mapping file for the generic CSV/JSON source."),
    replace: bool = typer.Option(False, "--replace", help="Remove what was read from these files before (events, "
                                 "quarantine, checkpoint) and read them again, e.g. with another --source or --year."),
) -> None:
    """Read log files into the lake; re-reading a file adds only what is new (unless --replace)."""
    c = context(ctx)
    c.writer()  # held until the command ends; ingest_paths opens its own store under it
    progress = None
    if sys.stderr.isatty():
        progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                            console=errors, transient=True)
        progress.start()
    try:
        reports = ingest_paths(paths, c.home, c.settings, source, source_tz, year,
                               progress=_progress_factory(progress), mapping=mapping, replace=replace)
    finally:
        if progress:
            progress.stop()
    failed = [r.error for r in reports if r.error is not None]
    if len(reports) == 1 and failed:
        raise failed[0]
    print_ingest_reports([r for r in reports if r.error is None], detected=source is None)
    if failed:
        raise SourceError(f"{len(failed)} of {len(reports)} files could not be read (the rest were ingested): "
                          + "; ".join(str(error) for error in failed))


@commands.command()
def quarantine(ctx: typer.Context, limit: int = typer.Option(50, help="Rows to show."),
               fmt: str = typer.Option("table", "--format")) -> None:
    """List quarantined lines: file, line number, reason and the raw line."""
    c = context(ctx)
    state = c.reader()
    total, rows = quarantined(state, limit)
    emit(rows, fmt, f"quarantine ({total} lines)", ["file", "line_no", "source", "reason", "raw"])


@commands.command()
def sources() -> None:
    """List the supported log formats, each with one sample line."""
    rows = [{"name": s.name, "data model": s.data_model.name, "description": s.description, "sample": s.sample}
            for s in SOURCES.values()]
    print_table(console, "sources", rows, ["name", "data model", "description", "sample"])
