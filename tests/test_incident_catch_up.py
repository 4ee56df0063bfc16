"""The incident rules' catch-up in one query per rule agrees with each fire's own search.

A catch-up of the incident rules (`pipeline.run_incident_rules`, one-pass) runs each shipped
correlation rule's batched form (`catch_up.search`) over the fires it evaluates; the per-fire path
(`catch_up="per-fire"`) runs each fire's own search. On hand-built risk events of several objects,
with a gap of days, a DST change in America/New_York, risk events available hours after their time
and an incident the analyst closes between two runs, both must leave the same `incidents` rows
(every column) and the same audit trail.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from exfilwatch import audit, pipeline
from exfilwatch.config import parse_settings
from exfilwatch.detections.batched import batched_plan
from exfilwatch.detections.runner import compiled_sql
from exfilwatch.detections.schema import load_detections
from exfilwatch.events.engine import connect
from exfilwatch.home import open_state
from exfilwatch.incidents.correlation import stored_incidents
from exfilwatch.incidents.workflow import set_status
from exfilwatch.risk.events import RiskEvent

NY = ZoneInfo("America/New_York")
RULES = ("risk_threshold_exceeded_24h", "notable_session", "attack_tactic_threshold_exceeded_7d")
# detection -> the tactics of its techniques: four rules over three tactics and one more rule
DETECTIONS = {"em_bsum": ["exfiltration"], "em_dnum": ["exfiltration"], "em_fnum": ["collection"],
              "vpn_new_country": ["initial-access"], "net_volume": ["exfiltration", "collection"]}
OBJECTS = [("alice", "user"), ("bob", "user"), ("carol", "user"), ("10.20.0.66", "system")]
FIRST_RUN = datetime(2026, 10, 27, 9, 30, tzinfo=NY)
SECOND_RUN = datetime(2026, 11, 6, 12, 30, tzinfo=NY)  # after the change back to EST on 1 November


def risk_events(seed: int) -> list[RiskEvent]:
    """Bursts of risk events per object from 15 October to 5 November, none from 21 to 24 October
    (a gap), many around 01:00-02:00 on 1 November (the hour that happens twice), a quarter at the
    minute the rules fire (a window's edge), a third available after their time: 1-30 hours later,
    or at 06:00 the next morning with other objects' (one fire sees several objects' new events)."""
    rng = random.Random(seed)
    events: list[RiskEvent] = []
    day = datetime(2026, 10, 15, tzinfo=NY)
    while day < datetime(2026, 11, 6, tzinfo=NY):
        if not datetime(2026, 10, 21, tzinfo=NY) <= day < datetime(2026, 10, 25, tzinfo=NY):
            for risk_object, kind in OBJECTS:
                if rng.random() < 0.45:
                    continue
                session = f"{risk_object}-{day:%m%d}"
                for n in range(rng.randint(1, 4)):
                    if day.date() == datetime(2026, 11, 1).date() and n < 2:
                        # 01:00-01:59 EDT, then the same wall hour in EST
                        when = (datetime(2026, 11, 1, 5, tzinfo=ZoneInfo("UTC"))
                                + timedelta(minutes=rng.randint(0, 119))).astimezone(NY)
                    else:  # a quarter on the minute the rules fire: on the edge of the windows of fires
                        minute = 5 if rng.random() < 0.25 else rng.randint(0, 59)
                        when = (day + timedelta(hours=rng.randint(7, 20), minutes=minute)).astimezone(NY)
                    detection = rng.choice(sorted(DETECTIONS))
                    score = float(rng.choice([20, 30, 40, 55, 80]))
                    available = when
                    if rng.random() < 0.2:  # found hours later
                        available = when + timedelta(hours=rng.randint(1, 30))
                    elif rng.random() < 0.2:  # found by the next morning's run, with every object's others
                        available = (day + timedelta(days=1, hours=6)).astimezone(NY)
                    key = f"{detection}|{risk_object}|{when.isoformat()}|{n}"
                    events.append(RiskEvent(
                        event_key=key, finding_key=key, detection_id=detection, time=when,
                        risk_object=risk_object, risk_object_type=kind, source_object=risk_object,
                        source_object_type=kind, risk_object_field="user", raw_score=score, score=score,
                        modifiers=[], message=f"{detection} on {risk_object}", techniques=[],
                        tactics=DETECTIONS[detection], session_id=session if kind == "user" else None,
                        available=available))
        day = (day + timedelta(days=1, hours=2)).replace(hour=0)  # local midnights across the DST change
    return events


def catch_up(tmp_path, mode: str, events: list[RiskEvent], order: tuple[str, ...] = RULES) -> tuple[list, list, list]:
    """Two runs of the incident rules (in `order`: the first opens most incidents), `mode` each, the analyst closing an incident in between:
    (the counts of each run, the incidents, the audit trail)."""
    settings = parse_settings({"timezone": "America/New_York"}, "test")
    state = open_state(tmp_path / mode)
    catalog = load_detections()
    rules = [catalog[r] for r in order]
    counts = []
    with state.transaction() as db:
        db.executemany(f"INSERT INTO risk_events VALUES ({','.join('?' * 17)})", [e.row() for e in events])
    con = connect(settings)
    try:
        for now in (FIRST_RUN, SECOND_RUN):
            results = pipeline.run_incident_rules(con, state, settings, rules, now, catch_up=mode)
            counts.append([(r.detection_id, r.fires, r.evaluated, r.candidates, r.new, r.updated) for r in results])
            if now == FIRST_RUN:
                first = stored_incidents(state)[0]["incident_id"]
                set_status(state, first, "closed", disposition="true_positive", actor="analyst", now=now)
        incidents = [dict(row) for row in state.query("SELECT * FROM incidents ORDER BY incident_id")]
        trail = audit.trail(state, limit=100_000)
    finally:
        con.close()
        state.close()
    return counts, incidents, trail


# each rule first once: the first rule opens most incidents, and their ids follow its rows' order
@pytest.mark.parametrize("seed,order", [(3, RULES), (17, RULES[::-1]), (5, RULES[1:] + RULES[:1])])
def test_one_query_per_rule_raises_the_incidents_of_each_fires_own_search(tmp_path, seed, order):
    events = risk_events(seed)
    one_pass = catch_up(tmp_path, "one-pass", events, order)
    per_fire = catch_up(tmp_path, "per-fire", events, order)
    counts, incidents, trail = per_fire
    # the data exercise what the forms must get right: every rule has candidates, fires are skipped,
    # episodes are continued, late events change what fires see
    assert {c[0] for c in counts[0] + counts[1] if c[3]} == set(RULES)
    assert all(c[2] < c[1] for c in counts[0])
    assert sum(c[5] for c in counts[0] + counts[1]) > 0
    assert any(e.available != e.time for e in events)
    assert len(incidents) >= 5 and any(i["status"] == "closed" for i in incidents)
    assert one_pass[0] == counts
    assert one_pass[1] == incidents
    assert one_pass[2] == trail


def test_each_shipped_incident_rule_has_a_batched_form():
    catalog = load_detections()
    for rule in RULES:
        plan, problem = batched_plan(catalog[rule], compiled_sql(catalog[rule]), catalog[rule].data_model)
        assert plan is not None, (rule, problem)
