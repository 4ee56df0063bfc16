"""A real `exfilwatch serve` subprocess on ephemeral 127.0.0.1 ports, and what its lake holds.

`Served.start(home, config)` writes the config (listeners on port 0), starts the service from
this tree, and reads the ports it chose from its `ready` log line. `stop()` sends SIGTERM,
`kill()` SIGKILL; the fixture that made it always kills it. `pulse_login(user)` is one
Pulse Secure syslog line that becomes one authentication event, so a user name counts events.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import httpx
import yaml

SRC = str(Path(__file__).resolve().parents[1] / "src")
START_SECONDS = 60.0


def sigkill_once_it_says(child: subprocess.Popen, word: str) -> None:
    """SIGKILL `child` as soon as its next stdout line is `word` (it then waits to be killed)."""
    try:
        assert child.stdout.readline().strip() == word, child.stderr.read()
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def pulse_login(user: str, second: int = 0, session: int = 1) -> str:
    return (f"2026-09-25T09:00:{second % 60:02d}-04:00 vpn01 PulseSecure: 2026-09-25 09:00:{second % 60:02d} - ive - "
            f"[198.51.100.120] Default Network::{user}(Users)[Users, VPN] - Login succeeded for {user}/Users "
            f"(session:{session:08x}) from 198.51.100.120 with Pulse-Secure/9.1.15.8591 (Windows 10) "
            f"Pulse Secure/9.1.15.8591.")


def postfix_lines(qid: str, sender: str = "alice@corp.example", rcpt: str = "bob@gmail.com",
                  host: str = "mail01") -> list[str]:
    head = f"2026-09-25T09:06:40.000000-04:00 {host}"
    return [
        f"{head} postfix/submission/smtpd[2101]: {qid}: client=unknown[10.200.0.120], sasl_method=PLAIN, "
        "sasl_username=alice",
        f"{head} postfix/cleanup[2102]: {qid}: message-id=<{qid}.alice@corp.example>",
        f"{head} postfix/qmgr[2103]: {qid}: from=<{sender}>, size=20000, nrcpt=1 (queue active)",
        f"{head} postfix/smtp[2104]: {qid}: to=<{rcpt}>, relay=gmail-smtp-in.l.google.com[142.250.1.26]:25, "
        "delay=0.5, delays=0.1/0/0.2/0.2, dsn=2.0.0, status=sent (250 2.0.0 OK)",
        f"{head} postfix/qmgr[2103]: {qid}: removed",
    ]


def service_config(**service) -> dict:
    base = {
        "syslog": [{"protocol": "udp", "host": "127.0.0.1", "port": 0, "source": "auto"},
                   {"protocol": "tcp", "host": "127.0.0.1", "port": 0, "source": "auto"}],
        "hec": {"host": "127.0.0.1", "port": 0,
                "tokens": [{"token": "t0k3n", "source": "auto", "sourcetypes": []},
                           {"token": "pulse-only", "source": "pulse_secure", "sourcetypes": ["pulse:connectsecure"]}],
                "max_body": "64KB"},
        "batch": {"max_events": 500, "max_seconds": 0.2},
        "schedule": False,
    }
    base.update(service)
    return {"service": base}


class Served:
    def __init__(self, home: Path, config: dict):
        self.home = home
        self.config = config
        self.process: subprocess.Popen | None = None
        self.ports: dict[str, int] | None = None
        self.log: list[str] = []

    def start(self) -> Served:
        self.ports = None
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.yaml").write_text(yaml.safe_dump(self.config))
        env = {**os.environ, "PYTHONPATH": SRC}
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from exfilwatch.cli import app; app()", "--home", str(self.home), "serve"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
        ready = threading.Event()

        def read() -> None:
            assert self.process is not None and self.process.stderr is not None
            for line in self.process.stderr:
                self.log.append(line)
                if '"event": "ready"' in line:
                    self.ports = json.loads(line)["ports"]
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(START_SECONDS) or self.ports is None:
            self.kill()
            raise AssertionError("the service did not start:\n" + "".join(self.log[-20:]))
        return self

    def port(self, key: str) -> int:
        return self.ports[key]

    @property
    def hec(self) -> str:
        return f"http://127.0.0.1:{self.ports['hec']}"

    def stop(self, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def committed_users(home: Path) -> list[str]:
    """The user of every authentication event in the lake's committed files (one per Pulse login line)."""
    return [r[0] for r in committed_rows(home, "authentication", '"user"')]


def committed_files(home: Path, model: str) -> list[str]:
    db = sqlite3.connect(home / "state.sqlite")
    try:
        return [str(home / r[0]) for r in db.execute("SELECT path FROM batch_files WHERE model = ?", (model,))]
    finally:
        db.close()


def quarantine(home: Path) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(home / "state.sqlite")
    try:
        return db.execute("SELECT file, reason, raw FROM quarantine ORDER BY id").fetchall()
    finally:
        db.close()


def hec_post(client: httpx.Client, path: str, body: bytes | str, token: str = "t0k3n", channel: str | None = None,
             params: dict | None = None) -> httpx.Response:
    headers = {"Authorization": f"Splunk {token}"}
    if channel:
        headers["X-Splunk-Request-Channel"] = channel
    return client.post(path, content=body, headers=headers, params=params)


def wait_for(condition, timeout: float = 30.0, step: float = 0.1):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("timed out waiting")


def committed_rows(home: Path, model: str, columns: str) -> list[tuple]:
    """`columns` (SQL) of every row of a model in the lake's committed files."""
    files = committed_files(home, model)
    if not files:
        return []
    con = duckdb.connect()
    return con.execute(f"SELECT {columns} FROM read_parquet($f, union_by_name => true)", {"f": files}).fetchall()


def metric(served: Served, name: str, **labels: str) -> float:
    """One sample of the service's /metrics (0 when it has none yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{served.hec}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def status(home: Path) -> str:
    """What `exfilwatch status` prints for the home."""
    done = subprocess.run([sys.executable, "-c", "from exfilwatch.cli import app; app()", "--home", str(home),
                           "status"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC,
                                                                           "COLUMNS": "200"}, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout
