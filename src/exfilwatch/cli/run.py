"""`run`, `detect`, `risk`, `sessions`: the pipeline at `now`, and what it did.

Each calls `pipeline.run` with the options of its command; long work shows progress with an
estimate of the time left when stderr is a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from exfilwatch import pipeline
from exfilwatch.cli.common import Context, console, context, emit, errors, now_from, parse_sets, select
from exfilwatch.config import Settings
from exfilwatch.errors import OutputError, UsageError
from exfilwatch.events.engine import connect
from exfilwatch.features.sessions import build_user_sessions, list_sessions, session_overview
from exfilwatch.outputs.formats import print_table, terminal_safe
from exfilwatch.timeexpr import parse_time

FINDING_COLUMNS = ["time", "detection_id", "entity", "risk_score", "message"]

commands = typer.Typer()


def register(app: typer.Typer) -> None:
    app.registered_commands += commands.registered_commands


@contextmanager
def terminal_progress() -> Iterator[pipeline.Progress | None]:
    """A progress callback drawing one bar per step with its ETA, or None when stderr is not a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=errors, transient=True)
    tasks: dict[str, int] = {}

    def report(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bars.add_task(terminal_safe(what), total=total)
        bars.update(tasks[what], completed=done, total=total)

    with bars:
        yield report


def run_pipeline(c: Context, now: datetime, options: pipeline.Options, quiet: bool = False) -> pipeline.Result:
    state = c.writer()
    con = connect(c.settings, c.home.spill_dir)
    try:
        with terminal_progress() as progress:
            options.progress = progress
            result = pipeline.run(con, state, c.settings, list(c.detections.values()), now, options)
    finally:
        con.close()
        state.close()
    if not quiet and options.risk:
        print_risk_step(result)
    return result


def print_risk_step(result: pipeline.Result) -> None:
    rebuilt = result.risk
    assert rebuilt is not None
    console.print(
        f"risk: {rebuilt.events} risk events from {rebuilt.findings - rebuilt.suppressed} findings "
        f"({rebuilt.suppressed} suppressed findings kept, {rebuilt.newly_suppressed} new); "
        + ", ".join(f"{r.detection_id}: {r.new} new incidents" + (f", {r.updated} updated" if r.updated else "")
                    for r in result.incidents),
        soft_wrap=True,
    )
    for report in result.deliveries:
        line = f"output {report.output} ({report.kind}): {report.delivered} delivered, {report.pending} queued"
        if report.errors:
            line += f" — {report.errors[-1]}"
        console.print(terminal_safe(line), markup=False, soft_wrap=True)


def fail_if_undelivered(result: pipeline.Result) -> None:
    """A run whose outputs could not deliver ends with exit 1 and one line per output that failed
    (what did not go out stays queued for the next run)."""
    failed = [f"output {r.output} could not deliver {r.pending} {r.kind} ({r.errors[-1]}); they stay queued"
              for r in result.deliveries if r.errors]
    if failed:
        raise OutputError("; ".join(failed))


def spark_if_chosen(engine: str | None, settings: Settings) -> Any:
    """A SparkSession when `--engine` (else config.yaml's `engine`) is spark, else None."""
    chosen = engine or settings.engine
    if chosen not in ("duckdb", "spark"):
        raise UsageError(f"--engine {chosen!r}: expected duckdb or spark")
    if chosen == "duckdb":
        return None
    from exfilwatch.events.spark import spark_session

    return spark_session(settings)


@commands.command()
def detect(
    ctx: typer.Context,
    detection: list[str] | None = typer.Option(None, "--detection", help="Detection id (repeatable); default all."),
    now: str | None = typer.Option(None, "--now", help="The time to run at (default: the clock)."),
    earliest: str | None = typer.Option(None, "--earliest", help="Override the schedule's earliest, e.g. -70m@m."),
    latest: str | None = typer.Option(None, "--latest", help="Override the schedule's latest, e.g. now."),
    set_: list[str] | None = typer.Option(None, "--set", help="Parameter override NAME=VALUE (repeatable)."),
    fmt: str = typer.Option("table", "--format", help="table, jsonl or csv."),
    engine: str | None = typer.Option(None, "--engine", help="duckdb (default) or spark: the sessions build and "
                                      "the detections on Spark; else config.yaml's engine."),
) -> None:
    """Run detections once at NOW and store their findings."""
    c = context(ctx)
    chosen = [d for d in select(c.detections, detection) if d.type != "correlation"]  # those run in the risk step
    options = pipeline.Options(mode="once", detections=chosen, earliest=earliest, latest=latest,
                               overrides=parse_sets(set_))
    options.spark = spark_if_chosen(engine, c.settings)
    result = run_pipeline(c, now_from(now, c.settings), options, quiet=True)
    emit([f.as_json() for r in result.detections for f in r.findings], fmt, "findings", FINDING_COLUMNS)
    if fmt == "table":
        for r in result.detections:
            assert r.window is not None
            console.print(f"{r.detection.id}: {len(r.findings)} findings "
                          f"({r.stored.added} new, {r.stored.updated} updated) for {r.window.earliest:%Y-%m-%d %H:%M}.."
                          f"{r.window.latest:%Y-%m-%d %H:%M} UTC")
        print_risk_step(result)
    fail_if_undelivered(result)


@commands.command()
def run(
    ctx: typer.Context,
    now: str | None = typer.Option(None, "--now", help="The time to run up to (default: the clock)."),
    since: str | None = typer.Option(None, "--since", help="On a first run, catch up from here (default: start of data)."),
    detection: list[str] | None = typer.Option(None, "--detection", help="Detection id (repeatable); default all."),
    set_: list[str] | None = typer.Option(None, "--set", help="Parameter override NAME=VALUE (repeatable)."),
    engine: str | None = typer.Option(None, "--engine", help="duckdb (default) or spark: the sessions build on "
                                      "Spark; the catch-up of the detections stays on DuckDB (docs/scale.md)."),
    catch_up: str = typer.Option("one-pass", "--catch-up",
                                 help="one-pass (default) or per-fire: each missed fire's search run on its own "
                                      "(slower; the reference the one pass is tested against)."),
) -> None:
    """Run each scheduled detection for every cron fire time it missed, in order, then risk and incidents."""
    c = context(ctx)
    if catch_up not in ("one-pass", "per-fire"):
        raise UsageError(f"--catch-up {catch_up!r}: expected one-pass or per-fire")
    chosen = [d for d in select(c.detections, detection) if d.type != "correlation"]
    run_now = now_from(now, c.settings)
    since_time = parse_time(since, run_now, c.settings.timezone) if since else None
    options = pipeline.Options(detections=chosen, since=since_time, overrides=parse_sets(set_),
                               catch_up="per-fire" if catch_up == "per-fire" else "one-pass",
                               spark=spark_if_chosen(engine, c.settings))
    result = run_pipeline(c, run_now, options, quiet=True)
    rows = [{"detection": r.detection.id, "fire times": r.fires, "skipped (no data)": r.skipped_fires,
             "findings": len(r.findings), "new": r.stored.added, "updated": r.stored.updated} for r in result.detections]
    print_table(console, f"run up to {run_now.isoformat()}", rows,
                ["detection", "fire times", "skipped (no data)", "findings", "new", "updated"])
    print_risk_step(result)
    fail_if_undelivered(result)


@commands.command("risk")
def risk_command(
    ctx: typer.Context,
    now: str | None = typer.Option(None, "--now", help="The time to run at (default: the clock)."),
    no_deliver: bool = typer.Option(False, "--no-deliver", help="Do not deliver to the configured outputs."),
) -> None:
    """Rebuild risk events, run the incident rules and deliver what is queued (run and detect do this too)."""
    c = context(ctx)
    result = run_pipeline(c, now_from(now, c.settings), pipeline.Options(detections=[], deliver=not no_deliver))
    fail_if_undelivered(result)


@commands.command()
def sessions(
    ctx: typer.Context,
    now: str | None = typer.Option(None, "--now", help="Build sessions that closed before this (default: the clock)."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Recompute every stored session."),
    user: str | None = typer.Option(None, "--user", help="Only this user's sessions."),
    limit: int = typer.Option(30, "--limit", help="Sessions to list (most recent first)."),
    fmt: str = typer.Option("table", "--format", help="table, jsonl or csv."),
    engine: str | None = typer.Option(None, "--engine", help="duckdb (default) or spark: where the sessions are "
                                      "computed; else config.yaml's engine."),
) -> None:
    """Build the user sessions (VPN and daily) with their email features, and list them."""
    c = context(ctx)
    state = c.writer()
    con = connect(c.settings, c.home.spill_dir)
    with terminal_progress() as progress:
        if progress:
            progress("sessions", 0, 1)
        report = build_user_sessions(con, state, c.settings, now_from(now, c.settings), rebuild=rebuild,
                                     spark=spark_if_chosen(engine, c.settings))
        if progress:
            progress("sessions", 1, 1)
    rows = list_sessions(con, state, c.settings, user=user, limit=limit)
    if fmt != "table":
        emit(rows, fmt, "sessions", list(rows[0]) if rows else ["session_id"])
        return
    if report.built_from is None:
        console.print(f"sessions: {report.reason} (built until {report.built_until:%Y-%m-%d %H:%M} UTC)")
    else:
        console.print(f"sessions: {report.reason} from {report.built_from:%Y-%m-%d} to {report.built_until:%Y-%m-%d %H:%M} "
                      f"UTC: {report.sessions} closed sessions written")
    if report.counts.vpn_events or report.counts.messages or report.counts.flows:
        counts = report.counts
        console.print(
            f"  the last build read: VPN events {counts.vpn_events} ({counts.vpn_events_unresolved} with no user, "
            f"{counts.ends_before_login} ends before any login); messages sent {counts.messages} "
            f"({counts.messages_unresolved_sender} from senders outside the organisation or not resolved); "
            f"flows {counts.flows} ({counts.flows_unattributed} from hosts that are neither a VPN tunnel nor a "
            f"known user's)")
    overview = session_overview(con, state, c.settings)
    print_table(console, "stored sessions", overview, list(overview[0]) if overview else ["kind"])
    columns = ["user", "session_kind", "session_start", "session_end", "end_reason", "em_fnum", "em_dnum",
               "em_bsum", "em_bsum_personal", "session_id"]
    print_table(console, f"latest sessions{' of ' + user if user else ''}", rows, columns)
