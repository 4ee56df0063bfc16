"""The findings store: the only SQL on the `findings` table.

Storing is idempotent per (detection, entity, bucket): the same finding again adds nothing, and
a later run that sees the same entity and bucket with a larger value updates it in place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exfilwatch.config import ConfigError
from exfilwatch.findings.record import Finding, finding_dict
from exfilwatch.state import StateStore, dumps


@dataclass
class StoreResult:
    added: int = 0
    updated: int = 0
    unchanged: int = 0


def store_findings(state: StateStore, findings: list[Finding], run_id: int) -> StoreResult:
    result = StoreResult()
    with state.atomic() as db:  # a catch-up stores a day of fires in one transaction
        for finding in findings:
            existing = db.execute("SELECT value FROM findings WHERE finding_key = ?", (finding.key,)).fetchone()
            if existing is not None:
                old = existing["value"]
                larger = finding.value is not None and (old is None or finding.value > old)
                if not larger:
                    result.unchanged += 1
                    continue
                db.execute(
                    """UPDATE findings SET value=?, time=?, risk_score=?, message=?, risk_objects=?, fields=?,
                       last_run_id=?, updates=updates+1 WHERE finding_key=?""",
                    (finding.value, finding.time, finding.risk_score, finding.message, dumps(finding.risk_objects),
                     dumps(finding.fields), run_id, finding.key),
                )
                result.updated += 1
            else:
                db.execute(
                    """INSERT INTO findings (finding_key, detection_id, entity, bucket, time, value, risk_score,
                       message, risk_objects, fields, first_run_id, last_run_id, updates)
                       VALUES (?,?,?,?,?,?,?,?,?,?,?,?,0)""",
                    (finding.key, finding.detection_id, finding.entity, finding.bucket, finding.time, finding.value,
                     finding.risk_score, finding.message, dumps(finding.risk_objects), dumps(finding.fields),
                     run_id, run_id),
                )
                result.added += 1
    return result


def load_findings_file(state: StateStore, path: Path) -> dict[str, list[str]]:
    """Store the findings of a JSON lines file (the shape `exfilwatch findings --format jsonl` writes).

    Each record needs `detection_id`, `entity`, `time` and `risk_objects`; `bucket` defaults to
    `time`. Returns the ATT&CK techniques each record's detection names (`mitre_attack_id`).
    """
    techniques: dict[str, list[str]] = {}
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            bucket = str(record.get("bucket") or record["time"])
            key = f"{record['detection_id']}|{record['entity']}|{bucket}"
            objects = record["risk_objects"]
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"{path}:{number}: not a finding record ({exc})") from None
        techniques.setdefault(record["detection_id"], list(record.get("mitre_attack_id") or []))
        rows.append((key, record["detection_id"], str(record["entity"]), bucket, str(record["time"]),
                     record.get("value"), float(record.get("risk_score") or sum(float(o.get("score") or 0) for o in objects)),
                     record.get("message", ""), dumps(objects), dumps(record.get("fields") or {})))
    with state.transaction() as db:
        db.executemany(
            """INSERT OR REPLACE INTO findings (finding_key, detection_id, entity, bucket, time, value, risk_score,
               message, risk_objects, fields, updates) VALUES (?,?,?,?,?,?,?,?,?,?,0)""", rows)
    return techniques


def query_findings(state: StateStore, detection_ids: list[str] | None = None, suppressed: bool | None = False,
                   entities: list[str] | None = None, seen_by_risk: bool = False,
                   names: dict[str, str] | None = None,
                   techniques: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """Stored findings as records, oldest first, each with its `suppression_id`.

    `suppressed`: False for the ones not suppressed (what an analyst sees), True for the hidden
    ones, None for all. `seen_by_risk`: only findings whose suppression the risk step decided.
    """
    join = "JOIN" if seen_by_risk else "LEFT JOIN"
    where, params = [], []
    if suppressed is not None:
        where.append("s.suppression_id IS NOT NULL" if suppressed else "s.suppression_id IS NULL")
    for column, values in (("f.detection_id", detection_ids), ("f.entity", entities)):
        if values:
            where.append(f"{column} IN ({','.join('?' * len(values))})")
            params += list(values)
    sql = (f"SELECT f.*, s.suppression_id FROM findings f {join} finding_suppressions s USING (finding_key)"
           + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY f.time, f.detection_id, f.entity")
    return [finding_dict(row, names, techniques) | {"suppression_id": row["suppression_id"]}
            for row in state.query(sql, tuple(params))]


def findings_for_risk(state: StateStore) -> list[dict[str, Any]]:
    """Every finding risk has decided, with its decision, when it was decided and when it was
    first detected (its first run's `now`; None for findings loaded by hand)."""
    rows = state.query(
        "SELECT f.*, s.suppression_id, s.decided_at, r.now AS detected FROM findings f "
        "JOIN finding_suppressions s USING (finding_key) LEFT JOIN detection_runs r ON r.run_id = f.first_run_id")
    return [finding_dict(row) | {"suppression_id": row["suppression_id"], "decided_at": row["decided_at"],
                                 "detected": row["detected"]} for row in rows]


def forget_detection(state: StateStore, detection_id: str) -> None:
    """Drop a detection's findings (a backtest's copy of the store starts fresh)."""
    with state.transaction() as db:
        db.execute("DELETE FROM findings WHERE detection_id = ?", (detection_id,))


def suppressed_count(state: StateStore) -> int:
    return state.query("SELECT count(*) AS n FROM finding_suppressions WHERE suppression_id IS NOT NULL")[0]["n"]


def findings_by_keys(state: StateStore, finding_keys: list[str], names: dict[str, str] | None = None,
                     techniques: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """The stored findings with these keys (those behind an incident's risk events), oldest first."""
    if not finding_keys:
        return []
    rows = state.query(
        "SELECT f.*, s.suppression_id FROM findings f LEFT JOIN finding_suppressions s USING (finding_key) "
        f"WHERE f.finding_key IN ({','.join('?' * len(finding_keys))}) ORDER BY f.time, f.detection_id",
        tuple(finding_keys))
    return [finding_dict(row, names, techniques) | {"suppression_id": row["suppression_id"]} for row in rows]
