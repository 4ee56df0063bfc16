"""`exfilwatch detections lint`: the checks that keep detection files honest.

Errors fail the lint (and `make test`); warnings are printed. Per detection file:

- the file validates against the detection schema (a mistyped key is an error);
- `data_model` is a lake data model or a derived view (`risk_events`);
- every ATT&CK id in `tags.mitre_attack_id` exists in the bundled extract (ATT&CK Enterprise v18.1,
  see attack.py), is neither revoked nor deprecated, and maps to at least one tactic;
- no technique is listed together with one of its own sub-techniques (T1114 with T1114.002).
  This is an **error**: the sub-technique implies its parent, and listing both counts one
  behaviour twice wherever techniques are counted (coverage layers, "distinct techniques"). The
  seed page lists T1114 and T1114.002 together; the shipped detections list T1114.002 only;
- the search parses, runs with `LIMIT 0` on empty views of its data model, and its output has
  every column the finding key, the risk objects and the risk message's `$field$`s name (a
  correlation rule must also output `event_keys`, the risk events behind each row);
- every `$parameter` the SQL uses is declared (or is a run time parameter); a declared parameter
  the SQL never uses is a warning (but an incident rule's `quiet_period` and `recurrence_period`, which the incident step
  reads); parameter defaults have their declared type, and both periods are time offsets;
- the schedule's cron expression and its earliest/latest time modifiers parse (and `judged_from`
  names a time parameter), and so do the
  defaults of `time` parameters;
- a production detection has at least one positive and one negative test, and each test's data
  files exist;
- a batched form (`catch_up.search`) keeps its contract (detections/batched.py: it reads the
  model as the search's segment plan allows, and `fires`) and outputs `fire` then the search's
  columns, in order.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import sqlglot
from croniter import croniter

from exfilwatch import attack
from exfilwatch.config import Settings
from exfilwatch.events.engine import expose_models, register_lake_views
from exfilwatch.models import DATA_MODELS, DERIVED_VIEWS
from exfilwatch.events.tables import SCHEMA as EVENTS_TABLES
from exfilwatch.state import StateStore
from exfilwatch.timeexpr import TimeModifierError, relative_time
from exfilwatch.detections.batched import FIRES, batched_plan, fire_values
from exfilwatch.detections.runner import compiled_sql, sql_parameters
from exfilwatch.detections.schema import (EPISODE_PERIODS, TIME_PARAMETERS, Detection, DetectionError, detection_files,
                                         load_detection, quiet_period_problem, template_fields)

# A fixed instant for parsing checks: lint never reads the clock.
_LINT_NOW = datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class LintIssue:
    path: str
    detection_id: str
    level: str  # error | warning
    check: str
    message: str


def _empty_views(con: duckdb.DuckDBPyConnection, folder: Path) -> None:
    """The views detections read, exactly as the engine builds them, over an empty lake and state.

    Lake models get their enrichment columns from the engine; derived views (`risk_events`, and
    any other in models.DERIVED_VIEWS) empty, with their declared columns.
    """
    settings = Settings()
    state = StateStore(folder / "state.sqlite", (EVENTS_TABLES,))
    try:
        register_lake_views(con, settings, state)
        expose_models(con)
        for name, columns in DERIVED_VIEWS.items():
            listed = ", ".join(f'CAST(NULL AS {typ}) AS "{column}"' for column, typ in columns.items())
            con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {listed} WHERE false")
    finally:
        state.close()


def _sample(kind: str, default: object) -> object:
    if kind == "time":
        return _LINT_NOW
    if kind == "integer":
        return int(default) if isinstance(default, (int, float)) else 1
    if kind == "number":
        return float(default) if isinstance(default, (int, float)) else 1.0
    if kind == "boolean":
        return bool(default)
    return str(default)


def _sample_parameters(detection: Detection) -> dict[str, object]:
    values: dict[str, object] = {name: _sample(spec.type, spec.default) for name, spec in detection.parameters.items()}
    values.update(now=_LINT_NOW, earliest=_LINT_NOW, latest=_LINT_NOW, today=_LINT_NOW, timezone="UTC")
    return values


def output_columns(detection: Detection, con: duckdb.DuckDBPyConnection, sql: str | None = None) -> list[str]:
    """The search's output columns (or those of `sql`, its batched form), from running it with
    LIMIT 0 on empty views of its model."""
    sql = sql or compiled_sql(detection)
    values = _sample_parameters(detection)
    used = sql_parameters(sql)
    cursor = con.execute(f"SELECT * FROM ({sql}) AS lint_output LIMIT 0", {n: values[n] for n in used if n in values})
    return [d[0] for d in cursor.description]


def batched_form_problem(detection: Detection, con: duckdb.DuckDBPyConnection, columns: list[str]) -> str | None:
    """Why the detection's batched form breaks its contract (None when it keeps it)."""
    plan, problem = batched_plan(detection, compiled_sql(detection), detection.data_model)
    if plan is None:
        return problem
    undeclared = plan.parameters - set(_sample_parameters(detection))
    if undeclared:
        return f"catch_up.search uses undeclared parameters {sorted(undeclared)}"
    con.execute(f"CREATE OR REPLACE TEMP TABLE {FIRES} AS SELECT 0 AS fire, "
                f"unnest([$fire], recursive := true) LIMIT 0", {"fire": fire_values(_sample_parameters(detection))})
    try:
        batched = output_columns(detection, con, plan.sql)
    except duckdb.Error as exc:
        return f"catch_up.search fails on empty data: {str(exc).splitlines()[0]}"
    finally:
        con.execute(f"DROP TABLE temp.main.{FIRES}")
    if batched != ["fire", *columns]:
        return f"catch_up.search outputs {batched}; expected fire, then the search's {columns}"
    return None


