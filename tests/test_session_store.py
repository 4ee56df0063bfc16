"""The stored `user_sessions`: incremental builds equal a full build, late data is taken in,
and the session rules score each session once under the hourly schedule."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb

from exfilwatch.config import parse_settings
from .pipelinekit import run_schedule
from exfilwatch.detections.schema import load_detections
from exfilwatch.events.engine import connect
from exfilwatch.features.sessions import build_user_sessions
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.events.lake import parquet_source
from exfilwatch.models import USER_SESSIONS
from exfilwatch.home import open_state
from exfilwatch.state import StateStore
from exfilwatch.synth.writers import postfix

DATA = Path(__file__).resolve().parents[1] / "src" / "exfilwatch" / "content" / "detections" / "em_fnum" / "data"
ZONE = ZoneInfo("America/New_York")
CONFIG = {"timezone": "America/New_York", "internal_domains": ["corp.example"]}


def local(*args) -> datetime:
    return datetime(*args, tzinfo=ZONE)


def stored(state: StateStore) -> list[tuple]:
    con = duckdb.connect()
    sql = parquet_source(USER_SESSIONS, state.lake_files("user_sessions"))
    rows = con.execute(f"SELECT session_key, session_end, end_reason, em_fnum, em_dnum, em_bsum, em_bsum_personal "
                       f"FROM ({sql}) ORDER BY session_key").fetchall()
    con.close()
    return rows


def test_incremental_builds_equal_a_full_build_and_take_in_late_data(home, tmp_path):
    settings = parse_settings(CONFIG, "test")
    ingest_paths([DATA / "positive_vpn.log", DATA / "positive_maillog"], home, settings)
    state = open_state(home)
    con = connect(settings, home.spill_dir)
    first = build_user_sessions(con, state, settings, local(2026, 10, 5))
    assert first.reason == "full build" and first.sessions > 0
    assert build_user_sessions(con, state, settings, local(2026, 10, 5)).reason == "up to date"
    before = stored(state)
    step = build_user_sessions(con, state, settings, local(2026, 10, 12))
    assert step.reason == "incremental"
    after = stored(state)
    assert [r for r in after if r[1] < local(2026, 10, 4)] == [r for r in before if r[1] < local(2026, 10, 4)]
    build_user_sessions(con, state, settings, local(2026, 10, 15, 14, 30))
    incremental = stored(state)
    build_user_sessions(con, state, settings, local(2026, 10, 15, 14, 30), rebuild=True)
    assert stored(state) == incremental
    # one file set per day: the replaced partitions are gone from the state store and the disk
    files = state.lake_files("user_sessions")
    assert all(Path(f).exists() for f in files)
    assert len(list((home.lake / "user_sessions").rglob("*.parquet"))) == len(files)

    # a maillog that arrives late, with a message bob sent on 2026-10-05 during his VPN session
    late = tmp_path / "late_maillog"
    qid, sent = "9F9F9F9F9", local(2026, 10, 5, 10, 0)
    late.write_text("".join(line + "\n" for line in postfix.lines(postfix.Entry(t, program, pid, message, "mail01", "rfc3339")
                                                                 for t, program, pid, message in [
        (sent, "postfix/cleanup", 1, postfix.cleanup(qid, "<late@corp.example>")),
        (sent, "postfix/qmgr", 2, postfix.queued(qid, "bob@corp.example", 777, 1)),
        (local(2026, 10, 5, 10, 0, 1), "postfix/smtp", 3,
         postfix.delivery(qid, "x@late.example", "mx.late.example", "203.0.113.9", 25, 1, (0, 0, 0.5, 0.5), "250 ok")),
        (local(2026, 10, 5, 10, 0, 2), "postfix/qmgr", 2, postfix.removed(qid)),
    ])))
    ingest_paths([late], home, settings)
    report = build_user_sessions(con, state, settings, local(2026, 10, 15, 14, 30))
    assert report.reason == "late input data"
    changed = {r[0]: r for r in stored(state)}
    bob = [k for k in changed if k.startswith("vpn|bob|2026-10-05")]
    assert len(bob) == 1
    old = {r[0]: r for r in incremental}[bob[0]]
    assert changed[bob[0]][3] == old[3] + 1 and changed[bob[0]][5] == old[5] + 777
    # a change of the session settings rebuilds everything
    shorter = parse_settings({**CONFIG, "sessions": {"idle_limit_hours": 4}}, "test")
    assert build_user_sessions(con, state, shorter, local(2026, 10, 15, 14, 30)).reason == "full build"
    con.close()
    state.close()


def test_the_hourly_schedule_scores_each_session_once(home):
    settings = parse_settings(CONFIG, "test")
    ingest_paths([DATA / "positive_vpn.log", DATA / "positive_maillog"], home, settings)
    state = open_state(home)
    con = connect(settings, home.spill_dir)
    detection = load_detections()["em_fnum"]
    [result] = run_schedule(con, state, settings, [detection], local(2026, 10, 15, 14, 30))
    # every hourly fire time is considered; only those that close a session are run
    assert result.fires + result.skipped_fires > 400 and result.fires < 40 and result.stored.added == 1
    [row] = state.query("SELECT entity, bucket, value FROM findings WHERE detection_id = 'em_fnum'")
    assert (row["entity"], row["bucket"], row["value"]) == ("alice", "vpn|alice|2026-10-15T13:00:00Z|00000015", 33)
    [again] = run_schedule(con, state, settings, [detection], local(2026, 10, 15, 18, 30))
    assert again.fires + again.skipped_fires == 4 and again.stored.added == 0
    con.close()
    state.close()
