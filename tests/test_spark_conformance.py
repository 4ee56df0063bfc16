"""Every shipped detection written for Spark, and the sessions build, give the same rows there as on DuckDB.

Runs each detection's own test datasets through both engines over the same lake; the sessions
build (`sessions`/`run`/`detect --engine spark`) on both engines over two copies of one home
holding a small synthetic organisation, then EM-BSum over each engine's
sessions; and the sessions build on the edge cases of tests/test_sessions.py, field for field.
Skipped when PySpark or Java is not installed (`make test` installs both). One SparkSession for
the module: starting one costs seconds.
"""

from __future__ import annotations

import math
import shutil
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from exfilwatch.config import Home, load_settings, parse_settings
from .pipelinekit import detect_once
from .sessionkit import flow, load_table, login, logout, mail
from exfilwatch.detections.schema import load_detections
from exfilwatch.events.engine import connect
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.features.sessions import compute_sessions
from exfilwatch.home import open_state
from exfilwatch.events.lake import parquet_source
from exfilwatch.models import AUTHENTICATION, EMAIL, NETWORK_TRAFFIC, USER_SESSIONS
from exfilwatch.synth.org import generate_organisation
from exfilwatch.timeexpr import parse_time

pyspark = pytest.importorskip("pyspark")
if shutil.which("java") is None:
    pytest.skip("Spark needs Java", allow_module_level=True)

from exfilwatch.events.spark import SparkConnection, spark_session  # noqa: E402

pytestmark = pytest.mark.spark

DETECTIONS = list(load_detections().values())
CASES = [(d, t) for d in DETECTIONS if "spark" in d.engines for t in d.tests]


@pytest.fixture(scope="module")
def spark():
    # small data: a few shuffle partitions keep each of the build's many steps short
    session = spark_session(parse_settings({"memory_limit": "1GB", "spark": {"conf": {
        "spark.sql.shuffle.partitions": "2"}}}, "test"))
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def test_every_detection_runs_on_spark_or_reads_what_spark_does_not_hold():
    """A detection left on DuckDB is an incident rule: it reads the risk events of the state store
    (SQLite, on the writer host), not the lake that Spark's executors read."""
    left = {d.id: d.data_model for d in DETECTIONS if "spark" not in d.engines}
    assert all(model == "risk_events" for model in left.values()), left
    assert {d.data_model for d in DETECTIONS if "spark" in d.engines} == {"user_sessions", "network_traffic"}


def assert_same_findings(duck, sparked) -> None:
    assert [f.key for f in sparked] == [f.key for f in duck]
    for ours, theirs in zip(duck, sparked):
        assert ours.fields.keys() == theirs.fields.keys()
        assert all(same(ours.fields[k], theirs.fields[k]) for k in ours.fields), (ours.fields, theirs.fields)
        assert ours.message == theirs.message


@pytest.mark.parametrize("detection,test", CASES, ids=[f"{d.id}:{t.kind}" for d, t in CASES])
def test_spark_findings_equal_duckdb_findings(spark, tmp_path, detection, test):
    """Each detection's own tests. The session rules read here the sessions DuckDB built (a build
    on Spark per dataset would cost minutes in local mode); the organisation test below runs them
    over sessions Spark built."""
    home = Home(root=tmp_path, config_path=tmp_path / "config.yaml")
    settings = parse_settings(test.config, "test")
    for data in test.data:
        ingest_paths([detection.folder / data.file], home, settings, data.source)
    now = parse_time(test.now, datetime(1970, 1, 1, tzinfo=timezone.utc), settings.timezone)
    state = open_state(home)
    con = connect(settings)
    duck = detect_once(con, state, settings, [detection], now, overrides=test.set, store=False)[0].findings
    sparked = execute_detection_on_spark(spark, state, settings, detection, now, test.set)
    assert_same_findings(duck, sparked)
    if test.kind == "positive":
        assert duck


def execute_detection_on_spark(spark, state, settings, detection, now, overrides):
    """The detection alone on Spark, over the sessions already stored (no build)."""
    from exfilwatch.detections.runner import resolve_parameters, run_window
    from exfilwatch.detections.spark import execute_spark
    from exfilwatch.findings.record import findings_from_rows

    window = run_window(detection, now, settings.timezone)
    params = resolve_parameters(detection, settings, overrides, window)
    return findings_from_rows(detection, execute_spark(spark, state, settings, detection, params), settings.timezone)


def _session_rows(con, table: str) -> list[dict]:
    cursor = con.execute(f"SELECT * FROM {table} ORDER BY session_key")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _spark_sessions(spark, con, settings, now, start, read_from, **relations):
    """compute_sessions on Spark, its rows read back through DuckDB (as the writer stores them)."""
    steps = SparkConnection(spark)
    try:
        counts = compute_sessions(steps, settings, now, start, read_from, **relations)
        con.register("_spark_result", steps.table_arrow("_ses_result"))
        return _session_rows(con, "_spark_result"), counts
    finally:
        steps.close()


