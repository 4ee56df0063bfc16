"""Findings and incidents as every output delivers them, with the ATT&CK and severity they carry.

One record shape feeds every output (JSON lines, CSV, CEF, OCSF, HEC, webhook), so each of them
carries the same `mitre_attack_id` (techniques), `tactics`, `category` and `severity`:

- a finding's techniques are its detection's `tags.mitre_attack_id`; an incident's are those of
  the risk events behind it; tactics are the techniques' ATT&CK tactics;
- `category` is the detection's `tags.security_domain` (Splunk ES's notable category: identity,
  network, threat, ...), else its type (anomaly, ttp, hunting, correlation);
- an incident's severity is the one its rule gave it from its score (the rule's thresholds say
  what a total means); a finding's is banded from its risk score, 0-100 as in Splunk ES
  (`SEVERITY_BANDS`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from exfilwatch.attack import tactics_of
from exfilwatch.detections.schema import Detection
from exfilwatch.findings.store import query_findings
from exfilwatch.state import StateStore
from exfilwatch.timeexpr import as_time

# A finding's risk score at or above the bound is at least that severity.
SEVERITY_BANDS = ((80, "critical"), (60, "high"), (40, "medium"), (20, "low"), (0, "informational"))


@dataclass(frozen=True)
class Rule:
    """What the outputs say about the detection or incident rule behind an item."""

    name: str
    techniques: tuple[str, ...] = ()
    category: str | None = None


Rules = Mapping[str, "Rule | str"]  # a bare string is a rule known only by its name


def rules_of(catalog: Iterable[Detection]) -> dict[str, Rule]:
    return {d.id: Rule(d.name, tuple(d.tags.mitre_attack_id), d.tags.security_domain or d.type) for d in catalog}


def _rule(rules: Rules | None, rule_id: str) -> Rule:
    found = (rules or {}).get(rule_id)
    if found is None:
        return Rule(rule_id)
    return Rule(found) if isinstance(found, str) else found


def finding_severity(score: float | None) -> str:
    value = float(score or 0)
    return next(name for bound, name in SEVERITY_BANDS if value >= bound)


def epoch_millis(text: str | None) -> int | None:
    """Milliseconds since the epoch of an ISO 8601 time (UTC when it names no zone)."""
    parsed = as_time(text)
    return None if parsed is None else int(parsed.timestamp() * 1000)


def incident_records(state: StateStore, rules: Rules | None = None,
                     where: str = "", params: tuple = ()) -> list[dict[str, Any]]:
    """Incidents as delivered: the stored incident, its rule and the risk events behind it."""
    records = []
    for row in state.query(f"SELECT * FROM incidents {where} ORDER BY incident_id", params):
        keys = json.loads(row["event_keys"])
        events = []
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            events += [dict(e) for e in state.query(
                f"SELECT event_key, time, detection_id, risk_object, source_object, score, message, tactics, "
                f"techniques FROM risk_events WHERE event_key IN ({','.join('?' * len(chunk))}) ORDER BY time", tuple(chunk))]
        for event in events:
            event["tactics"] = json.loads(event["tactics"])
            event["techniques"] = json.loads(event["techniques"])
        techniques = sorted({t for e in events for t in e["techniques"]})
        rule = _rule(rules, row["detection_id"])
        records.append({
            "type": "incident",
            "incident_id": row["incident_id"],
            "incident_key": row["incident_key"],
            "rule": row["detection_id"],  # the rule that opened it
            "rules": json.loads(row["rules"]),  # every rule that contributed, the opener first
            "rule_name": rule.name,
            "category": rule.category,
            "risk_object": row["risk_object"],
            "risk_object_type": row["risk_object_type"],
            "severity": row["severity"],
            "score": row["score"],
            "first_time": row["first_time"],
            "last_time": row["last_time"],
            "raised_at": row["raised_at"],
            "updated_at": row["updated_at"],
            "updates": row["updates"],
            "status": row["status"],
            "assignee": row["assignee"],
            "message": row["message"],
            "mitre_attack_id": techniques,
            "tactics": sorted({t for e in events for t in e["tactics"]} | set(tactics_of(techniques))),
            "risk_events": events,
            "fields": {k: v for k, v in json.loads(row["fields"]).items() if k != "event_keys"},
        })
    return records


def finding_records(state: StateStore, rules: Rules | None = None) -> list[dict[str, Any]]:
    """Findings risk has seen and not suppressed."""
    records = []
    for record in query_findings(state, seen_by_risk=True):
        rule = _rule(rules, record["detection_id"])
        techniques = list(rule.techniques) or record["mitre_attack_id"]
        records.append({"type": "finding", **record, "detection_name": rule.name, "category": rule.category,
                        "severity": finding_severity(record["risk_score"]), "mitre_attack_id": techniques,
                        "tactics": tactics_of(techniques)})
    return records


def delivered_outputs(state: StateStore) -> dict[str, list[str]]:
    """Per incident key, the outputs it went to ('name (queued)' while a version of it is not yet acknowledged)."""
    queued: dict[str, dict[str, bool]] = {}
    for row in state.query("SELECT output, item_key, status FROM deliveries WHERE kind = 'incidents' ORDER BY output"):
        outputs = queued.setdefault(_UPDATE_SUFFIX.sub("", row["item_key"]), {})
        outputs[row["output"]] = outputs.get(row["output"], False) or row["status"] != "delivered"
    return {key: [name + (" (queued)" if waiting else "") for name, waiting in outputs.items()]
            for key, outputs in queued.items()}


# An incident is delivered when raised and again after each run that updated it (a continued
# episode: more risk events, a higher score or severity), so that a SIEM or SOAR sees it grow;
# each version has its own delivery key, `incident_key#updates`. An incident key ends with its
# first time (or `|n`), never with `#digits`, so the suffix cannot be mistaken for part of it.
_UPDATE_SUFFIX = re.compile(r"#\d+$")


def item_key(kind: str, record: dict[str, Any]) -> str:
    if kind != "incidents":
        return record["finding_key"]
    return f"{record['incident_key']}#{record['updates']}" if record.get("updates") else record["incident_key"]
