"""Which CTEs of a search may be computed once for several searches, and the search reading them
from tables (detections/ctes.py): a CTE is shared only when its result cannot depend on which
detection computes it, and the rewritten search gives the rows of the search itself."""

from __future__ import annotations

import duckdb
import hypothesis
from hypothesis import strategies as st
import pytest

from exfilwatch.detections.ctes import closure_parameters, search_ctes, separable_keys, shared_keys

SEARCH = """WITH judged AS (
    -- the rows judged
    SELECT * FROM user_sessions WHERE _time >= $earliest
), domains AS (
    SELECT user, count(*) AS n FROM judged WHERE size > $floor GROUP BY user
), tops AS (
    SELECT user, n FROM domains WHERE n > 1
), whole AS (
    SELECT user, sum(size) AS total FROM judged GROUP BY user
)
SELECT w.user, w.total, t.n FROM whole w LEFT JOIN tops t USING (user) ORDER BY w.user"""


def separable(sql: str) -> dict[str, bool]:
    ctes = search_ctes(sql, "user_sessions")
    assert ctes is not None
    return {c.name: c.separable for c in ctes.ctes}


def test_ctes_whose_result_could_depend_on_the_detection_are_not_separable():
    assert separable(SEARCH) == {"judged": False, "domains": True, "tops": True, "whole": True}
    for body in (
        "SELECT DISTINCT * FROM user_sessions",  # which columns the snapshot holds changes the rows
        "SELECT user, count(*) AS n FROM (SELECT DISTINCT * FROM user_sessions) GROUP BY user",
        "SELECT a.user FROM user_sessions a NATURAL JOIN user_sessions b",
        "SELECT COLUMNS('s.*') FROM user_sessions",
        "SELECT user FROM user_sessions WHERE user IN (SELECT user FROM lake.email)",  # another table
        "SELECT user FROM email",
        "SELECT 1 AS one",  # reads no row: nothing to share
        "SELECT user, list(s) AS l FROM (SELECT * FROM user_sessions ORDER BY _time LIMIT 5) s GROUP BY user",
        "SELECT user, list(j) AS l FROM user_sessions j GROUP BY user",  # the whole row, as a struct
        "SELECT count(*) AS n FROM (SELECT * FROM user_sessions UNION SELECT * FROM user_sessions)",
    ):
        assert separable(f"WITH x AS ({body}) SELECT * FROM x") == {"x": False}, body
    # a plain row filter's `*` and count(*) are column-blind; a column named as a CTE the body does not read is a column
    assert separable("WITH judged AS (SELECT * FROM user_sessions), x AS (SELECT user, true AS judged FROM user_sessions), "
                     "y AS (SELECT count(*) FILTER (WHERE judged) AS n FROM x) SELECT * FROM y") == {
        "judged": False, "x": True, "y": True}
    assert separable("WITH x AS (SELECT user, count(*) AS n FROM (SELECT * FROM user_sessions WHERE size > 1) "
                     "GROUP BY user) SELECT * FROM x") == {"x": True}


def test_keys_are_equal_for_the_same_text_and_differ_with_a_cte_or_one_it_reads():
    spaced = SEARCH.replace("-- the rows judged\n", "").replace("GROUP BY user", "GROUP  BY\n user")
    assert separable_keys(SEARCH, "user_sessions") == separable_keys(spaced, "user_sessions")
    changed_dependency = SEARCH.replace("size > $floor", "size >= $floor")  # `tops` reads `domains`
    assert shared_keys([separable_keys(SEARCH, "user_sessions"), separable_keys(changed_dependency, "user_sessions")]) \
        == {c.key for c in search_ctes(SEARCH, "user_sessions").ctes if c.name == "whole"}
    ctes = search_ctes(SEARCH, "user_sessions")
    assert {c.name: sorted(closure_parameters(ctes, c)) for c in ctes.ctes} == {
        "judged": ["earliest"], "domains": ["earliest", "floor"], "tops": ["earliest", "floor"], "whole": ["earliest"]}


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_search_reading_its_shared_ctes_from_tables_gives_its_own_rows(wrapped):
    con = duckdb.connect()
    con.execute("CREATE TABLE user_sessions AS SELECT 'u' || (i % 7) AS user, i * 13 % 101 AS size, "
                "TIMESTAMPTZ '2026-11-01 00:00:00+00' + to_hours(i) AS _time FROM range(300) t(i)")
    sql = f"SELECT * FROM ({SEARCH}) AS finding WHERE NOT coalesce((total > 3000), false)" if wrapped else SEARCH
    params = {"earliest": "2026-11-03 00:00:00+00", "floor": 40}
    ctes = search_ctes(sql, "user_sessions")
    assert [c.name for c in ctes.to_compute({c.key for c in ctes.separable()})] == ["tops", "whole"]
    tables = {}
    for cte in ctes.to_compute({c.key for c in ctes.separable()}):
        query, used = ctes.with_tables(tables, select=cte.name)
        con.execute(f"CREATE TABLE t_{cte.name} AS {query}", {p: params[p] for p in used})
        tables[cte.name] = f"t_{cte.name}"
    rewritten, used = ctes.with_tables(tables)
    assert "domains AS" not in rewritten and "judged AS" not in rewritten  # read by the tables' CTEs only
    assert used == frozenset()
    want = con.execute(sql, params).fetchall()
    assert con.execute(rewritten).fetchall() == want and len(want) > 3
    unchanged, used = ctes.with_tables({})
    assert used == frozenset(params) and con.execute(unchanged, params).fetchall() == want


