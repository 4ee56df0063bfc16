"""Risk-based alerting: findings become risk events, risk events raise incidents.

The flow, run after the detections of a run (`process`):

1. **Suppressions** are decided once per finding, at the run's `now`: a finding that matches an
   active suppression (config.yaml `suppressions:` or `exfilwatch suppress add`) is marked with
   it in `finding_suppressions` and kept; it adds no risk. An expired suppression no longer
   applies to findings decided after its expiry; a decision already made is not revisited.
2. **Risk events** are rebuilt from the unsuppressed findings: one per risk object a finding
   names (field, type, score), with the finding's message, the detection's ATT&CK techniques and
   their tactics, the finding's time and key. Identities resolve a system (an IP or host name) to
   its user where `identities:` lists the host or the asset inventory names an `owner`, so a
   user's VPN session and their laptop's traffic add up on one entity. Risk modifiers from
   `risk_modifiers:` then multiply and add (score x every matching multiply + every matching add).
   Rebuilding makes a change to identities, inventory or modifiers apply to old findings too.
3. **Correlation detections** (type `correlation`, `data_model: risk_events`) run over a
   `risk_events` view for each cron fire time since their watermark, like any scheduled
   detection. Each output row is an incident candidate; it names the risk events behind it
   (`event_keys`). A candidate that shares a risk event with an incident of the same rule and
   object continues that incident (its score and severity can only grow); otherwise it is a new
   incident. So one episode is one incident, however many hourly fires see it.
4. **Outputs** (outputs/deliver.py) deliver each incident once per configured output; what can't
   be delivered stays queued in the state store and is retried on the next run.

The score cap ("one detection adds at most 3x its largest single score to an entity in the
window") lives in the incident rule's SQL, because it depends on the rule's window.
"""

from __future__ import annotations

import bisect
import fnmatch
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from .attack import tactics_of
from .config import ConfigError, Settings
from .engine import _drop_temp, match_assets
from .enrich.identities import IdentityResolver, load_identities
from .riskconfig import Range, RiskModifier, SuppressionSpec
from .state import StateStore, dumps
from .timeexpr import TimeModifierError, parse_time

SEVERITY_RANK = {"informational": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}

# The `risk_events` view correlation detections read: name -> DuckDB type.
RISK_EVENT_COLUMNS: dict[str, str] = {
    "_time": "TIMESTAMPTZ",
    "event_key": "VARCHAR",
    "finding_key": "VARCHAR",
    "detection_id": "VARCHAR",
    "risk_object": "VARCHAR",
    "risk_object_type": "VARCHAR",
    "source_object": "VARCHAR",
    "source_object_type": "VARCHAR",
    "risk_object_field": "VARCHAR",
    "raw_score": "DOUBLE",
    "score": "DOUBLE",
    "message": "VARCHAR",
    "techniques": "VARCHAR[]",
    "tactics": "VARCHAR[]",
    "session_id": "VARCHAR",
    "_available": "TIMESTAMPTZ",  # when its finding was first detected
}


# --- identities and assets -----------------------------------------------------------------------


@dataclass
class Resolved:
    risk_object: str
    risk_object_type: str
    attributes: dict[str, Any]


