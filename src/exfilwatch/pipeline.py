"""The pipeline: what runs at `now`, assembled in this one place.

    sessions that closed ─▶ detections whose cron fired ─▶ risk events ─▶ incident rules ─▶ delivery

`run` is the one function every front end calls: `exfilwatch run` (each missed fire time once, in
order), `exfilwatch detect` (each chosen detection once at `now`, with an optional window), the
demo, the detection tests (`exfilwatch test`), `backtest` (on a copy of the state) and the
service's scheduler. They differ only in `Options`. Every input is a parameter: `now`, the
settings (time zone included) and the detections; nothing reads the clock.

Read next: detections/schedule.py (which fires are due), features/sessions.py, risk/events.py,
incidents/correlation.py, outputs/deliver.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import duckdb

from exfilwatch.config import Settings
from exfilwatch.findings.catchup import (DAYS, SEGMENTS, RowsPerHour, SharedCtes, SharedLakeRows, batched_findings,
                                        batched_groups, create_days, create_group_segments, create_range_segments,
                                        drop_temp, judged_start, keep_segments, lake_rows, one_pass, release_ctes,
                                        release_shared, rename_temp, rows_per_hour, segment_groups,
                                        snapshot_with_daily_sums)
from exfilwatch.detections.batched import BatchedPlan, SegmentPlan, batched_plan, segment_plan
from exfilwatch.detections.ctes import CteKey, separable_keys, shared_keys
from exfilwatch.detections.overrides import disabled_detections, effective_settings
from exfilwatch.detections.runner import (RunWindow, compiled_sql, data_bounds, data_range, execute, record_run,
                                          referenced_columns, referenced_tables, resolve_parameters, run_window,
                                          snapshot_condition)
from exfilwatch.detections.schedule import DuePlan, due_fires, set_watermark, watermark
from exfilwatch.detections.schema import Detection
from exfilwatch.events.engine import expose_models, register_lake_views
from exfilwatch.features.sessions import BuildReport, build_user_sessions
from exfilwatch.findings.record import Finding, findings_from_rows
from exfilwatch.findings.store import StoreResult, store_findings
from exfilwatch.incidents.correlation import CorrelationResult, RiskEventTimeline, evaluate_fires
from exfilwatch.models import DATA_MODELS, get_model
from exfilwatch.outputs.deliver import DeliveryReport, deliver_pending
from exfilwatch.risk.events import RebuildResult, rebuild_risk_events, register_risk_events_view, techniques_by_detection
from exfilwatch.state import StateStore

# Progress of a long step: (what, done, total). A front end draws it; the pipeline only reports.
Progress = Callable[[str, int, int], None]

RISK_EVENTS = "risk_events"  # the view incident rules read, made from stored risk events
DERIVED_MODELS = ("user_sessions",)  # lake models computed from other models before detections read them
STATE_BATCH = 24  # fires whose runs, findings and watermark a catch-up writes in one transaction: a day of hourly fires


@dataclass
class Options:
    """What one call runs. The defaults are `exfilwatch run`."""

    mode: Literal["schedule", "once"] = "schedule"  # each missed fire time, or once at `now`
    detections: list[Detection] | None = None  # to run at step 2; None: every non-correlation detection
    since: datetime | None = None  # a first scheduled run catches up from here (else the start of the data)
    earliest: str | None = None  # `once` only: override the schedule's window
    latest: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # --set NAME=VALUE
    store: bool = True  # store findings and runs (the detection tests compare without storing twice)
    risk: bool = True  # rebuild risk events after the detections
    incident_rules: list[Detection] | None = None  # None: every correlation detection of the catalog
    deliver: bool = True
    techniques: dict[str, list[str]] = field(default_factory=dict)  # of detections outside the catalog (hand-built findings)
    # a SparkSession: build the sessions on Spark, and run `once` detections there (a schedule's
    # catch-up stays on DuckDB: it reads stored sessions and daily sums, see docs/scale.md)
    spark: Any = None
    progress: Progress | None = None
    # A schedule's missed fires: computed in one pass (findings/catchup.py), or each fire's
    # search run on its own, in order (the reference the one pass is tested against)
    catch_up: Literal["one-pass", "per-fire"] = "one-pass"


@dataclass
class DetectionRun:
    detection: Detection
    fires: int = 0
    skipped_fires: int = 0  # fires whose window held no data, skipped in bulk
    findings: list[Finding] = field(default_factory=list)
    stored: StoreResult = field(default_factory=StoreResult)
    window: RunWindow | None = None  # `once`: the window it ran over


@dataclass
class Result:
    sessions: BuildReport | None = None
    detections: list[DetectionRun] = field(default_factory=list)
    risk: RebuildResult | None = None
    incidents: list[CorrelationResult] = field(default_factory=list)
    deliveries: list[DeliveryReport] = field(default_factory=list)


def run(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings, catalog: list[Detection],
        now: datetime, options: Options | None = None) -> Result:
    """Run what is due at `now`: sessions, detections, risk, incident rules, delivery.

    `catalog` is every loaded detection: the risk step reads their ATT&CK techniques and runs
    their incident rules even when `options.detections` picks a few to run.
    """
    options = options or Options()
    result = Result()
    settings = effective_settings(state, settings)  # the console's overrides over config.yaml's
    disabled = disabled_detections(state)
    chosen = options.detections if options.detections is not None else [
        d for d in catalog if d.type != "correlation" and d.id not in disabled]
    if any(d.data_model in DERIVED_MODELS for d in chosen):
        _report(options, "sessions", 0, 1)
        result.sessions = build_user_sessions(con, state, settings, now, spark=options.spark)
        _report(options, "sessions", 1, 1)
    if any(d.data_model == RISK_EVENTS for d in chosen):  # a correlation run as a detection reads risk events
        rebuild_risk_events(state, settings, techniques_by_detection(catalog) | options.techniques, now)
    # A copy of a detection's lake rows is kept only when another detection of the run reads the
    # same model with the same condition (with the columns of all of them); the per-fire
    # reference reads its own
    sharing = options.mode != "once" and options.catch_up == "one-pass"
    reads = [_lake_read(d) if sharing and _reads_one_model(d) else None for d in chosen]
    shared = SharedLakeRows(columns=_shared_columns(reads))
    # CTEs that more than one detection of the run computes over the same rows are computed once
    # (findings/catchup.py SharedCtes); the per-fire reference computes each search's own
    held = [_cte_keys(d) if sharing else frozenset() for d in chosen]
    ctes = SharedCtes(keys=shared_keys(held))
    try:
        for index, detection in enumerate(chosen):
            if options.mode == "once":
                result.detections.append(_run_once(con, state, settings, detection, now, options))
            else:
                read = reads[index]
                shares = read is not None and (read[0], read[2]) in shared.columns
                result.detections.append(_catch_up(con, state, settings, detection, now, options,
                                                   shared if shares else None, ctes if held[index] & ctes.keys else None))
                release_ctes(con, ctes, keep=frozenset().union(*held[index + 1:]))
                # a copy no later detection reads is dropped now, not held through their catch-ups
                # (the sessions with their lists: 114,645 rows at 1000 users x 90 days)
                later = {(r[0], r[2]) for r in reads[index + 1:] if r is not None}
                if shared.key is not None and (shared.key[0], shared.key[1]) not in later:
                    release_shared(con, shared)
    finally:
        release_shared(con, shared)
        release_ctes(con, ctes)
    if options.risk:
        result.risk = rebuild_risk_events(state, settings, techniques_by_detection(catalog) | options.techniques, now)
        rules = options.incident_rules
        rules = rules if rules is not None else [d for d in catalog if d.type == "correlation" and d.id not in disabled]
        if rules:
            result.incidents = run_incident_rules(con, state, settings, rules, now, options.since, options.overrides,
                                                  options.catch_up)
        if options.deliver and settings.outputs:
            result.deliveries = deliver_pending(state, settings, now, catalog=catalog)
    return result


def _report(options: Options, what: str, done: int, total: int) -> None:
    if options.progress is not None:
        options.progress(what, done, total)


def _register_views(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings, detection: Detection,
                    start: datetime, end: datetime) -> None:
    if detection.data_model == RISK_EVENTS:
        register_risk_events_view(con, state, settings, start, end)
    else:
        register_lake_views(con, settings, state, start, end)
        model = get_model(detection.data_model).name
        condition = snapshot_condition(compiled_sql(detection), model)
        expose_models(con, filters={model: condition} if condition else None)


def _run_once(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings, detection: Detection,
              now: datetime, options: Options) -> DetectionRun:
    window = run_window(detection, now, settings.timezone, options.earliest, options.latest)
    params = resolve_parameters(detection, settings, options.overrides, window)
    if options.spark is not None:
        from exfilwatch.detections.spark import execute_spark

        rows = execute_spark(options.spark, state, settings, detection, params)
    else:
        _register_views(con, state, settings, detection, *data_range(params))
        rows = execute(con, detection, params)
    findings = findings_from_rows(detection, rows, settings.timezone)
    run = DetectionRun(detection, fires=1, findings=findings, window=window)
    if options.store:
        run_id = record_run(state, detection, "detect-spark" if options.spark is not None else "detect", window,
                            len(findings))
        run.stored = store_findings(state, findings, run_id)
    return run


def _lake_read(detection: Detection) -> tuple[str, list[str], str | None]:
    """What a catch-up reads of the lake for `detection`: its model, the columns it uses, the
    model condition of its search."""
    model = get_model(detection.data_model)
    known = set(model.column_names) | {name for name, _ in model.enrichment} | {"_day"}
    sql = compiled_sql(detection)
    return model.name, sorted((referenced_columns(sql) & known) | {"_time"}), snapshot_condition(sql, model.name)


def _reads_one_model(detection: Detection) -> bool:
    """Whether the search reads a lake model, and no other (a copy of its rows replaces only that)."""
    models = referenced_tables(compiled_sql(detection)) & set(DATA_MODELS)
    return detection.data_model in DATA_MODELS and models <= {get_model(detection.data_model).name}


def _shared_columns(reads: list[tuple[str, list[str], str | None] | None]) -> dict[tuple[str, str | None], list[str]]:
    """For each (model, condition) that more than one of these reads reads, every column they use."""
    by_rows: dict[tuple[str, str | None], list[list[str]]] = {}
    for read in reads:
        if read is not None:
            by_rows.setdefault((read[0], read[2]), []).append(read[1])
    return {rows: sorted(set().union(*columns)) for rows, columns in by_rows.items() if len(columns) > 1}


def _cte_keys(detection: Detection) -> frozenset[CteKey]:
    """The keys of the search's separable CTEs (detections/ctes.py)."""
    if detection.data_model not in DATA_MODELS:
        return frozenset()
    return separable_keys(compiled_sql(detection), get_model(detection.data_model).name)


