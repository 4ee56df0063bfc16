"""Detection quality over generated organisations: `exfilwatch evaluate --profiles default,varied
--seeds 1,2,3 --users 300 --days 75`.

For each profile and seed: generate the organisation (synth/org.py; without the network
generator's background flows, which the session rules do not read), ingest its VPN, mail and
flow logs into a fresh home in the work folder, replay the session rules over the whole period
(replay.py: each session judged against its own history, in chunks), store their findings as a
scheduled run would, then run the risk step and the incident rules (`pipeline.run`, no
delivery). Scored against the organisation's labels:

* per rule and over all rules (replay.score): leak cases found, benign cases fired, unlabelled
  findings per 1000 user-sessions;
* incidents: leak cases with an incident, with exactly one, benign cases with an incident,
  incidents per leak case (of the leak cases), and incidents about no labelled case per 1000
  user-sessions. An incident covers a case when it is about the case's user and the local days
  from its first to its last time meet the case's days.

Totals add the counts of every seed of a profile, so a rate is over all of them; the worst seed
is named where one seed alone misses the aim.
"""

from __future__ import annotations

import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from datetime import time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from exfilwatch import pipeline
from exfilwatch.config import Home, load_settings
from exfilwatch.detections.runner import RunWindow, record_run
from exfilwatch.detections.schema import Detection
from exfilwatch.events.engine import connect
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.detections.schedule import iter_fire_times
from exfilwatch.evaluate.replay import EvalFinding, Label, RuleQuality, evaluate, read_labels
from exfilwatch.findings.record import Finding
from exfilwatch.findings.store import store_findings
from exfilwatch.state import StateStore
from exfilwatch.home import writer
from exfilwatch.incidents.correlation import stored_incidents
from exfilwatch.synth.org import generate_organisation

Progress = Callable[[str, int, int], None]
STEPS = ("generate", "ingest", "replay rules", "risk and incidents")


@dataclass
class IncidentQuality:
    leak_cases: int = 0
    leak_with_incident: int = 0
    leak_with_one: int = 0
    leak_incidents: int = 0  # incidents covering leak cases
    benign_cases: int = 0
    benign_with_incident: int = 0
    incidents: int = 0
    unlabelled: int = 0  # incidents covering no case
    sessions: int = 0

    def add(self, other: IncidentQuality) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def row(self) -> dict[str, Any]:
        return {
            "leak cases with an incident": f"{self.leak_with_incident}/{self.leak_cases}",
            "with exactly one": f"{self.leak_with_one}/{self.leak_cases}",
            "incidents per leak case": f"{self.leak_incidents / self.leak_cases:.2f}" if self.leak_cases else "-",
            "benign cases with an incident": f"{self.benign_with_incident}/{self.benign_cases}",
            "incidents": self.incidents,
            "unlabelled incidents per 1000 sessions":
                f"{1000.0 * self.unlabelled / self.sessions:.2f}" if self.sessions else "-",
        }


@dataclass
class OrgResult:
    profile: str
    seed: int
    sessions: int
    rules: list[RuleQuality]
    overall: RuleQuality
    incidents: IncidentQuality
    cases: list[dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)


def _incident_days(incident: dict[str, Any], zone: ZoneInfo) -> set[date]:
    first = datetime.fromisoformat(incident["first_time"]).astimezone(zone).date()
    last = datetime.fromisoformat(incident["last_time"]).astimezone(zone).date()
    return {first + timedelta(days=i) for i in range((last - first).days + 1)}


def score_incidents(incidents: list[dict[str, Any]], labels: list[Label], tz: str, sessions: int
                    ) -> tuple[IncidentQuality, dict[tuple[str, str], int]]:
    """How the incidents meet the labelled cases, and how many incidents cover each case."""
    zone = ZoneInfo(tz)
    cases: dict[tuple[str, str], list[Label]] = defaultdict(list)
    for label in labels:
        cases[(label.case_id, label.entity)].append(label)
    per_case: dict[tuple[str, str], int] = {key: 0 for key in cases}
    q = IncidentQuality(incidents=len(incidents), sessions=sessions)
    for incident in incidents:
        days = _incident_days(incident, zone)
        entity = str(incident["risk_object"]).lower()
        covered = [key for key, rows in cases.items() if key[1] == entity and days & {r.day for r in rows}]
        for key in covered:
            per_case[key] += 1
        q.unlabelled += not covered
    for key, rows in cases.items():
        n = per_case[key]
        if rows[0].expected == "fire":
            q.leak_cases += 1
            q.leak_with_incident += n > 0
            q.leak_with_one += n == 1
            q.leak_incidents += n
        else:
            q.benign_cases += 1
            q.benign_with_incident += n > 0
    return q, per_case


def store_as_scheduled(state: StateStore, tz: str, rules: list[Detection], findings: list[EvalFinding],
                       until: datetime) -> None:
    """Store replayed findings as the hourly schedule would have: each by the rule's first fire at or
    after its time, so the incident rules see its risk events from then on, as they would have live."""
    by_fire: dict[tuple[str, datetime], list[Finding]] = defaultdict(list)
    for finding in findings:
        if finding.record is None:
            continue
        rule = next(d for d in rules if d.id == finding.detection_id)
        when = datetime.fromisoformat(finding.record.time) - timedelta(microseconds=1)
        fire = next(iter_fire_times(rule.schedule.cron, when, until + timedelta(days=1), tz))
        by_fire[(rule.id, fire)].append(finding.record)
    for (rule_id, fire), records in sorted(by_fire.items()):
        rule = next(d for d in rules if d.id == rule_id)
        window = RunWindow(now=fire, earliest=fire - timedelta(hours=1), latest=fire)
        store_findings(state, records, record_run(state, rule, "schedule", window, len(records)))


