"""Detection quality against labelled data: `exfilwatch evaluate --labels labels.csv`.

The session rules are replayed over the home's data one local day at a time (the window a day
of hourly schedule fires covers, with each day's own model window), without storing findings,
and their findings are compared with the labels:

* `labels.csv`: `case_id,detection_id,entity,day,technique,expected,description`, one row per
  case and local day it covers; `entity` is the user; `detection_id` empty = any of the rules
  evaluated, else that rule; `expected` is `fire` (an injected case) or `quiet` (a benign hard
  case). A case is (case_id, entity): one case id may name several users.
* a finding *covers* a label row when it is about that user, from a matching rule, and its
  session overlaps the row's local day.
* an injected case is **found** by a rule when a finding of the rule covers one of its rows; a
  benign case **fired** when one did;
* **unlabelled** findings cover no row at all: reported per 1000 user-sessions judged (the
  closed sessions in the evaluated range), the false-alert rate;
* **precision**: findings that cover a `fire` row / all findings.
"""

from __future__ import annotations

from exfilwatch.errors import ConfigError

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

from exfilwatch.config import Settings
from exfilwatch.findings.catchup import fires_judging, one_pass
from exfilwatch.detections.runner import data_bounds as data_bounds_of
from exfilwatch.detections.runner import data_range
from exfilwatch.features.sessions import build_user_sessions
from exfilwatch.findings.record import Finding
from exfilwatch.findings.store import query_findings
from exfilwatch.detections.schema import Detection
from exfilwatch.events.engine import expose_models, register_lake_views
from exfilwatch.home import open_state
from exfilwatch.state import StateStore

LABEL_COLUMNS = ("case_id", "detection_id", "entity", "day", "technique", "expected", "description")


class LabelError(ConfigError):
    pass


@dataclass(frozen=True)
class Label:
    case_id: str
    detection_id: str  # "" = any rule
    entity: str
    day: date
    expected: str  # fire | quiet
    description: str = ""


def read_labels(path: Path) -> list[Label]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(LABEL_COLUMNS[:6]) - set(reader.fieldnames or [])
        if missing:
            raise LabelError(f"{path}: missing columns {sorted(missing)}; expected {','.join(LABEL_COLUMNS)}")
        labels = []
        for number, row in enumerate(reader, start=2):
            expected = (row["expected"] or "").strip().lower()
            if expected not in ("fire", "quiet"):
                raise LabelError(f"{path}:{number}: expected must be fire or quiet, got {row['expected']!r}")
            try:
                day = date.fromisoformat(row["day"].strip())
            except ValueError:
                raise LabelError(f"{path}:{number}: day {row['day']!r} is not YYYY-MM-DD") from None
            labels.append(Label(row["case_id"].strip(), (row["detection_id"] or "").strip(),
                                row["entity"].strip().lower(), day, expected, row.get("description") or ""))
    return labels


@dataclass
class EvalFinding:
    detection_id: str
    user: str
    session_id: str
    days: tuple[date, ...]  # local days the session overlaps
    value: float | None
    message: str
    fields: dict[str, Any] = field(default_factory=dict)
    record: Finding | None = None  # the finding as a run would store it (replays only)


@dataclass
class RuleQuality:
    rule: str
    findings: int = 0
    true_findings: int = 0  # cover a fire row
    benign_findings: int = 0  # cover a quiet row only
    unlabelled: int = 0
    fire_cases: int = 0
    found: int = 0
    quiet_cases: int = 0
    fired_quiet: int = 0
    sessions: int = 0

    @property
    def unlabelled_per_1000(self) -> float:
        return 1000.0 * self.unlabelled / self.sessions if self.sessions else 0.0

    @property
    def precision(self) -> float | None:
        return self.true_findings / self.findings if self.findings else None

    @property
    def recall(self) -> float | None:
        return self.found / self.fire_cases if self.fire_cases else None

    def row(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "findings": self.findings,
            "cases found": f"{self.found}/{self.fire_cases}",
            "recall": _pct(self.recall),
            "benign fired": f"{self.fired_quiet}/{self.quiet_cases}",
            "unlabelled": self.unlabelled,
            "per 1000 sessions": f"{self.unlabelled_per_1000:.2f}",
            "precision": _pct(self.precision),
        }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


@dataclass
class Evaluation:
    rules: list[RuleQuality]
    overall: RuleQuality
    cases: list[dict[str, Any]]
    findings: list[EvalFinding]
    sessions: int
    start: datetime
    end: datetime
    parameters: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        return [r.row() for r in (*self.rules, self.overall)]


def _local_days(start: datetime, end: datetime, zone: ZoneInfo) -> tuple[date, ...]:
    first = start.astimezone(zone).date()
    # the end is exclusive: a session ending exactly at midnight does not overlap the next day
    last = (end - timedelta(microseconds=1)).astimezone(zone).date() if end > start else first
    return tuple(first + timedelta(days=i) for i in range((last - first).days + 1))


