"""The pipeline as the tests call it: one detection step at a time, through `pipeline.run`.

`detect_once` and `run_schedule` are `pipeline.run` with the options of `exfilwatch detect` and
`exfilwatch run` (detections only); `run_correlations` is the incident rules step alone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from exfilwatch import pipeline


def detect_once(con, state, settings, detections, now: datetime, earliest: str | None = None,
                latest: str | None = None, overrides: dict[str, Any] | None = None,
                store: bool = True, spark: Any = None) -> list[pipeline.DetectionRun]:
    return pipeline.run(con, state, settings, detections, now, pipeline.Options(
        mode="once", detections=detections, earliest=earliest, latest=latest, overrides=overrides or {},
        store=store, risk=False, spark=spark)).detections


def run_schedule(con, state, settings, detections, now: datetime, since: datetime | None = None,
                 overrides: dict[str, Any] | None = None) -> list[pipeline.DetectionRun]:
    return pipeline.run(con, state, settings, detections, now, pipeline.Options(
        detections=detections, since=since, overrides=overrides or {}, risk=False)).detections


run_correlations = pipeline.run_incident_rules
