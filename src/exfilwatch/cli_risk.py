"""Command-line commands of risk-based alerting, registered on the `exfilwatch` app by cli.py.

`incidents`, `entity NAME`, `risk`, `suppress add|list|remove`, `detections lint`, `backtest`,
and the risk step that `run` and `detect` end with.
"""

from __future__ import annotations

import json
import re
import sqlite3
import sys
import tempfile
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import typer

from . import risk
from .cli import Context, _context, _emit, _load_detections, _now, _parse_sets, _select, app, console, detections_app, fail
from .config import ConfigError, Settings
from .detect.runner import DetectionRunError, run_schedule
from .engine import connect
from .outputs.deliver import incident_records
from .outputs.formats import print_table, terminal_safe
from .riskconfig import SuppressionSpec
from .state import StateStore
from .timeexpr import TimeModifierError, parse_time, relative_time

suppress_app = typer.Typer(no_args_is_help=True, help="Suppress findings: add, list and remove suppressions.")
app.add_typer(suppress_app, name="suppress")

INCIDENT_COLUMNS = ["id", "raised", "rule", "risk_object", "severity", "score", "first", "last", "delivered", "message"]


def _local(text: str | None, tz: str) -> str:
    if not text:
        return ""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return text
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")


# --- the risk step after run / detect ---------------------------------------------------------------


def run_risk_step(c: Context, state: StateStore, con: Any, now: datetime, since: datetime | None = None,
                  deliver: bool = True, quiet: bool = False) -> risk.RiskRunResult:
    detections = list(_load_detections().values())
    try:
        result = risk.process(con, state, c.settings, detections, now, since, deliver=deliver)
    except (DetectionRunError, TimeModifierError, ConfigError) as exc:
        fail(str(exc))
        raise AssertionError from exc
    if not quiet:
        rebuilt = result.rebuild
        console.print(
            f"risk: {rebuilt.events} risk events from {rebuilt.findings - rebuilt.suppressed} findings "
            f"({rebuilt.suppressed} suppressed findings kept, {rebuilt.newly_suppressed} new); "
            + ", ".join(f"{r.detection_id}: {r.new} new incidents" + (f", {r.updated} updated" if r.updated else "")
                        for r in result.correlations),
            soft_wrap=True,
        )
        for report in result.deliveries:
            line = f"output {report.output} ({report.kind}): {report.delivered} delivered, {report.pending} queued"
            if report.errors:
                line += f" — {report.errors[-1]}"
            console.print(terminal_safe(line), markup=False, soft_wrap=True)
    return result


@app.command("risk")
def risk_command(
    ctx: typer.Context,
    now: str | None = typer.Option(None, "--now", help="The time to run at (default: the clock)."),
    no_deliver: bool = typer.Option(False, "--no-deliver", help="Do not deliver to the configured outputs."),
) -> None:
    """Rebuild risk events, run the incident rules and deliver what is queued (run and detect do this too)."""
    c = _context(ctx)
    state = c.state()
    con = connect(c.settings, c.home.spill_dir)
    run_risk_step(c, state, con, _now(now, c.settings), deliver=not no_deliver)


# --- incidents and the entity timeline ---------------------------------------------------------------


def _delivered(state: StateStore) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for row in state.query("SELECT output, item_key, status FROM deliveries WHERE kind = 'incidents' ORDER BY output"):
        out[row["item_key"]].append(row["output"] + ("" if row["status"] == "delivered" else " (queued)"))
    return out