def replay(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings, detections: list[Detection],
           start: datetime, end: datetime, overrides: dict[str, Any] | None = None) -> tuple[list[EvalFinding], int]:
    """Findings of the session rules for the sessions that closed in [start, end), not stored.

    What the hourly schedule would have found fire by fire, computed as the one-pass catch-up
    does (findings/catchup.py): each session is compared with the user's sessions in the model
    window before *that session*, chunk by chunk over the range.
    """
    zone = ZoneInfo(settings.timezone)
    if any(d.data_model == "user_sessions" for d in detections):
        build_user_sessions(con, state, settings, end)
    first = min((t for t in (data_bounds_of(con, state, settings, d.data_model)[0] for d in detections) if t),
                default=None)
    if first is None or first >= end:
        return [], 0
    start = max(start, first)
    out: list[EvalFinding] = []
    sessions = 0
    for index, detection in enumerate(detections):
        params = fires_judging(detection, settings, overrides_for(detection, overrides), start, end)
        if not params:
            continue
        register_lake_views(con, settings, state, min(data_range(p)[0] for p in params), params[-1]["latest"])
        expose_models(con)
        if index == 0 and detection.data_model == "user_sessions":
            sessions = con.execute("SELECT count(*) FROM user_sessions WHERE _time >= $s AND _time < $e",
                                   {"s": start, "e": end}).fetchall()[0][0]
        for _, findings in one_pass(con, detection, params, settings.timezone):
            for finding in findings:
                f = finding.fields
                s_start = datetime.fromisoformat(f["session_start"])
                s_end = datetime.fromisoformat(f["session_end"])
                if not start <= datetime.fromisoformat(finding.time) < end:
                    continue  # judged by a fire whose window only partly overlaps the range
                out.append(EvalFinding(detection.id, finding.entity, finding.bucket,
                                       _local_days(s_start, s_end, zone), finding.value, finding.message, f, finding))
    return out, sessions


