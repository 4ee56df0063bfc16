"""Detection tests: each detection's own datasets, run through the real pipeline.

A test ingests its files (in a real log format) into a fresh home with the test's config,
runs the detection at the test's `now`, and compares the findings with the ones it expects:
the same entities, and the named output fields equal. Negative tests expect none.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import risk
from ..config import Home, parse_settings
from ..engine import connect
from ..ingest import ingest_paths
from ..state import StateStore
from ..timeexpr import parse_time
from .runner import Finding, detect_once
from .schema import Detection, DetectionTest


@dataclass
class TestResult:
    detection_id: str
    name: str
    kind: str
    passed: bool
    expected: list[str]
    got: list[str]
    risk_events: int
    detail: str
    findings: list[Finding]
    # the risk events the test's findings produced (for a correlation rule: the ones it read)
    risk_event_lines: list[str] = field(default_factory=list)


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(float(expected), float(actual), rel_tol=1e-9, abs_tol=1e-9)
    return str(expected) == str(actual)


def run_detection_test(detection: Detection, test: DetectionTest) -> TestResult:
    assert detection.folder is not None
    with tempfile.TemporaryDirectory(prefix="exfilwatch-test-") as tmp:
        home = Home(root=Path(tmp), config_path=Path(tmp) / "config.yaml")
        settings = parse_settings(test.config, f"{detection.folder / 'detection.yml'} test {test.name!r} config")
        now = parse_time(test.now, datetime(1970, 1, 1, tzinfo=timezone.utc), settings.timezone)
        state = StateStore(home.state_path)
        techniques = risk.techniques_by_detection([detection])
        for data in test.data:
            if data.source == "findings":  # hand-built findings, for correlation rules over risk events
                techniques.update(risk.load_findings_file(state, detection.folder / data.file))
                continue
            ingest_paths([detection.folder / data.file], home, settings, data.source)
        con = connect(settings, home.spill_dir)
        try:
            if detection.type == "correlation":  # its input: the risk events of the test's findings
                risk.rebuild_risk_events(state, settings, techniques, now)
                events = risk.stored_risk_events(state)
            result = detect_once(con, state, settings, [detection], now, overrides=test.set)[0]
            if detection.type != "correlation":  # its output: the risk events of its findings
                risk.rebuild_risk_events(state, settings, techniques, now)
                events = risk.stored_risk_events(state)
        finally:
            con.close()
            state.close()
    got = {f.entity: f for f in result.findings}
    expected = [e.entity for e in test.expect]
    problems = []
    for entity in sorted(set(expected) - set(got)):
        problems.append(f"missing finding for {entity}")
    for entity in sorted(set(got) - set(expected)):
        problems.append(f"unexpected finding for {entity}")
    for item in test.expect:
        finding = got.get(item.entity)
        if finding is None:
            continue
        for name, value in item.fields.items():
            if not _same(value, finding.fields.get(name)):
                problems.append(f"{item.entity}: {name} = {finding.fields.get(name)!r}, expected {value!r}")
    return TestResult(
        detection_id=detection.id, name=test.name, kind=test.kind, passed=not problems,
        expected=sorted(expected), got=sorted(got), risk_events=len(events),
        detail="; ".join(problems) or "ok", findings=result.findings, risk_event_lines=[risk.describe_event(e) for e in events],
    )


def run_detection_tests(detections: list[Detection]) -> list[TestResult]:
    return [run_detection_test(d, t) for d in detections for t in d.tests]
