"""One writer per home, readers never broken by a writer: real processes on one home.

Two overlapping `run`s deliver each incident once; a writer waiting too long says who holds the
home; read-only commands run while a writer holds it; `run` and a lake-scanning `backtest` run
while `sessions --rebuild` replaces every session file, and the replaced files go once no
reader can hold them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import yaml
from typer.testing import CliRunner

from exfilwatch.cli.main import app
from exfilwatch.config import Home
from exfilwatch.detections.schema import default_detections_dir
from exfilwatch.home import open_state
from exfilwatch.homelock import reading, writing

from .test_risk_cli import CONFIG, NET_A, NET_B, RUN

SRC = str(Path(__file__).resolve().parents[1] / "src")
SESSIONS_DATA = default_detections_dir() / "em_fnum" / "data"
SESSIONS_CONFIG = {"timezone": "America/New_York", "internal_domains": ["corp.example"]}
SESSIONS_NOW = "2026-10-15T14:30"
# em_fnum reads 30 days of stored sessions for each session it scores
BACKTEST = ["backtest", "--detection", "em_fnum", "--from", "2026-10-15T08:00", "--to", "2026-10-15T14:00",
            "--format", "jsonl"]

# Runs the CLI N times in one process; exits non-zero if any run did, printing every run's output.
LOOP = """
import sys
from exfilwatch.cli import app
count, args = int(sys.argv[1]), sys.argv[2:]
failed = 0
for _ in range(count):
    code = app(args, standalone_mode=False)
    failed += bool(code)
sys.exit(1 if failed else 0)
"""


def cli_process(args: list[str], loop: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = LOOP if loop else "from exfilwatch.cli import app; app()"
    prefix = [str(loop)] if loop else []
    return subprocess.Popen([sys.executable, "-c", code, *prefix, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def risk_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    logs = [str(default_detections_dir() / d / "data" / "positive_conn.log") for d in (NET_A, NET_B)]
    result = CliRunner().invoke(app, ["--home", str(home), "ingest", *logs])
    assert result.exit_code == 0, result.output
    return home


def test_two_overlapping_runs_deliver_each_incident_once(tmp_path):
    home = risk_home(tmp_path)
    runs = [cli_process(["--home", str(home), *RUN]) for _ in range(2)]
    results = [finish(p) for p in runs]
    assert [code for code, _, _ in results] == [0, 0], results
    delivered = (home / "incidents.jsonl").read_text().splitlines()
    assert len(delivered) == 1
    assert sum("1 new incidents" in out for _, out, _ in results) == 1


def test_a_writer_that_waits_too_long_names_the_holder_and_readers_do_not_wait(tmp_path):
    home = risk_home(tmp_path)
    with writing(home):
        code, out, err = finish(cli_process(["--home", str(home), "--lock-timeout", "0.5", *RUN]))
        assert code == 1
        assert err.strip() == f"error: another exfilwatch is writing to {home} (pid {os.getpid()}); waited 0.5s"
        code, out, err = finish(cli_process(["--home", str(home), "findings", "--format", "jsonl"]))
        assert (code, err) == (0, "")
    code, out, err = finish(cli_process(["--home", str(home), *RUN]))
    assert code == 0, err
    assert len((home / "incidents.jsonl").read_text().splitlines()) == 1


def sessions_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(yaml.safe_dump(SESSIONS_CONFIG))
    runner = CliRunner()
    result = runner.invoke(app, ["--home", str(home), "ingest", str(SESSIONS_DATA / "positive_vpn.log"),
                                 str(SESSIONS_DATA / "positive_maillog")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["--home", str(home), "sessions", "--now", SESSIONS_NOW])
    assert result.exit_code == 0, result.output
    return home


def lake_on_disk(home: Path) -> set[str]:
    return {p.relative_to(home).as_posix() for p in (home / "lake").rglob("*.parquet")}


def test_run_and_a_lake_reader_succeed_while_sessions_are_rebuilt(tmp_path):
    home = sessions_home(tmp_path)
    h = ["--home", str(home)]
    expected = finish(cli_process([*h, *BACKTEST]))
    assert expected[0] == 0, expected[2]
    rebuilds = cli_process([*h, "sessions", "--rebuild", "--now", SESSIONS_NOW, "--format", "jsonl"], loop=6)
    readers = cli_process([*h, *BACKTEST], loop=3)
    run = cli_process([*h, "run", "--now", SESSIONS_NOW, "--since", "2026-10-15T08:00", "--detection", "em_fnum"])
    rebuilt, read, ran = finish(rebuilds), finish(readers), finish(run)
    assert rebuilt[0] == 0, rebuilt[2]
    assert read[0] == 0, read[2]
    assert read[1].splitlines() == expected[1].splitlines() * 3
    assert ran[0] == 0, ran[2]
    assert "risk: 1 risk events from 1 findings" in ran[1]
    # no reader left: the next writer removes every replaced file
    assert CliRunner().invoke(app, [*h, "risk", "--now", SESSIONS_NOW]).exit_code == 0
    state = open_state(Home(root=home, config_path=home / "config.yaml"))
    assert lake_on_disk(home) == state.committed_lake_paths()
    assert not state.query("SELECT * FROM superseded_files")


def test_files_a_reader_listed_outlive_a_rebuild_and_go_after_it(tmp_path):
    home = sessions_home(tmp_path)
    h = ["--home", str(home)]
    with reading(home):
        state = open_state(Home(root=home, config_path=home / "config.yaml"))
        listed = state.lake_files("user_sessions")
        code, _, err = finish(cli_process([*h, "sessions", "--rebuild", "--now", SESSIONS_NOW]))
        assert code == 0, err
        assert set(state.lake_files("user_sessions")).isdisjoint(listed)
        before = duckdb.sql(f"SELECT count(*) FROM read_parquet({listed!r})").fetchall()
        assert before[0][0] > 0
    code, _, err = finish(cli_process([*h, "risk", "--now", SESSIONS_NOW]))
    assert code == 0, err
    assert not any(Path(f).exists() for f in listed)
    assert lake_on_disk(home) == state.committed_lake_paths()
