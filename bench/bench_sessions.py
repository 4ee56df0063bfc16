"""Benchmark the session rules: build VPN/daily sessions with their email features, the models, and
score a day, for 10,000 users x 90 days of mail and VPN events; against a bare DuckDB
`GROUP BY sender, day` over the same email rows.

    python bench/bench_sessions.py [--users 10000] [--days 90] [--out DIR] [--keep]

The events are synthesised straight into the lake (authentication and email models, Parquet,
committed through the state store as an ingest would), so the numbers are about sessions,
features and models, not parsing (bench_sources_* measure that). Each phase runs in its own
process so its peak RSS is its own; DuckDB gets memory_limit=2GB. Prints a markdown table for
docs/benchmarks.md.

With `--spark`: only the four rules over the last 7 days' sessions, on DuckDB and on Spark in
local mode over the same lake (same findings required), for docs/scale.md.
With `--spark-build`: only the sessions build over every day of the lake (a first run or a
rebuild), on DuckDB and on Spark in local mode (`local[2]`), same sessions required, for
docs/scale.md.

Phases:
* groupby      — the reference: SELECT src_user, local day, count(*), sum(size) ... GROUP BY 1, 2
* build        — all sessions and features for the 90 days (a first run, or `sessions --rebuild`)
* models       — the four rules over every session of the 90 days (each judged against its own
                 model: the user's sessions in the 90 days before it), as `evaluate` does
* day          — a day later: sessions of the new day (incremental build) and the four rules
                 scoring the sessions that closed that day, as the hourly schedule does over a day
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

END = date(2026, 10, 31)
TZ = "America/New_York"
RULES = ["em_fnum", "em_dnum", "em_bsum", "em_bsum_personal"]
CONFIG = f"timezone: {TZ}\nmemory_limit: 2GB\ninternal_domains: [corp.example]\n"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _home(out: Path):
    from exfilwatch.config import Home, load_settings

    home = Home(root=out / "home", config_path=out / "home" / "config.yaml")
    return home, load_settings(home)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(TZ)).astimezone(timezone.utc)


# Deterministic pseudo-random numbers in SQL: r(x) in [0, 1) from a hash of the arguments.
SYNTH = """
CREATE MACRO r(a, b, c) AS (hash(a, b, c) % 1000003) / 1000003.0;
CREATE TABLE users AS
    SELECT i AS uid, printf('u%05d', i) AS name,
           1 + floor(r(i, 0, 1) * r(i, 0, 2) * 24)::INTEGER AS rate,      -- heavy-tailed mail rate
           0.3 + 0.6 * r(i, 0, 3) AS remote                                 -- share of days on VPN
    FROM range($users) t(i);
CREATE TABLE days AS
    SELECT CAST(d AS DATE) AS day, isodow(CAST(d AS DATE)) >= 6 AS weekend
    FROM range($first::TIMESTAMP, $last::TIMESTAMP + INTERVAL 1 DAY, INTERVAL 1 DAY) t(d);
