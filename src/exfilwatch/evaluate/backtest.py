"""Backtest: replay one detection's schedule over a past range on a copy of the state store.

The copy keeps the lake's committed batches (and risk events, for an incident rule) and drops
the detection's findings and watermark and every incident (incidents are per entity and episode
across rules: a rule replayed alone must raise its own), so the replay starts fresh through the same
pipeline as `run`, and the real store is not touched.
"""

from __future__ import annotations

import re
import sqlite3
import tempfile
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from exfilwatch import pipeline
from exfilwatch.config import Settings
from exfilwatch.detections.schema import Detection
from exfilwatch.events.engine import connect
from exfilwatch.detections.schedule import clear_watermark
from exfilwatch.findings.store import forget_detection, query_findings
from exfilwatch.incidents.correlation import forget_incidents, stored_incidents
from exfilwatch.state import StateStore
from exfilwatch.timeexpr import as_time, parse_time, relative_time


def day_or_time(text: str, now: datetime, tz: str, end: bool) -> datetime:
    value = parse_time(text if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) else text + "T00:00:00", now, tz)
    return relative_time(value, "+1d", tz) if end and re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) else value


def backtest_detection(state: StateStore, settings: Settings, catalog: list[Detection], detection: Detection,
                       start: datetime, end: datetime, overrides: dict[str, Any],
                       progress: pipeline.Progress | None = None) -> dict[str, Any]:
    """Replay one detection's schedule over [start, end) on a copy of the state store.

    The copy keeps the lake's committed batches (and risk events, for a correlation rule) and
    drops the detection's findings and watermark and every incident, so the replay starts fresh and the
    real store is not touched.
    """
    detection_id = detection.id
    source = state
    with tempfile.TemporaryDirectory(prefix="exfilwatch-backtest-") as tmp:
        copy_path = Path(tmp) / "state.sqlite"
        target = sqlite3.connect(copy_path)
        source.conn.backup(target)
        target.close()
        # The copy reads the real home's lake; sessions it derives go to the scratch folder.
        copy = StateStore(copy_path, root=state.root, scratch=Path(tmp))
        forget_detection(copy, detection_id)
        forget_incidents(copy)
        clear_watermark(copy, detection_id)
        con = connect(settings, Path(tmp) / "spill")
        try:
            if detection.type == "correlation":
                pipeline.run(con, copy, settings, catalog, end, pipeline.Options(
                    detections=[], since=start, overrides=overrides, incident_rules=[detection], deliver=False,
                    progress=progress))
                rows = [{"day": r["first_time"], "entity": r["risk_object"], "value": r["score"],
                         "score": r["score"], "time": r["last_time"]}
                        for r in stored_incidents(copy, "WHERE detection_id = ?", (detection_id,))]
            else:
                pipeline.run(con, copy, settings, catalog, end, pipeline.Options(
                    detections=[detection], since=start, overrides=overrides, risk=False, progress=progress))
                rows = [{"entity": r["entity"], "value": r["value"], "score": r["risk_score"], "time": r["time"]}
                        for r in query_findings(copy, [detection_id], suppressed=None)]
        finally:
            con.close()
            copy.close()
    tz = ZoneInfo(settings.timezone)
    days: dict[str, list[dict[str, Any]]] = defaultdict(list)
    entities: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        when = as_time(row["time"])
        if when is not None and not (start <= when < end):
            continue
        day = when.astimezone(tz).date().isoformat() if when else str(row["time"])
        row["day"] = day
        days[day].append(row)
        entities[row["entity"]].append(row)
    per_day = []
    cursor = start.astimezone(tz).date()
    while cursor < end.astimezone(tz).date() or (cursor == end.astimezone(tz).date() and end.astimezone(tz).time() != datetime.min.time()):
        items = days.get(cursor.isoformat(), [])
        per_day.append({"day": cursor.isoformat(), "findings": len(items),
                        "entities": ", ".join(sorted({i["entity"] for i in items})[:8]) + (" …" if len({i["entity"] for i in items}) > 8 else "")})
        cursor += timedelta(days=1)
    per_entity = sorted(
        ({"entity": e, "findings": len(items), "days": ", ".join(sorted({i["day"] for i in items})),
          "max value": max((i["value"] for i in items if i["value"] is not None), default=None),
          "risk": round(sum(i["score"] or 0 for i in items), 2)} for e, items in entities.items()),
        key=lambda r: (-r["findings"], r["entity"]))
    return {"detection": detection_id, "type": detection.type, "from": start.isoformat(), "to": end.isoformat(),
            "overrides": overrides, "findings": sum(len(v) for v in days.values()), "per_day": per_day,
            "per_entity": per_entity}
