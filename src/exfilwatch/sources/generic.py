"""Any CSV or JSON-lines file, mapped to a data model by a mapping file (`--source generic --mapping FILE`).

The mapping file (YAML):

```yaml
model: network_traffic          # network_traffic | authentication | email
format: csv                     # csv (first line is the header) | jsonl (one JSON object per line)
delimiter: ","                  # csv only; default ","
columns:                        # source column -> model field (each field at most once)
  Start Time: _time             # _time is required
  Client: src_ip
  Server: dest_ip
  Sent: bytes_out
  "$.conn.resp_bytes": bytes_in # jsonl: a key, or a JSONPath starting with $
time_format: "%d/%m/%Y %H:%M:%S"  # strptime format, or iso8601 (default), epoch, epoch_ms
timezone: Europe/Berlin         # zone of times without an offset; default --source-tz
list_separator: ";"             # splits text into list fields (email recipient, file_name); default ";"
constants:                      # fields with a fixed value
  event_type: network-connection
```

`event_type` must come from a column or a constant, except for network_traffic where it
defaults to `network-connection`; `source` is `generic` unless a constant says otherwise;
`raw_ref` is always the file and line. A value that does not fit its field's type (a number,
the time) sends the line to quarantine, naming the column, the field and the value. The
generic source is never picked by format detection: pass `--source generic`.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from exfilwatch.config import ConfigError, read_yaml_file, validation_error
from exfilwatch.models import DATA_MODELS, NETWORK_TRAFFIC, DataModel
from exfilwatch.models import ORIGIN
from exfilwatch.sources.base import ParseContext, ParsedBatch, blank_sql, epoch_sql, raw_ref_sql, sql_string
from exfilwatch.sources.flows import csv_fields_sql
from exfilwatch.sources.syslog_header import local_time_sql

MAPPABLE_MODELS = ("network_traffic", "authentication", "email")
DEFAULT_EVENT_TYPE = {"network_traffic": "network-connection"}
SPECIAL_TIME_FORMATS = ("iso8601", "epoch", "epoch_ms")


class Mapping(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    data_model: Literal["network_traffic", "authentication", "email"] = Field(alias="model")
    format: Literal["csv", "jsonl"]
    columns: dict[str, str]
    time_format: str = "iso8601"
    timezone: str | None = None
    delimiter: str = ","
    list_separator: str = ";"
    constants: dict[str, str | int | float | bool | None] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown IANA time zone {value!r} (e.g. UTC, Europe/Berlin)") from None
        return value

    @field_validator("time_format")
    @classmethod
    def _time_format(cls, value: str) -> str:
        if value not in SPECIAL_TIME_FORMATS and "%" not in value:
            raise ValueError(f"expected a strptime format such as '%Y-%m-%d %H:%M:%S', or one of {', '.join(SPECIAL_TIME_FORMATS)}")
        return value

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, value: str) -> str:
        if len(value) != 1 or value in '"\n\r':
            raise ValueError("expected one character (not a quote or a newline)")
        return value

    @field_validator("list_separator")
    @classmethod
    def _list_separator(cls, value: str) -> str:
        if not value:
            raise ValueError("expected at least one character")
        return value

    @model_validator(mode="after")
    def _fields(self) -> "Mapping":
        model = DATA_MODELS[self.data_model]
        known = [name for name in model.column_names if name not in ("raw_ref", ORIGIN[0])]
        errors = []
        seen: dict[str, str] = {}
        for column, field in self.columns.items():
            if field not in known:
                errors.append(f"columns.{column}: unknown field {field!r} of model {model.name} (known: {', '.join(known)})")
            elif field in seen:
                errors.append(f"columns.{column}: field {field!r} is already mapped from column {seen[field]!r}")
            else:
                seen[field] = column
        for field in self.constants:
            if field not in known:
                errors.append(f"constants.{field}: unknown field of model {model.name} (known: {', '.join(known)})")
            elif field in seen:
                errors.append(f"constants.{field}: field is also mapped from column {seen[field]!r}")
        if "_time" not in seen:
            errors.append("columns: no column is mapped to _time (the event time is required)")
        if "event_type" not in seen and "event_type" not in self.constants and self.data_model not in DEFAULT_EVENT_TYPE:
            errors.append(f"constants.event_type: required for model {model.name} unless a column is mapped to event_type")
        if errors:
            raise ValueError("; ".join(errors))
        return self

    @property
    def model(self) -> DataModel:
        return DATA_MODELS[self.data_model]


def load_mapping(path: Path) -> Mapping:
    """Read and validate a mapping file; errors name the file and the key."""
    data = read_yaml_file(path, "mapping file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping (model, format, columns, …) at the top level")
    try:
        return Mapping.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, str(path)) from None


def _json_path(column: str) -> str:
    if column.startswith("$"):
        return column
    return '$."' + column.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(value: Any, typ: str) -> str:
    if value is None:
        return f"CAST(NULL AS {typ})"
    if isinstance(value, bool):
        return f"CAST({'true' if value else 'false'} AS {typ})"
    if typ.endswith("[]"):
        return f"[{sql_string(str(value))}]"
    return f"CAST({sql_string(str(value))} AS {typ})"


class GenericSource:
    name = "generic"
    description = "Any CSV or JSON-lines file with a column mapping file (--source generic --mapping FILE)"
    sample = "(see the mapping file format in exfilwatch/sources/generic.py)"

    def __init__(self) -> None:
        self._model: DataModel = NETWORK_TRAFFIC

    @property
    def data_model(self) -> DataModel:
        """The model of the mapping last loaded by `parse` (ingest asks after parsing each batch)."""
        return self._model

    def sniff(self, head: list[str]) -> bool:
        return False  # only with --source generic

    def parse(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> ParsedBatch:
        if ctx.mapping is None:
            raise ConfigError("the generic source needs a mapping file: pass --mapping FILE")
        mapping = load_mapping(Path(ctx.mapping))
        self._model = mapping.model
        tz = mapping.timezone or ctx.source_tz
        types = dict(mapping.model.columns)
        table = "generic_lines"
        if mapping.format == "csv":
            header_line, names = self._csv_header(ctx, mapping)
            missing = [column for column in mapping.columns if column not in names]
            if missing:
                raise ConfigError(f"{ctx.mapping}: columns {', '.join(repr(m) for m in missing)} are not in the header "
                                  f"of {ctx.origin} (it has: {', '.join(names)})")
            text = {field: f"nullif(trim(f[{names.index(column) + 1}]), '')" for column, field in mapping.columns.items()}
            split = f"SELECT line_no, line, {csv_fields_sql('line', mapping.delimiter)} AS f FROM raw_lines"
            shape_checks = (
                f"WHEN line_no = {header_line} THEN 'header' "
                f"WHEN len(f) <> {len(names)} THEN 'expected {len(names)} fields as in the header, found ' || len(f)"
            )
            skipped = "('header', 'blank line')"
        else:
            text = {}
            for column, field in mapping.columns.items():
                path = sql_string(_json_path(column))
                # json functions see '{}' for lines that are not JSON objects, whatever the evaluation order
                if types[field].endswith("[]"):
                    text[field] = f"json_extract(json_line, {path})"
                else:
                    text[field] = f"nullif(json_extract_string(json_line, {path}), '')"
            split = ("SELECT *, CASE WHEN is_json THEN line ELSE '{}' END AS json_line FROM ("
                     "SELECT line_no, line, coalesce(CASE WHEN json_valid(line) THEN json_type(line) = 'OBJECT' END, false) AS is_json "
                     "FROM raw_lines)")
            shape_checks = "WHEN NOT is_json THEN 'not a JSON object (expected one record per line)'"
            skipped = "('blank line',)"

        values: dict[str, str] = {}
        checks: list[str] = []
        column_of = {field: column for column, field in mapping.columns.items()}
        for field, expr in text.items():
            typ = types[field]
            label = f"column {column_of[field]!r} (field {field})"
            if field == "_time":
                values[field] = self._time_sql(expr, mapping.time_format, tz)
                checks.append(f"WHEN {expr} IS NULL THEN {sql_string(f'missing time in {label}')}")
                checks.append(f"WHEN v__time IS NULL THEN {sql_string(f'bad time in {label}: ')} || {expr} || "
                              f"{sql_string(f' (expected {mapping.time_format})')}")
            elif typ.endswith("[]"):
                if mapping.format == "jsonl":
                    values[field] = (f"CASE WHEN {expr} IS NULL THEN NULL WHEN json_type({expr}) = 'ARRAY' "
                                     f"THEN from_json({expr}, '[\"VARCHAR\"]') "
                                     f"ELSE list_filter(list_transform(string_split(json_extract_string({expr}, '$'), "
                                     f"{sql_string(mapping.list_separator)}), lambda x: trim(x)), lambda x: x <> '') END")
                else:
                    values[field] = (f"list_filter(list_transform(string_split({expr}, {sql_string(mapping.list_separator)}), "
                                     f"lambda x: trim(x)), lambda x: x <> '')")
            elif typ == "VARCHAR":
                values[field] = expr
                if field == "event_type":
                    checks.append(f"WHEN {expr} IS NULL THEN {sql_string(f'missing event type in {label}')}")
            else:
                values[field] = f"TRY_CAST({expr} AS {typ})"
                checks.append(f"WHEN {expr} IS NOT NULL AND v_{field} IS NULL THEN "
                              f"{sql_string(f'bad value in {label}: ')} || {expr} || {sql_string(f' (expected {typ.lower()})')}")
        for field, value in mapping.constants.items():
            values[field] = _literal(value, types[field])
        if "event_type" not in values:
            values["event_type"] = sql_string(DEFAULT_EVENT_TYPE[mapping.data_model])
        if "source" not in values:
            values["source"] = sql_string(self.name)
        computed = ", ".join(f"{expr} AS v_{field}" for field, expr in values.items())
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE {table} AS
            SELECT *, CASE WHEN reason IS NULL THEN 'parsed' WHEN reason IN {skipped} THEN 'skipped'
                           ELSE 'quarantined' END AS outcome
            FROM (
                SELECT *, CASE WHEN {blank_sql()} THEN 'blank line' {shape_checks} {' '.join(checks)} END AS reason
                FROM (SELECT *, {computed} FROM ({split}))
            )
        """)
        selected = []
        for field, typ in mapping.model.columns:
            if field == ORIGIN[0]:  # ingest adds it
                continue
            if field == "raw_ref":
                selected.append(f"{raw_ref_sql(ctx)} AS raw_ref")
            elif field in values:
                selected.append(f'v_{field} AS "{field}"')
            else:
                selected.append(f'CAST(NULL AS {typ}) AS "{field}"')
        return ParsedBatch(
            classified=f"(SELECT line_no, outcome, reason FROM {table})",
            events=f"(SELECT {', '.join(selected)} FROM {table} WHERE outcome = 'parsed')",
        )

    @staticmethod
    def _csv_header(ctx: ParseContext, mapping: Mapping) -> tuple[int, list[str]]:
        for index, line in enumerate(ctx.header_lines):
            if line.strip():
                names = next(csv.reader(io.StringIO(line), delimiter=mapping.delimiter))
                return index + 1, [n.strip() for n in names]
        raise ConfigError(f"{ctx.origin}: empty file, expected a CSV header line")

    @staticmethod
    def _time_sql(expr: str, time_format: str, tz: str) -> str:
        if time_format == "epoch":
            return epoch_sql(f"TRY_CAST({expr} AS DOUBLE)")
        if time_format == "epoch_ms":
            return epoch_sql(f"(TRY_CAST({expr} AS DOUBLE) / 1000.0)")
        if time_format == "iso8601":
            return (f"CASE WHEN regexp_matches({expr}, '(Z|[+-][0-9][0-9]:?[0-9][0-9])$') THEN TRY_CAST({expr} AS TIMESTAMPTZ) "
                    f"ELSE {local_time_sql(f'TRY_CAST({expr} AS TIMESTAMP)', tz)} END")
        if re.search(r"%[zZ]", time_format):
            return f"CAST(try_strptime({expr}, {sql_string(time_format)}) AS TIMESTAMPTZ)"
        return local_time_sql(f"try_strptime({expr}, {sql_string(time_format)})", tz)


__all__ = ["GenericSource", "Mapping", "load_mapping", "MAPPABLE_MODELS"]
