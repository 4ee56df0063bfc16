"""Deliver incidents (and, where an output asks, findings) to the outputs configured in config.yaml.

Each item is delivered once per output: `deliveries` in the state store records, per output and
item, `delivered` or `pending` with the attempts and the last error. Every run offers each output
what it has not yet delivered, oldest first, so an item that could not be delivered (the webhook
was down, the syslog TCP listener refused) stays queued and goes out on a later run. Delivery is
at least once: a process killed between sending and recording sends that item again.

An output that fails an item stops for this run (the rest stay queued), so a dead endpoint costs
one item's retries per run, not every item's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from exfilwatch.config import Settings
from exfilwatch.findings.store import query_findings
from exfilwatch.riskconfig import FileOutput, SyslogOutput, WebhookOutput
from exfilwatch.state import StateStore
from exfilwatch.outputs.cef import finding_cef, incident_cef, rfc5424, send_tcp, send_udp
from exfilwatch.outputs.formats import csv_safe, to_jsonl
from exfilwatch.outputs.webhook import post_with_retries

INCIDENT_COLUMNS = ["incident_id", "rule", "risk_object", "risk_object_type", "severity", "score", "first_time",
                    "last_time", "raised_at", "message", "incident_key"]
FINDING_COLUMNS = ["time", "detection_id", "entity", "risk_score", "message", "finding_key"]


@dataclass
class DeliveryReport:
    output: str
    kind: str
    delivered: int = 0
    pending: int = 0
    errors: list[str] = field(default_factory=list)


def incident_records(state: StateStore, names: dict[str, str] | None = None,
                     where: str = "", params: tuple = ()) -> list[dict[str, Any]]:
    """Incidents as delivered: the stored incident, its rule's name and the risk events behind it."""
    names = names or {}
    records = []
    for row in state.query(f"SELECT * FROM incidents {where} ORDER BY incident_id", params):
        keys = json.loads(row["event_keys"])
        events = []
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            events += [dict(e) for e in state.query(
                f"SELECT time, detection_id, risk_object, source_object, score, message, tactics, techniques "
                f"FROM risk_events WHERE event_key IN ({','.join('?' * len(chunk))}) ORDER BY time", tuple(chunk))]
        tactics = sorted({t for e in events for t in json.loads(e["tactics"])})
        for event in events:
            event["tactics"] = json.loads(event["tactics"])
            event["techniques"] = json.loads(event["techniques"])
        records.append({
            "type": "incident",
            "incident_id": row["incident_id"],
            "incident_key": row["incident_key"],
            "rule": row["detection_id"],
            "rule_name": names.get(row["detection_id"], row["detection_id"]),
            "risk_object": row["risk_object"],
            "risk_object_type": row["risk_object_type"],
            "severity": row["severity"],
            "score": row["score"],
            "first_time": row["first_time"],
            "last_time": row["last_time"],
            "raised_at": row["raised_at"],
            "updated_at": row["updated_at"],
            "message": row["message"],
            "tactics": tactics,
            "risk_events": events,
            "fields": {k: v for k, v in json.loads(row["fields"]).items() if k != "event_keys"},
        })
    return records


