"""Running one detection at one time: its window, its parameters, its SQL on DuckDB.

`run_window` turns a fire time into the search's earliest/latest; `resolve_parameters` layers
declared defaults, config.yaml and `--set`; `execute` runs the compiled SQL over whatever views
the caller registered and returns plain rows. Which fires are due, and what becomes of the rows
(findings, incidents), is the pipeline's business (pipeline.py, detections/schedule.py).

What is read from a search's text alone (its tokens, its tree, the tables, columns and
$parameters it names) is computed once per text in a process and shared by every caller (the
pipeline, detections/ctes.py, detections/batched.py): never the values a fire binds, which each
detection resolves for itself.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from datetime import datetime, timezone
from collections.abc import Iterable
from typing import Any

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.tokens import Token

from exfilwatch.config import Settings
from exfilwatch.errors import ConfigError, EngineError
from exfilwatch.events.engine import register_lake_views
from exfilwatch.events.lake import parquet_source
from exfilwatch.models import get_model
from exfilwatch.state import StateStore
from exfilwatch.timeexpr import relative_time
from exfilwatch.detections.schema import EPISODE_PERIODS, Detection, quiet_period_problem


_DUCKDB = Dialect.get_or_raise("duckdb")


class DetectionRunError(EngineError):
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


def check_configured_detections(settings: Settings, catalog: dict[str, Detection], config_file: str) -> None:
    """Every detection and parameter that config.yaml's `detections:` names exists and has a usable value.

    Checked when a command starts, so a typo (`em_fnumm`, `treshold`) is one line naming the file
    and the key, with the closest known name, rather than a setting silently ignored.
    """
    problems = []
    for detection_id, values in settings.detections.items():
        detection = catalog.get(detection_id)
        if detection is None:
            problems.append(f"key 'detections.{detection_id}': unknown detection{_closest(detection_id, catalog)}")
            continue
        for name, value in values.items():
            key = f"detections.{detection_id}.{name}"
            if name not in detection.parameters:
                known = ", ".join(detection.parameters) or "none"
                problems.append(f"key '{key}': unknown parameter{_closest(name, detection.parameters)} "
                                f"(parameters of {detection_id}: {known})")
                continue
            try:
                _coerce(detection, name, value)
            except DetectionRunError:
                problems.append(f"key '{key}': {value!r} is not a {detection.parameters[name].type}")
                continue
            problem = (quiet_period_problem(value, name) if detection.type == "correlation" and name in EPISODE_PERIODS
                       else None)
            if problem:
                problems.append(f"key '{key}': {problem}")
    if problems:
        raise ConfigError("\n".join(f"{config_file}: {problem}" for problem in problems))


def _closest(name: str, known: Iterable[str]) -> str:
    matches = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {matches[0]}?)" if matches else ""


def compiled_sql(detection: Detection) -> str:
    search = detection.search.strip().rstrip(";")
    if not detection.filter.strip():
        return search
    return f"SELECT * FROM ({search}) AS finding WHERE NOT coalesce(({detection.filter}), false)"


# A run prepares each search from its text alone, once per process: tokens, tree, and what the
# tree references are cached by the text (callers never change a cached tree: they copy what they
# rewrite). Tokenising is two thirds of sqlglot's parse of the EM rules' 22-26 kB searches (0.10
# of 0.15 CPU-s for the seven shipped searches), and detections/ctes.py reads the tokens too.
@functools.lru_cache(maxsize=256)
def _tokens(sql: str) -> list[Token]:
    """sqlglot's DuckDB tokens of `sql` (shared: never change them)."""
    return sqlglot.tokenize(sql, read="duckdb")


@functools.lru_cache(maxsize=256)
def _parsed(sql: str) -> exp.Expression:
    """sqlglot's DuckDB tree of one statement (shared: copy before changing it)."""
    # what sqlglot.parse_one(sql, read="duckdb") returns, from the tokens already made
    statements = _DUCKDB.parser().parse(_tokens(sql), sql)
    if not statements or statements[0] is None:
        raise sqlglot.errors.ParseError(f"No expression was parsed from '{sql}'")
    return exp.Block(expressions=statements) if len(statements) > 1 else statements[0]


@dataclass(frozen=True)
class _References:
    tables: tuple[exp.Table, ...]
    columns: frozenset[str]
    parameters: frozenset[str]


