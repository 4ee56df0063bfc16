"""Mail sources → the `email` model: exact rows from fixtures in each vendor's format, the Postfix join
across chunks, files and ingests (and after a crash), Exchange/M365 deduplication, Zeek sizes,
quarantine reasons, format detection, fuzzing, and the public samples in ../shared/samples."""

from __future__ import annotations

import glob
import re
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
import yaml
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from exfilwatch.events import ingest as ingest_module
from exfilwatch.config import Home, parse_settings
from exfilwatch.events.files import read_head
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.sources import SOURCES, detect_source
from exfilwatch.sources.base import ParseContext
from exfilwatch.home import open_state
from exfilwatch.sources import postfix as postfix_source
from exfilwatch.synth.writers import postfix

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
SETTINGS = parse_settings({"internal_domains": ["example.com"]}, "test")
CERT_SETTINGS = parse_settings({"internal_domains": ["dtaa.com"]}, "test")
MAIL_SOURCES = ["postfix", "exchange_tracking", "m365_trace_csv", "m365_trace_json", "zeek_smtp", "zeek_smtp_json",
                "zeek_files", "zeek_files_json", "cert_email"]

# The stored columns except those derived from others (domains, count, source), which `check_derived` verifies.
COLUMNS = ["_time", "message_id", "internal_message_id", "src_user", "recipient", "size", "subject", "file_name",
           "direction", "action", "src_ip", "dest", "event_type", "raw_ref"]


def M(time, message_id, internal_id, src_user, recipient, size, subject, file_name, direction, action, src_ip, dest,
      event_type, ref):
    return (time, message_id, internal_id, src_user, recipient, size, subject, file_name, direction, action, src_ip,
            dest, event_type, ref)


def email_rows(home: Home) -> list[dict]:
    state = open_state(home)
    files = state.lake_files("email")
    state.close()
    if not files:
        return []
    rel = duckdb.sql(f"SELECT * EXCLUDE (day) FROM read_parquet({files!r}) ORDER BY _time, internal_message_id")
    return [dict(zip(rel.columns, row)) for row in rel.fetchall()]


def check_derived(row: dict) -> None:
    domains = [r.split("@")[-1] if "@" in r else None for r in row["recipient"]]
    assert row["recipient_domain"] == domains
    assert row["recipient_count"] == len(row["recipient"])
    assert row["src_user_domain"] == (row["src_user"].split("@")[-1] if row["src_user"] else None)


def brief(rows: list[dict]) -> list[tuple]:
    out = []
    for row in rows:
        check_derived(row)
        t = row["_time"].astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
        out.append(M(t, *[row[c] for c in COLUMNS[1:-1]], row["raw_ref"].split("/")[-1]))
    return out


def quarantine(home: Home) -> list[tuple]:
    state = open_state(home)
    rows = [(Path(r["file"]).name, r["line_no"], r["reason"]) for r in
            state.query("SELECT file, line_no, reason FROM quarantine ORDER BY file, line_no")]
    state.close()
    return rows


def new_home(tmp_path: Path, name: str = "home") -> Home:
    root = tmp_path / name
    return Home(root=root, config_path=root / "config.yaml")


# --- Postfix -----------------------------------------------------------------------------------

POSTFIX_ROWS = [
    M("2026-11-02T09:01:01", "20261102090101.4F2A11C03A@ws-alice.example.com", "4F2A11C03A", "alice@example.com", ["bob@gmail.com", "carol@partner.example.org"], 48213, "Q4 pricing", ["pricing.xlsx"], "outbound", "delivered", "10.20.0.15", "gmail-smtp-in.l.google.com", "email-out", "maillog-part1:11"),
    M("2026-11-02T09:02:00", "newsletter-77@shop.example.net", "5B3C22D04B", "news@shop.example.net", ["frank@example.com"], 10240, None, None, "inbound", "delivered", "198.51.100.7", "virtual", "email-in", "maillog-part1:21"),
    M("2026-11-02T09:03:00", "20261102090300.6C4D33E05C@mx1.example.com", "6C4D33E05C", "dave@example.com", ["erin@example.com"], 2048, None, None, "internal", "delivered", None, "mail.example.com", "email-internal", "maillog-part1:27"),
    # one recipient bounced, one delivered: the row holds the delivered one
    M("2026-11-02T09:04:00", "bounce-me@ws-alice.example.com", "7D5E44F06D", "alice@example.com", ["ok@partner.example.org"], 3000, None, None, "outbound", "delivered", "10.20.0.15", "mx.partner.example.org", "email-out", "maillog-part1:32"),
    # the bounce (null sender) back to alice
    M("2026-11-02T09:04:02", "20261102090402.8E6F55A07E@mx1.example.com", "8E6F55A07E", None, ["alice@example.com"], 5120, None, None, "internal", "delivered", None, "mail.example.com", "email-internal", "maillog-part1:38"),
    M("2026-11-02T09:05:00", "dlp-1@ws-mallory.example.com", "9F7A66B08F", "mallory@example.com", ["mallory.home@proton.me"], None, None, None, "outbound", "blocked", "10.20.0.66", None, "email-out-failed", "maillog-part1:42"),
    # the hand-off to a content filter, then the re-injected copy (orig_client gives the real client)
    M("2026-11-02T09:06:00", "filtered-1@ws-alice.example.com", "B19C88D0AB", "alice@example.com", ["alice.private@gmail.com"], 900, None, None, "outbound", "relayed", "10.20.0.15", "127.0.0.1", "email-relay", "maillog-part1:54"),
    M("2026-11-02T09:06:01", "filtered-1@ws-alice.example.com", "C2AD99E1BC", "alice@example.com", ["alice.private@gmail.com"], 1400, None, None, "outbound", "delivered", "10.20.0.15", "gmail-smtp-in.l.google.com", "email-out", "maillog-part1:59"),
    # deferred in part1, delivered in part2 (ISO timestamps, +01:00)
    M("2026-11-02T09:10:00", "split@ws-bob.example.com", "D3BEAAF2CD", "bob@example.com", ["bob.home@yahoo.com"], 7777777, None, None, "outbound", "delivered", "10.20.0.16", "mta6.am0.yahoodns.net", "email-out", "maillog-part1:64"),
    # deferred in part2, expired five days later in part3
    M("2026-11-02T09:20:00", "late@ws-erin.example.com", "E4CFBB03DE", "erin@example.com", ["someone@outlook.com"], 4096, None, None, "outbound", "failed", "10.20.0.17", "outlook-com.olc.protection.outlook.com", "email-out-failed", "maillog-part2:6"),
]
POSTFIX_QUARANTINE = [
    ("maillog-part1", 48, 'not a syslog line (expected "Mmm dd hh:mm:ss host program[pid]: message" or an ISO 8601 timestamp first)'),
    ("maillog-part1", 49, "bad syslog timestamp: Feb 30 09:05:04"),
    ("maillog-part1", 50, "malformed delivery line (expected QUEUEID: to=<…>, relay=…, delay=…, dsn=…, status=…)"),
    ("maillog-part1", 51, "malformed qmgr line (expected QUEUEID: from=<…>, size=N, nrcpt=N (queue active) or status=expired, returned to sender)"),
]
POSTFIX_SKIPPED = {
    "blank line": 1, "other program (not postfix)": 1, "postfix/anvil": 1, "postfix/bounce notification": 1,
    "postfix/dnsblog": 1, "postfix/pickup": 1, "postfix/postscreen": 1, "postfix/postscreen connect/disconnect": 1,
    "postfix/smtp TLS": 1, "postfix/smtp remote server reply": 1, "postfix/smtpd NOQUEUE reject": 1,
    "postfix/smtpd TLS": 1, "postfix/smtpd connect/disconnect": 4, "postfix/smtpd warning": 1,
}
PARTS = [FIXTURES / "postfix" / f"maillog-part{i}" for i in (1, 2, 3)]


