"""What a log source is: how it recognises its files and how DuckDB turns its lines into events.

Ingest (`events.ingest.ingest_lines`) hands a source a DuckDB relation
`raw_lines(line_no BIGINT, line VARCHAR)` (one row per line, newline stripped) and a
`ParseContext`; lines may come from a file or a network receiver, and a source does no I/O:
what it keeps between batches goes through `ctx.state` (sources/state.py). The source answers with
two relations: `classified` — exactly one row per input line with `outcome` one of
`parsed`, `skipped` (known but irrelevant: headers, other event kinds; `reason` says which
kind) or `quarantined` (`reason` says what was expected) — and `events`, the data-model rows.
Parsing is SQL (regexp_extract with named groups, string_split, json functions), never a
Python loop over lines.

Lines exported from Splunk as JSON (`{"preview":false,"result":{"_raw":"…"}}`) reach every source
as the original lines they wrap: ingest unwraps them (`unwrap_splunk_export_sql`), and format
detection and the header lines see them unwrapped too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import duckdb

from exfilwatch.config import Settings
from exfilwatch.models import DataModel
from exfilwatch.sources.state import SourceState


@dataclass(frozen=True)
class ParseContext:
    """What a source knows about a batch of lines besides the lines themselves.

    Nothing here assumes a file: a cursor (events/) says where the lines came from and
    provides the header lines and the reference time; the user's options give the rest.
    """

    origin: str  # where the lines came from, as shown in raw_ref and messages: a file, `syslog:udp/127.0.0.1:5514`
    settings: Settings
    # Lines of several origins in one batch (a listener's lines from many peers, parsed in one
    # pass): the first line_no of each origin's run of lines, in line order, and its name. A line's
    # raw_ref then names its own origin and its number among that origin's lines; empty: every
    # line is of `origin`, numbered by line_no.
    line_origins: Sequence[tuple[int, str]] = ()
    # Lines that declare a format's columns (Exchange `#Fields:`, Zeek `#fields`, a CSV header):
    # a file's first lines; the header lines a receiver saw.
    header_lines: Sequence[str] = ()
    source_tz: str = "UTC"  # zone of timestamps written in local time
    year: int | None = None  # for syslog timestamps without a year
    # When the lines were written (a file's mtime, a receiver's reception time), when `year`
    # came from it: December lines written in January are of the year before.
    reference_time: datetime | None = None
    state: SourceState | None = None  # what the source remembers between batches; None: nothing
    mapping: Path | None = None  # the generic source's column mapping file (--mapping)


@dataclass(frozen=True)
class ParsedBatch:
    classified: str  # relation: line_no, outcome, reason
    events: str  # relation with the data model's columns
    notes: list[str] = field(default_factory=list)  # things the user should know (e.g. missing joins)
    # Some parsed line's time was written without a zone (read in `ParseContext.source_tz`), or
    # without a year (dated in `ParseContext.year`): ingest says what it assumed, per file.
    zoneless_times: bool = False
    yearless_times: bool = False


class Source(Protocol):
    name: str
    data_model: DataModel
    description: str
    sample: str

    def sniff(self, head: list[str]) -> bool:
        """True when these first lines (of a file, or a receiver's first lines) are in this format."""

    def parse(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> ParsedBatch:
        """Parse the relation `raw_lines` into a ParsedBatch."""


# A Splunk search exported as JSON (`splunk search ... -output json`, the REST export endpoint, the
# UI's "Export results" as JSON): one object per event, the original line in `result._raw`.
SPLUNK_EXPORT_PREFIX = '{"preview":'


def unwrap_splunk_export(line: str) -> str:
    """The original log line of a line of a Splunk JSON export; any other line as it is."""
    if not line.startswith(SPLUNK_EXPORT_PREFIX):
        return line
    try:
        raw = json.loads(line).get("result", {}).get("_raw")
    except (ValueError, AttributeError):
        return line
    return raw if isinstance(raw, str) else line


def unwrap_splunk_export_sql(line: str) -> str:
    """SQL: `unwrap_splunk_export` for a column of lines (a cheap prefix test first)."""
    return (f"CASE WHEN starts_with({line}, {sql_string(SPLUNK_EXPORT_PREFIX)}) AND json_valid({line}) "
            f"THEN coalesce(json_extract_string({line}, '$.result._raw'), {line}) ELSE {line} END")


def sql_string(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def blank_sql(line: str = "line") -> str:
    """SQL: the line is empty or only white space.

    `trim` copies the line, and DuckDB evaluates both sides of an AND in a select list, so it is
    only reached through a CASE branch, for lines that start with white space."""
    return (f"(CASE WHEN {line} = '' THEN true WHEN starts_with({line}, ' ') OR starts_with({line}, chr(9)) "
            f"OR starts_with({line}, chr(13)) THEN trim({line}) = '' ELSE false END)")


def raw_ref_sql(ctx: ParseContext, line_no: str = "line_no") -> str:
    """SQL: `<origin>:<line>` of the line numbered `line_no` (see `ParseContext.line_origins`)."""
    name, number = line_origin_sql(ctx, line_no)
    return f"{name} || ':' || CAST({number} AS VARCHAR)"


def line_origin_sql(ctx: ParseContext, line_no: str = "line_no") -> tuple[str, str]:
    """SQL: the origin of the line numbered `line_no`, and its number among that origin's lines.

    With several origins a line's run is found by a balanced tree of comparisons, so a batch from
    hundreds of peers costs each row a handful of them, not one per peer."""
    runs = list(ctx.line_origins)
    if not runs:
        return sql_string(ctx.origin), line_no

    def pick(low: int, high: int, leaf) -> str:
        if high - low == 1:
            return leaf(*runs[low])
        middle = (low + high) // 2
        return (f"CASE WHEN {line_no} < {runs[middle][0]} THEN {pick(low, middle, leaf)} "
                f"ELSE {pick(middle, high, leaf)} END")

    return (pick(0, len(runs), lambda first, name: sql_string(name)),
            pick(0, len(runs), lambda first, name: f"({line_no} - {first - 1})"))


def epoch_sql(seconds: str) -> str:
    """SQL: epoch seconds (a DOUBLE) as TIMESTAMPTZ; null for NaN, infinities and times outside
    years 1–9999, where to_timestamp would fail the whole batch instead of one line."""
    return f"CASE WHEN {seconds} BETWEEN -62135596800 AND 253402300799 THEN to_timestamp({seconds}) END"


def epoch_seconds_sql(expr: str) -> str:
    """SQL: epoch seconds written as text (or a number) as TIMESTAMPTZ, null when not a usable time."""
    return epoch_sql(f"TRY_CAST({expr} AS DOUBLE)")
