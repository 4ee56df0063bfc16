"""The Pulse Secure, Postfix and Juniper SRX parsers give the rows they gave before issue 13
restructured their SQL: the same events (every column), the same quarantined lines with the
same reasons and the same skipped counts, in one batch and in batches of a few lines.

The lines (tests/parse_golden/, written by tests/make_parse_golden.py) are the three
formats as the benchmarks write them, the repository's fixtures, and those lines damaged (cut
short, a character replaced or removed, white space around them), so most quarantine reasons
and skip kinds are reached.
"""

from __future__ import annotations

import json

import pytest

from .make_parse_golden import CHUNKS, OUT, SOURCES, parse


@pytest.mark.parametrize("chunk", list(CHUNKS))
@pytest.mark.parametrize("source", list(SOURCES))
def test_rows_as_before(source, chunk, tmp_path):
    expected = json.loads((OUT / f"{source}.expected.json").read_text(encoding="utf-8"))[chunk]
    got = json.loads(json.dumps(parse(source, CHUNKS[chunk], tmp_path), sort_keys=True, default=str))
    assert got["skipped"] == expected["skipped"]
    assert got["quarantined"] == expected["quarantined"]
    assert len(got["rows"]) == len(expected["rows"])
    for row, want in zip(got["rows"], expected["rows"]):
        assert row == want