def test_postfix_messages_joined_across_three_files(tmp_path):
    home = new_home(tmp_path)
    reports = ingest_paths([FIXTURES / "postfix"], home, SETTINGS, year=2026)
    assert [(r.source, r.lines, r.events, r.quarantined) for r in reports] == [
        ("postfix", 65, 8, 4), ("postfix", 7, 1, 0), ("postfix", 2, 1, 0)]
    assert dict(reports[0].skipped) == POSTFIX_SKIPPED
    assert reports[0].notes == ["postfix: 1 messages pending (no `removed` line yet, or only their smtpd line), kept in the state store and "
                                "joined when their next lines are ingested"]
    assert brief(email_rows(home)) == POSTFIX_ROWS
    assert quarantine(home) == POSTFIX_QUARANTINE
    state = open_state(home)
    assert state.query("SELECT count(*) AS n FROM postfix_pending WHERE consumed_by IS NULL")[0]["n"] == 0
    state.close()


def test_postfix_full_row(tmp_path):
    home = new_home(tmp_path)
    ingest_paths([PARTS[0]], home, SETTINGS, year=2026)
    first = email_rows(home)[0]
    assert first == {
        "_time": datetime(2026, 11, 2, 9, 1, 1, tzinfo=timezone.utc),
        "message_id": "20261102090101.4F2A11C03A@ws-alice.example.com", "internal_message_id": "4F2A11C03A",
        "src_user": "alice@example.com", "src_user_domain": "example.com", "user": "alice",  # the SASL login
        "recipient": ["bob@gmail.com", "carol@partner.example.org"], "recipient_domain": ["gmail.com", "partner.example.org"],
        "recipient_count": 2, "size": 48213, "subject": "Q4 pricing", "file_name": ["pricing.xlsx"],
        "direction": "outbound", "action": "delivered", "src_ip": "10.20.0.15", "dest": "gmail-smtp-in.l.google.com",
        "event_type": "email-out", "source": "postfix", "raw_ref": f"{PARTS[0]}:11",
        "origin": None,  # what a HEC sender said besides the line: nothing, for a file
    }


def test_postfix_one_file_that_grows_between_two_ingests(tmp_path):
    home = new_home(tmp_path)
    log = tmp_path / "maillog"
    log.write_text(PARTS[0].read_text())
    [first] = ingest_paths([log], home, SETTINGS, year=2026)
    assert first.events == 8 and "1 messages pending" in first.notes[0]
    with open(log, "a") as handle:
        handle.write(PARTS[1].read_text() + PARTS[2].read_text())
    [second] = ingest_paths([log], home, SETTINGS, year=2026)
    assert (second.resumed_from_line, second.lines, second.events) == (65, 9, 2)
    rows = brief(email_rows(home))
    assert [r[2] for r in rows] == [r[2] for r in POSTFIX_ROWS]
    assert rows[-2] == POSTFIX_ROWS[-2][:-1] + ("maillog:64",)
    # re-ingesting adds nothing
    [third] = ingest_paths([log], home, SETTINGS, year=2026)
    assert (third.lines, third.events) == (0, 0) and len(email_rows(home)) == 10


def test_postfix_newest_file_first_still_joins_once(tmp_path):
    # a folder of rotated logs is read in name order: maillog before maillog.1, newest first
    home = new_home(tmp_path)
    reports = ingest_paths([PARTS[1], PARTS[0]], home, SETTINGS, year=2026)
    assert "1 queue ids seen without their beginning" in reports[0].notes[1]
    rows = brief(email_rows(home))
    assert [r for r in rows if r[2] == "D3BEAAF2CD"] == [POSTFIX_ROWS[8]]
    assert len(rows) == 9  # E4CFBB03DE waits for part3


def test_postfix_small_chunks_give_the_same_rows(tmp_path):
    home = new_home(tmp_path)
    reports = ingest_paths(PARTS, home, SETTINGS, year=2026, chunk_bytes=700)
    assert sum(r.batches for r in reports) > 10
    assert brief(email_rows(home)) == POSTFIX_ROWS


def test_postfix_killed_ingest_loses_and_doubles_nothing(tmp_path, monkeypatch):
    home = new_home(tmp_path)
    real_write = ingest_module.write_batch
    calls = {"n": 0}

    def dying_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # after the parse wrote its pending lines, before the batch commit
            raise KeyboardInterrupt("killed")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "write_batch", dying_write)
    with pytest.raises(KeyboardInterrupt):
        ingest_paths(PARTS, home, SETTINGS, year=2026, chunk_bytes=700)
    monkeypatch.setattr(ingest_module, "write_batch", real_write)
    ingest_paths(PARTS, home, SETTINGS, year=2026, chunk_bytes=700)
    assert brief(email_rows(home)) == POSTFIX_ROWS


