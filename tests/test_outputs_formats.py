"""The outputs downstream tools read, each delivered to a real local listener on 127.0.0.1:
Splunk HEC (plain and TLS, Splunk's own replies), syslog over TLS (RFC 5425 framing), the webhook
on httpx (TLS, headers, one connection), OCSF files validated against a JSON Schema of the OCSF
1.3.0 classes, the ATT&CK Navigator layer, a SIGKILL mid-delivery, and the CLI's exit code when
an output cannot deliver.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner
from exfilwatch.cli.main import app
from exfilwatch.detections.schema import load_detections
from exfilwatch.outputs.deliver import deliver_pending

from .test_outputs import NOW, RFC5424, _settings, _state_with_incidents, _status

SCHEMA = json.loads((Path(__file__).parent / "fixtures" / "ocsf_1.3.0_findings.schema.json").read_text())
CATALOG = list(load_detections().values())
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 made for this test run (openssl CLI), and its key."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, certificate))
    return context


class _Splunk:
    """An HTTP server answering as Splunk's HEC does: the token checked, `replies` played in order
    (then success); each accepted request's events, headers and client port kept. Requests after
    the first `answer_first` wait for `hold` before they are answered (an item in flight)."""

    def __init__(self, token: str = "t0k3n", replies: list[tuple[int, int, str]] = (),
                 tls: ssl.SSLContext | None = None, hold: threading.Event | None = None, answer_first: int = 0):
        splunk = self
        self.requests: list[list[dict]] = []
        self.ports: list[int] = []
        self.headers: list[dict] = []
        self.replies = list(replies)
        self.arrived = threading.Semaphore(0)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Splunk does

            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers["Content-Length"])).decode()
                splunk.headers.append(dict(self.headers))
                splunk.ports.append(self.client_address[1])
                if self.headers.get("Authorization", f"Splunk {token}") != f"Splunk {token}":
                    status, code, text = 403, 4, "Invalid token"
                elif splunk.replies:
                    status, code, text = splunk.replies.pop(0)
                else:
                    status, code, text = 200, 0, "Success"
                if status == 200:
                    splunk.requests.append(_split_events(raw))
                splunk.arrived.release()
                if hold is not None and len(splunk.ports) > answer_first:
                    hold.wait(60)
                body = json.dumps({"text": text, "code": code}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.token = token
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        return [e for r in self.requests for e in r]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _split_events(raw: str) -> list[dict]:
    """HEC's batch form: JSON objects one after another."""
    decoder, out, index = json.JSONDecoder(), [], 0
    while index < len(raw):
        event, index = decoder.raw_decode(raw, index)
        out.append(event)
    return out


# --- Splunk HEC ----------------------------------------------------------------------------------------------


def _hec(splunk: _Splunk, **extra) -> dict:
    return {"name": "splunk", "type": "hec", "url": splunk.url, "token": splunk.token, "index": "security",
            "sourcetype": "exfilwatch:alert", "backoff": 0, **extra}


def test_hec_batches_incidents_and_findings_with_technique_and_tactic(tmp_path):
    state = _state_with_incidents(tmp_path, ("alice", "bob"))
    splunk = _Splunk(replies=[(503, 9, "Server is busy")])
    settings = _settings(_hec(splunk, batch_size=3, send=["incidents", "findings"]))
    try:
        reports = deliver_pending(state, settings, NOW, sleep=lambda s: None, catalog=CATALOG)
        again = deliver_pending(state, settings, NOW + timedelta(hours=1), sleep=lambda s: None, catalog=CATALOG)
    finally:
        splunk.close()
    assert [(r.kind, r.delivered, r.pending) for r in reports] == [("incidents", 2, 0), ("findings", 4, 0)]
    assert [(r.delivered, r.pending) for r in again] == [(0, 0), (0, 0)]  # once per output
    # 2 incidents in one request (after Splunk was busy once), 4 findings in batches of 3 and 1
    assert [len(r) for r in splunk.requests] == [2, 3, 1]
    assert all(h["Authorization"] == "Splunk t0k3n" for h in splunk.headers)
    events = splunk.events()
    assert {e["index"] for e in events} == {"security"} and {e["sourcetype"] for e in events} == {"exfilwatch:alert"}
    incident = events[0]["event"]
    assert incident["type"] == "incident" and incident["mitre_attack_id"] == ["T1048.003"]
    assert incident["tactics"] == ["exfiltration"] and incident["category"] == "threat"
    finding = events[2]["event"]
    assert finding["mitre_attack_id"] == ["T1048.003"] and finding["tactics"] == ["exfiltration"]
    assert finding["category"] == "identity" and finding["severity"] in {"high", "medium"}
    assert events[0]["time"] == pytest.approx((NOW - timedelta(hours=2)).timestamp())
    assert _status(state, "splunk").count(("delivered", 2)) == 2  # the incidents: busy once, then accepted
    state.close()