def assert_same_sessions(duck: list[dict], sparked: list[dict]) -> None:
    assert [r["session_key"] for r in sparked] == [r["session_key"] for r in duck]
    for ours, theirs in zip(duck, sparked):
        assert ours.keys() == theirs.keys()
        different = {k: (ours[k], theirs[k]) for k in ours if not same(ours[k], theirs[k])}
        assert not different, (ours["session_key"], different)


@pytest.fixture(scope="module")
def organisation(tmp_path_factory):
    """Two weeks of a 12-person company in the vendors' formats (Pulse Secure, Postfix, Zeek), ingested."""
    out = tmp_path_factory.mktemp("org")
    generate_organisation(out, users=12, days=14, seed=11, end=date(2026, 10, 31), flows_per_host_day=8)
    home = Home(root=out / "home", config_path=out / "config.yaml")
    settings = load_settings(home)
    ingest_paths([p for p in (out / "vpn.log", out / "maillog", out / "conn.log") if p.exists()], home, settings)
    return home, settings


def test_sessions_and_session_rules_on_spark_equal_duckdb_on_an_organisation(spark, organisation, tmp_path):
    """`detect --engine spark` in one copy of the home, `detect` in the other: the stored sessions
    are the same, every column, and so are EM-BSum's findings over them (each rule's SQL is
    compared on its own tests above; here a rule reads, end to end, the sessions Spark built)."""
    home, settings = organisation
    shutil.copytree(home.root, tmp_path / "spark")
    spark_home = Home(root=tmp_path / "spark", config_path=home.config_path)
    now = datetime(2026, 11, 1, 6, tzinfo=timezone.utc)
    rules = [d for d in DETECTIONS if d.id == "em_bsum"]
    duck_state, spark_state = open_state(home), open_state(spark_home)
    con = connect(settings)
    duck_runs = detect_once(con, duck_state, settings, rules, now, earliest="-14d@d", store=False)
    spark_runs = detect_once(con, spark_state, settings, rules, now, earliest="-14d@d", store=False, spark=spark)
    for ours, theirs in zip(duck_runs, spark_runs):
        assert_same_findings(ours.findings, theirs.findings)
    assert duck_runs[0].findings  # a session of this organisation is an outlier of its user's sizes
    # the terms for domains new to the organisation, non-zero: two weeks of data are under the
    # 35-day memory of domains, so the four rules judge them here from the fourth day, for anyone
    # (no bound on introductions), above 1 x the usual session and 1 byte or message
    em_rules = [d for d in DETECTIONS if d.id in ("em_fnum", "em_dnum", "em_bsum", "em_bsum_personal")]
    novelty = {"domain_warmup_days": 3, "new_org_multiple": 1, "new_org_floor": 1, "max_org_introductions": 1000}
    duck_runs = detect_once(con, duck_state, settings, em_rules, now, earliest="-14d@d", store=False,
                            overrides=novelty)
    spark_runs = detect_once(con, spark_state, settings, em_rules, now, earliest="-14d@d", store=False,
                             overrides=novelty, spark=spark)
    for ours, theirs in zip(duck_runs, spark_runs):
        assert_same_findings(ours.findings, theirs.findings)
    by_org_novelty = [f.fields for run in duck_runs for f in run.findings if f.fields["above_org_new_threshold"]]
    assert {run.detection.id for run in duck_runs if any(f.fields["org_new_value"] > 0 for f in run.findings)} == {
        "em_fnum", "em_dnum", "em_bsum"}
    assert by_org_novelty and all(f["org_new_threshold"] > 0 for f in by_org_novelty)
    assert any(f["org_introductions"] > 0 for run in duck_runs for f in (g.fields for g in run.findings))

    stored = {}
    for name, state in (("duckdb", duck_state), ("spark", spark_state)):
        con.execute(f"CREATE OR REPLACE TEMP VIEW stored_{name} AS "
                    f"{parquet_source(USER_SESSIONS, state.lake_files('user_sessions'))}")
        stored[name] = _session_rows(con, f"stored_{name}")
    duck = stored["duckdb"]
    assert_same_sessions(duck, stored["spark"])
    builds = [s.query("SELECT counts FROM derived_builds")[0]["counts"] for s in (duck_state, spark_state)]
    assert builds[0] == builds[1]
    # the comparison covers what a rule and an analyst read: both kinds, features, evidence, flows
    kinds = {r["session_kind"] for r in duck}
    assert kinds == {"vpn", "day"}
    assert sum(r["em_fnum"] for r in duck) > 100 and any(r["largest_messages"] for r in duck)
    assert any(r["top_recipients"] for r in duck) and any(r["net_flows"] for r in duck)
    assert len({r["end_reason"] for r in duck}) >= 3


