"""The risk commands end to end on real Zeek logs: run -> risk events -> incidents -> outputs,
the entity timeline, suppressions through the CLI, backtest, and the test report's risk events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from exfilwatch.cli.main import app
from exfilwatch.detections.schema import default_detections_dir

NET_A = "email_servers_sending_high_volume_traffic_to_hosts"
NET_B = "hosts_receiving_high_volume_of_network_traffic_from_email_server"
CONFIG = {
    "timezone": "America/New_York",
    "assets": [{"cidr": "10.10.0.0/28", "category": "email_server"},
               {"host": "10.20.0.66", "category": "workstation", "priority": "critical"}],
    "identities": [{"user": "mallory", "emails": ["mallory@corp.example"], "hosts": ["10.20.0.66"],
                    "department": "finance"}],
    "risk_modifiers": [{"name": "critical assets", "match": {"priority": "critical"}, "multiply": 3}],
    "outputs": [{"name": "archive", "type": "jsonl", "path": "incidents.jsonl"}],
}
RUN = ["run", "--since", "2026-10-31T00:00", "--now", "2026-11-01T00:30", "--detection", NET_A, "--detection", NET_B]


def _home(tmp_path: Path, name: str) -> tuple[CliRunner, list[str]]:
    home = tmp_path / name
    home.mkdir()
    (home / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    runner = CliRunner()
    logs = [str(default_detections_dir() / d / "data" / "positive_conn.log") for d in (NET_A, NET_B)]
    result = runner.invoke(app, ["--home", str(home), "ingest", *logs])
    assert result.exit_code == 0, result.output
    return runner, ["--home", str(home)]


def _jsonl(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_run_raises_an_incident_for_the_user_behind_the_laptop(tmp_path):
    runner, home = _home(tmp_path, "a")
    result = runner.invoke(app, [*home, *RUN])
    assert result.exit_code == 0, result.output
    assert "risk_threshold_exceeded_24h: 1 new incidents" in result.output
    [incident] = _jsonl(runner.invoke(app, [*home, "incidents", "--format", "jsonl"]).output)
    assert (incident["risk_object"], incident["severity"], incident["score"]) == ("mallory", "medium", 150)
    assert incident["delivered"] == ["archive"]
    assert {e["source_object"] for e in incident["risk_events"]} == {"10.20.0.66"}
    delivered = (tmp_path / "a" / "incidents.jsonl").read_text().splitlines()
    assert len(delivered) == 1
    # a second run adds no incident and delivers nothing twice
    assert runner.invoke(app, [*home, *RUN]).exit_code == 0
    assert len(_jsonl(runner.invoke(app, [*home, "incidents", "--format", "jsonl"]).output)) == 1
    assert len((tmp_path / "a" / "incidents.jsonl").read_text().splitlines()) == 1

    for name in ("mallory", "10.20.0.66", "mallory@corp.example"):
        [report] = _jsonl(runner.invoke(app, [*home, "entity", name, "--format", "jsonl"]).output)
        assert report["entity"] == "mallory"
        assert [row["kind"] for row in report["timeline"]] == ["risk", "risk", "INCIDENT medium"]
        assert [row["risk_24h"] for row in report["timeline"][:2]] == [75, 150]
    table = runner.invoke(app, [*home, "entity", "mallory"]).output
    assert "department: finance" in table and "INCIDENT medium" in table

    table = runner.invoke(app, [*home, "incidents"]).output
    assert "mallory (user)" in table and "archive" in table


def test_suppressed_findings_are_kept_marked_counted_and_add_no_risk(tmp_path):
    runner, home = _home(tmp_path, "b")
    added = runner.invoke(app, [*home, "suppress", "add", "--detection", NET_A, "--entity", "10.20.*",
                                "--where", "bytes_out>=1e8", "--owner", "alice", "--reason", "mailbox migration",
                                "--expires", "2026-11-15", "--now", "2026-10-01T00:00"])
    assert added.exit_code == 0 and "added suppression s1" in added.output
    result = runner.invoke(app, [*home, *RUN])
    assert "1 suppressed findings kept" in result.output
    assert _jsonl(runner.invoke(app, [*home, "incidents", "--format", "jsonl"]).output) == []  # 75 alone is not > 100
    shown = _jsonl(runner.invoke(app, [*home, "findings", "--format", "jsonl"]).output)
    hidden = _jsonl(runner.invoke(app, [*home, "findings", "--suppressed", "--format", "jsonl"]).output)
    assert [f["detection_id"] for f in shown] == [NET_B]
    assert [(f["detection_id"], f["suppressed_by"]) for f in hidden] == [(NET_A, "s1 (alice: mailbox migration)")]
    assert "1 suppressed findings hidden" in runner.invoke(app, [*home, "findings"]).output
    [row] = _jsonl(runner.invoke(app, [*home, "suppress", "list", "--now", "2026-11-01", "--format", "jsonl"]).output)
    assert (row["status"], row["suppressed"]) == ("active", 1)
    [row] = _jsonl(runner.invoke(app, [*home, "suppress", "list", "--now", "2026-11-16", "--format", "jsonl"]).output)
    assert row["status"] == "expired"
    assert runner.invoke(app, [*home, "suppress", "remove", "s1"]).exit_code == 0
    assert runner.invoke(app, [*home, "suppress", "remove", "s1"]).exit_code == 2
    # the finding stays marked after its suppression is removed
    hidden = _jsonl(runner.invoke(app, [*home, "findings", "--suppressed", "--format", "jsonl"]).output)
    assert hidden[0]["suppressed_by"] == "s1 (removed)"


@pytest.mark.parametrize("bad", [["--where", "bytes_out~5"], ["--expires", "tomorrowish"]])
def test_suppress_add_rejects_bad_input(tmp_path, bad):
    home = tmp_path / "c"
    args = ["--home", str(home), "suppress", "add", "--detection", NET_A, "--owner", "o", "--reason", "r",
            "--expires", "2026-12-01", "--now", "2026-10-01T00:00", *bad]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2


def test_backtest_replays_without_touching_stored_findings(tmp_path):
    runner, home = _home(tmp_path, "d")
    assert runner.invoke(app, [*home, *RUN]).exit_code == 0
    before = runner.invoke(app, [*home, "findings", "--format", "jsonl"]).output
    result = runner.invoke(app, [*home, "backtest", "--detection", NET_B, "--from", "2026-10-29", "--to", "2026-10-31",
                                 "--set", "deviation_threshold=2", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    [report] = _jsonl(result.output)
    assert [(d["day"], d["findings"]) for d in report["per_day"]] == [("2026-10-29", 0), ("2026-10-30", 0),
                                                                      ("2026-10-31", 1)]
    assert [e["entity"] for e in report["per_entity"]] == ["10.20.0.66"]
    assert report["overrides"] == {"deviation_threshold": "2"}
    assert runner.invoke(app, [*home, "findings", "--format", "jsonl"]).output == before
    table = runner.invoke(app, [*home, "backtest", "--detection", NET_B, "--from", "2026-10-31", "--to", "2026-10-31"])
    assert "findings per entity" in table.output and "stored findings untouched" in table.output


def test_test_command_reports_risk_events():
    result = CliRunner().invoke(app, ["test", "risk_threshold_exceeded_24h", NET_B])
    assert result.exit_code == 0, result.output
    assert "risk events read" in result.output and "+25 10.20.0.66 (system)" in result.output


def test_entity_timeline_shows_sessions_suppressed_findings_and_incidents(tmp_path):
    from datetime import datetime, timezone

    import duckdb

    from exfilwatch.findings.store import load_findings_file

    from exfilwatch.risk.events import rebuild_risk_events

    from .pipelinekit import run_correlations
    from exfilwatch.incidents.timeline import entity_timeline
    from exfilwatch.config import parse_settings
    from exfilwatch.detections.schema import load_detections
    from exfilwatch.home import open_state

    state = open_state(tmp_path)
    settings = parse_settings({"identities": [{"user": "alice", "emails": ["alice@corp.example"]}],
                               "suppressions": [{"detection": "em_fnum", "owner": "o", "reason": "r",
                                                 "expires": "never", "where": {"session_id": "s-2"}}]}, "test")
    records = []
    for rule, session, hour in (("em_fnum", "s-1", 9), ("em_dnum", "s-1", 9), ("em_bsum", "s-1", 9),
                                ("em_bsum_personal", "s-1", 9), ("em_fnum", "s-2", 15)):
        records.append(json.dumps({
            "detection_id": rule, "entity": "alice", "bucket": session, "time": f"2026-10-31T{hour:02d}:00:00+00:00",
            "message": f"{rule} in {session}", "mitre_attack_id": ["T1048.003"],
            "fields": {"session_id": session, "session_start": "08:00", "session_end": f"{hour:02d}:00",
                       "end_reason": "logout", "session_kind": "vpn"},
            "risk_objects": [{"field": "user", "value": "alice@corp.example", "type": "user", "score": 25}]}))
    (tmp_path / "f.jsonl").write_text("\n".join(records) + "\n")
    now = datetime(2026, 10, 31, 18, 0, tzinfo=timezone.utc)
    techniques = load_findings_file(state, tmp_path / "f.jsonl")
    rebuild_risk_events(state, settings, techniques, now)
    rules = [load_detections()[r] for r in ("notable_session", "risk_threshold_exceeded_24h")]
    run_correlations(duckdb.connect(), state, settings, rules, now)
    report = entity_timeline(state, settings, "alice@corp.example")
    assert report["entity"] == "alice" and report["suppressed_findings"] == 1
    kinds = [(row["kind"], row["source"]) for row in report["timeline"]]
    assert kinds[:5] == [("risk", "em_bsum"), ("risk", "em_bsum_personal"), ("risk", "em_dnum"), ("risk", "em_fnum"),
                         ("session", "s-1")]
    # 4 x 25 = 100 is not over the 24 h threshold (the fifth finding is suppressed): only the session is notable
    assert sorted(k for k, _ in kinds[5:]) == ["INCIDENT high", "suppressed"]
    session = report["timeline"][4]
    assert session["score"] == 100 and "NOTABLE" in session["detail"] and "vpn session 08:00 to 09:00" in session["detail"]
    state.close()


def test_a_correlation_rules_test_reports_the_risk_events_it_read_not_its_own():
    from exfilwatch.detections.schema import load_detections
    from exfilwatch.evaluate.detection_tests import run_detection_tests

    [positive, _] = run_detection_tests([load_detections()["notable_session"]])
    # positive_findings.jsonl holds three findings of one risk object each: the rule read three events
    assert positive.passed and positive.risk_events == 3
