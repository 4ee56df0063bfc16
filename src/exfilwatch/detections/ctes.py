"""The parts of a search that other searches compute too: common table expressions (CTEs) whose
result depends only on their text, their parameters' values and the rows of the model.

Recognised from the SQL, never from a detection's id. A CTE of a search's outermost `WITH` is
*separable* when it and every CTE it reads (its closure) read nothing but the detection's model
and earlier CTEs, and read the model's columns only by name: a catch-up's snapshot of the model
holds, per detection, only the columns that detection names, so a result that could see the
other columns (a `*` other than a plain row filter's or `count(*)`'s, `NATURAL JOIN`,
`COLUMNS(…)`) differs from one detection to the next. Such a CTE, with its output columns
named, computes the same rows in every search that holds the same closure (`Cte.key`: its
tokens and those of the CTEs it reads, comments and spacing aside) over the same rows with the
same parameter values. A catch-up computes it once (findings/catchup.py `SharedCtes`) and
the searches read it from a temp table (`SearchCtes.with_tables`): the four EM rules compute the
domain-novelty CTEs of each chunk once instead of four times.

The rewrite keeps the search's text: only the bodies of the CTEs read from tables are replaced,
and the CTEs no longer read are dropped, so what DuckDB runs is otherwise the detection's own SQL.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.tokens import Token, TokenType

from exfilwatch.detections.runner import _parsed, _tokens

CteKey = tuple[tuple[str, str], ...]  # a CTE's closure as tokens (type, text), in the order of the WITH


@dataclass(frozen=True)
class Cte:
    name: str
    start: int  # where its name begins in the SQL
    open: int  # where the parenthesis around its body begins
    end: int  # just after the parenthesis that closes its body
    reads: frozenset[str]  # the CTEs its body reads
    parameters: frozenset[str]  # the $parameters of its body
    tokens: CteKey  # its own text as tokens, name to closing parenthesis
    blind: bool  # its body reads only the model and earlier CTEs, and the model's columns only by name
    reads_model: bool  # it or a CTE it reads reads the model
    key: CteKey  # its closure's tokens: equal keys compute equal results from equal rows and parameters
    separable: bool  # may be computed apart, once for every search holding the same key


@dataclass(frozen=True)
class SearchCtes:
    """A search's outermost WITH, in order, and what surrounds it."""

    sql: str
    head: int  # where the WITH keyword begins
    tail: int  # where the text after the last CTE begins (the main query)
    ctes: tuple[Cte, ...]
    main_reads: frozenset[str]  # the CTEs the main query reads
    main_parameters: frozenset[str]  # the $parameters outside the WITH

    def separable(self) -> list[Cte]:
        return [c for c in self.ctes if c.separable]

    def to_compute(self, shared: Iterable[CteKey]) -> list[Cte]:
        """The separable CTEs whose key is in `shared` that the rest of the search reads directly:
        what a search sharing those keys reads from tables, in the order of the WITH. (A CTE only
        they read is computed within them: computing it apart would add a table and save nothing.)"""
        shared = set(shared)
        taken = {c.name for c in self.ctes if c.separable and c.key in shared}
        read = set(self.main_reads).union(*(c.reads for c in self.ctes if c.name not in taken))
        return [c for c in self.ctes if c.name in taken and c.name in read]

    def with_tables(self, tables: dict[str, str], select: str | None = None) -> tuple[str, frozenset[str]]:
        """(SQL, its $parameters): the search with the CTEs named in `tables` read from those
        tables and the CTEs no longer read dropped; with `select` (a CTE's name), the query of
        that CTE alone (`SELECT * FROM` it, with the CTEs it reads)."""
        by_name = {c.name: c for c in self.ctes}
        wanted = {select} if select is not None else set(self.main_reads)
        kept: set[str] = set()
        while wanted:
            name = wanted.pop()
            if name not in kept:
                kept.add(name)
                wanted |= set() if name in tables else by_name[name].reads
        parts, parameters = [], set()
        for cte in self.ctes:
            if cte.name not in kept:
                continue
            if cte.name in tables:
                parts.append(f"{self.sql[cte.start:cte.open]}(SELECT * FROM {tables[cte.name]})")
            else:
                parts.append(self.sql[cte.start:cte.end])
                parameters |= cte.parameters
        with_clause = f"WITH {', '.join(parts)} " if parts else ""
        if select is not None:
            name_text = self.sql[by_name[select].start:by_name[select].open].split()[0]
            return f"{with_clause}SELECT * FROM {name_text}", frozenset(parameters)
        return self.sql[:self.head] + with_clause + self.sql[self.tail:], frozenset(parameters | self.main_parameters)


