"""A batch is written to the lake as the partitioned COPY writes it, whichever way is taken: one
COPY per UTC day for a batch of a few days, the partitioned COPY otherwise (many days, times
before 1970 or without a value) — the same files per day, the same rows in each."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from exfilwatch.events.lake import DAYS_BY_RANGE, write_batch
from exfilwatch.models import NETWORK_TRAFFIC

DAY_US = 86_400_000_000
# instants near the epoch (both sides of it), in a few days of 2026, and over many days
TIMES = st.one_of(st.integers(-3 * DAY_US, 3 * DAY_US), st.integers(20_515 * DAY_US, 20_518 * DAY_US),
                  st.integers(20_000 * DAY_US, 20_000 * DAY_US + 3 * DAYS_BY_RANGE * DAY_US))


def stored(files: list, lake: Path) -> dict[str, list[tuple]]:
    """Per partition folder (`day=…`), the file names without the attempt and the rows, sorted."""
    by_day: dict[str, list[tuple]] = {}
    for file in files:
        path = Path(file.path)
        assert path.parent.parent == lake / NETWORK_TRAFFIC.name
        if file.day is not None:
            assert path.parent.name == f"day={file.day}"
        rows = duckdb.sql(f"SELECT * FROM read_parquet('{path}', hive_partitioning = false)").fetchall()
        assert len(rows) == file.rows
        by_day.setdefault(path.parent.name, []).extend(rows)
    return {day: sorted(rows, key=repr) for day, rows in by_day.items()}


class Recorded:
    """A connection that keeps the statements it ran."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con, self.statements = con, []

    def execute(self, sql: str, *args):
        self.statements.append(sql)
        return self.con.execute(sql, *args)


def write(tmp_path: Path, name: str, times: list[int | None], by_day: bool, zone: str = "UTC",
          statements: list[str] | None = None) -> tuple[list, Path]:
    con = duckdb.connect()
    con.execute(f"SET TimeZone = '{zone}'")
    rows = pa.table({"us": pa.array(times, pa.int64()), "n": pa.array(range(len(times)), pa.int64())})
    con.register("rows_arrow", rows)
    columns = ", ".join("make_timestamptz(us) AS _time" if name == "_time" else
                        "CAST(n AS VARCHAR) AS src_ip" if name == "src_ip" else f"NULL AS \"{name}\""
                        for name, _ in NETWORK_TRAFFIC.columns)
    con.execute(f"CREATE TABLE flows AS SELECT {columns} FROM rows_arrow")
    lake = tmp_path / name
    recorded = Recorded(con)
    files = write_batch(recorded, lake, NETWORK_TRAFFIC, "batch-1", "(SELECT * FROM flows)", by_day=by_day)
    con.close()
    if statements is not None:
        statements.extend(recorded.statements)
    return files, lake


@settings(max_examples=60, deadline=None)
@given(times=st.lists(TIMES, max_size=40),
       nulls=st.integers(0, 2), zone=st.sampled_from(["UTC", "Europe/Berlin", "America/St_Johns"]))
def test_a_batch_is_written_as_the_partitioned_copy_writes_it(tmp_path_factory, times, nulls, zone):
    tmp_path = tmp_path_factory.mktemp("lake")
    times = times + [None] * nulls  # a row without a time: its own partition, as the partitioned COPY makes it
    files, lake = write(tmp_path, "by-day", times, by_day=True, zone=zone)
    reference, reference_lake = write(tmp_path, "partitioned", times, by_day=False, zone=zone)
    assert stored(files, lake) == stored(reference, reference_lake)
    assert sorted(Path(f.path).name.split("_")[-1] for f in files) == sorted(
        Path(f.path).name.split("_")[-1] for f in reference)
    assert not (lake / ".staging" / "batch-1").exists()


def test_a_batch_of_two_days_is_written_one_copy_per_day(tmp_path):
    times = [20_515 * DAY_US + 5, 20_515 * DAY_US + DAY_US - 1, 20_516 * DAY_US]
    statements: list[str] = []
    files, _ = write(tmp_path, "two-days", times, by_day=True, statements=statements)
    assert sorted((f.day, f.rows) for f in files) == [("2026-03-03", 2), ("2026-03-04", 1)]
    copies = [sql for sql in statements if "COPY" in sql]
    assert len(copies) == 2 and not any("PARTITION_BY" in sql for sql in copies)