def overrides_for(detection: Detection, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Overrides that name a parameter the detection declares (one --set for several rules)."""
    return {k: v for k, v in (overrides or {}).items() if k in detection.parameters}


def score(findings: list[EvalFinding], labels: list[Label], rule_ids: list[str], sessions: int) -> tuple[
        list[RuleQuality], RuleQuality, list[dict[str, Any]]]:
    by_entity_day: dict[tuple[str, date], list[Label]] = defaultdict(list)
    for label in labels:
        by_entity_day[(label.entity, label.day)].append(label)
    cases: dict[tuple[str, str], list[Label]] = defaultdict(list)
    for label in labels:
        cases[(label.case_id, label.entity)].append(label)

    def applies(label: Label, rule: str) -> bool:
        return label.detection_id in ("", rule)

    def covered(finding: EvalFinding) -> list[Label]:
        return [label for day in finding.days for label in by_entity_day.get((finding.user, day), [])
                if applies(label, finding.detection_id)]

    covering = [(f, covered(f)) for f in findings]
    qualities = []
    for rule in [*rule_ids, None]:
        q = RuleQuality(rule=rule or "any rule", sessions=sessions)
        mine = [(f, c) for f, c in covering if rule is None or f.detection_id == rule]
        q.findings = len(mine)
        q.true_findings = sum(1 for _, c in mine if any(lab.expected == "fire" for lab in c))
        q.benign_findings = sum(1 for _, c in mine if c and all(lab.expected == "quiet" for lab in c))
        q.unlabelled = sum(1 for _, c in mine if not c)
        for (case_id, entity), rows in cases.items():
            relevant = [r for r in rows if rule is None or applies(r, rule)]
            if not relevant:
                continue
            hit = any(lab in c for _, c in mine for lab in relevant)
            if relevant[0].expected == "fire":
                q.fire_cases += 1
                q.found += hit
            else:
                q.quiet_cases += 1
                q.fired_quiet += hit
        qualities.append(q)
    outcome = []
    for (case_id, entity), rows in sorted(cases.items()):
        rules_hit = sorted({f.detection_id for f, c in covering if any(lab in c for lab in rows)})
        first_hit = min((d for f, c in covering for lab in c if lab in rows for d in [lab.day]), default=None)
        expected = rows[0].expected
        outcome.append({
            "case": case_id, "user": entity, "expected": expected,
            "days": f"{min(r.day for r in rows)}..{max(r.day for r in rows)} ({len(rows)})",
            "outcome": ("found" if rules_hit else "MISSED") if expected == "fire" else ("FIRED" if rules_hit else "quiet"),
            "first day hit": str(first_hit) if first_hit else "-",
            "rules": ", ".join(rules_hit) or "-",
        })
    return qualities[:-1], qualities[-1], outcome


def evaluate(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings, detections: list[Detection],
             labels: list[Label], start: datetime, end: datetime,
             overrides: dict[str, Any] | None = None) -> Evaluation:
    findings, sessions = replay(con, state, settings, detections, start, end, overrides)
    rules, overall, cases = score(findings, labels, [d.id for d in detections], sessions)
    return Evaluation(rules, overall, cases, findings, sessions, start, end, dict(overrides or {}))


def data_bounds(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings) -> tuple[datetime, datetime] | None:
    """The first and last event time of the mail and VPN data."""
    register_lake_views(con, settings, state)
    row = con.execute("""
        SELECT min(t0), max(t1) FROM (
            SELECT min(_time) AS t0, max(_time) AS t1 FROM lake.email
            UNION ALL SELECT min(_time), max(_time) FROM lake.authentication)
    """).fetchall()[0]
    if row[0] is None:
        return None
    return row[0].astimezone(timezone.utc), row[1].astimezone(timezone.utc)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def evaluate_command(home, settings: Settings, detections: list[Detection], labels_path: Path, methods: list[str],
                     overrides: dict[str, Any], since: str | None, until: str | None, show_cases: bool, fmt: str,
                     console=None) -> str:
    """What `exfilwatch evaluate` prints: one evaluation per method (or one with the defaults)."""
    import json

    from exfilwatch.events.engine import connect
    from exfilwatch.outputs.formats import print_table
    from exfilwatch.timeexpr import parse_time

    if fmt not in ("table", "jsonl", "markdown"):
        raise LabelError(f"--format {fmt!r}: expected table, jsonl or markdown")
    labels = read_labels(labels_path)
    state = open_state(home)
    con = connect(settings, home.spill_dir)
    try:
        bounds = data_bounds(con, state, settings)
        if bounds is None:
            raise LabelError("no mail or VPN data in this home: ingest the logs first")
        zone = ZoneInfo(settings.timezone)
        anchor = bounds[1]
        start = parse_time(since, anchor, settings.timezone) if since else bounds[0]
        if until:
            end = parse_time(until, anchor, settings.timezone)
        else:
            last = bounds[1].astimezone(zone).date() + timedelta(days=1)
            end = datetime(last.year, last.month, last.day, tzinfo=zone).astimezone(timezone.utc)
        out: list[str] = []
        for method in methods or [None]:
            params = dict(overrides)
            if method:
                params["method"] = method
            result = evaluate(con, state, settings, detections, labels, start, end, params)
            title = (f"method {method}" if method else "default parameters") + (
                f" ({', '.join(f'{k}={v}' for k, v in overrides.items())})" if overrides else "")
            header = (f"{title}: {result.sessions} user-sessions closed {start:%Y-%m-%d} .. {end:%Y-%m-%d}, "
                      f"{len(labels)} label rows")
            if fmt == "jsonl":
                out.append(json.dumps({"method": method, "parameters": params, "sessions": result.sessions,
                                       "rules": result.table(), "cases": result.cases}) + "\n")
            elif fmt == "markdown":
                out.append(f"**{header}**\n\n" + markdown_table(result.table()) + "\n")
                if show_cases:
                    out.append(markdown_table(result.cases) + "\n")
            else:
                console.print(header)
                print_table(console, title, result.table(), list(result.table()[0]))
                if show_cases:
                    print_table(console, "labelled cases", result.cases, list(result.cases[0]) if result.cases else ["case"])
        return "".join(out)
    finally:
        con.close()
        state.close()


def stored_session_findings(state: StateStore, rule_ids: list[str], tz: str) -> list[EvalFinding]:
    """The stored findings of the session rules, with the local days their sessions overlap."""
    zone = ZoneInfo(tz)
    if not rule_ids:
        return []
    out = []
    for row in query_findings(state, rule_ids, suppressed=None):
        fields = row["fields"]
        start = datetime.fromisoformat(fields["session_start"])
        end = datetime.fromisoformat(fields["session_end"])
        out.append(EvalFinding(row["detection_id"], row["entity"], row["bucket"], _local_days(start, end, zone),
                               row["value"], row["message"], fields))
    return out


def check_stored(labels_path: Path, state: StateStore, settings: Settings, rule_ids: list[str]
                 ) -> tuple[list[dict[str, Any]], RuleQuality]:
    """Each labelled case of the session rules with what the stored findings did about it."""
    labels = [label for label in read_labels(labels_path) if label.detection_id in ("", *rule_ids)]
    findings = stored_session_findings(state, rule_ids, settings.timezone)
    _rules, overall, cases = score(findings, labels, rule_ids, 0)
    return cases, overall


def check_labels(labels: Path, state: StateStore, tz: str) -> list[dict[str, str]]:
    """Each labelled case with what happened to it: found, missed, quiet or fired."""
    zone = ZoneInfo(tz)
    found = set()
    for row in query_findings(state, suppressed=None):
        try:
            day = datetime.fromisoformat(row["bucket"]).astimezone(zone).date().isoformat()
        except ValueError:  # a session id: the session rules are checked by evaluate.check_stored
            continue
        found.add((row["detection_id"], row["entity"], day))
    results = []
    with open(labels, newline="") as handle:
        for label in csv.DictReader(handle):
            fired = (label["detection_id"], label["entity"], label["day"]) in found
            expected = label["expected"] == "fire"
            outcome = ("found" if fired else "MISSED") if expected else ("FIRED" if fired else "quiet")
            results.append({**label, "outcome": outcome, "ok": "yes" if fired == expected else "NO"})
    return results
