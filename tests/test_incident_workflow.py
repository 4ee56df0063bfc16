"""The incident workflow through its public API: status, disposition, assignee, comments, the queue
and its filters, and the audit trail every change leaves (who, when, before, after).

Incidents are raised the way a run raises them: findings in the findings file format, risk
events rebuilt from them, the 24-hour risk threshold rule run through the pipeline's incident
step.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from exfilwatch import audit
from exfilwatch.config import parse_settings
from exfilwatch.detections.schema import load_detections
from exfilwatch.errors import UsageError
from exfilwatch.findings.store import load_findings_file
from exfilwatch.home import open_state
from exfilwatch.incidents.tables import SCHEMA as INCIDENTS
from exfilwatch.incidents.workflow import (IncidentFilter, add_comment, assign, dispositions_by_detection,
                                           get_incident, list_incidents, set_status, severity_counts)
from exfilwatch.risk.events import rebuild_risk_events
from exfilwatch.state import StageSchema, StateStore

from .pipelinekit import run_correlations

UTC = timezone.utc
NOW = datetime(2026, 10, 31, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
# user -> (hours before NOW of their findings, total risk: 24 h rule severity medium > 100, high >= 250, critical >= 500)
USERS = {"alice": (2, 120), "bob": (30, 300), "carol": (60, 600)}


def _incidents_home(tmp_path: Path) -> tuple[StateStore, dict[str, int]]:
    """A home with one incident per user in USERS; their ids by user."""
    state = open_state(tmp_path / "home")
    lines = []
    for user, (hours, total) in USERS.items():
        for detection in ("em_bsum", "em_dnum"):  # two detections: the per-detection cap does not bind
            lines.append(json.dumps({
                "detection_id": detection, "entity": user, "time": (NOW - timedelta(hours=hours)).isoformat(),
                "message": f"{detection} for {user}", "mitre_attack_id": ["T1048.003"], "fields": {},
                "risk_objects": [{"field": "user", "value": user, "type": "user", "score": total / 2}]}))
    path = tmp_path / "findings.jsonl"
    path.write_text("\n".join(lines) + "\n")
    settings = parse_settings({}, "test")
    rebuild_risk_events(state, settings, load_findings_file(state, path), NOW)
    run_correlations(duckdb.connect(), state, settings, [load_detections()["risk_threshold_exceeded_24h"]], NOW)
    ids = {row["risk_object"]: row["incident_id"] for row in list_incidents(state)}
    assert sorted(ids) == sorted(USERS)
    return state, ids


@pytest.fixture
def home(tmp_path):
    state, ids = _incidents_home(tmp_path)
    yield state, ids
    state.close()


def test_a_raised_incident_is_new_unassigned_and_carries_its_risk_events(home):
    state, ids = home
    incident = get_incident(state, ids["alice"])
    assert (incident["status"], incident["disposition"], incident["assignee"], incident["closed_at"]) == (
        "new", None, None, None)
    assert incident["severity"] == "medium" and incident["comments"] == []
    assert sorted(e["detection_id"] for e in incident["risk_events"]) == ["em_bsum", "em_dnum"]
    assert sorted(incident["event_keys"]) == sorted(e["event_key"] for e in incident["risk_events"])
    assert get_incident(state, 999) is None


def test_assign_work_and_close_leave_an_audit_trail_newest_first(home):
    state, ids = home
    alice = ids["alice"]
    assign(state, alice, "dana", actor="erin", now=NOW)
    set_status(state, alice, "in_progress", actor="dana", now=NOW + timedelta(minutes=5))
    add_comment(state, alice, "personal address <x@gmail.com>; asked HR", actor="dana", now=NOW + timedelta(minutes=6))
    set_status(state, alice, "closed", disposition="true_positive", actor="dana", now=LATER)
    incident = get_incident(state, alice)
    assert (incident["status"], incident["disposition"], incident["assignee"]) == ("closed", "true_positive", "dana")
    assert incident["closed_at"] == LATER.isoformat()
    assert [(c["author"], c["text"], c["at"]) for c in incident["comments"]] == [
        ("dana", "personal address <x@gmail.com>; asked HR", (NOW + timedelta(minutes=6)).isoformat())]
    trail = [(a["actor"], a["action"], a["at"], a["before"], a["after"]) for a in incident["audit"]]
    assert trail == [
        ("dana", "set_status", LATER.isoformat(),
         {"status": "in_progress", "disposition": None, "closed_at": None},
         {"status": "closed", "disposition": "true_positive", "closed_at": LATER.isoformat()}),
        ("dana", "comment", (NOW + timedelta(minutes=6)).isoformat(), None,
         {"text": "personal address <x@gmail.com>; asked HR"}),
        ("dana", "set_status", (NOW + timedelta(minutes=5)).isoformat(),
         {"status": "new", "disposition": None, "closed_at": None},
         {"status": "in_progress", "disposition": None, "closed_at": None}),
        ("erin", "assign", NOW.isoformat(), {"assignee": None}, {"assignee": "dana"}),
    ]
    # another incident's trail is its own
    assert get_incident(state, ids["bob"])["audit"] == []
    assert [a["object_id"] for a in audit.trail(state, object_type="incident")] == [str(alice)] * 4


def test_reopening_clears_the_disposition_and_a_change_to_nothing_writes_nothing(home):
    state, ids = home
    bob = ids["bob"]
    set_status(state, bob, "closed", disposition="false_positive", actor="erin", now=NOW)
    set_status(state, bob, "closed", disposition="false_positive", actor="erin", now=LATER)  # no change
    set_status(state, bob, "in_progress", actor="erin", now=LATER)
    incident = get_incident(state, bob)
    assert (incident["status"], incident["disposition"], incident["closed_at"]) == ("in_progress", None, None)
    assert [a["action"] for a in incident["audit"]] == ["set_status", "set_status"]
    assign(state, bob, "dana", actor="erin", now=LATER)
    assign(state, bob, None, actor="erin", now=LATER + timedelta(minutes=1))
    assert get_incident(state, bob)["assignee"] is None
    assert get_incident(state, bob)["audit"][0]["after"] == {"assignee": None}


@pytest.mark.parametrize(("call", "message"), [
    (lambda s, i: set_status(s, i, "done", actor="erin", now=NOW), "status 'done': expected one of new, in_progress, closed"),
    (lambda s, i: set_status(s, i, "closed", actor="erin", now=NOW), "needs a disposition"),
    (lambda s, i: set_status(s, i, "closed", disposition="fp", actor="erin", now=NOW), "disposition 'fp': expected one of"),
    (lambda s, i: set_status(s, i, "in_progress", disposition="false_positive", actor="erin", now=NOW),
     "goes only with status closed"),
    (lambda s, i: add_comment(s, i, "  ", actor="erin", now=NOW), "a comment must not be empty"),
    (lambda s, i: assign(s, i, " ", actor="erin", now=NOW), "an assignee must not be empty"),
    (lambda s, i: assign(s, i, "dana", actor="", now=NOW), "needs an actor"),
    (lambda s, i: assign(s, 999, "dana", actor="erin", now=NOW), "no incident 999"),
    (lambda s, i: add_comment(s, 999, "hello", actor="erin", now=NOW), "no incident 999"),
    (lambda s, i: set_status(s, 999, "new", actor="erin", now=NOW), "no incident 999"),
    (lambda s, i: list_incidents(s, IncidentFilter(severity="urgent")), "severity 'urgent'"),
    (lambda s, i: list_incidents(s, IncidentFilter(status="open")), "status 'open'"),
])
def test_bad_values_are_one_line_usage_errors_and_change_nothing(home, call, message):
    state, ids = home
    before = get_incident(state, ids["alice"])
    with pytest.raises(UsageError) as raised:
        call(state, ids["alice"])
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert get_incident(state, ids["alice"]) == before


def test_the_queue_is_newest_first_and_each_filter_narrows_it(home):
    state, ids = home
    assign(state, ids["bob"], "dana", actor="erin", now=NOW)
    set_status(state, ids["carol"], "closed", disposition="benign_true_positive", actor="erin", now=NOW)

    def users(**where) -> list[str]:
        return [r["risk_object"] for r in list_incidents(state, IncidentFilter(**where))]

    assert users() == ["alice", "bob", "carol"]  # last activity 2, 30 and 60 hours ago
    assert users(status="new") == ["alice", "bob"]
    assert users(status="closed") == ["carol"]
    assert users(severity="high") == ["bob", "carol"]
    assert users(severity="critical") == ["carol"]
    assert users(severity="informational") == ["alice", "bob", "carol"]
    assert users(entity="bob") == ["bob"]
    assert users(assignee="dana") == ["bob"]
    assert users(detection_id="risk_threshold_exceeded_24h") == ["alice", "bob", "carol"]
    assert users(detection_id="notable_session") == []
    # on last_time, in any zone: [start, end)
    assert users(start=NOW - timedelta(hours=40)) == ["alice", "bob"]
    assert users(end=(NOW - timedelta(hours=2)).astimezone(timezone(timedelta(hours=-5)))) == ["bob", "carol"]
    assert users(start=NOW - timedelta(hours=40), end=NOW - timedelta(hours=2)) == ["bob"]
    assert users(status="new", severity="high") == ["bob"]
    page = [r["risk_object"] for r in list_incidents(state, limit=1, offset=1)]
    assert page == ["bob"]
    row = list_incidents(state, IncidentFilter(entity="carol"))[0]
    assert {"status", "disposition", "assignee", "closed_at", "incident_key", "score", "event_keys"} <= set(row)
    assert row["disposition"] == "benign_true_positive"


def test_severity_counts_name_every_severity_and_follow_the_filter(home):
    state, ids = home
    set_status(state, ids["carol"], "closed", disposition="true_positive", actor="erin", now=NOW)
    assert severity_counts(state) == {"informational": 0, "low": 0, "medium": 1, "high": 1, "critical": 1}
    assert severity_counts(state, IncidentFilter(status="new")) == {
        "informational": 0, "low": 0, "medium": 1, "high": 1, "critical": 0}


def test_audit_record_joins_the_callers_transaction(home):
    state, _ = home
    with pytest.raises(RuntimeError):
        with state.transaction():
            audit.record(state, actor="admin", now=NOW, action="disable", object_type="detection",
                         object_id="em_bsum", before={"enabled": True}, after={"enabled": False})
            raise RuntimeError("the change failed")
    assert audit.trail(state) == []
    audit.record(state, actor="admin", now=NOW, action="disable", object_type="detection", object_id="em_bsum",
                 before={"enabled": True}, after={"enabled": False})
    audit.record(state, actor="admin", now=NOW, action="add", object_type="user", object_id="dana")
    assert [(a["object_type"], a["object_id"]) for a in audit.trail(state)] == [("user", "dana"), ("detection", "em_bsum")]
    [row] = audit.trail(state, object_type="detection", object_id="em_bsum")
    assert (row["actor"], row["before"], row["after"]) == ("admin", {"enabled": True}, {"enabled": False})


def test_a_home_from_before_the_workflow_keeps_its_incidents_as_new(tmp_path):
    path = tmp_path / "home" / "state.sqlite"
    old = StateStore(path, (StageSchema(INCIDENTS.stage, INCIDENTS.migrations[:1]),))
    with old.transaction() as db:
        db.execute("""INSERT INTO incidents (incident_key, detection_id, risk_object, risk_object_type, severity, score,
                      first_time, last_time, raised_at, updated_at, updates, message, event_keys, fields)
                      VALUES ('k', 'notable_session', 'alice', 'user', 'high', 95, ?, ?, ?, ?, 0, 'm', '[]', '{}')""",
                   (NOW.isoformat(),) * 4)
    old.close()
    state = open_state(tmp_path / "home")
    [incident] = list_incidents(state)
    assert (incident["status"], incident["assignee"], incident["disposition"]) == ("new", None, None)
    set_status(state, incident["incident_id"], "closed", disposition="false_positive", actor="erin", now=LATER)
    assert get_incident(state, incident["incident_id"])["audit"][0]["actor"] == "erin"
    assert state.versions()["incidents"] == INCIDENTS.version and state.versions()["audit"] == 1
    state.close()


def test_dispositions_count_each_closed_incident_once_for_each_detection_behind_it(home):
    state, ids = home
    set_status(state, ids["alice"], "closed", disposition="false_positive", actor="ana", now=LATER)
    set_status(state, ids["bob"], "closed", disposition="true_positive", actor="ana", now=LATER)
    set_status(state, ids["carol"], "in_progress", actor="ana", now=LATER)  # open: not counted
    # each incident holds a risk event of each detection and names the incident rule
    expected = {"false_positive": 1, "true_positive": 1}
    assert dispositions_by_detection(state) == {
        "em_bsum": expected, "em_dnum": expected, "risk_threshold_exceeded_24h": expected}
