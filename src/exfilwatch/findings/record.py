"""The finding record: one row of a detection's output, as stored, shown and delivered.

A finding is identified by (detection, entity, bucket). `findings_from_rows` turns a detection's
output rows into records; `finding_dict` is the one conversion of a stored row back to a record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from exfilwatch.detections.schema import Detection
from exfilwatch.events.engine import plain


@dataclass
class Finding:
    detection_id: str
    detection_name: str
    entity: str
    bucket: str
    time: str
    value: float | None
    risk_score: float
    message: str
    risk_objects: list[dict[str, Any]]
    mitre_attack_id: list[str]
    fields: dict[str, Any]
    suppressed: bool = False

    @property
    def key(self) -> str:
        return f"{self.detection_id}|{self.entity}|{self.bucket}"

    def as_json(self) -> dict[str, Any]:
        return {
            "detection_id": self.detection_id,
            "detection_name": self.detection_name,
            "time": self.time,
            "entity": self.entity,
            "risk_objects": self.risk_objects,
            "risk_score": self.risk_score,
            "message": self.message,
            "mitre_attack_id": self.mitre_attack_id,
            "fields": self.fields,
        }


def display(value: Any, tz: str) -> Any:
    """A value as an analyst reads it in a message: times on the local clock, a whole number
    without decimals, any other number with two at most (the fields keep the exact value)."""
    if isinstance(value, datetime):
        local = value.astimezone(ZoneInfo(tz))
        return local.strftime("%Y-%m-%d" if local.time() == datetime.min.time() else "%Y-%m-%d %H:%M %Z")
    value = plain(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else round(value, 2)
    return value


def findings_from_rows(detection: Detection, rows: list[dict[str, Any]], tz: str) -> list[Finding]:
    findings = []
    for row in rows:
        fields = {name: plain(value) for name, value in row.items()}
        objects = [
            {"field": obj.field, "value": fields.get(obj.field), "type": obj.type, "score": detection.risk.score_of(obj, fields)}
            for obj in detection.risk.objects
        ]
        value = fields.get(detection.finding.value) if detection.finding.value else None
        when = fields.get(detection.finding.time)
        bucket = fields.get(detection.finding.bucket) if detection.finding.bucket else when
        findings.append(Finding(
            detection_id=detection.id,
            detection_name=detection.name,
            entity=str(fields.get(detection.finding.entity)),
            bucket=str(bucket),
            time=str(when),
            value=float(value) if value is not None else None,
            risk_score=sum(obj["score"] for obj in objects),
            message=detection.risk_message({name: display(value, tz) for name, value in row.items()}),
            risk_objects=objects,
            mitre_attack_id=list(detection.tags.mitre_attack_id),
            fields=fields,
        ))
    return findings


def finding_dict(row: Any, names: dict[str, str] | None = None,
                 techniques: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """A stored `findings` row as a record (the shape `findings --format jsonl` writes and reads back)."""
    detection_id = row["detection_id"]
    record = {"finding_key": row["finding_key"], "detection_id": detection_id,
              "detection_name": (names or {}).get(detection_id, detection_id), "entity": row["entity"],
              "bucket": row["bucket"], "time": row["time"], "value": row["value"], "risk_score": row["risk_score"],
              "message": row["message"], "risk_objects": json.loads(row["risk_objects"]),
              "mitre_attack_id": list((techniques or {}).get(detection_id, [])), "fields": json.loads(row["fields"])}
    return record