@app.command()
def incidents(
    ctx: typer.Context,
    fmt: str = typer.Option("table", "--format", help="table, jsonl or csv."),
    entity: str | None = typer.Option(None, "--entity", help="Only this risk object."),
    rule: str | None = typer.Option(None, "--rule", help="Only this incident rule."),
    severity: str | None = typer.Option(None, "--severity", help="Only this severity or above."),
) -> None:
    """List the incidents the risk rules raised, oldest first."""
    c = _context(ctx)
    state = c.state()
    names = {d.id: d.name for d in _load_detections().values()}
    records = incident_records(state, names)
    if entity:
        records = [r for r in records if r["risk_object"] == entity]
    if rule:
        records = [r for r in records if r["rule"] == rule]
    if severity:
        if severity not in risk.SEVERITY_RANK:
            fail(f"--severity {severity!r}: expected one of {', '.join(risk.SEVERITY_RANK)}")
        records = [r for r in records if risk.SEVERITY_RANK.get(r["severity"], 0) >= risk.SEVERITY_RANK[severity]]
    delivered = _delivered(state)
    tz = c.settings.timezone
    if fmt == "table":
        rows = [{"id": r["incident_id"], "raised": _local(r["raised_at"], tz), "rule": r["rule"],
                 "risk_object": f"{r['risk_object']} ({r['risk_object_type']})", "severity": r["severity"],
                 "score": r["score"], "first": _local(r["first_time"], tz), "last": _local(r["last_time"], tz),
                 "delivered": ", ".join(delivered.get(r["incident_key"], [])) or "-", "message": r["message"]}
                for r in records]
        print_table(console, f"incidents ({len(records)}; times in {tz})", rows, INCIDENT_COLUMNS)
        return
    for record in records:
        record["delivered"] = delivered.get(record["incident_key"], [])
    _emit(records, fmt, "incidents", ["incident_id", "raised_at", "rule", "risk_object", "risk_object_type", "severity",
                                      "score", "first_time", "last_time", "message", "incident_key"])


def entity_timeline(state: StateStore, settings: Settings, name: str) -> dict[str, Any]:
    """Everything about one entity, in time order: risk events, suppressed findings, sessions, incidents."""
    resolver = risk.Resolver(settings)
    canonical, aliases = resolver.aliases(name)
    names = sorted(aliases | {canonical})
    marks = ",".join("?" * len(names))
    events = risk.stored_risk_events(state, f"WHERE risk_object IN ({marks}) OR source_object IN ({marks})",
                                     tuple(names) * 2)
    suppressed = [dict(r) for r in state.query(
        f"""SELECT f.finding_key, f.detection_id, f.entity, f.time, f.risk_score, f.message, f.fields, f.risk_objects,
                   s.suppression_id FROM findings f JOIN finding_suppressions s USING (finding_key)
            WHERE s.suppression_id IS NOT NULL ORDER BY f.time""")]
    suppressed = [f for f in suppressed
                  if f["entity"] in aliases or any(str(o.get("value")) in aliases for o in json.loads(f["risk_objects"]))]
    incident_rows = risk.stored_incidents(state, f"WHERE risk_object IN ({marks})", tuple(names))
    sessions: dict[str, dict[str, Any]] = {}
    for event in events:
        if event["session_id"]:
            entry = sessions.setdefault(event["session_id"], {"session_id": event["session_id"], "rules": {},
                                                              "first": event["time"], "last": event["time"]})
            entry["rules"][event["detection_id"]] = max(entry["rules"].get(event["detection_id"], 0), event["raw_score"])
            entry["first"], entry["last"] = min(entry["first"], event["time"]), max(entry["last"], event["time"])
    for finding_key, fields in ((r["finding_key"], json.loads(r["fields"])) for r in state.query(
            f"SELECT finding_key, fields FROM findings WHERE entity IN ({marks})", tuple(names))):
        sid = fields.get("session_id")
        if sid in sessions:
            for key in ("session_start", "session_end", "end_reason", "boundary_source", "session_kind"):
                if fields.get(key) is not None:
                    sessions[sid][key] = fields[key]
    timeline: list[dict[str, Any]] = []
    window: list[tuple[datetime, float]] = []
    for event in events:
        when = datetime.fromisoformat(event["time"])
        window = [(t, s) for t, s in window if t > when - timedelta(hours=24)] + [(when, event["score"])]
        source = "" if event["source_object"] == event["risk_object"] else f" [{event['source_object']}]"
        timeline.append({"time": event["time"], "kind": "risk", "source": event["detection_id"],
                         "score": event["score"], "risk_24h": round(sum(s for _, s in window), 2),
                         "detail": f"{event['message']}{source} ({', '.join(event['tactics']) or 'no tactic'})"})
    for finding in suppressed:
        timeline.append({"time": finding["time"], "kind": "suppressed", "source": finding["detection_id"],
                         "score": 0, "risk_24h": None,
                         "detail": f"{finding['message']} (suppressed by {finding['suppression_id']})"})
    notable = float(settings.detections.get("notable_session", {}).get("notable_score", 90))
    for session in sessions.values():
        score = round(sum(session["rules"].values()), 2)
        span = ""
        if session.get("session_start") or session.get("session_end"):
            span = f"{session.get('session_kind') or ''} session {session.get('session_start')} to {session.get('session_end')}"
            span += f", ended by {session['end_reason']}" if session.get("end_reason") else ""
            span = span.strip() + ": "
        timeline.append({"time": session["last"], "kind": "session", "source": session["session_id"], "score": score,
                         "risk_24h": None,
                         "detail": f"{span}session score {score:g} from {len(session['rules'])} rules "
                                   f"({', '.join(sorted(session['rules']))})" + (" — NOTABLE" if score >= notable else "")})
    for incident in incident_rows:
        timeline.append({"time": incident["raised_at"], "kind": f"INCIDENT {incident['severity']}",
                         "source": incident["detection_id"], "score": incident["score"], "risk_24h": None,
                         "detail": f"#{incident['incident_id']} {incident['message']}"})
    order = {"risk": 0, "suppressed": 0, "session": 1}
    timeline.sort(key=lambda r: (r["time"], order.get(r["kind"], 2)))
    identity = resolver.identities.get(canonical, {})
    return {"entity": canonical, "aliases": sorted(aliases - {canonical}), "identity": identity,
            "asset": resolver.asset(canonical) if canonical == name else None,
            "risk_events": len(events), "total_risk": round(sum(e["score"] for e in events), 2),
            "suppressed_findings": len(suppressed), "incidents": len(incident_rows),
            "sessions": list(sessions.values()), "timeline": timeline}


