"""Zeek logs, TSV (with its #separator/#fields/#types header) and JSON lines: conn.log here.

Shared helpers read the TSV header and build SQL that treats `-` (unset) and `(empty)` as
null, so smtp.log or files.log sources can reuse them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import duckdb

from exfilwatch.errors import SourceError
from exfilwatch.models import NETWORK_TRAFFIC
from exfilwatch.sources.base import ParseContext, ParsedBatch, epoch_seconds_sql, raw_ref_sql, sql_string

CONN_FIELDS = [
    "ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service", "duration",
    "orig_bytes", "resp_bytes", "conn_state", "local_orig", "local_resp", "missed_bytes", "history",
    "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes", "tunnel_parents",
]


@dataclass(frozen=True)
class ZeekHeader:
    separator: str
    fields: list[str]
    path: str | None


def read_zeek_header(head: list[str], default_fields: list[str]) -> ZeekHeader:
    separator, fields, path = "\t", list(default_fields), None
    for line in head:
        if not line.startswith("#"):
            break
        if line.startswith("#separator"):
            token = line.split(" ", 1)[1].strip() if " " in line else "\\x09"
            separator = token.encode().decode("unicode_escape")
        elif line.startswith("#fields"):
            fields = line.split(separator)[1:]
        elif line.startswith("#path"):
            path = line.split(separator)[1] if separator in line else None
    return ZeekHeader(separator=separator, fields=fields, path=path)


def zeek_value(expr: str) -> str:
    """SQL: the Zeek TSV value with unset `-` and `(empty)` as null."""
    return f"nullif(nullif({expr}, '-'), '(empty)')"


def first_data_line(head: list[str]) -> str | None:
    return next((line for line in head if line.strip() and not line.startswith("#")), None)


def is_zeek_tsv(head: list[str], path_name: str, required_field: str) -> bool:
    header = read_zeek_header(head, [])
    if header.path is not None:
        return header.path == path_name
    return required_field in header.fields and "ts" in header.fields


def is_zeek_json(head: list[str], required_keys: set[str]) -> bool:
    line = first_data_line(head)
    if line is None or not line.lstrip().startswith("{"):
        return False
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and required_keys <= record.keys()


# Numeric conn.log fields, cast once per line: the casts serve both validation and the events.
_NUMERIC_FIELDS = {
    "id.orig_p": "INTEGER", "id.resp_p": "INTEGER", "duration": "DOUBLE",
    "orig_bytes": "BIGINT", "resp_bytes": "BIGINT",
}
_REQUIRED_FIELDS = ["id.orig_h", "id.resp_h"]


def _typed(name: str) -> str:
    return f'"{name}:typed"'


def _typed_columns_sql() -> str:
    return ", ".join(f'TRY_CAST("{name}" AS {typ}) AS {_typed(name)}' for name, typ in _NUMERIC_FIELDS.items())


def _validation_sql() -> str:
    """SQL CASE giving the first reason a line's fields are unusable, else null."""
    checks = ["WHEN _time IS NULL THEN 'bad timestamp in field ts: ' || coalesce(ts, 'missing') "
              "|| ' (expected epoch seconds)'"]
    for name in _REQUIRED_FIELDS:
        checks.append(f"WHEN \"{name}\" IS NULL THEN 'missing required field {name}'")
    for name, typ in _NUMERIC_FIELDS.items():
        checks.append(f"WHEN \"{name}\" IS NOT NULL AND {_typed(name)} IS NULL "
                      f"THEN 'bad number in field {name}: ' || \"{name}\" || ' (expected {typ.lower()})'")
        if typ != "DOUBLE":
            checks.append(f"WHEN {_typed(name)} < 0 THEN 'negative number in field {name}: ' || \"{name}\"")
    return "CASE " + " ".join(checks) + " END"


def _conn_events_sql(ctx: ParseContext, table: str, source_name: str) -> str:
    """The CIM mapping of conn.log, shared by the TSV and JSON readers."""
    out, into = _typed("orig_bytes"), _typed("resp_bytes")
    return f"""
        SELECT _time,
               "id.orig_h" AS src_ip,
               {_typed("id.orig_p")} AS src_port,
               "id.resp_h" AS dest_ip,
               {_typed("id.resp_p")} AS dest_port,
               proto AS transport,
               service AS app,
               {into} AS bytes_in,
               {out} AS bytes_out,
               CASE WHEN {out} IS NULL AND {into} IS NULL THEN NULL
                    ELSE coalesce({out}, 0) + coalesce({into}, 0) END AS bytes,
               {_typed("duration")} AS duration,
               uid AS session_id,
               'network-connection' AS event_type,
               {sql_string(source_name)} AS source,
               {raw_ref_sql(ctx)} AS raw_ref
        FROM {table} WHERE outcome = 'parsed'
    """


SOURCE_NAME_TSV = "zeek_conn"
SOURCE_NAME_JSON = "zeek_conn_json"