def test_hec_invalid_token_is_not_retried_and_stays_queued(tmp_path):
    state = _state_with_incidents(tmp_path)
    splunk = _Splunk(token="right")
    settings = _settings({**_hec(splunk), "token": "wrong", "retries": 5})
    try:
        [report] = deliver_pending(state, settings, NOW, sleep=lambda s: pytest.fail("retried a 403"))
    finally:
        splunk.close()
    assert (report.delivered, report.pending) == (0, 1)
    assert report.errors == ["HTTP 403 Invalid token (code 4)"]
    assert _status(state, "splunk") == [("pending", 1)]
    state.close()


def test_hec_over_tls_checks_the_certificate_against_the_ca_file(tmp_path, certificate):
    state = _state_with_incidents(tmp_path)
    splunk = _Splunk(tls=_server_context(certificate))
    try:
        [refused] = deliver_pending(state, _settings(_hec(splunk, retries=0)), NOW)  # the system CAs do not know it
        [report] = deliver_pending(state, _settings(_hec(splunk, ca_file=str(certificate[0]))), NOW)
    finally:
        splunk.close()
    assert refused.delivered == 0 and "CERTIFICATE_VERIFY_FAILED" in refused.errors[0]
    assert report.delivered == 1 and splunk.events()[0]["event"]["risk_object"] == "alice"
    state.close()


def test_hec_config_is_strict_and_a_base_url_means_the_event_endpoint():
    settings = _settings({"name": "s", "type": "hec", "url": "https://splunk.example:8088", "token": "x"})
    assert settings.outputs[0].url == "https://splunk.example:8088/services/collector/event"
    with pytest.raises(Exception, match="batch_sise"):
        _settings({"name": "s", "type": "hec", "url": "https://s:8088", "token": "x", "batch_sise": 5})


# --- syslog over TLS -----------------------------------------------------------------------------------------


class _TlsSyslog:
    """An RFC 5425 listener: TLS, then frames `LEN SP MSG` that must add up exactly."""

    def __init__(self, context: ssl.SSLContext, connections: int = 1):
        self.connections = connections
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.context = context
        self.frames: list[str] = []
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for _ in range(self.connections):
            self._read(self.sock.accept()[0])

    def _read(self, conn: socket.socket) -> None:
        data = b""
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                while chunk := tls.recv(65536):
                    data += chunk
        except (ssl.SSLError, OSError) as exc:
            self.error = exc
        while data:
            length, rest = data.split(b" ", 1)
            assert length.isdigit() and len(rest) >= int(length), "not octet-counted"
            self.frames.append(rest[: int(length)].decode())
            data = rest[int(length):]

    def close(self) -> list[str]:
        self.thread.join(10)
        self.sock.close()
        return self.frames


def test_syslog_over_tls_octet_counted_with_cef_severity_category_and_attack(tmp_path, certificate):
    state = _state_with_incidents(tmp_path)
    listener = _TlsSyslog(_server_context(certificate), connections=2)  # one per kind
    settings = _settings({"name": "soc", "type": "syslog", "host": "127.0.0.1", "port": listener.port,
                          "protocol": "tls", "ca_file": str(certificate[0]), "send": ["incidents", "findings"]})
    reports = deliver_pending(state, settings, NOW, catalog=CATALOG)
    frames = listener.close()
    assert [(r.delivered, r.pending) for r in reports] == [(1, 0), (2, 0)] and len(frames) == 3
    assert all(RFC5424.match(f) for f in frames)
    incident, *findings = frames
    assert "cat=threat" in incident and "cs5=T1048.003" in incident and "cs3=exfiltration" in incident
    # a finding's CEF severity follows its risk score: 70 is high (8), 50 medium (5), not 3 for all
    severities = sorted(int(f.split("|")[6]) for f in findings)
    assert severities == [5, 8]
    assert all("cs2=T1048.003" in f and "cs3=exfiltration" in f and "cat=identity" in f for f in findings)
    state.close()


