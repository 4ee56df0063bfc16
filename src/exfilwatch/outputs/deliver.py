"""Deliver incidents (and, where an output asks, findings) to the outputs configured in config.yaml.

Each item is delivered once per output: `deliveries` in the state store records, per output and
item, `delivered` or `pending` with the attempts and the last error. Every run offers each output
what it has not yet delivered, oldest first, so an item that could not be delivered (the webhook
was down, the syslog TCP listener refused) stays queued and goes out on a later run.

Each item (an HEC batch, a file write) is recorded as soon as its output acknowledged it, before
the next is sent: a process killed mid-run sends again only the item that was in flight
(delivery is at least once, and at most that one item twice).

An output that fails an item stops for this run (the rest stay queued), so a dead endpoint costs
one item's retries per run, not every item's.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from exfilwatch.config import Settings
from exfilwatch.detections.schema import Detection
from exfilwatch.outputs.cef import finding_cef, incident_cef, rfc5424, send_stream, send_udp
from exfilwatch.outputs.formats import csv_safe, to_jsonl
from exfilwatch.outputs.hec import hec_outcomes
from exfilwatch.outputs.ocsf import finding_ocsf, incident_ocsf
from exfilwatch.outputs.records import Rules, finding_records, incident_records, item_key, rules_of
from exfilwatch.outputs.tls import tls_context
from exfilwatch.outputs.webhook import Outcome, webhook_outcomes
from exfilwatch.riskconfig import FileOutput, HecOutput, SyslogOutput, WebhookOutput
from exfilwatch.state import StateStore

# New columns go at the end: spreadsheets and scripts that read a column by position keep working.
INCIDENT_COLUMNS = ["incident_id", "rule", "risk_object", "risk_object_type", "severity", "score", "first_time",
                    "last_time", "raised_at", "message", "incident_key", "category", "mitre_attack_id", "tactics"]
FINDING_COLUMNS = ["time", "detection_id", "entity", "risk_score", "message", "finding_key", "category", "severity",
                   "mitre_attack_id", "tactics"]


@dataclass
class DeliveryReport:
    output: str
    kind: str
    delivered: int = 0
    pending: int = 0
    errors: list[str] = field(default_factory=list)


def _record(state: StateStore, output: str, kind: str, keys: list[str], ok: bool, attempts: int,
            error: str | None, now: datetime) -> None:
    with state.transaction() as db:
        db.executemany(
            """INSERT INTO deliveries VALUES (?,?,?,?,?,?,?)
               ON CONFLICT(output, kind, item_key) DO UPDATE SET status=excluded.status,
               attempts=deliveries.attempts+excluded.attempts, last_error=excluded.last_error,
               updated_at=excluded.updated_at""",
            [(output, kind, key, "delivered" if ok else "pending", attempts, error, now.isoformat()) for key in keys],
        )


def _file_lines(spec: FileOutput, path: Path, kind: str, records: list[dict[str, Any]], now: datetime) -> str:
    if spec.format == "jsonl":
        return to_jsonl(records)
    if spec.format == "ocsf":
        render = incident_ocsf if kind == "incidents" else finding_ocsf
        return to_jsonl(render(record, now) for record in records)
    columns = INCIDENT_COLUMNS if kind == "incidents" else FINDING_COLUMNS
    rows = [[kind[:-1], *(csv_safe(record.get(c)) for c in columns)] for record in records]
    if not path.exists() or path.stat().st_size == 0:
        rows.insert(0, ["type", *columns])
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _file_outcomes(spec: FileOutput, base: Path, kind: str, records: list[dict[str, Any]],
                   now: datetime) -> Iterator[Outcome]:
    path = Path(spec.path)
    if not path.is_absolute():
        path = base / path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", newline="", encoding="utf-8") as handle:
            handle.write(_file_lines(spec, path, kind, records, now))
    except OSError as exc:
        yield records[:1], False, 1, f"cannot write {spec.path}: {exc}"
        return
    yield records, True, 1, None


def _syslog_outcomes(spec: SyslogOutput, kind: str, records: list[dict[str, Any]],
                     now: datetime) -> Iterator[Outcome]:
    render = incident_cef if kind == "incidents" else finding_cef
    messages = [rfc5424(render(r), now, r.get("severity", "low"), spec.facility, spec.hostname,
                        spec.app_name, kind[:-1]) for r in records]
    where = f"{spec.protocol}://{spec.host}:{spec.port}"
    sent = 0
    try:
        if spec.protocol == "udp":
            send_udp(spec.host, spec.port, messages, spec.timeout)
            yield records, True, 1, None
            return
        tls = tls_context(spec.verify, spec.ca_file) if spec.protocol == "tls" else None
        for index in send_stream(spec.host, spec.port, messages, spec.timeout, tls):
            sent = index + 1
            yield [records[index]], True, 1, None
    except OSError as exc:  # ssl.SSLError too: a certificate the CA file does not vouch for
        yield records[sent:sent + 1], False, 1, f"{where}: {exc}" if sent == 0 else f"{where}: connection lost: {exc}"


def deliver_pending(
    state: StateStore,
    settings: Settings,
    now: datetime,
    sleep: Callable[[float], None] = time.sleep,
    names: Rules | None = None,
    catalog: Iterable[Detection] = (),
) -> list[DeliveryReport]:
    """Offer every configured output what it has not delivered yet; record each item as it goes out.

    `catalog` (or, in its place, `names`: detection id -> name) says each item's detection name,
    ATT&CK techniques and category.
    """
    rules: Rules = {**(names or {}), **rules_of(catalog)}
    reports = []
    base = state.path.parent
    cache: dict[str, list[dict[str, Any]]] = {}
    for spec in settings.outputs:
        for kind in spec.send:
            if kind not in cache:
                cache[kind] = incident_records(state, rules) if kind == "incidents" else finding_records(state, rules)
            done = {row[0] for row in state.query(
                "SELECT item_key FROM deliveries WHERE output = ? AND kind = ? AND status = 'delivered'",
                (spec.name, kind))}
            todo = [r for r in cache[kind] if item_key(kind, r) not in done]
            report = DeliveryReport(spec.name, kind)
            reports.append(report)
            if not todo:
                continue
            if isinstance(spec, FileOutput):
                outcomes = _file_outcomes(spec, base, kind, todo, now)
            elif isinstance(spec, SyslogOutput):
                outcomes = _syslog_outcomes(spec, kind, todo, now)
            elif isinstance(spec, HecOutput):
                outcomes = hec_outcomes(spec, todo, sleep)
            else:
                assert isinstance(spec, WebhookOutput)
                outcomes = webhook_outcomes(spec, todo, sleep)
            tried = 0
            try:
                for batch, ok, attempts, error in outcomes:
                    _record(state, spec.name, kind, [item_key(kind, r) for r in batch], ok, attempts, error, now)
                    tried += len(batch)
                    if ok:
                        report.delivered += len(batch)
                    else:
                        report.pending += len(batch)
                        report.errors.append(error or "failed")
            except OSError as exc:  # the client could not even start (a CA file that cannot be read)
                report.errors.append(f"{spec.name}: {exc}")
            untried = [item_key(kind, r) for r in todo[tried:]]
            if untried:  # not tried this run: stays queued
                _record(state, spec.name, kind, untried, False, 0, "not tried: an earlier item failed", now)
                report.pending += len(untried)
    return reports

