"""What a catch-up may compute for many fires at once, read from a detection's SQL.

Two things are recognised here, never from a detection's id:

* **Segment plans** (`segment_plan`): a search that reads its model once, in a `GROUP BY` whose
  only uses of non-key columns are `sum`/`min`/`max` of a column and whose only use of `_time`
  is comparisons with parameters (or `least`/`greatest` of them). Its rows may be replaced by
  sums per key and per segment between consecutive parameter values (findings/catchup.py).
* **The batched form** (`batched_plan`): a detection's optional `catch_up.search`, the same
  findings as `search` for many fires in one query. It reads a table `fires`, one row per fire:
  `fire` (its position in the group) and every parameter as a column, and returns the search's
  columns with `fire` first. Its `$parameters` (and `least`/`greatest` of them: the *terms*)
  are what the fires of a group share: a catch-up groups consecutive fires whose terms have
  equal values (the shipped forms use `$` only for thresholds, so all the catch-up's fires are
  one group, and key by `fires` columns what differs: the judged day, the baseline's start).
  It may read the model only as the search's segment plan allows (the same keys and sums,
  joined with `fires` alone), comparing `_time` with terms or with the same terms over `fires`'
  instants (`least(f.history, f.earliest)`, `f.latest`): the catch-up cuts the segments at each
  fire's value of every such bound, so any comparison of a segment with one is that of each of
  its rows. A SELECT reading the model may also keep `_time` as a group key under another name
  (`_time AS segment`): each segment's start, so that the form can take running sums in time
  order and read a fire's at its `latest` instead of re-summing its segments for every fire.
  That name is then used only to order windows that sum from the first segment on
  (`sum(x) OVER (… ORDER BY segment)`; a sum of the last few would depend on the cuts),
  to compare with the same terms over `fires`' instants (`f.latest > r.segment`: cut there too),
  and as a bare column (carried or grouped by); it names nothing else. `batched_plan` says why a
  form breaks this contract (`exfilwatch detections lint` reports it); that it finds what the
  search finds (that it reads segment rows only through sums so far at its fires' instants, or
  bounds on them) is held by tests/test_catch_up.py on data with gaps, DST, late rows and a
  baseline that starts inside a day.
* **A correlation rule's batched form** (`correlated_plan`, an incident rule: `data_model:
  risk_events`): the candidates of many fires in one query. It reads only `fires` (one row per
  fire, as above, `now` included) and `risk_events` (every stored risk event, with `_available`,
  when its finding was first detected), and gives each fire exactly what its own search sees live:
  the events in its window whose `_available` is not after the fire (`r._available <= f.now`;
  the form must compare `_available` with a `fires` column). It returns `fire` first, then the
  search's columns, each fire's rows in the search's order. That it finds what the search finds is
  held by tests/test_incident_catch_up.py (gaps, a DST change, late risk events, a closed incident).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlglot import exp

from exfilwatch.detections.runner import _parsed, single_model_select
from exfilwatch.detections.schema import TIME_PARAMETERS, Detection

FIRES = "fires"  # the table of a group's fires that a batched form reads
_DECOMPOSABLE = (exp.Sum, exp.Min, exp.Max)


@dataclass(frozen=True)
class SegmentPlan:
    """How to sum a model's rows into segments the search reads as if they were the rows."""

    keys: list[str]  # columns kept as they are (group keys and conditions)
    aggregates: dict[str, str]  # column -> sum | min | max
    bounds: list[exp.Expression]  # what `_time` is compared with: a parameter, or least/greatest of them


@dataclass(frozen=True)
class BatchedPlan:
    """A detection's batched form, checked against its search."""

    sql: str
    terms: list[exp.Expression]  # what the fires of one group share
    segments: SegmentPlan | None  # the search's plan, cut also at the form's own `_time` terms (None: a
    # correlation rule's form, which reads the stored risk events as they are)
    parameters: frozenset[str]  # the $parameters of `sql`, read from the tree it was written from (parsing
    # the written text again cost 0.05-0.1 CPU-s of each run, for the three network rules' forms)


