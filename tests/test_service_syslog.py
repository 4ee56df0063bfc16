"""Syslog into a real `exfilwatch serve`: UDP, TCP (both RFC 6587 framings), TLS, and one `auto` port
taking a mixed Pulse Secure + Postfix feed; a line no source claims is quarantined with its peer."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import ssl
import subprocess
from collections import Counter

import pytest
from hypothesis import given, strategies as st

from exfilwatch.service.syslog import Framer, FrameError
from tests.servicekit import (Served, committed_files, committed_rows, committed_users, metric, postfix_lines,
                              pulse_login, quarantine, service_config, status, wait_for)


def make_certificate(folder):
    """A self-signed certificate for 127.0.0.1, made with the openssl CLI (the `cryptography`
    package is not installed here)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("syslog")
    cert, key = make_certificate(folder)
    config = service_config(syslog=[
        {"protocol": "udp", "host": "127.0.0.1", "port": 0, "source": "auto"},
        {"protocol": "tcp", "host": "127.0.0.1", "port": 0, "source": "auto"},
        {"protocol": "tls", "host": "127.0.0.1", "port": 0, "source": "pulse_secure", "cert": str(cert),
         "key": str(key)},
    ])
    service = Served(folder / "home", config).start()
    service.cert = cert
    yield service
    service.kill()


def users(served) -> Counter:
    return Counter(committed_users(served.home))


def test_udp_datagrams_are_events(served):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for i in range(3):
            udp.sendto((pulse_login(f"udp{i}", i) + "\n").encode(), ("127.0.0.1", served.port("udp:0")))
    wait_for(lambda: all(users(served)[f"udp{i}"] == 1 for i in range(3)))


def test_tcp_octet_counting_and_newline_framing(served):
    counted = b"".join(b"%d %s" % (len(m), m) for m in (pulse_login(f"oct{i}", i).encode() for i in range(3)))
    lines = b"".join(pulse_login(f"lf{i}", i).encode() + (b"\r\n" if i % 2 else b"\n") for i in range(3))
    with socket.create_connection(("127.0.0.1", served.port("tcp:0")), timeout=10) as tcp:
        tcp.sendall(counted[:50])  # a frame split across reads
        tcp.sendall(counted[50:])
    with socket.create_connection(("127.0.0.1", served.port("tcp:0")), timeout=10) as tcp:
        tcp.sendall(lines + pulse_login("lastline").encode())  # the last line has no newline before close
    wanted = [f"oct{i}" for i in range(3)] + [f"lf{i}" for i in range(3)] + ["lastline"]
    wait_for(lambda: all(users(served)[u] == 1 for u in wanted))


def test_tls(served):
    context = ssl.create_default_context(cafile=str(served.cert))
    with socket.create_connection(("127.0.0.1", served.port("tls:0")), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"".join((pulse_login(f"tls{i}", i) + "\n").encode() for i in range(2)))
    wait_for(lambda: all(users(served)[f"tls{i}"] == 1 for i in range(2)))


def test_one_auto_port_takes_pulse_and_postfix_and_quarantines_the_rest_with_the_peer(served):
    feed = [pulse_login("mixed1")] + postfix_lines("1A2B3C7D1") + ["<13>Oct 11 22:14:15 host sshd[7]: <script>x"]
    with socket.create_connection(("127.0.0.1", served.port("tcp:0")), timeout=10) as tcp:
        tcp.sendall("".join(line + "\n" for line in feed).encode())
    wait_for(lambda: users(served)["mixed1"] == 1 and committed_files(served.home, "email"))
    entry = wait_for(lambda: [q for q in quarantine(served.home) if "sshd" in q[2]])
    file, reason, raw = entry[0]
    assert file.startswith(f"tcp:{served.port('tcp:0')}@127.0.0.1")
    assert "no source recognises" in reason and raw.endswith("<script>x")
    # `status` counts them in its lake-by-source table, beside the sources that took the other lines
    table = status(served.home).splitlines()
    row = next(line for line in table if "(no source recognised)" in line).split("│")
    assert [cell.strip() for cell in row[2:]][:5] == ["1", "1", "0", "0", "1"]  # batches lines events skipped quar.
    assert any("postfix" in line for line in table)


def test_two_mail_servers_with_the_same_queue_ids_on_one_port_each_get_their_own_messages(served):
    """Two peers send interleaved Postfix lines of messages with the same queue ids while the
    service is stopped, so that one batch takes both (one parse for both peers): each message is
    joined from its own server's lines, and raw_ref names the peer that sent its `from=` line."""
    port = served.port("tcp:0")
    mails = {peer: postfix_lines("6A7B8C9D0E", sender=f"peer{peer}@corp.example", rcpt=f"r{peer}@gmail.com",
                                 host=f"mx{peer}") + postfix_lines("6A7B8C9D0F", sender=f"more{peer}@corp.example",
                                                                   host=f"mx{peer}")
             for peer in (1, 2)}
    connections = {peer: socket.create_connection(("127.0.0.1", port), timeout=10,
                                                  source_address=(f"127.0.0.{peer}", 0)) for peer in (1, 2)}
    served.process.send_signal(signal.SIGSTOP)
    try:
        for one, two in zip(mails[1], mails[2]):
            connections[1].sendall((one + "\n").encode())
            connections[2].sendall((two + "\n").encode())
    finally:
        served.process.send_signal(signal.SIGCONT)
        for connection in connections.values():
            connection.close()
    senders = {f"{who}{peer}@corp.example" for who in ("peer", "more") for peer in (1, 2)}

    def theirs() -> list[tuple] | None:
        rows = sorted(r for r in committed_rows(served.home, "email", "src_user, recipient, raw_ref") if r[0] in senders)
        return rows if len(rows) == 4 else None

    rows = wait_for(theirs)
    assert [(sender, recipient) for sender, recipient, _ in rows] == [
        ("more1@corp.example", ["bob@gmail.com"]), ("more2@corp.example", ["bob@gmail.com"]),
        ("peer1@corp.example", ["r1@gmail.com"]), ("peer2@corp.example", ["r2@gmail.com"])]
    for sender, _, raw_ref in rows:
        assert re.fullmatch(rf"tcp:{port}@127\.0\.0\.{sender.split('@')[0][-1]}@\d+:\d+", raw_ref), raw_ref