def test_sessions_build_on_spark_equals_duckdb_on_the_edge_cases(spark):
    """Overlapping sessions (the overlap pass), tunnels inside and outside login sessions, ends that
    carry neither id nor address, ends before any login, mail that did not leave, a message
    logged twice, flows by tunnel address and by owned host, and daily sessions across the
    fall-back DST day (25 hours) in America/New_York."""
    zone = ZoneInfo("America/New_York")
    t0 = datetime(2026, 10, 30, 12, 0, tzinfo=timezone.utc)

    def at(hours: float) -> datetime:
        return t0 + timedelta(hours=hours)

    alice, bob = "alice@corp.example", "bob@corp.example"
    auth = [login(at(0), "alice", "laptop"), login(at(1), "alice", "phone"), logout(at(2), "alice", "phone"),
            logout(at(6), "alice", "laptop"),
            logout(at(-3), "bob", "old"), login(at(0), "bob", "s1"), login(at(0.01), "bob", ip="10.200.0.5"),
            logout(at(3), "bob", ip="10.200.0.5", reason="tunnel session ended"),
            logout(at(3.01), "bob", reason="connection to TUN-VPN port 443 closed"),
            login(at(10), "carol", ip="10.200.0.9"),
            logout(at(11), "carol", ip="10.200.0.9", reason="tunnel session ended"),
            login(at(20), "dave", "d1"), logout(at(22), "dave", reason="connection to TUN-VPN port 443 closed"),
            login(at(30), "erin", "e1"), logout(at(31), "erin", "e1", reason="maximum session length reached"),
            login(at(40), "erin", "e2")]
    twice = "<twice@corp.example>"
    mails = [mail(at(1.5), alice, ["a@partner.com"], 10), mail(at(3), alice, ["b@partner.com", "x@gmail.com"], 20,
                                                                 files=["q3.xlsx"]),
             mail(at(0.5), alice, ["c@partner.com"], 40), mail(at(4), alice, ["d@partner.com"], 5, action="failed"),
             mail(at(2), bob, ["Big@Partner.com"], 3000, message_id=twice, subject="plans"),
             mail(at(2.001), bob, ["big@partner.com", "k@yahoo.com"], 3000, message_id=twice, subject="plans"),
             mail(datetime(2026, 11, 1, 0, 30, tzinfo=zone), bob, ["e@partner.com"], 7),
             mail(datetime(2026, 11, 1, 23, 30, tzinfo=zone), bob, ["f@other.org"], 8),
             mail(datetime(2026, 10, 31, 23, 30, tzinfo=zone), bob, ["g@partner.com"], 9),
             mail(at(30.5), "erin@corp.example", ["colleague@corp.example"], 50)]
    flows = [flow(at(1), "10.200.0.5", 1234, 10), flow(at(5), "10.200.0.5", 99), flow(at(10.5), "10.200.0.9", 77),
             flow(at(21), "10.20.0.7", 500, 5)]
    settings = parse_settings({"timezone": "America/New_York", "internal_domains": ["corp.example"],
                               "identities": [{"user": "dave", "emails": ["dave@corp.example"],
                                               "vpn_accounts": ["dave"], "hosts": ["10.20.0.7"]}]}, "test")
    now, start = datetime(2026, 11, 4, tzinfo=timezone.utc), datetime(2026, 10, 25, tzinfo=timezone.utc)
    read_from = start - timedelta(days=7)
    con = connect(settings)
    tables = {"t_auth": (AUTHENTICATION, auth), "t_mail": (EMAIL, mails), "t_flows": (NETWORK_TRAFFIC, flows)}
    for name, (model, rows) in tables.items():
        load_table(con, name, model, rows)
        spark.createDataFrame(con.sql(f"SELECT * FROM {name}").to_arrow_table()).createOrReplaceTempView(name)
    relations = {"auth": "t_auth", "email": "t_mail", "flows": "t_flows"}
    duck_counts = compute_sessions(con, settings, now, start, read_from, **relations)
    duck = _session_rows(con, "_ses_result")
    sparked, spark_counts = _spark_sessions(spark, con, settings, now, start, read_from, **relations)
    assert spark_counts == duck_counts and duck_counts.ends_before_login == 1
    assert_same_sessions(duck, sparked)
    by_key = {r["session_key"]: r for r in duck}
    assert {r["end_reason"] for r in duck} >= {"logout", "tunnel-ended", "connection-closed", "timeout", "idle-limit"}
    assert by_key["day|bob|2026-11-01"]["session_end"] - by_key["day|bob|2026-11-01"]["session_start"] == \
        timedelta(hours=25)
    [laptop] = [r for r in duck if r["vpn_session_id"] == "laptop"]
    assert laptop["em_bsum"] == 60  # the overlap pass: before the phone's session and after it ended


