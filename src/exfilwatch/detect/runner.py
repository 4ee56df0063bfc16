"""Running detections: resolve parameters and the time window, execute on DuckDB, store findings.

`detect_once` runs detections for one `now`. `run_schedule` runs every detection for each
cron fire time since its watermark, in order (a first run catches up from the start of the
data), reading the lake once per detection and then executing the compiled SQL per fire.
A finding is identified by (detection, entity, bucket): running the same window again adds
nothing, and a later fire that sees the same entity and bucket with a larger value updates it.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import sqlglot
from croniter import croniter
from sqlglot import exp

from ..config import Settings
from ..engine import expose_models, register_lake_views
from ..models import get_model
from ..state import StateStore, dumps
from ..timeexpr import relative_time
from .schema import TIME_PARAMETERS, Detection


class DetectionRunError(RuntimeError):
    pass


@dataclass(frozen=True)
class RunWindow:
    now: datetime
    earliest: datetime
    latest: datetime

    def today(self, tz: str) -> datetime:
        # The bucket being judged is the local day holding `latest`. With latest = now this is
        # SPL's relative_time(now(), "@d"); with the hourly -10m@m latest, the first run after
        # midnight still judges the day that just ended.
        return relative_time(self.latest, "@d", tz)


def run_window(detection: Detection, now: datetime, tz: str, earliest: str | None = None,
               latest: str | None = None) -> RunWindow:
    return RunWindow(
        now=now,
        earliest=relative_time(now, earliest or detection.schedule.earliest, tz),
        latest=relative_time(now, latest or detection.schedule.latest, tz),
    )


def _coerce(detection: Detection, name: str, value: Any) -> Any:
    spec = detection.parameters.get(name)
    if spec is None:
        raise DetectionRunError(
            f"{detection.id}: unknown parameter {name!r}; declared: {', '.join(detection.parameters) or 'none'}"
        )
    try:
        if spec.type == "integer":
            return int(value)
        if spec.type == "number":
            return float(value)
        if spec.type == "boolean":
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        return str(value)
    except (TypeError, ValueError):
        raise DetectionRunError(f"{detection.id}: parameter {name}={value!r} is not a {spec.type}") from None


def resolve_parameters(detection: Detection, settings: Settings, overrides: dict[str, Any],
                       window: RunWindow) -> dict[str, Any]:
    """Declared defaults, then config.yaml's `detections.<id>`, then command-line `--set`."""
    values = {name: spec.default for name, spec in detection.parameters.items()}
    for layer in (settings.detections.get(detection.id, {}), overrides):
        values.update(layer)
    resolved = {}
    for name, value in values.items():
        value = _coerce(detection, name, value)  # also rejects an undeclared name
        if detection.parameters[name].type == "time":
            value = relative_time(window.now, value, settings.timezone)
        resolved[name] = value
    resolved.update(
        now=window.now, earliest=window.earliest, latest=window.latest,
        today=window.today(settings.timezone), timezone=settings.timezone,
    )
    return resolved


def compiled_sql(detection: Detection) -> str:
    search = detection.search.strip().rstrip(";")
    if not detection.filter.strip():
        return search
    return f"SELECT * FROM ({search}) AS finding WHERE NOT coalesce(({detection.filter}), false)"


@functools.lru_cache(maxsize=256)
def _parsed(sql: str) -> exp.Expression:
    # A catch-up executes the same SQL for every fire time: parse it once.
    return sqlglot.parse_one(sql, read="duckdb")


def sql_parameters(sql: str) -> set[str]:
    return {node.name for node in _parsed(sql).find_all(exp.Placeholder)}


def referenced_columns(sql: str) -> set[str]:
    return {column.name for column in _parsed(sql).find_all(exp.Column)}


def snapshot_condition(sql: str, model: str) -> str | None:
    """The search's own parameter-free conditions on the rows it reads from `model`, if any.

    When the model is read once, straight from a FROM clause with no join, its WHERE conjuncts
    that use no parameter (`src_category = 'email_server'`) hold for every row that can matter
    at any fire time, so a catch-up snapshot may keep only those rows: same findings, fewer rows.
    """
    tables = [table for table in _parsed(sql).find_all(exp.Table) if table.name == model]
    if len(tables) != 1 or not isinstance(tables[0].parent, exp.From):
        return None
    select = tables[0].parent.parent
    if not isinstance(select, exp.Select) or select.args.get("joins") or select.args.get("where") is None:
        return None
    condition = select.args["where"].this
    conjuncts = list(condition.flatten()) if isinstance(condition, exp.And) else [condition]
    kept = [c for c in conjuncts if c.find(exp.Placeholder) is None and c.find(exp.Select) is None]
    if not kept:
        return None

    def unqualified(node: exp.Expression) -> exp.Expression:
        return exp.column(node.name) if isinstance(node, exp.Column) else node

    return " AND ".join(f"({c.copy().transform(unqualified).sql(dialect='duckdb')})" for c in kept)


