"""`findings`, `incidents`, `incident ID`, `entity NAME`: what an analyst reads and triages after a run."""

from __future__ import annotations

import getpass
import json
import sys
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from exfilwatch.cli.common import console, context, emit, local_time, now_from
from exfilwatch.config import Settings
from exfilwatch.errors import UsageError
from exfilwatch.findings.store import query_findings, suppressed_count
from exfilwatch.findings.suppressions import all_suppressions
from exfilwatch.incidents.timeline import entity_timeline
from exfilwatch.incidents.workflow import (IncidentFilter, add_comment, assign, get_incident, list_incidents,
                                           set_status)
from exfilwatch.outputs.records import delivered_outputs, incident_records
from exfilwatch.outputs.formats import print_table, terminal_safe
from exfilwatch.state import StateStore

INCIDENT_COLUMNS = ["id", "raised", "rule", "risk_object", "severity", "score", "first", "last", "status", "assignee",
                    "delivered", "message"]

commands = typer.Typer()


def register(app: typer.Typer) -> None:
    app.registered_commands += commands.registered_commands


@commands.command()
def findings(
    ctx: typer.Context,
    detection: list[str] | None = typer.Option(None, "--detection", help="Only these detections."),
    fmt: str = typer.Option("table", "--format", help="table, jsonl or csv."),
    suppressed: bool = typer.Option(False, "--suppressed", help="Show the suppressed findings (hidden otherwise)."),
) -> None:
    """List stored findings (suppressed ones only with --suppressed)."""
    c = context(ctx)
    state = c.reader()
    names = {d.id: d.name for d in c.detections.values()}
    techniques = {d.id: list(d.tags.mitre_attack_id) for d in c.detections.values()}
    rows = query_findings(state, detection, suppressed, names=names, techniques=techniques)
    by_id = {s.suppression_id: s for s in all_suppressions(state, c.settings, now_from(None, c.settings))} if suppressed else {}
    records = []
    for row in rows:
        record = {k: row[k] for k in ("detection_id", "detection_name", "time", "entity", "risk_objects", "risk_score",
                                      "message", "mitre_attack_id", "fields")}
        if suppressed:
            s = by_id.get(row["suppression_id"])
            record["suppressed_by"] = row["suppression_id"] + (f" ({s.owner}: {s.reason})" if s else " (removed)")
        records.append(record)
    columns = ["time", "detection_id", "entity", "risk_score", "message"] + (["suppressed_by"] if suppressed else [])
    emit(records, fmt, "suppressed findings" if suppressed else "findings", columns)
    if fmt == "table" and not suppressed:
        hidden = suppressed_count(state)
        if hidden:
            console.print(f"{hidden} suppressed findings hidden: see `exfilwatch findings --suppressed`")


@commands.command()
def incidents(
    ctx: typer.Context,
    fmt: str = typer.Option("table", "--format", help="table, jsonl or csv."),
    entity: str | None = typer.Option(None, "--entity", help="Only this risk object."),
    rule: str | None = typer.Option(None, "--rule", help="Only incidents this incident rule contributed to (opened or continued)."),
    severity: str | None = typer.Option(None, "--severity", help="Only this severity or above."),
    status: str | None = typer.Option(None, "--status", help="Only incidents in this status: new, in_progress, closed."),
    assignee: str | None = typer.Option(None, "--assignee", help="Only incidents assigned to this user."),
) -> None:
    """List the incidents the risk rules raised, oldest first, with their status and assignee."""
    c = context(ctx)
    state = c.reader()
    chosen = {r["incident_id"]: r for r in list_incidents(state, IncidentFilter(
        status=status, severity=severity, detection_id=rule, entity=entity, assignee=assignee), limit=None)}
    records = [r for r in incident_records(state, {d.id: d.name for d in c.detections.values()})
               if r["incident_id"] in chosen]
    for record in records:
        record.update({k: chosen[record["incident_id"]][k] for k in ("status", "disposition", "assignee")})
    delivered = delivered_outputs(state)
    tz = c.settings.timezone
    if fmt == "table":
        print_table(console, f"incidents ({len(records)}; times in {tz})",
                    [incident_row(r, tz, delivered) for r in records], INCIDENT_COLUMNS)
        return
    for record in records:
        record["delivered"] = delivered.get(record["incident_key"], [])
    emit(records, fmt, "incidents", ["incident_id", "raised_at", "rule", "risk_object", "risk_object_type", "severity",
                                     "score", "first_time", "last_time", "message", "incident_key", "status",
                                     "disposition", "assignee"])