def print_entity(report: dict[str, Any], tz: str, out: Any = None) -> None:
    out = out or console
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
    rows = [{**r, "time": _local(r["time"], tz), "score": "" if r["score"] is None else f"{r['score']:g}",
             "risk_24h": "" if r["risk_24h"] is None else f"{r['risk_24h']:g}"} for r in report["timeline"]]
    print_table(out, f"timeline of {report['entity']} (times in {tz})", rows,
                ["time", "kind", "source", "score", "risk_24h", "detail"])


def print_incidents_with_timelines(out: Any, state: StateStore, settings: Settings, names: dict[str, str]) -> int:
    """The incidents, then each incident's entity timeline (what `make demo` ends with)."""
    records = incident_records(state, names)
    tz = settings.timezone
    rows = [{"id": r["incident_id"], "raised": _local(r["raised_at"], tz), "rule": r["rule"],
             "risk_object": f"{r['risk_object']} ({r['risk_object_type']})", "severity": r["severity"],
             "score": r["score"], "first": _local(r["first_time"], tz), "last": _local(r["last_time"], tz),
             "delivered": "", "message": r["message"]} for r in records]
    print_table(out, f"incidents ({len(records)}; times in {tz})", rows, [c for c in INCIDENT_COLUMNS if c != "delivered"])
    for name in dict.fromkeys(r["risk_object"] for r in records):
        print_entity(entity_timeline(state, settings, name), tz, out)
    return len(records)


@app.command()
def entity(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="A user, mail address, VPN account, IP address or host name."),
    fmt: str = typer.Option("table", "--format", help="table or jsonl."),
) -> None:
    """One entity's timeline, read top to bottom: risk events, suppressed findings, sessions, incidents."""
    c = _context(ctx)
    report = entity_timeline(c.state(), c.settings, name)
    if fmt == "jsonl":
        sys.stdout.write(json.dumps(report, default=str) + "\n")
        return
    if fmt != "table":
        fail(f"--format {fmt!r}: expected table or jsonl")
    print_entity(report, c.settings.timezone)


# --- findings --suppressed ------------------------------------------------------------------------