def segment_plan(sql: str, model: str) -> SegmentPlan | None:
    """The segment plan of a search over `model`, or None when its shape is not decomposable."""
    select = single_model_select(sql, model)
    if select is None or not select.args.get("group"):
        return None
    found = _read_plan(select, lambda node: _is_bound(node))
    if isinstance(found, str):
        return None
    keys, aggregates, bounds = found
    if not aggregates or keys & set(aggregates) or "_time" in aggregates:
        return None
    return SegmentPlan(sorted(keys), aggregates, bounds)


def _read_plan(select: exp.Select, bound_ok: Any, own: set[str] | None = None,
               starts: set[str] | None = None) -> tuple[set[str], dict[str, str], list[exp.Expression]] | str:
    """(keys, aggregates, `_time` bounds) of one SELECT over the model, or why it is not decomposable.
    Columns qualified by a name in `own` are not the model's (a batched form's `fires`). With
    `starts` (a batched form), `_time` may be a group key renamed (`_time AS segment`): the
    segment's start, whose names are added to `starts`."""
    if any(select.find_all(exp.Window, exp.Subquery, exp.Distinct)):
        return "a window, subquery or DISTINCT where it reads the model"
    for aggregate in select.find_all(exp.AggFunc):  # count(*) reads no column, yet counts rows
        if not isinstance(aggregate, _DECOMPOSABLE) or not isinstance(aggregate.this, exp.Column):
            return f"{aggregate.sql(dialect='duckdb')}: only sum, min or max of a column of the model"
    keys: set[str] = set()
    aggregates: dict[str, str] = {}
    bounds: list[exp.Expression] = []
    for column in select.find_all(exp.Column):
        if own and column.table in own:
            continue
        aggregate = column.find_ancestor(exp.AggFunc, exp.Select)
        if isinstance(aggregate, exp.AggFunc):
            if not isinstance(aggregate, _DECOMPOSABLE) or aggregate.this is not column:
                return f"{aggregate.sql(dialect='duckdb')}: only sum, min or max of a column of the model"
            kind = type(aggregate).__name__.lower()
            if aggregates.setdefault(column.name, kind) != kind:
                return f"{column.name} is aggregated two ways"
        elif column.name == "_time" and starts is not None and _segment_start(column, select):
            if isinstance(column.parent, exp.Alias):
                starts.add(column.parent.alias)
        elif column.name == "_time":
            comparison = column.parent
            if not isinstance(comparison, (exp.GT, exp.GTE, exp.LT, exp.LTE)):
                return f"_time is used other than compared: {comparison.sql(dialect='duckdb')}"
            other = comparison.expression if comparison.this is column else comparison.this
            if not bound_ok(other):
                return f"_time is compared with {other.sql(dialect='duckdb')}"
            bounds.append(other)
        else:
            keys.add(column.name)
    return keys, aggregates, bounds


def _segment_start(column: exp.Column, select: exp.Select) -> bool:
    """Whether the model's `_time` is kept bare as a key: renamed in the select list (a name other
    than `_time`, which the forms give the day), and named in GROUP BY only if it is."""
    renamed = [e for e in select.expressions if isinstance(e, exp.Alias) and isinstance(e.this, exp.Column)
               and e.this.name == "_time" and e.alias != "_time"]
    parent = column.parent
    return bool(renamed) and (parent in renamed or isinstance(parent, exp.Group))


def _segment_start_problem(tree: exp.Expression, name: str, model_selects: list[exp.Select],
                           bound_ok: Any) -> str | list[exp.Expression]:
    """Why the form's uses of a segment start `name` break the contract, or the bounds it is
    compared with (each is cut at)."""
    bounds: list[exp.Expression] = []
    for alias in tree.find_all(exp.Alias):
        renames_time = isinstance(alias.this, exp.Column) and alias.this.name == "_time"
        if alias.alias == name and not (renames_time and alias.parent in model_selects):
            return f"{name}, a segment's start, also names {alias.this.sql(dialect='duckdb')}"
    for column in tree.find_all(exp.Column):
        if column.name != name:
            continue
        parent = column.parent
        window = column.find_ancestor(exp.Window, exp.Select)
        if isinstance(parent, exp.Ordered) and isinstance(window, exp.Window):
            select = window.find_ancestor(exp.Select)
            for function in select.find_all(exp.Window) if select else []:
                if not isinstance(function.this, (exp.Identifier, exp.Sum)):
                    return (f"{function.sql(dialect='duckdb')}: a window in the order of {name} (a segment's "
                            f"start) may only sum")
                spec = function.args.get("spec")  # a sum over the last few segments depends on the cuts
                if spec is not None and str(spec.args.get("start")).upper() != "UNBOUNDED":
                    return (f"{function.sql(dialect='duckdb')}: a window in the order of {name} (a segment's "
                            f"start) sums from UNBOUNDED PRECEDING")
        elif isinstance(parent, (exp.GT, exp.GTE, exp.LT, exp.LTE)):
            other = parent.expression if parent.this is column else parent.this
            if not bound_ok(other):
                return f"{name} (a segment's start) is compared with {other.sql(dialect='duckdb')}"
            bounds.append(other)
        elif not isinstance(parent, (exp.Select, exp.Group)):
            return (f"{name} (a segment's start) is used other than ordered, compared with a fire's instant or "
                    f"carried: {parent.sql(dialect='duckdb')}")
    return bounds