class Resolver:
    """Maps a risk object (user name, mail address, VPN account, IP, host name) to its entity.

    Users are resolved as the enrichment does (enrich/identities.py: the identities list, then the
    default rules), so risk lands on the same user name the session rules use. A system resolves
    to a user when the identities list it as one of their hosts or the asset inventory (a host or
    a network) names an `owner`; otherwise it stays a system.
    """

    def __init__(self, settings: Settings):
        self.assets = list(settings.assets)
        self.users = IdentityResolver.from_settings(settings)
        self.identities: dict[str, dict[str, Any]] = {}
        for identity in load_identities(settings):
            data = identity.model_dump()
            self.identities.setdefault(identity.user.strip().lower(), data)
        self._asset_cache: dict[str, dict[str, Any] | None] = {}

    def user_of(self, value: str) -> str | None:
        kind = "email" if "@" in value and "\\" not in value else "vpn"
        return self.users.resolve(kind, value)[0]

    def asset(self, value: str) -> dict[str, Any] | None:
        if value not in self._asset_cache:
            hosts = {a.host.lower(): a for a in self.assets if a.host}
            match = hosts.get(value.lower())
            if match is not None:
                self._asset_cache[value] = match.model_dump(exclude_none=True)
            else:
                table = match_assets([value], self.assets).to_pylist()
                self._asset_cache[value] = {k: v for k, v in table[0].items() if k != "ip" and v is not None} if table else None
        return self._asset_cache[value]

    def _user_attributes(self, user: str) -> dict[str, Any]:
        identity = self.identities.get(user)
        return {**(_identity_attrs(identity) if identity else {}), "user": user}

    def resolve(self, value: str, object_type: str) -> Resolved:
        if object_type == "system":
            attributes = dict(self.asset(value) or {})
            user, _ = self.users.resolve("host", value)
            if user is None and attributes.get("owner"):
                user = self.user_of(str(attributes["owner"])) or str(attributes["owner"]).strip().lower()
            if user is not None:
                return Resolved(user, "user", attributes | self._user_attributes(user))
            return Resolved(value, "system", attributes)
        if object_type == "user":
            user = self.user_of(value)
            if user is not None:
                return Resolved(user, "user", self._user_attributes(user))
            return Resolved(value, "user", {"user": value})
        return Resolved(value, object_type, {})

    def aliases(self, name: str) -> tuple[str, set[str]]:
        """An entity's canonical name and every name it is known by (for `exfilwatch entity`)."""
        resolved = self.resolve(name, "user" if self.user_of(name) in self.identities else "system")
        if resolved.risk_object_type != "user" and self.user_of(name) is not None and "@" not in name:
            resolved = self.resolve(name, "user")
        canonical = resolved.risk_object
        names = {name, canonical}
        identity = self.identities.get(canonical)
        if identity:
            names |= {str(v) for v in [*identity.get("emails", []), *identity.get("vpn_accounts", []),
                                       *identity.get("hosts", [])]}
        names |= {a.host for a in self.assets if a.host and a.owner and a.owner.strip().lower() == canonical}
        return canonical, names


def _identity_attrs(identity: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in identity.items() if v not in (None, [], "")}


# --- modifiers ---------------------------------------------------------------------------------------


def _value_matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, list):
        return any(_value_matches(item, actual) for item in expected)
    if isinstance(actual, (list, tuple)):
        return any(_value_matches(expected, item) for item in actual)
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


def apply_modifiers(score: float, attributes: dict[str, Any], modifiers: list[RiskModifier]) -> tuple[float, list[dict[str, Any]]]:
    """score x every matching `multiply`, then + every matching `add`; never below 0."""
    applied = []
    factor, addend = 1.0, 0.0
    for index, modifier in enumerate(modifiers):
        if all(_value_matches(expected, attributes.get(name)) for name, expected in modifier.match.items()):
            entry: dict[str, Any] = {"modifier": modifier.name or f"risk_modifiers[{index}]", "match": modifier.match}
            if modifier.multiply is not None:
                factor *= modifier.multiply
                entry["multiply"] = modifier.multiply
            if modifier.add is not None:
                addend += modifier.add
                entry["add"] = modifier.add
            applied.append(entry)
    return max(0.0, round(score * factor + addend, 6)), applied


# --- suppressions --------------------------------------------------------------------------------------


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
        if self.entity is not None and not _value_matches(self.entity, finding["entity"]):
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
    return _value_matches(condition, actual)


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


def add_suppression(state: StateStore, settings: Settings, spec: SuppressionSpec, now: datetime) -> Suppression:
    """Store a suppression made on the command line; its id is `s<N>`."""
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
    suppression.created = now.isoformat()
    return suppression


