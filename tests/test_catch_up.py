"""The one-pass catch-up finds what running every fire in order finds, and records the same runs.

The reference is `Options(catch_up="per-fire")`: each due fire's search on its own, in order.
The data is the synthetic organisation's real-format logs (Pulse Secure, Postfix, Zeek conn.log)
over four weeks that span the end of daylight saving time in New York, with a two-day hole, and
a first run before the last days arrived, then a second run after them together with late lines
of a day already judged. Two session rules and the three network rules run; findings, their updates (same entity and bucket, larger value), the runs recorded
and the watermarks must be identical.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import hypothesis
import pytest
from hypothesis import strategies as st

from exfilwatch import pipeline
from exfilwatch.config import Home, Settings, load_settings
from exfilwatch.detections.batched import segment_plan
from exfilwatch.findings import catchup, dailysums
from exfilwatch.findings.catchup import judged_chunks
from exfilwatch.detections.schema import load_detections
from exfilwatch.events.engine import connect, local_day_sql
from exfilwatch.evaluate.replay import replay
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.home import open_state
from exfilwatch.state import StateStore
from exfilwatch.synth.org import generate_organisation

from .servicekit import sigkill_once_it_says

NY = ZoneInfo("America/New_York")
END = date(2026, 11, 6)
HOLE = (datetime(2026, 10, 20, tzinfo=NY), datetime(2026, 10, 22, tzinfo=NY))  # no line at all
CUT = datetime(2026, 11, 3, 6, 0, tzinfo=NY)  # the first run sees the logs up to here
LATE = (datetime(2026, 11, 2, 12, tzinfo=NY), datetime(2026, 11, 2, 18, tzinfo=NY))  # flows that arrive late
# Two session rules (the other two differ only in the feature they judge) and the three network
# rules, whose one pass runs their batched forms (`catch_up.search`) a day of fires per query.
CHOSEN = ("em_bsum", "em_bsum_personal", "email_servers_sending_high_volume_traffic_to_hosts",
          "hosts_receiving_high_volume_of_network_traffic_from_email_server", "hosts_receiving_unusual_mail_volume_robust")
NETWORK = tuple(i for i in CHOSEN if not i.startswith("em_"))
SESSION_RULES = tuple(i for i in CHOSEN if i.startswith("em_"))
MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                                      "Dec"), start=1)}


def line_time(kind: str, line: str) -> datetime | None:
    """When a log line happened (None for headers), read the way each format writes it."""
    if kind == "conn":
        return None if line.startswith("#") else datetime.fromtimestamp(float(line.split("\t", 1)[0]), timezone.utc)
    if kind == "vpn":
        return datetime.fromisoformat(line[:25])
    clock = datetime.strptime(line[7:15], "%H:%M:%S")
    return datetime(2026, MONTHS[line[:3]], int(line[4:6]), clock.hour, clock.minute, clock.second, tzinfo=NY)


def split(path: Path, kind: str, out: Path) -> tuple[Path, Path]:
    """(first part, second part) of a log: lines in the hole dropped; the second part holds the
    lines after CUT and, for flows, the late lines of a day the first part covers."""
    first, second = [], []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        when = line_time(kind, line)
        if when is None:
            first.append(line)
            second.append(line)
        elif HOLE[0] <= when < HOLE[1]:
            continue
        elif when >= CUT or (kind == "conn" and LATE[0] <= when < LATE[1]):
            second.append(line)
        else:
            first.append(line)
    parts = (out / f"{path.name}.1", out / f"{path.name}.2")
    for part, lines in zip(parts, (first, second)):
        part.write_text("".join(lines), encoding="utf-8")
    return parts


@pytest.fixture(scope="module")
def org(tmp_path_factory):
    root = tmp_path_factory.mktemp("catch_up")
    ds = generate_organisation(root / "logs", users=30, days=21, end=END, flows_per_host_day=100)
    parts = {kind: split(path, kind, root) for kind, path in
             (("vpn", ds.vpn_log), ("mail", ds.mail_log), ("conn", ds.conn_log))}
    return root, ds, parts


def homes(root: Path, config: Path, names: list[str]) -> list[Home]:
    made = []
    for name in names:
        (root / name).mkdir()
        shutil.copy(config, root / name / "config.yaml")
        made.append(Home(root=root / name, config_path=root / name / "config.yaml"))
    return made


def ingest(home: Home, parts: dict[str, tuple[Path, Path]], which: int) -> None:
    settings = load_settings(home)
    ingest_paths([parts["vpn"][which]], home, settings, source_name="pulse_secure")
    ingest_paths([parts["mail"][which]], home, settings, source_name="postfix", year=2026)
    ingest_paths([parts["conn"][which]], home, settings, source_name="zeek_conn")


def schedule(home: Home, now: datetime, catch_up: str, ids: tuple[str, ...] = CHOSEN,
             overrides: dict[str, str] | None = None) -> pipeline.Result:
    settings = load_settings(home)
    state = open_state(home)
    con = connect(settings)
    try:
        catalog = list(load_detections().values())
        chosen = [d for d in catalog if d.id in ids]
        return pipeline.run(con, state, settings, catalog, now,
                            pipeline.Options(detections=chosen, risk=False, deliver=False, catch_up=catch_up,
                                             overrides=overrides or {}))
    finally:
        con.close()
        state.close()


def recorded(home: Home) -> dict[str, list[dict]]:
    state = open_state(home)
    try:
        return {
            "findings": [dict(r) for r in state.query(
                "SELECT finding_key, time, value, message, fields, first_run_id, last_run_id, updates "
                "FROM findings ORDER BY finding_key")],
            "runs": [dict(r) for r in state.query(
                "SELECT run_id, detection_id, mode, now, earliest, latest, findings FROM detection_runs ORDER BY run_id")],
            "watermarks": [dict(r) for r in state.query("SELECT * FROM watermarks ORDER BY detection_id")],
        }
    finally:
        state.close()


def test_one_pass_and_per_fire_agree_over_gaps_dst_and_late_data(org):
    root, ds, parts = org
    one_pass, per_fire = homes(root, ds.config, ["one_pass", "per_fire"])
    for home in (one_pass, per_fire):
        ingest(home, parts, 0)
    first_now = CUT + timedelta(hours=1)
    schedule(one_pass, first_now, "one-pass")
    schedule(per_fire, first_now, "per-fire")
    first = recorded(one_pass)
    assert first == recorded(per_fire)
    for home in (one_pass, per_fire):
        ingest(home, parts, 1)
    last_now = datetime(END.year, END.month, END.day, tzinfo=NY) + timedelta(days=1, hours=2)
    result = schedule(one_pass, last_now, "one-pass")
    schedule(per_fire, last_now, "per-fire")
    second = recorded(one_pass)
    assert second == recorded(per_fire)
    # Both kinds of search found something, and the same-bucket rule updated findings in place.
    found = {f["finding_key"].split("|")[0] for f in second["findings"]}
    assert {"em_bsum_personal", "hosts_receiving_high_volume_of_network_traffic_from_email_server"} <= found
    assert set(NETWORK) <= found  # each batched form found something the per-fire search found too
    assert any(f["updates"] > 0 for f in second["findings"])
    assert len(second["runs"]) > len(first["runs"]) > 0
    assert sum(r.fires for r in result.detections) > 0
    # `evaluate`'s replay is the same one pass: over the range the schedule judged, the same findings.
    session_rules = [d for d in load_detections().values() if d.id in CHOSEN and d.data_model == "user_sessions"]
    last_latest = max(datetime.fromisoformat(r["latest"]) for r in second["runs"] if r["detection_id"] == "em_bsum")
    settings = load_settings(one_pass)
    state, con = open_state(one_pass), connect(settings)
    try:
        replayed, _ = replay(con, state, settings, session_rules, datetime(2026, 1, 1, tzinfo=NY), last_latest)
    finally:
        con.close()
        state.close()
    stored = sorted(f["finding_key"] for f in second["findings"] if f["finding_key"].startswith("em_"))
    assert sorted(f"{f.detection_id}|{f.user}|{f.session_id}" for f in replayed) == stored


def test_a_baseline_starting_inside_a_day_counts_that_day_from_its_start(org):
    """`--set history=-9d` (not a midnight): each fire's baseline begins at its own hour nine days
    back, so its first day is partial, a sample of its own in the statistics. The batched forms
    read that part of the day apart from the whole days (checked: the findings' statistics differ
    when it is left out)."""
    root, ds, parts = org
    one_pass, per_fire = homes(root, ds.config, ["history_one_pass", "history_per_fire"])
    for home in (one_pass, per_fire):
        ingest(home, parts, 0)
        ingest(home, parts, 1)
    now = datetime(END.year, END.month, END.day, tzinfo=NY) + timedelta(days=1, hours=2)
    escu, robust = NETWORK[:2], NETWORK[2]
    for home, mode in ((one_pass, "one-pass"), (per_fire, "per-fire")):
        schedule(home, now, mode, escu, {"history": "-9d", "deviation_threshold": "2"})
        schedule(home, now, mode, (robust,), {"history": "-9d", "minimum_bytes": "100000000", "minimum_days": "4"})
    found = recorded(one_pass)
    assert found == recorded(per_fire)
    assert {f["finding_key"].split("|")[0] for f in found["findings"]} == set(NETWORK)


def test_the_hourly_run_reads_stored_daily_sums_and_no_old_flow(org):
    """After a first run, the run a day later reads the network rules' baseline from the stored
    daily sums: with the older flow files gone from the disk (still listed as committed, so any
    read of them fails), it stores what the per-fire path stores with every file there."""
    root, ds, parts = org
    summed, reference = homes(root, ds.config, ["summed", "reference"])
    last_day = datetime(END.year, END.month, END.day, tzinfo=NY)
    for home, catch_up in ((summed, "one-pass"), (reference, "per-fire")):
        ingest(home, parts, 0)
        ingest(home, parts, 1)
        schedule(home, last_day, catch_up, NETWORK)
    assert recorded(summed) == recorded(reference)
    state = open_state(summed)
    try:
        stored_days = {r["day"] for r in state.query("SELECT day FROM daily_sums")}
        old = [r["path"] for r in state.query("SELECT path FROM batch_files WHERE model = 'network_traffic' AND day < ?",
                                              ((last_day - timedelta(days=2)).date().isoformat(),))]
    finally:
        state.close()
    assert (last_day - timedelta(days=2)).date().isoformat() in stored_days
    assert len(old) > 10
    gone = root / "gone"
    for path in old:
        (gone / path).parent.mkdir(parents=True, exist_ok=True)
        (summed.root / path).rename(gone / path)
    result = schedule(summed, last_day + timedelta(days=1), "one-pass", NETWORK)
    schedule(reference, last_day + timedelta(days=1), "per-fire", NETWORK)
    assert sum(r.fires for r in result.detections) >= 2 * 23
    after = recorded(summed)
    assert after == recorded(reference)
    assert len(after["runs"]) > 0


# A first run of the network rules in a process of its own, SIGKILLed by the parent once the
# KILL_AT-th write of daily sums has renamed its days into place and before it records them.
KILLED_RUN = """
import sys
from datetime import datetime
from pathlib import Path
from exfilwatch import pipeline
from exfilwatch.config import Home, load_settings
from exfilwatch.detections.schema import load_detections
from exfilwatch.events.engine import connect
from exfilwatch.findings import dailysums
from exfilwatch.home import open_state

