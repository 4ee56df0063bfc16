"""The detection catalog: the shipped detections plus a user's own folders (`--detections DIR`, `detections_path:`).

Each command that reads detections (list, show, lint, test, detect, run) sees the same catalog;
a duplicate id, a missing or empty folder, or no detections at all is one line and exit 2.
Also `--version` and `-h`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import exfilwatch
from exfilwatch.cli.main import app
from exfilwatch.detections import schema
from exfilwatch.detections.schema import default_detections_dir

SHIPPED_IDS = {
    "attack_tactic_threshold_exceeded_7d", "em_bsum", "em_bsum_personal", "em_dnum", "em_fnum",
    "email_servers_sending_high_volume_traffic_to_hosts",
    "hosts_receiving_high_volume_of_network_traffic_from_email_server", "hosts_receiving_unusual_mail_volume_robust",
    "notable_session", "risk_threshold_exceeded_24h",
}
BASE = "hosts_receiving_high_volume_of_network_traffic_from_email_server"


def own_detection(root: Path, new_id: str | None = "my_mail_server_pull") -> Path:
    """A user's content folder holding one detection copied from a shipped one, with its test data."""
    folder = root / "mine" / (new_id or BASE)
    shutil.copytree(default_detections_dir() / BASE, folder)
    if new_id:
        path = folder / "detection.yml"
        data = yaml.safe_load(path.read_text())
        data.update(id=new_id, name="My mail server pull")
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return root / "mine"


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def listed(*global_args: str) -> dict[str, str]:
    result = cli(*global_args, "detections", "list", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    return {row["id"]: row["folder"] for row in map(json.loads, result.stdout.splitlines())}


def test_without_a_folder_the_catalog_is_the_ten_shipped_detections(tmp_path):
    assert set(listed("--home", str(tmp_path / "home"))) == SHIPPED_IDS


def test_a_detections_folder_adds_to_list_show_lint_and_test(tmp_path):
    mine = own_detection(tmp_path)
    home = ("--home", str(tmp_path / "home"), "--detections", str(mine))

    catalog = listed(*home)
    assert set(catalog) == SHIPPED_IDS | {"my_mail_server_pull"}
    assert Path(catalog["my_mail_server_pull"]) == mine / "my_mail_server_pull"

    shown = cli(*home, "detections", "show", "my_mail_server_pull")
    assert shown.exit_code == 0 and "name: My mail server pull" in shown.stdout

    lint = cli(*home, "detections", "lint")
    assert lint.exit_code == 0, lint.output
    assert "11 detections checked" in lint.stdout

    tested = cli(*home, "test", "my_mail_server_pull")
    assert tested.exit_code == 0, tested.output
    assert "2 passed, 0 failed" in tested.stdout


def test_a_detections_folder_adds_to_detect_and_run(tmp_path):
    mine = own_detection(tmp_path)
    home = ("--home", str(tmp_path / "home"), "--detections", str(mine))
    detected = cli(*home, "detect", "--detection", "my_mail_server_pull", "--now", "2026-10-31T23:00:00Z")
    assert detected.exit_code == 0, detected.output
    assert "my_mail_server_pull: 0 findings" in detected.stdout
    ran = cli(*home, "run", "--detection", "my_mail_server_pull", "--now", "2026-10-31T23:00:00Z")
    assert ran.exit_code == 0, ran.output
    assert "my_mail_server_pull" in ran.stdout


def test_detections_path_in_the_config_is_relative_to_the_config_file(tmp_path):
    own_detection(tmp_path / "etc")
    (tmp_path / "etc" / "config.yaml").write_text("detections_path: [mine]\n")
    catalog = listed("--home", str(tmp_path / "home"), "--config", str(tmp_path / "etc" / "config.yaml"))
    assert set(catalog) == SHIPPED_IDS | {"my_mail_server_pull"}


def test_the_same_folder_from_the_config_and_the_command_line_counts_once(tmp_path):
    mine = own_detection(tmp_path)
    (tmp_path / "config.yaml").write_text(f"detections_path: [{mine}]\n")
    catalog = listed("--config", str(tmp_path / "config.yaml"), "--detections", str(mine))
    assert set(catalog) == SHIPPED_IDS | {"my_mail_server_pull"}


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_an_id_defined_twice_names_both_files(tmp_path):
    mine = own_detection(tmp_path, new_id=None)  # a copy that keeps the shipped id
    for command in (["detections", "list"], ["run", "--now", "2026-10-31T23:00:00Z"], ["test"]):
        line = one_line_error(cli("--home", str(tmp_path / "home"), "--detections", str(mine), *command))
        assert f"{mine / BASE / 'detection.yml'}: detection id {BASE!r} is already defined in " \
               f"{default_detections_dir() / BASE / 'detection.yml'}" in line


def test_lint_reports_an_id_defined_twice(tmp_path):
    mine = own_detection(tmp_path, new_id=None)
    lint = cli("--home", str(tmp_path / "home"), "--detections", str(mine), "detections", "lint")
    assert lint.exit_code == 1
    assert "duplicate detection id" in lint.stdout


def test_a_missing_or_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    line = one_line_error(cli("--home", str(tmp_path / "home"), "--detections", str(tmp_path / "nope"), "detections", "list"))
    assert line == f"error: {tmp_path / 'nope'}: detections folder not found"
    line = one_line_error(cli("--home", str(tmp_path / "home"), "--detections", str(tmp_path / "empty"), "run"))
    assert line == f"error: {tmp_path / 'empty'}: no detection.yml in this folder or below it"


def test_no_detections_at_all_is_an_error_not_a_silent_empty_run(tmp_path, monkeypatch):
    # An installation without its package data (the wheel before the detections were shipped in it).
    monkeypatch.setattr(schema, "default_detections_dir", lambda: tmp_path / "not-installed")
    for command in (["run", "--now", "2026-10-31T23:00:00Z"], ["detect", "--now", "2026-10-31T23:00:00Z"], ["test"],
                    ["detections", "list"]):
        line = one_line_error(cli("--home", str(tmp_path / "home"), *command))
        assert "no detections found" in line and "reinstall exfilwatch" in line


def test_version_and_short_help():
    version = cli("--version")
    assert version.exit_code == 0 and version.stdout == f"exfilwatch {exfilwatch.__version__}\n"
    for args in (["-h"], ["--help"], ["run", "-h"], ["detections", "-h"]):
        shown = cli(*args)
        assert shown.exit_code == 0, (args, shown.output)
        assert "Usage:" in shown.stdout
    assert "--detections" in cli("-h").stdout
    assert "--since" in cli("run", "-h").stdout