def _maillog(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "maillog"
    path.write_text("\n".join(lines) + "\n")
    return path


def _postfix(*entries: tuple) -> list[str]:
    """Maillog lines from (time, program, pid, message) written by the synth Postfix writer (BSD stamps, host mx1)."""
    return postfix.lines(postfix.Entry(t.replace(tzinfo=timezone.utc), program, pid, message)
                         for t, program, pid, message in entries)


def _sent(qid: str, to: str, relay: str = "x", dsn: str = "2.0.0", status: str = "sent", reply: str = "250 ok"):
    return postfix.delivery(qid, to, relay, "192.0.2.1", 25, 1, (0, 0, 0, 1), reply, dsn=dsn, status=status)


def test_postfix_all_recipients_final_without_removed_line(tmp_path):
    home = new_home(tmp_path)
    q, t0, t1 = "1A2B3C4D5E", datetime(2026, 11, 3, 8, 0, 0), datetime(2026, 11, 3, 8, 0, 1)
    final = _postfix(
        (t0, "postfix/cleanup", 1, postfix.cleanup(q, "<one@example.com>")),
        (t0, "postfix/qmgr", 2, postfix.queued(q, "alice@example.com", 100, 2)),
        (t1, "postfix/smtp", 3, _sent(q, "a@gmail.com")),
        (t1, "postfix/smtp", 3, _sent(q, "b@gmail.com", dsn="5.1.1", status="bounced", reply="550 no")),
    )
    # anvil's statistics: a line the parser skips (not written by the writer)
    later = ["Nov  3 08:11:02 mx1 postfix/anvil[9]: statistics: max cache size 1 at Nov  3 08:11:02",
             *_postfix((datetime(2026, 11, 3, 8, 11, 2), "postfix/cleanup", 1,
                        postfix.cleanup("9ABCDEF012", "<other@example.com>")))]
    path = _maillog(tmp_path, final)
    [first] = ingest_paths([path], home, SETTINGS, year=2026)
    assert first.events == 0 and "1 messages pending" in first.notes[0]  # the `removed` line may still come
    with open(path, "a") as handle:
        handle.write("\n".join(later) + "\n")
    [second] = ingest_paths([path], home, SETTINGS, year=2026)
    assert second.events == 1  # ten minutes later without it: all recipients final is enough
    with open(path, "a") as handle:
        handle.write(_postfix((datetime(2026, 11, 3, 8, 12, 0), "postfix/qmgr", 2, postfix.removed(q)))[0] + "\n")
    [third] = ingest_paths([path], home, SETTINGS, year=2026)
    assert third.events == 0  # the late `removed` line adds no second row
    assert [(r[1], r[3], r[4], r[9]) for r in brief(email_rows(home))] == [
        ("one@example.com", "alice@example.com", ["a@gmail.com"], "delivered")]


def _reused_queue_id_lines() -> list[str]:
    lines = []
    for minute, (sender, rcpt) in enumerate([("alice@example.com", "x@gmail.com"), ("bob@example.com", "y@yahoo.com")]):
        t0, t1 = datetime(2026, 11, 3, 8, minute, 0), datetime(2026, 11, 3, 8, minute, 1)
        lines += _postfix(
            (t0, "postfix/cleanup", 1, postfix.cleanup("0F5383D", f"<m{minute}@example.com>")),
            (t0, "postfix/qmgr", 2, postfix.queued("0F5383D", sender, 5360, 1)),
            (t1, "postfix/smtp", 3, _sent("0F5383D", rcpt, relay="mx")),
            (t1, "postfix/qmgr", 2, postfix.removed("0F5383D")),
        )
    return lines


def test_postfix_queue_id_reused_in_one_file(tmp_path):
    home = new_home(tmp_path)
    ingest_paths([_maillog(tmp_path, _reused_queue_id_lines())], home, SETTINGS, year=2026)
    assert [(r[1], r[3], r[4]) for r in brief(email_rows(home))] == [
        ("m0@example.com", "alice@example.com", ["x@gmail.com"]), ("m1@example.com", "bob@example.com", ["y@yahoo.com"])]


@pytest.mark.parametrize("chunk_bytes", [None, 700, 300])
def test_postfix_segments_view_gives_what_the_segments_table_gives(tmp_path, monkeypatch, chunk_bytes):
    """A batch whose queue ids each end at most once, at their last line, reads its segments
    through a view; the table every batch used to build is the reference."""
    extra = _maillog(tmp_path, _reused_queue_id_lines())
    paths = [*PARTS, extra]
    options = {"chunk_bytes": chunk_bytes} if chunk_bytes else {}
    real_join = postfix_source.Postfix._join
    used = []

    def counting_join(self, con, ctx, one_segment_view=True):
        real_join(self, con, ctx, one_segment_view)
        used.append(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'pf_segments'").fetchone()[0])

    monkeypatch.setattr(postfix_source.Postfix, "_join", counting_join)
    viewed = new_home(tmp_path, "viewed")
    viewed_reports = ingest_paths(paths, viewed, SETTINGS, year=2026, **options)
    monkeypatch.setattr(postfix_source.Postfix, "_join",
                        lambda self, con, ctx: real_join(self, con, ctx, one_segment_view=False))
    tabled = new_home(tmp_path, "tabled")
    tabled_reports = ingest_paths(paths, tabled, SETTINGS, year=2026, **options)
    assert brief(email_rows(viewed)) == brief(email_rows(tabled))
    assert len(email_rows(viewed)) == len(POSTFIX_ROWS) + 2
    assert [(r.events, r.quarantined, r.skipped, r.notes) for r in viewed_reports] == \
        [(r.events, r.quarantined, r.skipped, r.notes) for r in tabled_reports]
    pending = ("SELECT key, queue_id, kind, time, message_id, sender, size, nrcpt, client_ip, rcpt, relay, dsn, status, "
               "hop, subject, file_name, raw_ref, consumed_by IS NULL FROM postfix_pending ORDER BY rowid")
    states = [open_state(home) for home in (viewed, tabled)]
    assert [tuple(r) for r in states[0].query(pending)] == [tuple(r) for r in states[1].query(pending)]
    for state in states:
        state.close()
    assert min(used) == 0  # some batch read its segments through the view, the reused queue id's through the table
    assert max(used) == 1


def test_postfix_local_time_zone_and_year(tmp_path):
    home = new_home(tmp_path)
    t0, t1 = datetime(2025, 7, 1, 10, 0, 0), datetime(2025, 7, 1, 10, 0, 1)
    path = _maillog(tmp_path, _postfix(
        (t0, "postfix/cleanup", 1, postfix.cleanup("0F5383D", "<tz@example.com>")),
        (t0, "postfix/qmgr", 2, postfix.queued("0F5383D", "alice@example.com", 1, 1)),
        (t1, "postfix/smtp", 3, _sent("0F5383D", "x@gmail.com", relay="mx")),
        (t1, "postfix/qmgr", 2, postfix.removed("0F5383D")),
    ))
    ingest_paths([path], home, SETTINGS, year=2025, source_tz="Europe/Berlin")
    [row] = email_rows(home)
    assert row["_time"] == datetime(2025, 7, 1, 8, 0, 0, tzinfo=timezone.utc)


def test_no_internal_domains_gives_unknown_direction_and_a_note(tmp_path):
    home = new_home(tmp_path)
    [report] = ingest_paths([PARTS[0]], home, parse_settings({}, "test"), year=2026)
    assert any("internal_domains is not set" in n for n in report.notes)
    assert {(r["direction"], r["event_type"]) for r in email_rows(home) if r["action"] != "relayed"} == {("unknown", "email")}


# --- Exchange and Microsoft 365 -----------------------------------------------------------------

EXCHANGE_ROWS = [
    M("2026-11-02T09:01:01.123", "AM0PR01MB1234.alice@example.com", "c1a9e3b2-5f4d-4e6a-9b1c-08d8f1aa0001", "alice@example.com", ["bob@gmail.com", "carol@example.com"], 48213, 'Re: pricing, Q4 "final"', None, "outbound", "delivered", "10.20.0.15", "EDGE01.example.com", "email-out", "MSGTRK2026110209-1.LOG:6"),
    M("2026-11-02T09:02:00", "newsletter-77@shop.example.net", "c1a9e3b2-5f4d-4e6a-9b1c-08d8f1aa0003", "news@shop.example.net", ["frank@example.com"], 10240, "Weekly deals", None, "inbound", "delivered", "198.51.100.7", "EX01.example.com", "email-in", "MSGTRK2026110209-1.LOG:12"),
    M("2026-11-02T09:04:00", "bounce-me@example.com", "c1a9e3b2-5f4d-4e6a-9b1c-08d8f1aa0004", "alice@example.com", ["nobody@invalid.example.net"], 3000, "hello", None, "outbound", "failed", "10.20.0.15", None, "email-out-failed", "MSGTRK2026110209-1.LOG:15"),
    M("2026-11-03T10:00:00", "old-style@example.com", "2041", "bob@example.com", ["bob.home@yahoo.com", "partner@partner.example.org"], 7777777, "backup", None, "outbound", "delivered", "10.20.0.16", "mta5.am0.yahoodns.net", "email-out", "MSGTRK2026110310-1-2010.LOG:6"),
]


def test_exchange_one_row_per_message_across_servers(tmp_path):
    home = new_home(tmp_path)
    reports = ingest_paths([FIXTURES / "exchange"], home, SETTINGS)
    assert [(r.source, r.lines, r.events, r.quarantined) for r in reports] == [
        ("exchange_tracking", 21, 3, 3), ("exchange_tracking", 7, 0, 0), ("exchange_tracking", 7, 1, 0)]
    assert dict(reports[0].skipped) == {
        "header": 5, "exchange event AGENTINFO": 1, "exchange event SUBMIT": 1, "exchange event HARECEIVE": 1,
        "exchange event RESOLVE": 1, "exchange event DSN": 1, "exchange event (other id)": 1}
    assert reports[1].notes == ["exchange: 1 messages already written from another log or an earlier export "
                                "(not written again)"]
    assert brief(email_rows(home)) == EXCHANGE_ROWS
    assert quarantine(home) == [
        ("MSGTRK2026110209-1.LOG", 19, "expected 30 comma-separated fields (as the #Fields header), found 6"),
        ("MSGTRK2026110209-1.LOG", 20, "bad date-time: 02/11/2026 09:07 (expected ISO 8601)"),
        ("MSGTRK2026110209-1.LOG", 21, "unbalanced quotes in CSV line"),
    ]


def test_exchange_edge_log_first_gives_the_edge_view_once(tmp_path):
    home = new_home(tmp_path)
    ingest_paths([FIXTURES / "exchange" / "MSGTRK2026110209-2-edge.LOG",
                  FIXTURES / "exchange" / "MSGTRK2026110209-1.LOG"], home, SETTINGS)
    rows = [r for r in brief(email_rows(home)) if r[2].endswith("0001")]
    assert len(rows) == 1 and rows[0][5] == 48300 and rows[0][11] == "gmail-smtp-in.l.google.com"


M365_CSV_ROWS = [
    M("2026-11-02T09:01:01", "PR1.alice@example.com", "0b4c1e52-9a1b-4c1e-8e1a-000000000001", "alice@example.com", ["bob@gmail.com", "carol@example.com"], 48213, "Q4 pricing, final", None, "outbound", "delivered", "10.20.0.15", "142.250.102.26", "email-out", "MessageTrace_2026-11-02.csv:3"),
    M("2026-11-02T09:02:00.123456", "newsletter-77@shop.example.net", "0b4c1e52-9a1b-4c1e-8e1a-000000000002", "news@shop.example.net", ["frank@example.com"], 10240, "Weekly deals", None, "inbound", "delivered", "198.51.100.7", None, "email-in", "MessageTrace_2026-11-02.csv:5"),
    # a distribution list (Status Expanded) and its member: the delivered member is the recipient
    M("2026-11-02T09:03:00", "PR3.alice@example.com", "0b4c1e52-9a1b-4c1e-8e1a-000000000003", "alice@example.com", ["dave@example.com"], 2048, "team update", None, "internal", "delivered", "10.20.0.15", None, "email-internal", "MessageTrace_2026-11-02.csv:6"),
    M("2026-11-02T09:05:00", "PR4.mallory@example.com", "0b4c1e52-9a1b-4c1e-8e1a-000000000004", "mallory@example.com", ["mallory.home@proton.me"], 9000000, "docs", None, "outbound", "failed", "10.20.0.66", None, "email-out-failed", "MessageTrace_2026-11-02.csv:8"),
    M("2026-11-02T10:00:00", "PR5.erin@example.com", "0b4c1e52-9a1b-4c1e-8e1a-000000000005", "erin@example.com", ["someone@outlook.com"], 4096, "hi", None, "outbound", "pending", "10.20.0.17", None, "email-out", "MessageTrace_2026-11-02_again.csv:5"),
]


def test_m365_csv_export_grouped_per_message_and_overlapping_exports_deduplicated(tmp_path):
    home = new_home(tmp_path)
    reports = ingest_paths([FIXTURES / "m365" / "MessageTrace_2026-11-02.csv",
                            FIXTURES / "m365" / "MessageTrace_2026-11-02_again.csv"], home, SETTINGS)
    assert [(r.source, r.lines, r.events, r.quarantined, dict(r.skipped)) for r in reports] == [
        ("m365_trace_csv", 11, 4, 3, {"header": 2}), ("m365_trace_csv", 5, 1, 0, {"header": 2})]
    assert "1 messages already written" in reports[1].notes[0]
    assert brief(email_rows(home)) == M365_CSV_ROWS
    assert quarantine(home) == [
        ("MessageTrace_2026-11-02.csv", 9, "bad Received time: yesterday (expected ISO 8601, /Date(ms)/ or M/d/yyyy h:mm:ss AM)"),
        ("MessageTrace_2026-11-02.csv", 10, "bad number in Size: 12 KB"),
        ("MessageTrace_2026-11-02.csv", 11, "expected 10 comma-separated fields (as the header), found 3"),
    ]


def test_m365_json_document_and_json_lines(tmp_path):
    home = new_home(tmp_path)
    reports = ingest_paths([FIXTURES / "m365" / "messagetrace_odata.json", FIXTURES / "m365" / "messagetrace.jsonl"],
                           home, SETTINGS)
    assert [(r.source, r.lines, r.events, r.quarantined) for r in reports] == [
        ("m365_trace_json", 126, 4, 0), ("m365_trace_json", 6, 2, 3)]
    rows = brief(email_rows(home))
    # the OData document gives the same messages as the CSV export (times in ms)
    assert [r[:-1] for r in rows[:4]] == [
        (r[0][:23] if "." in r[0] else r[0], *r[1:-1]) for r in M365_CSV_ROWS[:4]]
    assert [r[-1] for r in rows[:4]] == ["messagetrace_odata.json:1#1", "messagetrace_odata.json:1#3",
                                         "messagetrace_odata.json:1#4", "messagetrace_odata.json:1#6"]
    assert rows[4:] == [
        M("2026-11-04T08:00:00", "j1@example.com", "0b4c1e52-9a1b-4c1e-8e1a-0000000000j1", "bob@example.com", ["bob.home@yahoo.com"], 5242880, "photos", None, "outbound", "delivered", "10.20.0.16", "67.195.204.72", "email-out", "messagetrace.jsonl:1#1"),
        # Graph's camelCase record
        M("2026-11-04T09:00:00", "j2@example.com", "0b4c1e52-9a1b-4c1e-8e1a-0000000000j2", "erin@example.com", ["erin@gmx.de"], 120000, "cv", None, "outbound", "delivered", "10.20.0.17", None, "email-out", "messagetrace.jsonl:2#1"),
    ]
    assert quarantine(home) == [
        ("messagetrace.jsonl", 4, "bad Received time: not a time (expected ISO 8601, /Date(ms)/ or M/d/yyyy h:mm:ss AM)"),
        ("messagetrace.jsonl", 5, "not JSON (expected a message trace record or document per line)"),
        ("messagetrace.jsonl", 6, "not a message trace record (no SenderAddress or RecipientAddress)"),
    ]


# --- Zeek smtp.log / files.log ------------------------------------------------------------------

ZEEK_ROWS = [
    # size = the MIME parts in files.log (1200 + 47013), attachment name from files.log
    M("2026-11-02T09:01:01.1", "pricing-1@example.com", "CAlice1aaaaaaaaaaa#1", "alice@example.com", ["bob@gmail.com", "carol@partner.example.org"], 48213, "Q4 pricing", ["pricing.pdf"], "outbound", "delivered", "10.20.0.15", "10.10.0.5", "email-out", "smtp.log:9"),
    M("2026-11-02T09:01:02.1", "pricing-2@example.com", "CAlice1aaaaaaaaaaa#2", "alice@example.com", ["alice.private@gmail.com"], 250000, "fwd", ["customers.xlsx"], "outbound", "delivered", "10.20.0.15", "10.10.0.5", "email-out", "smtp.log:10"),
    # no fuids: conn.log orig_bytes of its one-transaction connection
    M("2026-11-02T09:02:00", "newsletter-77@shop.example.net", "CInbound2bbbbbbbbb#1", "news@shop.example.net", ["frank@example.com"], 14100, "Weekly deals", None, "inbound", "delivered", "198.51.100.7", "10.10.0.5", "email-in", "smtp.log:11"),
    # rejected at RCPT: recipients from the To header, no size
    M("2026-11-02T09:03:00", None, "CReject3ccccccccc#1", "mallory@example.com", ["mallory.home@proton.me"], None, None, None, "outbound", "failed", "10.20.0.66", "10.10.0.5", "email-out-failed", "smtp.log:12"),
    M("2026-11-03T08:00:00", "backup-1@example.com", "CJson1iiiiiiiiiii#1", "bob@example.com", ["bob.home@yahoo.com"], 7340032, "backup", ["backup.zip"], "outbound", "delivered", "10.20.0.16", "10.10.0.5", "email-out", "smtp.json:1"),
]


def test_zeek_smtp_with_sizes_from_files_log_and_conn_log(tmp_path):
    home = new_home(tmp_path)
    reports = ingest_paths([FIXTURES / "zeek_smtp"], home, SETTINGS)
    assert [(Path(r.file).name, r.source, r.lines, r.events, r.quarantined) for r in reports] == [
        ("conn.log", "zeek_conn", 11, 2, 0), ("files.json", "zeek_files_json", 1, 1, 0),
        ("files.log", "zeek_files", 14, 4, 1), ("smtp.json", "zeek_smtp_json", 4, 1, 2),
        ("smtp.log", "zeek_smtp", 18, 4, 3)]
    assert dict(reports[4].skipped) == {
        "header": 9, "smtp session without a message (STARTTLS: the rest is encrypted)": 1,
        "smtp session without a message (no MAIL FROM / RCPT TO)": 1}
    assert reports[4].notes == [
        "zeek smtp: sizes missing for 1 of 4 messages: no files.log rows for their fuids (or no fuids) and no "
        "conn.log row for their connection (ingest files.log and conn.log before smtp.log; a folder ingest takes "
        "them in name order)",
        "zeek smtp: 1 message sizes taken from conn.log orig_bytes (with SMTP overhead)"]
    assert brief(email_rows(home)) == ZEEK_ROWS
    assert quarantine(home) == [
        ("files.log", 13, "bad number in field seen_bytes: lots"),
        ("smtp.json", 3, "bad timestamp in field ts: garbage (expected epoch seconds or ISO 8601)"),
        ("smtp.json", 4, "not a JSON object (expected one Zeek record per line)"),
        ("smtp.log", 15, "expected 27 tab-separated fields (as the #fields header), found 4"),
        ("smtp.log", 16, "bad timestamp in field ts: XXXXXXXXXX.XXXXXX (expected epoch seconds or ISO 8601)"),
        ("smtp.log", 17, "bad number in field trans_depth: one"),
    ]
    state = open_state(home)
    files = state.lake_files("file_transfer")
    state.close()
    got = duckdb.sql(f"SELECT file_id, session_ids, src_ips, app, file_name, bytes FROM read_parquet({files!r}) "
                     "ORDER BY _time").fetchall()
    assert got[0] == ("FtxtAAAAAAAAAAAAA1", ["CAlice1aaaaaaaaaaa"], ["10.20.0.15"], "SMTP", None, 1200)
    assert ("FzipJJJJJJJJJJJJJ1", ["CJson1iiiiiiiiiii"], ["10.20.0.16"], "SMTP", "backup.zip", 7340032) in got


def test_zeek_smtp_alone_says_what_is_missing(tmp_path):
    home = new_home(tmp_path)
    [report] = ingest_paths([FIXTURES / "zeek_smtp" / "smtp.log"], home, SETTINGS)
    assert report.notes[0] == (
        "zeek smtp: sizes missing for 4 of 4 messages: no files.log (zeek_files) in the lake for these days; no "
        "conn.log (zeek_conn) in the lake for these days (ingest files.log and conn.log before smtp.log; a folder "
        "ingest takes them in name order)")
    assert [r["size"] for r in email_rows(home)] == [None] * 4


# --- CERT ---------------------------------------------------------------------------------------

def test_cert_email_r4_and_r6(tmp_path):
    home = new_home(tmp_path)
    reports = ingest_paths([FIXTURES / "cert"], home, CERT_SETTINGS, source_tz="UTC")
    assert [(r.source, r.lines, r.events, r.quarantined, dict(r.skipped)) for r in reports] == [
        ("cert_email", 6, 3, 2, {"header": 1}),
        ("cert_email", 5, 2, 1, {"header": 1, "CERT View (reading a received message, not sending)": 1})]
    assert brief(email_rows(home)) == [
        M("2010-01-02T07:11:45", "{R3I7-S4TX96FG-8219JWFF}", "{R3I7-S4TX96FG-8219JWFF}", "lynn.adena.bradley@dtaa.com", ["dean.flynn.hines@dtaa.com", "nathaniel.hunter.heath@dtaa.com", "wade_harrison@lockheed.com"], 25830, None, None, "outbound", "delivered", None, None, "email-out", "email_r4.2.csv:2"),
        # sent from a personal webmail account: still the user's outgoing mail
        M("2010-01-02T07:12:16", "{R0R9-E4GL59IK-2907OSWJ}", "{R0R9-E4GL59IK-2907OSWJ}", "moh68@optonline.net", ["odonnell-gage@bellsouth.net"], 29942, None, None, "outbound", "delivered", None, None, "email-out", "email_r4.2.csv:3"),
        M("2010-01-02T07:13:00", "{G2B3-L6EJ61GT-2222RKSO}", "{G2B3-L6EJ61GT-2222RKSO}", "lynn.adena.bradley@dtaa.com", ["lynn.adena.bradley@dtaa.com"], 28780, None, None, "internal", "delivered", None, None, "email-internal", "email_r4.2.csv:4"),
        M("2010-01-04T07:36:48", "{Q2S5-Z2DQ78NM-4477LGXA}", "{Q2S5-Z2DQ78NM-4477LGXA}", "beau.todd.romero@dtaa.com", ["thaddeus.brett.daniel@dtaa.com", "zorita.angela.wilson@dtaa.com"], 23179, None, None, "internal", "delivered", None, None, "email-internal", "email_r6.2.csv:2"),
        M("2010-01-04T07:41:10", "{V5X1-B6QE22BE-5213GDFB}", "{V5X1-B6QE22BE-5213GDFB}", "beau.todd.romero@dtaa.com", ["beau.romero@gmail.com", "beau.todd.romero@dtaa.com"], 2402710, None, ["W8DG1K7L.doc", "2KFCFRAK.pdf"], "outbound", "delivered", None, None, "email-out", "email_r6.2.csv:3"),
    ]
    assert quarantine(home) == [
        ("email_r4.2.csv", 5, "bad date: 13/45/2010 07:13:00 (expected MM/DD/YYYY HH:MM:SS)"),
        ("email_r4.2.csv", 6, "expected at least 10 comma-separated fields (as the header), found 5"),
        ("email_r6.2.csv", 5, "bad number in size: 12x"),
    ]


# --- format detection ---------------------------------------------------------------------------

DETECTED = {
    "postfix/maillog-part1": "postfix", "postfix/maillog-part2": "postfix", "postfix/maillog-part3": "postfix",
    "exchange/MSGTRK2026110209-1.LOG": "exchange_tracking", "exchange/MSGTRK2026110310-1-2010.LOG": "exchange_tracking",
    "m365/MessageTrace_2026-11-02.csv": "m365_trace_csv", "m365/messagetrace_odata.json": "m365_trace_json",
    "m365/messagetrace.jsonl": "m365_trace_json",
    "zeek_smtp/smtp.log": "zeek_smtp", "zeek_smtp/smtp.json": "zeek_smtp_json", "zeek_smtp/files.log": "zeek_files",
    "zeek_smtp/files.json": "zeek_files_json", "zeek_smtp/conn.log": "zeek_conn",
    "cert/email_r4.2.csv": "cert_email", "cert/email_r6.2.csv": "cert_email",
}


@pytest.mark.parametrize("name", sorted(DETECTED))
def test_format_detection_picks_each_mail_format(name):
    path = FIXTURES / name
    assert detect_source(read_head(path), str(path)).name == DETECTED[name]


def test_mail_sources_do_not_claim_other_formats():
    others = [p for p in FIXTURES.rglob("*") if p.is_file() and p.relative_to(FIXTURES).parts[0]
              not in {"postfix", "exchange", "exchange_forwarded", "m365", "m365_v2", "zeek_smtp", "cert"}]
    samples = [SAMPLES / n for n in ("usiem-pulsesecure__access_syslog_standard.log", "usiem-pulsesecure__access_welf.log")]
    for path in others + [p for p in samples if p.exists()]:
        head = read_head(path)
        claimed = [name for name in MAIL_SOURCES if SOURCES[name].sniff(head)]
        assert claimed == [], (path, claimed)


# --- bad input never crashes a parser ------------------------------------------------------------

HEADS = {
    "postfix": [],
    "exchange_tracking": (FIXTURES / "exchange" / "MSGTRK2026110209-1.LOG").read_text().splitlines()[:5],
    "m365_trace_csv": (FIXTURES / "m365" / "MessageTrace_2026-11-02.csv").read_text(encoding="utf-8-sig").splitlines()[:2],
    "m365_trace_json": [],
    "zeek_smtp": (FIXTURES / "zeek_smtp" / "smtp.log").read_text().splitlines()[:8],
    "zeek_smtp_json": [],
    "zeek_files": (FIXTURES / "zeek_smtp" / "files.log").read_text().splitlines()[:8],
    "zeek_files_json": [],
    "cert_email": (FIXTURES / "cert" / "email_r6.2.csv").read_text().splitlines()[:1],
}

_con = None


def _parse(source_name: str, lines: list[str]) -> list[tuple]:
    global _con
    if _con is None:
        _con = duckdb.connect()
        _con.execute("SET TimeZone = 'UTC'")
        _con.execute("SET threads = 1")
    table = pa.table({"line_no": pa.array(range(1, len(lines) + 1), pa.int64()), "line": pa.array(lines, pa.string())})
    _con.register("fuzz_arrow", table)
    _con.execute("CREATE OR REPLACE TEMP VIEW raw_lines AS SELECT line_no, line FROM fuzz_arrow")
    ctx = ParseContext(origin="fuzz", header_lines=HEADS[source_name], settings=SETTINGS, year=2026)
    batch = SOURCES[source_name].parse(_con, ctx)
    outcomes = _con.execute(f"SELECT line_no, outcome, reason FROM {batch.classified} ORDER BY line_no").fetchall()
    _con.execute(f"SELECT count(*) FROM {batch.events}").fetchall()
    return outcomes


_line = st.one_of(
    st.text(max_size=120),
    st.binary(max_size=120).map(lambda b: b.decode("utf-8", errors="replace")),
    st.sampled_from(["Nov  2 09:01:01 mx1 postfix/smtp[1]: 0F5383D: to=", "2026-11-02T09:01:01Z,", "{\"d\": [",
                     "#fields\tts", "id,date,user,pc,", "\t" * 30, "\"" * 7]).flatmap(
        lambda prefix: st.text(max_size=60).map(lambda rest: prefix + rest)),
).map(lambda s: s.replace("\n", " ").replace("\r", " "))


@pytest.mark.parametrize("source_name", MAIL_SOURCES)
@hsettings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_line, min_size=1, max_size=6))
def test_random_lines_end_quarantined_or_skipped(source_name, lines):
    outcomes = _parse(source_name, lines)
    assert [o[0] for o in outcomes] == list(range(1, len(lines) + 1))
    assert all(o[1] in ("quarantined", "skipped") for o in outcomes), outcomes