root, now, kill_at, ids = sys.argv[1], datetime.fromisoformat(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
write_each_day, writes = dailysums._write_each_day, []

def written_then_wait(*args):
    done = write_each_day(*args)
    writes.append(done)
    if len(writes) == kill_at:
        print("written", flush=True)
        sys.stdin.read()  # until the parent's SIGKILL
    return done

dailysums._write_each_day = written_then_wait
home = Home(root=Path(root), config_path=Path(root) / "config.yaml")
settings = load_settings(home)
catalog = list(load_detections().values())
pipeline.run(connect(settings), open_state(home), settings, catalog, now,
             pipeline.Options(detections=[d for d in catalog if d.id in ids], risk=False, deliver=False))
print("finished", flush=True)
"""


def test_a_run_killed_while_writing_daily_sums_leaves_nothing_the_next_run_stores_twice(org):
    """A real SIGKILL between a write of daily sums and its record: the next run deletes the days
    the killed one renamed into place, keeps the fires the killed run recorded, and ends with the
    runs, findings, watermarks and stored days of a run that was never killed."""
    root, ds, parts = org
    killed, whole = homes(root, ds.config, ["killed", "whole"])
    now = datetime(END.year, END.month, END.day, tzinfo=NY)
    for home in (killed, whole):
        ingest(home, parts, 0)
        ingest(home, parts, 1)
    schedule(whole, now, "one-pass", NETWORK)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(killed.root), now.isoformat(), "3", *NETWORK],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sigkill_once_it_says(child, "written")
    state = open_state(killed)
    try:
        recorded_paths = {state.absolute(r["path"]) for r in state.query("SELECT path FROM daily_sums")}
        assert state.query("SELECT count(*) AS n FROM detection_runs")[0]["n"] > 0  # the first rule's fires were kept
    finally:
        state.close()
    left = {str(p) for p in (killed.root / dailysums.FOLDER).rglob("*.parquet")}
    assert left - recorded_paths, "the killed write had renamed days it never recorded"
    schedule(killed, now, "one-pass", NETWORK)
    assert recorded(killed) == recorded(whole)
    state = open_state(killed)
    try:
        recorded_paths = {state.absolute(r["path"]) for r in state.query("SELECT path FROM daily_sums")}
        assert len(recorded_paths) == state.query("SELECT count(*) AS n FROM daily_sums")[0]["n"]
    finally:
        state.close()
    assert {str(p) for p in (killed.root / dailysums.FOLDER).rglob("*") if p.is_file()} == recorded_paths


def test_a_run_whose_fires_all_fall_in_a_hole_of_the_data_records_nothing_and_moves_on(org):
    """Fires inside the two-day hole have no judged row: a run made of them alone skips them all
    (one pass and per fire alike) and sets the watermark past them."""
    root, ds, parts = org
    one_pass, per_fire = homes(root, ds.config, ["hole_one_pass", "hole_per_fire"])
    inside = HOLE[0] + timedelta(hours=30)
    for home, mode in ((one_pass, "one-pass"), (per_fire, "per-fire")):
        ingest(home, parts, 0)
        schedule(home, HOLE[0] + timedelta(hours=1), mode, NETWORK)
        result = schedule(home, inside, mode, NETWORK)
        assert sum(r.fires for r in result.detections) == 0
        assert all(r.skipped_fires > 0 for r in result.detections)
    assert recorded(one_pass) == recorded(per_fire)
    assert {datetime.fromisoformat(w["last_fire"]) for w in recorded(one_pass)["watermarks"]} == {inside}


def test_judged_windows_are_chunked_only_while_windows_touch_and_offsets_hold():
    detection = load_detections()["em_fnum"]
    from exfilwatch.config import parse_settings
    from exfilwatch.detections.runner import resolve_parameters, run_window
    from exfilwatch.detections.schedule import fire_times

    settings = parse_settings({"timezone": "America/New_York"}, "t")
    fires = fire_times("5 * * * *", datetime(2026, 10, 30, tzinfo=NY), datetime(2026, 11, 3, tzinfo=NY),
                       "America/New_York")
    params = [resolve_parameters(detection, settings, {}, run_window(detection, f, settings.timezone)) for f in fires]
    chunks = judged_chunks(detection, params)
    assert [i for chunk in chunks for i in chunk] == list(range(len(params)))
    for chunk in chunks:
        assert all(params[a]["latest"] == params[b]["earliest"] for a, b in zip(chunk, chunk[1:]))
        assert len({params[i]["now"] - params[i]["history"] for i in chunk}) == 1  # one model length per chunk
    # The end of DST (1 November) starts a new chunk: the 90-day model is an hour longer after it.
    assert 1 < len(chunks) <= 4
    network = load_detections()["hosts_receiving_high_volume_of_network_traffic_from_email_server"]
    assert judged_chunks(network, params[:3]) == [[0], [1], [2]]
    # A chunk also ends before it would judge more rows than the bound; a fire above it runs alone.
    rows = [10] * len(params)
    rows[5] = 100
    bounded = judged_chunks(detection, params, rows, max_rows=30)
    assert [i for chunk in bounded for i in chunk] == list(range(len(params)))
    assert [5] in bounded
    assert all(sum(rows[i] for i in chunk) <= 30 for chunk in bounded if chunk != [5])
    assert all(set(chunk) <= set(next(c for c in chunks if chunk[0] in c)) for chunk in bounded)


def test_chunks_bounded_by_judged_rows_find_what_each_fire_finds(org, monkeypatch):
    root, ds, parts = org
    small, per_fire = homes(root, ds.config, ["small_chunks", "small_chunks_per_fire"])
    now = datetime(END.year, END.month, END.day, tzinfo=NY) + timedelta(days=1, hours=2)
    for home in (small, per_fire):
        ingest(home, parts, 0)
        ingest(home, parts, 1)
    schedule(per_fire, now, "per-fire", SESSION_RULES)
    # 30 users' sessions: a bound of 12 rows cuts the weeks into chunks of a few hours
    cut = []

    def chunks_seen(detection, params, rows=None, max_rows=None):
        made = judged_chunks(detection, params, rows, max_rows)
        cut.append(len(made) > len(judged_chunks(detection, params)))
        return made

    monkeypatch.setattr(catchup, "CHUNK_ROWS", 12)
    monkeypatch.setattr(catchup, "judged_chunks", chunks_seen)
    schedule(small, now, "one-pass", SESSION_RULES)
    assert cut and all(cut)
    found = recorded(small)
    assert found == recorded(per_fire)
    assert any(f["finding_key"].startswith("em_") for f in found["findings"])


def test_segment_plans_only_for_sums_minimums_and_maximums_compared_by_time_with_parameters():
    plan = segment_plan("SELECT src_ip, _day, sum(bytes_in) AS b FROM network_traffic "
                        "WHERE dest_category = 'email_server' AND _time >= least($history, $earliest) "
                        "AND _time < $latest GROUP BY ALL", "network_traffic")
    assert plan is not None and plan.keys == ["_day", "dest_category", "src_ip"]
    assert plan.aggregates == {"bytes_in": "sum"}
    for sql in (
        "SELECT src_ip, avg(bytes_in) FROM network_traffic WHERE _time < $latest GROUP BY 1",  # not decomposable
        "SELECT src_ip, count(*) FROM network_traffic WHERE _time < $latest GROUP BY 1",  # counts rows
        "SELECT src_ip, count(*), sum(bytes_in) FROM network_traffic WHERE _time < $latest GROUP BY 1",
        "SELECT src_ip, sum(bytes_in) FROM network_traffic WHERE _time < $latest - INTERVAL 1 HOUR GROUP BY 1",
        "SELECT src_ip, sum(bytes_in) FROM network_traffic WHERE bytes_in > 5 GROUP BY 1",  # a row condition
        "SELECT src_ip, _time, bytes_in FROM network_traffic WHERE _time < $latest",  # no aggregate
        "SELECT src_ip, sum(bytes_in + bytes_out) FROM network_traffic GROUP BY 1",
    ):
        assert segment_plan(sql, "network_traffic") is None, sql


def test_segments_give_the_sums_of_the_rows_at_every_bound():
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    base = datetime(2026, 11, 1, tzinfo=timezone.utc)
    con.execute("CREATE TABLE raw AS SELECT 'h' || (i % 3) AS host, $base + to_minutes(i * 7) AS _time, "
                "i AS bytes FROM range(600) t(i)", {"base": base})
    sql = "SELECT host, sum(bytes) AS total FROM network_traffic WHERE _time >= $lo AND _time < $hi GROUP BY ALL"
    plan = segment_plan(sql, "network_traffic")
    params = [{"lo": base + timedelta(minutes=m), "hi": base + timedelta(minutes=m + 95)} for m in range(0, 4000, 50)]
    from exfilwatch.findings.catchup import create_segments

    create_segments(con, plan, "raw", "network_traffic", params, base)
    for param in params:
        got = con.execute(f"{sql} ORDER BY 1", param).fetchall()
        want = con.execute(f"{sql.replace('network_traffic', 'raw')} ORDER BY 1", param).fetchall()
        assert got == want


def test_segments_kept_for_the_next_detection_are_those_it_would_cut_itself(monkeypatch):
    """Within a run, a detection takes the segments the previous one kept (`keep_segments`) only
    when they hold the same rows cut the same way from its start: with a baseline two days
    shorter (the robust rule after `hosts_receiving…`) it gets exactly the segments it would cut
    itself, without cutting; with other cuts, a start between cuts or other rows, it cuts its own."""
    from exfilwatch.findings.catchup import SEGMENTS, SharedLakeRows, create_range_segments, keep_segments

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    base = datetime(2026, 11, 1, tzinfo=timezone.utc)
    con.execute("CREATE TABLE raw AS SELECT 'h' || (i % 3) AS host, $base + to_minutes(i * 7) AS _time, "
                "i AS bytes FROM range(1200) t(i)", {"base": base})  # five and a half days
    plan = segment_plan("SELECT host, sum(bytes) AS total FROM network_traffic "
                        "WHERE _time >= least($history, $lo) AND _time < $hi GROUP BY ALL", "network_traffic")
    cut = catchup.cut_rows
    cutting: list[str] = []
    monkeypatch.setattr(catchup, "cut_rows", lambda *a: cutting.append(a[3]) or cut(*a))

    def fires(history_days: int, offset: timedelta = timedelta(0)) -> list[dict]:
        hours = [base + timedelta(days=4, hours=h) + offset for h in range(30)]
        return [{"history": base + timedelta(days=history_days), "lo": h - timedelta(minutes=70),
                 "hi": h - timedelta(minutes=10)} for h in hours]

    def segments(params: list[dict], start: datetime, shared: SharedLakeRows | None = None,
                 holding: str | None = None) -> list[tuple]:
        create_range_segments(con, plan, "raw", params, start, params[-1]["hi"], "UTC", shared, holding)
        rows = con.execute(f"SELECT * FROM {SEGMENTS} ORDER BY ALL").fetchall()
        con.execute(f"DROP TABLE {SEGMENTS}")
        return rows

    def after_kept(params: list[dict], start: datetime, holding: str = "flows") -> tuple[list[tuple], bool]:
        shared = SharedLakeRows()
        keep_segments(con, shared, create_range_segments(con, plan, "raw", fires(0), base, fires(0)[-1]["hi"],
                                                         "UTC", shared, "flows"))
        cutting.clear()
        rows = segments(params, start, shared, holding)
        catchup.release_shared(con, shared)
        return rows, not cutting

    shorter = fires(2)
    assert after_kept(shorter, base + timedelta(days=2)) == (segments(shorter, base + timedelta(days=2)), True)
    assert len(segments(shorter, base + timedelta(days=2))) < len(segments(fires(0), base))
    other_cuts = fires(2, timedelta(minutes=30))
    assert after_kept(other_cuts, base + timedelta(days=2)) == (segments(other_cuts, base + timedelta(days=2)), False)
    between = base + timedelta(days=1, minutes=30)
    assert after_kept(shorter, between) == (segments(shorter, between), False)
    assert after_kept(shorter, base + timedelta(days=2), "other flows")[1] is False


def test_fires_as_columns_are_the_table_their_rows_as_structs_make():
    """`rows_select` (a list per column) makes the table `unnest` of the rows as structs made,
    column for column and type for type: each kind of parameter value, a tz-aware instant too."""
    from exfilwatch.detections.batched import rows_select

    con = duckdb.connect()
    con.execute("SET TimeZone = 'America/New_York'")
    rows = [{"fire": i, "latest": datetime(2026, 11, 1, 5, tzinfo=timezone.utc) + timedelta(hours=i),
             "today": datetime(2026, 11, 1, tzinfo=NY), "minimum_bytes": 10 ** 9 + i, "share": 0.1 * i,
             "timezone": "America/New_York", "strict": i % 2 == 0} for i in range(30)]
    select, columns = rows_select(rows)
    con.execute(f"CREATE TABLE as_columns AS {select}", columns)
    con.execute("CREATE TABLE as_structs AS SELECT unnest($rows, recursive := true)", {"rows": rows})
    assert con.execute("DESCRIBE as_columns").fetchall() == con.execute("DESCRIBE as_structs").fetchall()
    assert con.execute("SELECT * FROM as_columns").fetchall() == con.execute("SELECT * FROM as_structs").fetchall()
    assert con.execute("SELECT max(latest) FROM as_columns").fetchone()[0] == rows[-1]["latest"]


def test_run_names_the_catch_up_modes_when_given_another(tmp_path):
    import os
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[1] / "src")
    process = subprocess.run([sys.executable, "-c", "from exfilwatch.cli import app; app()", "--home",
                              str(tmp_path / "home"), "run", "--now", "2026-11-01T00:00:00Z", "--catch-up", "fast"],
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": src})
    assert process.returncode == 2
    assert "--catch-up 'fast': expected one-pass or per-fire" in process.stderr
    assert "Traceback" not in process.stderr


def test_daily_sums_cover_whole_local_days_across_dst():
    from exfilwatch.findings.dailysums import is_midnight, local_days

    start = datetime(2026, 10, 31, 6, tzinfo=NY).astimezone(timezone.utc)  # inside 31 October: not whole
    days = local_days(start, datetime(2026, 11, 3, tzinfo=NY).astimezone(timezone.utc), "America/New_York")
    assert [d.isoformat() for d, _, _ in days] == ["2026-11-01", "2026-11-02"]
    assert [(end - begin) for _, begin, end in days] == [timedelta(hours=25), timedelta(hours=24)]  # DST ends 1 Nov
    assert all(is_midnight(begin, "America/New_York") for _, begin, _ in days)
    assert not is_midnight(datetime(2026, 11, 1, tzinfo=timezone.utc), "America/New_York")


def test_daily_sums_are_summed_again_when_the_inventory_or_zone_changes():
    from exfilwatch.config import parse_settings
    from exfilwatch.findings.dailysums import definition_key

    def key(**config):
        settings = parse_settings({"timezone": "America/New_York",
                                   "assets": [{"cidr": "10.10.0.0/28", "category": "email_server"}], **config}, "t")
        return definition_key("network_traffic", ["src_ip", "dest_category"], {"bytes_in": "sum"},
                              "(dest_category = 'email_server')", settings)

    assert key() == key()
    assert key() != key(assets=[{"cidr": "10.10.0.0/27", "category": "email_server"}])
    assert key() != key(timezone="Europe/Paris")


def local_days_in_new_york(first: date, end: date) -> list[tuple[date, datetime, datetime]]:
    """The local days of New York from `first` up to (not including) `end`, as dailysums gives them."""
    return dailysums.local_days(datetime(first.year, first.month, first.day, tzinfo=NY).astimezone(timezone.utc),
                                datetime(end.year, end.month, end.day, tzinfo=NY).astimezone(timezone.utc),
                                "America/New_York")


def summing(tmp_path: Path) -> tuple[StateStore, duckdb.DuckDBPyConnection]:
    """A state store in `tmp_path` and a connection with an empty table `rows` of flows to sum."""
    con = duckdb.connect()
    con.execute("CREATE TABLE rows (_time TIMESTAMPTZ, src_ip VARCHAR, bytes_in BIGINT)")
    return open_state(tmp_path), con


def test_each_stored_day_holds_exactly_its_own_sums_and_an_empty_day_is_stored_too(tmp_path):
    """The days are written by one COPY partitioned by day, a day it wrote no file for by a COPY
    of its own: each day's file holds that day's sums and no other's, with the columns of the
    sums, and a day without a flow is stored empty (else every later run would sum it again from
    the lake)."""
    tz = "America/New_York"
    days = local_days_in_new_york(date(2026, 10, 31), date(2026, 11, 4))
    state, con = summing(tmp_path)
    rows = [(begin + timedelta(hours=h), f"10.20.0.{h % 3}", 1000 * h + n)
            for n, (local, begin, _end) in enumerate(days) if local != date(2026, 11, 2) for h in range(0, 23, 2)]
    con.executemany("INSERT INTO rows VALUES (?, ?, ?)", rows)
    signature = {local: "s" for local, _, _ in days}
    try:
        dailysums.write_days(con, state, "d", "rows", ["src_ip"], {"bytes_in": "sum"}, {"bytes_in": "BIGINT"},
                             days, signature, tz)
        paths = dailysums.stored(state, "d", [local for local, _, _ in days])
        assert sorted(paths) == [local for local, _, _ in days]
        for local, begin, end in days:
            got = con.execute(f"SELECT * FROM read_parquet('{paths[local][1]}') ORDER BY src_ip").fetchall()
            want = con.execute("SELECT src_ip, $begin::TIMESTAMPTZ AS _time, CAST(sum(bytes_in) AS BIGINT) FROM rows "
                               "WHERE _time >= $begin AND _time < $end GROUP BY src_ip ORDER BY src_ip",
                               {"begin": begin, "end": end}).fetchall()
            assert got == want and bool(got) == (local != date(2026, 11, 2))
            described = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{paths[local][1]}')").fetchall()
            assert [c[0] for c in described] == ["src_ip", "_time", "bytes_in"]
        assert sorted(p.name for p in (tmp_path / dailysums.FOLDER / "d").iterdir()) == sorted(
            Path(path).name for _sig, path in paths.values())  # no staging folder left behind
    finally:
        con.close()
        state.close()


def test_what_a_killed_write_of_daily_sums_left_is_deleted_by_the_next_write(tmp_path):
    """A run killed while it wrote daily sums leaves its staging folder and days it renamed but
    never recorded: the next write of the same definition deletes them, keeps every recorded day
    (its own and the earlier run's), and leaves another definition's files alone."""
    tz = "America/New_York"
    days = local_days_in_new_york(date(2026, 10, 31), date(2026, 11, 4))
    state, con = summing(tmp_path)
    con.executemany("INSERT INTO rows VALUES (?, ?, ?)",
                    [(begin + timedelta(hours=3), "10.20.0.1", 1000) for _local, begin, _end in days])
    signature = {local: "s" for local, _, _ in days}

    def write(definition: str, which: list) -> None:
        dailysums.write_days(con, state, definition, "rows", ["src_ip"], {"bytes_in": "sum"},
                             {"bytes_in": "BIGINT"}, which, signature, tz)

    try:
        write("d", days[:2])
        write("other", days[:1])
        folder, other = tmp_path / dailysums.FOLDER / "d", tmp_path / dailysums.FOLDER / "other"
        # what a kill between the partitioned COPY and the commit leaves behind
        staging = folder / f"{dailysums.STAGING_PREFIX}dead0001" / "_begin=1"
        staging.mkdir(parents=True)
        (staging / "data_0.parquet").write_bytes(b"PAR1")
        (folder / "2026-11-02_dead0002.parquet").write_bytes(b"PAR1")
        (other / "2026-11-03_dead0003.parquet").write_bytes(b"PAR1")
        write("d", days[2:])
        recorded = {Path(path).name for _sig, path in dailysums.stored(state, "d", [d for d, _, _ in days]).values()}
        assert len(recorded) == len(days)
        assert {p.name for p in folder.iterdir()} == recorded
        assert (other / "2026-11-03_dead0003.parquet").exists()  # not this write's definition
        assert all(con.execute(f"SELECT count(*) FROM read_parquet('{folder / name}')").fetchone()[0] == 1
                   for name in recorded)
    finally:
        con.close()
        state.close()


def test_days_without_any_flow_are_each_stored_empty_with_the_columns_of_the_sums(tmp_path):
    """A first run stores the days of its baseline before the lake's first flow: none holds a
    row, and each is stored, empty, with the columns of the sums (else the next run would sum it
    again from the lake, or read a file of other columns)."""
    tz = "America/New_York"
    days = local_days_in_new_york(date(2026, 10, 30), date(2026, 11, 3))
    state, con = summing(tmp_path)
    try:
        dailysums.write_days(con, state, "d", "rows", ["src_ip"], {"bytes_in": "sum"}, {"bytes_in": "BIGINT"},
                             days, {local: "s" for local, _, _ in days}, tz)
        paths = dailysums.stored(state, "d", [local for local, _, _ in days])
        assert sorted(paths) == [local for local, _, _ in days]
        assert len({path for _sig, path in paths.values()}) == len(days)
        for _sig, path in paths.values():
            assert con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0] == 0
            assert con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall() == con.execute(
                "DESCRIBE SELECT src_ip, _time, bytes_in FROM rows").fetchall()
        assert sorted(p.name for p in (tmp_path / dailysums.FOLDER / "d").iterdir()) == sorted(
            Path(path).name for _sig, path in paths.values())  # no staging folder left behind
    finally:
        con.close()
        state.close()


def test_daily_sums_keyed_by_the_local_day_are_dated_as_those_summed_from_time(tmp_path):
    """Rows that carry `_day` (as every model view and segment does) are summed into days by it,
    not by converting each row's `_time` again: the days stored that way, across the end of
    daylight saving time (a 25-hour day), hold the same sums at the same local midnights as the
    days summed from `_time` alone."""
    tz = "America/New_York"
    days = local_days_in_new_york(date(2026, 10, 31), date(2026, 11, 3))
    state, con = summing(tmp_path)
    # every 50 minutes, so rows fall in the first and the last hour of each day, and in the repeated hour
    first = days[0][1]
    con.executemany("INSERT INTO rows VALUES (?, ?, ?)",
                    [(first + timedelta(minutes=50 * n), f"10.20.0.{n % 3}", n) for n in range(73 * 60 // 50 + 1)])
    con.execute(f"CREATE VIEW rows_with_day AS SELECT *, {local_day_sql('_time', tz)} AS _day FROM rows")
    signature = {local: "s" for local, _, _ in days}
    try:
        stored = {}
        for definition, keys in (("by_time", ["src_ip"]), ("by_day", ["_day", "src_ip"])):
            dailysums.write_days(con, state, definition, "rows_with_day", keys, {"bytes_in": "sum"},
                                 {"bytes_in": "BIGINT"}, days, signature, tz)
            paths = dailysums.stored(state, definition, [local for local, _, _ in days])
            stored[definition] = {local: con.execute(f"SELECT src_ip, _time, bytes_in FROM read_parquet("
                                                     f"'{paths[local][1]}') ORDER BY src_ip").fetchall()
                                  for local, _, _ in days}
        assert stored["by_day"] == stored["by_time"]
        for local, begin, _end in days:
            assert {row[1] for row in stored["by_day"][local]} == {begin}
        assert sum(len(rows) for rows in stored["by_day"].values()) == 3 * len(days)
    finally:
        con.close()
        state.close()


def test_a_late_day_in_the_baseline_is_read_again_by_the_next_run(tmp_path):
    """The days before a judged one are computed once per day of fires, and kept between runs as
    daily sums: flows that arrive after a run has summed their day must reach the next run's
    baseline. Here a host's late 3 GB day, two days before its 1 GB day, makes that day ordinary
    for its own mean and deviation: the one pass must find what the per-fire search finds, and
    not what it would find on the baseline summed before the late flows came."""
    import random

    import yaml

    from .conftest import Flow, write_conn_log

    mail_server, spiky = "10.10.0.5", "10.20.0.1"
    hosts = [f"10.20.0.{i}" for i in range(1, 9)]
    first_day = date(2026, 10, 10)
    judged = first_day + timedelta(days=20)  # the host's 1 GB day
    late_day = judged - timedelta(days=2)
    rng = random.Random(7)

    def day_flows(host: str, day: date, total: int) -> list[Flow]:
        return [Flow(datetime(day.year, day.month, day.day, hour, tzinfo=NY).timestamp(), host, mail_server, 1_000,
                     total // 4) for hour in (2, 8, 14, 20)]

    flows = [f for offset in range(22) for host in hosts
             for f in day_flows(host, first_day + timedelta(days=offset),
                                1_000_000_000 if (host, first_day + timedelta(days=offset)) == (spiky, judged)
                                else rng.randrange(90_000_000, 110_000_000))]
    late = [Flow(f.ts + 60, f.orig, f.resp, f.orig_bytes, 750_000_000) for f in day_flows(spiky, late_day, 0)]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"timezone": "America/New_York",
                                      "assets": [{"cidr": "10.10.0.0/28", "category": "email_server"}]}))
    on_time = write_conn_log(tmp_path / "conn.log", sorted(flows, key=lambda f: f.ts))
    late_log = write_conn_log(tmp_path / "late.log", late)
    one_pass, per_fire, never_late = homes(tmp_path, config, ["one_pass", "per_fire", "never_late"])
    for home in (one_pass, per_fire, never_late):
        ingest_paths([on_time], home, load_settings(home), source_name="zeek_conn")
    rule = ("hosts_receiving_high_volume_of_network_traffic_from_email_server",)
    first_now = datetime(judged.year, judged.month, judged.day, 1, tzinfo=NY) - timedelta(days=1)
    for home, mode in ((one_pass, "one-pass"), (per_fire, "per-fire"), (never_late, "one-pass")):
        schedule(home, first_now, mode, rule)
    state = open_state(one_pass)
    try:  # the late flows' day was summed and stored by the first run
        assert late_day.isoformat() in {r["day"] for r in state.query("SELECT day FROM daily_sums")}
    finally:
        state.close()
    for home in (one_pass, per_fire):
        ingest_paths([late_log], home, load_settings(home), source_name="zeek_conn")
    last_now = datetime(judged.year, judged.month, judged.day, 2, tzinfo=NY) + timedelta(days=1)
    for home, mode in ((one_pass, "one-pass"), (per_fire, "per-fire"), (never_late, "one-pass")):
        schedule(home, last_now, mode, rule)

    def spikes(home: Home) -> list[str]:
        return [f["finding_key"] for f in recorded(home)["findings"] if f"|{spiky}|" in f["finding_key"]]

    assert recorded(one_pass) == recorded(per_fire)
    assert spikes(never_late) and not spikes(one_pass)  # on a stale baseline, the 1 GB day would be found


def opened_lake(org, name: str) -> tuple[Home, Settings, StateStore, duckdb.DuckDBPyConnection]:
    """A new home `name` holding the first part of the logs, with its settings, state and engine."""
    root, ds, parts = org
    (home,) = homes(root, ds.config, [name])
    ingest(home, parts, 0)
    settings = load_settings(home)
    return home, settings, open_state(home), connect(settings)


def test_a_detection_reading_the_same_lake_rows_as_the_previous_one_reads_them_from_its_copy(org):
    """Within a run, `lake_rows` keeps what it read for the next detection that reads exactly the
    same rows (the robust rule and `hosts_receiving…`): with the flow files gone from the disk,
    the same read still gives the rows, and any other read fails — as does the same read once
    the run has released the copy."""
    from exfilwatch.findings.catchup import SharedLakeRows, lake_rows, release_shared

    root = org[0]
    home, settings, state, con = opened_lake(org, "shared")
    try:
        columns = ["_day", "_time", "bytes_in", "dest_category", "src_ip"]
        condition = "(dest_category = 'email_server') AND (NOT src_ip IS NULL)"
        start, end = datetime(2026, 10, 1, tzinfo=NY), datetime(2026, 11, 1, tzinfo=NY)
        shared = SharedLakeRows()

        def read(cond: str = condition) -> list[tuple]:
            lake_rows(con, settings, state, "network_traffic", columns, cond, start, end, shared)
            return con.execute("SELECT * FROM network_traffic").fetchall()

        first = read()
        assert len(first) > 100
        (root / "shared_lake_gone").mkdir()
        (home.root / "lake").rename(root / "shared_lake_gone" / "lake")
        assert read() == first  # in the same order, without a file
        with pytest.raises(duckdb.Error):
            read("(dest_category = 'email_server')")
        release_shared(con, shared)
        with pytest.raises(duckdb.Error):
            read()
    finally:
        con.close()
        state.close()


def test_only_detections_that_read_the_same_lake_rows_share_a_copy(org, monkeypatch):
    """`run` hands the shared copy only to detections whose lake read another one repeats: the
    robust rule and `hosts_receiving…` sum the same flows; `email_servers…` reads other rows, so
    copying them would be for nobody (checked: it fails when every detection gets the copy). The
    robust rule cuts no segments of its own either (checked: it fails when none is kept)."""
    import exfilwatch.findings.catchup as catchup

    catalog = load_detections()
    email_servers, hosts_receiving, robust = (pipeline._lake_read(catalog[i]) for i in NETWORK)
    assert hosts_receiving == robust
    assert email_servers != hosts_receiving
    handed: dict[str | None, bool] = {}
    read = catchup.lake_segments

    def spied(con, settings, state, model, plan, condition, cuts, start, end, shared=None):
        handed[condition] = shared is not None
        return read(con, settings, state, model, plan, condition, cuts, start, end, shared)

    monkeypatch.setattr(catchup, "lake_segments", spied)
    cut, cutting = catchup.cut_rows, []
    monkeypatch.setattr(catchup, "cut_rows", lambda *a: cutting.append(a[3]) or cut(*a))
    root, ds, parts = org
    (home,) = homes(root, ds.config, ["sharing"])
    ingest(home, parts, 0)
    schedule(home, datetime(END.year, END.month, END.day, tzinfo=NY), "one-pass", NETWORK)
    assert handed == {email_servers[2]: False, hosts_receiving[2]: True}
    assert len(cutting) == 2  # the robust rule takes the segments `hosts_receiving…` cut (`keep_segments`)


def test_the_empty_search_check_is_asked_only_when_a_fire_has_no_judged_row(org, monkeypatch):
    """Whether a search is silent without judged rows decides only which fires to skip (and, for
    judged windows, the chunks): a network rule's one pass asks it when some fire judges no row
    (the two days without a line), not when every fire does (checked: it fails when always
    asked). Without the check a fire in the hole would be recorded, unlike the per-fire path's."""
    asked: list[str] = []
    check = pipeline._silent_when_empty

    def spied(con, detection, *args):
        asked.append(detection.id)
        return check(con, detection, *args)

    monkeypatch.setattr(pipeline, "_silent_when_empty", spied)
    root, ds, parts = org
    (home,) = homes(root, ds.config, ["asked"])
    ingest(home, parts, 0)
    first = schedule(home, HOLE[1] + timedelta(hours=1), "one-pass", NETWORK)
    assert sorted(asked) == sorted(NETWORK) and all(r.skipped_fires > 0 for r in first.detections)
    asked.clear()
    later = schedule(home, CUT - timedelta(hours=12), "one-pass", NETWORK)
    assert asked == [] and all(r.fires > 0 and r.skipped_fires == 0 for r in later.detections)


def test_a_detection_reading_other_columns_of_the_rows_read_for_the_run_copies_its_own(org):
    """Detections reading the same model with the same condition and other columns share one
    read with the columns of all of them (`SharedLakeRows.columns`): with the flow files gone,
    each still gets exactly its own columns, the rows a read from the lake gives, in the same
    order; a column no detection named is not in the copy, so that read goes to the (gone) lake."""
    from exfilwatch.findings.catchup import SharedLakeRows, lake_rows

    root = org[0]
    home, settings, state, con = opened_lake(org, "shared_columns")
    try:
        condition = "(dest_category = 'email_server')"
        start, end = datetime(2026, 10, 1, tzinfo=NY), datetime(2026, 11, 1, tzinfo=NY)
        sums, addresses = ["_time", "bytes_in", "dest_category"], ["_time", "dest_category", "src_ip"]

        def read(columns: list[str], shared: SharedLakeRows | None) -> list[tuple]:
            lake_rows(con, settings, state, "network_traffic", columns, condition, start, end, shared)
            assert [c[0] for c in con.execute("SELECT * FROM network_traffic").description] == columns
            return con.execute("SELECT * FROM network_traffic").fetchall()

        from_lake = read(addresses, None)
        shared = SharedLakeRows(columns={("network_traffic", condition): sorted({*sums, *addresses})})
        assert len(read(sums, shared)) == len(from_lake) > 100
        (root / "shared_columns_gone").mkdir()
        (home.root / "lake").rename(root / "shared_columns_gone" / "lake")
        assert read(addresses, shared) == from_lake
        with pytest.raises(duckdb.Error):
            read(["_time", "dest_port"], shared)
    finally:
        con.close()
        state.close()


def test_the_four_em_rules_read_the_sessions_from_the_lake_once(org, monkeypatch):
    """The four EM rules read the same sessions (same model, no condition) with different
    columns: a first run reads them from the lake once, with every column of the four (checked:
    before the shared read, each rule read its own and none went through `lake_rows`), and the
    copy is dropped once the last of them has run, not held through the network rule after them."""
    import exfilwatch.findings.catchup as catchup

    em = ("em_bsum", "em_bsum_personal", "em_dnum", "em_fnum")
    read, catch_up = catchup.expose_models, pipeline._catch_up
    snapshots: list[dict[str, list[str]]] = []
    held_at_start: dict[str, bool] = {}

    def spied(con, snapshot=None, condition=None, filters=None, reads=None):
        if snapshot:
            snapshots.append({model: columns for model, (columns, _start, _end) in snapshot.items()})
        return read(con, snapshot, condition, filters, reads)

    def watched(con, state, settings, detection, *args):
        held_at_start[detection.id] = bool(con.execute(
            f"SELECT count(*) FROM duckdb_tables() WHERE table_name = '{catchup.SHARED_LAKE}'").fetchone()[0])
        return catch_up(con, state, settings, detection, *args)

    monkeypatch.setattr(catchup, "expose_models", spied)
    monkeypatch.setattr(pipeline, "_catch_up", watched)
    root, ds, parts = org
    (home,) = homes(root, ds.config, ["em_shared"])
    ingest(home, parts, 0)
    result = schedule(home, CUT + timedelta(hours=1), "one-pass", (*em, NETWORK[0]))
    catalog = load_detections()
    runs = {run.detection.id: run for run in result.detections}
    assert [runs[i].fires for i in em] == [runs[em[0]].fires] * 4 and runs[em[0]].fires > 100
    assert snapshots[0] == {"user_sessions": sorted(set().union(*(pipeline._lake_read(catalog[i])[1] for i in em)))}
    assert not any("user_sessions" in s for s in snapshots[1:])
    assert held_at_start == {em[0]: False, em[1]: True, em[2]: True, em[3]: True, NETWORK[0]: False}


def test_the_em_rules_and_a_users_copy_share_what_they_compute_alike_and_find_what_each_alone_finds(org, monkeypatch):
    """In one run, the four EM rules compute each chunk's domain-novelty CTEs once (the first rule
    computes them, the others read its results) and a user's copy of EM-BSum whose
    `domain_warmup_days` differs reads those it holds with the same text and values but computes
    its own `introductions`, which reads that parameter. The runs, findings and watermarks are
    those of the same detections each run alone (each search computing all its CTEs)."""
    catalog = load_detections()
    em = [catalog[i] for i in ("em_bsum", "em_bsum_personal", "em_dnum", "em_fnum")]
    warmup = em[0].parameters["domain_warmup_days"]
    copy = em[0].model_copy(update={"id": "my_bsum", "parameters": {
        **em[0].parameters, "domain_warmup_days": warmup.model_copy(update={"default": warmup.default - 20})}})
    chosen = [*em, copy]
    computed: list[tuple[str, str]] = []  # (detection, CTE) of every result a search computed
    search = catchup.search_sharing

    def spied(con, detection, param, shared, snapshot):
        before = set(shared.tables)
        rows = search(con, detection, param, shared, snapshot)
        names = {c.key: c.name for c in catchup.search_ctes(catchup.compiled_sql(detection), "user_sessions").ctes}
        computed.extend((detection.id, names[key[0]]) for key in set(shared.tables) - before)
        return rows

    monkeypatch.setattr(catchup, "search_sharing", spied)
    root, ds, parts = org
    together, alone = homes(root, ds.config, ["ctes_together", "ctes_alone"])
    now = CUT + timedelta(hours=1)

    def run(home: Home, detections: list) -> None:
        settings, state = load_settings(home), open_state(home)
        con = connect(settings)
        try:
            pipeline.run(con, state, settings, catalog, now, pipeline.Options(detections=detections, risk=False,
                                                                              deliver=False))
            assert not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '_shared_cte_%'"
                                   ).fetchone()[0]  # every result dropped at the end of the run
        finally:
            con.close()
            state.close()

    for home in (together, alone):
        ingest(home, parts, 0)
    run(together, chosen)
    for detection in chosen:
        run(alone, [detection])
    assert recorded(together) == recorded(alone)
    assert any(f["finding_key"].startswith("em_") for f in recorded(together)["findings"])
    by_detection = {d.id: {name for who, name in computed if who == d.id} for d in chosen}
    # EM-BSum's copy holds its model's CTEs too (`history`, `stats`, `spread`, `peers`): EM-BSum
    # computes those the rest reads apart (`history` is read only by `stats` and `spread`) and the
    # copy reads them; `peer_days`, then read only by those, is computed by the next rule
    assert by_detection == {"em_bsum": {"stats", "spread", "peers", "novelty", "data_start", "introductions"},
                            "em_bsum_personal": {"peer_days"}, "em_dnum": set(), "em_fnum": set(),
                            "my_bsum": {"introductions"}}
    chunks = sum(1 for who, name in computed if (who, name) == ("em_bsum", "novelty"))
    assert chunks > 1 and sum(1 for who, _ in computed if who == "my_bsum") == chunks


@pytest.mark.parametrize("why", ["too large to keep", "refused by DuckDB"])
def test_shared_ctes_that_cannot_be_kept_are_computed_within_each_search(org, monkeypatch, why):
    """A CTE result over KEPT_ROWS is read by the search that computed it and dropped (here every
    one: the bound set to -1), and a CTE whose query DuckDB refuses (here every one) falls back to
    the search's own SQL: either way no result is held between searches, and the rules find what
    each finds run alone."""
    catalog = load_detections()
    chosen = [catalog["em_bsum"], catalog["em_dnum"]]
    held: list[int] = []
    search = catchup.search_sharing

    def spied(con, detection, param, shared, snapshot):
        rows = search(con, detection, param, shared, snapshot)
        held.append(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '_shared_cte_%'"
                                ).fetchone()[0])
        return rows

    monkeypatch.setattr(catchup, "search_sharing", spied)
    if why == "too large to keep":
        monkeypatch.setattr(catchup, "KEPT_ROWS", -1)
    else:
        from exfilwatch.detections.ctes import SearchCtes

        with_tables = SearchCtes.with_tables
        monkeypatch.setattr(SearchCtes, "with_tables", lambda self, tables, select=None: (
            ("SELECT * FROM no_such_table", frozenset()) if select else with_tables(self, tables, select)))
    root, ds, parts = org
    name = why.replace(" ", "_")
    together, alone = homes(root, ds.config, [f"{name}_together", f"{name}_alone"])
    now = CUT + timedelta(hours=1)
    for home in (together, alone):
        ingest(home, parts, 0)
    schedule(together, now, "one-pass", tuple(d.id for d in chosen))
    for detection in chosen:
        schedule(alone, now, "one-pass", (detection.id,))
    assert recorded(together) == recorded(alone)
    assert held and not any(held)