def test_searches_without_a_with_or_with_a_recursive_one_share_nothing():
    assert search_ctes("SELECT * FROM user_sessions", "user_sessions") is None
    assert search_ctes("WITH RECURSIVE x AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM x WHERE n < 3) "
                       "SELECT * FROM x", "user_sessions") is None
    assert search_ctes("SELECT * FROM (SELECT 1) WHERE (", "user_sessions") is None


# --- any chain of CTEs, however it is spaced and commented ---------------------------------------

# Bodies over a source with columns (user, size), each giving (user, size) again: a row filter (its
# `*` keeps the CTE from being separable), an aggregate, a join of two sources and an expression
# with a parameter. `{a}` and `{b}` are the sources, `{p}` a parameter's name.
BODIES = (
    "SELECT * FROM {a} WHERE size > ${p}",
    "SELECT user , sum ( size ) AS size FROM {a} GROUP BY user",
    "SELECT x.user , x.size + coalesce ( y.size , 0 ) AS size FROM {a} x LEFT JOIN "
    "( SELECT user , max ( size ) AS size FROM {b} GROUP BY user ) y USING ( user )",
    "SELECT user , size * ${p} AS size FROM {a} WHERE size IS NOT NULL",
)
GAPS = (" ", "\n    ", "  ", " -- a comment (with a parenthesis\n ", " /* ( , */ ")


@st.composite
def chains(draw) -> tuple[list[tuple[int, int, int, int]], int]:
    """CTEs as (body, first source, second source, parameter), sources indexing 0 = the model and
    k = the k-th CTE; and the CTE the main query reads."""
    parts = []
    for index in range(draw(st.integers(1, 5))):
        parts.append((draw(st.integers(0, len(BODIES) - 1)), draw(st.integers(0, index)),
                      draw(st.integers(0, index)), draw(st.integers(0, 1))))
    return parts, draw(st.integers(1, len(parts)))


def chain_sql(parts: list[tuple[int, int, int, int]], main: int, gaps: list[str]) -> str:
    def source(k: int) -> str:
        return "user_sessions" if k == 0 else f"c{k}"
    ctes = []
    for index, (body, a, b, p) in enumerate(parts, start=1):
        text = BODIES[body].format(a=source(a), b=source(b), p=f"p{p}")
        ctes.append(f"c{index} AS ({text})")
    sql = f"WITH {', '.join(ctes)} SELECT user , size FROM c{main} ORDER BY user , size"
    # SQLGlot does not parse a comment inside a keyword of two words (DuckDB does): keep those whole
    for keyword in ("GROUP BY", "ORDER BY", "LEFT JOIN", "IS NOT NULL"):
        sql = sql.replace(keyword, keyword.replace(" ", "~"))
    words = sql.split(" ")
    return (words[0] + "".join(gaps[i % len(gaps)] + w for i, w in enumerate(words[1:]))).replace("~", " ")


@hypothesis.given(chains(), st.lists(st.sampled_from(GAPS), min_size=1, max_size=6),
                  st.lists(st.sampled_from(GAPS), min_size=1, max_size=6), st.booleans())
def test_any_chain_of_ctes_read_from_tables_gives_the_search_rows_and_keys_ignore_spacing(chain, gaps, other_gaps, wrapped):
    parts, main = chain
    sql = chain_sql(parts, main, gaps)
    if wrapped:
        sql = f"SELECT * FROM ({sql}) AS finding WHERE NOT coalesce((size > 5000), false)"
    ctes = search_ctes(sql, "user_sessions")
    assert ctes is not None and [c.name for c in ctes.ctes] == [f"c{i}" for i in range(1, len(parts) + 1)]
    # the same CTEs spaced and commented otherwise have the same keys
    respaced = search_ctes(chain_sql(parts, main, other_gaps), "user_sessions")
    assert [c.key for c in respaced.ctes] == [c.key for c in ctes.ctes]
    assert [c.separable for c in respaced.ctes] == [c.separable for c in ctes.ctes]

    con = duckdb.connect()
    con.execute("CREATE TABLE user_sessions AS SELECT 'u' || (i % 5) AS user, i * 37 % 89 AS size, "
                "i AS unused FROM range(60) t(i)")
    params = {"p0": 20, "p1": 3}
    want = con.execute(sql, {p: params[p] for p in sorted(set(params) & {"p0", "p1"}) if f"${p}" in sql}).fetchall()
    unchanged, used = ctes.with_tables({})
    assert con.execute(unchanged, {p: params[p] for p in used}).fetchall() == want
    tables: dict[str, str] = {}
    for cte in ctes.to_compute({c.key for c in ctes.separable()}):
        query, used = ctes.with_tables(tables, select=cte.name)
        # the table holds only the columns the CTE names, as a snapshot of another detection would
        con.execute(f"CREATE TABLE t_{cte.name} AS {query}", {p: params[p] for p in used})
        tables[cte.name] = f"t_{cte.name}"
    rewritten, used = ctes.with_tables(tables)
    assert con.execute(rewritten, {p: params[p] for p in used}).fetchall() == want
