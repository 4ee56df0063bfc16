"""A catch-up in one pass: what running every due fire of a detection in order finds, computed in
chunks, with the findings of each fire kept apart so runs and watermarks are recorded as if each
fire had run. It lives in the findings stage because it turns a detection's rows into each fire's
findings (findings/record.py). The per-fire path (`pipeline.Options(catch_up="per-fire")`) is the reference; the
conformance tests (tests/test_catch_up.py) hold the two finding for finding.

Three shapes of search are sped up, all recognised from the detection's declaration and SQL,
never from a detection's id:

* **Judged windows** (`schedule.judged_from: earliest`, the session rules): each fire judges the
  rows that arrived in its own window [earliest, latest), and the windows of consecutive fires
  touch. A run of such fires whose time parameters all keep the same offset from `now` (a DST
  change breaks the run) is executed once with `earliest` of its first fire and the rest of its
  last; each finding goes to the fire whose window holds its time. A finding outside the chunk
  means the search does not keep that contract, and the chunk is run fire by fire instead. A
  chunk spans at most a week and judges at most CHUNK_ROWS rows (a large organisation's week
  makes joins of millions of rows, where DuckDB's aggregates slow down twentyfold).
  Detections of one run that read the same model with the same condition over the same range
  (the four EM rules) read it from the lake once (`lake_rows`, `SharedLakeRows`), and compute
  the CTEs their searches hold alike (same text, parameter values and rows; recognised in
  detections/ctes.py) once per chunk: the first computes each as a temp table, the next read it
  (`SharedCtes`, `search_sharing`; the four EM rules' domain-novelty CTEs).
* **Decomposable aggregates** (the network rules, `judged_from: today`; the shape is recognised
  in detections/batched.py `segment_plan`): the search reads its model once, in a `GROUP BY`
  whose only uses of non-key columns are `sum`/`min`/`max` of a column and whose only use of
  `_time` is comparisons with parameters (or `least`/`greatest` of them). Rows are then summed
  per key and per segment between consecutive parameter values (`create_range_segments`: every
  fire's bounds and every local midnight), and the search runs over those segments: every
  comparison of `_time` with a parameter value is the same for every row of a segment, and a sum
  of sums is the sum. The lake's rows are read already summed that way (`lake_segments`, each
  row's segment found by a hash join on its hour, `create_cut_sums`), never as a table of rows.
  Fires are taken in groups (`create_group_segments`): the days a group's
  bounds cut inside are read as segments, every other day as one row per key and day. Those
  days' sums are kept between runs (findings/dailysums.py, `snapshot_with_daily_sums`): a run
  reads from the lake only the days its fires cut into, and the rest of the baseline from the
  stored sums, summed again from the lake where their files changed (late rows). Within one run,
  a detection that reads the lake rows the previous one read (`lake_segments`, `SharedLakeRows`:
  the robust rule after `hosts_receiving…`) copies their segments instead, and takes the
  SEGMENTS the previous one cut when they hold the same from its start (`keep_segments`).
* **A batched form** (`catch_up.search` in the detection, the contract in detections/batched.py,
  checked by `exfilwatch detections lint`): the search's findings for every fire of the catch-up
  in one query over the whole catch-up's segments (SEGMENTS) and the temp table `fires`, one row
  per fire with its parameters as columns. The form keys its work by fire and by what fires
  share (the judged day and the baseline's start, both `fires` columns): the shipped forms take
  each host's whole past days from running sums over its day rows (a lookup per baseline and
  host, not a re-sum of 28-30 days per day of fires) and each fire's part of the judged day from
  running sums over the day's segments in time order, read at its `latest` (a lookup per fire
  and host that can fire, not a re-sum of the segments before it). Fires are grouped only while the values of the form's
  `$parameter` terms stay equal (`batched_groups`; the shipped forms' `$` terms are thresholds,
  so one group). Nothing of a baseline is kept from one run to the next but the stored daily
  sums, so a late row in a past day reaches the next run's baseline. A search without a form
  (or whose form breaks the contract) runs fire by fire over segments re-cut per day of fires.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import accumulate
from typing import Any

import duckdb
from exfilwatch.config import Settings
from exfilwatch.events.engine import expose_models, local_day_sql, register_lake_views
from exfilwatch.findings import dailysums
from exfilwatch.detections.batched import (FIRES, BatchedPlan, SegmentPlan, bound_value, fire_values, group_key,
                                            rows_select)
from exfilwatch.detections.ctes import CteKey, closure_parameters, search_ctes
from exfilwatch.detections.runner import (DetectionRunError, compiled_sql, data_range, execute, execute_sql,
                                          resolve_parameters, run_window)
from exfilwatch.detections.schedule import iter_fire_times
from exfilwatch.detections.schema import Detection
from exfilwatch.findings.record import Finding, findings_from_rows
from exfilwatch.models import get_model
from exfilwatch.state import StateStore
from exfilwatch.timeexpr import epoch_us

# A chunk spans at most a month of fires: a first run over a small organisation's month of mail
# is one search per rule. Against 7 days, the four EM rules took 2.73 against 3.42 CPU-s at 1000
# users x 30 days (medians of 3 alternated rounds: with their CTEs shared, each extra chunk is a
# search's fixed work again), 16.1 against 16.9 at 1000 x 90 and 56.8 against 54.7 at 3000 x 90
# (one run each, load 10-12), with the same peak RSS; larger organisations reach CHUNK_ROWS first.
CHUNK_SPAN = timedelta(days=31)  # with CHUNK_ROWS, bounds a chunk's joins (sessions judged x their history)
# A chunk also stops before it judges more rows than this. Measured on one chunk of EM-BSum at
# 10,000 users x 90 days (docs/benchmarks.md, "Seventh round"): a week's 93,650 sessions took
# 4.9 CPU-s with DuckDB's memory_limit at 16 GB, 11.8 at 1 GB, but 108-184 at 2, 4 and 8 GB
# (its holistic aggregates over 6 M history rows fall off a cliff), while four days (about
# 42,800 sessions) took 4.0 at 4 GB. At 1000 and 3000 users a week holds 9,500 and 28,000.
CHUNK_ROWS = 40_000
Search = Callable[[dict[str, Any]], list[dict[str, Any]]]  # a search's rows at given parameters
GROUP_FIRES = 24  # fires sharing one segment table (a search without a batched form): a day of hourly fires


def judged_start(detection: Detection, params: dict[str, Any]) -> datetime:
    """Where the rows a finding can come from begin: the declared `judged_from`, else the window's start."""
    judged = detection.schedule.judged_from
    return params[judged] if judged else data_range(params)[0]