def _os_user() -> str:
    try:
        return getpass.getuser()  # LOGNAME, USER, LNAME, USERNAME, then the password database
    except (OSError, KeyError):
        raise UsageError("who is making this change? no user name in the environment: pass --actor NAME") from None


@commands.command()
def incident(
    ctx: typer.Context,
    incident_id: int = typer.Argument(..., help="The incident's id (the id column of `exfilwatch incidents`)."),
    assign_to: str | None = typer.Option(None, "--assign", metavar="USER", help="Assign the incident to USER."),
    status: str | None = typer.Option(None, "--status", help="Set the status: new, in_progress or closed."),
    disposition: str | None = typer.Option(
        None, "--disposition", help="With --status closed: true_positive, benign_true_positive or false_positive."),
    comment: str | None = typer.Option(None, "--comment", metavar="TEXT", help="Add a comment."),
    actor: str | None = typer.Option(None, "--actor", metavar="NAME",
                                     help="Who makes the change, for the audit trail (else the OS user name)."),
    now: str | None = typer.Option(None, "--now", help="When the change is made (else the clock)."),
    fmt: str = typer.Option("table", "--format", help="table or jsonl."),
) -> None:
    """Show one incident (risk events, comments, audit trail); --assign, --status and --comment change it."""
    if fmt not in ("table", "jsonl"):
        raise UsageError(f"--format {fmt!r}: expected table or jsonl")
    c = context(ctx)
    changes = assign_to is not None or status is not None or disposition is not None or comment is not None
    if changes:
        if disposition is not None and status is None:
            raise UsageError("--disposition goes with --status closed")
        state = c.writer()
        who, when = actor or _os_user(), now_from(now, c.settings)
        with state.transaction():  # all the changes asked for, or none
            if assign_to is not None:
                assign(state, incident_id, assign_to, actor=who, now=when)
            if status is not None:
                set_status(state, incident_id, status, disposition=disposition, actor=who, now=when)
            if comment is not None:
                add_comment(state, incident_id, comment, actor=who, now=when)
    else:
        state = c.reader()
    shown = get_incident(state, incident_id)
    if shown is None:
        raise UsageError(f"no incident {incident_id}")
    if fmt == "jsonl":
        sys.stdout.write(json.dumps(shown, default=str) + "\n")
        return
    print_incident(shown, c.settings.timezone)


def print_incident(incident: dict[str, Any], tz: str, out: Console = console) -> None:
    """One incident for the terminal; everything from logs passes terminal_safe and is printed as
    plain text (markup=False), so neither control characters nor rich markup in it take effect."""
    lines = [
        f"incident {incident['incident_id']}: {incident['message']}",
        f"rules {', '.join(incident['rules'])}; {incident['risk_object']} ({incident['risk_object_type']}); "
        f"severity {incident['severity']}; score {incident['score']}",
        f"status {incident['status']}" + (f" ({incident['disposition']})" if incident["disposition"] else "")
        + (f", closed {local_time(incident['closed_at'], tz)}" if incident["closed_at"] else "")
        + f"; assignee {incident['assignee'] or '-'}",
        f"first {local_time(incident['first_time'], tz)}, last {local_time(incident['last_time'], tz)}; "
        f"raised {local_time(incident['raised_at'], tz)}, updated {incident['updates']} times "
        f"(last {local_time(incident['updated_at'], tz)}); times in {tz}",
    ]
    out.print("\n".join(terminal_safe(line) for line in lines), markup=False, highlight=False)
    print_table(out, f"risk events ({len(incident['risk_events'])})",
                [{**e, "time": local_time(e["time"], tz), "score": f"{e['score']:g}"} for e in incident["risk_events"]],
                ["time", "detection_id", "source_object", "score", "session_id", "message"])
    print_table(out, f"comments ({len(incident['comments'])})",
                [{**m, "at": local_time(m["at"], tz)} for m in incident["comments"]], ["at", "author", "text"])
    print_table(out, "audit trail (newest first)",
                [{**a, "at": local_time(a["at"], tz), "before": _change_text(a["before"]),
                  "after": _change_text(a["after"])} for a in incident["audit"]],
                ["at", "actor", "action", "before", "after"])


