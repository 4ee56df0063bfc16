"""`findings`, `incidents`, `entity NAME`: what an analyst reads after a run."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

from exfilwatch.cli.common import console, context, emit, local_time, now_from
from exfilwatch.config import Settings
from exfilwatch.errors import UsageError
from exfilwatch.findings.store import query_findings, suppressed_count
from exfilwatch.findings.suppressions import all_suppressions
from exfilwatch.incidents.correlation import SEVERITY_RANK
from exfilwatch.incidents.timeline import entity_timeline
from exfilwatch.outputs.records import delivered_outputs, incident_records
from exfilwatch.outputs.formats import print_table, terminal_safe
from exfilwatch.state import StateStore

INCIDENT_COLUMNS = ["id", "raised", "rule", "risk_object", "severity", "score", "first", "last", "delivered", "message"]

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
    rule: str | None = typer.Option(None, "--rule", help="Only this incident rule."),
    severity: str | None = typer.Option(None, "--severity", help="Only this severity or above."),
) -> None:
    """List the incidents the risk rules raised, oldest first."""
    c = context(ctx)
    state = c.reader()
    records = incident_records(state, {d.id: d.name for d in c.detections.values()})
    if entity:
        records = [r for r in records if r["risk_object"] == entity]
    if rule:
        records = [r for r in records if r["rule"] == rule]
    if severity:
        if severity not in SEVERITY_RANK:
            raise UsageError(f"--severity {severity!r}: expected one of {', '.join(SEVERITY_RANK)}")
        records = [r for r in records if SEVERITY_RANK.get(r["severity"], 0) >= SEVERITY_RANK[severity]]
    delivered = delivered_outputs(state)
    tz = c.settings.timezone
    if fmt == "table":
        print_table(console, f"incidents ({len(records)}; times in {tz})",
                    [incident_row(r, tz, delivered) for r in records], INCIDENT_COLUMNS)
        return
    for record in records:
        record["delivered"] = delivered.get(record["incident_key"], [])
    emit(records, fmt, "incidents", ["incident_id", "raised_at", "rule", "risk_object", "risk_object_type", "severity",
                                     "score", "first_time", "last_time", "message", "incident_key"])


def incident_row(r: dict[str, Any], tz: str, delivered: dict[str, list[str]] | None) -> dict[str, Any]:
    return {"id": r["incident_id"], "raised": local_time(r["raised_at"], tz), "rule": r["rule"],
            "risk_object": f"{r['risk_object']} ({r['risk_object_type']})", "severity": r["severity"],
            "score": r["score"], "first": local_time(r["first_time"], tz), "last": local_time(r["last_time"], tz),
            "delivered": "" if delivered is None else ", ".join(delivered.get(r["incident_key"], [])) or "-",
            "message": r["message"]}


def print_entity(report: dict[str, Any], tz: str, out: Console = console) -> None:
    identity = report["identity"]
    lines = [f"[bold]{terminal_safe(report['entity'])}[/]"]
    if identity.get("department"):
        lines.append(f"department: {terminal_safe(identity['department'])}")
    if report["aliases"]:
        lines.append(f"also known as: {terminal_safe(', '.join(report['aliases']))}")
    if report["asset"]:
        lines.append("asset: " + terminal_safe(", ".join(f"{k}={v}" for k, v in report["asset"].items())))
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
                [c for c in INCIDENT_COLUMNS if c != "delivered"])
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
