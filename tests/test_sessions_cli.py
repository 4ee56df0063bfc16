"""`exfilwatch sessions` lists the stored sessions (it failed on an import when the stages moved)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from exfilwatch.cli.main import app
from exfilwatch.detections.schema import default_detections_dir


def test_sessions_lists_a_users_latest_sessions_with_their_features(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text("timezone: America/New_York\ninternal_domains: [corp.example]\n")
    data = default_detections_dir() / "em_fnum" / "data"
    runner = CliRunner()
    ingested = runner.invoke(app, ["--home", str(home), "ingest", str(data / "positive_vpn.log"),
                                   str(data / "positive_maillog"), "--year", "2026"])
    assert ingested.exit_code == 0, ingested.output
    listed = runner.invoke(app, ["--home", str(home), "sessions", "--now", "2026-10-15T14:30:00-04:00",
                                 "--user", "alice", "--limit", "1", "--format", "jsonl"])
    assert listed.exit_code == 0, listed.output
    (latest,) = map(json.loads, listed.stdout.splitlines())
    assert latest["session_id"] == "vpn|alice|2026-10-15T13:00:00Z|00000015"
    assert (latest["session_start"], latest["session_end"], latest["em_fnum"]) == ("2026-10-15 09:00", "2026-10-15 12:10", 33)