def test_syslog_tls_with_an_unknown_certificate_stays_queued(tmp_path, certificate):
    state = _state_with_incidents(tmp_path)
    listener = _TlsSyslog(_server_context(certificate))
    settings = _settings({"name": "soc", "type": "syslog", "host": "127.0.0.1", "port": listener.port,
                          "protocol": "tls"})
    [report] = deliver_pending(state, settings, NOW)
    assert listener.close() == [] and listener.error is not None  # the client gave up in the handshake
    assert report.delivered == 0 and "certificate verify failed" in report.errors[0]
    assert _status(state, "soc") == [("pending", 1)]
    state.close()


# --- webhook on httpx ----------------------------------------------------------------------------------------


def test_webhook_over_tls_with_headers_on_one_connection(tmp_path, certificate):
    state = _state_with_incidents(tmp_path, ("alice", "bob", "carol"))
    hook = _Splunk(tls=_server_context(certificate))
    settings = _settings({"name": "soar", "type": "webhook", "url": hook.url + "/hook", "ca_file": str(certificate[0]),
                          "headers": {"Authorization": "Splunk t0k3n", "X-SOAR-Tenant": "blue"}})
    try:
        [report] = deliver_pending(state, settings, NOW, catalog=CATALOG)
    finally:
        hook.close()
    assert report.delivered == 3
    assert [h["X-SOAR-Tenant"] for h in hook.headers] == ["blue"] * 3
    assert len(set(hook.ports)) == 1  # one connection for the run
    assert {e["mitre_attack_id"][0] for e in hook.events()} == {"T1048.003"}
    state.close()


_DELIVER = """
import sys
from datetime import datetime
from exfilwatch.config import parse_settings
from exfilwatch.home import open_state
from exfilwatch.outputs.deliver import deliver_pending
state = open_state(sys.argv[1])
settings = parse_settings({"outputs": [{"name": "soar", "type": "webhook", "url": sys.argv[2], "retries": 0}]}, "t")
reports = deliver_pending(state, settings, datetime.fromisoformat("2026-10-31T13:00:00+00:00"))
print(reports[0].delivered)
"""


def test_a_kill_mid_delivery_resends_only_the_item_in_flight(tmp_path):
    users = ("u1", "u2", "u3", "u4", "u5", "u6")
    _state_with_incidents(tmp_path, users).close()
    hold = threading.Event()
    hook = _Splunk(hold=hold, answer_first=2)
    env = {**os.environ, "PYTHONPATH": SRC}
    command = [sys.executable, "-c", _DELIVER, str(tmp_path / "home"), hook.url + "/hook"]
    try:
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE)
        for _ in range(3):  # two items answered; the third is in flight when the process dies
            assert hook.arrived.acquire(timeout=60)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        hold.set()
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    finally:
        hold.set()
        hook.close()
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip() == "4"  # the two acknowledged before the kill were recorded
    received = [e["risk_object"] for e in hook.events()]
    assert set(received) == set(users)
    assert len(received) - len(users) <= 1  # at most the item in flight was sent twice


# --- OCSF files ----------------------------------------------------------------------------------------------