SEGMENT_BASE = datetime(2026, 3, 7, 20, 0, tzinfo=timezone.utc)  # two local days before New York's spring DST change


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    times=st.lists(st.tuples(st.integers(min_value=-90, max_value=60 * 80), st.sampled_from([0, 7])), min_size=1,
                   max_size=60),
    offsets=st.lists(st.integers(min_value=0, max_value=60 * 80), min_size=1, max_size=12),
    midnights=st.booleans(),
)
def test_segments_found_by_their_hour_are_those_an_asof_join_finds(times, offsets, midnights):
    """`create_cut_sums` finds each row's segment by its hour (a hash join), the reference finds it
    by an ASOF join with the cuts: the same sums per key and segment, dated by the cut or by the
    first row, rows before the first cut left out, the last segment running to the last row; and
    with every local midnight a cut, the key `_day` taken from the cut is the rows' own local day.
    Cuts and rows a minute apart to three days apart, several in one hour, rows on cuts and on
    the hours between them, across a DST change."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    tz = "America/New_York"
    cuts = sorted({SEGMENT_BASE + timedelta(minutes=m) for m in offsets})
    if midnights:
        cuts = sorted(set(cuts) | {b for _d, b, _e in dailysums.local_days(cuts[0] - timedelta(days=1),
                                                                            cuts[-1] + timedelta(days=5), tz)
                                   if b > cuts[0]})
    day = local_day_sql("_time", tz)
    con.execute(f"CREATE TABLE raw AS SELECT 'h' || (i % 2) AS host, t AS _time, {day} AS _day, i AS bytes "
                "FROM (SELECT unnest($times) AS t, generate_subscripts($times, 1) AS i)",
                {"times": [SEGMENT_BASE + timedelta(minutes=m, seconds=s) for m, s in times]})
    con.execute("CREATE TABLE cuts AS SELECT unnest($cuts) AS cut", {"cuts": cuts})
    last = con.execute("SELECT max(_time) FROM raw").fetchall()[0][0] + timedelta(microseconds=1)
    end = max(cuts[-1], last)
    keys, sums = ["_day", "host"], {"bytes": "sum"}
    for dated in ("cut", "first"):
        for day_of_cut in ([None, tz] if midnights else [None]):
            catchup.create_cut_sums(con, "raw", keys, sums, cuts, end, "found", dated_by_first_row=dated == "first",
                                    day_of_cut=day_of_cut)
            date = "min(r._time)" if dated == "first" else "c.cut"
            want = con.execute(f"SELECT r._day, r.host, {date}, sum(r.bytes) FROM raw r ASOF JOIN cuts c "
                               "ON r._time >= c.cut GROUP BY r._day, r.host, c.cut ORDER BY ALL").fetchall()
            got = con.execute("SELECT _day, host, _time, bytes FROM found ORDER BY ALL").fetchall()
            assert got == want


def test_one_pass_and_per_fire_agree_where_local_midnight_is_not_on_the_hour(org):
    """In Pacific/Marquesas (UTC-09:30) a local day starts half-way through a UTC hour: the lake's
    segments (cut at every local midnight, their `_day` taken from the cut, dated by their first
    row) give the findings, runs and watermarks of the per-fire path there too."""
    root, ds, parts = org
    one_pass, per_fire = homes(root, ds.config, ["marquesas_one_pass", "marquesas_per_fire"])
    for home in (one_pass, per_fire):
        config = home.config_path.read_text().replace("timezone: America/New_York", "timezone: Pacific/Marquesas")
        home.config_path.write_text(config)
        assert load_settings(home).timezone == "Pacific/Marquesas"
        ingest(home, parts, 0)
    now = CUT + timedelta(hours=1)
    schedule(one_pass, now, "one-pass", NETWORK)
    schedule(per_fire, now, "per-fire", NETWORK)
    found = recorded(one_pass)
    assert found == recorded(per_fire)
    assert found["runs"]


@hypothesis.settings(max_examples=80, deadline=None)
@hypothesis.given(
    times=st.lists(st.integers(min_value=0, max_value=6 * 60), min_size=1, max_size=30),
    windows=st.lists(st.tuples(st.integers(min_value=1, max_value=5 * 60), st.integers(min_value=1, max_value=90)),
                     min_size=1, max_size=4),
    others=st.lists(st.integers(min_value=1, max_value=6 * 60), max_size=3),
)
def test_segments_dated_by_their_first_row_have_rows_in_the_hours_the_rows_do(times, windows, others):
    """The catch-up skips a fire when no hour its judged window [start, latest) overlaps holds a
    row (`rows_per_hour`). Over the lake's rows summed between `judged_window_cuts` and dated by
    their first row it skips exactly the fires the rows themselves would, for judged starts that
    are not on the hour (midnight in Asia/Kolkata is 18:30 UTC). Checked: leaving out the start of
    each judged start's hour makes it fail."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    base = datetime(2026, 3, 7, 16, 0, tzinfo=timezone.utc)
    con.execute("CREATE TABLE raw AS SELECT 'h' AS host, unnest($t) AS _time, 1 AS bytes",
                {"t": [base + timedelta(minutes=m) for m in times]})
    fires = [(base + timedelta(minutes=s), base + timedelta(minutes=s + length)) for s, length in windows]
    bounds = {base} | {latest for _start, latest in fires} | {base + timedelta(minutes=m) for m in others}
    cuts = catchup.judged_window_cuts(bounds, [start for start, _latest in fires])
    catchup.create_cut_sums(con, "raw", ["host"], {"bytes": "sum"}, cuts, base + timedelta(hours=7), "pieces",
                            dated_by_first_row=True)
    rows, pieces = catchup.rows_per_hour(con, "raw"), catchup.rows_per_hour(con, "pieces")
    for start, latest in fires:
        assert bool(rows.overlapping(start, latest)) == bool(pieces.overlapping(start, latest))