class ZeekConnTSV:
    name = SOURCE_NAME_TSV
    data_model = NETWORK_TRAFFIC
    description = "Zeek conn.log, TSV with #fields header (plain or gzip)"
    sample = "1761955200.123456\tCa1b2c3d4e5f6g7h8\t10.20.0.15\t51234\t10.10.0.5\t993\ttcp\tssl\t12.5\t1200\t5400000\tSF\tT\tT\t0\tShADadFf\t120\t7440\t3800\t5600000\t(empty)"

    def sniff(self, head: list[str]) -> bool:
        return is_zeek_tsv(head, "conn", "conn_state")

    def parse(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> ParsedBatch:
        header = read_zeek_header(ctx.header_lines, CONN_FIELDS)
        position = {name: index + 1 for index, name in enumerate(header.fields)}
        missing = [name for name in CONN_FIELDS[:11] if name not in position]
        if missing:
            raise SourceError(f"{ctx.origin}: Zeek #fields header lacks {', '.join(missing)}")
        wanted = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service",
                  "duration", "orig_bytes", "resp_bytes"]
        extract = ", ".join(f'{zeek_value(f"f[{position[name]}]")} AS "{name}"' for name in wanted)
        n_fields = len(header.fields)
        sep = sql_string(header.separator)
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE zeek_conn_tsv AS
            WITH split AS (
                SELECT line_no, line = '' AS blank, starts_with(line, '#') AS header,
                       string_split(line, {sep}) AS f
                FROM raw_lines
            ), fields AS (
                SELECT line_no, blank, header, len(f) AS n, {extract} FROM split
            ), typed AS (
                SELECT *, {epoch_seconds_sql('ts')} AS _time, {_typed_columns_sql()} FROM fields
            ), checked AS (
                SELECT *,
                    CASE WHEN blank THEN 'blank line'
                         WHEN header THEN 'header'
                         WHEN n <> {n_fields} THEN 'expected {n_fields} tab-separated fields, found ' || n
                         ELSE {_validation_sql()} END AS reason
                FROM typed
            )
            SELECT * EXCLUDE (blank, header, n),
                CASE WHEN blank OR header THEN 'skipped'
                     WHEN reason IS NOT NULL THEN 'quarantined'
                     ELSE 'parsed' END AS outcome
            FROM checked
            """
        )
        return ParsedBatch(
            classified="(SELECT line_no, outcome, reason FROM zeek_conn_tsv)",
            events=f"({_conn_events_sql(ctx, 'zeek_conn_tsv', self.name)})",
        )


class ZeekConnJSON:
    name = SOURCE_NAME_JSON
    data_model = NETWORK_TRAFFIC
    description = "Zeek conn.log as JSON lines (LogAscii::use_json), epoch or ISO 8601 ts"
    sample = '{"ts":1761955200.123456,"uid":"Ca1b2c3d4e5f6g7h8","id.orig_h":"10.20.0.15","id.orig_p":51234,"id.resp_h":"10.10.0.5","id.resp_p":993,"proto":"tcp","service":"ssl","duration":12.5,"orig_bytes":1200,"resp_bytes":5400000,"conn_state":"SF"}'

    def sniff(self, head: list[str]) -> bool:
        return is_zeek_json(head, {"id.orig_h", "id.resp_h", "proto"}) and any(
            key in (first_data_line(head) or "") for key in ('"conn_state"', '"orig_bytes"', '"history"')
        )

    def parse(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> ParsedBatch:
        wanted = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service",
                  "duration", "orig_bytes", "resp_bytes"]
        extract = ", ".join(
            f"""CASE WHEN is_json THEN json_extract_string(line, '$."{name}"') END AS "{name}\""""
            for name in wanted
        )
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE zeek_conn_json AS
            WITH checked AS (
                SELECT line_no, line, CASE WHEN json_valid(line) THEN json_type(line) = 'OBJECT' ELSE false END AS is_json
                FROM raw_lines
            ), fields AS (
                SELECT line_no, line, is_json, {extract} FROM checked
            ), typed AS (
                SELECT *, coalesce({epoch_seconds_sql('ts')}, TRY_CAST(ts AS TIMESTAMPTZ)) AS _time,
                       {_typed_columns_sql()}
                FROM fields
            )
            SELECT *,
                CASE WHEN trim(line) = '' THEN 'skipped'
                     WHEN reason IS NOT NULL THEN 'quarantined'
                     ELSE 'parsed' END AS outcome
            FROM (
                SELECT *,
                    CASE WHEN trim(line) = '' THEN 'blank line'
                         WHEN NOT is_json THEN 'not a JSON object (expected one Zeek record per line)'
                         ELSE {_validation_sql()} END AS reason
                FROM typed
            )
            """
        )
        return ParsedBatch(
            classified="(SELECT line_no, outcome, reason FROM zeek_conn_json)",
            events=f"({_conn_events_sql(ctx, 'zeek_conn_json', self.name)})",
        )