@functools.lru_cache(maxsize=256)
def _references(sql: str) -> _References:
    """The tables, column names and $parameters of `sql`, from one walk of its tree (a first run
    asked for them in about eight walks of each search's tree: six walks of the seven shipped
    searches took 0.042 CPU-s, this one 0.011)."""
    tables, columns, parameters = [], set(), set()
    for node in _parsed(sql).walk():
        if isinstance(node, exp.Table):
            tables.append(node)
        elif isinstance(node, exp.Column):
            columns.add(node.name)
        elif isinstance(node, exp.Placeholder):
            parameters.add(node.name)
    return _References(tuple(tables), frozenset(columns), frozenset(parameters))


def sql_parameters(sql: str) -> frozenset[str]:
    return _references(sql).parameters


def referenced_columns(sql: str) -> set[str]:
    return set(_references(sql).columns)


def referenced_tables(sql: str) -> set[str]:
    return {table.name for table in _references(sql).tables}


def single_model_select(sql: str, model: str) -> exp.Select | None:
    """The SELECT that reads `model` when the search reads it once, straight from a FROM with no join."""
    tables = [table for table in _references(sql).tables if table.name == model]
    if len(tables) != 1 or not isinstance(tables[0].parent, exp.From):
        return None
    select = tables[0].parent.parent
    if not isinstance(select, exp.Select) or select.args.get("joins"):
        return None
    return select


def snapshot_condition(sql: str, model: str) -> str | None:
    """The search's own parameter-free conditions on the rows it reads from `model`, if any.

    When the model is read once, straight from a FROM clause with no join, its WHERE conjuncts
    that use no parameter (`src_category = 'email_server'`) hold for every row that can matter
    at any fire time, so a catch-up snapshot may keep only those rows: same findings, fewer rows.
    """
    select = single_model_select(sql, model)
    if select is None or select.args.get("where") is None:
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
    return execute_sql(con, detection, sql, sql_parameters(sql), params)


def execute_sql(con: duckdb.DuckDBPyConnection, detection: Detection, sql: str, used: frozenset[str],
                params: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of `sql`, the detection's search or a rewrite of it (detections/ctes.py) that uses the
    parameters `used`."""
    missing = used - set(params)
    if missing:
        raise DetectionRunError(f"{detection.id}: the search uses undeclared parameters {sorted(missing)}")
    try:
        cursor = con.execute(sql, {name: params[name] for name in used})
    except duckdb.Error as exc:
        raise DetectionRunError(f"{detection.id}: the search failed: {exc}") from None
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def record_run(state: StateStore, detection: Detection, mode: str, window: RunWindow, count: int) -> int:
    with state.atomic() as db:
        cursor = db.execute(
            "INSERT INTO detection_runs (detection_id, mode, now, earliest, latest, findings) VALUES (?,?,?,?,?,?)",
            (detection.id, mode, window.now.isoformat(), window.earliest.isoformat(), window.latest.isoformat(), count),
        )
        return int(cursor.lastrowid)


def data_bounds(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings, model: str,
                need_first: bool = True) -> tuple[datetime | None, datetime | None]:
    """The first and last event time of a lake model (None, None when it holds nothing).

    Partitions are UTC days of `_time`, so the first time is in the first partition and the last
    in the last: only those files are read (and only the last's without `need_first`), so an
    hourly run does not open the files of a 90-day history to learn where its data ends."""
    data_model = get_model(model)
    days = state.query("SELECT min(day) AS first, max(day) AS last FROM batch_files WHERE model = ? "
                       "AND day GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'", (data_model.name,))[0]
    if days["last"] is None:
        return None, None

    def edge(aggregate: str, day: str) -> datetime | None:
        files = state.lake_files(data_model.name, day, day)
        value = con.execute(f"SELECT {aggregate}(_time) FROM ({parquet_source(data_model, files)})").fetchall()[0][0]
        return value.astimezone(timezone.utc) if value is not None else None

    first = edge("min", days["first"]) if need_first else None
    last = edge("max", days["last"])
    if (need_first and first is None) or last is None:  # a partition of rows without a time: read them all
        register_lake_views(con, settings, state)
        low, high = con.execute(f"SELECT min(_time), max(_time) FROM lake.{data_model.name}").fetchall()[0]
        first = low.astimezone(timezone.utc) if low is not None and need_first else None
        last = high.astimezone(timezone.utc) if high is not None else None
    return first, last