@pytest.mark.parametrize("source_name", MAIL_SOURCES)
def test_very_long_lines(source_name):
    long = "Nov  2 09:01:01 mx1 postfix/qmgr[2]: 0F5383D: from=<" + "a" * 200_000 + ">, size=1, nrcpt=1"
    outcomes = _parse(source_name, [long, "x" * 300_000, "\ufffd" * 50_000])
    assert [o[0] for o in outcomes] == [1, 2, 3]
    assert all(o[1] in ("quarantined", "skipped") for o in outcomes), outcomes


# --- the public samples (../shared/samples), when present ----------------------------------------

@pytest.mark.skipif(not SAMPLES.exists(), reason="../shared/samples not present")
def test_public_postfix_samples_are_never_quarantined(tmp_path):
    # the samples are message bodies: give each the syslog header of its daemon
    lines = []
    for path in sorted(glob.glob(str(SAMPLES / "postfix-grok__*.yaml"))):
        case = yaml.safe_load(Path(path).read_text())
        daemon = re.search(r"POSTFIX_([A-Z]+)", case["pattern"]).group(1).lower()
        lines.append(f"Nov  2 09:00:00 mx1 postfix/{daemon}[123]: " + case["data"].replace("\n", "\\n"))
    for path in sorted(glob.glob(str(SAMPLES / "postfix-grok__*.log"))):
        daemon = re.search(r"POSTFIX_([A-Z]+)", path).group(1).lower()
        lines += [f"Nov  2 09:00:00 mx1 postfix/{daemon}[123]: {line}" for line in Path(path).read_text().splitlines()]
    assert len(lines) > 140
    home = new_home(tmp_path)
    [report] = ingest_paths([_maillog(tmp_path, lines)], home, SETTINGS, year=2026, source_name="postfix")
    assert report.quarantined == 0, quarantine(home)
    assert report.lines == len(lines)


