"""`exfilwatch evaluate --profiles`: generated organisations, their session rules and the incidents
they raise, scored against the labelled cases."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

from exfilwatch.evaluate.organisations import score_incidents
from exfilwatch.evaluate.replay import Label

SRC = str(Path(__file__).resolve().parents[1] / "src")


def label(case: str, user: str, day: int, expected: str) -> Label:
    return Label(case, "", user, date(2026, 10, day), expected)


def incident(user: str, first: str, last: str) -> dict:
    return {"risk_object": user, "first_time": first, "last_time": last}


def test_incidents_meet_cases_by_user_and_local_day():
    labels = [label("slow-leak", "ann", 5, "fire"), label("slow-leak", "ann", 12, "fire"),
              label("burst", "bob", 7, "fire"), label("month-end", "cy", 30, "quiet")]
    incidents = [
        incident("ann", "2026-10-05T14:00:00+00:00", "2026-10-06T15:00:00+00:00"),
        incident("ann", "2026-10-12T14:00:00+00:00", "2026-10-12T15:00:00+00:00"),  # a second one: split episode
        # 23:30 in New York on the 30th is the 31st in UTC: the local day counts
        incident("cy", "2026-10-31T03:30:00+00:00", "2026-10-31T03:30:00+00:00"),
        incident("dan", "2026-10-07T14:00:00+00:00", "2026-10-07T15:00:00+00:00"),  # about no case
        incident("bob", "2026-10-09T14:00:00+00:00", "2026-10-09T15:00:00+00:00"),  # another day than the case
    ]
    q, per_case = score_incidents(incidents, labels, "America/New_York", sessions=2000)
    assert per_case == {("slow-leak", "ann"): 2, ("burst", "bob"): 0, ("month-end", "cy"): 1}
    assert (q.leak_cases, q.leak_with_incident, q.leak_with_one, q.leak_incidents) == (2, 1, 0, 2)
    assert (q.benign_cases, q.benign_with_incident, q.incidents, q.unlabelled) == (1, 1, 5, 2)
    assert q.row()["unlabelled incidents per 1000 sessions"] == "1.00"
    assert q.row()["incidents per leak case"] == "1.00"


def test_evaluate_profiles_on_the_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    cli = [sys.executable, "-c", "from exfilwatch.cli import app; app()", "--home", str(tmp_path / "h"), "evaluate"]
    done = subprocess.run(cli + ["--profiles", "default,varied", "--seeds", "3", "--users", "30", "--days", "28",
                                 "--format", "markdown", "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "**session rules (counts of all seeds)**" in out and "**incidents**" in out
    rows = [line for line in out.splitlines() if line.startswith("| default | any rule") or
            line.startswith("| varied | any rule")]
    assert len(rows) == 2
    # the default organisation has three leak cases, the varied one four (a leak to a new business domain)
    assert "/3 |" in rows[0] and "/4 |" in rows[1]
    assert "| default | all |" in out and "| varied | all |" in out
    assert (tmp_path / "work" / "varied-seed3" / "logs" / "labels.csv").exists()

    bad = subprocess.run(cli + ["--profiles", "nope"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "expected names among default, varied" in bad.stderr + bad.stdout
    assert "Traceback" not in bad.stderr
    bad = subprocess.run(cli + ["--profiles", "default", "--seeds", "one"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--seeds 'one'" in bad.stderr + bad.stdout
