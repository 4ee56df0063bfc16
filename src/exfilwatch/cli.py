"""The `exfilwatch` command line: ingest logs, run detections, read findings, test, generate, demo.

Every command takes the home folder (`--home`, `$EXFILWATCH_HOME`, `./.exfilwatch`) and an
optional `--config`. Times are Splunk-style modifiers or absolute times; `--now` defaults to the
clock only here, at the edge: everything below takes `now` as a parameter.
"""

from __future__ import annotations

import json
import sys
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from .config import ConfigError, Home, Settings, load_settings, resolve_home
from .detect.runner import DetectionRunError, compiled_sql, detect_once, run_schedule
from .detect.schema import Detection, DetectionError, load_detections
from .engine import connect
from .ingest import FileReport, ingest_paths
from .outputs.formats import print_table, terminal_safe, to_csv, to_jsonl
from .sources import SOURCES, UnknownFormatError
from .state import StateStore
from .timeexpr import TimeModifierError, parse_time

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
detections_app = typer.Typer(no_args_is_help=True, help="List and show the shipped detections.")
app.add_typer(detections_app, name="detections")

console = Console(width=None if sys.stdout.isatty() else 200)
errors = Console(stderr=True)

FINDING_COLUMNS = ["time", "detection_id", "entity", "risk_score", "message"]


class Context:
    def __init__(self, home: Home):
        self.home = home
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.home)
        return self._settings

    def state(self) -> StateStore:
        return StateStore(self.home.state_path)


def fail(message: str) -> None:
    errors.print(f"[bold red]error:[/] {terminal_safe(message)}")
    raise typer.Exit(2)


@app.callback()
def main(
    ctx: typer.Context,
    home: Path | None = typer.Option(None, "--home", help="Home folder (else $EXFILWATCH_HOME, else ./.exfilwatch)."),
    config: Path | None = typer.Option(None, "--config", help="Config file (else HOME/config.yaml)."),
) -> None:
    ctx.obj = Context(resolve_home(home, config))


def _context(ctx: typer.Context) -> Context:
    try:
        _ = ctx.obj.settings
    except ConfigError as exc:
        fail(str(exc))
    return ctx.obj


def _now(text: str | None, settings: Settings) -> datetime:
    wall = datetime.now(timezone.utc)
    if text is None:
        return wall
    try:
        return parse_time(text, wall, settings.timezone)
    except TimeModifierError as exc:
        fail(f"--now: {exc}")
    raise AssertionError


def _parse_sets(values: list[str]) -> dict[str, str]:
    out = {}
    for item in values:
        if "=" not in item:
            fail(f"--set {item!r}: expected NAME=VALUE, e.g. --set deviation_threshold=4")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _select(all_detections: dict[str, Detection], ids: list[str] | None) -> list[Detection]:
    if not ids:
        return list(all_detections.values())
    unknown = [i for i in ids if i not in all_detections]
    if unknown:
        fail(f"unknown detection {', '.join(unknown)}; known: {', '.join(all_detections)}")
    return [all_detections[i] for i in ids]


def _load_detections() -> dict[str, Detection]:
    try:
        return load_detections()
    except DetectionError as exc:
        fail(str(exc))
    raise AssertionError


def _emit(records: list[dict[str, Any]], fmt: str, title: str, columns: list[str]) -> None:
    if fmt == "jsonl":
        sys.stdout.write(to_jsonl(records))
    elif fmt == "csv":
        flat = [{**r, **{f"fields.{k}": v for k, v in r.get("fields", {}).items()}} for r in records]
        extra = sorted({k for r in flat for k in r if k.startswith("fields.")})
        sys.stdout.write(to_csv(flat, columns + extra))
    elif fmt == "table":
        print_table(console, title, records, columns)
    else:
        fail(f"--format {fmt!r}: expected table, jsonl or csv")