def _is_bound(node: exp.Expression) -> bool:
    if isinstance(node, exp.Placeholder):
        return True
    if isinstance(node, (exp.Least, exp.Greatest)):
        return all(_is_bound(arg) for arg in [node.this, *node.expressions])
    return False


def bound_value(node: exp.Expression, params: dict[str, Any]) -> Any:
    """The value of a term (a parameter, or least/greatest of terms) at one fire."""
    if isinstance(node, exp.Placeholder):
        return params[node.name]
    values = [bound_value(arg, params) for arg in [node.this, *node.expressions]]
    return min(values) if isinstance(node, exp.Least) else max(values)


def terms(tree: exp.Expression) -> list[exp.Expression]:
    """The largest parts of `tree` made of parameters alone, once each (by their SQL)."""
    found: dict[str, exp.Expression] = {}
    for node in tree.find_all(exp.Placeholder):
        while isinstance(node.parent, (exp.Least, exp.Greatest)) and _is_bound(node.parent):
            node = node.parent
        found.setdefault(node.sql(dialect="duckdb"), node)
    return list(found.values())


def group_key(plan: BatchedPlan, params: dict[str, Any]) -> tuple:
    """What a fire shares with the others of its group: equal keys, one execution."""
    return tuple(bound_value(term, params) for term in plan.terms)


def batched_plan(detection: Detection, sql: str, model: str) -> tuple[BatchedPlan | None, str | None]:
    """(the plan, None) for a usable batched form; (None, why not) for a broken one; (None, None)
    when the detection declares none."""
    if detection.catch_up is None:
        return None, None
    if detection.type == "correlation":
        return correlated_plan(detection, model)
    search = segment_plan(sql, model)
    if search is None:
        return None, "catch_up.search needs a search whose model rows can be summed by segments"
    try:
        tree = _parsed(detection.catch_up.search.strip().rstrip(";"))
    except Exception as exc:  # sqlglot's ParseError and TokenError share no base but Exception
        return None, f"catch_up.search does not parse: {str(exc).splitlines()[0]}"
    # the instants a fire has, as `fires` columns: each fire's value of a term cuts the segments
    instants = {n for n, spec in detection.parameters.items() if spec.type == "time"} | set(TIME_PARAMETERS) - {"timezone"}
    fires_tables = [t for t in tree.find_all(exp.Table) if t.name == FIRES]
    if not fires_tables:
        return None, f"catch_up.search never reads the table {FIRES!r}"
    own = {t.alias_or_name for t in fires_tables}

    def as_term(node: exp.Expression) -> exp.Expression:
        """A bound over `fires` columns as the same term over parameters (`f.latest` is `$latest`)."""
        return node.copy().transform(
            lambda n: exp.Placeholder(this=n.name) if isinstance(n, exp.Column) and n.table in own else n)

    def bound_ok(node: exp.Expression) -> bool:
        term = as_term(node)
        return _is_bound(term) and all(p.name in instants for p in term.find_all(exp.Placeholder))

    extra: list[exp.Expression] = []
    starts: set[str] = set()  # the names under which the form keeps a segment's start
    model_selects: list[exp.Select] = []
    model_tables = [t for t in tree.find_all(exp.Table) if t.name == model]
    if not model_tables:
        return None, f"catch_up.search never reads {model}"
    for table in model_tables:
        select = table.find_ancestor(exp.Select)
        if select is None or any(j.this.name not in (FIRES, model) or j.this.name == model and j.this is not table
                                 for j in select.args.get("joins") or []):
            return None, f"catch_up.search reads {model} joined with something other than {FIRES!r}"
        model_selects.append(select)
        found = _read_plan(select, bound_ok, own, starts)
        if isinstance(found, str):
            return None, f"catch_up.search: {found}"
        keys, aggregates, bounds = found
        if not keys <= set(search.keys) or any(search.aggregates.get(c) != k for c, k in aggregates.items()):
            return None, (f"catch_up.search reads {model}'s columns {sorted(keys | set(aggregates))} otherwise than "
                          f"the search (keys {search.keys}, {search.aggregates})")
        extra += [as_term(b) for b in bounds]
    for name in sorted(starts):
        uses = _segment_start_problem(tree, name, model_selects, bound_ok)
        if isinstance(uses, str):
            return None, f"catch_up.search: {uses}"
        extra += [as_term(b) for b in uses]
    plan_sql = tree.sql(dialect="duckdb")
    segments = SegmentPlan(search.keys, search.aggregates, [*search.bounds, *extra])
    return BatchedPlan(plan_sql, terms(tree), segments, _placeholders(tree)), None