@pytest.mark.skipif(not SAMPLES.exists(), reason="../shared/samples not present")
def test_public_zeek_smtp_samples_are_never_quarantined(tmp_path):
    folder = tmp_path / "zeek"
    folder.mkdir()
    for path in [*SAMPLES.glob("zeek__smtp*"), *SAMPLES.glob("zed-sample-data__smtp.*")]:
        # btest baselines mask their timestamps: put a real one back
        (folder / path.name).write_text(path.read_text().replace("XXXXXXXXXX.XXXXXX", "1254722768.219663"))
    home = new_home(tmp_path)
    reports = ingest_paths([folder], home, SETTINGS)
    assert len(reports) == 6
    assert sum(r.quarantined for r in reports) == 0, quarantine(home)
    by_file = {Path(r.file).name: r for r in reports}
    assert by_file["zed-sample-data__smtp.log"].events == 12
    assert by_file["zed-sample-data__smtp.json"].events == 12
    attachment = [r for r in email_rows(home) if r["raw_ref"].startswith(str(folder / "zeek__smtp.attachment__smtp.log"))]
    # files.log sorts before smtp.log: the first message's three MIME parts give its size
    assert sorted((r["size"], tuple(r["file_name"] or [])) for r in attachment) == [(204, ()), (12754, ("NEWS.txt",))]


