"""`evaluate`, `backtest`, `generate`, `demo`: how well the detections do, on labelled and synthetic data."""

from __future__ import annotations

import json
import sys
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import typer

from exfilwatch.cli.common import console, context, local_time, parse_sets, select
from exfilwatch.cli.run import terminal_progress
from exfilwatch.errors import UsageError
from exfilwatch.evaluate.backtest import backtest_detection, day_or_time
from exfilwatch.evaluate.replay import evaluate_command
from exfilwatch.outputs.formats import print_table

commands = typer.Typer()


def register(app: typer.Typer) -> None:
    app.registered_commands += commands.registered_commands


@commands.command()
def evaluate(
    ctx: typer.Context,
    labels: Path | None = typer.Option(None, "--labels", help="labels.csv: case_id,detection_id,entity,day,technique,"
                                       "expected,... (or --profiles: generated organisations)"),
    detection: list[str] | None = typer.Option(None, "--detection", help="Rules to evaluate (default: the session rules)."),
    method: list[str] | None = typer.Option(None, "--method", help="Evaluate with this method (repeatable): zscore, robust, gamma."),
    set_: list[str] | None = typer.Option(None, "--set", help="Parameter override NAME=VALUE for every rule that has it."),
    since: str | None = typer.Option(None, "--from", help="Judge sessions that closed from here (default: start of data)."),
    until: str | None = typer.Option(None, "--to", help="... up to here (default: the local midnight after the data)."),
    cases: bool = typer.Option(True, "--cases/--no-cases", help="Also list each labelled case and what happened to it."),
    fmt: str = typer.Option("table", "--format", help="table, jsonl or markdown."),
    profiles: str | None = typer.Option(None, "--profiles", help="Generate and evaluate organisations of these "
                                        "profiles (comma-separated: default,varied) instead of --labels."),
    seeds: str = typer.Option("1,2,3", "--seeds", help="With --profiles: the seeds, comma-separated."),
    users: int = typer.Option(300, "--users", help="With --profiles: employees per organisation."),
    days: int = typer.Option(75, "--days", help="With --profiles: days per organisation."),
    end: str = typer.Option("2026-10-31", "--end", help="With --profiles: the last day (local date)."),
    work: Path | None = typer.Option(None, "--work", help="With --profiles: keep the generated logs and homes "
                                     "here (default: a temporary folder, removed)."),
) -> None:
    """Replay the session rules over the data and score them against labelled cases; or, with
    --profiles, over generated organisations (several seeds each), with the incidents they raise."""
    c = context(ctx)
    chosen = select(c.detections, detection) if detection else [
        d for d in c.detections.values() if d.data_model == "user_sessions"]
    if profiles is not None:
        _evaluate_organisations(list(c.detections.values()), chosen, profiles, seeds, users, days, end, work, cases, fmt)
        return
    if labels is None:
        raise UsageError("evaluate needs --labels FILE or --profiles NAMES")
    c.reader()  # held until the command ends: evaluate_command opens its own store under it
    try:
        text = evaluate_command(c.home, c.settings, chosen, labels, method or [], parse_sets(set_),
                                since, until, cases, fmt, console if fmt == "table" else None)
    except FileNotFoundError as exc:
        raise UsageError(f"{exc.filename}: no such file") from None
    if text:
        sys.stdout.write(text)


