"""Suppressions: decided once per finding, at a run's `now`, and kept.

A finding that matches an active suppression (config.yaml `suppressions:` or `exfilwatch suppress
add`) is marked with it in `finding_suppressions` and kept; it adds no risk. An expired
suppression no longer applies to findings decided after its expiry; a decision already made is
not revisited.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from exfilwatch import audit
from exfilwatch.config import ConfigError, Settings
from exfilwatch.errors import UsageError
from exfilwatch.findings.record import finding_dict
from exfilwatch.findings.store import query_findings
from exfilwatch.riskconfig import Range, SuppressionSpec
from exfilwatch.state import StateStore, dumps
from exfilwatch.timeexpr import TimeModifierError, parse_time

OBJECT_TYPE = "suppression"


def value_matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, list):
        return any(value_matches(item, actual) for item in expected)
    if isinstance(actual, (list, tuple)):
        return any(value_matches(expected, item) for item in actual)
    if actual is None:
        return expected is None
    if isinstance(expected, bool):
        return str(actual).lower() == str(expected).lower()
    if isinstance(expected, (int, float)):
        try:
            return float(actual) == float(expected)
        except (TypeError, ValueError):
            return False
    return fnmatch.fnmatchcase(str(actual).lower(), str(expected).lower())


@dataclass
class Suppression:
    suppression_id: str
    detection_id: str  # '*' = every detection
    entity: str | None
    conditions: dict[str, Any]
    owner: str
    reason: str
    expires: datetime | None
    source: str  # config | cli
    created: str | None = None

    def active(self, now: datetime) -> bool:
        return self.expires is None or now < self.expires

    def matches(self, finding: dict[str, Any]) -> bool:
        if self.detection_id != "*" and self.detection_id != finding["detection_id"]:
            return False
        if self.entity is not None and not value_matches(self.entity, finding["entity"]):
            return False
        return all(_condition_holds(cond, _finding_value(finding, name)) for name, cond in self.conditions.items())

    def describe(self) -> str:
        parts = [] if self.entity is None else [f"entity={self.entity}"]
        for name, cond in self.conditions.items():
            if isinstance(cond, dict):
                ops = {"min": ">=", "max": "<=", "gt": ">", "lt": "<"}
                parts += [f"{name}{ops[k]}{v:g}" for k, v in cond.items() if v is not None]
            else:
                parts.append(f"{name}={cond}")
        return " and ".join(parts) or "(every finding)"


def _finding_value(finding: dict[str, Any], name: str) -> Any:
    if name in ("entity", "detection_id", "value", "time", "bucket"):
        return finding.get(name)
    return finding.get("fields", {}).get(name)


def _condition_holds(condition: Any, actual: Any) -> bool:
    if isinstance(condition, Range):
        condition = condition.model_dump()
    if isinstance(condition, dict):
        values = actual if isinstance(actual, (list, tuple)) else [actual]
        for item in values:
            try:
                number = float(item)
            except (TypeError, ValueError):
                continue
            if ((condition.get("min") is None or number >= condition["min"])
                    and (condition.get("max") is None or number <= condition["max"])
                    and (condition.get("gt") is None or number > condition["gt"])
                    and (condition.get("lt") is None or number < condition["lt"])):
                return True
        return False  # null or not a number: comparisons are false
    return value_matches(condition, actual)


_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_expiry(text: str | None, now: datetime, tz: str) -> datetime | None:
    """'never' -> None; a date -> the end of that local day; else a time or a modifier (+30d)."""
    if text is None or text.strip().lower() == "never":
        return None
    text = text.strip()
    if _DATE_ONLY.match(text):
        start = parse_time(text + "T00:00:00", now, tz)
        return parse_time("+1d", start, tz)
    return parse_time(text, now, tz)


def config_suppressions(settings: Settings, now: datetime) -> list[Suppression]:
    out = []
    for index, spec in enumerate(settings.suppressions):
        out.append(_from_spec(spec, f"config:{spec.id or index + 1}", "config", settings, now))
    return out


def _from_spec(spec: SuppressionSpec, sid: str, source: str, settings: Settings, now: datetime) -> Suppression:
    if source == "config" and spec.expires.strip()[:1] in ("+", "-", "@"):
        raise ConfigError(f"suppression {sid}: expires: {spec.expires!r} is relative; in a config file give a date, "
                          "a time or 'never'")
    try:
        expires = parse_expiry(spec.expires, now, settings.timezone)
    except TimeModifierError as exc:
        raise ConfigError(f"suppression {sid}: expires: {exc}") from None
    conditions = {k: (v.model_dump(exclude_none=True) if isinstance(v, Range) else v) for k, v in spec.where.items()}
    return Suppression(sid, "*" if spec.detection in ("all", "*") else spec.detection, spec.entity, conditions,
                       spec.owner, spec.reason, expires, source)


def stored_suppressions(state: StateStore) -> list[Suppression]:
    return [
        Suppression(row["suppression_id"], row["detection_id"], row["entity"], json.loads(row["conditions"]),
                    row["owner"], row["reason"], datetime.fromisoformat(row["expires"]) if row["expires"] else None,
                    "cli", row["created"])
        for row in state.query("SELECT * FROM suppressions ORDER BY created, suppression_id")
    ]


def all_suppressions(state: StateStore, settings: Settings, now: datetime) -> list[Suppression]:
    return config_suppressions(settings, now) + stored_suppressions(state)


def add_suppression(state: StateStore, settings: Settings, spec: SuppressionSpec, now: datetime, *,
                    actor: str = "cli") -> Suppression:
    """Store a suppression made on the command line or in the console; its id is `s<N>`."""
    if spec.entity is None and not spec.where and spec.detection in ("all", "*"):
        raise UsageError("a suppression of every finding of every detection: name a detection, an entity or a "
                         "condition")
    with state.transaction() as db:
        numbers = [int(r[0][1:]) for r in db.execute("SELECT suppression_id FROM suppressions").fetchall()
                   if re.fullmatch(r"s\d+", r[0])]
        sid = f"s{max(numbers, default=0) + 1}"
        suppression = _from_spec(spec, sid, "cli", settings, now)
        db.execute(
            "INSERT INTO suppressions VALUES (?,?,?,?,?,?,?,?)",
            (sid, suppression.detection_id, suppression.entity, dumps(suppression.conditions), suppression.owner,
             suppression.reason, now.isoformat(), suppression.expires.isoformat() if suppression.expires else None),
        )
        audit.record(state, actor=actor, now=now, action="add", object_type=OBJECT_TYPE, object_id=sid,
                     after=_audited(suppression))
    suppression.created = now.isoformat()
    return suppression


def _audited(suppression: Suppression) -> dict[str, Any]:
    return {"detection": suppression.detection_id, "entity": suppression.entity, "where": suppression.conditions,
            "owner": suppression.owner, "reason": suppression.reason,
            "expires": suppression.expires.isoformat() if suppression.expires else None}


def _stored(state: StateStore, suppression_id: str) -> Suppression:
    found = [s for s in stored_suppressions(state) if s.suppression_id == suppression_id]
    if not found:
        kind = "comes from config.yaml: change it there" if suppression_id.startswith("config:") else "does not exist"
        raise UsageError(f"suppression {suppression_id!r} {kind}")
    return found[0]


def update_suppression(state: StateStore, settings: Settings, suppression_id: str, spec: SuppressionSpec,
                       now: datetime, *, actor: str) -> Suppression:
    """Change a stored suppression (its id and creation time stay); it applies to findings decided from now on."""
    before = _stored(state, suppression_id)
    changed = _from_spec(spec, suppression_id, "cli", settings, now)
    with state.transaction() as db:
        db.execute("UPDATE suppressions SET detection_id = ?, entity = ?, conditions = ?, owner = ?, reason = ?, "
                   "expires = ? WHERE suppression_id = ?",
                   (changed.detection_id, changed.entity, dumps(changed.conditions), changed.owner, changed.reason,
                    changed.expires.isoformat() if changed.expires else None, suppression_id))
        audit.record(state, actor=actor, now=now, action="edit", object_type=OBJECT_TYPE, object_id=suppression_id,
                     before=_audited(before), after=_audited(changed))
    changed.created = before.created
    return changed


def expire_suppression(state: StateStore, suppression_id: str, now: datetime, *, actor: str) -> None:
    """End a stored suppression at `now`: findings decided from then on are no longer hidden by it."""
    before = _stored(state, suppression_id)
    with state.transaction() as db:
        db.execute("UPDATE suppressions SET expires = ? WHERE suppression_id = ?", (now.isoformat(), suppression_id))
        audit.record(state, actor=actor, now=now, action="expire", object_type=OBJECT_TYPE, object_id=suppression_id,
                     before=_audited(before), after={**_audited(before), "expires": now.isoformat()})


def remove_suppression(state: StateStore, suppression_id: str, *, actor: str = "cli",
                       now: datetime | None = None) -> bool:
    """Remove a stored suppression. Findings it already suppressed stay marked with its id."""
    with state.transaction() as db:
        removed = db.execute("DELETE FROM suppressions WHERE suppression_id = ?", (suppression_id,)).rowcount > 0
        if removed and now is not None:
            audit.record(state, actor=actor, now=now, action="remove", object_type=OBJECT_TYPE,
                         object_id=suppression_id)
        return removed


def hidden_findings(state: StateStore) -> dict[str, list[dict[str, Any]]]:
    """suppression id -> the findings it hid, oldest first."""
    out: dict[str, list[dict[str, Any]]] = {}
    for finding in query_findings(state, suppressed=True):
        out.setdefault(finding["suppression_id"], []).append(finding)
    return out


def suppression_hits(state: StateStore) -> dict[str, int]:
    return {row[0]: row[1] for row in state.query(
        "SELECT suppression_id, count(*) FROM finding_suppressions WHERE suppression_id IS NOT NULL GROUP BY 1")}


def decide_suppressions(state: StateStore, settings: Settings, now: datetime) -> tuple[int, int]:
    """Mark each finding risk has not seen yet: suppressed (by the first matching active suppression) or not."""
    active = [s for s in all_suppressions(state, settings, now) if s.active(now)]
    rows = state.query(
        "SELECT f.* FROM findings f LEFT JOIN finding_suppressions s USING (finding_key) WHERE s.finding_key IS NULL"
    )
    decisions = []
    suppressed = 0
    for row in rows:
        finding = finding_dict(row)
        hit = next((s for s in active if s.matches(finding)), None)
        suppressed += hit is not None
        decisions.append((row["finding_key"], hit.suppression_id if hit else None, now.isoformat()))
    if decisions:
        with state.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO finding_suppressions VALUES (?,?,?)", decisions)
    return len(decisions), suppressed


def _finding_dict(row: Any) -> dict[str, Any]:
    return {"finding_key": row["finding_key"], "detection_id": row["detection_id"], "entity": row["entity"],
            "bucket": row["bucket"], "time": row["time"], "value": row["value"], "risk_score": row["risk_score"],
            "message": row["message"], "risk_objects": json.loads(row["risk_objects"]),
            "fields": json.loads(row["fields"])}


# --- conditions written on a command line or a form ----------------------------------------------


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
            raise UsageError(f"--where {item!r}: expected FIELD=VALUE, FIELD<N, FIELD<=N, FIELD>N or FIELD>=N")
        name, op, value = match.groups()
        if op == "=":
            parts = [_scalar(p.strip()) for p in value.split(",")]
            out[name] = parts[0] if len(parts) == 1 else parts
            continue
        try:
            number = float(value)
        except ValueError:
            raise UsageError(f"--where {item!r}: {value!r} is not a number") from None
        bound = out.get(name) if isinstance(out.get(name), dict) else {}
        bound[{"<": "lt", "<=": "max", ">": "gt", ">=": "min"}[op]] = number
        out[name] = bound
    return out