def test_spark_words_findings_as_duckdb_does(spark):
    """The DuckDB-only functions rules word their findings with (observed values, sizes) give the
    same text on Spark: sizes in powers of 1000 with one decimal cut, and 6 significant digits with
    ties rounded half to even and trailing zeros dropped."""
    import duckdb

    from exfilwatch.events.spark import to_spark_sql

    sizes = [0, 1, -1, 5, 999, 1000, 1499, 1949, 1950, 999_999, 1_000_000, 1_234_567, 12_345_678_901, 2**40,
             10**16, 10**18 + 5, 9 * 10**18]
    numbers = [0.0, 1.0, 0.5, 0.125, 2.5, 12.0, 30.75, -3.25, 142.857142857, 100000.0, 123456.5, 999999.5,
               1e6, 1234567.0, 1234565.0, 1234575.0, 0.0001234, 0.00001234, 1e-5, 2.0**60, 1e300]
    sql = "SELECT " + ", ".join(
        [f"formatReadableDecimalSize(CAST({v} AS BIGINT)) AS s{i}" for i, v in enumerate(sizes)]
        + [f"format('{{:.6g}}', CAST({v!r} AS DOUBLE)) AS g{i}" for i, v in enumerate(numbers)]
        + ["format('{:.6g}', CAST(NULL AS DOUBLE)) AS g_null", "formatReadableDecimalSize(CAST(NULL AS BIGINT)) AS s_null"])
    duck = duckdb.sql(sql).fetchall()[0]
    sparked = tuple(spark.sql(to_spark_sql(sql, {})).collect()[0])
    assert sparked == duck
    assert duck[sizes.index(1949)] == "1.9 kB" and duck[len(sizes) + numbers.index(123456.5)] == "123456"


def test_duckdb_aggregates_and_times_read_the_same_on_spark(spark):
    """The DuckDB forms the sessions build uses that Spark spells differently: the top n by a key
    (max_by with n, with a filter), an ordered list, strftime with literal letters, any_value
    skipping nulls, and intervals of seconds."""
    import duckdb

    from exfilwatch.events.spark import to_spark_sql

    rows = ("SELECT * FROM (VALUES (1, 'a', 5, TIMESTAMP '2026-10-05 08:00:00', NULL), (1, 'b', 9, "
            "TIMESTAMP '2026-10-05 09:30:00', 'x'), (1, 'c', 7, TIMESTAMP '2026-10-05 10:00:00', NULL), "
            "(1, 'd', 1, TIMESTAMP '2026-10-05 11:00:00', 'y')) t(g, v, k, ts, n)")
    sql = (f"SELECT g, max_by(v, k, 2) AS top, max_by(v, k, 3) FILTER (WHERE k < 9) AS top_filtered, "
           f"min_by(v, k, 2) AS bottom, list({{'v': v, 'k': k}} ORDER BY v) AS ordered, any_value(n) AS some, "
           f"strftime(timezone('UTC', max(ts)), '%Y-%m-%dT%H:%M:%SZ') AS stamp, "
           f"max(ts) + to_seconds(5400.5::DOUBLE) AS later FROM ({rows}) GROUP BY g")
    duck = duckdb.sql(sql.replace("timezone('UTC', max(ts))", "max(ts)")).fetchall()[0]
    sparked = spark.sql(to_spark_sql(sql, {})).collect()[0]
    assert list(sparked.top) == duck[1] == ["b", "c"]
    assert list(sparked.top_filtered) == duck[2] == ["c", "a", "d"]
    assert list(sparked.bottom) == duck[3] == ["d", "a"]
    assert [r.asDict() for r in sparked.ordered] == duck[4]
    assert sparked.some is not None and duck[5] is not None
    assert sparked.stamp == duck[6] == "2026-10-05T11:00:00Z"
    assert sparked.later == duck[7] == datetime(2026, 10, 5, 12, 30, 0, 500000)


def test_a_duckdb_format_spark_cannot_write_is_named():
    from exfilwatch.events.spark import SparkUnavailable, to_spark_sql

    with pytest.raises(SparkUnavailable, match=r"format\('\{:>10\}'"):
        to_spark_sql("SELECT format('{:>10}', name) FROM t", {})
    with pytest.raises(SparkUnavailable, match="timezone"):
        to_spark_sql("SELECT timezone('Europe/Paris', t) FROM t", {})