def emit_findings(c: Context, detection_ids: list[str] | None, fmt: str, suppressed: bool) -> None:
    """The `findings` command: unsuppressed findings, or with --suppressed the hidden ones."""
    state = c.state()
    detections = _load_detections()
    sql = ("SELECT f.*, s.suppression_id FROM findings f LEFT JOIN finding_suppressions s USING (finding_key) WHERE "
           + ("s.suppression_id IS NOT NULL" if suppressed else "s.suppression_id IS NULL"))
    params: tuple = ()
    if detection_ids:
        sql += f" AND f.detection_id IN ({','.join('?' * len(detection_ids))})"
        params = tuple(detection_ids)
    rows = state.query(sql + " ORDER BY f.time, f.detection_id, f.entity", params)
    by_id = {s.suppression_id: s for s in risk.all_suppressions(state, c.settings, _now(None, c.settings))} if suppressed else {}
    records = []
    for row in rows:
        d = detections.get(row["detection_id"])
        record = {"detection_id": row["detection_id"], "detection_name": d.name if d else row["detection_id"],
                  "time": row["time"], "entity": row["entity"], "risk_objects": json.loads(row["risk_objects"]),
                  "risk_score": row["risk_score"], "message": row["message"],
                  "mitre_attack_id": list(d.tags.mitre_attack_id) if d else [], "fields": json.loads(row["fields"])}
        if suppressed:
            s = by_id.get(row["suppression_id"])
            record["suppressed_by"] = row["suppression_id"] + (f" ({s.owner}: {s.reason})" if s else " (removed)")
        records.append(record)
    columns = ["time", "detection_id", "entity", "risk_score", "message"] + (["suppressed_by"] if suppressed else [])
    _emit(records, fmt, "suppressed findings" if suppressed else "findings", columns)
    if fmt == "table" and not suppressed:
        hidden = state.query("SELECT count(*) AS n FROM finding_suppressions WHERE suppression_id IS NOT NULL")[0]["n"]
        if hidden:
            console.print(f"{hidden} suppressed findings hidden: see `exfilwatch findings --suppressed`")


# --- suppressions ----------------------------------------------------------------------------------


_WHERE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(<=|>=|<|>|=)\s*(.+?)\s*$")