def fires_judging(detection: Detection, settings: Settings, overrides: dict[str, Any], start: datetime,
                  end: datetime) -> list[dict[str, Any]]:
    """The parameters of the schedule's fires, in order, whose judged windows overlap [start, end)."""
    # A fire judges rows before it: begin a day early and stop once a window starts past `end`.
    params = []
    for fire in iter_fire_times(detection.schedule.cron, start - timedelta(days=1), end + timedelta(days=2),
                                settings.timezone):
        param = resolve_parameters(detection, settings, overrides, run_window(detection, fire, settings.timezone))
        if judged_start(detection, param) >= end:
            break
        if param["latest"] > start:
            params.append(param)
    return params


def judged_chunks(detection: Detection, params: list[dict[str, Any]], rows: list[int] | None = None,
                  max_rows: int | None = None) -> list[list[int]]:
    """The fires (indexes into `params`, in order) that can run as one search, chunk by chunk.

    Without `judged_from: earliest` every fire is its own chunk (the per-fire path). With `rows`
    (how many rows each fire judges, `judged_rows`), a chunk also ends before it would judge more
    than `max_rows` (CHUNK_ROWS); a fire that alone judges more is a chunk of its own.
    """
    if detection.schedule.judged_from != "earliest":
        return [[i] for i in range(len(params))]
    limit = CHUNK_ROWS if max_rows is None else max_rows
    chunks: list[list[int]] = []
    held = 0
    for index, param in enumerate(params):
        size = rows[index] if rows is not None else 0
        if chunks and _continues(params[chunks[-1][0]], params[chunks[-1][-1]], param) and held + size <= limit:
            chunks[-1].append(index)
            held += size
        else:
            chunks.append([index])
            held = size
    return chunks


