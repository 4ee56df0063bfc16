"""A first `exfilwatch run` and the hourly run after it never import pandas.

pyarrow imports pandas (0.25-0.36 CPU-s) the first time a table or array is built from Python
values, to ask whether they are a pandas object; the run builds its tables through
sources/arrow.py instead. Each run is a fresh process, as the scheduler starts it, on a small
synthetic organisation whose run reaches every table the pipeline hands DuckDB from Python: the
asset inventory and lake addresses, identities, domains, departments and risk events.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from exfilwatch.config import Home, load_settings
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.home import open_state
from exfilwatch.synth.org import generate_organisation

# The run's command line, reporting on its last line whether pandas was ever imported.
RUN = """
import atexit, sys
atexit.register(lambda: print("pandas imported:", "pandas" in sys.modules))
from exfilwatch.cli import app
app()
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Home:
    root = tmp_path_factory.mktemp("run_imports")
    ds = generate_organisation(root / "logs", users=20, days=14, end=date(2026, 10, 31), flows_per_host_day=50)
    (root / "home").mkdir()
    shutil.copy(ds.config, root / "home" / "config.yaml")
    made = Home(root=root / "home", config_path=root / "home" / "config.yaml")
    settings = load_settings(made)
    ingest_paths([ds.vpn_log], made, settings, source_name="pulse_secure")
    ingest_paths([ds.mail_log], made, settings, source_name="postfix", year=2026)
    ingest_paths([ds.conn_log], made, settings, source_name="zeek_conn")
    return made


def run(home: Home, now: str) -> str:
    """What `exfilwatch run --now NOW` printed last: whether it imported pandas."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run([sys.executable, "-c", RUN, "--home", str(home.root), "run", "--now", now],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": src})
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1]


def test_a_first_run_and_the_next_hourly_run_import_no_pandas(home: Home) -> None:
    assert run(home, "2026-11-01T02:00:00-04:00") == "pandas imported: False"
    state = open_state(home)
    try:
        # the run went as far as the risk events (the last table it builds from Python values)
        assert state.query("SELECT count(*) AS n FROM risk_events")[0]["n"] > 0
        assert state.query("SELECT count(*) AS n FROM incidents")[0]["n"] > 0
    finally:
        state.close()
    assert run(home, "2026-11-01T03:00:00-04:00") == "pandas imported: False"