def correlated_plan(detection: Detection, model: str) -> tuple[BatchedPlan | None, str | None]:
    """(the plan, None) for a correlation rule's batched form that reads only `fires` and `model`
    (the stored risk events) and holds each fire to the events available at it; else (None, why not)."""
    assert detection.catch_up is not None
    try:
        tree = _parsed(detection.catch_up.search.strip().rstrip(";"))
    except Exception as exc:  # sqlglot's ParseError and TokenError share no base but Exception
        return None, f"catch_up.search does not parse: {str(exc).splitlines()[0]}"
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    tables = [t for t in tree.find_all(exp.Table) if t.name not in ctes]
    others = sorted({t.name for t in tables} - {FIRES, model})
    if others:
        return None, f"catch_up.search reads {others}; a correlation rule's form reads only {FIRES!r} and {model!r}"
    for needed in (FIRES, model):
        if not any(t.name == needed for t in tables):
            return None, f"catch_up.search never reads the table {needed!r}"
    own = {t.alias_or_name for t in tables if t.name == FIRES}

    def held(column: exp.Column) -> bool:
        """Whether `column` (an `_available`) is bounded above by a `fires` column."""
        comparison = column.parent
        if isinstance(comparison, (exp.LT, exp.LTE)):
            other = comparison.expression if comparison.this is column else None
        elif isinstance(comparison, (exp.GT, exp.GTE)):
            other = comparison.this if comparison.expression is column else None
        else:
            return False
        return isinstance(other, exp.Column) and other.table in own

    if not any(held(c) for c in tree.find_all(exp.Column) if c.name == "_available"):
        return None, (f"catch_up.search never holds a fire to the risk events available at it "
                      f"(`_available <= f.now`, a {FIRES!r} column)")
    return BatchedPlan(tree.sql(dialect="duckdb"), terms(tree), None, _placeholders(tree)), None


def _placeholders(tree: exp.Expression) -> frozenset[str]:
    return frozenset(node.name for node in tree.find_all(exp.Placeholder))


def fire_values(params: dict[str, Any]) -> dict[str, Any]:
    """One fire's row of the `fires` table (without `fire`): its parameters that SQL can hold."""
    return {name: value for name, value in params.items() if isinstance(value, (datetime, int, float, str, bool))}


def rows_select(rows: list[dict[str, Any]]) -> tuple[str, dict[str, list[Any]]]:
    """A SELECT whose rows are `rows` (dicts of the same keys in the same order, at least one),
    and its parameters: a list per column, unnested side by side. DuckDB takes a list of values
    far faster than a list of dicts: 720 fires' rows took 4.5-6.2 ms against 21.6-27.1 as
    `unnest($rows, recursive := true)`, with the same column types (10 runs each, 2026-12-04)."""
    names = list(rows[0])
    select = ", ".join(f'unnest($c{i}) AS "{name}"' for i, name in enumerate(names))
    return f"SELECT {select}", {f"c{i}": [row[name] for row in rows] for i, name in enumerate(names)}