@dataclass(frozen=True)
class RowsPerHour:
    """How many rows a table holds in each UTC hour that has some: `hours` (since the epoch, in
    order) and `before[i]`, the rows in the hours before hours[i] (one more entry: all rows)."""

    hours: list[int]
    before: list[int]

    def overlapping(self, start: datetime, end: datetime) -> int:
        """The rows in the hours that overlap [start, end): at least those in [start, end)."""
        first = int(start.timestamp() // 3600)
        after = -int(-end.timestamp() // 3600)  # the first hour wholly at or after `end`
        return self.before[bisect.bisect_left(self.hours, after)] - self.before[bisect.bisect_left(self.hours, first)]


def rows_per_hour(con: duckdb.DuckDBPyConnection, table: str) -> RowsPerHour:
    """The rows of `table` per UTC hour, from one count per hour."""
    counts = con.execute(f"SELECT epoch_us(_time) // 3600000000 AS h, count(*) FROM {table} "
                         "WHERE _time IS NOT NULL GROUP BY h ORDER BY h").fetchall()
    return RowsPerHour([hour for hour, _ in counts], list(accumulate((n for _, n in counts), initial=0)))


def judged_rows(detection: Detection, params: list[dict[str, Any]], per_hour: RowsPerHour) -> list[int]:
    """For each fire of `params`, the rows of the detection's model in the hours its judged window
    overlaps (at least the rows it judges): what sizes its chunk."""
    return [per_hour.overlapping(judged_start(detection, param), param["latest"]) for param in params]


def _continues(first: dict[str, Any], previous: dict[str, Any], param: dict[str, Any]) -> bool:
    if param["earliest"] != previous["latest"] or param["latest"] - first["earliest"] > CHUNK_SPAN:
        return False
    return _shape(param) == _shape(previous)


def _shape(param: dict[str, Any]) -> dict[str, Any]:
    """The parameters as the search sees them relative to `now`: equal for fires one chunk may merge."""
    return {name: (param["now"] - value) if isinstance(value, datetime) else value
            for name, value in param.items() if name != "today"}


def chunk_findings(con: duckdb.DuckDBPyConnection, detection: Detection, params: list[dict[str, Any]],
                   tz: str, search: Search | None = None) -> list[list[Finding]] | None:
    """The findings of each fire of one chunk (from `judged_chunks`), from one execution of the
    search (by `search`, given the merged parameters, when the caller shares CTEs; else the
    detection's own SQL); None when a finding falls outside every fire's window (run those fires
    one by one)."""
    search = search or (lambda param: execute(con, detection, param))
    if len(params) == 1:
        return [findings_from_rows(detection, search(params[0]), tz)]
    merged = dict(params[-1], earliest=params[0]["earliest"])
    starts = [p["earliest"] for p in params]
    per_fire: list[list[Finding]] = [[] for _ in params]
    for finding in findings_from_rows(detection, search(merged), tz):
        try:
            when = datetime.fromisoformat(finding.time)
        except (TypeError, ValueError):
            return None
        index = bisect.bisect_right(starts, when) - 1
        if index < 0 or when >= params[index]["latest"]:
            return None
        per_fire[index].append(finding)
    return per_fire


def one_pass(con: duckdb.DuckDBPyConnection, detection: Detection, params: list[dict[str, Any]], tz: str,
             due: set[int] | None = None, per_hour: RowsPerHour | None = None,
             shared: SharedCtes | None = None, snapshot: Hashable = None) -> Iterator[tuple[int, list[Finding]]]:
    """(fire index, its findings) for every fire of `params` (or only those in `due`), in order,
    over the views registered, in chunks of at most CHUNK_ROWS judged rows (counted from
    `per_hour`, the model's rows per hour, when the caller has them). Fires not due must hold no
    judged row: a finding there makes the chunk run fire by fire. With `shared`, each chunk's
    search reads the CTEs other detections of the run share from their results over the same
    rows (`snapshot`: what the model's temp table holds), computing those not yet there."""
    search = None if shared is None else (lambda param: search_sharing(con, detection, param, shared, snapshot))
    rows = None
    if detection.schedule.judged_from == "earliest":
        per_hour = per_hour or rows_per_hour(con, get_model(detection.data_model).name)
        rows = judged_rows(detection, params, per_hour)
    for chunk in judged_chunks(detection, params, rows):
        wanted = [i for i in chunk if due is None or i in due]
        if not wanted:
            continue
        found = chunk_findings(con, detection, [params[i] for i in chunk], tz, search)
        if found is not None and all(not f for i, f in zip(chunk, found) if i not in wanted):
            yield from ((i, f) for i, f in zip(chunk, found) if i in wanted)
        else:
            yield from ((i, findings_from_rows(detection, execute(con, detection, params[i]), tz)) for i in wanted)


@dataclass
class SharedCtes:
    """CTE results that detections of one run share (detections/ctes.py), as temp tables.

    `keys` (set by the run): the separable CTEs that more than one of its detections holds. A
    result is keyed by its CTE's key, its parameters' values and the rows it was computed from,
    so a detection whose copy of a CTE has another parameter value (or that reads other rows)
    computes its own. The four EM rules' domain-novelty CTEs, computed by the first: the other
    three rules' catch-up took 34.5-38.5 CPU-s instead of 84.6-96.6 at 10,000 users x 90 days
    (docs/benchmarks.md, "Eighth round"). Their results are small (1,908 and 0 rows for a chunk
    of 28,261 sessions at 3000 users), so a run keeps every chunk's until the last detection
    holding them has run (`release_ctes`)."""

    keys: frozenset[CteKey] = frozenset()
    tables: dict[tuple[Any, ...], str] = field(default_factory=dict)
    unshared: set[CteKey] = field(default_factory=set)  # computed within each search (see KEPT_ROWS)
    made: int = 0  # tables created in the run: names them


# A result is kept for the next detections only up to this many rows; past it, the CTE is computed
# within each search from then on. The domain-novelty results are at most a row per judged session
# (a chunk judges at most CHUNK_ROWS); a copy of a rule would otherwise keep its `history` (each
# judged session paired with its 90 days: 1.8 M rows for one chunk at 3000 users) for every chunk.
KEPT_ROWS = 2 * CHUNK_ROWS


def search_sharing(con: duckdb.DuckDBPyConnection, detection: Detection, param: dict[str, Any], shared: SharedCtes,
                   snapshot: Hashable) -> list[dict[str, Any]]:
    """The rows of the detection's search at `param`, its CTEs in `shared.keys` read from the
    run's tables (computed first when no detection has yet: the same query as the search's own
    CTE and those it reads, over the same rows)."""
    sql = compiled_sql(detection)
    ctes = search_ctes(sql, get_model(detection.data_model).name)
    to_compute = ctes.to_compute(shared.keys - shared.unshared) if ctes is not None else []
    if not to_compute:
        return execute(con, detection, param)
    tables: dict[str, str] = {}
    once: list[str] = []  # too large to keep: read by this search only
    try:
        for cte in to_compute:
            used = closure_parameters(ctes, cte)
            # the type too: 35 and 35.0 are equal in Python, an INTEGER and a DOUBLE to DuckDB
            key = (cte.key, tuple((name, type(param[name]).__name__, param[name]) for name in sorted(used)), snapshot)
            if key not in shared.tables:
                name = f"_shared_cte_{shared.made}"
                shared.made += 1
                query, reads = ctes.with_tables(tables, select=cte.name)
                con.execute(f"CREATE TEMP TABLE {name} AS {query}", {p: param[p] for p in reads})
                if con.execute(f"SELECT count(*) FROM {name}").fetchone()[0] > KEPT_ROWS:
                    shared.unshared.add(cte.key)
                    once.append(name)
                else:
                    shared.tables[key] = name
            tables[cte.name] = shared.tables.get(key) or once[-1]
        query, used = ctes.with_tables(tables)
        return execute_sql(con, detection, query, used, param)
    except (duckdb.Error, DetectionRunError):
        # a rewrite DuckDB refuses (or a search that fails anyway): the search's own SQL says
        # which, and these CTEs are computed within each search from then on
        shared.unshared.update(c.key for c in to_compute)
        return execute(con, detection, param)
    finally:
        for name in once:
            drop_temp(con, name)


def release_ctes(con: duckdb.DuckDBPyConnection, shared: SharedCtes, keep: frozenset[CteKey] = frozenset()) -> None:
    """Drop the results of CTEs whose key is not in `keep` (what the detections still to run hold)."""
    for key, name in list(shared.tables.items()):
        if key[0] not in keep:
            drop_temp(con, name)
            del shared.tables[key]


# --- decomposable aggregates -------------------------------------------------------------------


def batched_groups(plan: BatchedPlan, params: list[dict[str, Any]]) -> list[list[int]]:
    """Positions of `params` in runs of consecutive fires whose batched form's `$` terms have equal
    values: one run for a form whose fires differ only in `fires` columns (the shipped forms,
    whose `$` terms are the detection's thresholds), a run per day for one that reads `$today`."""
    groups: list[list[int]] = []
    previous = None
    for index, param in enumerate(params):
        key = group_key(plan, param)
        if groups and key == previous:
            groups[-1].append(index)
        else:
            groups.append([index])
        previous = key
    return groups


def batched_rows(con: duckdb.DuckDBPyConnection, plan: BatchedPlan,
                 params: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The search's rows of each fire of one group (from `batched_groups`), from one execution of
    the detection's batched form over the views registered and a temp table `fires` of these fires."""
    rows = [{"fire": index, **fire_values(param)} for index, param in enumerate(params)]
    con.execute(f"DROP TABLE IF EXISTS temp.main.{FIRES}")
    select, columns = rows_select(rows)
    con.execute(f"CREATE TEMP TABLE {FIRES} AS {select}", columns)
    try:
        cursor = con.execute(plan.sql, {name: params[0][name] for name in plan.parameters})  # terms are equal in a group
        names = [d[0] for d in cursor.description]
        per_fire: list[list[dict[str, Any]]] = [[] for _ in params]
        for values in cursor.fetchall():
            row = dict(zip(names, values))
            per_fire[row.pop("fire")].append(row)
    finally:
        con.execute(f"DROP TABLE IF EXISTS temp.main.{FIRES}")
    return per_fire


def batched_findings(con: duckdb.DuckDBPyConnection, detection: Detection, plan: BatchedPlan,
                     params: list[dict[str, Any]], tz: str) -> list[list[Finding]]:
    """The findings of each fire of one group (from `batched_groups`), from `batched_rows`."""
    return [findings_from_rows(detection, fire_rows, tz) for fire_rows in batched_rows(con, plan, params)]


def segment_groups(fires: list[Any]) -> list[list[int]]:
    """Positions of `fires` in groups sharing one segment table: a day of hourly fires each."""
    return [list(range(i, min(i + GROUP_FIRES, len(fires)))) for i in range(0, len(fires), GROUP_FIRES)]


def rename_temp(con: duckdb.DuckDBPyConnection, name: str, to: str) -> None:
    """Rename the temp table or view `name` to `to` (DuckDB renames each by its own statement)."""
    try:
        con.execute(f"ALTER TABLE temp.main.{name} RENAME TO {to}")
    except duckdb.CatalogException:
        con.execute(f"ALTER VIEW temp.main.{name} RENAME TO {to}")


def drop_temp(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop the temp table or view `name`, if there is one (DuckDB refuses to drop one as the other)."""
    for kind in ("TABLE", "VIEW"):
        try:
            con.execute(f"DROP {kind} IF EXISTS temp.main.{name}")
        except duckdb.CatalogException:
            pass


CUT_PARTS = "_catch_up_cut_parts"  # the segments between cuts, split into the hours a row's segment is looked up by
_BUCKET = timedelta(hours=1)
_BUCKET_US = 3_600_000_000


def cut_parts(cuts: list[datetime], end: datetime) -> list[dict[str, Any]]:
    """The segments between consecutive `cuts` (sorted; the last one ends at `end`), each split
    where a whole hour since the first cut ends: (bucket, lo, hi, cut) with `bucket` the hours
    since the first cut at `lo`, so that a row at `_time` lies in the part of its own bucket with
    lo <= _time < hi, and its segment starts at `cut`."""
    origin, parts = cuts[0], []
    bounds = [*cuts, max(end, cuts[-1])]
    for cut, following in zip(bounds, bounds[1:]):
        lo = cut
        while lo < following:
            bucket = (lo - origin) // _BUCKET
            hi = min(following, origin + (bucket + 1) * _BUCKET)
            parts.append({"bucket": bucket, "lo": lo, "hi": hi, "cut": cut})
            lo = hi
    return parts


def create_cut_sums(con: duckdb.DuckDBPyConnection, rows: str, keys: list[str], aggregates: dict[str, str],
                    cuts: list[datetime], end: datetime, target: str, *, dated_by_first_row: bool = False,
                    day_of_cut: str | None = None, types: dict[str, str] | None = None) -> None:
    """Temp table `target`: the rows of relation `rows` with `_time` in [cuts[0], end) summed (or
    minimised, maximised) per key and per segment between consecutive `cuts` (sorted, distinct),
    each dated by the cut it starts at or, `dated_by_first_row`, by the time of its first row
    (which, like the cut, compares with every cut as each of its rows does, and falls in the UTC
    hour of a row: `rows_per_hour` then finds an hour with rows only where the rows have one).

    A row's segment is found by an equality join on its hour since the first cut with the parts of
    the segments in that hour (`cut_parts`, a few thousand rows), which DuckDB hashes: an ASOF join
    with the cuts sorts every row first (at 3000 users x 90 days, 7.4 M flows: 5.2-6.1 CPU-s for
    the ASOF join of the rows read, against 3.3-4.2 for the lake read, join and sums together).
    With `day_of_cut` (a time zone; every local midnight in the range must be a cut), the key
    `_day` is the local day of the segment's cut, not read per row. `types` casts the sums back to
    the rows' own types (a sum of BIGINT is a HUGEINT), so that sums of these sums are typed as
    sums of the rows."""
    origin = epoch_us(cuts[0])
    drop_temp(con, CUT_PARTS)
    con.execute(f"CREATE TEMP TABLE {CUT_PARTS} (bucket BIGINT, lo TIMESTAMPTZ, hi TIMESTAMPTZ, cut TIMESTAMPTZ)")
    parts = cut_parts(cuts, end)
    if parts:
        select, columns = rows_select(parts)
        con.execute(f"INSERT INTO {CUT_PARTS} {select}", columns)
    if day_of_cut is not None:  # once per part, not per segment: at 3000 users x 90 days the time
        # zone conversions of 3.9 M segments took a sixth of the read's operator time
        con.execute(f"ALTER TABLE {CUT_PARTS} ADD COLUMN day TIMESTAMPTZ")
        con.execute(f"UPDATE {CUT_PARTS} SET day = {local_day_sql('cut', day_of_cut)}")
    selected, grouped = [], []
    for key in keys:
        if key == "_day" and day_of_cut is not None:
            selected.append('p.day AS "_day"')
            grouped.append("p.day")
        else:
            selected.append(f'r."{key}"')
            grouped.append(f'r."{key}"')
    sums = []
    for column, kind in aggregates.items():
        total = f'{kind}(r."{column}")'
        sums.append(f'CAST({total} AS {types[column]}) AS "{column}"' if types else f'{total} AS "{column}"')
    dated = "min(r._time)" if dated_by_first_row else "p.cut"
    drop_temp(con, target)
    try:
        con.execute(
            f"CREATE TEMP TABLE {target} AS SELECT {', '.join([*selected, f'{dated} AS _time', *sums])} "
            f"FROM {rows} r JOIN {CUT_PARTS} p ON p.bucket = (epoch_us(r._time) - {origin}) // {_BUCKET_US} "
            f"AND r._time >= p.lo AND r._time < p.hi GROUP BY {', '.join([*grouped, 'p.cut'])}")
    finally:
        drop_temp(con, CUT_PARTS)


def create_segments(con: duckdb.DuckDBPyConnection, plan: SegmentPlan, rows: str, target: str,
                    params: list[dict[str, Any]], start: datetime, extra_cuts: list[datetime] | None = None) -> None:
    """Temp table `target`: the rows of relation `rows` summed per key and per segment between the
    `_time` bounds of these fires (and `extra_cuts`; the first segment starts at the first cut,
    `start` or before it, and the last runs to the last row), each dated by its start."""
    cut_rows(con, plan, rows, target, segment_cuts(plan, params, start, extra_cuts))


def segment_cuts(plan: SegmentPlan, params: list[dict[str, Any]], start: datetime,
                 extra_cuts: list[datetime] | None = None) -> list[datetime]:
    """Where `create_segments` cuts: `start`, `extra_cuts` and the `_time` bounds of these fires, in order."""
    return sorted({start, *(extra_cuts or [])} | {bound_value(b, p) for b in plan.bounds for p in params})


def cut_rows(con: duckdb.DuckDBPyConnection, plan: SegmentPlan, rows: str, target: str, cuts: list[datetime]) -> None:
    last = con.execute(f"SELECT max(_time) FROM {rows}").fetchall()[0][0]
    end = cuts[-1] if last is None else max(cuts[-1], last + timedelta(microseconds=1))
    create_cut_sums(con, rows, plan.keys, plan.aggregates, cuts, end, target)


SEGMENTS = "_catch_up_segments"  # the catch-up's rows cut at every fire's bounds and every local midnight
DAYS = "_catch_up_days"  # the same summed per key and local day


def create_range_segments(con: duckdb.DuckDBPyConnection, plan: SegmentPlan, rows: str, params: list[dict[str, Any]],
                          start: datetime, end: datetime, tz: str, shared: SharedLakeRows | None = None,
                          holding: Hashable = None) -> Hashable:
    """Temp table SEGMENTS over the rows of relation `rows`: what a batched form reads, and what
    `create_days` sums for `create_group_segments`. Every local midnight is a cut, so that no
    segment spans two days. Returns what SEGMENTS holds, for `keep_segments`.

    With `shared` and `holding` (what `rows` holds from `start` on, `snapshot_with_daily_sums`),
    SEGMENTS are taken from those the previous detection of the run kept (`keep_segments`) when
    it cut the same rows by the same keys and sums at the same cuts from `start` on: the robust
    rule cuts the flows `hosts_receiving…` cut, its baseline two days shorter (0.11 CPU-s of its
    0.67 at 1000 users x 30 days, a first run)."""
    midnights = [begin for _day, begin, _end in dailysums.local_days(dailysums.midnight_at_or_before(start, tz),
                                                                     end + timedelta(days=2), tz) if begin > start]
    cuts = segment_cuts(plan, params, start, midnights)
    what = (holding, tuple(plan.keys), tuple(plan.aggregates.items()))
    if shared is not None and shared.segments is not None:
        held, held_cuts = shared.segments
        if held == what and holding is not None and [c for c in held_cuts if c >= start] == cuts:
            con.execute(f"DELETE FROM {SHARED_SEGMENTS} WHERE _time < TIMESTAMPTZ '{start.isoformat()}'")
            con.execute(f"ALTER TABLE temp.main.{SHARED_SEGMENTS} RENAME TO {SEGMENTS}")
            shared.segments = None
            return what, tuple(cuts)
        release_segments(con, shared)
    # Unordered: a batched form reads them all at once; `create_days` orders them for the groups
    cut_rows(con, plan, rows, SEGMENTS, cuts)
    return what, tuple(cuts)


def keep_segments(con: duckdb.DuckDBPyConnection, shared: SharedLakeRows, segments: Hashable) -> None:
    """Keep SEGMENTS (as `create_range_segments` made them, `segments` its answer) for the next
    detection of the run, in place of any kept before: one set at a time."""
    release_segments(con, shared)
    con.execute(f"ALTER TABLE temp.main.{SEGMENTS} RENAME TO {SHARED_SEGMENTS}")
    shared.segments = segments


def release_segments(con: duckdb.DuckDBPyConnection, shared: SharedLakeRows) -> None:
    drop_temp(con, SHARED_SEGMENTS)
    shared.segments = None


def create_days(con: duckdb.DuckDBPyConnection, plan: SegmentPlan, tz: str) -> None:
    """Temp table DAYS: SEGMENTS summed per key and local day, for `create_group_segments` (a
    batched form reads SEGMENTS alone and needs neither), and SEGMENTS put in time order: a group
    reads a month of both, and DuckDB skips the row groups outside it."""
    con.execute(f"ALTER TABLE temp.main.{SEGMENTS} RENAME TO _catch_up_unordered")
    con.execute(f"CREATE TEMP TABLE {SEGMENTS} AS SELECT * FROM _catch_up_unordered ORDER BY _time")
    con.execute("DROP TABLE temp.main._catch_up_unordered")
    keys = "".join(f'"{k}", ' for k in plan.keys)
    aggregates = ", ".join(f'{kind}("{c}") AS "{c}"' for c, kind in plan.aggregates.items())
    con.execute(f"CREATE OR REPLACE TEMP TABLE {DAYS} AS SELECT {keys}{local_day_sql('_time', tz)} AS _time, "
                f"{aggregates} FROM {SEGMENTS} GROUP BY ALL ORDER BY _time")


def create_group_segments(con: duckdb.DuckDBPyConnection, plan: SegmentPlan, target: str,
                          params: list[dict[str, Any]], start: datetime, tz: str) -> None:
    """Temp table `target`: the rows these fires read, as segments
    cut at least at their bounds — the days they cut inside from SEGMENTS (cut at every fire's
    bounds), every other day as one row per key from DAYS (no bound of theirs falls inside it, so
    each of its rows compares with every bound as its midnight does). A group's work grows with
    the days it reads, not with the fires of the whole catch-up."""
    cuts = {start} | {bound_value(b, p) for b in plan.bounds for p in params}
    inside = sorted({dailysums.midnight_at_or_before(c, tz) for c in cuts if not dailysums.is_midnight(c, tz)})

    def at(instant: datetime) -> str:
        return f"TIMESTAMPTZ '{instant.isoformat()}'"

    days_cut = " OR ".join(f"(_time >= {at(day)} AND _time < {at(dailysums.next_midnight(day, tz))})"
                           for day in inside) or "false"
    not_cut = f"_time NOT IN ({', '.join(at(day) for day in inside)})" if inside else "true"
    drop_temp(con, target)
    con.execute(f"CREATE TEMP TABLE {target} AS "
                f"SELECT * FROM {DAYS} WHERE {not_cut} UNION ALL BY NAME SELECT * FROM {SEGMENTS} WHERE {days_cut}")


def snapshot_with_daily_sums(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings, plan: SegmentPlan,
                             model: str, columns: list[str], condition: str | None, params: list[dict[str, Any]],
                             judged: list[datetime], start: datetime, end: datetime,
                             shared: SharedLakeRows | None = None) -> Hashable:
    """Temp table `model`: the rows a catch-up of these fires reads, [start, end) — the lake's rows
    from the first local midnight where a fire cuts inside a day (or judges, or a day is not
    whole), summed per key between every cut of these fires (`lake_segments`), and stored daily
    sums before it (summed again from the lake first where stale). With `shared`, the lake's
    segments are taken from the previous detection of the run when it read the same ones.

    Before returning, every whole day the last fire has finished judging is stored, so that the
    next run reads it from here. Returns what the table holds from any `start` on: equal for
    two catch-ups of one run whose tables hold the same rows from where both start."""
    tz = settings.timezone
    definition = dailysums.definition_key(model, plan.keys, plan.aggregates, condition, settings)
    cuts = {bound_value(b, p) for b in plan.bounds for p in params} | {start}
    inside_days = [c for c in cuts if not dailysums.is_midnight(c, tz)]
    horizon = max(start, dailysums.midnight_at_or_before(min([*inside_days, *judged, end]), tz))
    keep_until = dailysums.midnight_at_or_before(min(judged[-1], end), tz)
    whole = dailysums.local_days(start, max(horizon, keep_until), tz)
    signature_of = dailysums.signatures(state, model, whole)
    have = dailysums.stored(state, definition, signature_of)
    current = {day for day, (signature, _path) in have.items() if signature == signature_of[day]}
    summed = [d for d in whole if d[2] <= horizon]
    stale = [d for d in summed if d[0] not in current]
    for run in _consecutive(stale):  # read again from the lake only the days whose files changed (or never summed)
        register_lake_views(con, settings, state, run[0][1], run[-1][2])
        expose_models(con, {model: (columns, run[0][1], run[-1][2])}, condition)
        dailysums.write_days(con, state, definition, model, plan.keys, plan.aggregates, _types(con, model), run,
                             signature_of, tz)
    lake_segments(con, settings, state, model, plan, condition, judged_window_cuts(cuts, judged), horizon, end, shared)
    finished = [d for d in whole if d[1] >= horizon and d[0] not in current]
    dailysums.write_days(con, state, definition, model, plan.keys, plan.aggregates, _types(con, model), finished,
                         signature_of, tz)
    paths = dailysums.stored(state, definition, [d[0] for d in summed])
    stored_sql = dailysums.read_sql([paths[d[0]][1] for d in summed])
    if stored_sql:
        con.execute(f"INSERT INTO temp.main.{model} BY NAME {stored_sql}")
    return definition, horizon, end


def judged_window_cuts(bounds: set[datetime], judged: list[datetime]) -> list[datetime]:
    """Where to cut the lake's rows so that, dated by its first row, a segment table has a row in
    the same UTC hours as the rows for every fire's judged window: the fires' bounds (with their
    `latest`), each fire's judged start, and the start of the UTC hour it falls in (else a
    segment reaching back past that hour would move the rows just before a judged start that is
    not on the hour out of the window's first hour). `rows_per_hour` then skips the fires the
    rows would skip."""
    hours = {j.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0) for j in judged}
    return sorted(bounds | set(judged) | hours)


SHARED_LAKE = "_catch_up_shared_lake"  # the lake's rows a detection read, for the next ones that read the same
SHARED_SEGMENTS = "_catch_up_shared_segments"  # the SEGMENTS a detection cut, for the next one that cuts the same


@dataclass
class SharedLakeRows:
    """Which lake rows the temp table SHARED_LAKE holds, within one `run`: what a detection read
    (model, condition, range) with `held` columns, kept for the next detections that read the same
    rows. `columns` (set by the run) names, for each (model, condition) that more than one of its
    detections reads, every column they use: the first reads them all, the others copy their own.
    The four EM rules read the same sessions with different columns (0.45-0.75 CPU-s each at
    1000 x 90 days, a copy of a rule's columns 0.06-0.17). A segment plan's read (`lake_segments`)
    holds the rows summed between `cuts`, with `held` keys and `sums`: the robust rule and
    `hosts_receiving…` sum the same flows by the same keys between the same cuts. One set at a
    time, so a run holds at most one copy; `release_shared` drops it, and the SEGMENTS kept
    beside it (`segments`: what they hold, see `keep_segments`)."""

    columns: dict[tuple[str, str | None], list[str]] = field(default_factory=dict)
    key: tuple[Any, ...] | None = None
    held: frozenset[str] = frozenset()
    sums: dict[str, str] = field(default_factory=dict)
    cuts: frozenset[datetime] = frozenset()
    segments: Hashable = None

    def hold(self, key: tuple[Any, ...] | None, held: frozenset[str], sums: dict[str, str] | None = None,
             cuts: frozenset[datetime] = frozenset()) -> None:
        """What SHARED_LAKE now holds: rows (`held` columns) or, with `sums` and `cuts`, segments."""
        self.key, self.held, self.sums, self.cuts = key, held, sums or {}, cuts


def lake_segments(con: duckdb.DuckDBPyConnection, settings: Settings, state: StateStore, model: str,
                  plan: SegmentPlan, condition: str | None, cuts: list[datetime], start: datetime, end: datetime,
                  shared: SharedLakeRows | None = None) -> None:
    """Temp table `model`: the lake's rows of `model` in [start, end) that meet `condition`,
    summed per key of `plan` and per segment between `cuts` and every local midnight, each dated
    by its first row (`create_cut_sums`) — what `create_range_segments` and the daily sums need of
    them, in one pass over the lake, without a table of the rows or a sort of them. Taken from
    SHARED_LAKE when it holds the same rows summed by these keys and more between these cuts and
    more; else read (and, with `shared`, kept there for the next detection)."""
    tz = settings.timezone
    midnights = [b for _day, b, _end in dailysums.local_days(dailysums.midnight_at_or_before(start, tz), end, tz)]
    inside = sorted({start, *(c for c in [*cuts, *midnights] if start < c < end)})
    key = (model, condition, start, end, "segments")  # (model, condition) first, as `run` reads them
    keys, sums = list(plan.keys), dict(plan.aggregates)
    if (shared is not None and shared.key == key and set(keys) <= shared.held and sums.items() <= shared.sums.items()
            and set(inside) <= shared.cuts):
        if set(inside) == shared.cuts and set(keys) == shared.held and sums == shared.sums:
            drop_temp(con, model)
            con.execute(f"CREATE TEMP TABLE {model} AS SELECT * FROM {SHARED_LAKE}")
        else:
            create_cut_sums(con, SHARED_LAKE, keys, sums, inside, end, model, dated_by_first_row=True,
                            types=_types(con, SHARED_LAKE))
        return
    register_lake_views(con, settings, state, start, end)
    # only the columns the sums read: a view of flows joined with the inventory on one side only
    expose_models(con, filters={model: condition} if condition else None,
                  reads={model: ["_time", *keys, *sums]})
    rows = (f"(SELECT * FROM {model} WHERE _time >= TIMESTAMPTZ '{start.isoformat()}' "
            f"AND _time < TIMESTAMPTZ '{end.isoformat()}')")
    create_cut_sums(con, rows, keys, sums, inside, end, "_catch_up_read", dated_by_first_row=True, day_of_cut=tz,
                    types=_types(con, model))
    drop_temp(con, model)  # the view of the lake it read
    if shared is None:
        con.execute(f"ALTER TABLE temp.main._catch_up_read RENAME TO {model}")
        return
    drop_temp(con, SHARED_LAKE)
    con.execute(f"ALTER TABLE temp.main._catch_up_read RENAME TO {SHARED_LAKE}")
    con.execute(f"CREATE TEMP TABLE {model} AS SELECT * FROM {SHARED_LAKE}")
    shared.hold(key, frozenset(keys), sums, frozenset(inside))


def lake_rows(con: duckdb.DuckDBPyConnection, settings: Settings, state: StateStore, model: str, columns: list[str],
              condition: str | None, start: datetime, end: datetime, shared: SharedLakeRows | None = None) -> None:
    """Temp table (or view) `model`: the lake's rows of `model` in [start, end) that meet
    `condition`, these columns, in time order — a view of SHARED_LAKE when it holds those rows
    and columns (the lake does not change during a run), else read from the lake (with every
    column `shared` names for them, kept there for the next detection). Only `model` is replaced
    on a share: a search read this way reads no other model.

    A view, not a copy: at 1000 users x 30 days the four EM rules' copies of their columns took
    0.17-0.27 CPU-s (a first run, `bench/profile_first_run.py`, 4 rounds), and their catch-up 2.51-
    2.65 CPU-s with views against 2.72-3.23 with copies in 3 of 4 alternated rounds (load 4.5-5.6;
    the fourth 3.02 against 2.95); a column store reads a view's columns as a table's. Nor is a
    second copy of the sessions held beside SHARED_LAKE (at 10,000 users a smaller peak)."""
    key = (model, condition, start, end)
    listed = ", ".join(f'"{c}"' for c in columns)
    if shared is not None and shared.key == key and set(columns) <= shared.held:
        drop_temp(con, model)
        con.execute(f"CREATE TEMP VIEW {model} AS SELECT {listed} FROM {SHARED_LAKE}")
        return
    register_lake_views(con, settings, state, start, end)
    if shared is None:
        expose_models(con, {model: (columns, start, end)}, condition)
        return
    read = sorted(set(columns) | set(shared.columns.get((model, condition), [])))
    expose_models(con, {model: (read, start, end)}, condition)
    drop_temp(con, SHARED_LAKE)
    con.execute(f"ALTER TABLE temp.main.{model} RENAME TO {SHARED_LAKE}")
    con.execute(f"CREATE TEMP VIEW {model} AS SELECT {listed} FROM {SHARED_LAKE}")
    shared.hold(key, frozenset(read))


def release_shared(con: duckdb.DuckDBPyConnection, shared: SharedLakeRows) -> None:
    drop_temp(con, SHARED_LAKE)
    shared.hold(None, frozenset())
    release_segments(con, shared)


def _consecutive(days: list[tuple[Any, datetime, datetime]]) -> list[list[tuple[Any, datetime, datetime]]]:
    """Days in runs of touching days (a late file for one old day rereads that day only)."""
    runs: list[list[tuple[Any, datetime, datetime]]] = []
    for day in days:
        if runs and runs[-1][-1][2] == day[1]:
            runs[-1].append(day)
        else:
            runs.append([day])
    return runs


def _types(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    return {name: kind for name, kind, *_ in con.execute(f"DESCRIBE temp.main.{table}").fetchall()}