def data_range(params: dict[str, Any]) -> tuple[datetime, datetime]:
    """The rows a run may read: from the earliest time parameter to `latest`."""
    starts = [value for name, value in params.items() if isinstance(value, datetime) and name not in ("latest", "now", "today")]
    return min(starts), params["latest"]


def execute(con: duckdb.DuckDBPyConnection, detection: Detection, params: dict[str, Any]) -> list[dict[str, Any]]:
    sql = compiled_sql(detection)
    used = sql_parameters(sql)
    missing = used - set(params)
    if missing:
        raise DetectionRunError(f"{detection.id}: the search uses undeclared parameters {sorted(missing)}")
    try:
        cursor = con.execute(sql, {name: params[name] for name in used})
    except duckdb.Error as exc:
        raise DetectionRunError(f"{detection.id}: the search failed: {exc}") from None
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def plain(value: Any) -> Any:
    """A JSON-ready value: datetimes in ISO 8601 UTC, decimals as floats, NaN as null."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


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


def _display(value: Any, tz: str) -> Any:
    """A value as an analyst reads it in a message: times on the local clock."""
    if isinstance(value, datetime):
        local = value.astimezone(ZoneInfo(tz))
        return local.strftime("%Y-%m-%d" if local.time() == datetime.min.time() else "%Y-%m-%d %H:%M %Z")
    return plain(value)


def findings_from_rows(detection: Detection, rows: list[dict[str, Any]], tz: str) -> list[Finding]:
    findings = []
    for row in rows:
        fields = {name: plain(value) for name, value in row.items()}
        objects = [
            {"field": obj.field, "value": fields.get(obj.field), "type": obj.type, "score": detection.risk.score_of(obj)}
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
            message=detection.risk_message({name: _display(value, tz) for name, value in row.items()}),
            risk_objects=objects,
            mitre_attack_id=list(detection.tags.mitre_attack_id),
            fields=fields,
        ))
    return findings


@dataclass
class StoreResult:
    added: int = 0
    updated: int = 0
    unchanged: int = 0


def store_findings(state: StateStore, findings: list[Finding], run_id: int) -> StoreResult:
    result = StoreResult()
    with state.transaction() as db:
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


def record_run(state: StateStore, detection: Detection, mode: str, window: RunWindow, count: int) -> int:
    with state.transaction() as db:
        cursor = db.execute(
            "INSERT INTO detection_runs (detection_id, mode, now, earliest, latest, findings) VALUES (?,?,?,?,?,?)",
            (detection.id, mode, window.now.isoformat(), window.earliest.isoformat(), window.latest.isoformat(), count),
        )
        return int(cursor.lastrowid)


# Views that are not lake data models: a detection whose `data_model` names one (a correlation
# detection reads `risk_events`) gets it from its provider, "module:function(con, state, settings,
# start, end)", instead of the lake views.
DERIVED_VIEWS = {"risk_events": "exfilwatch.risk:register_risk_events_view"}


def register_derived_view(con: duckdb.DuckDBPyConnection, detection: Detection, settings: Settings,
                          state: StateStore, start: datetime, end: datetime) -> bool:
    target = DERIVED_VIEWS.get(detection.data_model)
    if target is None:
        return False
    module, _, name = target.partition(":")
    getattr(importlib.import_module(module), name)(con, state, settings, start, end)
    return True


# Derived lake models (not ingested but computed from other models and stored in the lake):
# "module:function(con, state, settings, now)" brings the model up to `now` before a detection
# over it runs; the detection then reads it through the ordinary lake views.
DERIVED_MODELS = {"user_sessions": "exfilwatch.enrich.sessions:build_user_sessions"}


def build_derived_model(con: duckdb.DuckDBPyConnection, detection: Detection, settings: Settings,
                        state: StateStore, now: datetime) -> None:
    target = DERIVED_MODELS.get(detection.data_model)
    if target is not None:
        module, _, name = target.partition(":")
        getattr(importlib.import_module(module), name)(con, state, settings, now)


@dataclass
class DetectResult:
    detection: Detection
    window: RunWindow
    findings: list[Finding]
    stored: StoreResult = field(default_factory=StoreResult)


def detect_once(
    con: duckdb.DuckDBPyConnection,
    state: StateStore,
    settings: Settings,
    detections: list[Detection],
    now: datetime,
    earliest: str | None = None,
    latest: str | None = None,
    overrides: dict[str, Any] | None = None,
    store: bool = True,
) -> list[DetectResult]:
    results = []
    for detection in detections:
        window = run_window(detection, now, settings.timezone, earliest, latest)
        params = resolve_parameters(detection, settings, overrides or {}, window)
        start, end = data_range(params)
        build_derived_model(con, detection, settings, state, window.now)
        if not register_derived_view(con, detection, settings, state, start, end):
            register_lake_views(con, settings, state, start, end)
            expose_models(con)
        findings = findings_from_rows(detection, execute(con, detection, params), settings.timezone)
        result = DetectResult(detection, window, findings)
        if store:
            run_id = record_run(state, detection, "detect", window, len(findings))
            result.stored = store_findings(state, findings, run_id)
        results.append(result)
    return results


def fire_times(cron: str, after: datetime, until: datetime, tz: str) -> list[datetime]:
    """Cron fire times in (after, until], evaluated on the local clock of `tz`, in UTC."""
    zone = ZoneInfo(tz)
    iterator = croniter(cron, after.astimezone(zone))
    times = []
    while True:
        fire = iterator.get_next(datetime)
        if fire > until:
            return times
        times.append(fire.astimezone(timezone.utc))


def data_start(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings, model: str) -> datetime | None:
    register_lake_views(con, settings, state)
    value = con.execute(f"SELECT min(_time) FROM lake.{get_model(model).name}").fetchall()[0][0]
    return value.astimezone(timezone.utc) if value is not None else None


@dataclass
class ScheduleResult:
    detection: Detection
    fires: int
    findings: int
    stored: StoreResult


def run_schedule(
    con: duckdb.DuckDBPyConnection,
    state: StateStore,
    settings: Settings,
    detections: list[Detection],
    now: datetime,
    since: datetime | None = None,
    overrides: dict[str, Any] | None = None,
    on_fire: Callable[[Detection, int, int], None] | None = None,
) -> list[ScheduleResult]:
    """Run each detection once per cron fire time since its watermark, oldest first."""
    results = []
    for detection in detections:
        build_derived_model(con, detection, settings, state, now)
        watermark = state.watermark(detection.id)
        if watermark is not None:
            after = datetime.fromisoformat(watermark)
        else:
            start = since or data_start(con, state, settings, detection.data_model)
            if start is None:
                results.append(ScheduleResult(detection, 0, 0, StoreResult()))
                continue
            after = start - timedelta(microseconds=1)
        fires = fire_times(detection.schedule.cron, after, now, settings.timezone)
        total = StoreResult()
        count = 0
        if fires:
            windows = [run_window(detection, fire, settings.timezone) for fire in fires]
            params = [resolve_parameters(detection, settings, overrides or {}, w) for w in windows]
            first_start = min(data_range(p)[0] for p in params)
            last_end = max(data_range(p)[1] for p in params)
            register_lake_views(con, settings, state, first_start, last_end)
            model = get_model(detection.data_model)
            known = set(model.column_names) | {name for name, _ in model.enrichment} | {"_day"}
            columns = sorted((referenced_columns(compiled_sql(detection)) & known) | {"_time"})
            condition = snapshot_condition(compiled_sql(detection), model.name)
            expose_models(con, {model.name: (columns, first_start, last_end)}, condition)
            for index, (window, param) in enumerate(zip(windows, params)):
                findings = findings_from_rows(detection, execute(con, detection, param), settings.timezone)
                run_id = record_run(state, detection, "schedule", window, len(findings))
                stored = store_findings(state, findings, run_id)
                total.added += stored.added
                total.updated += stored.updated
                total.unchanged += stored.unchanged
                count += len(findings)
                with state.transaction() as db:
                    db.execute(
                        "INSERT INTO watermarks VALUES (?, ?) ON CONFLICT(detection_id) DO UPDATE SET last_fire=excluded.last_fire",
                        (detection.id, window.now.isoformat()),
                    )
                if on_fire:
                    on_fire(detection, index + 1, len(fires))
            expose_models(con)
        results.append(ScheduleResult(detection, len(fires), count, total))
    return results