def lint_detection(detection: Detection, path: str, con: duckdb.DuckDBPyConnection) -> list[LintIssue]:
    issues: list[LintIssue] = []

    def add(level: str, check: str, message: str) -> None:
        issues.append(LintIssue(path, detection.id, level, check, message))

    # ATT&CK
    ids = detection.tags.mitre_attack_id
    for tid in ids:
        entry = attack.technique(tid)
        if entry is None:
            add("error", "attack", f"unknown ATT&CK technique {tid!r} (ATT&CK Enterprise {attack.source()['bundle']})")
        elif entry.get("revoked"):
            add("error", "attack", f"ATT&CK technique {tid} ({entry['name']}) is revoked")
        elif entry.get("deprecated"):
            add("error", "attack", f"ATT&CK technique {tid} ({entry['name']}) is deprecated")
        elif not entry["tactics"]:
            add("error", "attack", f"ATT&CK technique {tid} maps to no tactic")
    for tid in ids:
        parent = attack.parent_of(tid)
        if parent and parent in ids:
            add("error", "attack", f"{parent} is listed with its own sub-technique {tid}: list {tid} only")
    if len(set(ids)) != len(ids):
        add("warning", "attack", "a technique is listed twice")
    if detection.type != "correlation" and not ids:
        add("warning", "attack", "no ATT&CK technique: its risk events carry no tactic")

    # data model
    if detection.data_model not in DATA_MODELS and detection.data_model not in DERIVED_VIEWS:
        add("error", "data_model", f"unknown data model {detection.data_model!r}; known: "
            f"{', '.join([*DATA_MODELS, *DERIVED_VIEWS])}")

    # parameters
    try:
        used = sql_parameters(compiled_sql(detection))
    except sqlglot.errors.ParseError as exc:
        add("error", "sql", f"the search does not parse: {str(exc).splitlines()[0]}")
        used = set()
    for name in sorted(used - set(detection.parameters) - set(TIME_PARAMETERS)):
        add("error", "parameters", f"the search uses ${name}, which is not declared under parameters")
    read_by_step = set(EPISODE_PERIODS) if detection.type == "correlation" else set()
    for name in sorted(set(detection.parameters) - used - read_by_step):
        add("warning", "parameters", f"parameter {name!r} is declared but the search never uses it")
    for name in sorted(read_by_step & set(detection.parameters)):
        problem = quiet_period_problem(detection.parameters[name].default, name)
        if problem:
            add("error", "parameters", f"parameter {problem}")
    for name, spec in detection.parameters.items():
        default = spec.default
        if spec.type == "time":
            try:
                relative_time(_LINT_NOW, str(default), "UTC")
            except TimeModifierError as exc:
                add("error", "parameters", f"parameter {name}: {exc}")
        elif spec.type in ("number", "integer") and (isinstance(default, bool) or not isinstance(default, (int, float))):
            add("error", "parameters", f"parameter {name}: default {default!r} is not a {spec.type}")
        elif spec.type == "integer" and isinstance(default, float) and not default.is_integer():
            add("error", "parameters", f"parameter {name}: default {default!r} is not an integer")

    # schedule
    if not croniter.is_valid(detection.schedule.cron):
        add("error", "schedule", f"cron expression {detection.schedule.cron!r} does not parse")
    for which in ("earliest", "latest"):
        try:
            relative_time(_LINT_NOW, getattr(detection.schedule, which), "UTC")
        except TimeModifierError as exc:
            add("error", "schedule", f"schedule {which}: {exc}")
    judged = detection.schedule.judged_from
    time_parameters = {"earliest", "latest", "now", "today"} | {
        name for name, spec in detection.parameters.items() if spec.type == "time"}
    if judged is not None and judged not in time_parameters:
        add("error", "schedule", f"schedule judged_from: {judged!r} is not a time parameter; "
                                 f"one of {', '.join(sorted(time_parameters))}")

    # output columns
    if not any(i.level == "error" and i.check in ("data_model", "parameters", "sql") for i in issues):
        try:
            columns = output_columns(detection, con)
        except duckdb.Error as exc:
            add("error", "sql", f"the search fails on empty data: {str(exc).splitlines()[0]}")
            columns = None
        if columns is not None:
            needed = {
                "finding.entity": [detection.finding.entity],
                "finding.time": [detection.finding.time],
                "finding.value": [detection.finding.value] if detection.finding.value else [],
                "risk object": [obj.field for obj in detection.risk.objects],
                "risk object score_factor": [obj.score_factor for obj in detection.risk.objects if obj.score_factor],
                "risk message": template_fields(detection.risk.message),
            }
            if detection.type == "correlation":
                needed["correlation rule (the risk events behind a row)"] = ["event_keys"]
            for what, names in needed.items():
                for name in names:
                    if name not in columns:
                        add("error", "fields", f"{what} field {name!r} is not in the search's output "
                            f"({', '.join(sorted(columns))})")
            problem = batched_form_problem(detection, con, list(columns)) if detection.catch_up else None
            if problem:
                add("error", "catch_up", problem)

    # tests
    kinds = {test.kind for test in detection.tests}
    if detection.status == "production":
        for kind in ("positive", "negative"):
            if kind not in kinds:
                add("error", "tests", f"a production detection needs at least one {kind} test")
    for test in detection.tests:
        for data in test.data:
            if detection.folder is not None and not (detection.folder / data.file).exists():
                add("error", "tests", f"test {test.name!r}: data file {data.file} not found")
        try:
            from exfilwatch.timeexpr import parse_time

            parse_time(test.now, _LINT_NOW, str(test.config.get("timezone", "UTC")))
        except TimeModifierError as exc:
            add("error", "tests", f"test {test.name!r}: now: {exc}")
    return issues