def remove_suppression(state: StateStore, suppression_id: str) -> bool:
    """Remove a stored suppression. Findings it already suppressed stay marked with its id."""
    with state.transaction() as db:
        return db.execute("DELETE FROM suppressions WHERE suppression_id = ?", (suppression_id,)).rowcount > 0


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
        finding = _finding_dict(row)
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


# --- risk events -------------------------------------------------------------------------------------


@dataclass
class RiskEvent:
    event_key: str
    finding_key: str
    detection_id: str
    time: datetime
    risk_object: str
    risk_object_type: str
    source_object: str
    source_object_type: str
    risk_object_field: str
    raw_score: float
    score: float
    modifiers: list[dict[str, Any]]
    message: str
    techniques: list[str]
    tactics: list[str]
    session_id: str | None
    available: datetime | None = None

    def row(self) -> tuple:
        return (self.event_key, self.finding_key, self.detection_id, self.time.isoformat(), self.risk_object,
                self.risk_object_type, self.source_object, self.source_object_type, self.risk_object_field,
                self.raw_score, self.score, dumps(self.modifiers), self.message, dumps(self.techniques),
                dumps(self.tactics), self.session_id, (self.available or self.time).isoformat())

    def as_json(self) -> dict[str, Any]:
        return {"time": self.time.isoformat(), "risk_object": self.risk_object, "risk_object_type": self.risk_object_type,
                "source_object": self.source_object, "detection_id": self.detection_id, "raw_score": self.raw_score,
                "score": self.score, "modifiers": self.modifiers, "message": self.message,
                "techniques": self.techniques, "tactics": self.tactics, "session_id": self.session_id,
                "finding_key": self.finding_key}


_TIME_FIELDS = ("_time", "session_end", "end_time", "end", "time")


def _as_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def finding_time(finding: dict[str, Any], fallback: datetime) -> datetime:
    """When a finding happened: its time if that is a time (a session-bucketed finding's may be an id)."""
    for candidate in (finding.get("time"), *(finding.get("fields", {}).get(name) for name in _TIME_FIELDS)):
        parsed = _as_time(candidate)
        if parsed is not None:
            return parsed
    return fallback


def risk_events_for(
    finding: dict[str, Any],
    techniques: list[str],
    resolver: Resolver,
    modifiers: list[RiskModifier],
    fallback_time: datetime,
    detected: datetime | None = None,
) -> list[RiskEvent]:
    """One risk event per risk object of the finding that has a value.

    `detected` is when the finding was first detected (its first run's now): an incident rule
    replaying history sees the event only from then, as it would have live. Without it (findings
    loaded by hand) the event is available from its own time.
    """
    events = []
    when = finding_time(finding, fallback_time)
    available = max(when, detected) if detected is not None else when
    fields = finding.get("fields", {})
    session_id = fields.get("session_id")
    for obj in finding["risk_objects"]:
        value = obj.get("value")
        if value is None or str(value) == "":
            continue
        resolved = resolver.resolve(str(value), obj.get("type", "other"))
        attributes = {**resolved.attributes, "risk_object": resolved.risk_object,
                      "risk_object_type": resolved.risk_object_type, "source_object": str(value),
                      "detection_id": finding["detection_id"]}
        raw = float(obj.get("score") or 0)
        score, applied = apply_modifiers(raw, attributes, modifiers)
        events.append(RiskEvent(
            event_key=f"{finding['finding_key']}|{obj.get('field')}",
            finding_key=finding["finding_key"], detection_id=finding["detection_id"], time=when,
            risk_object=resolved.risk_object, risk_object_type=resolved.risk_object_type,
            source_object=str(value), source_object_type=obj.get("type", "other"),
            risk_object_field=str(obj.get("field")), raw_score=raw, score=score, modifiers=applied,
            message=finding.get("message", ""), techniques=list(techniques), tactics=tactics_of(techniques),
            session_id=str(session_id) if session_id is not None else None, available=available,
        ))
    return events


def techniques_by_detection(detections: Iterable[Any]) -> dict[str, list[str]]:
    return {d.id: list(d.tags.mitre_attack_id) for d in detections}