def finding_records(state: StateStore, names: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Findings risk has seen and not suppressed."""
    return [{"type": "finding", **record} for record in query_findings(state, seen_by_risk=True, names=names)]


def delivered_outputs(state: StateStore) -> dict[str, list[str]]:
    """Per incident key, the outputs it went to ('name (queued)' while not yet acknowledged)."""
    out: dict[str, list[str]] = {}
    for row in state.query("SELECT output, item_key, status FROM deliveries WHERE kind = 'incidents' ORDER BY output"):
        out.setdefault(row["item_key"], []).append(row["output"] + ("" if row["status"] == "delivered" else " (queued)"))
    return out


def _item_key(kind: str, record: dict[str, Any]) -> str:
    return record["incident_key"] if kind == "incidents" else record["finding_key"]


def _record(state: StateStore, output: str, kind: str, key: str, ok: bool, attempts: int, error: str | None,
            now: datetime) -> None:
    with state.transaction() as db:
        db.execute(
            """INSERT INTO deliveries VALUES (?,?,?,?,?,?,?)
               ON CONFLICT(output, kind, item_key) DO UPDATE SET status=excluded.status,
               attempts=deliveries.attempts+excluded.attempts, last_error=excluded.last_error,
               updated_at=excluded.updated_at""",
            (output, kind, key, "delivered" if ok else "pending", attempts, error, now.isoformat()),
        )


def _send_file(spec: FileOutput, base: Path, kind: str, records: list[dict[str, Any]]) -> None:
    path = Path(spec.path)
    if not path.is_absolute():
        path = base / path
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.type == "jsonl":
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(to_jsonl(records))
        return
    import csv

    columns = INCIDENT_COLUMNS if kind == "incidents" else FINDING_COLUMNS
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if new:
            writer.writerow(["type", *columns])
        for record in records:
            writer.writerow([kind[:-1], *(csv_safe(record.get(c)) for c in columns)])


def deliver_pending(
    state: StateStore,
    settings: Settings,
    now: datetime,
    sleep: Callable[[float], None] = time.sleep,
    names: dict[str, str] | None = None,
) -> list[DeliveryReport]:
    """Offer every configured output what it has not delivered yet; record what went out."""
    reports = []
    base = state.path.parent
    cache: dict[str, list[dict[str, Any]]] = {}
    for spec in settings.outputs:
        for kind in spec.send:
            if kind not in cache:
                cache[kind] = incident_records(state, names) if kind == "incidents" else finding_records(state, names)
            done = {row[0] for row in state.query(
                "SELECT item_key FROM deliveries WHERE output = ? AND kind = ? AND status = 'delivered'",
                (spec.name, kind))}
            todo = [r for r in cache[kind] if _item_key(kind, r) not in done]
            report = DeliveryReport(spec.name, kind)
            reports.append(report)
            if not todo:
                continue
            if isinstance(spec, FileOutput):
                try:
                    _send_file(spec, base, kind, todo)
                    outcomes = [(True, 1, None)] * len(todo)
                except OSError as exc:
                    outcomes = [(False, 1, f"cannot write {spec.path}: {exc}")] + [None] * (len(todo) - 1)
            elif isinstance(spec, SyslogOutput):
                render = incident_cef if kind == "incidents" else finding_cef
                messages = [rfc5424(render(r), now, r.get("severity", "low"), spec.facility, spec.hostname,
                                    spec.app_name, kind[:-1]) for r in todo]
                try:
                    if spec.protocol == "udp":
                        send_udp(spec.host, spec.port, messages, spec.timeout)
                        sent = len(messages)
                    else:
                        sent = send_tcp(spec.host, spec.port, messages, spec.timeout)
                    error = None if sent == len(messages) else "connection closed"
                except OSError as exc:
                    sent, error = 0, f"{spec.protocol}://{spec.host}:{spec.port}: {exc}"
                outcomes = [(True, 1, None)] * sent + ([(False, 1, error)] if sent < len(todo) else [])
                outcomes += [None] * (len(todo) - len(outcomes))
            else:
                assert isinstance(spec, WebhookOutput)
                outcomes = []
                for record in todo:
                    result = post_with_retries(spec.url, record, spec.headers, spec.timeout, spec.retries,
                                               spec.backoff, sleep)
                    outcomes.append(result)
                    if not result[0]:
                        break
                outcomes += [None] * (len(todo) - len(outcomes))
            for record, outcome in zip(todo, outcomes):
                key = _item_key(kind, record)
                if outcome is None:  # not tried this run: stays queued
                    _record(state, spec.name, kind, key, False, 0, "not tried: an earlier item failed", now)
                    report.pending += 1
                    continue
                ok, attempts, error = outcome
                _record(state, spec.name, kind, key, ok, attempts, error, now)
                if ok:
                    report.delivered += 1
                else:
                    report.pending += 1
                    report.errors.append(error or "failed")
    return reports
