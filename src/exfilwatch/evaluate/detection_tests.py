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

from exfilwatch import pipeline
from exfilwatch.config import Home, parse_settings
from exfilwatch.detections.schema import Detection, DetectionTest
from exfilwatch.events.engine import connect
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.findings.record import Finding
from exfilwatch.findings.store import load_findings_file
from exfilwatch.risk.events import describe_event, stored_risk_events
from exfilwatch.home import open_state
from exfilwatch.timeexpr import parse_time


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
        state = open_state(home)
        techniques: dict[str, list[str]] = {}
        for data in test.data:
            if data.source == "findings":  # hand-built findings, for correlation rules over risk events
                techniques.update(load_findings_file(state, detection.folder / data.file))
                continue
            ingest_paths([detection.folder / data.file], home, settings, data.source)
        con = connect(settings, home.spill_dir)
        try:
            # A correlation rule reads the risk events of the test's findings; any other detection's
            # risk events are the ones its findings produce.
            # The risk step after a correlation rule would add its own findings to the events it read.
            result = pipeline.run(con, state, settings, [detection], now, pipeline.Options(
                mode="once", detections=[detection], overrides=test.set, risk=detection.type != "correlation",
                incident_rules=[], deliver=False, techniques=techniques)).detections[0]
            events = stored_risk_events(state)
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
        detail="; ".join(problems) or "ok", findings=result.findings, risk_event_lines=[describe_event(e) for e in events],
    )


def run_detection_tests(detections: list[Detection]) -> list[TestResult]:
    return [run_detection_test(d, t) for d in detections for t in d.tests]