@dataclass
class RebuildResult:
    findings: int = 0
    newly_decided: int = 0
    newly_suppressed: int = 0
    suppressed: int = 0
    events: int = 0


def rebuild_risk_events(
    state: StateStore,
    settings: Settings,
    techniques: dict[str, list[str]],
    now: datetime,
) -> RebuildResult:
    """Decide suppressions for new findings, then rebuild every risk event from the unsuppressed ones."""
    result = RebuildResult()
    result.newly_decided, result.newly_suppressed = decide_suppressions(state, settings, now)
    resolver = Resolver(settings)
    if "available" not in {row["name"] for row in state.query("PRAGMA table_info(risk_events)")}:
        with state.transaction() as db:  # a store from before the column: the table is derived, rebuild it
            db.execute("DROP TABLE risk_events")
        state.conn.executescript(_risk_events_ddl())
    rows = state.query(
        "SELECT f.*, s.suppression_id, s.decided_at, r.now AS detected FROM findings f "
        "JOIN finding_suppressions s USING (finding_key) LEFT JOIN detection_runs r ON r.run_id = f.first_run_id"
    )
    events: list[RiskEvent] = []
    for row in rows:
        result.findings += 1
        if row["suppression_id"] is not None:
            result.suppressed += 1
            continue
        finding = _finding_dict(row)
        fallback = datetime.fromisoformat(row["decided_at"])
        detected = datetime.fromisoformat(row["detected"]) if row["detected"] else None
        events += risk_events_for(finding, techniques.get(row["detection_id"], []), resolver, settings.risk_modifiers,
                                  fallback, detected)
    with state.transaction() as db:
        db.execute("DELETE FROM risk_events")
        db.executemany(f"INSERT INTO risk_events VALUES ({','.join('?' * 17)})", [e.row() for e in events])
    result.events = len(events)
    return result


def _risk_events_ddl() -> str:
    from .state import SCHEMA

    start = SCHEMA.index("CREATE TABLE IF NOT EXISTS risk_events")
    return SCHEMA[start:SCHEMA.index(");", start) + 2]


def stored_risk_events(state: StateStore, where: str = "", params: tuple = ()) -> list[dict[str, Any]]:
    rows = state.query(f"SELECT * FROM risk_events {where} ORDER BY time, detection_id, risk_object", params)
    out = []
    for row in rows:
        item = dict(row)
        for name in ("modifiers", "techniques", "tactics"):
            item[name] = json.loads(item[name])
        out.append(item)
    return out


def _risk_events_arrow(rows: list[dict[str, Any]]) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in RISK_EVENT_COLUMNS}
    for row in rows:
        for name in RISK_EVENT_COLUMNS:
            if name == "_time":
                value = datetime.fromisoformat(row["time"])
            elif name == "_available":
                value = datetime.fromisoformat(row.get("available") or row["time"])
            else:
                value = row.get(name)
            columns[name].append(value)
    types = {"TIMESTAMPTZ": pa.timestamp("us", tz="UTC"), "VARCHAR": pa.string(), "DOUBLE": pa.float64(),
             "VARCHAR[]": pa.list_(pa.string())}
    schema = pa.schema([(name, types[typ]) for name, typ in RISK_EVENT_COLUMNS.items()])
    return pa.table(columns, schema=schema)


def register_risk_events_view(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings,
                              start: datetime | None = None, end: datetime | None = None) -> None:
    """Make `risk_events` a temporary table of the stored risk events in [start, end) detected by `end`."""
    where, params = [], []
    if start is not None:
        where.append("time >= ?")
        params.append(start.astimezone(timezone.utc).isoformat())
    if end is not None:
        where.append("time < ? AND available <= ?")
        params += [end.astimezone(timezone.utc).isoformat()] * 2
    rows = stored_risk_events(state, ("WHERE " + " AND ".join(where)) if where else "", tuple(params))
    load_risk_events(con, rows)