def teardown_module(module):
    if _con is not None:
        _con.close()



def test_yearless_syslog_times_of_december_in_a_file_written_in_january_are_last_year():
    from datetime import datetime as _dt, timezone as _tz

    import duckdb

    from exfilwatch.sources.syslog_header import yearless_time_sql

    written = _dt(2027, 1, 1, 0, 5, tzinfo=_tz.utc)  # the file's mtime, which gave the year 2027
    rolled = yearless_time_sql("s", ["%b %d %H:%M:%S"], "UTC", 2027, written)
    stamps = "(VALUES ('Dec 31 23:59:58'), ('Jan  1 00:00:02')) v(s)"
    assert [row[0].year for row in duckdb.sql(f"SELECT {rolled} FROM {stamps}").fetchall()] == [2026, 2027]
    # An explicit --year means what it says: no rollover.
    fixed = yearless_time_sql("s", ["%b %d %H:%M:%S"], "UTC", 2027, None)
    assert [row[0].year for row in duckdb.sql(f"SELECT {fixed} FROM {stamps}").fetchall()] == [2027, 2027]


# --- Postfix in RFC 5424 form --------------------------------------------------------------------

TRADITIONAL = re.compile(r"^(?P<ts>[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\S+) (?P<host>\S+) "
                         r"(?P<app>[^\s\[\]:]+)(?:\[(?P<pid>\d+)\])?: (?P<msg>.*)$")