def lint_folder(folder: Path) -> tuple[int, list[LintIssue]]:
    """Lint every detection.yml under the folder; returns (files checked, issues)."""
    return lint_files(detection_files(folder))


def lint_files(paths: list[Path]) -> tuple[int, list[LintIssue]]:
    """Lint these detection files together (an id used twice among them is an error); returns (files checked, issues)."""
    issues: list[LintIssue] = []
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    seen: dict[str, str] = {}
    scratch = tempfile.TemporaryDirectory(prefix="exfilwatch-lint-")
    try:
        _empty_views(con, Path(scratch.name))
        for path in paths:
            try:
                detection = load_detection(path)
            except DetectionError as exc:
                for line in str(exc).splitlines():
                    issues.append(LintIssue(str(path), path.parent.name, "error", "schema",
                                            line.removeprefix(f"{path}: ")))
                continue
            if detection.id in seen:
                issues.append(LintIssue(str(path), detection.id, "error", "schema",
                                        f"duplicate detection id (also {seen[detection.id]})"))
            seen[detection.id] = str(path)
            if path.parent.name != detection.id:
                issues.append(LintIssue(str(path), detection.id, "warning", "schema",
                                        f"folder {path.parent.name!r} differs from the id"))
            issues += lint_detection(detection, str(path), con)
    finally:
        con.close()
        scratch.cleanup()
    return len(paths), issues