def load_risk_events(con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]], name: str = "risk_events") -> None:
    _drop_temp(con, name)
    con.register("risk_events_arrow", _risk_events_arrow(rows))
    con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM risk_events_arrow ORDER BY _time")
    con.unregister("risk_events_arrow")


# --- incidents ---------------------------------------------------------------------------------------------


@dataclass
class CorrelationResult:
    detection_id: str
    fires: int = 0
    evaluated: int = 0
    candidates: int = 0
    new: int = 0
    updated: int = 0


def _plain(value: Any) -> Any:
    from .detect.runner import plain

    return plain(value)


def upsert_incident(state: StateStore, detection: Any, row: dict[str, Any], now: datetime, tz: str) -> str:
    """Store an incident candidate: 'new', 'updated' (continues an incident) or 'unchanged'."""
    from .detect.runner import _display

    fields = {name: _plain(value) for name, value in row.items()}
    entity = str(fields.get(detection.finding.entity))
    object_type = str(fields.get("risk_object_type") or "other")
    keys = sorted(str(k) for k in (fields.get("event_keys") or []))
    last = str(fields.get(detection.finding.time))
    first = str(fields.get("first_time") or last)
    score = fields.get(detection.finding.value) if detection.finding.value else None
    severity = str(fields.get("severity") or "medium").lower()
    message = detection.risk_message({name: _display(value, tz) for name, value in row.items()})
    with state.transaction() as db:
        candidates = db.execute(
            "SELECT * FROM incidents WHERE detection_id = ? AND risk_object = ? ORDER BY incident_id DESC LIMIT 20",
            (detection.id, entity),
        ).fetchall()
        match = None
        for incident in candidates:
            old_keys = set(json.loads(incident["event_keys"]))
            if (keys and old_keys & set(keys)) or (not keys and incident["last_time"] == last):
                match = incident
                break
        if match is None:
            db.execute(
                """INSERT INTO incidents (incident_key, detection_id, risk_object, risk_object_type, severity, score,
                   first_time, last_time, raised_at, updated_at, updates, message, event_keys, fields)
                   VALUES (?,?,?,?,?,?,?,?,?,?,0,?,?,?)""",
                (f"{detection.id}|{entity}|{first}", detection.id, entity, object_type, severity, score, first, last,
                 now.isoformat(), now.isoformat(), message, dumps(keys), dumps(fields)),
            )
            return "new"
        old_keys = set(json.loads(match["event_keys"]))
        grew = (score is not None and (match["score"] is None or score > match["score"])) or not set(keys) <= old_keys
        escalated = SEVERITY_RANK.get(severity, 0) > SEVERITY_RANK.get(match["severity"], 0)
        if not grew and not escalated:
            return "unchanged"
        better = score is not None and (match["score"] is None or score >= match["score"])
        db.execute(
            """UPDATE incidents SET severity=?, score=?, first_time=min(first_time, ?), last_time=max(last_time, ?),
               updated_at=?, updates=updates+1, message=?, event_keys=?, fields=? WHERE incident_id=?""",
            (severity if escalated else match["severity"], score if better else match["score"], first, last,
             now.isoformat(), message if better else match["message"], dumps(sorted(old_keys | set(keys))),
             dumps(fields) if better else match["fields"], match["incident_id"]),
        )
        return "updated"