def separable_keys(sql: str, model: str) -> frozenset[CteKey]:
    """The keys of the search's separable CTEs."""
    ctes = search_ctes(sql, model)
    return frozenset(c.key for c in ctes.separable()) if ctes is not None else frozenset()


def shared_keys(held: Iterable[frozenset[CteKey]]) -> frozenset[CteKey]:
    """The keys that more than one of these searches' `separable_keys` hold."""
    counted = Counter(key for keys in held for key in keys)
    return frozenset(key for key, count in counted.items() if count > 1)


@functools.lru_cache(maxsize=64)
def search_ctes(sql: str, model: str) -> SearchCtes | None:
    """The outermost WITH of `sql` (a search, or a search wrapped by its filter), or None when it
    has none, is recursive, or its text cannot be matched to its parse."""
    try:
        tree = _parsed(sql)
    except sqlglot.errors.ParseError:
        return None
    owner = _with_owner(tree)
    if owner is None or owner.args["with_"].args.get("recursive"):
        return None
    # names compared lower-cased, as DuckDB matches them
    parsed = [(cte.alias.lower(), cte.this) for cte in owner.args["with_"].expressions]
    model = model.lower()
    tokens = _tokens(sql)  # the parse's own: tokenising the seven shipped searches again took 0.10 CPU-s a run
    spans = _cte_spans(tokens, [name for name, _ in parsed])
    if spans is None:
        return None
    head, tail, token_spans = spans
    names = {name for name, _ in parsed}
    # the main query's tables: the owner's, the WITH left out (a walk; a copy of the tree without
    # it cost 0.05 CPU-s a run for the seven shipped searches)
    with_clause = owner.args["with_"]
    main_tables = [node for node in owner.walk(prune=lambda node: node is with_clause)
                   if isinstance(node, exp.Table)]
    inside = {i for first, last in token_spans for i in range(first, last + 1)}
    ctes: dict[str, Cte] = {}
    for (name, body), (first, last) in zip(parsed, token_spans):
        tables = [t for t in body.find_all(exp.Table)]
        reads = frozenset(t.name.lower() for t in tables if t.name.lower() in ctes)
        closure = _closure(reads, ctes)
        own = tuple((t.token_type.name, t.text) for t in tokens[first:last + 1])
        blind = _column_blind(body, set(ctes), model)
        reads_model = any(t.name.lower() == model for t in tables) or any(ctes[c].reads_model for c in reads)
        members = [c for c in ctes.values() if c.name in closure]
        ctes[name] = Cte(
            name=name, start=tokens[first].start,
            open=next(tokens[i].start for i in range(first, last + 1) if tokens[i].token_type == TokenType.L_PAREN),
            end=tokens[last].end + 1, reads=reads, parameters=_parameters(tokens, range(first, last + 1)),
            tokens=own, blind=blind, reads_model=reads_model,
            key=tuple(part for c in members for part in c.tokens) + own,
            separable=blind and all(c.blind for c in members) and reads_model and not _star_output(body),
        )
    return SearchCtes(sql, head, tail, tuple(ctes.values()),
                      frozenset(t.name.lower() for t in main_tables if t.name.lower() in names),
                      _parameters(tokens, [i for i in range(len(tokens)) if i not in inside]))


def closure_parameters(search: SearchCtes, cte: Cte) -> frozenset[str]:
    """The $parameters of a CTE and of every CTE it reads: what its result depends on besides the rows."""
    by_name = {c.name: c for c in search.ctes}
    return cte.parameters.union(*(by_name[name].parameters for name in _closure(cte.reads, by_name)))


# --- reading the WITH ----------------------------------------------------------------------------


def _with_owner(tree: exp.Expression) -> exp.Expression | None:
    """The query holding the outermost WITH: the search's, or that of a search its filter wraps
    (`SELECT * FROM (search) AS finding WHERE …`)."""
    if tree.args.get("with_") is not None:
        return tree
    if isinstance(tree, exp.Select) and not tree.args.get("joins"):
        source = tree.args.get("from_")
        inner = source.this if source is not None else None
        if isinstance(inner, exp.Subquery) and inner.this.args.get("with_") is not None:
            return inner.this
    return None