# --- ingest ---------------------------------------------------------------------------------


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
            "source": report.source + (" (detected)" if detected else ""),
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
        for note in report.notes:
            console.print(f"[yellow]note:[/] {terminal_safe(report.file)}: {terminal_safe(note)}")
    if quarantined:
        console.print(f"[yellow]{quarantined} lines quarantined[/]: see `exfilwatch quarantine`")


@app.command()
def ingest(
    ctx: typer.Context,
    paths: list[Path] = typer.Argument(..., help="Log files or folders (plain or gzip)."),
    source: str | None = typer.Option(None, "--source", help="Format name (see `exfilwatch sources`); else detected."),
    source_tz: str | None = typer.Option(None, "--source-tz", help="Zone of local timestamps in the logs."),
    year: int | None = typer.Option(None, "--year", help="Year for syslog timestamps that lack one."),
    mapping: Path | None = typer.Option(None, "--mapping", help="Column mapping file for the generic CSV/JSON source."),
) -> None:
    """Read log files into the lake; re-reading a file adds only what is new."""
    c = _context(ctx)
    progress = None
    if sys.stderr.isatty():
        progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                            console=errors, transient=True)
        progress.start()
    try:
        reports = ingest_paths(paths, c.home, c.settings, source, source_tz, year,
                               progress=_progress_factory(progress), mapping=mapping)
    except (UnknownFormatError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    finally:
        if progress:
            progress.stop()
    print_ingest_reports(reports, detected=source is None)


@app.command()
def quarantine(ctx: typer.Context, limit: int = typer.Option(50, help="Rows to show."),
               fmt: str = typer.Option("table", "--format")) -> None:
    """List quarantined lines: file, line number, reason and the raw line."""
    c = _context(ctx)
    state = c.state()
    total = state.query("SELECT count(*) AS n FROM quarantine")[0]["n"]
    rows = [dict(r) for r in state.query(
        "SELECT file, line_no, source, reason, raw FROM quarantine ORDER BY file, line_no LIMIT ?", (limit,))]
    _emit(rows, fmt, f"quarantine ({total} lines)", ["file", "line_no", "source", "reason", "raw"])


@app.command()
def sources() -> None:
    """List the supported log formats, each with one sample line."""
    rows = [{"name": s.name, "data model": s.data_model.name, "description": s.description, "sample": s.sample}
            for s in SOURCES.values()]
    print_table(console, "sources", rows, ["name", "data model", "description", "sample"])


# --- detections -------------------------------------------------------------------------------


@detections_app.command("list")
def detections_list() -> None:
    """The shipped detections."""
    rows = [{"id": d.id, "name": d.name, "type": d.type, "status": d.status, "data model": d.data_model,
             "schedule": f"{d.schedule.cron} ({d.schedule.earliest}..{d.schedule.latest})",
             "mitre": ", ".join(d.tags.mitre_attack_id)} for d in _load_detections().values()]
    print_table(console, "detections", rows, list(rows[0]) if rows else ["id"])


@detections_app.command("show")
def detections_show(detection_id: str, sql: bool = typer.Option(False, "--sql", help="Print only the compiled SQL.")) -> None:
    """One detection: its metadata, parameters and search."""
    detection = _select(_load_detections(), [detection_id])[0]
    if sql:
        console.print(compiled_sql(detection), markup=False, highlight=False)
        return
    data = detection.model_dump(exclude={"tests", "folder"})
    data["tests"] = [f"{t.kind}: {t.name}" for t in detection.tests]
    import yaml

    console.print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), markup=False, highlight=False)


