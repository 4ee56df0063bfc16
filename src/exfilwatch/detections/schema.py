"""The detection file format: one YAML document per detection, validated with pydantic.

A detection is data. `search` is DuckDB SQL over the data-model views with named parameters
(`$deviation_threshold`); the runner supplies the declared parameters and the run's time
parameters (`$now`, `$earliest`, `$latest`, `$today`, `$timezone`). `filter` is an SQL
condition over the search's output that drops findings (the seed's empty `_filter` macro).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from exfilwatch.config import ConfigError, read_yaml_file, validation_error
from exfilwatch.timeexpr import TimeModifierError, relative_time

TIME_PARAMETERS = ("now", "earliest", "latest", "today", "timezone")
# An incident rule's parameter that the incident step reads, not its SQL: how long an entity must be
# quiet before its next candidate is a new incident (incidents/correlation.py). A time offset
# without its sign, as in a schedule: 4d, 36h.
QUIET_PERIOD = "quiet_period"
# Its companion: how long the same signal (risk events of detections the open incident already
# holds) may pause and still continue the incident.
RECURRENCE_PERIOD = "recurrence_period"
EPISODE_PERIODS = (QUIET_PERIOD, RECURRENCE_PERIOD)


def quiet_period_problem(value: object, name: str = QUIET_PERIOD) -> str | None:
    """Why `value` cannot be a quiet (or recurrence) period, or None when it can."""
    try:
        relative_time(datetime(2026, 1, 1, tzinfo=timezone.utc), f"-{value}", "UTC")
    except TimeModifierError as exc:
        return f"{name} {value!r} is not a time offset such as 36h or 4d ({exc})"
    return None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Parameter(Strict):
    default: Any
    type: Literal["number", "integer", "string", "time", "boolean"] = "number"
    description: str = ""


class Schedule(Strict):
    cron: str = "0 * * * *"
    earliest: str = "-70m@m"
    latest: str = "-10m@m"
    # The time parameter from which a finding needs a row (`today`: the judged day; `earliest`:
    # the judged sessions). A catch-up skips the fires with no row in [judged_from, latest):
    # they can find nothing, whatever the history before says. None: every row in the window counts.
    judged_from: str | None = None


class CatchUp(Strict):
    # The search's findings for a group of fires in one query, reading the table `fires` (one row
    # per fire) and returning the search's columns with `fire` first: the contract is in
    # detections/batched.py, which `exfilwatch detections lint` checks.
    search: str


class RiskObject(Strict):
    field: str
    type: Literal["user", "system", "other"]
    score: float | None = None  # else impact x confidence / 100
    # an output column multiplying `score` per finding (a score that grows with how abnormal the
    # value is, as Splunk RBA's risk_score field), up to 100, the top of the risk score scale; a
    # missing or non-numeric value counts as 1
    score_factor: str | None = None


class Risk(Strict):
    message: str
    impact: int = Field(default=50, ge=0, le=100)
    confidence: int = Field(default=50, ge=0, le=100)
    objects: list[RiskObject]

    def score_of(self, obj: RiskObject, fields: dict[str, Any] | None = None) -> float:
        base = obj.score if obj.score is not None else self.impact * self.confidence / 100
        factor = (fields or {}).get(obj.score_factor) if obj.score_factor else None
        if isinstance(factor, (int, float)) and not isinstance(factor, bool):
            return round(min(base * factor, max(base, 100.0)), 2)
        return base


class FindingKey(Strict):
    """Which output columns identify a finding (entity, bucket) and measure it (value)."""

    entity: str
    time: str = "_time"
    value: str | None = None
    bucket: str | None = None  # what a finding is about besides its entity (a session id); default: `time`


class Tags(Strict):
    mitre_attack_id: list[str] = Field(default_factory=list)
    kill_chain_phases: list[str] = Field(default_factory=list)
    nist: list[str] = Field(default_factory=list)
    cis: list[str] = Field(default_factory=list)
    analytic_story: list[str] = Field(default_factory=list)
    threat_actors: list[str] = Field(default_factory=list)
    asset_type: str | None = None
    security_domain: str | None = None


class TestData(Strict):
    file: str  # relative to the detection's folder
    source: str | None = None  # else detected from the file


class ExpectedFinding(Strict):
    entity: str
    fields: dict[str, Any] = Field(default_factory=dict)  # output columns that must match


class DetectionTest(Strict):
    name: str
    kind: Literal["positive", "negative"]
    now: str
    config: dict[str, Any] = Field(default_factory=dict)  # settings for this test (timezone, assets)
    set: dict[str, Any] = Field(default_factory=dict)  # parameter overrides
    data: list[TestData]
    expect: list[ExpectedFinding] = Field(default_factory=list)

    @model_validator(mode="after")
    def _negative_expects_nothing(self) -> "DetectionTest":
        if self.kind == "negative" and self.expect:
            raise ValueError("a negative test expects no findings")
        if self.kind == "positive" and not self.expect:
            raise ValueError("a positive test must name the findings it expects")
        return self


class Detection(Strict):
    id: str = Field(pattern=r"^[a-z0-9_]+$")
    name: str
    version: int = 1
    status: Literal["production", "experimental", "deprecated"]
    type: Literal["anomaly", "ttp", "hunting", "correlation"]
    description: str
    data_model: str
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    search: str
    filter: str = ""
    schedule: Schedule = Field(default_factory=Schedule)
    catch_up: CatchUp | None = None
    finding: FindingKey
    risk: Risk
    tags: Tags = Field(default_factory=Tags)
    how_to_implement: str = ""
    known_false_positives: str = ""
    references: list[str] = Field(default_factory=list)
    tests: list[DetectionTest] = Field(default_factory=list)
    # Engines the search is written for: "spark" means it keeps to the SQL that SQLGlot carries
    # over to Spark, which tests/test_spark_conformance.py checks on the detection's own tests.
    engines: list[Literal["duckdb", "spark"]] = Field(default_factory=lambda: ["duckdb"])

    # Where the file was loaded from: test data paths are relative to its folder.
    folder: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _parameters_do_not_shadow_time(self) -> "Detection":
        clash = set(self.parameters) & set(TIME_PARAMETERS)
        if clash:
            raise ValueError(f"parameters {sorted(clash)} clash with the run's time parameters")
        return self

    def risk_message(self, row: dict[str, Any]) -> str:
        return fill_template(self.risk.message, row)


_TEMPLATE_FIELD = re.compile(r"\$([A-Za-z_][A-Za-z0-9_.]*)\$")


def template_fields(template: str) -> list[str]:
    return _TEMPLATE_FIELD.findall(template)


def fill_template(template: str, row: dict[str, Any]) -> str:
    return _TEMPLATE_FIELD.sub(lambda m: str(row.get(m.group(1), "")), template)


class DetectionError(ConfigError):
    pass


def load_detection(path: Path) -> Detection:
    try:
        data = read_yaml_file(path, "detection file")
    except ConfigError as exc:
        raise DetectionError(str(exc)) from None
    try:
        detection = Detection.model_validate(data)
    except ValidationError as exc:
        raise DetectionError(str(validation_error(exc, str(path)))) from None
    detection.folder = path.parent
    return detection


def default_detections_dir() -> Path:
    """The shipped detections: package data, so a checkout and an installed wheel read the same files."""
    return Path(__file__).resolve().parents[1] / "content" / "detections"


def detection_files(folder: Path) -> list[Path]:
    """Every `detection.yml` in the folder or below it, in a stable order."""
    return sorted(folder.rglob("detection.yml"))


def catalog_files(user_folders: Sequence[Path] = ()) -> list[Path]:
    """The detection files of the catalog: the shipped ones, then those of each of the user's folders.

    A user folder that does not exist or holds no detection is a mistake worth one line, and so is
    a catalog with no detection at all: a run must never silently run nothing.
    """
    shipped = default_detections_dir()
    files = detection_files(shipped)
    for folder in user_folders:
        if not folder.is_dir():
            raise DetectionError(f"{folder}: detections folder not found")
        found = detection_files(folder)
        if not found:
            raise DetectionError(f"{folder}: no detection.yml in this folder or below it")
        files += found
    if not files:
        raise DetectionError(f"no detections found: the shipped detections are missing from {shipped} "
                             "(reinstall exfilwatch) and no --detections folder was given")
    return files


def load_detections(user_folders: Sequence[Path] = ()) -> dict[str, Detection]:
    """The catalog by id: the shipped detections and the user's (`--detections DIR`, `detections_path:`)."""
    detections: dict[str, Detection] = {}
    for path in catalog_files(user_folders):
        detection = load_detection(path)
        if detection.id in detections:
            other = detections[detection.id].folder
            raise DetectionError(f"{path}: detection id {detection.id!r} is already defined in "
                                 f"{other / path.name if other else 'another file'}")
        detections[detection.id] = detection
    return detections
