"""Findings as text for people and programs: rich tables, JSON lines and safe CSV.

Log content reaches these outputs, so CSV cells that a spreadsheet would run as a formula are
neutralised, and table cells are printed as plain text with terminal control characters removed
(neither an ANSI escape nor rich markup such as `[bold]` in a log field takes effect).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def terminal_safe(value: Any) -> str:
    """Text with control characters (ANSI escapes, bidi overrides) shown as '?'."""
    return _CONTROL.sub("?", "" if value is None else str(value))


def csv_safe(value: Any) -> str:
    text = "" if value is None else (json.dumps(value) if isinstance(value, (list, dict)) else str(value))
    if text.startswith(_FORMULA_START):
        return "'" + text
    return text


def to_jsonl(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(record, sort_keys=False, default=str) + "\n" for record in records)


def to_csv(records: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([csv_safe(record.get(column)) for column in columns])
    return buffer.getvalue()


def print_table(console: Console, title: str, records: list[dict[str, Any]], columns: list[str]) -> None:
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for record in records:
        table.add_row(*(Text(terminal_safe(record.get(column))) for column in columns))
    console.print(table)
