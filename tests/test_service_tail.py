"""File tailing in a real `exfilwatch serve`: new lines as they are written, across rotation by
rename and by copytruncate, with the checkpoints `ingest` keeps (nothing read twice or lost)."""

from __future__ import annotations

import shutil
from collections import Counter

from typer.testing import CliRunner

from exfilwatch.cli.main import app
from tests.servicekit import Served, committed_users, pulse_login, service_config, wait_for


def append(path, users):
    with open(path, "a") as handle:
        handle.write("".join(pulse_login(u, i) + "\n" for i, u in enumerate(users)))


def test_tailing_follows_rename_and_copytruncate_rotation(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    live = logs / "vpn.log"
    first = [f"t{i}" for i in range(6)]
    append(live, first)
    config = service_config(syslog=[], hec=None, tail=[{"path": str(logs / "vpn.log*"), "source": "pulse_secure"}])
    served = Served(tmp_path / "home", config).start()
    try:
        stored = lambda: Counter(committed_users(served.home))  # noqa: E731
        wait_for(lambda: all(stored()[u] == 1 for u in first))
        with open(live, "a") as handle:
            handle.write(pulse_login("partial")[:40])  # a line still being written is not read yet
        append(live, [])
        # rename rotation: the rest of the line lands in the renamed file, then a new file starts
        live.rename(logs / "vpn.log.1")
        with open(logs / "vpn.log.1", "a") as handle:
            handle.write(pulse_login("partial")[40:] + "\n")
        after_rename = [f"r{i}" for i in range(6)]
        append(live, after_rename)
        wait_for(lambda: all(stored()[u] == 1 for u in after_rename + ["partial"]))
        # copytruncate: the file is copied aside and truncated in place
        append(live, ["beforecopy"])
        shutil.copyfile(live, logs / "vpn.log.2")
        live.write_text("")
        after_truncate = [f"c{i}" for i in range(6)]
        append(live, after_truncate)
        wait_for(lambda: all(stored()[u] == 1 for u in after_truncate + ["beforecopy"]))
        assert served.stop() == 0
    finally:
        served.kill()
    assert [u for u, n in Counter(committed_users(served.home)).items() if n != 1] == []
    status = CliRunner().invoke(app, ["--home", str(served.home), "status"])
    assert status.exit_code == 0, status.output
    assert "written by nobody" in status.output and "pulse_secure" in status.output
