"""`ingest_lines` with no file: lines handed over with a stream cursor land in the lake and in
quarantine under the stream's name, a Postfix message split over two batches becomes one email,
yearless syslog is dated by the reception time, header lines come from the cursor, and a
process killed (SIGKILL) between writing a batch's files and committing it loses and doubles
nothing, for a file and for a stream."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa

from exfilwatch.config import Home, parse_settings
from exfilwatch.events.cursors import StreamCursor
from exfilwatch.events.ingest import ingest_lines, ingest_paths, open_target
from exfilwatch.events.lake import remove_orphans
from exfilwatch.sources import get_source
from exfilwatch.home import open_state

from .conftest import ZEEK_CONN_HEADER, Flow, conn_line, count_of_column, write_conn_log
from .servicekit import sigkill_once_it_says

SETTINGS = parse_settings({"internal_domains": ["example.com"]}, "test")
SYSLOG = "syslog:udp/127.0.0.1:5514"
RECEIVED = datetime(2026, 11, 2, 9, 0, 30, tzinfo=timezone.utc)

MESSAGE_START = [
    "Nov  2 09:00:01 mx1 postfix/smtpd[100]: 1A2B3C4D5E: client=ws-alice.example.com[10.20.0.15]",
    "Nov  2 09:00:01 mx1 postfix/cleanup[101]: 1A2B3C4D5E: message-id=<m1@ws-alice.example.com>",
    "Nov  2 09:00:02 mx1 postfix/qmgr[102]: 1A2B3C4D5E: from=<alice@example.com>, size=5000, nrcpt=1 (queue active)",
]
MESSAGE_END = [
    "Nov  2 09:00:03 mx1 postfix/smtp[103]: 1A2B3C4D5E: to=<bob@gmail.com>, relay=gmail-smtp-in.l.google.com"
    "[142.250.1.1]:25, delay=1.2, delays=0.1/0/0.5/0.6, dsn=2.0.0, status=sent (250 2.0.0 OK)",
    "Nov  2 09:00:03 mx1 postfix/qmgr[102]: 1A2B3C4D5E: removed",
]


def new_home(tmp_path: Path) -> Home:
    return Home(root=tmp_path / "home", config_path=tmp_path / "home" / "config.yaml")


def lake(home: Home, model: str) -> list[dict]:
    state = open_state(home)
    files = state.lake_files(model)
    state.close()
    if not files:
        return []
    rel = duckdb.sql(f"SELECT * EXCLUDE (day) FROM read_parquet({files!r}) ORDER BY _time")
    return [dict(zip(rel.columns, row)) for row in rel.fetchall()]


def stored(home: Home, sql: str) -> list[tuple]:
    state = open_state(home)
    rows = [tuple(r) for r in state.query(sql)]
    state.close()
    return rows


def test_lines_from_a_stream_land_in_the_lake_and_quarantine_under_the_stream_name(tmp_path):
    home = new_home(tmp_path)
    lines = [MESSAGE_START[0], "this is not syslog", *MESSAGE_START[1:], *MESSAGE_END,
             "Nov  2 09:00:04 mx1 postfix/qmgr[102]: 2B3C4D5E6F: from=<\x00>, size=\ud800"]
    with open_target(home, SETTINGS) as target:
        report = ingest_lines(get_source("postfix"), lines, StreamCursor(SYSLOG, RECEIVED), target)
    assert (report.lines, report.events, report.quarantined) == (7, 1, 2)
    assert report.lines == report.parsed + report.quarantined + sum(report.skipped.values())
    [email] = lake(home, "email")
    assert (email["src_user"], email["recipient"], email["size"]) == ("alice@example.com", ["bob@gmail.com"], 5000)
    assert email["raw_ref"] == f"{SYSLOG}:4"  # the qmgr from= line
    assert email["_time"] == datetime(2026, 11, 2, 9, 0, 1, tzinfo=timezone.utc)  # the year from the reception time
    quarantined = stored(home, "SELECT file, line_no, raw FROM quarantine ORDER BY line_no")
    assert [(f, n) for f, n, _ in quarantined] == [(SYSLOG, 2), (SYSLOG, 7)]
    assert quarantined[1][2].startswith("Nov  2 09:00:04") and "\ufffd" in quarantined[1][2]
    assert stored(home, "SELECT file, first_line, last_line, lines FROM batches") == [(SYSLOG, 1, 7, 7)]
    assert stored(home, "SELECT count(*) FROM file_checkpoints") == [(0,)]


def test_a_postfix_message_split_over_two_stream_batches_is_one_email(tmp_path):
    home = new_home(tmp_path)
    first = StreamCursor(SYSLOG, RECEIVED)
    with open_target(home, SETTINGS) as target:
        one = ingest_lines(get_source("postfix"), MESSAGE_START, first, target)
        assert one.events == 0 and "1 messages pending" in one.notes[0]
        assert lake(home, "email") == []
        second = first.following(len(MESSAGE_START), datetime(2026, 11, 2, 9, 1, tzinfo=timezone.utc))
        two = ingest_lines(get_source("postfix"), pa.array(MESSAGE_END, pa.large_string()), second, target)
    assert two.events == 1
    [email] = lake(home, "email")
    assert (email["internal_message_id"], email["message_id"], email["src_ip"], email["action"]) == \
        ("1A2B3C4D5E", "m1@ws-alice.example.com", "10.20.0.15", "delivered")
    assert email["raw_ref"] == f"{SYSLOG}:3"
    assert stored(home, "SELECT count(*) FROM postfix_pending WHERE consumed_by IS NULL") == [(0,)]


def test_yearless_syslog_received_in_january_dates_december_lines_in_the_year_before(tmp_path):
    home = new_home(tmp_path)
    december = [line.replace("Nov  2 09:00", "Dec 31 23:59") for line in MESSAGE_START + MESSAGE_END]
    with open_target(home, SETTINGS) as target:
        ingest_lines(get_source("postfix"), december,
                     StreamCursor(SYSLOG, datetime(2027, 1, 1, 0, 0, 5, tzinfo=timezone.utc)), target)
    [email] = lake(home, "email")
    assert email["_time"] == datetime(2026, 12, 31, 23, 59, 1, tzinfo=timezone.utc)


def test_header_lines_seen_earlier_by_a_stream_declare_the_columns_of_later_lines(tmp_path):
    home = new_home(tmp_path)
    header = tuple(ZEEK_CONN_HEADER.splitlines())
    flow = Flow(1761955200.5, "10.20.0.15", "10.10.0.5", 1200, 5400000)
    cursor = StreamCursor("zeek:tcp/10.0.0.9:47760", RECEIVED, first_line=9, header_lines=header)
    with open_target(home, SETTINGS) as target:
        report = ingest_lines(get_source("zeek_conn"), [conn_line(flow)], cursor, target)
    assert (report.events, report.quarantined) == (1, 0)
    [row] = lake(home, "network_traffic")
    assert (row["src_ip"], row["bytes"], row["raw_ref"]) == ("10.20.0.15", 5401200, "zeek:tcp/10.0.0.9:47760:9")


# --- a real process killed between writing a batch and committing it ----------------------------

CHILD = textwrap.dedent("""
    import sys, time
    from datetime import datetime, timezone
    from pathlib import Path
    from exfilwatch.config import Home, parse_settings
    from exfilwatch.events import ingest
    from exfilwatch.events.cursors import StreamCursor
    from exfilwatch.sources import get_source

    kind, root, arg = sys.argv[1:4]
    home = Home(root=Path(root), config_path=Path(root) / "config.yaml")
    settings = parse_settings({"internal_domains": ["example.com"]}, "test")
    real_write, calls = ingest.write_batch, []

    def write_then_hang(*args, **kwargs):
        files = real_write(*args, **kwargs)
        calls.append(files)
        if len(calls) == int(sys.argv[4]):  # the batch's files are in the lake, not committed yet
            print("written", flush=True)
            time.sleep(600)
        return files

    ingest.write_batch = write_then_hang
    if kind == "file":
        ingest.ingest_paths([Path(arg)], home, settings, chunk_bytes=600)
    else:
        lines = Path(arg).read_text().splitlines()
        cursor = StreamCursor("syslog:udp/127.0.0.1:5514", datetime(2026, 11, 2, 9, 0, 30, tzinfo=timezone.utc))
        with ingest.open_target(home, settings) as target:
            ingest.ingest_lines(get_source("postfix"), lines[:3], cursor, target)
            ingest.ingest_lines(get_source("postfix"), lines[3:], cursor.following(3, cursor.received_at), target)