def _scalar(text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def parse_where(items: list[str]) -> dict[str, Any]:
    """`field=value` (globs; `a,b` = either), `field<N`, `field<=N`, `field>N`, `field>=N`."""
    out: dict[str, Any] = {}
    for item in items:
        match = _WHERE.match(item)
        if not match:
            raise ValueError(f"--where {item!r}: expected FIELD=VALUE, FIELD<N, FIELD<=N, FIELD>N or FIELD>=N")
        name, op, value = match.groups()
        if op == "=":
            parts = [_scalar(p.strip()) for p in value.split(",")]
            out[name] = parts[0] if len(parts) == 1 else parts
            continue
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--where {item!r}: {value!r} is not a number") from None
        bound = out.get(name) if isinstance(out.get(name), dict) else {}
        bound[{"<": "lt", "<=": "max", ">": "gt", ">=": "min"}[op]] = number
        out[name] = bound
    return out


@suppress_app.command("add")
def suppress_add(
    ctx: typer.Context,
    detection: str = typer.Option("all", "--detection", help="Detection id, or 'all'."),
    entity: str | None = typer.Option(None, "--entity", help="The finding's entity (globs allowed: 10.20.*)."),
    where: list[str] | None = typer.Option(None, "--where", help="Condition on a finding field: domain=partner.example, "
                                           "bytes_out<5e8 (repeatable; all must hold)."),
    owner: str = typer.Option(..., "--owner", help="Who is responsible for this suppression."),
    reason: str = typer.Option(..., "--reason", help="Why these findings are expected."),
    expires: str = typer.Option(..., "--expires", help="A date (through that local day), a time, +30d, or 'never'."),
    now: str | None = typer.Option(None, "--now", help="The time it is added at (default: the clock)."),
) -> None:
    """Add a suppression: matching findings are kept and marked, and add no risk, until it expires."""
    c = _context(ctx)
    if detection not in ("all", "*"):
        _select(_load_detections(), [detection])
    try:
        conditions = parse_where(where or [])
        spec = SuppressionSpec(detection=detection, entity=entity, where=conditions, owner=owner, reason=reason,
                               expires=expires)
    except ValueError as exc:
        fail(str(exc))
    if entity is None and not conditions and detection in ("all", "*"):
        fail("a suppression of every finding of every detection: name a --detection, an --entity or a --where")
    try:
        added = risk.add_suppression(c.state(), c.settings, spec, _now(now, c.settings))
    except (ConfigError, TimeModifierError) as exc:
        fail(str(exc))
    expiry = _local(added.expires.isoformat(), c.settings.timezone) if added.expires else "never"
    console.print(f"added suppression {added.suppression_id}: {terminal_safe(added.describe())} "
                  f"(detection {added.detection_id}, expires {expiry}); it applies to findings decided from now on",
                  markup=False)


@suppress_app.command("list")
def suppress_list(
    ctx: typer.Context,
    now: str | None = typer.Option(None, "--now", help="Judge expiry at this time (default: the clock)."),
    fmt: str = typer.Option("table", "--format", help="table, jsonl or csv."),
) -> None:
    """Suppressions from config.yaml and the command line, whether active at NOW, and the findings each hid."""
    c = _context(ctx)
    state = c.state()
    at = _now(now, c.settings)
    try:
        suppressions = risk.all_suppressions(state, c.settings, at)
    except ConfigError as exc:
        fail(str(exc))
    hits = risk.suppression_hits(state)
    tz = c.settings.timezone
    rows = [{"id": s.suppression_id, "source": s.source, "detection": "all" if s.detection_id == "*" else s.detection_id,
             "condition": s.describe(), "owner": s.owner, "reason": s.reason,
             "expires": _local(s.expires.isoformat(), tz) if s.expires else "never",
             "status": "active" if s.active(at) else "expired", "suppressed": hits.get(s.suppression_id, 0)}
            for s in suppressions]
    _emit(rows, fmt, f"suppressions (at {_local(at.isoformat(), tz)} {tz})",
          ["id", "source", "detection", "condition", "owner", "reason", "expires", "status", "suppressed"])


@suppress_app.command("remove")
def suppress_remove(ctx: typer.Context, suppression_id: str = typer.Argument(..., help="Its id, e.g. s3.")) -> None:
    """Remove a suppression added on the command line (findings it hid stay marked)."""
    c = _context(ctx)
    if suppression_id.startswith("config:"):
        fail(f"{suppression_id} comes from {c.home.config_path}: remove it there")
    if not risk.remove_suppression(c.state(), suppression_id):
        fail(f"no suppression {suppression_id!r}; see `exfilwatch suppress list`")
    console.print(f"removed suppression {suppression_id}")


# --- detections lint ----------------------------------------------------------------------------------


@detections_app.command("lint")
def detections_lint(
    path: Path | None = typer.Option(None, "--path", help="Folder of detections (default: the shipped ones)."),
) -> None:
    """Check every detection file: schema, ATT&CK ids, output fields, parameters, schedule, tests."""
    from .attack import source
    from .detect.lint import lint_folder
    from .detect.schema import default_detections_dir

    folder = path or default_detections_dir()
    count, issues = lint_folder(folder)
    if issues:
        rows = [{"level": i.level, "detection": i.detection_id, "check": i.check, "problem": i.message} for i in issues]
        print_table(console, "detections lint", rows, ["level", "detection", "check", "problem"])
    errors = sum(i.level == "error" for i in issues)
    warnings = len(issues) - errors
    console.print(f"{count} detections checked against ATT&CK Enterprise ({source()['bundle']}): "
                  f"{errors} errors, {warnings} warnings")
    if errors or not count:
        raise typer.Exit(1)


# --- backtest ---------------------------------------------------------------------------------------


def _day_or_time(text: str, now: datetime, tz: str, end: bool) -> datetime:
    value = parse_time(text if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) else text + "T00:00:00", now, tz)
    return relative_time(value, "+1d", tz) if end and re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) else value