def _catch_up(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings, detection: Detection,
              now: datetime, options: Options, shared: SharedLakeRows | None,
              ctes: SharedCtes | None = None) -> DetectionRun:
    """Run one detection at each fire time since its watermark, oldest first, reading the lake once
    (or not at all when the previous detection read the same rows: `shared`, given only when
    another detection of the run reads the same), and reading the CTEs it shares with other
    detections of the run from their results (`ctes`, given only when it holds some)."""
    tz = settings.timezone
    first, last = data_bounds(con, state, settings, detection.data_model,
                              need_first=options.since is None and watermark(state, detection.id) is None)

    resolved: dict[datetime, tuple[RunWindow, dict[str, Any]]] = {}  # each fire's, for the plan and the run

    def window_and_params(fire: datetime) -> tuple[RunWindow, dict[str, Any]]:
        if fire not in resolved:
            window = run_window(detection, fire, tz)
            resolved[fire] = window, resolve_parameters(detection, settings, options.overrides, window)
        return resolved[fire]

    def window_start(fire: datetime) -> datetime:
        return judged_start(detection, window_and_params(fire)[1])

    plan: DuePlan = due_fires(state, detection.id, detection.schedule.cron, now, tz, data_start=first, data_end=last,
                              window_start=window_start, since=options.since)
    run = DetectionRun(detection, fires=len(plan.fires), skipped_fires=plan.skipped)
    if plan.fires:
        windows = [window_and_params(fire)[0] for fire in plan.fires]
        params = [window_and_params(fire)[1] for fire in plan.fires]
        first_start = min(data_range(p)[0] for p in params)
        last_end = max(data_range(p)[1] for p in params)
        model = get_model(detection.data_model)
        sql = compiled_sql(detection)
        _, columns, condition = _lake_read(detection)
        segments = segment_plan(sql, model.name) if options.catch_up == "one-pass" else None
        # A batched form (detections/batched.py) runs a day of fires at once; one that breaks its
        # contract (`exfilwatch detections lint` says how) is ignored and the fires run one by one.
        batched = batched_plan(detection, sql, model.name)[0] if segments is not None else None
        if batched is not None:
            segments = batched.segments
        holding = None  # what a segment plan's snapshot holds, to take the previous detection's segments
        if segments is None:
            lake_rows(con, settings, state, model.name, columns, condition, first_start, last_end, shared)
        else:  # the days before those the fires cut into come from stored daily sums
            holding = snapshot_with_daily_sums(con, state, settings, segments, model.name, columns, condition, params,
                                               [judged_start(detection, p) for p in params], first_start, last_end,
                                               shared)
        # a fire is skipped only when no hour its judged window overlaps holds a row: it never hides one
        per_hour = rows_per_hour(con, model.name)
        without_rows = {index for index, param in enumerate(params)
                        if not per_hour.overlapping(judged_start(detection, param), param["latest"])}
        # Asked only where the answer is used: fires to skip, or a one pass by judged windows (it
        # chunks only searches silent without rows). The robust rule's check computed every host's
        # medians (0.15-0.17 CPU-s at 1000 x 30, a first run whose 720 fires all hold rows)
        asked = bool(without_rows) or segments is None
        silent_when_empty = asked and _silent_when_empty(con, detection, model.name, sql, params[-1])
        due = [index for index in range(len(params)) if not silent_when_empty or index not in without_rows]
        run.skipped_fires += len(params) - len(due)
        run.fires = len(due)
        if options.catch_up == "per-fire":
            found = ((i, findings_from_rows(detection, execute(con, detection, params[i]), tz)) for i in due)
        else:
            found = _one_pass(con, detection, model.name, params, due, silent_when_empty, first_start, tz, segments,
                              batched, per_hour, ctes, (model.name, condition, first_start, last_end),
                              shared, holding)
        done = 0
        for batch in _batched(found, STATE_BATCH):
            # Each fire's run, findings and watermark as if it had run alone, a batch of fires per
            # transaction: a killed run keeps whole fires, and the watermark is where they stop.
            with state.atomic():
                for index, findings in batch:
                    run_id = record_run(state, detection, "schedule", windows[index], len(findings))
                    stored = store_findings(state, findings, run_id)
                    run.stored.added += stored.added
                    run.stored.updated += stored.updated
                    run.stored.unchanged += stored.unchanged
                    run.findings.extend(findings)
                    set_watermark(state, detection.id, windows[index].now)
            done += len(batch)
            _report(options, detection.id, done, len(due))
        expose_models(con)
    if plan.last is not None:
        set_watermark(state, detection.id, plan.last)
    return run


