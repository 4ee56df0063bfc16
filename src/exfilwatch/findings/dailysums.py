"""Stored daily sums: what a decomposable search (findings/catchup.py `SegmentPlan`) reads of the
days before the ones its fires cut into, kept between runs so an hourly run reads the days it
judges from the lake and the rest of its baseline (30 or 90 days) from here.

A day's sums are the model's rows of one local day that meet the search's own parameter-free
condition, summed (or minimised, maximised) per key, each dated by the day's local midnight.
The catch-up reads them as if they were the rows: every fire that reads such a day compares
`_time` with its parameters only at local midnights there, so every row of the day compares as
its midnight does, and a sum of sums is the sum.

Each day's sums are one Parquet file under `<home>/daily_sums/` (not under `lake/`, whose orphan
sweep keeps only lake batches), recorded in the state store (`daily_sums`, findings/tables.py)
with two hashes: the definition (model, keys, sums, condition, time zone and the inventory and
domains the enriched columns come from) and the signature (the committed lake files of the UTC
partitions the day overlaps). Late rows for a day, `ingest --replace` or a changed inventory
give another hash, and the day is summed again from the lake before it is read. Only the writer
(the run, under the home's lock) reads these files, so a replaced one is deleted at once, and a
run killed while it wrote some leaves files no row names (its staging folder, days renamed but not
recorded): the next write of that definition deletes them first (`remove_orphans`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Iterable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb

from exfilwatch.config import Settings
from exfilwatch.events.engine import local_day_sql
from exfilwatch.events.lake import path_list_sql
from exfilwatch.state import StateStore
from exfilwatch.timeexpr import epoch_us

FOLDER = "daily_sums"
STAGING_PREFIX = "_writing_"  # a write's partitioned COPY, before its files are renamed to their days
DAY = "_day"  # the key every model view carries: the local day of `_time`


def definition_key(model: str, keys: list[str], aggregates: dict[str, str], condition: str | None,
                   settings: Settings) -> str:
    """What a day's sums mean: equal keys, equal sums."""
    described = {
        "model": model, "keys": sorted(keys), "aggregates": aggregates, "condition": condition,
        "timezone": settings.timezone, "internal_domains": sorted(settings.internal_domains),
        "assets": [asset.model_dump() for asset in settings.assets],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:32]


def local_days(start: datetime, end: datetime, tz: str) -> list[tuple[date, datetime, datetime]]:
    """The whole local days inside [start, end): (date, first instant, end), instants in UTC."""
    zone = ZoneInfo(tz)
    day = start.astimezone(zone).date()
    days = []
    while True:
        begin = datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(timezone.utc)
        following = day + timedelta(days=1)
        finish = datetime(following.year, following.month, following.day, tzinfo=zone).astimezone(timezone.utc)
        if finish > end:
            return days
        if begin >= start:
            days.append((day, begin, finish))
        day = following


def midnight_at_or_before(instant: datetime, tz: str) -> datetime:
    zone = ZoneInfo(tz)
    day = instant.astimezone(zone).date()
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(timezone.utc)


def next_midnight(midnight: datetime, tz: str) -> datetime:
    """The local midnight after `midnight` (23, 24 or 25 hours later)."""
    return midnight_at_or_before(midnight + timedelta(hours=36), tz)


def is_midnight(instant: datetime, tz: str) -> bool:
    return midnight_at_or_before(instant, tz) == instant


def signatures(state: StateStore, model: str, days: list[tuple[date, datetime, datetime]]) -> dict[date, str]:
    """Each day's signature: a hash of the committed files of the UTC partitions it overlaps."""
    if not days:
        return {}
    first = days[0][1].date().isoformat()
    last = (days[-1][2] - timedelta(microseconds=1)).date().isoformat()
    by_partition: dict[str, list[str]] = {}
    for row in state.query("SELECT path, day FROM batch_files WHERE model = ? AND day >= ? AND day <= ?",
                           (model, first, last)):
        by_partition.setdefault(row["day"], []).append(row["path"])
    out = {}
    for day, begin, finish in days:
        partitions = _utc_dates(begin, finish)
        paths = sorted(path for partition in partitions for path in by_partition.get(partition, []))
        out[day] = hashlib.sha256("\n".join(paths).encode()).hexdigest()
    return out


def _utc_dates(begin: datetime, finish: datetime) -> list[str]:
    dates, current = [], begin.date()
    while current <= (finish - timedelta(microseconds=1)).date():
        dates.append(current.isoformat())
        current += timedelta(days=1)
    return dates


def stored(state: StateStore, definition: str, days: Iterable[date]) -> dict[date, tuple[str, str]]:
    """(signature, absolute path) of the days stored for `definition`."""
    wanted = {day.isoformat() for day in days}
    return {date.fromisoformat(row["day"]): (row["signature"], state.absolute(row["path"]))
            for row in state.query("SELECT day, signature, path FROM daily_sums WHERE definition = ?", (definition,))
            if row["day"] in wanted}


