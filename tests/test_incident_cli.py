"""`exfilwatch incidents` filters by status and assignee; `exfilwatch incident ID` shows one incident
and assigns, moves, closes and comments it, every change in the audit trail, all or nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exfilwatch.cli.main import app

from .test_incident_workflow import _incidents_home

WHEN = ["--now", "2026-10-31T13:00:00+00:00"]


@pytest.fixture
def home(tmp_path):
    state, ids = _incidents_home(tmp_path)
    state.close()
    return ["--home", str(tmp_path / "home")], ids


def _jsonl(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_triage_one_incident_from_the_command_line(home):
    args, ids = home
    alice = str(ids["alice"])
    runner = CliRunner()
    changed = runner.invoke(app, [*args, "incident", alice, "--assign", "dana", "--status", "in_progress",
                                  "--comment", "called the user", "--actor", "erin", *WHEN])
    assert changed.exit_code == 0, changed.output
    assert "status in_progress; assignee dana" in changed.output and "called the user" in changed.output
    [shown] = _jsonl(runner.invoke(app, [*args, "incident", alice, "--format", "jsonl"]).output)
    assert [(a["actor"], a["action"], a["at"]) for a in shown["audit"]] == [
        ("erin", "comment", "2026-10-31T13:00:00+00:00"), ("erin", "set_status", "2026-10-31T13:00:00+00:00"),
        ("erin", "assign", "2026-10-31T13:00:00+00:00")]
    assert [(c["author"], c["text"]) for c in shown["comments"]] == [("erin", "called the user")]

    listed = _jsonl(runner.invoke(app, [*args, "incidents", "--status", "in_progress", "--format", "jsonl"]).output)
    assert [(r["risk_object"], r["status"], r["assignee"]) for r in listed] == [("alice", "in_progress", "dana")]
    assert [r["risk_object"] for r in _jsonl(runner.invoke(
        app, [*args, "incidents", "--assignee", "dana", "--format", "jsonl"]).output)] == ["alice"]
    assert [r["risk_object"] for r in _jsonl(runner.invoke(
        app, [*args, "incidents", "--status", "new", "--format", "jsonl"]).output)] == ["carol", "bob"]  # oldest first
    table = runner.invoke(app, [*args, "incidents"]).output
    assert "in_progress" in table and "dana" in table and "status" in table and "assignee" in table

    closed = runner.invoke(app, [*args, "incident", alice, "--status", "closed", "--disposition", "false_positive",
                                 "--actor", "dana", *WHEN])
    assert closed.exit_code == 0, closed.output
    assert "status closed (false_positive)" in closed.output
    assert "audit trail" in closed.output and "disposition=false_positive" in closed.output


def test_the_actor_defaults_to_the_os_user_name(home):
    args, ids = home
    result = CliRunner().invoke(app, [*args, "incident", str(ids["bob"]), "--assign", "dana", *WHEN],
                                env={"LOGNAME": "frank", "USER": "frank"})
    assert result.exit_code == 0, result.output
    [shown] = _jsonl(CliRunner().invoke(app, [*args, "incident", str(ids["bob"]), "--format", "jsonl"]).output)
    assert shown["audit"][0]["actor"] == "frank"


@pytest.mark.parametrize(("extra", "message"), [
    (["--status", "done"], "status 'done': expected one of new, in_progress, closed"),
    (["--status", "closed"], "needs a disposition"),
    (["--disposition", "false_positive"], "--disposition goes with --status closed"),
    (["--comment", " "], "a comment must not be empty"),
])
def test_a_bad_change_is_one_line_exit_2_and_nothing_is_changed(home, extra, message):
    args, ids = home
    runner = CliRunner()
    result = runner.invoke(app, [*args, "incident", str(ids["alice"]), "--assign", "dana", *extra,
                                 "--actor", "erin", *WHEN])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    [shown] = _jsonl(runner.invoke(app, [*args, "incident", str(ids["alice"]), "--format", "jsonl"]).output)
    assert shown["assignee"] is None and shown["audit"] == []


def test_an_unknown_incident_is_named(home):
    args, _ = home
    for extra in ([], ["--comment", "x", "--actor", "erin"]):
        result = CliRunner().invoke(app, [*args, "incident", "999", *extra])
        assert result.exit_code == 2 and "no incident 999" in result.output


def test_log_content_and_comments_cannot_drive_the_terminal(home):
    args, ids = home
    hostile = "\x1b[2J\x1b]0;owned\x07[bold red]FAKE[/] \u202egnp.exe"
    result = CliRunner().invoke(app, [*args, "incident", str(ids["carol"]), "--comment", hostile, "--actor", "erin",
                                      *WHEN])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "\u202e" not in result.output
    assert "[bold red]FAKE[/]" in result.output  # shown as typed, not as markup


def test_a_quiet_period_that_is_not_a_time_offset_is_named_with_its_key(home):
    args, _ = home
    config = Path(args[1]) / "config.yaml"
    config.write_text("detections:\n  notable_session:\n    quiet_period: four days\n")
    result = CliRunner().invoke(app, [*args, "incidents"])
    assert result.exit_code == 2
    assert "key 'detections.notable_session.quiet_period': quiet_period 'four days' is not a time offset" in result.output
    config.write_text("detections:\n  notable_session:\n    quiet_period: 36h\n")
    assert CliRunner().invoke(app, [*args, "incidents"]).exit_code == 0