def _silent_when_empty(con: duckdb.DuckDBPyConnection, detection: Detection, model: str, sql: str,
                       last_fire: dict[str, Any]) -> bool:
    """Whether a fire with no row where findings come from can be skipped: only if the search
    reads no other model and finds nothing without those rows (an aggregate without GROUP BY
    would still return a row). Asked once, of the last fire, without the rows it judges."""
    if not (referenced_tables(sql) & set(DATA_MODELS)) <= {model}:
        return False
    without_judged = f"_time < TIMESTAMPTZ '{judged_start(detection, last_fire).isoformat()}'"
    rename_temp(con, model, "_catch_up_snapshot")  # a view when shared (`lake_rows`)
    con.execute(f"CREATE TEMP VIEW {model} AS SELECT * FROM _catch_up_snapshot WHERE {without_judged}")
    try:
        return not execute(con, detection, last_fire)
    finally:
        con.execute(f"DROP VIEW temp.main.{model}")
        rename_temp(con, "_catch_up_snapshot", model)


def _one_pass(con: duckdb.DuckDBPyConnection, detection: Detection, model: str, params: list[dict[str, Any]],
              due: list[int], silent_when_empty: bool, start: datetime, tz: str, plan: SegmentPlan | None,
              batched: BatchedPlan | None, per_hour: RowsPerHour, ctes: SharedCtes | None = None,
              snapshot: tuple[Any, ...] = (), shared: SharedLakeRows | None = None,
              holding: Any = None) -> Iterator[tuple[int, list[Finding]]]:
    """(fire, its findings) for each due fire in order, from the snapshot `model` (findings/catchup.py).

    Judged windows are chunked over every fire, the skipped ones included (they hold no judged
    row, so they add nothing and keep the chunks long); decomposable aggregates run over segment
    sums, a group of fires per query with a batched form, else each fire on its own; any other
    search runs fire by fire. With `ctes`, judged-window searches read the CTEs they share with
    other detections of the run from their results over the same rows (`snapshot`: what
    `model` holds, as (model, condition, start, end)). With `shared` (another detection of the
    run reads the same lake rows), a batched form's segments are kept for it, and taken from the
    previous one when they are the same (`holding`: what `model` holds, findings/catchup.py
    `create_range_segments`)."""
    if plan is None:
        if silent_when_empty:
            yield from one_pass(con, detection, params, tz, set(due), per_hour, ctes, snapshot)
        else:
            yield from ((i, findings_from_rows(detection, execute(con, detection, params[i]), tz)) for i in due)
        return
    if not due:  # every fire fell where no judged row is (a hole in the data)
        return
    con.execute(f"ALTER TABLE temp.main.{model} RENAME TO _catch_up_rows")
    try:
        cut = create_range_segments(con, plan, "_catch_up_rows", [params[i] for i in due], start,
                                    max(params[i]["latest"] for i in due), tz, shared, holding)
        if batched is not None:  # the form reads every fire's segments at once: one query for the catch-up
            con.execute(f"CREATE TEMP VIEW {model} AS SELECT * FROM {SEGMENTS}")
            for group in batched_groups(batched, [params[i] for i in due]):
                fires = [params[due[i]] for i in group]
                yield from zip((due[i] for i in group), batched_findings(con, detection, batched, fires, tz))
            if shared is not None:  # the form left them as they were made
                drop_temp(con, model)
                keep_segments(con, shared, cut)
            return
        create_days(con, plan, tz)
        for group in segment_groups(due):
            fires = [params[due[i]] for i in group]
            create_group_segments(con, plan, model, fires, start, tz)
            for i, param in zip(group, fires):
                yield due[i], findings_from_rows(detection, execute(con, detection, param), tz)
    finally:
        for name in (model, "_catch_up_rows", SEGMENTS, DAYS):
            drop_temp(con, name)


