"""Incident rules: correlation detections over risk events raise one incident per entity and episode.

Correlation detections (type `correlation`, `data_model: risk_events`) run over a `risk_events`
view at each cron fire time since their watermark, like any scheduled detection (the pipeline's
schedule). Each output row is an incident candidate; it names the risk events behind it
(`event_keys`). One incident per entity and episode, whichever incident rule sees it (as Exabeam
and Elastic do; one incident per rule is the alert fatigue Splunk ES's per-search notables are
known for): a candidate of any rule continues the open incident of its object when it shares a
risk event with it or comes within the candidate rule's quiet period of its activity, or, when
the candidate's risk events come only from detections the incident already holds (the same signal
again), within the longer recurrence period (its score and severity can only grow, the rules that
contributed are listed in `rules`, each update is audited); after the incident is closed, or after
a quiet (recurrence) period, it is a new incident. So one episode is one incident, however many
rules and hourly fires see it and however many sessions it spans.

A catch-up (the first run, or a run after missed hours) evaluates a rule at many fires; a rule
with a batched form (`catch_up.search`, the contract in detections/batched.py `correlated_plan`)
computes the candidates of all of them in one query over `fires` and every stored risk event, each
fire seeing only the events available at it, and each fire's candidates are then stored in fire
order exactly as if it had run alone. The per-fire search (`Options.catch_up == "per-fire"`) is the
reference; tests/test_incident_catch_up.py holds the two to the same incidents and audit trail.
At 1000 users x 30 days a query costs 4-6 ms of DuckDB's planning and set-up on a few dozen risk
events, whatever the rows: the incident step of a first run took 0.79-1.14 CPU-s fire by fire
(73 and 38 queries of two rules, and more of the third) and 0.13-0.24 with one query per rule
(bench/profile_first_run.py, 6 alternated rounds, load 3-7).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import duckdb

from exfilwatch import audit
from exfilwatch.config import Settings
from exfilwatch.detections.batched import batched_plan
from exfilwatch.detections.runner import compiled_sql, data_range, execute, resolve_parameters, run_window
from exfilwatch.detections.schema import QUIET_PERIOD, RECURRENCE_PERIOD
from exfilwatch.events.engine import _drop_temp, plain
from exfilwatch.findings.catchup import batched_groups, batched_rows
from exfilwatch.findings.record import display
from exfilwatch.risk.events import load_risk_events, stored_risk_events
from exfilwatch.state import StateStore, dumps
from exfilwatch.timeexpr import as_time, relative_time

SEVERITY_RANK = {"informational": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}


@dataclass
class CorrelationResult:
    detection_id: str
    fires: int = 0
    evaluated: int = 0
    candidates: int = 0
    new: int = 0
    updated: int = 0


# Why 5 days: a slow leak is a few sessions a week, not one every day, and its risk events are
# timed at the sessions' ends. A weekend and a day of leave between two sessions (Thursday evening
# to Monday evening, or Friday to Tuesday) is 4 days plus however much later the second session
# ends: 4 days 2-3 hours in the generated organisations, which split at 4 days. A week of
# silence still ends the episode (the analyst has moved on, and a new incident says so).
DEFAULT_QUIET_PERIOD = "5d"
# Why 14 days for the same signal: a slow leak to one's own address pauses for a week and more (a
# week of leave, nothing to take: the generated slow leak of seed 1 went 8 days between two
# sessions) and resumes; while the analyst has not closed its incident, the same detections firing
# again on the same entity are that story going on, and a second incident would split it. Other
# signals (another detection) still need the quiet period.
DEFAULT_RECURRENCE_PERIOD = "14d"
INCIDENT = "incident"  # the audit trail's object type for incidents
PIPELINE_ACTOR = "exfilwatch"  # who the audit trail says updated an incident the rules continued


Window = tuple[datetime | None, datetime | None]


def _episode_incident(incidents: list[Any], keys: set[str], last: str, quiet: Window, recurrence: Window,
                      detections_of: Any) -> tuple[str, Any]:
    """Which stored incident of the candidate's object (any rule's) a candidate belongs to.

    ('unchanged', closed) when a closed incident already holds all its risk events (closing is the
    analyst's verdict on them: a later fire that sees them again, by any rule, raises nothing);
    ('update', open) for the open incident that shares a risk event with it, else for the open
    incident nearest to it in time among those active within `quiet` (the candidate widened by the
    quiet period on both sides: when rules are replayed one after another over a backfill, a
    rule's candidate can come before an incident another rule opened later) or, for an incident
    that already holds every detection behind the candidate's risk events (`detections_of` a set
    of event keys), within `recurrence`; else ('new', None).
    """
    near: list[tuple[float, Any]] = []
    signal = detections_of(keys) if keys else set()
    for incident in incidents:  # newest first
        old = set(json.loads(incident["event_keys"]))
        same_events = old & keys if keys else incident["last_time"] == last  # keyless rows: by time
        if incident["status"] == "closed":
            if (keys <= old) if keys else same_events:
                return "unchanged", incident
            continue
        if same_events:
            return "update", incident
        began, ended = as_time(incident["first_time"]), as_time(incident["last_time"])
        if began is None or ended is None:
            continue
        windows = [quiet]
        if signal and signal <= detections_of(set(json.loads(incident["event_keys"]))):
            windows.append(recurrence)
        for start, end in windows:
            if start is not None and end is not None and ended >= start and began <= end:
                # how far the incident is from the candidate, on that period's scale
                near.append((max((start - ended).total_seconds(), (began - end).total_seconds()), incident))
                break
    if near:
        return "update", min(near, key=lambda pair: pair[0])[1]
    return "new", None


def upsert_incident(state: StateStore, detection: Any, row: dict[str, Any], now: datetime, tz: str,
                    quiet_period: str = DEFAULT_QUIET_PERIOD,
                    recurrence_period: str = DEFAULT_RECURRENCE_PERIOD) -> str:
    """Store an incident candidate: 'new', 'updated' (continues an incident) or 'unchanged'.

    One incident per entity and episode, whichever incident rule sees it: a candidate continues
    the open incident of its object (raised by any rule) when they share a risk event or when
    less than `quiet_period` of silence lies between them, or less than `recurrence_period` when
    the incident already holds every detection behind the candidate's risk events; after a closed
    incident or a quiet period it is a new incident. An update appends the risk events, raises the severity, moves
    last_time, adds the candidate's rule to the incident's `rules`, counts in `updates` and is
    audited as done by `exfilwatch`, naming the rule. The score of an episode is the sum of its
    parts that share no risk event (sessions, days); a candidate that overlaps the incident (a
    sliding window, or another rule, seeing some of the same events) replaces the score only when
    higher. `detection_id` stays the rule that opened the incident.
    """
    fields = {name: plain(value) for name, value in row.items()}
    entity = str(fields.get(detection.finding.entity))
    object_type = str(fields.get("risk_object_type") or "other")
    keys = sorted(str(k) for k in (fields.get("event_keys") or []))
    last = str(fields.get(detection.finding.time))
    first = str(fields.get("first_time") or last)
    score = fields.get(detection.finding.value) if detection.finding.value else None
    severity = str(fields.get("severity") or "medium").lower()
    message = detection.risk_message({name: display(value, tz) for name, value in row.items()})
    began, ended = as_time(first), as_time(last)
    # The continuing (candidate's) rule's quiet period, not the larger of its and the incident's
    # rules': the rule that sees activity now is the one whose author said how long a silence ends
    # its kind of episode, and the outcome then depends only on this rule's settings and the
    # stored incident, not on which other rules happen to be loaded in this run (`--rule`, a
    # backtest). The shipped rules share the same default (4d), so the choice only matters for
    # a rule an operator tuned on purpose.
    def widened(period: str) -> Window:
        return (relative_time(began, f"-{period}", tz) if began is not None else None,
                relative_time(ended or began, f"+{period}", tz) if (ended or began) is not None else None)

    quiet, recurrence = widened(quiet_period), widened(recurrence_period)
    with state.transaction() as db:
        def detections_of(event_keys: set[str]) -> set[str]:
            marks = ",".join("?" * len(event_keys))
            return {r[0] for r in db.execute(
                f"SELECT DISTINCT detection_id FROM risk_events WHERE event_key IN ({marks})", sorted(event_keys))}

        # Only incidents within the longer of the two periods of the candidate can continue or hold
        # it: one sharing a risk event overlaps it in time.
        lo = min((w[0] for w in (quiet, recurrence) if w[0] is not None), default=None)
        hi = max((w[1] for w in (quiet, recurrence) if w[1] is not None), default=None)
        incidents = db.execute(
            "SELECT * FROM incidents WHERE risk_object = ? AND julianday(last_time) >= julianday(?) "
            "AND julianday(first_time) <= julianday(?) ORDER BY incident_id DESC",
            (entity, (lo or _instant(first)).isoformat(),
             (hi or datetime.max.replace(tzinfo=timezone.utc)).isoformat()),
        ).fetchall()
        outcome, match = _episode_incident(incidents, set(keys), last, quiet, recurrence, detections_of)
        if outcome == "unchanged":
            return outcome
        if match is None:
            key = f"{detection.id}|{entity}|{first}"
            taken = db.execute("SELECT count(*) FROM incidents WHERE incident_key = ? OR substr(incident_key, 1, ?) = ?",
                               (key, len(key) + 1, key + "|")).fetchone()[0]
            db.execute(
                """INSERT INTO incidents (incident_key, detection_id, risk_object, risk_object_type, severity, score,
                   first_time, last_time, raised_at, updated_at, updates, message, event_keys, fields, rules)
                   VALUES (?,?,?,?,?,?,?,?,?,?,0,?,?,?,?)""",
                # a new episode that begins with an event of a closed one: its key is still its own
                (key if not taken else f"{key}|{taken + 1}", detection.id, entity, object_type, severity, score,
                 first, last, now.isoformat(), now.isoformat(), message, dumps(keys), dumps(fields),
                 dumps([detection.id])),
            )
            return "new"
        old_keys = set(json.loads(match["event_keys"]))
        old_rules = json.loads(match["rules"])
        old_score = match["score"]
        if score is not None and keys and not old_keys & set(keys):
            total = (old_score or 0) + score  # another part of the episode
        elif score is not None and (old_score is None or score > old_score):
            total = score
        else:
            total = old_score
        joined = detection.id not in old_rules  # another rule sees the episode: the analyst should know
        grew = total != old_score or not set(keys) <= old_keys
        escalated = SEVERITY_RANK.get(severity, 0) > SEVERITY_RANK.get(match["severity"], 0)
        if not grew and not escalated and not joined:
            return "unchanged"
        latest = score is not None and total != old_score  # this candidate says what the incident now is
        after = {"severity": severity if escalated else match["severity"], "score": total,
                 "first_time": min(match["first_time"], first, key=_instant),
                 "last_time": max(match["last_time"], last, key=_instant),
                 "event_keys": sorted(old_keys | set(keys)),
                 "rules": old_rules + [detection.id] if joined else old_rules}
        db.execute(
            """UPDATE incidents SET severity=?, score=?, first_time=?, last_time=?, updated_at=?, updates=updates+1,
               message=?, event_keys=?, fields=?, rules=? WHERE incident_id=?""",
            (after["severity"], total, after["first_time"], after["last_time"], now.isoformat(),
             message if latest else match["message"], dumps(after["event_keys"]),
             dumps(fields) if latest else match["fields"], dumps(after["rules"]), match["incident_id"]),
        )
        audit.record(state, actor=PIPELINE_ACTOR, now=now, action="update", object_type=INCIDENT,
                     object_id=str(match["incident_id"]),
                     before={"severity": match["severity"], "score": old_score, "last_time": match["last_time"],
                             "risk_events": len(old_keys), "rules": old_rules},
                     after={"rule": detection.id, "severity": after["severity"], "score": total,
                            "last_time": after["last_time"], "risk_events": len(after["event_keys"]),
                            "rules": after["rules"]})
        return "updated"


def _instant(text: str) -> datetime:
    return as_time(text) or datetime.min.replace(tzinfo=timezone.utc)


class RiskEventTimeline:
    """Every stored risk event's time and when it became available, loaded once per risk step."""

    def __init__(self, con: duckdb.DuckDBPyConnection, state: StateStore):
        load_risk_events(con, stored_risk_events(state), "risk_events_all")
        self.pairs = [(t.astimezone(timezone.utc), a.astimezone(timezone.utc)) for t, a in con.execute(
            "SELECT _time, _available FROM risk_events_all ORDER BY _time").fetchall()]
        self.times = [t for t, _ in self.pairs]
        _drop_temp(con, "risk_events")

    @property
    def first(self) -> datetime | None:
        return self.times[0] if self.times else None

    @property
    def last(self) -> datetime | None:
        return self.times[-1] if self.times else None


# Fires per execution of a batched form: its join holds each risk event once per fire of the group
# whose window holds it (up to the group's size for the 7-day rule), so the group's size bounds
# memory, whatever the catch-up's length. On 20,000 synthetic risk events of 3000 users over 90
# days (2,183 evaluated fires per rule), the three rules' step took 7.4-8.6 CPU-s and peaked at
# 297-299 MB in groups of 48, 7.2-8.5 and 317-344 MB of 96, 7.5-9.2 and 402-406 MB of 168 (two
# runs each, alternated; 1.2 GB as one group, and 87 CPU-s, 312 MB fire by fire). At 1000 users x
# 30 days a first run evaluates 38-73 fires per rule: one or two groups.
INCIDENT_GROUP_FIRES = 48


def evaluate_fires(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings, detection: Any,
                   fires: list[datetime], events: RiskEventTimeline,
                   overrides: dict[str, Any] | None = None, catch_up: str = "one-pass") -> CorrelationResult:
    """Run one incident rule at each of `fires`, in order, and store its incidents.

    Each fire sees the risk events in its window whose findings had been detected by then, as it
    would have live. A rule's result depends only on those events, so a fire that sees exactly
    the events of the previous evaluated fire is skipped, and so is a fire that sees none. With a
    batched form (`catch_up.search`, detections/batched.py `correlated_plan`) and `catch_up`
    "one-pass", the candidates of the evaluated fires come from one query per INCIDENT_GROUP_FIRES
    fires; otherwise (the reference, "per-fire") each fire runs its own search. Either way each
    fire's candidates are stored in fire order, as of that fire.
    """
    result = CorrelationResult(detection.id, fires=len(fires))
    previous: tuple[int, ...] | None = None
    evaluated: list[dict[str, Any]] = []
    for fire in fires:
        window = run_window(detection, fire, settings.timezone)
        params = resolve_parameters(detection, settings, overrides or {}, window)
        start, end = data_range(params)
        lo, hi = bisect.bisect_left(events.times, start), bisect.bisect_left(events.times, end)
        seen = tuple(i for i in range(lo, hi) if events.pairs[i][1] <= fire)
        if not seen or seen == previous:
            continue
        previous = seen
        evaluated.append(params)
    result.evaluated = len(evaluated)
    for params, rows in _candidates(con, detection, evaluated, catch_up):
        for row in rows:
            result.candidates += 1
            outcome = upsert_incident(state, detection, row, params["now"], settings.timezone,
                                      str(params.get(QUIET_PERIOD, DEFAULT_QUIET_PERIOD)),
                                      str(params.get(RECURRENCE_PERIOD, DEFAULT_RECURRENCE_PERIOD)))
            result.new += outcome == "new"
            result.updated += outcome == "updated"
    return result


def _candidates(con: duckdb.DuckDBPyConnection, detection: Any, evaluated: list[dict[str, Any]],
                catch_up: str) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each evaluated fire's parameters with its search's rows, in fire order."""
    plan = None
    if catch_up == "one-pass":
        plan, _ = batched_plan(detection, compiled_sql(detection), detection.data_model)
    if plan is None:
        for params in evaluated:
            con.execute(f"CREATE OR REPLACE TEMP VIEW risk_events AS SELECT * FROM risk_events_all "
                        f"WHERE _available <= TIMESTAMPTZ '{params['now'].isoformat()}'")
            yield params, execute(con, detection, params)
        return
    con.execute("CREATE OR REPLACE TEMP VIEW risk_events AS SELECT * FROM risk_events_all")
    for group in batched_groups(plan, evaluated):
        for at in range(0, len(group), INCIDENT_GROUP_FIRES):
            part = [evaluated[i] for i in group[at:at + INCIDENT_GROUP_FIRES]]
            yield from zip(part, batched_rows(con, plan, part))


def decoded_incident(row: Any) -> dict[str, Any]:
    """A stored incident row as a dict, its JSON columns (event_keys, fields) decoded."""
    item = dict(row)
    item["event_keys"] = json.loads(item["event_keys"])
    item["fields"] = json.loads(item["fields"])
    item["rules"] = json.loads(item["rules"])
    return item


def stored_incidents(state: StateStore, where: str = "", params: tuple = ()) -> list[dict[str, Any]]:
    return [decoded_incident(row) for row in
            state.query(f"SELECT * FROM incidents {where} ORDER BY first_time, incident_id", params)]


def forget_incidents(state: StateStore) -> None:
    """Drop every incident (a backtest's copy of the store starts fresh: an incident rule replayed
    alone must raise its own incidents, not continue the ones other rules raised)."""
    with state.transaction() as db:
        db.execute("DELETE FROM incidents")