def write_days(con: duckdb.DuckDBPyConnection, state: StateStore, definition: str, rows: str, keys: list[str],
               aggregates: dict[str, str], types: dict[str, str], days: list[tuple[date, datetime, datetime]],
               signature_of: dict[date, str], tz: str) -> None:
    """Sum the rows of relation `rows` (raw rows of the model, or segment rows) per key and day and
    store each day of `days`, replacing what was stored for it. With a key `_day`, that is each
    row's local day: the model views' day of its `_time` (events/engine.py), or a segment's, that
    of the cut it starts at (no segment spans a local midnight, findings/catchup.py)."""
    if not days:
        return
    folder = state.writes_to / FOLDER / definition
    folder.mkdir(parents=True, exist_ok=True)
    remove_orphans(state, definition)
    # `_day` read, not the local day of `_time` computed again for every row: a time-zone
    # conversion per row took 0.32 of the 0.42 operator-seconds of this statement over the robust
    # and `hosts_receiving…` rules' 423,096 segments at 1000 users x 30 days
    day = '"_day"' if DAY in keys else local_day_sql("_time", tz)
    listed = "".join(f'"{k}", ' for k in keys)
    sums = ", ".join(f'CAST({kind}("{c}") AS {types[c]}) AS "{c}"' for c, kind in aggregates.items())
    con.execute("DROP TABLE IF EXISTS temp.main._daily_sums")
    con.execute(f"CREATE TEMP TABLE _daily_sums AS SELECT {listed}{day} AS _time, {sums} FROM {rows} "
                f"WHERE _time >= $start AND _time < $end GROUP BY ALL",
                {"start": days[0][1], "end": days[-1][2]})
    try:
        written = _write_each_day(con, folder, days)
    finally:
        con.execute("DROP TABLE IF EXISTS temp.main._daily_sums")
    replaced = stored(state, definition, [local for local, _ in written])
    with state.transaction() as db:
        db.executemany(
            "INSERT INTO daily_sums VALUES (?, ?, ?, ?) ON CONFLICT(definition, day) DO UPDATE SET "
            "signature = excluded.signature, path = excluded.path",
            [(definition, local.isoformat(), signature_of[local], state.relative(path)) for local, path in written])
    own = state.writes_to / FOLDER
    for _signature, old in replaced.values():
        if Path(old).is_relative_to(own):  # a copy of the state (backtest) never deletes the home's files
            Path(old).unlink(missing_ok=True)


def remove_orphans(state: StateStore, definition: str) -> int:
    """Delete what a killed run left in the folder of `definition`'s days: staging folders, and
    day files no row of `daily_sums` names (renamed before the run recorded them). How many went.

    Safe under the home's writer lock: only the writer reads or writes these files, and a write
    records its days before it returns."""
    folder = state.writes_to / FOLDER / definition
    if not folder.is_dir():
        return 0
    listed = state.normalised(row["path"] for row in
                              state.query("SELECT path FROM daily_sums WHERE definition = ?", (definition,)))
    removed = 0
    for entry in folder.iterdir():
        if entry.is_dir() and entry.name.startswith(STAGING_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
        elif entry.is_file() and state.relative(entry) not in listed:
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


def _write_each_day(con: duckdb.DuckDBPyConnection, folder: Path, days: list[tuple[date, datetime, datetime]]
                    ) -> list[tuple[date, Path]]:
    """One Parquet file per day of `days` from the temp table `_daily_sums`, each named by its
    local date: one COPY partitioned by the day, whose files are then renamed (a COPY per day cost
    0.10-0.13 CPU-s for 59 days at 1000 users x 30 days, mostly per statement). A day the COPY
    wrote no file for (no row) is a copy of one empty file (a first run stores the 30 days before
    the lake's first as empty days: a COPY each took 0.06 CPU-s at 1000 users x 30 days); one it
    wrote several for (DuckDB splits a partition when it holds too many files open) is written by
    a COPY of its own."""
    staging = folder / f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}"
    con.execute(f"COPY (SELECT *, epoch_us(_time) AS _begin FROM _daily_sums) TO '{_quoted(staging)}' "
                "(FORMAT parquet, COMPRESSION zstd, PARTITION_BY (_begin))")
    empty = staging / "empty.parquet"
    written = []
    try:
        for local, begin, _finish in days:
            path = folder / f"{local.isoformat()}_{uuid.uuid4().hex[:8]}.parquet"
            parts = list((staging / f"_begin={epoch_us(begin)}").glob("*.parquet"))
            if len(parts) == 1:
                parts[0].rename(path)
            elif not parts:
                if not empty.exists():
                    con.execute(f"COPY (SELECT * FROM _daily_sums LIMIT 0) TO '{_quoted(empty)}' "
                                "(FORMAT parquet, COMPRESSION zstd)")
                shutil.copyfile(empty, path)
            else:
                con.execute(f"COPY (SELECT * FROM _daily_sums WHERE _time = $begin) TO '{_quoted(path)}' "
                            "(FORMAT parquet, COMPRESSION zstd)", {"begin": begin})
            written.append((local, path))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")


def read_sql(paths: list[str]) -> str | None:
    """SQL over stored days' files (None when there is none)."""
    if not paths:
        return None
    return f"SELECT * FROM read_parquet({path_list_sql(paths)})"