def run_correlations(
    con: duckdb.DuckDBPyConnection,
    state: StateStore,
    settings: Settings,
    detections: list[Any],
    now: datetime,
    since: datetime | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[CorrelationResult]:
    """Run each correlation detection at every cron fire time since its watermark, oldest first.

    Each fire sees the risk events in its window whose findings had been detected by then, as it
    would have live. A rule's result depends only on those events, so a fire that sees exactly
    the events of the previous evaluated fire is skipped, and so is a fire that sees none.
    """
    from .detect.runner import data_range, execute, fire_times, resolve_parameters, run_window

    load_risk_events(con, stored_risk_events(state), "risk_events_all")
    pairs = [(t.astimezone(timezone.utc), a.astimezone(timezone.utc)) for t, a in con.execute(
        "SELECT _time, _available FROM risk_events_all ORDER BY _time").fetchall()]
    times = [t for t, _ in pairs]
    _drop_temp(con, "risk_events")
    results = []
    for detection in detections:
        result = CorrelationResult(detection.id)
        results.append(result)
        watermark = state.watermark(detection.id)
        if watermark is not None:
            after = datetime.fromisoformat(watermark)
        else:
            start = since or (times[0] if times else None)
            if start is None:
                continue
            after = start - timedelta(microseconds=1)
        fires = fire_times(detection.schedule.cron, after, now, settings.timezone)
        result.fires = len(fires)
        previous: tuple[int, int] | None = None
        for fire in fires:
            window = run_window(detection, fire, settings.timezone)
            params = resolve_parameters(detection, settings, overrides or {}, window)
            start, end = data_range(params)
            lo, hi = bisect.bisect_left(times, start), bisect.bisect_left(times, end)
            seen = tuple(i for i in range(lo, hi) if pairs[i][1] <= fire)
            if not seen or seen == previous:
                continue
            previous = seen
            result.evaluated += 1
            con.execute(f"CREATE OR REPLACE TEMP VIEW risk_events AS SELECT * FROM risk_events_all "
                        f"WHERE _available <= TIMESTAMPTZ '{fire.isoformat()}'")
            for row in execute(con, detection, params):
                result.candidates += 1
                outcome = upsert_incident(state, detection, row, fire, settings.timezone)
                result.new += outcome == "new"
                result.updated += outcome == "updated"
        if fires:
            with state.transaction() as db:
                db.execute(
                    "INSERT INTO watermarks VALUES (?, ?) ON CONFLICT(detection_id) DO UPDATE SET last_fire=excluded.last_fire",
                    (detection.id, fires[-1].isoformat()),
                )
    return results


def stored_incidents(state: StateStore, where: str = "", params: tuple = ()) -> list[dict[str, Any]]:
    out = []
    for row in state.query(f"SELECT * FROM incidents {where} ORDER BY first_time, incident_id", params):
        item = dict(row)
        item["event_keys"] = json.loads(item["event_keys"])
        item["fields"] = json.loads(item["fields"])
        out.append(item)
    return out


# --- the whole step ----------------------------------------------------------------------------------------


@dataclass
class RiskRunResult:
    rebuild: RebuildResult
    correlations: list[CorrelationResult] = field(default_factory=list)
    deliveries: list[Any] = field(default_factory=list)


def process(
    con: duckdb.DuckDBPyConnection,
    state: StateStore,
    settings: Settings,
    detections: list[Any],
    now: datetime,
    since: datetime | None = None,
    deliver: bool = True,
) -> RiskRunResult:
    """Suppressions, risk events, incident rules and outputs, after a run's detections."""
    result = RiskRunResult(rebuild_risk_events(state, settings, techniques_by_detection(detections), now))
    correlations = [d for d in detections if d.type == "correlation"]
    if correlations:
        result.correlations = run_correlations(con, state, settings, correlations, now, since)
    if deliver and settings.outputs:
        from .outputs.deliver import deliver_pending

        result.deliveries = deliver_pending(state, settings, now, names={d.id: d.name for d in detections})
    return result


# --- hand-built findings (detection tests of correlation rules, tests) ----------------------------------


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


def describe_event(event: dict[str, Any]) -> str:
    """One line for a report: +score object (type) <- source [techniques / tactics] message."""
    source = "" if event["source_object"] == event["risk_object"] else f" <- {event['source_object']}"
    mods = f" (raw {event['raw_score']:g})" if event["score"] != event["raw_score"] else ""
    return (f"+{event['score']:g}{mods} {event['risk_object']} ({event['risk_object_type']}){source} "
            f"[{', '.join(event['techniques']) or '-'} / {', '.join(event['tactics']) or '-'}] {event['message']}")