def _number_list(option: str, text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected numbers separated by commas, such as 1,2,3") from None
    if not values:
        raise UsageError(f"{option}: at least one value")
    return values


def _evaluate_organisations(catalog: list, rules: list, profiles: str, seeds: str, users: int, days: int, end: str,
                            work: Path | None, show_cases: bool, fmt: str) -> None:
    import tempfile

    from exfilwatch.evaluate.organisations import (case_table, evaluate_organisations, incident_table, rule_table,
                                                   timing_table)
    from exfilwatch.evaluate.replay import markdown_table
    from exfilwatch.synth.profiles import PROFILES

    names = [p.strip() for p in profiles.split(",") if p.strip()]
    unknown = [p for p in names if p not in PROFILES]
    if unknown or not names:
        raise UsageError(f"--profiles {profiles!r}: expected names among {', '.join(PROFILES)}")
    seed_list = _number_list("--seeds", seeds)
    try:
        last_day = date.fromisoformat(end)
    except ValueError:
        raise UsageError(f"--end {end!r}: expected a date such as 2026-10-31") from None
    if fmt not in ("table", "markdown"):
        raise UsageError(f"--format {fmt!r}: expected table or markdown with --profiles")
    temporary = tempfile.TemporaryDirectory(prefix="exfilwatch-evaluate-") if work is None else None
    folder = Path(temporary.name) if temporary is not None else work
    try:
        with terminal_progress() as progress:
            try:
                results = evaluate_organisations(folder, catalog, rules, names, seed_list, users, days, last_day,
                                                 progress)
            except ValueError as exc:  # the generator's checks of --users and --days
                raise UsageError(str(exc)) from None
    finally:
        if temporary is not None:
            temporary.cleanup()
    tables = [("session rules (counts of all seeds)", rule_table(results)),
              ("incidents", incident_table(results))]
    if show_cases:
        tables.append(("cases that miss the aim", case_table(results)))
    tables.append(("time per organisation", timing_table(results)))
    for title, rows in tables:
        if fmt == "markdown":
            sys.stdout.write(f"**{title}**\n\n" + (markdown_table(rows) or "none\n") + "\n")
        elif rows:
            print_table(console, title, rows, list(rows[0]))
        else:
            console.print(f"{title}: none")


@commands.command()
def backtest(
    ctx: typer.Context,
    detection: str = typer.Option(..., "--detection", help="The detection to replay."),
    from_: str = typer.Option(..., "--from", help="First day (local date) or time."),
    to: str = typer.Option(..., "--to", help="Last day (local date, inclusive) or time (exclusive)."),
    set_: list[str] | None = typer.Option(None, "--set", help="Parameter override NAME=VALUE (repeatable)."),
    fmt: str = typer.Option("table", "--format", help="table or jsonl."),
) -> None:
    """Replay a detection day by day as its schedule would have run, without touching stored findings."""
    c = context(ctx)
    tz = c.settings.timezone
    anchor = datetime(1970, 1, 1, tzinfo=timezone.utc)
    start = day_or_time(from_, anchor, tz, end=False)
    end = day_or_time(to, anchor, tz, end=True)
    if end <= start:
        raise UsageError("--to must be after --from")
    chosen = select(c.detections, [detection])[0]
    state = c.reader()
    with terminal_progress() as progress:
        report = backtest_detection(state, c.settings, list(c.detections.values()), chosen, start, end,
                                    parse_sets(set_), progress)
    if fmt == "jsonl":
        sys.stdout.write(json.dumps(report, default=str) + "\n")
        return
    settings_note = ", ".join(f"{k}={v}" for k, v in report["overrides"].items()) or "defaults"
    kind = "incidents" if report["type"] == "correlation" else "findings"
    print_table(console, f"{detection}: {kind} per day ({settings_note}; days in {tz})", report["per_day"],
                ["day", "findings", "entities"])
    print_table(console, f"{kind} per entity", report["per_entity"], ["entity", "findings", "days", "max value", "risk"])
    console.print(f"{report['findings']} {kind} from {local_time(report['from'], tz)} to {local_time(report['to'], tz)}; "
                  "stored findings untouched")


@commands.command()
def generate(
    out: Path = typer.Option(..., "--out", help="Folder to write conn.log, config.yaml and labels.csv into."),
    days: int = typer.Option(45, "--days"),
    hosts: int = typer.Option(500, "--hosts"),
    seed: int = typer.Option(1, "--seed"),
    end: str = typer.Option("2026-10-31", "--end", help="Last day of data (local date)."),
    flows_per_host_day: int | None = typer.Option(None, "--flows-per-host-day"),
    org: bool = typer.Option(False, "--org", help="A whole organisation: VPN, mail and flows, with labelled leaks."),
    users: int = typer.Option(1000, "--users", help="With --org: the number of employees."),
    mail: str | None = typer.Option(None, "--mail", help="With --org: postfix (maillog) or exchange (message "
                                    "tracking); default: the profile's."),
    hosts_per_user: int = typer.Option(1, "--hosts-per-user", help="With --org: workstations per employee."),
    profile: str = typer.Option("default", "--profile", help="With --org: the kind of organisation: "
                                "default or varied (see docs/detection-quality.md)."),
) -> None:
    """Write a synthetic network with labelled incidents (Zeek conn.log, asset inventory, labels).

    With --org: a synthetic organisation (vpn.log, maillog or MessageTracking/, conn.log, config.yaml
    with identities, labels.csv with the injected leaks and benign hard cases)."""
    try:
        last_day = date.fromisoformat(end)
    except ValueError:
        raise UsageError(f"--end {end!r}: expected a date such as 2026-10-31") from None
    if org:
        from exfilwatch.synth.org import MAIL_FORMATS, generate_organisation
        from exfilwatch.synth.profiles import PROFILES

        if mail is not None and mail not in MAIL_FORMATS:
            raise UsageError(f"--mail must be one of: {', '.join(MAIL_FORMATS)}")
        if profile not in PROFILES:
            raise UsageError(f"--profile must be one of: {', '.join(PROFILES)}")
        try:
            made = generate_organisation(out, users=users, days=days, seed=seed, end=last_day, mail=mail,
                                         hosts_per_user=hosts_per_user, flows_per_host_day=flows_per_host_day,
                                         profile=profile)
        except ValueError as exc:  # the generator's checks of --users, --days, --hosts-per-user
            raise UsageError(str(exc)) from None
        console.print(f"wrote {made.users} users, {made.sessions} VPN sessions ({made.vpn_log}), {made.messages} "
                      f"messages ({made.mail_log}), {made.flows} flows ({made.conn_log}), {made.config}, {made.labels}")
        if made.network_note:
            console.print(made.network_note)
        return
    from exfilwatch.synth.network import generate_network

    kwargs: dict[str, Any] = {}
    if flows_per_host_day:
        kwargs["flows_per_host_day"] = flows_per_host_day
    dataset = generate_network(out, days=days, hosts=hosts, seed=seed, end=last_day, **kwargs)
    console.print(f"wrote {dataset.flows} flows to {dataset.conn_log}, {dataset.config}, {dataset.labels}")


@commands.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the generated logs and the demo home."),
    hosts: int = typer.Option(200, "--hosts"),
    days: int = typer.Option(35, "--days"),
    seed: int = typer.Option(1, "--seed"),
) -> None:
    """Generate a small network, ingest it, run the detections at the end of the data, show findings."""
    from exfilwatch.cli.demo import run_demo

    raise typer.Exit(run_demo(out, hosts=hosts, days=days, seed=seed, console=console))