def _cte_spans(tokens: list[Token], names: list[str]) -> tuple[int, int, list[tuple[int, int]]] | None:
    """(where WITH begins, where the main query begins, each CTE's first and last token) of the
    first WITH in the text, when its CTEs are `names` in order: `name AS [NOT] [MATERIALIZED] (…)`."""
    at = next((i for i, t in enumerate(tokens) if t.token_type == TokenType.WITH), None)
    if at is None:
        return None
    spans = []
    index = at + 1
    for name in names:
        if index >= len(tokens) or tokens[index].text.lower() != name:
            return None
        first = index
        while index < len(tokens) and tokens[index].token_type != TokenType.L_PAREN:
            index += 1
        if index - first > 4:  # a column list or something not read here
            return None
        depth = 0
        for index in range(index, len(tokens)):
            depth += {TokenType.L_PAREN: 1, TokenType.R_PAREN: -1}.get(tokens[index].token_type, 0)
            if depth == 0:
                break
        else:
            return None
        spans.append((first, index))
        index += 1
        if index < len(tokens) and tokens[index].token_type == TokenType.COMMA:
            index += 1
    if index >= len(tokens) or len(spans) != len(names):
        return None
    return tokens[at].start, tokens[index].start, spans


def _parameters(tokens: list[Token], indexes: Iterable[int]) -> frozenset[str]:
    chosen = list(indexes)
    return frozenset(tokens[i + 1].text for i in chosen
                     if tokens[i].token_type == TokenType.PARAMETER and i + 1 < len(tokens))


def _closure(reads: Iterable[str], ctes: dict[str, Cte]) -> set[str]:
    seen: set[str] = set()
    wanted = set(reads)
    while wanted:
        name = wanted.pop()
        if name not in seen:
            seen.add(name)
            wanted |= ctes[name].reads
    return seen


def _column_blind(body: exp.Expression, earlier: set[str], model: str) -> bool:
    """Whether the CTE's body reads only the model and earlier CTEs (no nested WITH: its names
    would shadow them), and the model's columns only by name: its result is the same over any
    snapshot holding the columns it names. A `*` is allowed in `count(*)` and as the output of a
    plain row filter (`SELECT * FROM x WHERE …`: which columns it carries changes no row) outside
    a set operation (UNION's distinct rows would depend on them); a relation's name used as a
    value (DuckDB's whole row as a struct) is not."""
    if any(body.find_all(exp.With, exp.Columns)):
        return False
    tables = list(body.find_all(exp.Table))
    if any(t.name.lower() not in earlier | {model} or t.args.get("db") or not isinstance(t.this, exp.Identifier) for t in tables):
        return False
    if any(str(join.args.get("method") or "").upper() == "NATURAL" for join in body.find_all(exp.Join)):
        return False
    relations = {t.name.lower() for t in tables} | {t.alias.lower() for t in tables if t.alias} | {
        s.alias.lower() for s in body.find_all(exp.Subquery) if s.alias}
    if any(not column.table and column.name.lower() in relations for column in body.find_all(exp.Column)):
        return False
    for star in body.find_all(exp.Star):
        if isinstance(star.parent, exp.Count):
            continue
        node = star.parent if isinstance(star.parent, exp.Column) else star
        select = node.parent
        if not (isinstance(select, exp.Select) and node in select.expressions and _row_filter(select)
                and select.find_ancestor(exp.SetOperation) is None):
            return False
    return True


def _row_filter(select: exp.Expression) -> bool:
    """`SELECT … FROM one_relation [WHERE …]`: one output row per row read, whatever its columns."""
    return (isinstance(select, exp.Select) and isinstance((select.args.get("from_") or exp.From()).this, exp.Table)
            and not any(select.args.get(part) for part in ("joins", "group", "having", "qualify", "distinct", "order",
                                                            "limit", "offset", "laterals"))
            and not any(select.find_all(exp.AggFunc, exp.Window, exp.Unnest, exp.Explode)))


def _star_output(body: exp.Expression) -> bool:
    """Whether the CTE's columns include a `*` (what it outputs would then depend on the snapshot)."""
    return not isinstance(body, exp.Select) or any(
        isinstance(e, exp.Star) or (isinstance(e, exp.Column) and isinstance(e.this, exp.Star)) for e in body.expressions)