def _change_text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={'-' if v is None else v}" for k, v in value.items())
    return "" if value is None else str(value)


def incident_row(r: dict[str, Any], tz: str, delivered: dict[str, list[str]] | None) -> dict[str, Any]:
    return {"id": r["incident_id"], "raised": local_time(r["raised_at"], tz), "rule": r["rule"],
            "risk_object": f"{r['risk_object']} ({r['risk_object_type']})", "severity": r["severity"],
            "score": r["score"], "first": local_time(r["first_time"], tz), "last": local_time(r["last_time"], tz),
            "status": r.get("status", ""), "assignee": r.get("assignee") or "-",
            "delivered": "" if delivered is None else ", ".join(delivered.get(r["incident_key"], [])) or "-",
            "message": r["message"]}


def print_entity(report: dict[str, Any], tz: str, out: Console = console) -> None:
    identity = report["identity"]
    lines = [f"[bold]{escape(terminal_safe(report['entity']))}[/]"]
    if identity.get("department"):
        lines.append(f"department: {escape(terminal_safe(identity['department']))}")
    if report["aliases"]:
        lines.append(f"also known as: {escape(terminal_safe(', '.join(report['aliases'])))}")
    if report["asset"]:
        lines.append("asset: " + escape(terminal_safe(", ".join(f"{k}={v}" for k, v in report["asset"].items()))))
    lines.append(f"{report['risk_events']} risk events, total risk {report['total_risk']:g}; "
                 f"{report['incidents']} incidents; {len(report['sessions'])} sessions with findings; "
                 f"{report['suppressed_findings']} suppressed findings")
    out.print("\n".join(lines))
    rows = [{**r, "time": local_time(r["time"], tz), "score": "" if r["score"] is None else f"{r['score']:g}",
             "risk_24h": "" if r["risk_24h"] is None else f"{r['risk_24h']:g}"} for r in report["timeline"]]
    print_table(out, f"timeline of {report['entity']} (times in {tz})", rows,
                ["time", "kind", "source", "score", "risk_24h", "detail"])


def print_incidents_with_timelines(out: Console, state: StateStore, settings: Settings, names: dict[str, str]) -> int:
    """The incidents, then each incident's entity timeline (what `make demo` ends with)."""
    records = incident_records(state, names)
    tz = settings.timezone
    print_table(out, f"incidents ({len(records)}; times in {tz})", [incident_row(r, tz, None) for r in records],
                [c for c in INCIDENT_COLUMNS if c not in ("delivered", "status", "assignee")])  # fresh: all new
    for name in dict.fromkeys(r["risk_object"] for r in records):
        print_entity(entity_timeline(state, settings, name), tz, out)
    return len(records)


@commands.command()
def entity(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="A user, mail address, VPN account, IP address or host name."),
    fmt: str = typer.Option("table", "--format", help="table or jsonl."),
) -> None:
    """One entity's timeline, read top to bottom: risk events, suppressed findings, sessions, incidents."""
    c = context(ctx)
    report = entity_timeline(c.reader(), c.settings, name)
    if fmt == "jsonl":
        sys.stdout.write(json.dumps(report, default=str) + "\n")
        return
    if fmt != "table":
        raise UsageError(f"--format {fmt!r}: expected table or jsonl")
    print_entity(report, c.settings.timezone)
