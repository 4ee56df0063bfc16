"""The spool read back as Arrow gives what the record-by-record reader gives, for hostile lines
too (separators, NUL, bytes that are not UTF-8); `auto` routes a column of lines as it routes
each line; a backlog is committed in as few batches as its size allows."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from exfilwatch.config import Home, Settings
from exfilwatch.events.ingest import open_target
from exfilwatch.service.ingester import Ingester
from exfilwatch.service import spool as spool_module
from exfilwatch.service.spool import BLOCK, Spool, encode_block, encode_many
from exfilwatch.sources import route_syslog_line, route_syslog_lines
from tests.servicekit import committed_users, postfix_lines, pulse_login

LINES = st.lists(st.binary(max_size=60) | st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
                 min_size=1, max_size=20)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(st.tuples(st.sampled_from(["auto", "postfix"]), st.sampled_from(["", '{"host":"h"}', BLOCK]),
                                   LINES), min_size=1, max_size=5),
       limit=st.integers(1, 60))
def test_read_table_gives_what_read_gives(tmp_path_factory, requests, limit):
    """Records of one line each and blocks of lines (a syslog stream's reads), mixed in any order."""
    spool = Spool(tmp_path_factory.mktemp("spool"), 0)
    appended = 0
    for i, (source, meta, lines) in enumerate(requests):
        if meta == BLOCK:
            block = b"\n".join(line for line in lines if line and b"\n" not in line)
            if block:
                spool.append(encode_block(source, f"tcp:1@10.0.0.{i}", 1790000000.5 + i, block))
                appended += block.count(b"\n") + 1
            continue
        spool.append(encode_many(source, f"tcp:1@10.0.0.{i}", 1790000000.5 + i, lines, meta))
        appended += len(lines)
    if not appended:
        return
    assert spool.count(0, spool.end) == appended
    for start in (0, spool.read(0, spool.end, 1)[0].end):
        expected = [r._asdict() for r in spool.read(start, spool.end, limit)]
        for row in expected:
            row["line"] = row["line"].replace("\x00", "\ufffd")
        assert spool.read_table(start, spool.end, limit).to_pylist() == expected
        assert spool.count(start, spool.end) == len(spool.read(start, spool.end, 1 << 62))
        assert all(row["meta"] != BLOCK for row in expected)
    spool.close()


def test_auto_routes_a_column_of_lines_as_each_line():
    lines = [pulse_login("u1"), *postfix_lines("1A2B3C4D5E"), "<13>Oct 11 22:14:15 host sshd[7]: x", "junk", "",
             "<14>1 2026-03-03T09:15:07.120+01:00 srx01 RT_FLOW - RT_FLOW_SESSION_CLOSE [junos@2636 a=\"b\"]",
             "Oct 19 10:20:40 relay 1 2026-10-19T10:20:40+02:00 mail01 postfix/smtpd 1 - - 1A2B3C4D5E: client=a[1.2.3.4]"]
    routed = route_syslog_lines(pa.chunked_array([pa.array(lines[:3], pa.large_string()),
                                                  pa.array(lines[3:], pa.large_string())]))
    assert routed.to_pylist() == [route_syslog_line(line) for line in lines]
    assert routed.to_pylist()[0] == "pulse_secure" and routed.to_pylist()[-1] == "postfix"


@pytest.mark.parametrize("line, source", [
    ("<13>Oct 11 22:14:15 vpn01 pulsesecure: x", "pulse_secure"),  # the product names in any case
    ("2026-09-25T09:00:00-04:00 vpn01 IVE[12]: x", "pulse_secure"),
    ("2026-09-25T09:00:00-04:00 vpn01 IVEX: x", None),  # another program whose name starts alike
    ("Oct 11 22:14:15 mail01 postfix: x", "postfix"),
    ("Oct 11 22:14:15 mail01 postfix-script[7]: x", None),
    ("<14>1 2026-03-03T09:15:07.120+01:00 srx01 RT_FLOW_SESSION_CREATE x", "srx_flow"),
])
def test_auto_routes_by_the_whole_program_tag(line, source):
    assert route_syslog_line(line) == source
    assert route_syslog_lines(pa.array([line], pa.large_string())).to_pylist() == [source]


@pytest.mark.parametrize("segment_requests", [100, 3])
def test_a_backlog_is_committed_in_batches_as_large_as_max_bytes_allows(tmp_path, monkeypatch, segment_requests):
    """However many records wait, a batch takes all of them up to `max_bytes` of spool (across
    segments too); a record larger than that is a batch of its own; every line is committed once."""
    home = Home(tmp_path, tmp_path / "config.yaml")
    request_bytes = len(encode_many("pulse_secure", "tcp:1@10.0.0.0", 1790000000.0,
                                    [pulse_login(f"u0-{i}", i).encode() for i in range(10)]))
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", segment_requests * request_bytes)
    with open_target(home, Settings()) as target:
        spool = Spool(tmp_path / "spool", 0)
        for peer in range(4):  # four requests of ten lines, from two peers
            spool.append(encode_many("pulse_secure", f"tcp:1@10.0.0.{peer % 2}", 1790000000.0,
                                     [pulse_login(f"u{peer}-{i}", i).encode() for i in range(10)]))
        one_request = spool.end // 4
        assert one_request == request_bytes
        spool.append(encode_many("pulse_secure", "tcp:1@10.0.0.9", 1790000000.0,
                                 [pulse_login("big", 0).encode() + b" " + b"x" * (2 * one_request)]))
        sizes = []
        ingester = Ingester(target, spool, max_bytes=one_request * 2 + 5)  # the cut falls inside a record
        while (outcome := ingester.batch()) is not None:
            sizes.append(outcome.records)
        assert sizes == [20, 20, 1]
        spool.append(encode_many("pulse_secure", "tcp:1@10.0.0.1", 1790000000.0,
                                 [pulse_login(f"late{i}", i).encode() for i in range(30)]))
        assert Ingester(target, spool).batch().records == 30
        spool.close()
    users = committed_users(tmp_path)
    assert sorted(users) == sorted([f"u{p}-{i}" for p in range(4) for i in range(10)] + ["big"] +
                                   [f"late{i}" for i in range(30)])


def test_one_parse_per_source_for_many_peers_keeps_each_mail_servers_messages_apart(tmp_path):
    """Two mail servers send interleaved lines of messages with the same queue id, through one
    listener, into one batch: it is one Postfix parse (one lake batch), yet each message is joined
    from its own server's lines only, and raw_ref and quarantine name the peer a line came from and
    its number among that peer's lines."""
    import sqlite3

    from tests.servicekit import committed_rows

    home = Home(tmp_path, tmp_path / "config.yaml")
    first = postfix_lines("4C5D6E7F80", sender="a@corp.example", rcpt="x@gmail.com", host="mx-a")
    second = postfix_lines("4C5D6E7F80", sender="b@corp.example", rcpt="y@yahoo.com", host="mx-b")
    second.insert(2, "2026-09-25T09:06:40.000000-04:00 mx-b postfix/qmgr[2103]: 4C5D6E7F80: from=<broken")
    with open_target(home, Settings()) as target:
        spool = Spool(tmp_path / "spool", 0)
        for a, b in zip(first + [None], second):  # one record at a time, alternating peers
            if a is not None:
                spool.append(encode_many("auto", "tcp:1@10.0.0.1", 1790000000.0, [a.encode()]))
            spool.append(encode_many("auto", "tcp:1@10.0.0.2", 1790000000.0, [b.encode()]))
        assert Ingester(target, spool).batch().records == 11
        spool.close()
    rows = sorted(committed_rows(tmp_path, "email", "src_user, recipient, raw_ref"))
    assert rows == [("a@corp.example", ["x@gmail.com"], "tcp:1@10.0.0.1@0:3"),
                    ("b@corp.example", ["y@yahoo.com"], "tcp:1@10.0.0.2@0:4")]
    db = sqlite3.connect(tmp_path / "state.sqlite")
    assert db.execute("SELECT source, receiver, lines FROM batches").fetchall() == [("postfix", "tcp:1", 11)]
    assert db.execute("SELECT file, line_no FROM quarantine").fetchall() == [("tcp:1@10.0.0.2@0", 3)]
    db.close()


def test_a_batch_half_committed_by_a_release_that_cut_it_per_peer_is_replaced_when_read_again(tmp_path):
    """The release before cut a spool batch into one part per source and peer. Killed between two
    parts and restarted on this release, which cuts per source and listener, the batch is read
    again: the part committed before is replaced, so no line is stored twice."""
    from datetime import datetime, timezone

    from exfilwatch.events.cursors import SpoolCursor
    from exfilwatch.events.ingest import ingest_lines
    from exfilwatch.service.ingester import SPOOL
    from exfilwatch.sources import get_source

    home = Home(tmp_path, tmp_path / "config.yaml")
    users = {peer: [f"p{peer}-{i}" for i in range(5)] for peer in (1, 2)}
    sent = {peer: [pulse_login(user, i) for i, user in enumerate(users[peer])] for peer in (1, 2)}
    with open_target(home, Settings()) as target:
        spool = Spool(tmp_path / "spool", 0)
        for peer, lines in sent.items():
            spool.append(encode_many("pulse_secure", f"tcp:1@10.0.0.{peer}", 1790000000.0, [l.encode() for l in lines]))
        received = datetime.fromtimestamp(1790000000.0, timezone.utc)
        ingest_lines(get_source("pulse_secure"), sent[1],  # the old cut's first part, then the kill
                     SpoolCursor(SPOOL, "tcp:1@10.0.0.1", 0, spool.end, last=False, received_at=received), target)
        assert sorted(committed_users(tmp_path)) == users[1]
        assert Ingester(target, spool).batch().records == 10
        spool.close()
    assert sorted(committed_users(tmp_path)) == users[1] + users[2]
