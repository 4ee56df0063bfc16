"""Findings and incidents as OCSF 1.3.0 events: Detection Finding (class 2004) and Incident
Finding (class 2005), one JSON object per line.

What each carries (the Open Cybersecurity Schema Framework, schema.ocsf.io, version 1.3.0):

- the base event's required attributes: `class_uid`, `category_uid` 2 (Findings), `activity_id`
  (1 Create; 2 Update for an incident that grew after it was raised), `type_uid` =
  class_uid x 100 + activity_id, `time` (epoch milliseconds), `severity_id` (1 Informational,
  2 Low, 3 Medium, 4 High, 5 Critical, from the record's severity), `metadata.product` and
  `metadata.version` (the OCSF version);
- a finding: `finding_info` with `uid` (the finding key), `title`, `analytic` (the detection:
  uid, name, type Rule, category) and `attacks` (ATT&CK technique or sub-technique with its
  tactic), `status_id` 1 New, `risk_score`, and the risk objects as `resources`;
- an incident: `status_id` 1 New, `finding_info_list` (one per risk event behind it), `attacks`,
  `start_time`/`end_time` (its first and last risk event) and `assignee_group` (exfilwatch has
  no assignment yet; the class asks for an assignee or a group, and the group says "unassigned").

exfilwatch's own fields that OCSF has no attribute for travel in `unmapped`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from exfilwatch import __version__
from exfilwatch import attack
from exfilwatch.outputs.records import epoch_millis

OCSF_VERSION = "1.3.0"
SEVERITY_ID = {"informational": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
DETECTION_FINDING, INCIDENT_FINDING = 2004, 2005
CLASS_NAME = {DETECTION_FINDING: "Detection Finding", INCIDENT_FINDING: "Incident Finding"}
ACTIVITY_NAME = {1: "Create", 2: "Update"}


def attacks(technique_ids: list[str]) -> list[dict[str, Any]]:
    """One ATT&CK object per technique and tactic; a sub-technique also names its parent."""
    out = []
    for tid in technique_ids:
        entry = attack.technique(tid) or {"name": tid, "tactics": []}
        parent = attack.parent_of(tid)
        base: dict[str, Any] = {"version": attack.version()}
        if parent:
            base["technique"] = {"uid": parent, "name": (attack.technique(parent) or {"name": parent})["name"]}
            base["sub_technique"] = {"uid": tid, "name": entry["name"]}
        else:
            base["technique"] = {"uid": tid, "name": entry["name"]}
        for tactic in entry["tactics"] or [None]:
            item = dict(base)
            if tactic:
                item["tactic"] = {"uid": attack.tactic_id(tactic), "name": attack.tactic_name(tactic)}
            out.append(item)
    return out


def _event(class_uid: int, activity_id: int, time: int, severity: str, uid: str) -> dict[str, Any]:
    severity_id = SEVERITY_ID.get(severity, 0)
    return {
        "class_uid": class_uid, "class_name": CLASS_NAME[class_uid],
        "category_uid": 2, "category_name": "Findings",
        "activity_id": activity_id, "activity_name": ACTIVITY_NAME[activity_id],
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{CLASS_NAME[class_uid]}: {ACTIVITY_NAME[activity_id]}",
        "time": time, "severity_id": severity_id, "severity": severity.capitalize() if severity_id else "Unknown",
        "status_id": 1, "status": "New",
        "metadata": {"version": OCSF_VERSION, "uid": uid,
                     "product": {"name": "exfilwatch", "vendor_name": "exfilwatch", "version": __version__}},
    }


def _analytic(rule_id: str, name: str, category: str | None) -> dict[str, Any]:
    analytic = {"uid": rule_id, "name": name, "type_id": 1, "type": "Rule"}
    return analytic | ({"category": category} if category else {})


def finding_ocsf(record: dict[str, Any], now: datetime) -> dict[str, Any]:
    time = epoch_millis(record.get("time")) or int(now.timestamp() * 1000)
    event = _event(DETECTION_FINDING, 1, time, record.get("severity") or "low", record["finding_key"])
    event["message"] = record.get("message") or ""
    event["finding_info"] = {
        "uid": record["finding_key"], "title": record.get("detection_name") or record["detection_id"],
        "desc": record.get("message") or "",
        "analytic": _analytic(record["detection_id"], record.get("detection_name") or record["detection_id"],
                              record.get("category")),
        "attacks": attacks(record.get("mitre_attack_id") or []),
        "types": [record["category"]] if record.get("category") else [],
    }
    if record.get("risk_score") is not None:
        event["risk_score"] = int(round(float(record["risk_score"])))
    event["resources"] = [{"uid": str(o["value"]), "type": o.get("type", "other"), "name": str(o["value"])}
                          for o in record.get("risk_objects") or [] if o.get("value") is not None]
    event["unmapped"] = {"entity": record.get("entity"), "bucket": record.get("bucket"), "value": record.get("value"),
                         "tactics": record.get("tactics") or [], "fields": record.get("fields") or {}}
    return event


def incident_ocsf(record: dict[str, Any], now: datetime) -> dict[str, Any]:
    raised = epoch_millis(record.get("raised_at")) or int(now.timestamp() * 1000)
    updated = epoch_millis(record.get("updated_at")) or raised
    event = _event(INCIDENT_FINDING, 2 if updated > raised else 1, updated, record["severity"], record["incident_key"])
    event["message"] = record["message"]
    event["desc"] = record["message"]
    event["start_time"] = epoch_millis(record["first_time"])
    event["end_time"] = epoch_millis(record["last_time"])
    event["attacks"] = attacks(record.get("mitre_attack_id") or [])
    event["assignee_group"] = {"name": "unassigned"}
    event["finding_info_list"] = [{
        "uid": e.get("event_key") or f"{e['detection_id']}|{e['risk_object']}|{e['time']}",
        "title": e["detection_id"], "desc": e.get("message") or "",
        "analytic": _analytic(e["detection_id"], e["detection_id"], None),
        "attacks": attacks(e.get("techniques") or []),
        "first_seen_time": epoch_millis(e["time"]), "last_seen_time": epoch_millis(e["time"]),
    } for e in record.get("risk_events") or []]
    if not event["finding_info_list"]:  # the class requires the list: the incident stands for itself
        title = record.get("rule_name") or record["rule"]
        event["finding_info_list"] = [{"uid": record["incident_key"], "title": title,
                                       "analytic": _analytic(record["rule"], title, record.get("category"))}]
    event["unmapped"] = {"incident_id": record["incident_id"], "rule": record["rule"],
                         "rules": record.get("rules") or [record["rule"]], "score": record.get("score"),
                         "risk_object": record["risk_object"], "risk_object_type": record["risk_object_type"],
                         "category": record.get("category"), "tactics": record.get("tactics") or [],
                         "fields": record.get("fields") or {}}
    return event
