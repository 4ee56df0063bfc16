"""Parameter overrides and disabled detections set in the home (by an admin in the console).

They sit between config.yaml's `detections:` and the command line's `--set`: `effective_settings`
is the settings with the stored overrides laid over config.yaml's, and the pipeline runs with
it, skipping disabled detections in scheduled runs. A value is checked by the same code that
checks config.yaml (`check_configured_detections`), so what the console accepts the pipeline
can run. Each change is recorded in the audit trail with who made it and when.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from exfilwatch import audit
from exfilwatch.config import Settings
from exfilwatch.detections.runner import check_configured_detections
from exfilwatch.detections.schema import Detection
from exfilwatch.errors import UsageError
from exfilwatch.state import StateStore, dumps

OBJECT_TYPE = "detection"


def stored_overrides(state: StateStore) -> dict[str, dict[str, Any]]:
    """detection id -> parameter -> value, as set in the home."""
    out: dict[str, dict[str, Any]] = {}
    for row in state.query("SELECT * FROM detection_overrides ORDER BY detection_id, parameter"):
        out.setdefault(row["detection_id"], {})[row["parameter"]] = json.loads(row["value"])
    return out


def disabled_detections(state: StateStore) -> set[str]:
    return {row["detection_id"] for row in state.query("SELECT detection_id FROM detection_disabled")}


def effective_settings(state: StateStore, settings: Settings) -> Settings:
    """The settings with the home's stored overrides over config.yaml's `detections:`."""
    stored = stored_overrides(state)
    if not stored:
        return settings
    merged = {k: dict(v) for k, v in settings.detections.items()}
    for detection_id, values in stored.items():
        merged.setdefault(detection_id, {}).update(values)
    return settings.model_copy(update={"detections": merged})


def set_override(state: StateStore, settings: Settings, catalog: dict[str, Detection], detection_id: str,
                 parameter: str, value: Any, *, actor: str, now: datetime) -> None:
    """Store one parameter's value for a detection (None: remove the override), checked as config.yaml is."""
    if detection_id not in catalog:
        raise UsageError(f"no detection {detection_id!r}")
    if value is not None:
        check_configured_detections(settings.model_copy(update={"detections": {detection_id: {parameter: value}}}),
                                    catalog, "override")
    before = stored_overrides(state).get(detection_id, {}).get(parameter)
    with state.transaction() as db:
        if value is None:
            db.execute("DELETE FROM detection_overrides WHERE detection_id = ? AND parameter = ?",
                       (detection_id, parameter))
        else:
            db.execute("INSERT INTO detection_overrides VALUES (?,?,?) ON CONFLICT(detection_id, parameter) "
                       "DO UPDATE SET value = excluded.value", (detection_id, parameter, dumps(value)))
        audit.record(state, actor=actor, now=now, action="override" if value is not None else "clear_override",
                     object_type=OBJECT_TYPE, object_id=detection_id,
                     before={parameter: before}, after={parameter: value})


def set_enabled(state: StateStore, catalog: dict[str, Detection], detection_id: str, enabled: bool, *,
                actor: str, now: datetime) -> None:
    """Enable or disable a detection's scheduled runs."""
    if detection_id not in catalog:
        raise UsageError(f"no detection {detection_id!r}")
    was_enabled = detection_id not in disabled_detections(state)
    with state.transaction() as db:
        if enabled:
            db.execute("DELETE FROM detection_disabled WHERE detection_id = ?", (detection_id,))
        else:
            db.execute("INSERT OR IGNORE INTO detection_disabled VALUES (?)", (detection_id,))
        audit.record(state, actor=actor, now=now, action="enable" if enabled else "disable",
                     object_type=OBJECT_TYPE, object_id=detection_id,
                     before={"enabled": was_enabled}, after={"enabled": enabled})