def test_framing_tells_a_count_from_a_line_starting_with_digits():
    framer = Framer()
    stream = b"5 hello3 abc2026-01-01T00:00:00Z host x\r\n2"
    assert framer.feed(stream) == [b"hello", b"abc", b"2026-01-01T00:00:00Z host x"]
    assert framer.feed(b" ab") == [b"ab"]
    with pytest.raises(FrameError):
        Framer().feed(b"9999999 " + b"x" * 10)
    # newline framing, read as one block: empty lines and one CR before each newline dropped
    assert Framer().feed_block(b"\n\na\r\n\r\n\nb\r\r\nc\r\nrest") == (b"a\nb\r\nc", [])


NEWLINE_FRAMED = st.binary(min_size=1, max_size=40).filter(
    lambda m: b"\n" not in m and not m.endswith(b"\r") and re.match(rb"[1-9][0-9]{0,6} ", m) is None)
OCTET_COUNTED = st.binary(min_size=1, max_size=40).filter(lambda m: not m.endswith((b"\r", b"\n")))


@given(frames=st.lists(st.one_of(st.tuples(st.sampled_from([b"\n", b"\r\n"]), NEWLINE_FRAMED),
                                 st.tuples(st.just(b""), OCTET_COUNTED)), min_size=1, max_size=30),
       cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_any_mix_of_framings_cut_anywhere_gives_the_messages_sent(frames, cuts):
    """Newline and octet-counted frames in one stream, read in pieces cut at any byte: each message
    comes out once, whole, in order (lines split at C speed when no frame is counted)."""
    stream = b"".join(b"%d %s" % (len(m), m) if not end else m + end for end, m in frames)
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    framer = Framer()
    received = [m for a, b in zip(bounds, bounds[1:]) for m in framer.feed(stream[a:b])]
    assert received + [m for m in [framer.rest()] if m] == [m for _, m in frames]


def test_postfix_in_rfc5424_form_over_udp_on_the_auto_port(served):
    # rsyslog forwarding with RSYSLOG_SyslogProtocol23Format: `<PRI>1 TIME HOST APP PROCID MSGID SD MSG`
    traditional = postfix_lines("5E6F7A8B9C", sender="rfc5424@corp.example")
    datagrams = []
    for line in traditional:
        stamp, host, tag, message = line.split(" ", 3)
        app, pid = tag.rstrip(":").rstrip("]").split("[")
        datagrams.append(f"<22>1 {stamp} {host} {app} {pid} - [origin software=\"rsyslogd\"] {message}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for datagram in datagrams:
            udp.sendto(datagram.encode(), ("127.0.0.1", served.port("udp:0")))
    rows = wait_for(lambda: [r for r in committed_rows(served.home, "email", "src_user, recipient, \"user\"")
                             if r[0] == "rfc5424@corp.example"])
    assert rows == [("rfc5424@corp.example", ["bob@gmail.com"], "alice")]


def test_a_udp_burst_beyond_the_socket_buffer_is_counted_as_dropped(served):
    """The service is stopped (SIGSTOP) while a burst arrives: the kernel keeps what the socket's
    buffer holds and drops the rest; every datagram is then either received or counted dropped."""
    listener = f"udp:{served.port('udp:0')}"
    received_before = metric(served, "exfilwatch_received_lines_total", listener=listener)
    dropped_before = metric(served, "exfilwatch_dropped_lines_total", listener=listener)
    burst = 3000
    served.process.send_signal(signal.SIGSTOP)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for i in range(burst):
                udp.sendto(pulse_login(f"burst{i}", i).encode(), ("127.0.0.1", served.port("udp:0")))
    finally:
        served.process.send_signal(signal.SIGCONT)

    def accounted() -> tuple[float, float] | None:
        received = metric(served, "exfilwatch_received_lines_total", listener=listener) - received_before
        dropped = metric(served, "exfilwatch_dropped_lines_total", listener=listener) - dropped_before
        return (received, dropped) if received + dropped == burst else None

    received, dropped = wait_for(accounted)
    assert dropped > 0 and received > 0
    wait_for(lambda: sum(1 for u in committed_users(served.home) if u.startswith("burst")) == received)
    table = status(served.home)
    assert "live from the running service" in table
    row = next(line for line in table.splitlines() if listener in line)
    assert str(int(received_before + received)) in row and str(int(dropped_before + dropped)) in row