def test_ocsf_file_holds_detection_and_incident_findings_valid_against_the_schema(tmp_path):
    state = _state_with_incidents(tmp_path)
    settings = _settings({"name": "lake", "type": "file", "format": "ocsf", "path": "ocsf.jsonl",
                          "send": ["incidents", "findings"]},
                         {"name": "archive", "type": "jsonl", "path": "plain.jsonl", "send": ["findings"]})
    deliver_pending(state, settings, NOW, catalog=CATALOG)
    events = [json.loads(line) for line in (tmp_path / "home" / "ocsf.jsonl").read_text().splitlines()]
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for event in events:
        validator.validate(event)
        assert event["type_uid"] == event["class_uid"] * 100 + event["activity_id"]
        assert event["metadata"]["product"]["name"] == "exfilwatch" and event["metadata"]["version"] == "1.3.0"
    incident, *findings = events
    assert incident["class_uid"] == 2005 and len(findings) == 2 and {f["class_uid"] for f in findings} == {2004}
    assert incident["status_id"] == 1 and incident["severity_id"] == 3  # New, Medium
    assert len(incident["finding_info_list"]) == 2
    attack = {"version": "18.1", "technique": {"uid": "T1048", "name": "Exfiltration Over Alternative Protocol"},
              "sub_technique": {"uid": "T1048.003", "name": "Exfiltration Over Unencrypted Non-C2 Protocol"},
              "tactic": {"uid": "TA0010", "name": "Exfiltration"}}
    assert incident["attacks"] == [attack]
    finding = findings[0]["finding_info"]
    assert finding["attacks"] == [attack] and finding["analytic"]["uid"] in {"em_bsum", "em_dnum"}
    assert finding["analytic"]["category"] == "identity" and finding["uid"]
    assert {f["severity_id"] for f in findings} == {3, 4}  # risk 50 is Medium, 70 High
    # the default JSON lines keep today's shape, now with the technique and tactic
    plain = [json.loads(line) for line in (tmp_path / "home" / "plain.jsonl").read_text().splitlines()]
    assert {p["mitre_attack_id"][0] for p in plain} == {"T1048.003"} and plain[0]["tactics"] == ["exfiltration"]
    assert "finding_key" in plain[0] and "class_uid" not in plain[0]
    # the schema does bite: a record without its required finding_info is refused
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({k: v for k, v in findings[0].items() if k != "finding_info"})
    state.close()


def test_file_format_config():
    assert _settings({"name": "a", "type": "jsonl", "path": "a"}).outputs[0].format == "jsonl"
    assert _settings({"name": "a", "type": "jsonl", "format": "ocsf", "path": "a"}).outputs[0].format == "ocsf"
    assert _settings({"name": "a", "type": "file", "path": "a"}).outputs[0].format == "jsonl"
    with pytest.raises(Exception, match="cannot hold format"):
        _settings({"name": "a", "type": "csv", "format": "ocsf", "path": "a"})


# --- ATT&CK Navigator layer ----------------------------------------------------------------------------------


def test_navigator_layer_lists_the_techniques_the_enabled_detections_cover():
    result = CliRunner().invoke(app, ["detections", "navigator"])
    assert result.exit_code == 0, result.output
    layer = json.loads(result.output)
    assert layer["versions"]["layer"] == "4.5" and layer["domain"] == "enterprise-attack" and layer["name"]
    assert re.fullmatch(r"\d+", layer["versions"]["attack"]) and layer["versions"]["navigator"] >= "4.9.0"
    scored = {(t["techniqueID"], t["tactic"]): t for t in layer["techniques"] if "score" in t}
    exfil = scored[("T1048.003", "exfiltration")]
    assert exfil["score"] == 4 and exfil["comment"] == "detections: em_bsum, em_bsum_personal, em_dnum, em_fnum"
    assert ("T1114.002", "collection") in scored
    parents = {t["techniqueID"] for t in layer["techniques"] if t.get("showSubtechniques")}
    assert parents == {"T1048", "T1114"}
    for technique in layer["techniques"]:  # the layer format's technique object
        assert re.fullmatch(r"T\d{4}(\.\d{3})?", technique["techniqueID"]) and isinstance(technique["enabled"], bool)
    gradient = layer["gradient"]
    assert len(gradient["colors"]) >= 2 and gradient["maxValue"] > gradient["minValue"]
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in gradient["colors"])


# --- the CLI says when an output could not deliver -----------------------------------------------------------


def test_run_exits_1_naming_the_output_that_could_not_deliver_and_keeps_it_queued(tmp_path):
    from .test_risk_cli import CONFIG, RUN, _home

    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runner, home = _home(tmp_path, "h")
    config = {**CONFIG, "outputs": [{"name": "soar", "type": "webhook", "url": f"http://127.0.0.1:{port}/hook",
                                     "retries": 0, "timeout": 2}]}
    (Path(home[1]) / "config.yaml").write_text(yaml.safe_dump(config))
    result = runner.invoke(app, [*home, *RUN])
    assert result.exit_code == 1
    assert "error: output soar could not deliver 1 incidents (cannot reach http://127.0.0.1" in result.output
    assert "they stay queued" in result.output and "Traceback" not in result.output
    hook = _Splunk()
    config["outputs"][0]["url"] = hook.url + "/hook"
    (Path(home[1]) / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        again = runner.invoke(app, [*home, "risk", "--now", "2026-11-01T00:30"])
    finally:
        hook.close()
    assert again.exit_code == 0, again.output
    assert [e["risk_object"] for e in hook.events()] == ["mallory"]
