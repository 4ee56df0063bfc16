"""Risk arithmetic and the incident rules, on hand-built risk events and findings.

Thresholds at their boundaries, the per-detection cap, modifiers and identity resolution, the
24-hour and 7-day windows across DST changes, the session view, and incident continuation.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from exfilwatch.enrich.identities import EntityResolver

from exfilwatch.findings.store import load_findings_file

from exfilwatch.findings.suppressions import add_suppression, config_suppressions, remove_suppression, stored_suppressions, suppression_hits

from exfilwatch.incidents.correlation import stored_incidents

from exfilwatch.risk.events import load_risk_events, rebuild_risk_events, risk_events_for

from exfilwatch.risk.modifiers import apply_modifiers

from .pipelinekit import run_correlations
from exfilwatch.config import parse_settings
from exfilwatch.detections.runner import execute, resolve_parameters, run_window
from exfilwatch.detections.schema import load_detections
from exfilwatch.home import open_state

DETECTIONS = load_detections()
UTC = timezone.utc
TACTIC = {"T1048.003": "exfiltration", "T1114.002": "collection", "T1110.003": "credential-access",
          "T1087.003": "discovery"}


def ev(obj: str, detection: str, score: float, when: datetime, technique: str = "T1048.003",
       session: str | None = None, finding: str | None = None, raw: float | None = None) -> dict:
    key = finding or f"{detection}|{obj}|{when.isoformat()}"
    return {"time": when.astimezone(UTC).isoformat(), "event_key": f"{key}|user", "finding_key": key,
            "detection_id": detection, "risk_object": obj, "risk_object_type": "user", "source_object": obj,
            "source_object_type": "user", "risk_object_field": "user", "raw_score": score if raw is None else raw,
            "score": score, "message": "m", "techniques": [technique], "tactics": [TACTIC[technique]],
            "session_id": session}


def run_rule(rule: str, events: list[dict], now: datetime, tz: str = "UTC", **overrides) -> list[dict]:
    detection = DETECTIONS[rule]
    settings = parse_settings({"timezone": tz}, "test")
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    load_risk_events(con, events)
    params = resolve_parameters(detection, settings, overrides, run_window(detection, now, tz))
    return execute(con, detection, params)


NOW = datetime(2026, 10, 31, 12, 0, tzinfo=UTC)


# --- 24 h threshold ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("total", "severity"), [
    (100, None), (100.01, "medium"), (249.99, "medium"), (250, "high"), (499.99, "high"), (500, "critical"),
])
def test_threshold_and_severity_boundaries(total, severity):
    # two detections, so the cap (3x the largest single score) does not bind
    events = [ev("alice", "a", total / 2, NOW - timedelta(hours=2)), ev("alice", "b", total / 2, NOW - timedelta(hours=1))]
    rows = run_rule("risk_threshold_exceeded_24h", events, NOW)
    if severity is None:
        assert rows == []
    else:
        assert [(r["risk_object"], r["severity"]) for r in rows] == [("alice", severity)]
        assert rows[0]["risk_score"] == pytest.approx(total)


def test_three_equal_thirds_of_100_do_not_exceed_it():
    events = [ev("alice", d, 100 / 3, NOW - timedelta(hours=i + 1)) for i, d in enumerate("abc")]
    assert run_rule("risk_threshold_exceeded_24h", events, NOW) == []


def test_one_detection_adds_at_most_three_times_its_largest_score():
    noisy = [ev("bob", "noisy", 30, NOW - timedelta(hours=h)) for h in range(1, 6)]  # 150, capped to 90
    assert run_rule("risk_threshold_exceeded_24h", noisy, NOW) == []
    rows = run_rule("risk_threshold_exceeded_24h", noisy + [ev("bob", "other", 11, NOW - timedelta(hours=1))], NOW)
    assert len(rows) == 1
    assert rows[0]["risk_score"] == 101
    assert rows[0]["uncapped_risk_score"] == 161
    assert rows[0]["detection_count"] == 2
    assert len(rows[0]["event_keys"]) == 6


def test_cap_uses_the_largest_single_score_and_follows_its_parameter():
    events = [ev("bob", "noisy", 10, NOW - timedelta(hours=3)), ev("bob", "noisy", 95, NOW - timedelta(hours=2))]
    rows = run_rule("risk_threshold_exceeded_24h", events, NOW)
    assert rows[0]["risk_score"] == 105  # 105 < 3 x 95: not capped
    assert run_rule("risk_threshold_exceeded_24h", events, NOW, cap_multiple=1) == []  # capped to 95


def test_24h_window_is_24_elapsed_hours_across_the_fall_back():
    tz = "America/New_York"  # 2026-11-01 02:00 EDT -> 01:00 EST
    now = datetime.fromisoformat("2026-11-01T12:00:00-05:00")  # 17:00Z; 24 h earlier is 2026-10-31 17:00Z
    inside = [ev("carol", "a", 60, now - timedelta(hours=24)), ev("carol", "b", 60, now - timedelta(hours=1))]
    rows = run_rule("risk_threshold_exceeded_24h", inside, now, tz)
    assert [r["risk_score"] for r in rows] == [120]  # earliest is inclusive
    # 12:30 local the day before is within the calendar day (-1d = 16:00Z) but 24.5 elapsed hours ago
    calendar_only = datetime.fromisoformat("2026-10-31T12:30:00-04:00")
    outside = [ev("carol", "a", 60, calendar_only), ev("carol", "b", 60, now - timedelta(hours=1))]
    assert run_rule("risk_threshold_exceeded_24h", outside, now, tz) == []
    at_now = [ev("carol", "a", 60, now), ev("carol", "b", 60, now - timedelta(hours=1))]
    assert run_rule("risk_threshold_exceeded_24h", at_now, now, tz) == []  # latest is exclusive


# --- 7 day tactics ----------------------------------------------------------------------------------------


def _spread(obj: str, start: datetime, techniques: list[str]) -> list[dict]:
    return [ev(obj, f"d{i}", 10, start + timedelta(days=i), t) for i, t in enumerate(techniques)]


def test_tactic_rule_needs_three_tactics_and_four_detections():
    start = NOW - timedelta(days=5)
    rule = "attack_tactic_threshold_exceeded_7d"
    three_tactics_four = _spread("eve", start, ["T1048.003", "T1114.002", "T1110.003", "T1048.003"])
    rows = run_rule(rule, three_tactics_four, NOW)
    assert [(r["risk_object"], r["tactic_count"], r["detection_count"]) for r in rows] == [("eve", 3, 4)]
    assert rows[0]["tactics"] == "collection, credential-access, exfiltration"
    assert run_rule(rule, _spread("eve", start, ["T1048.003", "T1114.002", "T1110.003"]), NOW) == []
    assert run_rule(rule, _spread("eve", start, ["T1048.003", "T1114.002", "T1048.003", "T1114.002"]), NOW) == []
    assert run_rule(rule, three_tactics_four, NOW, minimum_tactics=4) == []


def test_7d_window_is_seven_local_days_across_the_spring_forward():
    tz = "Europe/Berlin"  # 2026-03-29 02:00 CET -> 03:00 CEST: the 7 days before now hold 167 hours
    now = datetime.fromisoformat("2026-04-01T12:00:00+02:00")
    first = datetime.fromisoformat("2026-03-25T12:00:00+01:00")  # 167 h before now: the window's first instant
    rest = [ev("eve", f"d{i}", 10, now - timedelta(days=i + 1), t)
            for i, t in enumerate(["T1114.002", "T1110.003", "T1048.003"])]
    rule = "attack_tactic_threshold_exceeded_7d"
    assert len(run_rule(rule, [ev("eve", "early", 10, first, "T1048.003")] + rest, now, tz)) == 1
    # 167.5 h before now: inside 168 elapsed hours, outside the 7 local days
    early = first - timedelta(minutes=30)
    assert run_rule(rule, [ev("eve", "early", 10, early, "T1048.003")] + rest, now, tz) == []


# --- sessions -------------------------------------------------------------------------------------------


def test_session_score_is_the_sum_of_its_rules_and_90_is_notable():
    t = NOW - timedelta(hours=1)
    notable = [ev("alice", r, 30, t, session="s1") for r in ("em_fnum", "em_dnum", "em_bsum")]
    rows = run_rule("notable_session", notable, NOW)
    assert [(r["session_id"], r["session_score"], r["rule_count"]) for r in rows] == [("s1", 90, 3)]
    below = [ev("bob", "em_fnum", 60, t, session="s2"), ev("bob", "em_dnum", 29.99, t, session="s2")]
    assert run_rule("notable_session", below, NOW) == []
    split = [ev("carol", "em_fnum", 50, t, session="s3"), ev("carol", "em_bsum", 50, t, session="s4")]
    assert run_rule("notable_session", split, NOW) == []


def test_session_score_uses_rule_scores_before_modifiers_and_counts_a_finding_once():
    t = NOW - timedelta(hours=1)
    events = [ev("alice", "em_fnum", 15, t, session="s1", raw=30),  # halved by a modifier: still 30 for the session
              ev("alice", "em_dnum", 30, t, session="s1", finding="f2"),
              dict(ev("alice", "em_dnum", 30, t, session="s1", finding="f2"), event_key="f2|src_ip"),  # same finding
              ev("alice", "em_bsum", 30, t, session="s1")]
    rows = run_rule("notable_session", events, NOW)
    assert [r["session_score"] for r in rows] == [90]  # not 75 (modified), not 120 (finding twice)


# --- modifiers and identities ------------------------------------------------------------------------------


def test_modifiers_multiply_then_add_and_say_which_applied():
    mods = parse_settings({"risk_modifiers": [
        {"name": "crown jewels", "match": {"priority": "critical"}, "multiply": 2},
        {"match": {"user": "svc-*"}, "multiply": 0.5},
        {"match": {"department": ["finance", "legal"]}, "add": 10},
    ]}, "test").risk_modifiers
    assert apply_modifiers(25, {"priority": "critical"}, mods)[0] == 50
    assert apply_modifiers(25, {"priority": "high"}, mods) == (25, [])
    score, applied = apply_modifiers(25, {"priority": "critical", "department": "legal"}, mods)
    assert score == 60 and [a["modifier"] for a in applied] == ["crown jewels", "risk_modifiers[2]"]
    assert apply_modifiers(40, {"user": "svc-backup"}, mods)[0] == 20


def _settings(**extra):
    return parse_settings({
        "internal_domains": ["corp.example"],
        "assets": [{"cidr": "10.10.0.0/28", "category": "email_server"},
                   {"cidr": "10.50.0.0/24", "category": "workstation", "owner": "dave"},
                   {"host": "10.60.0.9", "category": "server", "priority": "critical"}],
        "identities": [{"user": "alice", "emails": ["alice.smith@corp.example"], "hosts": ["10.20.0.66"],
                        "department": "finance"},
                       {"user": "svc-backup", "vpn_accounts": ["CORP\\svc-backup"]}],
        **extra}, "test")


def test_a_system_resolves_to_its_user_through_identities_or_the_inventory_owner():
    resolver = EntityResolver(_settings())
    laptop = resolver.resolve("10.20.0.66", "system")
    assert (laptop.risk_object, laptop.risk_object_type, laptop.attributes["department"]) == ("alice", "user", "finance")
    owned = resolver.resolve("10.50.0.7", "system")
    assert (owned.risk_object, owned.risk_object_type, owned.attributes["category"]) == ("dave", "user", "workstation")
    server = resolver.resolve("10.60.0.9", "system")
    assert (server.risk_object, server.risk_object_type, server.attributes["priority"]) == ("10.60.0.9", "system", "critical")
    assert resolver.resolve("Alice.Smith@corp.example", "user").risk_object == "alice"
    assert resolver.resolve("CORP\\svc-backup", "user").risk_object == "svc-backup"
    assert resolver.resolve("nobody@gmail.com", "user").risk_object == "nobody@gmail.com"


def test_risk_events_resolve_and_modify():
    settings = _settings(risk_modifiers=[{"match": {"priority": "critical"}, "multiply": 2},
                                         {"match": {"user": "svc-*"}, "multiply": 0.5}])
    resolver = EntityResolver(settings)
    finding = {"finding_key": "k", "detection_id": "d", "entity": "x", "time": "2026-10-31T00:00:00+00:00",
               "message": "msg", "fields": {"session_id": "s9"},
               "risk_objects": [{"field": "src_ip", "value": "10.60.0.9", "type": "system", "score": 25},
                                {"field": "user", "value": "CORP\\svc-backup", "type": "user", "score": 40},
                                {"field": "dest_ip", "value": None, "type": "system", "score": 25}]}
    events = risk_events_for(finding, ["T1114.002"], resolver, settings.risk_modifiers, NOW)
    assert [(e.risk_object, e.raw_score, e.score, e.tactics, e.session_id) for e in events] == [
        ("10.60.0.9", 25, 50, ["collection"], "s9"), ("svc-backup", 40, 20, ["collection"], "s9")]


# --- through the state store: suppression decisions, rebuild, incidents -------------------------------------


def _write_findings(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _finding(detection: str, entity: str, when: datetime, score: float, **fields) -> dict:
    return {"detection_id": detection, "entity": entity, "time": when.isoformat(), "message": f"{detection} on {entity}",
            "mitre_attack_id": ["T1048.003"], "fields": fields,
            "risk_objects": [{"field": "user", "value": entity, "type": "user", "score": score}]}


def test_an_episode_is_one_incident_that_grows_and_a_later_one_is_new(tmp_path):
    state = open_state(tmp_path)
    settings = parse_settings({}, "test")
    rule = DETECTIONS["risk_threshold_exceeded_24h"]
    con = duckdb.connect(":memory:")
    t0 = datetime(2026, 10, 30, 9, 0, tzinfo=UTC)

    def step(records, now):
        techniques = load_findings_file(state, _write_findings(tmp_path / f"{now:%d%H}.jsonl", records))
        rebuild_risk_events(state, settings, techniques, now)
        return run_correlations(con, state, settings, [rule], now)[0]

    first = step([_finding("a", "alice", t0, 60), _finding("b", "alice", t0 + timedelta(hours=1), 50)],
                 t0 + timedelta(hours=3))
    assert (first.new, first.updated) == (1, 0)
    incident = stored_incidents(state)[0]
    assert (incident["severity"], incident["score"]) == ("medium", 110)
    # hourly fires that keep seeing the same events add nothing; a new event continues the incident
    later = step([_finding("c", "alice", t0 + timedelta(hours=5), 200)], t0 + timedelta(hours=6))
    assert (later.new, later.updated) == (0, 1)
    [incident] = stored_incidents(state)
    assert (incident["severity"], incident["score"], len(incident["event_keys"])) == ("high", 310, 3)
    again = step([], t0 + timedelta(hours=12))
    assert (again.new, again.updated) == (0, 0)
    # after the quiet period (4 days without risk), new events that share nothing with it: a second incident
    t2 = t0 + timedelta(days=6)
    second = step([_finding("a", "alice", t2, 70), _finding("d", "alice", t2, 40)], t2 + timedelta(hours=2))
    assert second.new == 1
    assert [i["score"] for i in stored_incidents(state)] == [310, 110]
    state.close()


def test_suppression_applies_until_it_expires_and_its_decisions_stay(tmp_path):
    state = open_state(tmp_path)
    tz = "America/New_York"
    settings = parse_settings({"timezone": tz, "suppressions": [
        {"id": "backup", "detection": "em_bsum", "entity": "svc-*", "where": {"bytes": {"max": 5e9}},
         "owner": "alice", "reason": "nightly export", "expires": "2026-10-31"}]}, "test")
    day = datetime.fromisoformat("2026-10-31T10:00:00-04:00")
    records = [_finding("em_bsum", "svc-mail", day, 30, bytes=4e9),   # suppressed
               _finding("em_bsum", "svc-mail2", day, 30, bytes=6e9),  # over the range: not suppressed
               _finding("em_fnum", "svc-mail", day, 30, bytes=1e9),   # another detection
               _finding("em_bsum", "bob", day, 30, bytes=1e9)]        # another entity
    load_findings_file(state, _write_findings(tmp_path / "a.jsonl", records))
    last_moment = datetime.fromisoformat("2026-10-31T23:59:59-04:00")  # a date expiry covers that local day
    rebuilt = rebuild_risk_events(state, settings, {}, last_moment)
    assert (rebuilt.findings, rebuilt.suppressed, rebuilt.events) == (4, 1, 3)
    assert suppression_hits(state) == {"config:backup": 1}
    # after expiry: a new matching finding is not suppressed; the earlier decision stands
    load_findings_file(state, _write_findings(tmp_path / "b.jsonl", [
        _finding("em_bsum", "svc-mail", day + timedelta(days=1), 30, bytes=4e9)]))
    after = datetime.fromisoformat("2026-11-01T00:00:00-04:00")
    rebuilt = rebuild_risk_events(state, settings, {}, after)
    assert (rebuilt.findings, rebuilt.suppressed, rebuilt.events, rebuilt.newly_suppressed) == (5, 1, 4, 0)
    assert state.query("SELECT count(*) AS n FROM findings")[0]["n"] == 5  # suppressed findings are kept
    state.close()


def test_cli_suppression_with_relative_expiry_and_list_conditions(tmp_path):
    state = open_state(tmp_path)
    settings = parse_settings({}, "test")
    from exfilwatch.riskconfig import SuppressionSpec

    spec = SuppressionSpec(detection="all", where={"recipient_domain": "partner.example", "size": {"gt": 10}},
                           owner="o", reason="r", expires="+2h")
    added = add_suppression(state, settings, spec, NOW)
    assert added.suppression_id == "s1" and added.expires == NOW + timedelta(hours=2)
    finding = {"detection_id": "x", "entity": "u", "fields": {"recipient_domain": ["gmail.com", "partner.example"],
                                                             "size": 11}}
    assert added.matches(finding)
    assert not added.matches({**finding, "fields": {**finding["fields"], "size": 10}})
    assert not added.matches({**finding, "fields": {"recipient_domain": ["gmail.com"], "size": 50}})
    assert not added.matches({**finding, "fields": {"recipient_domain": "partner.example"}})  # null size: false
    [stored] = stored_suppressions(state)
    assert stored.active(NOW + timedelta(hours=1, minutes=59)) and not stored.active(NOW + timedelta(hours=2))
    assert add_suppression(state, settings, spec, NOW).suppression_id == "s2"
    assert remove_suppression(state, "s1") and not remove_suppression(state, "s1")
    state.close()


def test_relative_expiry_is_refused_in_config():
    from exfilwatch.config import ConfigError

    settings = parse_settings({"suppressions": [{"owner": "o", "reason": "r", "expires": "+30d"}]}, "test")
    with pytest.raises(ConfigError, match="relative"):
        config_suppressions(settings, NOW)