""")


def run_until_written_then_sigkill(kind: str, home: Home, arg: Path, kill_at_write: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    child = subprocess.Popen([sys.executable, "-c", CHILD, kind, str(home.root), str(arg), str(kill_at_write)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sigkill_once_it_says(child, "written")
    assert list(Path(home.lake).rglob("*.parquet")), "the killed batch's files were in the lake"


def assert_no_orphans(home: Home) -> None:
    state = open_state(home)
    assert remove_orphans(home.lake, state) == 0
    assert {str(p) for p in Path(home.lake).rglob("*.parquet")} == {state.absolute(p) for p in state.committed_lake_paths()}
    state.close()


def test_sigkill_while_ingesting_a_file_loses_and_doubles_nothing(tmp_path):
    home = new_home(tmp_path)
    flows = [Flow(1761955200.0 + i, f"10.20.0.{i % 7 + 1}", "10.10.0.5", 100 + i, 1000 * i, uid=f"C{i:017d}")
             for i in range(40)]
    path = write_conn_log(tmp_path / "conn.log", flows)
    run_until_written_then_sigkill("file", home, path, kill_at_write=3)
    assert 0 < len(lake(home, "network_traffic")) < 40  # earlier batches committed, the killed one invisible
    [report] = ingest_paths([path], home, SETTINGS, chunk_bytes=600)
    assert report.resumed_from_line > 0
    rows = lake(home, "network_traffic")
    assert sorted(r["session_id"] for r in rows) == sorted(f.uid for f in flows)
    assert_no_orphans(home)


def test_sigkill_while_ingesting_a_stream_loses_and_doubles_nothing(tmp_path):
    home = new_home(tmp_path)
    lines_file = tmp_path / "received.txt"
    lines_file.write_text("\n".join(MESSAGE_START + MESSAGE_END) + "\n")
    run_until_written_then_sigkill("stream", home, lines_file, kill_at_write=2)
    assert lake(home, "email") == []  # the first batch only kept its lines pending
    # the receiver hands the unacknowledged batch over again, with the same cursor
    cursor = StreamCursor(SYSLOG, RECEIVED).following(3, RECEIVED)
    with open_target(home, SETTINGS) as target:
        report = ingest_lines(get_source("postfix"), MESSAGE_END, cursor, target)
    assert report.events == 1
    [email] = lake(home, "email")
    assert (email["src_user"], email["recipient"], email["raw_ref"]) == ("alice@example.com", ["bob@gmail.com"], f"{SYSLOG}:3")
    assert stored(home, "SELECT count(*) FROM postfix_pending WHERE consumed_by IS NULL") == [(0,)]
    assert_no_orphans(home)


def test_each_event_gets_the_origin_of_its_line(tmp_path):
    home = new_home(tmp_path)
    lines = [*MESSAGE_START, *MESSAGE_END]
    origins = [None, None, '{"host":"mx1","index":"mail"}', None, None]  # the email's ref is its qmgr from= line
    with open_target(home, SETTINGS) as target:
        ingest_lines(get_source("postfix"), lines, StreamCursor(SYSLOG, RECEIVED), target, origins=origins)
    [email] = lake(home, "email")
    assert email["origin"] == '{"host":"mx1","index":"mail"}'


def test_lake_files_written_before_the_origin_column_read_it_as_null(tmp_path):
    home = new_home(tmp_path)
    ingest_paths([Path(__file__).parent / "fixtures" / "pulse_secure" / "standard.log"], home, SETTINGS, year=2026)
    rows, with_origin = count_of_column(home, SETTINGS, "authentication", "origin", older=True)
    assert rows > 5 and with_origin == 0