CREATE TABLE vpn AS
    SELECT u.uid, u.name, d.day,
           timezone($tz, d.day + INTERVAL 7 HOUR + to_minutes(CAST(r(u.uid, d.day, 4) * 180 AS BIGINT))) AS t0,
           to_minutes(CAST(300 + r(u.uid, d.day, 5) * 300 AS BIGINT)) AS len,
           printf('%08x', hash(u.uid, d.day) % 4294967296) AS sid,
           printf('10.%d.%d.%d', 200 + u.uid // 65536, (u.uid // 256) % 256, u.uid % 256) AS ip,
           r(u.uid, d.day, 6) < 0.1 AS timed_out
    FROM users u CROSS JOIN days d
    WHERE NOT d.weekend AND r(u.uid, d.day, 7) < u.remote;
CREATE TABLE auth_rows AS
    SELECT t0 AS _time, name AS "user", '198.51.100.7' AS src_ip, NULL AS assigned_ip, 'vpn01' AS dest, 'Users' AS realm,
           'Users' AS roles, sid AS session_id, 'success' AS action, 'vpn-login' AS event_type, NULL::DOUBLE AS duration,
           NULL::BIGINT AS bytes_in, NULL::BIGINT AS bytes_out, NULL AS reason, 'Pulse-Secure' AS user_agent,
           'bench' AS source, 'bench' AS raw_ref FROM vpn
    UNION ALL SELECT t0 + INTERVAL 6 SECOND, name, '198.51.100.7', ip, 'vpn01', 'Users', 'Users', NULL, 'success',
           'vpn-login', NULL, NULL, NULL, 'tunnel session started', NULL, 'bench', 'bench' FROM vpn
    UNION ALL SELECT t0 + len - INTERVAL 3 SECOND, name, '198.51.100.7', ip, 'vpn01', 'Users', 'Users', NULL, 'success',
           'vpn-logout', NULL, NULL, NULL, 'tunnel session ended', NULL, 'bench', 'bench' FROM vpn WHERE NOT timed_out
    UNION ALL SELECT t0 + len, name, '198.51.100.7', NULL, 'vpn01', 'Users', 'Users', sid, 'success', 'vpn-logout',
           NULL, NULL, NULL, CASE WHEN timed_out THEN 'session timed out due to inactivity' ELSE 'logout' END, NULL,
           'bench', 'bench' FROM vpn;
CREATE TABLE msg AS
    SELECT u.uid, u.name, d.day, k,
           r(u.uid, d.day, 100 + k) AS x1, r(u.uid, d.day, 200 + k) AS x2, r(u.uid, d.day, 300 + k) AS x3
    FROM users u CROSS JOIN days d,
         range(CASE WHEN d.weekend THEN CAST(r(u.uid, d.day, 8) < 0.2 AS INTEGER)
                    ELSE CAST(u.rate * (0.5 + r(u.uid, d.day, 9)) AS INTEGER) END) t(k);
CREATE TABLE email_rows AS
    SELECT coalesce(
               CASE WHEN v.uid IS NOT NULL AND m.x1 < 0.8 THEN v.t0 + to_seconds(CAST(m.x2 * epoch(v.len) AS BIGINT)) END,
               timezone($tz, m.day + INTERVAL 8 HOUR + to_seconds(CAST(m.x2 * 36000 AS BIGINT)))) AS _time,
           printf('<%d.%d.%d@corp.example>', m.uid, epoch(m.day)::BIGINT, m.k) AS message_id,
           printf('Q%X', hash(m.uid, m.day, m.k) % 68719476736) AS internal_message_id,
           m.name || '@corp.example' AS src_user, 'corp.example' AS src_user_domain,
           CASE WHEN m.x3 < 0.35 THEN [printf('u%05d@corp.example', CAST(m.x1 * $users AS INTEGER))]
                WHEN m.x3 < 0.97 THEN [printf('c%d@partner%03d.example', CAST(m.x2 * 9 AS INTEGER),
                                               CAST((m.uid * 7 + CAST(m.x1 * 12 AS INTEGER)) % 500 AS INTEGER)),
                                        printf('u%05d@corp.example', CAST(m.x2 * $users AS INTEGER))]
                ELSE [m.name || '.home@gmail.com'] END AS recipient,
           NULL::VARCHAR[] AS recipient_domain, 1 AS recipient_count,
           CASE WHEN m.x2 < 0.01 THEN 5000000 + CAST(m.x1 * 15000000 AS BIGINT)
                ELSE CAST(exp(8 + 4 * m.x1 * m.x2) AS BIGINT) END AS size,
           'bench' AS subject, NULL::VARCHAR[] AS file_name, NULL AS direction, 'delivered' AS action,
           NULL AS src_ip, NULL AS dest, 'email-out' AS event_type, 'bench' AS source, 'bench' AS raw_ref
    FROM msg m LEFT JOIN vpn v ON v.uid = m.uid AND v.day = m.day;
"""


def phase_synth(out: Path, users: int, days: int) -> dict:
    import duckdb

    from exfilwatch.events.lake import write_batch
    from exfilwatch.models import AUTHENTICATION, EMAIL
    from exfilwatch.home import open_state

    (out / "home").mkdir(parents=True, exist_ok=True)
    (out / "home" / "config.yaml").write_text(CONFIG)
    home, settings = _home(out)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    first = END - timedelta(days=days - 1)
    for statement in SYNTH.split(";\n"):
        if statement.strip():
            sql = statement.replace("$users", str(users)).replace("$first", f"'{first}'").replace(
                "$last", f"'{END}'").replace("$tz", f"'{TZ}'")
            con.execute(sql)
    state = open_state(home)
    counts = {}
    for model, table in ((AUTHENTICATION, "auth_rows"), (EMAIL, "email_rows")):
        batch = f"bench-{model.name}"
        present = {row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()}
        missing = [f'CAST(NULL AS {typ}) AS "{name}"' for name, typ in model.columns if name not in present]
        # columns the model gained after this generator was written are left empty, as in older lake files
        rows_sql = f"(SELECT *, {', '.join(missing)} FROM {table})" if missing else table
        files = write_batch(con, home.lake, model, batch, rows_sql)
        rows = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
        counts[model.name] = rows
        with state.transaction() as db:
            db.execute("INSERT INTO batches (batch_id, model, source, file, first_line, last_line, lines, events, "
                       "quarantined, skipped, receiver) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       (batch, model.name, "bench", "synthetic", 1, rows, rows, rows, 0, 0, "synthetic"))
            db.executemany("INSERT INTO batch_files VALUES (?,?,?,?,?)",
                           [(state.relative(f.path), batch, model.name, f.day, f.rows) for f in files])
    return {"rows": counts["email"], "auth_rows": counts["authentication"]}


def phase_groupby(out: Path) -> dict:
    import duckdb

    home, _settings = _home(out)
    con = duckdb.connect()
    con.execute("SET memory_limit = '2GB'")
    rows = con.execute(f"""
        SELECT src_user, CAST(timezone('{TZ}', _time) AS DATE) AS day, count(*) AS messages, sum(size) AS bytes
        FROM read_parquet('{home.lake}/email/*/*.parquet') GROUP BY 1, 2
    """).fetchall()
    return {"rows": len(rows)}


def phase_build(out: Path) -> dict:
    from exfilwatch.events.engine import connect
    from exfilwatch.features.sessions import build_user_sessions
    from exfilwatch.home import open_state

    home, settings = _home(out)
    state = open_state(home)
    con = connect(settings, home.spill_dir)
    # up to the end of the last-but-one day; the `day` phase adds the last day
    report = build_user_sessions(con, state, settings, _midnight(END), rebuild=True)
    return {"rows": report.sessions}


def phase_models(out: Path) -> dict:
    from exfilwatch.detections.schema import load_detections
    from exfilwatch.events.engine import connect
    from exfilwatch.evaluate.replay import replay
    from exfilwatch.home import open_state

    home, settings = _home(out)
    state = open_state(home)
    con = connect(settings, home.spill_dir)
    detections = [load_detections()[i] for i in RULES]
    findings, sessions = replay(con, state, settings, detections, _midnight(END - timedelta(days=400)), _midnight(END))
    return {"rows": sessions, "findings": len(findings)}


def phase_day(out: Path) -> dict:
    from exfilwatch.detections.runner import RunWindow, execute, resolve_parameters
    from exfilwatch.detections.schema import load_detections
    from exfilwatch.events.engine import connect, expose_models, register_lake_views
    from exfilwatch.features.sessions import build_user_sessions
    from exfilwatch.home import open_state

    home, settings = _home(out)
    state = open_state(home)
    con = connect(settings, home.spill_dir)
    start, end = _midnight(END), _midnight(END + timedelta(days=1))
    report = build_user_sessions(con, state, settings, end + timedelta(hours=2))
    window = RunWindow(now=end + timedelta(hours=2), earliest=start, latest=end)
    findings = 0
    for detection in (load_detections()[i] for i in RULES):
        params = resolve_parameters(detection, settings, {}, window)
        register_lake_views(con, settings, state, params["history"], end)
        expose_models(con)
        findings += len(execute(con, detection, params))
    judged = con.execute("SELECT count(*) FROM user_sessions WHERE _time >= $s AND _time < $e",
                         {"s": start, "e": end}).fetchall()[0][0]
    return {"rows": judged, "new_sessions": report.sessions, "findings": findings}


def _rules_over_last_days(out: Path, spark_engine: bool, days: int = 7) -> dict:
    """The four rules judging the sessions that closed in the last `days` days of the built sessions,
    each against its 90-day model, on DuckDB or on Spark (local mode, the machine's cores)."""
    from exfilwatch.detections.runner import RunWindow, execute, resolve_parameters
    from exfilwatch.detections.schema import load_detections
    from exfilwatch.events.engine import connect, expose_models, register_lake_views
    from exfilwatch.home import open_state

    home, settings = _home(out)
    state = open_state(home)
    start, end = _midnight(END - timedelta(days=days)), _midnight(END)
    window = RunWindow(now=end + timedelta(hours=2), earliest=start, latest=end)
    spark, started = None, time.perf_counter()
    if spark_engine:
        from exfilwatch.detections.spark import execute_spark
        from exfilwatch.events.spark import spark_session

        spark = spark_session(settings, master="local[2]")
        spark.sparkContext.setLogLevel("ERROR")
    session_start = time.perf_counter() - started
    con = connect(settings, home.spill_dir)
    findings = []
    started = time.perf_counter()
    for detection in (load_detections()[i] for i in RULES):
        params = resolve_parameters(detection, settings, {}, window)
        if spark is not None:
            rows = execute_spark(spark, state, settings, detection, params)
        else:
            register_lake_views(con, settings, state, params["history"], end)
            expose_models(con)
            rows = execute(con, detection, params)
        findings += sorted((detection.id, row["session_id"]) for row in rows)
    return {"rows": len(findings), "findings": findings, "rules_seconds": time.perf_counter() - started,
            "engine_start_seconds": session_start}


def phase_rules_duckdb(out: Path) -> dict:
    return _rules_over_last_days(out, spark_engine=False)


def phase_rules_spark(out: Path) -> dict:
    return _rules_over_last_days(out, spark_engine=True)


def _sessions_build(out: Path, spark_engine: bool) -> dict:
    """compute_sessions over every day of the lake on one engine: its time (the engine's start apart)
    and a digest of the sessions with their features, to compare the engines."""
    import hashlib

    from exfilwatch.events.engine import connect, register_lake_views
    from exfilwatch.features.sessions import compute_sessions
    from exfilwatch.home import open_state

    home, settings = _home(out)
    state = open_state(home)
    first = min(r["day"] for r in state.query("SELECT day FROM batch_files WHERE model = 'authentication'"))
    start = datetime.fromisoformat(first).replace(tzinfo=timezone.utc)
    read_from, now = start - timedelta(days=settings.sessions.lookback_days), _midnight(END)
    con = connect(settings, home.spill_dir)
    started, cpu_before = time.perf_counter(), _cpu_with_children()
    if spark_engine:
        from exfilwatch.events.spark import SparkConnection, register_spark_views, spark_session

        spark = spark_session(settings, master="local[2]")
        spark.sparkContext.setLogLevel("ERROR")
        engine_start = time.perf_counter() - started
        started, cpu_before = time.perf_counter(), _cpu_with_children()
        register_spark_views(spark, settings, state, read_from, now)
        steps = SparkConnection(spark)
        counts = compute_sessions(steps, settings, now, start, read_from, auth="authentication", email="email",
                                  flows="network_traffic")
        con.register("_ses_result", steps.table_arrow("_ses_result"))
    else:
        engine_start = 0.0
        register_lake_views(con, settings, state, read_from, now)
        counts = compute_sessions(con, settings, now, start, read_from)
    seconds = time.perf_counter() - started
    cpu = _cpu_with_children() - cpu_before
    rows = con.execute("SELECT session_key, em_fnum, em_dnum, em_bsum, em_bsum_personal, "
                       "to_json(top_recipients)::VARCHAR FROM _ses_result ORDER BY session_key").fetchall()
    return {"rows": len(rows), "digest": hashlib.sha256(repr(rows).encode()).hexdigest(),
            "counts": counts.as_dict(), "build_seconds": seconds, "build_cpu": cpu,
            "engine_start_seconds": engine_start}


def _cpu_with_children() -> float:
    """CPU seconds of this process (DuckDB's threads included) and of its children (Spark's JVM)."""
    import psutil

    me = psutil.Process()
    times = [me.cpu_times()] + [child.cpu_times() for child in me.children(recursive=True)]
    return sum(t.user + t.system for t in times)


def phase_sessions_duckdb(out: Path) -> dict:
    return _sessions_build(out, spark_engine=False)


def phase_sessions_spark(out: Path) -> dict:
    return _sessions_build(out, spark_engine=True)


PHASES = {"synth": phase_synth, "groupby": phase_groupby, "build": phase_build, "models": phase_models,
          "day": phase_day, "rules-duckdb": phase_rules_duckdb, "rules-spark": phase_rules_spark,
          "sessions-duckdb": phase_sessions_duckdb, "sessions-spark": phase_sessions_spark}


def run_phase(name: str, out: Path, extra: list[str]) -> dict:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--phase", name, "--out", str(out), *extra],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"phase {name} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - started
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--out", type=Path, default=Path("bench/out/sessions"))
    parser.add_argument("--phase", choices=PHASES)
    parser.add_argument("--keep", action="store_true", help="Reuse the synthesised lake.")
    parser.add_argument("--spark", action="store_true",
                        help="Only the four rules over the last 7 days' sessions, DuckDB against Spark local mode "
                             "(after the other phases, or on a --keep lake whose sessions are built).")
    parser.add_argument("--spark-build", action="store_true",
                        help="Only the sessions build over the whole lake, DuckDB against Spark local mode.")
    args = parser.parse_args()
    if args.phase:
        import duckdb  # noqa: F401
        import exfilwatch.features.sessions, exfilwatch.evaluate.replay  # noqa: F401,E401
        started, cpu = time.perf_counter(), time.process_time()
        if args.phase == "synth":
            result = phase_synth(args.out, args.users, args.days)
        else:
            result = PHASES[args.phase](args.out)
        result.update(seconds=time.perf_counter() - started, cpu=time.process_time() - cpu,
                      peak_rss_mb=peak_rss_mb())
        print(json.dumps(result))
        return 0

    extra = ["--users", str(args.users), "--days", str(args.days)]
    results = {}
    if not (args.keep and (args.out / "home" / "state.sqlite").exists()):
        shutil.rmtree(args.out, ignore_errors=True)
        args.out.mkdir(parents=True)
        results["synth"] = run_phase("synth", args.out, extra)
    if args.spark:
        return compare_spark(args.out, extra, results)
    if args.spark_build:
        return compare_spark_build(args.out, extra, results)
    for name in ("groupby", "build", "models", "day"):
        results[name] = run_phase(name, args.out, extra)
    base = results["groupby"]["seconds"]
    base_cpu = results["groupby"]["cpu"]
    labels = {
        "synth": "synthesise the events into the lake (not measured against)",
        "groupby": "bare DuckDB `GROUP BY sender, day` over the email rows (reference)",
        "build": f"build all sessions + features ({args.days} days)",
        "models": f"models + the four rules over every session ({args.days} days)",
        "day": "a day later: new sessions + models + score the day",
    }
    print(f"\n{args.users} users x {args.days} days: {results.get('synth', {}).get('rows', '?')} email rows, "
          f"{results.get('synth', {}).get('auth_rows', '?')} VPN rows\n")
    print("| phase | rows out | seconds | CPU seconds | x reference (wall) | x reference (CPU) | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for name, result in results.items():
        print(f"| {labels[name]} | {result['rows']} | {result['seconds']:.2f} | {result['cpu']:.2f} | "
              f"{result['seconds'] / base:.1f} | {result['cpu'] / base_cpu:.1f} | {result['peak_rss_mb']:.0f} |")
    return 0


def compare_spark(out: Path, extra: list[str], results: dict) -> int:
    """The four rules on DuckDB and on Spark local mode over the same lake: same findings, and the time."""
    if "synth" in results:
        results["build"] = run_phase("build", out, extra)
    duck = run_phase("rules-duckdb", out, extra)
    spark = run_phase("rules-spark", out, extra)
    same = duck["findings"] == spark["findings"]
    print(f"\nthe four rules over the sessions that closed in the last 7 days ({len(duck['findings'])} findings; "
          f"Spark's are {'the same' if same else 'DIFFERENT'})\n")
    _print_engines("four rules s (wall)", "rules_seconds", duck, spark)
    return 0 if same else 1


def _print_engines(heading: str, key: str, duck: dict, spark: dict) -> None:
    import os

    print(f"| engine | engine start s | {heading} | x DuckDB | peak RSS of the Python process MB |")
    print("|---|---:|---:|---:|---:|")
    for name, r in (("DuckDB", duck), ("Spark local[2]", spark)):
        print(f"| {name} | {r['engine_start_seconds']:.1f} | {r[key]:.1f} | {r[key] / duck[key]:.1f} | "
              f"{r['peak_rss_mb']:.0f} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def compare_spark_build(out: Path, extra: list[str], results: dict) -> int:
    """The sessions build over the whole lake on DuckDB and on Spark local mode: same sessions, and the time."""
    duck = run_phase("sessions-duckdb", out, extra)
    spark = run_phase("sessions-spark", out, extra)
    same = duck["digest"] == spark["digest"] and duck["counts"] == spark["counts"]
    synth = results.get("synth", {})
    print(f"\nsessions build over the whole lake: {synth.get('rows', '?')} email rows, {synth.get('auth_rows', '?')} "
          f"VPN rows -> {duck['rows']} sessions (Spark's are {'the same' if same else 'DIFFERENT'})\n")
    _print_engines("sessions build s (wall)", "build_seconds", duck, spark)
    print(f"CPU seconds of the build (Python, DuckDB's threads, Spark's JVM): DuckDB {duck['build_cpu']:.1f}, "
          f"Spark {spark['build_cpu']:.1f} ({spark['build_cpu'] / duck['build_cpu']:.1f}x)")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