# what rsyslog and syslog-ng put between PROCID and MSG: no MSGID or structured data, or some
STRUCTURED = ["- -", "- [origin ip=\"10.0.0.25\" software=\"rsyslogd\"]", "SMTPD [meta note=\"a \\\"]\\\" b\"][x@1 y=\"\"]",
              "- - \ufeff"]


def as_rfc5424(line: str, number: int, relay: bool) -> str:
    """A traditional Postfix line as rsyslog's RSYSLOG_SyslogProtocol23Format writes it (UTC); lines
    that are not (a bad date, not syslog) as they are."""
    m = TRADITIONAL.match(line)
    if m is None:
        return line
    try:
        stamp = datetime.strptime(f"2026 {m['ts']}", "%Y %b %d %H:%M:%S").replace(tzinfo=timezone.utc).isoformat()
    except ValueError:
        if not m["ts"][0].isdigit():
            return line
        stamp = m["ts"]
    structured = STRUCTURED[number % len(STRUCTURED)]
    sep = "" if structured.endswith("\ufeff") else " "
    head = "Nov  2 23:59:59 relay01 " if relay else "<22>"
    return f"{head}1 {stamp} {m['host']} {m['app']} {m['pid'] or '-'} {structured}{sep}{m['msg']}"


@pytest.mark.parametrize("relay", [False, True])
def test_postfix_in_rfc5424_form_gives_the_same_rows(tmp_path, relay):
    folder = tmp_path / "rfc5424"
    folder.mkdir()
    for part in PARTS:
        lines = part.read_text().splitlines()
        (folder / part.name).write_text("".join(as_rfc5424(line, i, relay) + "\n" for i, line in enumerate(lines)))
    home = new_home(tmp_path)
    reports = ingest_paths([folder], home, SETTINGS, year=2026)
    assert [(r.source, r.lines, r.events) for r in reports] == [("postfix", 65, 8), ("postfix", 7, 1), ("postfix", 2, 1)]
    assert brief(email_rows(home)) == POSTFIX_ROWS
    assert [reason for _, _, reason in quarantine(home)] == [reason for _, _, reason in POSTFIX_QUARANTINE]
    assert email_rows(home)[0]["user"] == "alice"


@hsettings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pid=st.one_of(st.just("-"), st.integers(1, 99999).map(str)),
       structured=st.lists(st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12),
                           max_size=3),
       message=st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00\n\r"), max_size=40))