@app.command()
def detect(
    ctx: typer.Context,
    detection: list[str] | None = typer.Option(None, "--detection", help="Detection id (repeatable); default all."),
    now: str | None = typer.Option(None, "--now", help="The time to run at (default: the clock)."),
    earliest: str | None = typer.Option(None, "--earliest", help="Override the schedule's earliest, e.g. -70m@m."),
    latest: str | None = typer.Option(None, "--latest", help="Override the schedule's latest, e.g. now."),
    set_: list[str] | None = typer.Option(None, "--set", help="Parameter override NAME=VALUE (repeatable)."),
    fmt: str = typer.Option("table", "--format", help="table, jsonl or csv."),
    engine: str | None = typer.Option(None, "--engine", help="duckdb (default) or spark; else config.yaml's engine."),
) -> None:
    """Run detections once at NOW and store their findings."""
    c = _context(ctx)
    chosen = [d for d in _select(_load_detections(), detection) if d.type != "correlation"]  # those run in the risk step
    state = c.state()
    con = connect(c.settings, c.home.spill_dir)
    run_now = _now(now, c.settings)
    try:
        if (engine or c.settings.engine) == "spark":
            from .spark_engine import SparkUnavailable, detect_once_spark, spark_session

            try:
                results = detect_once_spark(spark_session(c.settings), state, c.settings, chosen, run_now, earliest,
                                            latest, _parse_sets(set_ or []))
            except SparkUnavailable as exc:
                fail(str(exc))
        else:
            results = detect_once(con, state, c.settings, chosen, run_now, earliest, latest, _parse_sets(set_ or []))
    except (DetectionRunError, TimeModifierError) as exc:
        fail(str(exc))
    records = [f.as_json() for r in results for f in r.findings]
    _emit(records, fmt, "findings", FINDING_COLUMNS)
    if fmt == "table":
        for r in results:
            console.print(f"{r.detection.id}: {len(r.findings)} findings "
                          f"({r.stored.added} new, {r.stored.updated} updated) for {r.window.earliest:%Y-%m-%d %H:%M}.."
                          f"{r.window.latest:%Y-%m-%d %H:%M} UTC")
    from .cli_risk import run_risk_step

    run_risk_step(c, state, con, run_now, quiet=fmt != "table")


@app.command()
def run(
    ctx: typer.Context,
    now: str | None = typer.Option(None, "--now", help="The time to run up to (default: the clock)."),
    since: str | None = typer.Option(None, "--since", help="On a first run, catch up from here (default: start of data)."),
    detection: list[str] | None = typer.Option(None, "--detection", help="Detection id (repeatable); default all."),
    set_: list[str] | None = typer.Option(None, "--set", help="Parameter override NAME=VALUE (repeatable)."),
) -> None:
    """Run each scheduled detection for every cron fire time it missed, in order."""
    c = _context(ctx)
    chosen = [d for d in _select(_load_detections(), detection) if d.type != "correlation"]
    run_now = _now(now, c.settings)
    since_time = parse_time(since, run_now, c.settings.timezone) if since else None
    state = c.state()
    con = connect(c.settings, c.home.spill_dir)
    try:
        results = run_schedule(con, state, c.settings, chosen, run_now, since_time, _parse_sets(set_ or []))
    except (DetectionRunError, TimeModifierError) as exc:
        fail(str(exc))
    rows = [{"detection": r.detection.id, "fire times": r.fires, "findings": r.findings,
             "new": r.stored.added, "updated": r.stored.updated} for r in results]
    print_table(console, f"run up to {run_now.isoformat()}", rows, ["detection", "fire times", "findings", "new", "updated"])
    from .cli_risk import run_risk_step

    run_risk_step(c, state, con, run_now, since_time)


def stored_findings(state: StateStore, detection_ids: list[str] | None = None) -> list[dict[str, Any]]:
    sql = "SELECT * FROM findings"
    params: tuple = ()
    if detection_ids:
        sql += f" WHERE detection_id IN ({','.join('?' * len(detection_ids))})"
        params = tuple(detection_ids)
    detections = load_detections()
    out = []
    for row in state.query(sql + " ORDER BY time, detection_id, entity", params):
        d = detections.get(row["detection_id"])
        out.append({
            "detection_id": row["detection_id"],
            "detection_name": d.name if d else row["detection_id"],
            "time": row["time"],
            "entity": row["entity"],
            "risk_objects": json.loads(row["risk_objects"]),
            "risk_score": row["risk_score"],
            "message": row["message"],
            "mitre_attack_id": list(d.tags.mitre_attack_id) if d else [],
            "fields": json.loads(row["fields"]),
        })
    return out