def evaluate_organisation(folder: Path, catalog: list[Detection], rules: list[Detection], profile: str, seed: int,
                          users: int, days: int, end: date, progress: Progress | None = None) -> OrgResult:
    """Generate, ingest, replay and score one organisation in `folder` (replaced)."""
    seconds: dict[str, float] = {}
    label = f"{profile} seed {seed}"

    def step(index: int) -> float:
        if progress is not None:
            progress(label, index, len(STEPS))
        return time.perf_counter()

    shutil.rmtree(folder, ignore_errors=True)
    t = step(0)
    made = generate_organisation(folder / "logs", users=users, days=days, seed=seed, end=end, network=False,
                                 profile=profile)
    seconds["generate"] = time.perf_counter() - t
    home = Home(root=folder / "home", config_path=made.config)
    settings = load_settings(home)
    t = step(1)
    ingest_paths([made.vpn_log, made.mail_log, made.conn_log], home, settings)
    seconds["ingest"] = time.perf_counter() - t
    labels = read_labels(made.labels)
    zone = ZoneInfo(settings.timezone)
    start = datetime.combine(end - timedelta(days=days - 1), dtime.min, zone).astimezone(timezone.utc)
    stop = datetime.combine(end + timedelta(days=1), dtime.min, zone).astimezone(timezone.utc)
    with writer(home) as state:
        con = connect(settings, home.spill_dir)
        try:
            t = step(2)
            result = evaluate(con, state, settings, rules, labels, start, stop)
            store_as_scheduled(state, settings.timezone, rules, result.findings, stop)
            seconds["replay rules"] = time.perf_counter() - t
            t = step(3)
            pipeline.run(con, state, settings, catalog, stop, pipeline.Options(detections=[], deliver=False))
            seconds["risk and incidents"] = time.perf_counter() - t
            incidents = stored_incidents(state)
        finally:
            con.close()
    step(4)
    quality, per_case = score_incidents(incidents, labels, settings.timezone, result.sessions)
    cases = [{**case, "incidents": per_case.get((case["case"], case["user"]), 0)} for case in result.cases]
    return OrgResult(profile, seed, result.sessions, result.rules, result.overall, quality, cases, seconds)


def evaluate_organisations(work: Path, catalog: list[Detection], rules: list[Detection], profiles: list[str],
                           seeds: list[int], users: int, days: int, end: date,
                           progress: Progress | None = None) -> list[OrgResult]:
    """`evaluate_organisation` for every profile and seed, each in its own folder of `work`."""
    return [evaluate_organisation(work / f"{profile}-seed{seed}", catalog, rules, profile, seed, users, days, end,
                                  progress)
            for profile in profiles for seed in seeds]


def _rate(part: int, whole: int) -> str:
    return f"{part}/{whole}"


def rule_table(results: list[OrgResult]) -> list[dict[str, Any]]:
    """Per profile and rule (and any rule), the counts of every seed added up, and the worst seed's rate."""
    rows = []
    for profile in dict.fromkeys(r.profile for r in results):
        mine = [r for r in results if r.profile == profile]
        names = [q.rule for q in mine[0].rules] + [mine[0].overall.rule]
        for index, name in enumerate(names):
            qs = [(r.rules + [r.overall])[index] for r in mine]
            sessions = sum(q.sessions for q in qs)
            unlabelled = sum(q.unlabelled for q in qs)
            worst = max(qs, key=lambda q: q.unlabelled_per_1000)
            rows.append({
                "profile": profile, "rule": name,
                "leak cases found": _rate(sum(q.found for q in qs), sum(q.fire_cases for q in qs)),
                "benign cases fired": _rate(sum(q.fired_quiet for q in qs), sum(q.quiet_cases for q in qs)),
                "findings": sum(q.findings for q in qs),
                "unlabelled per 1000 sessions": f"{1000.0 * unlabelled / sessions:.2f}" if sessions else "-",
                "worst seed": f"{worst.unlabelled_per_1000:.2f}",
            })
    return rows


def incident_table(results: list[OrgResult]) -> list[dict[str, Any]]:
    """Per profile and seed, then per profile over its seeds: how the incidents meet the cases."""
    rows = []
    for profile in dict.fromkeys(r.profile for r in results):
        total = IncidentQuality()
        for r in (r for r in results if r.profile == profile):
            rows.append({"profile": profile, "seed": str(r.seed), "sessions": r.sessions, **r.incidents.row()})
            total.add(r.incidents)
        rows.append({"profile": profile, "seed": "all", "sessions": total.sessions, **total.row()})
    return rows


def case_table(results: list[OrgResult]) -> list[dict[str, Any]]:
    """Every labelled case of every run that missed the aim: a leak not found or not exactly one incident,
    a benign case fired or with an incident."""
    rows = []
    for r in results:
        for case in r.cases:
            leak = case["expected"] == "fire"
            ok = (case["outcome"] == "found" and case["incidents"] == 1) if leak else (
                case["outcome"] == "quiet" and case["incidents"] == 0)
            if not ok:
                rows.append({"profile": r.profile, "seed": r.seed, "case": case["case"], "user": case["user"],
                             "expected": case["expected"], "outcome": case["outcome"], "rules": case["rules"],
                             "incidents": case["incidents"]})
    return rows


def timing_table(results: list[OrgResult]) -> list[dict[str, Any]]:
    return [{"profile": r.profile, "seed": r.seed, **{k: f"{v:.0f} s" for k, v in r.seconds.items()},
             "total": f"{sum(r.seconds.values()):.0f} s"} for r in results]