def test_rfc5424_header_reads_alike_in_python_and_sql(pid, structured, message):
    escaped = ['"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]") + '"' for value in structured]
    sd = "".join(f"[x@1 k{i}={value}]" for i, value in enumerate(escaped)) or "-"
    line = f"<22>1 2026-09-25T09:06:40.1-04:00 mail01 postfix/smtpd {pid} - {sd} {message}"
    expected = f"2026-09-25T09:06:40.1-04:00 mail01 postfix/smtpd{'' if pid == '-' else f'[{pid}]'}: {message}"
    assert postfix_source.as_traditional(line) == expected
    con = duckdb.connect()
    con.execute("CREATE TEMP TABLE raw AS SELECT 1::BIGINT AS line_no, ? AS line", [line])
    assert con.execute(f"SELECT line FROM ({postfix_source.traditional_lines_sql('raw')})").fetchone()[0] == expected


_HEADER_PIECES = ["<22>", "<13>", "1 ", "1", " ", "  ", "Nov  2 08:15:02", "Nov 12 08:15:02.25", "2026-11-02T09:15:01Z",
                  "2026-11-02 09:15:01", "2026-11-02T09:15:01.5+01:00", "relay01", "mx1", "postfix/smtpd",
                  "postfix/qmgr[812]", "[812]", ": ", ":", "4F2A11C03A: ", "- - ", "2101 ", "[x@1 y=\"]\"]", "\ufeff",
                  "from=<a@b>", "1 2026-"]


@hsettings(max_examples=400, deadline=None)
@given(pieces=st.lists(st.sampled_from(_HEADER_PIECES), max_size=14))
def test_a_line_with_a_traditional_header_is_never_converted_from_rfc5424(pieces):
    """The parse reads HEADER_RE first and converts (as_traditional) only lines it does not read:
    that is the same as converting every line only if no line HEADER_RE reads is converted."""
    line = "".join(pieces)
    lines = [line, "<22>" + line, "Nov  2 08:15:02 relay01 " + line, "2026-11-02T09:15:01Z mx1 " + line]
    for text in lines:
        if postfix_source._HEADER.match(text):
            assert postfix_source.as_traditional(text) == text
    con = duckdb.connect()
    con.execute("CREATE TEMP TABLE raw_lines AS SELECT i::BIGINT AS line_no, line FROM unnest(?) WITH ORDINALITY t(line, i)",
                [lines])
    ctx = ParseContext(origin="maillog", settings=SETTINGS, year=2026)
    got = con.execute(f"SELECT host, stamp, daemon, qid FROM ({postfix_source.classify_sql(ctx)}) ORDER BY line_no").fetchall()
    con.execute(f"CREATE TEMP TABLE converted AS {postfix_source.traditional_lines_sql('raw_lines')}")
    by_all = postfix_source.classify_sql(ctx).replace("FROM raw_lines", "FROM converted")
    assert got == con.execute(f"SELECT host, stamp, daemon, qid FROM ({by_all}) ORDER BY line_no").fetchall()


@pytest.mark.parametrize("stamps, zoneless, yearless", [
    (["Nov  2 09:15:01"], True, True),
    (["2026-11-02T09:15:01.123456+01:00"], False, False),
    (["2026-11-02T09:15:01Z", "2026-11-02T09:15:01"], True, False),
    (["2026-11-02T09:15:01+01:00", "<22>2026-11-02 09:15:01.5"], True, False),
    # a line that is not syslog still says how it would be read
    (["2026-11-02T09:15:01+01:00", "Nov  2 not-syslog"], True, True),
])
def test_postfix_says_which_times_took_the_zone_and_the_year(stamps, zoneless, yearless):
    lines = [stamp if stamp.endswith("not-syslog") else
             f"{stamp} mx1 postfix/qmgr[812]: 4F2A11C03A: from=<alice@example.com>, size=1, nrcpt=1 (queue active)"
             for stamp in stamps]
    con = duckdb.connect()
    con.register("given", pa.table({"line_no": pa.array(range(1, len(lines) + 1), pa.int64()), "line": lines}))
    con.execute("CREATE TEMP VIEW raw_lines AS SELECT * FROM given")
    ctx = ParseContext(origin="maillog", settings=SETTINGS, source_tz="Europe/Berlin", year=2026)
    parsed = postfix_source.Postfix().parse(con, ctx)
    assert (parsed.zoneless_times, parsed.yearless_times) == (zoneless, yearless)


# --- a delivery line read in one pass (postfix.DELIVERY_READ) against DELIVERY_RE and its fields ---

_DELIVERY_PIECES = st.fixed_dictionaries({
    "to": st.sampled_from(["<bob@example.com>", "bob@example.com", "<>", "<a b@x>", "<b,c@x>"]),
    "orig_to": st.sampled_from(["", ", orig_to=<alias@example.com>", ", orig_to=x"]),
    "relay": st.sampled_from(["mx.example.net[203.0.113.9]:25", "none", "local", "", "private/dovecot-lmtp"]),
    "conn_use": st.sampled_from(["", ", conn_use=2"]),
    "delay": st.sampled_from(["0.4", "12", "1.2.3"]),
    "delays": st.sampled_from(["", ", delays=0.1/0/0.2/0.1", ", delays=1/2"]),
    "dsn": st.sampled_from(["2.0.0", "5.1.1", "4.4.1", "2.0", "22.0.0"]),
    "status": st.sampled_from(["sent", "bounced", "deferred", "undeliverable-but-not-cached", "Sent", ""]),
    "tail": st.sampled_from(["", " (250 2.0.0 Ok: queued as 4B1C2D3E)", " ()", " (", " )", " (x) y", " x", "(y)",
                             " (a, status=sent)"]),
})
_EDIT_ALPHABET = "<>,=.() /0123456789dsnelayt-_:é"


def _delivery_body(p: dict[str, str]) -> str:
    return (f"to={p['to']}{p['orig_to']}, relay={p['relay']}{p['conn_use']}, delay={p['delay']}{p['delays']}, "
            f"dsn={p['dsn']}, status={p['status']}{p['tail']}")


def _delivery_reference(body: str) -> tuple[bool, list[str] | None]:
    """DELIVERY_RE and the field patterns with Python's re (which reads these as RE2 does)."""
    if not re.match(postfix_source.DELIVERY_RE, body):
        return False, None
    return True, [re.search(postfix_source.DELIVERY_FIELDS[name], body).group(1) for name in postfix_source.DELIVERY_GROUPS]


def _delivery_sql(bodies: list[str]) -> list[tuple[bool, list[str] | None]]:
    read = postfix_source.delivery_read_sql("body")
    rows = duckdb.connect().execute(
        f"SELECT {postfix_source.delivery_ok_sql('body', 'dl')} AS ok, dl FROM (SELECT i, body, {read} AS dl "
        "FROM unnest(?) WITH ORDINALITY t(body, i)) ORDER BY i", [bodies]).fetchall()
    return [(ok, [dl[name] for name in postfix_source.DELIVERY_GROUPS] if ok else None) for ok, dl in rows]


@hsettings(max_examples=300, deadline=None)
@given(pieces=_DELIVERY_PIECES,
       edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 2), st.sampled_from(_EDIT_ALPHABET)), max_size=3))
def test_one_pass_delivery_reading_is_the_delivery_pattern_and_its_fields(pieces, edits):
    body = _delivery_body(pieces)
    variants = [body]
    for at, how, char in edits:  # a character inserted, replaced or removed
        at %= len(body) + 1
        body = body[:at] + char + body[at + (how > 0):] if how < 2 else body[:at] + body[at + 1:]
        variants.append(body)
    assert _delivery_sql(variants) == [_delivery_reference(v) for v in variants]


def test_delivery_relay_is_the_relay_field_not_an_address_that_looks_like_one():
    # The earlier unanchored ` relay=` capture read `x>` from the recipient address here.
    body = "to=<a relay=x>, relay=mx.example.net[203.0.113.9]:25, delay=1, dsn=2.0.0, status=sent (250 Ok)"
    assert _delivery_sql([body]) == [(True, ["a relay=x", "mx.example.net[203.0.113.9]:25", "2.0.0", "sent"])]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_postfix_parse_leaves_the_connection_on_its_threads(threads):
    """The message step runs on one thread (postfix._one_thread); the statements after the parse
    (the lake write, the next batch) run on the threads the user configured."""
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    lines = ["Nov  2 09:15:01 mx1 postfix/qmgr[812]: 4F2A11C03A: from=<alice@example.com>, size=1, nrcpt=1 (queue active)"]
    con.register("given", pa.table({"line_no": pa.array(range(1, len(lines) + 1), pa.int64()), "line": lines}))
    con.execute("CREATE TEMP VIEW raw_lines AS SELECT * FROM given")
    postfix_source.Postfix().parse(con, ParseContext(origin="maillog", settings=SETTINGS, year=2026))
    assert con.execute("SELECT current_setting('threads')").fetchone()[0] == threads