@app.command()
def findings(
    ctx: typer.Context,
    detection: list[str] | None = typer.Option(None, "--detection", help="Only these detections."),
    fmt: str = typer.Option("table", "--format", help="table, jsonl or csv."),
    suppressed: bool = typer.Option(False, "--suppressed", help="Show the suppressed findings (hidden otherwise)."),
) -> None:
    """List stored findings (suppressed ones only with --suppressed)."""
    from .cli_risk import emit_findings

    emit_findings(_context(ctx), detection, fmt, suppressed)


@app.command("test")
def test_detections(ids: list[str] | None = typer.Argument(None, help="Detection ids; default all.")) -> None:
    """Run each detection's own tests: its datasets and the findings they must produce."""
    from .detect.testing import run_detection_tests

    chosen = _select(_load_detections(), ids)
    results = run_detection_tests(chosen)
    rows = [{"detection": r.detection_id, "test": r.name, "kind": r.kind, "result": "pass" if r.passed else "FAIL",
             "expected": ", ".join(r.expected) or "-", "got": ", ".join(r.got) or "-",
             "risk events": r.risk_events, "detail": r.detail} for r in results]
    print_table(console, "detection tests", rows, list(rows[0]) if rows else ["detection"])
    for r in results:
        if r.risk_event_lines:
            label = "risk events read" if _load_detections()[r.detection_id].type == "correlation" else "risk events"
            console.print(f"{r.detection_id} / {r.name}: {label}", markup=False)
            for line in r.risk_event_lines:
                console.print("  " + terminal_safe(line), markup=False, highlight=False)
    failed = sum(not r.passed for r in results)
    console.print(f"{len(results) - failed} passed, {failed} failed")
    if failed or not results:
        raise typer.Exit(1)


@app.command()
def generate(
    out: Path = typer.Option(..., "--out", help="Folder to write conn.log, config.yaml and labels.csv into."),
    days: int = typer.Option(45, "--days"),
    hosts: int = typer.Option(500, "--hosts"),
    seed: int = typer.Option(1, "--seed"),
    end: str = typer.Option("2026-10-31", "--end", help="Last day of data (local date)."),
    flows_per_host_day: int | None = typer.Option(None, "--flows-per-host-day"),
    org: bool = typer.Option(False, "--org", help="A whole organisation: VPN, mail and flows, with labelled leaks."),
    users: int = typer.Option(1000, "--users", help="With --org: the number of employees."),
    mail: str = typer.Option("postfix", "--mail", help="With --org: postfix (maillog) or exchange (message tracking)."),
    hosts_per_user: int = typer.Option(1, "--hosts-per-user", help="With --org: workstations per employee."),
) -> None:
    """Write a synthetic network with labelled incidents (Zeek conn.log, asset inventory, labels).

    With --org: a synthetic organisation (vpn.log, maillog or MessageTracking/, conn.log, config.yaml
    with identities, labels.csv with the injected leaks and benign hard cases)."""
    if org:
        from .synth.org import MAIL_FORMATS, generate_organisation

        if mail not in MAIL_FORMATS:
            errors.print(f"--mail must be one of: {', '.join(MAIL_FORMATS)}")
            raise typer.Exit(2)
        try:
            made = generate_organisation(out, users=users, days=days, seed=seed, end=date.fromisoformat(end), mail=mail,
                                         hosts_per_user=hosts_per_user, flows_per_host_day=flows_per_host_day)
        except ValueError as exc:
            errors.print(str(exc))
            raise typer.Exit(2) from None
        console.print(f"wrote {made.users} users, {made.sessions} VPN sessions ({made.vpn_log}), {made.messages} "
                      f"messages ({made.mail_log}), {made.flows} flows ({made.conn_log}), {made.config}, {made.labels}")
        if made.network_note:
            console.print(made.network_note)
        return
    from .synth.network import generate_network

    kwargs: dict[str, Any] = {}
    if flows_per_host_day:
        kwargs["flows_per_host_day"] = flows_per_host_day
    dataset = generate_network(out, days=days, hosts=hosts, seed=seed, end=date.fromisoformat(end), **kwargs)
    console.print(f"wrote {dataset.flows} flows to {dataset.conn_log}, {dataset.config}, {dataset.labels}")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the generated logs and the demo home."),
    hosts: int = typer.Option(200, "--hosts"),
    days: int = typer.Option(35, "--days"),
    seed: int = typer.Option(1, "--seed"),
) -> None:
    """Generate a small network, ingest it, run the detections at the end of the data, show findings."""
    from .demo import run_demo

    raise typer.Exit(run_demo(out, hosts=hosts, days=days, seed=seed, console=console))


