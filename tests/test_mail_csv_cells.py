"""The CSV splitter of the mail sources (Exchange tracking, Microsoft 365 traces, CERT): any line
gives the cells an RFC 4180 reading gives, and says "not covered" exactly when that reading
cannot cover the line (an unbalanced or stray quote); hostile content (commas, quotes, the
splitter's own mask characters) comes back unchanged."""

from __future__ import annotations

import csv
import io
import re

import duckdb
from hypothesis import given, settings as hsettings, strategies as st

from exfilwatch.config import parse_settings
from exfilwatch.sources.base import ParseContext
from exfilwatch.sources.mailcommon import csv_cells_sql, csv_covers_sql, install_macros

# The reference: one RFC 4180 cell (quoted with "" escapes, or without any quote) and its comma.
RFC4180_CELL = re.compile(r'("(?:[^"]|"")*"|[^,"]*),')

_con = duckdb.connect()
install_macros(_con, ParseContext(origin="t", header_lines=[], settings=parse_settings({}, "test")))


def _split(line: str) -> tuple[list[str], bool]:
    cells, covered = _con.execute(
        f"SELECT list_transform(cells, lambda c: ew_csv_cell(c)), {csv_covers_sql('cells')} "
        f"FROM (SELECT {csv_cells_sql('$line')} AS cells)", {"line": line}).fetchone()
    return cells, covered


def _reference(line: str) -> tuple[list[str], bool]:
    raw = RFC4180_CELL.findall(line + ",")
    covered = sum(len(c) + 1 for c in raw) == len(line) + 1
    return [c[1:-1].replace('""', '"') if c.startswith('"') else c for c in raw], covered


_hostile = st.text(alphabet=st.sampled_from(['"', ",", "a", " ", "\x01", "\x02", "\x03", "é"]), max_size=40)


@hsettings(max_examples=400, deadline=None)
@given(line=_hostile)
def test_any_line_splits_as_rfc4180_reads_it(line):
    cells, covered = _split(line)
    expected_cells, expected_covered = _reference(line)
    assert covered == expected_covered
    if covered:
        assert cells == expected_cells


@hsettings(max_examples=200, deadline=None)
@given(values=st.lists(_hostile, min_size=1, max_size=8))
def test_cells_written_by_a_csv_writer_come_back_unchanged(values):
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(values)
    assert _split(out.getvalue()) == (values, True)


def test_a_subject_with_commas_and_quotes_is_one_cell():
    line = '2026-11-02T09:01:01Z,"Re: Q4, ""final"" numbers",alice@example.com'
    assert _split(line) == (["2026-11-02T09:01:01Z", 'Re: Q4, "final" numbers', "alice@example.com"], True)
    assert _split('2026-11-02T09:01:01Z,"unterminated, subject,alice@example.com')[1] is False
    assert _split('2026-11-02T09:01:01Z,stray"quote,alice@example.com')[1] is False