def _batched(items: Iterator[tuple[int, list[Finding]]], size: int) -> Iterator[list[tuple[int, list[Finding]]]]:
    batch: list[tuple[int, list[Finding]]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_incident_rules(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings, rules: list[Detection],
                       now: datetime, since: datetime | None = None,
                       overrides: dict[str, Any] | None = None,
                       catch_up: Literal["one-pass", "per-fire"] = "one-pass") -> list[CorrelationResult]:
    """Each incident rule at every fire time since its watermark, over the stored risk events:
    the same schedule as detections (step 4 of `run`); `catch_up` as `Options.catch_up` (a rule's
    batched form, or each fire's own search: incidents/correlation.py `evaluate_fires`)."""
    events = RiskEventTimeline(con, state)
    tz = settings.timezone
    results = []
    for rule in rules:
        def window_start(fire: datetime, rule: Detection = rule) -> datetime:
            return data_range(resolve_parameters(rule, settings, overrides or {}, run_window(rule, fire, tz)))[0]

        plan = due_fires(state, rule.id, rule.schedule.cron, now, tz, data_start=events.first, data_end=events.last,
                         window_start=window_start, since=since)
        results.append(evaluate_fires(con, state, settings, rule, plan.fires, events, overrides, catch_up))
        if plan.last is not None:
            set_watermark(state, rule.id, plan.last)
    return results