def backtest_detection(c: Context, detection_id: str, start: datetime, end: datetime,
                       overrides: dict[str, Any]) -> dict[str, Any]:
    """Replay one detection's schedule over [start, end) on a copy of the state store.

    The copy keeps the lake's committed batches (and risk events, for a correlation rule) and
    drops the detection's findings, incidents and watermark, so the replay starts fresh and the
    real store is not touched.
    """
    detection = _select(_load_detections(), [detection_id])[0]
    settings = c.settings
    source = c.state()
    with tempfile.TemporaryDirectory(prefix="exfilwatch-backtest-") as tmp:
        copy_path = Path(tmp) / "state.sqlite"
        target = sqlite3.connect(copy_path)
        source.conn.backup(target)
        target.execute("DELETE FROM findings WHERE detection_id = ?", (detection_id,))
        target.execute("DELETE FROM incidents WHERE detection_id = ?", (detection_id,))
        target.execute("DELETE FROM watermarks WHERE detection_id = ?", (detection_id,))
        target.commit()
        target.close()
        state = StateStore(copy_path)
        con = connect(settings, Path(tmp) / "spill")
        try:
            if detection.type == "correlation":
                risk.run_correlations(con, state, settings, [detection], end, since=start, overrides=overrides)
                rows = [{"day": r["first_time"], "entity": r["risk_object"], "value": r["score"],
                         "score": r["score"], "time": r["last_time"]}
                        for r in risk.stored_incidents(state, "WHERE detection_id = ?", (detection_id,))]
            else:
                run_schedule(con, state, settings, [detection], end, since=start, overrides=overrides)
                rows = [{"entity": r["entity"], "value": r["value"], "score": r["risk_score"], "time": r["time"]}
                        for r in state.query("SELECT * FROM findings WHERE detection_id = ?", (detection_id,))]
        finally:
            con.close()
            state.close()
    tz = ZoneInfo(settings.timezone)
    days: dict[str, list[dict[str, Any]]] = defaultdict(list)
    entities: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        when = risk._as_time(row["time"])
        if when is not None and not (start <= when < end):
            continue
        day = when.astimezone(tz).date().isoformat() if when else str(row["time"])
        row["day"] = day
        days[day].append(row)
        entities[row["entity"]].append(row)
    per_day = []
    cursor = start.astimezone(tz).date()
    while cursor < end.astimezone(tz).date() or (cursor == end.astimezone(tz).date() and end.astimezone(tz).time() != datetime.min.time()):
        items = days.get(cursor.isoformat(), [])
        per_day.append({"day": cursor.isoformat(), "findings": len(items),
                        "entities": ", ".join(sorted({i["entity"] for i in items})[:8]) + (" …" if len({i["entity"] for i in items}) > 8 else "")})
        cursor += timedelta(days=1)
    per_entity = sorted(
        ({"entity": e, "findings": len(items), "days": ", ".join(sorted({i["day"] for i in items})),
          "max value": max((i["value"] for i in items if i["value"] is not None), default=None),
          "risk": round(sum(i["score"] or 0 for i in items), 2)} for e, items in entities.items()),
        key=lambda r: (-r["findings"], r["entity"]))
    return {"detection": detection_id, "type": detection.type, "from": start.isoformat(), "to": end.isoformat(),
            "overrides": overrides, "findings": sum(len(v) for v in days.values()), "per_day": per_day,
            "per_entity": per_entity}


@app.command()
def backtest(
    ctx: typer.Context,
    detection: str = typer.Option(..., "--detection", help="The detection to replay."),
    from_: str = typer.Option(..., "--from", help="First day (local date) or time."),
    to: str = typer.Option(..., "--to", help="Last day (local date, inclusive) or time (exclusive)."),
    set_: list[str] | None = typer.Option(None, "--set", help="Parameter override NAME=VALUE (repeatable)."),
    fmt: str = typer.Option("table", "--format", help="table or jsonl."),
) -> None:
    """Replay a detection day by day as its schedule would have run, without touching stored findings."""
    c = _context(ctx)
    tz = c.settings.timezone
    anchor = datetime(1970, 1, 1, tzinfo=timezone.utc)
    try:
        start = _day_or_time(from_, anchor, tz, end=False)
        end = _day_or_time(to, anchor, tz, end=True)
    except TimeModifierError as exc:
        fail(str(exc))
    if end <= start:
        fail("--to must be after --from")
    try:
        report = backtest_detection(c, detection, start, end, _parse_sets(set_ or []))
    except (DetectionRunError, TimeModifierError) as exc:
        fail(str(exc))
    if fmt == "jsonl":
        sys.stdout.write(json.dumps(report, default=str) + "\n")
        return
    settings_note = ", ".join(f"{k}={v}" for k, v in report["overrides"].items()) or "defaults"
    kind = "incidents" if report["type"] == "correlation" else "findings"
    print_table(console, f"{detection}: {kind} per day ({settings_note}; days in {tz})", report["per_day"],
                ["day", "findings", "entities"])
    print_table(console, f"{kind} per entity", report["per_entity"], ["entity", "findings", "days", "max value", "risk"])
    console.print(f"{report['findings']} {kind} from {_local(report['from'], tz)} to {_local(report['to'], tz)}; "
                  "stored findings untouched")
