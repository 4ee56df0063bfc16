"""What a log source is: how it recognises its files and how DuckDB turns its lines into events.

The ingest loop hands a source a DuckDB relation `raw_lines(line_no BIGINT, line VARCHAR)`
(one row per physical line, newline stripped) and a `ParseContext`. The source answers with
two relations: `classified` — exactly one row per input line with `outcome` one of
`parsed`, `skipped` (known but irrelevant: headers, other event kinds; `reason` says which
kind) or `quarantined` (`reason` says what was expected) — and `events`, the data-model rows.
Parsing is SQL (regexp_extract with named groups, string_split, json functions), never a
Python loop over lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb

from exfilwatch.config import Settings
from exfilwatch.models import DataModel


@dataclass(frozen=True)
class ParseContext:
    file: str  # as shown in raw_ref and messages
    head: list[str]  # the first lines of the file (headers such as Zeek's #fields)
    settings: Settings
    source_tz: str = "UTC"  # zone of timestamps written in local time
    year: int | None = None  # for syslog timestamps without a year
    reference_time: datetime | None = None  # the file's mtime when `year` came from it (year rollover)
    batch_id: str = ""
    state: Any = None  # the StateStore, for sources that join lines across batches (Postfix)
    mapping: Path | None = None  # the generic source's column mapping file (--mapping)


@dataclass(frozen=True)
class ParsedBatch:
    classified: str  # relation: line_no, outcome, reason
    events: str  # relation with the data model's columns
    notes: list[str] = field(default_factory=list)  # things the user should know (e.g. missing joins)


class Source(Protocol):
    name: str
    data_model: DataModel
    description: str
    sample: str

    def sniff(self, head: list[str]) -> bool:
        """True when the first lines of a file are in this format."""

    def parse(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> ParsedBatch:
        """Parse the relation `raw_lines` into a ParsedBatch."""


def sql_string(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def raw_ref_sql(ctx: ParseContext, line_no: str = "line_no") -> str:
    return f"{sql_string(ctx.file + ':')} || CAST({line_no} AS VARCHAR)"


def epoch_sql(seconds: str) -> str:
    """SQL: epoch seconds (a DOUBLE) as TIMESTAMPTZ; null for NaN, infinities and times outside
    years 1–9999, where to_timestamp would fail the whole batch instead of one line."""
    return f"CASE WHEN {seconds} BETWEEN -62135596800 AND 253402300799 THEN to_timestamp({seconds}) END"


def epoch_seconds_sql(expr: str) -> str:
    """SQL: epoch seconds written as text (or a number) as TIMESTAMPTZ, null when not a usable time."""
    return epoch_sql(f"TRY_CAST({expr} AS DOUBLE)")
