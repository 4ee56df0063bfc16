"""`ingest --replace`: a file read with the wrong options is read again, with nothing left of the
first read (events, quarantine, skipped counts, checkpoint) and the sessions built from it rebuilt."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import duckdb
import yaml
from typer.testing import CliRunner

from exfilwatch.cli.main import app
from exfilwatch.config import Home, load_settings
from exfilwatch.detections.schema import default_detections_dir
from exfilwatch.events.engine import connect
from exfilwatch.features.sessions import build_user_sessions
from exfilwatch.home import open_state

from .test_session_store import CONFIG, local, stored

DATA = default_detections_dir() / "em_fnum" / "data"
ZONE = "America/New_York"
NOW = local(2026, 10, 15, 14, 30)


def yearless_maillog(folder: Path) -> Path:
    """The em_fnum maillog with classic syslog timestamps (no year, local time), plus a line to quarantine."""
    lines = []
    for line in (DATA / "positive_maillog").read_text().splitlines():
        stamp, rest = line.split(" ", 1)
        lines.append(datetime.fromisoformat(stamp).strftime("%b %e %H:%M:%S") + " " + rest)
    lines.insert(3, "this line is not syslog")
    path = folder / "maillog"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_home(root: Path) -> Home:
    root.mkdir()
    (root / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return Home(root=root, config_path=root / "config.yaml")


def ingest(home: Home, *args: str) -> str:
    result = CliRunner().invoke(app, ["--home", str(home.root), "ingest", *args])
    assert result.exit_code == 0, result.output
    return result.output


def email_years(home: Home) -> list[tuple[int, int, int]]:
    state = open_state(home)
    files = state.lake_files("email")
    return duckdb.sql(f"SELECT year(_time) AS y, count(*), count(DISTINCT raw_ref) FROM read_parquet({files!r}) "
                      "GROUP BY y ORDER BY y").fetchall()


def counts(home: Home) -> tuple[int, int, int]:
    state = open_state(home)
    row = state.query("SELECT (SELECT count(*) FROM quarantine) AS q, (SELECT coalesce(sum(count), 0) FROM skipped) AS s,"
                      " (SELECT count(*) FROM file_checkpoints) AS c")[0]
    return row["q"], row["s"], row["c"]


def build_sessions(home: Home) -> tuple[str, list[tuple]]:
    settings = load_settings(home)
    state, con = open_state(home), connect(settings, home.spill_dir)
    report = build_user_sessions(con, state, settings, NOW)
    return report.reason, stored(state)


def test_replace_reads_a_file_again_with_the_right_year_and_rebuilds_its_sessions(tmp_path):
    maillog = yearless_maillog(tmp_path)
    vpn = str(DATA / "positive_vpn.log")
    right = make_home(tmp_path / "right")
    ingest(right, vpn)
    ingest(right, str(maillog), "--year", "2026", "--source-tz", ZONE)
    expected_sessions = build_sessions(right)[1]
    [(year, events, distinct)] = email_years(right)
    assert (year, events == distinct) == (2026, True)

    home = make_home(tmp_path / "home")
    ingest(home, vpn)
    ingest(home, str(maillog), "--year", "2025", "--source-tz", ZONE)
    assert email_years(home) == [(2025, events, events)]
    assert build_sessions(home)[1] != expected_sessions  # 2025 mail is in no 2026 VPN session
    once = counts(home)
    assert once[0] == 1

    lines = len(maillog.read_text().splitlines())
    again = ingest(home, str(maillog), "--year", "2026", "--source-tz", ZONE)
    assert f"already read up to line {lines}; to read it again with other options (--source, --year, " \
           "--source-tz) use --replace" in " ".join(again.split())
    assert email_years(home) == [(2025, events, events)]

    replaced = ingest(home, str(maillog), "--replace", "--year", "2026", "--source-tz", ZONE)
    assert f"replaced: {events} events of 1 earlier batches removed" in " ".join(replaced.split())
    assert email_years(home) == [(2026, events, events)]
    assert counts(home) == once
    reason, sessions = build_sessions(home)
    assert reason == "input data removed"
    assert sessions == expected_sessions
    state = open_state(home)
    on_disk = {p.relative_to(home.root).as_posix() for p in home.lake.rglob("*.parquet")}
    assert on_disk == state.committed_lake_paths()


def test_replace_of_a_file_read_with_the_wrong_source(tmp_path):
    home = make_home(tmp_path / "home")
    maillog = yearless_maillog(tmp_path)
    first = ingest(home, str(maillog), "--source", "zeek_conn")
    assert re.search(r"read (\d+) lines = 0 parsed", first)
    assert ingest(home, str(maillog), "--source", "postfix", "--year", "2026").count("already read up to line") == 1
    ingest(home, str(maillog), "--replace", "--source", "postfix", "--year", "2026", "--source-tz", ZONE)
    [(year, events, distinct)] = email_years(home)
    assert year == 2026 and events == distinct > 0
    state = open_state(home)
    assert {r["source"] for r in state.query("SELECT source FROM batches")} == {"postfix"}
    assert counts(home)[0] == 1
