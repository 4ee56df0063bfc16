"""The bare-engine reference for the source benchmarks: what DuckDB itself does with the same lines.

`bare_parse(path, pattern, threads)` reads a log file as whole lines (`read_csv` with no
delimiter, quote or header), extracts `pattern`'s named groups with one `regexp_extract` per
line, and writes the struct to Parquet with zstd (level 1, as the lake does), in one `COPY`:
no line shapes, no message kinds, no time zones, no quarantine, no state commit. A parser's
lines/s as a share of this one's is how close it gets to the engine's limit (issue 13 aims at
60 %). The pattern is each benchmark's own Python reference regex for the line, so both
references extract the same fields.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def bare_parse(path: Path, pattern: str, threads: int) -> tuple[int, int]:
    """Lines read and lines the pattern matched; the Parquet file is written and removed."""
    import duckdb

    names = list(re.compile(pattern).groupindex)
    listed = ", ".join(_sql_string(n) for n in names)
    with tempfile.TemporaryDirectory(prefix="bench-bare-") as tmp:
        out = Path(tmp) / "bare.parquet"
        con = duckdb.connect()
        con.execute(f"SET threads = {int(threads)}")
        con.execute("SET enable_progress_bar = false")
        con.execute(f"""
            COPY (SELECT regexp_extract(line, {_sql_string(pattern)}, [{listed}]) AS fields
                  FROM read_csv({_sql_string(str(path))}, columns = {{'line': 'VARCHAR'}}, delim = '', quote = '',
                                escape = '', header = false, auto_detect = false, strict_mode = false))
            TO {_sql_string(str(out))} (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1)
        """)
        first = names[0]
        lines, matched = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE fields.{first} <> '') FROM read_parquet({_sql_string(str(out))})"
        ).fetchall()[0]
        con.close()
    return lines, matched