from . import cli_risk  # noqa: E402,F401  (registers incidents, entity, risk, suppress, backtest, detections lint)

@app.command()
def sessions(
    ctx: typer.Context,
    now: str | None = typer.Option(None, "--now", help="Build sessions that closed before this (default: the clock)."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Recompute every stored session."),
    user: str | None = typer.Option(None, "--user", help="Only this user's sessions."),
    limit: int = typer.Option(30, "--limit", help="Sessions to list (most recent first)."),
    fmt: str = typer.Option("table", "--format", help="table, jsonl or csv."),
) -> None:
    """Build the user sessions (VPN and daily) with their email features, and list them."""
    from .enrich.sessions import build_user_sessions, list_sessions, session_overview

    c = _context(ctx)
    state = c.state()
    con = connect(c.settings, c.home.spill_dir)
    run_now = _now(now, c.settings)
    report = build_user_sessions(con, state, c.settings, run_now, rebuild=rebuild)
    rows = list_sessions(con, state, c.settings, user=user, limit=limit)
    if fmt != "table":
        _emit(rows, fmt, "sessions", list(rows[0]) if rows else ["session_id"])
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


@app.command()
def evaluate(
    ctx: typer.Context,
    labels: Path = typer.Option(..., "--labels", help="labels.csv: case_id,detection_id,entity,day,technique,expected,..."),
    detection: list[str] | None = typer.Option(None, "--detection", help="Rules to evaluate (default: the session rules)."),
    method: list[str] | None = typer.Option(None, "--method", help="Evaluate with this method (repeatable): zscore, robust, gamma."),
    set_: list[str] | None = typer.Option(None, "--set", help="Parameter override NAME=VALUE for every rule that has it."),
    since: str | None = typer.Option(None, "--from", help="Judge sessions that closed from here (default: start of data)."),
    until: str | None = typer.Option(None, "--to", help="... up to here (default: the local midnight after the data)."),
    cases: bool = typer.Option(True, "--cases/--no-cases", help="Also list each labelled case and what happened to it."),
    fmt: str = typer.Option("table", "--format", help="table, jsonl or markdown."),
) -> None:
    """Replay the session rules over the data and score them against labelled cases."""
    from .evaluate import LabelError, evaluate_command

    c = _context(ctx)
    all_detections = _load_detections()
    chosen = _select(all_detections, detection) if detection else [
        d for d in all_detections.values() if d.data_model == "user_sessions"]
    try:
        text = evaluate_command(c.home, c.settings, chosen, labels, method or [], _parse_sets(set_ or []),
                                since, until, cases, fmt, console if fmt == "table" else None)
    except (LabelError, FileNotFoundError, DetectionRunError, TimeModifierError) as exc:
        fail(str(exc))
    if text:
        sys.stdout.write(text)


if __name__ == "__main__":  # pragma: no cover
    app()
