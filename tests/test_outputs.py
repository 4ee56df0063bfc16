"""Delivery of incidents to real local listeners: syslog over UDP and TCP, an HTTP webhook, files.

Each listener is started by the test on 127.0.0.1 with an ephemeral port. Each incident must be
delivered once per output; what fails stays queued and goes out on the next run.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import duckdb
import httpx
import pytest

from exfilwatch.findings.store import load_findings_file

from exfilwatch.incidents.correlation import stored_incidents

from exfilwatch.risk.events import rebuild_risk_events

from .pipelinekit import run_correlations
from exfilwatch.config import parse_settings
from exfilwatch.detections.schema import load_detections
from exfilwatch.outputs.cef import extension_escape, header_escape, incident_cef, octet_frame, rfc5424
from exfilwatch.outputs.deliver import deliver_pending
from exfilwatch.home import open_state
from exfilwatch.state import StateStore

UTC = timezone.utc
NOW = datetime(2026, 10, 31, 12, 0, tzinfo=UTC)
RFC5424 = re.compile(r"^<(\d{1,3})>1 (\S+) (\S+) (\S+) - (\S+) - (CEF:0\|.*)$", re.S)


def _state_with_incidents(tmp_path: Path, users: tuple[str, ...] = ("alice",)) -> StateStore:
    state = open_state(tmp_path / "home")
    lines = []
    for user in users:
        for detection, score in (("em_bsum", 70), ("em_dnum", 50)):
            lines.append(json.dumps({
                "detection_id": detection, "entity": user, "time": (NOW - timedelta(hours=2)).isoformat(),
                "message": f"={detection} for {user}|x=1\nnext line", "mitre_attack_id": ["T1048.003"], "fields": {},
                "risk_objects": [{"field": "user", "value": user, "type": "user", "score": score}]}))
    path = tmp_path / "findings.jsonl"
    path.write_text("\n".join(lines) + "\n")
    settings = parse_settings({}, "test")
    techniques = load_findings_file(state, path)
    rebuild_risk_events(state, settings, techniques, NOW)
    run_correlations(duckdb.connect(), state, settings, [load_detections()["risk_threshold_exceeded_24h"]], NOW)
    assert len(stored_incidents(state)) == len(users)
    return state


def _settings(*outputs: dict):
    return parse_settings({"outputs": list(outputs)}, "test")


def _status(state: StateStore, output: str) -> list[tuple[str, int]]:
    return [(r["status"], r["attempts"]) for r in state.query(
        "SELECT status, attempts FROM deliveries WHERE output = ? ORDER BY item_key", (output,))]


# --- CEF and RFC 5424 ------------------------------------------------------------------------------------


def test_cef_escaping():
    assert header_escape("a|b\\c\nd") == "a\\|b\\\\c d"
    assert extension_escape("k=v\\x\r\ny\x1b") == "k\\=v\\\\x\\ny?"


def test_incident_cef_record_and_rfc5424_framing(tmp_path):
    state = _state_with_incidents(tmp_path)
    from exfilwatch.outputs.records import incident_records

    [record] = incident_records(state, {"risk_threshold_exceeded_24h": "Risk threshold exceeded"})
    cef = incident_cef(record)
    assert cef.startswith("CEF:0|exfilwatch|exfilwatch|0.1.0|risk_threshold_exceeded_24h|Risk threshold exceeded|5|")
    assert "duser=alice" in cef and "cn1=120.0" in cef and "\n" not in cef
    # `cat` is the rule's category (its security domain), no longer the severity the header already says
    assert "cat=threat" in incident_cef({**record, "category": "threat"}) and "\n" not in cef
    message = rfc5424(cef, NOW, "medium", facility=4, hostname="sensor 1", app_name="exfilwatch", msgid="incident")
    match = RFC5424.match(message.decode())
    assert match and match.group(1) == str(4 * 8 + 4) and match.group(2) == "2026-10-31T12:00:00.000000Z"
    assert match.group(3) == "sensor_1"
    assert octet_frame(b"abc") == b"3 abc"
    state.close()


# --- syslog --------------------------------------------------------------------------------------------------


def test_syslog_udp_delivers_each_incident_once(tmp_path):
    state = _state_with_incidents(tmp_path, ("alice", "bob"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(5)
        port = listener.getsockname()[1]
        settings = _settings({"name": "soc", "type": "syslog", "host": "127.0.0.1", "port": port, "protocol": "udp",
                              "hostname": "exfilwatch-test"})
        [report] = deliver_pending(state, settings, NOW)
        assert (report.delivered, report.pending) == (2, 0)
        received = [listener.recvfrom(65535)[0].decode() for _ in range(2)]
        assert all(RFC5424.match(m) for m in received)
        assert sorted(re.search(r"duser=(\w+)", m).group(1) for m in received) == ["alice", "bob"]
        [again] = deliver_pending(state, settings, NOW + timedelta(hours=1))
        assert (again.delivered, again.pending) == (0, 0)
        listener.settimeout(0.2)
        with pytest.raises(socket.timeout):
            listener.recvfrom(65535)
    assert _status(state, "soc") == [("delivered", 1), ("delivered", 1)]
    state.close()


class _TcpSyslog:
    """A TCP syslog listener that reads octet-counted frames until the sender closes."""

    def __init__(self, port: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen()
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]
        self.frames: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        data = b""
        with conn:
            conn.settimeout(5)
            while chunk := conn.recv(65536):
                data += chunk
        while data:
            length, rest = data.split(b" ", 1)
            self.frames.append(rest[: int(length)].decode())
            data = rest[int(length):]

    def close(self) -> list[str]:
        self.thread.join(5)
        self.sock.close()
        return self.frames


def test_syslog_tcp_octet_counted_frames(tmp_path):
    state = _state_with_incidents(tmp_path, ("alice", "bob"))
    server = _TcpSyslog()
    settings = _settings({"name": "soc", "type": "syslog", "host": "127.0.0.1", "port": server.port, "protocol": "tcp"})
    [report] = deliver_pending(state, settings, NOW)
    frames = server.close()
    assert report.delivered == 2 and len(frames) == 2
    assert all(RFC5424.match(f) for f in frames)
    assert "msg=Risk threshold exceeded for alice" in frames[0]
    state.close()


def test_syslog_tcp_refused_stays_queued_until_the_listener_is_up(tmp_path):
    state = _state_with_incidents(tmp_path)
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = _settings({"name": "soc", "type": "syslog", "host": "127.0.0.1", "port": port, "protocol": "tcp",
                          "timeout": 2})
    [report] = deliver_pending(state, settings, NOW)
    assert (report.delivered, report.pending) == (0, 1) and "127.0.0.1" in report.errors[0]
    assert _status(state, "soc") == [("pending", 1)]
    server = _TcpSyslog(port)
    [report] = deliver_pending(state, settings, NOW + timedelta(hours=1))
    assert len(server.close()) == 1 and report.delivered == 1
    assert _status(state, "soc") == [("delivered", 2)]
    state.close()


# --- webhook ------------------------------------------------------------------------------------------------


class _Hook:
    """An HTTP server that answers 500 to its first `failures` requests, then 200."""

    def __init__(self, failures: int):
        hook = self
        self.bodies: list[dict] = []
        self.statuses: list[int] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = 500 if len(hook.statuses) < failures else 200
                hook.statuses.append(status)
                if status == 200:
                    hook.bodies.append(body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_that_fails_twice_before_accepting(tmp_path):
    state = _state_with_incidents(tmp_path)
    hook = _Hook(failures=2)
    delays: list[float] = []
    settings = _settings({"name": "soar", "type": "webhook", "url": hook.url, "retries": 3, "backoff": 0.5,
                          "headers": {"Authorization": "Bearer t"}})
    try:
        [report] = deliver_pending(state, settings, NOW, sleep=delays.append)
    finally:
        hook.close()
    assert (report.delivered, report.pending) == (1, 0)
    assert hook.statuses == [500, 500, 200]
    assert delays == [0.5, 1.0]  # exponential backoff
    [body] = hook.bodies
    assert body["type"] == "incident" and body["risk_object"] == "alice" and body["severity"] == "medium"
    assert {e["score"] for e in body["risk_events"]} == {70, 50}
    assert _status(state, "soar") == [("delivered", 3)]
    state.close()


def test_webhook_down_keeps_incidents_queued_and_retries_next_run(tmp_path):
    state = _state_with_incidents(tmp_path, ("alice", "bob"))
    hook = _Hook(failures=2)
    settings = _settings({"name": "soar", "type": "webhook", "url": hook.url, "retries": 1, "backoff": 0})
    try:
        [first] = deliver_pending(state, settings, NOW, sleep=lambda s: None)
        # alice failed twice (all attempts); bob was not tried this run
        assert (first.delivered, first.pending) == (0, 2)
        assert _status(state, "soar") == [("pending", 2), ("pending", 0)]
        [second] = deliver_pending(state, settings, NOW + timedelta(hours=1), sleep=lambda s: None)
        assert (second.delivered, second.pending) == (2, 0)
        [third] = deliver_pending(state, settings, NOW + timedelta(hours=2), sleep=lambda s: None)
        assert (third.delivered, third.pending) == (0, 0)
    finally:
        hook.close()
    assert sorted(b["risk_object"] for b in hook.bodies) == ["alice", "bob"]
    state.close()


def test_webhook_client_error_is_not_retried(tmp_path):
    from exfilwatch.outputs.webhook import post_with_retries

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with httpx.Client(timeout=5) as client:
            ok, attempts, error = post_with_retries(client, f"http://127.0.0.1:{server.server_port}/", b"{}", 3, 0,
                                                    lambda s: None)
    finally:
        server.shutdown()
        server.server_close()
    assert (ok, attempts) == (False, 1) and "400" in error


# --- files --------------------------------------------------------------------------------------------------------


def test_jsonl_and_csv_files_once_each_with_formulas_neutralised(tmp_path):
    state = _state_with_incidents(tmp_path)
    settings = _settings({"name": "archive", "type": "jsonl", "path": "out/incidents.jsonl"},
                         {"name": "sheet", "type": "csv", "path": str(tmp_path / "incidents.csv")},
                         {"name": "findings", "type": "csv", "path": str(tmp_path / "findings.csv"), "send": ["findings"]})
    deliver_pending(state, settings, NOW)
    deliver_pending(state, settings, NOW + timedelta(hours=1))
    lines = (tmp_path / "home" / "out" / "incidents.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["risk_object"] == "alice"
    text = (tmp_path / "incidents.csv").read_text()
    assert text.splitlines()[0].startswith("type,incident_id,rule") and text.count("\nincident,") == 1
    findings = (tmp_path / "findings.csv").read_text()
    # the columns of old stay first; the ATT&CK and category columns follow them
    assert findings.splitlines()[0] == ("type,time,detection_id,entity,risk_score,message,finding_key"
                                        ",category,severity,mitre_attack_id,tactics")
    assert "'=em_bsum for alice" in findings  # a message that starts with '=' cannot run as a formula
    assert findings.count("\nfinding,") == 2
    with pytest.raises(Exception, match="one kind"):
        _settings({"name": "x", "type": "csv", "path": "x.csv", "send": ["incidents", "findings"]})
    state.close()
