"""Ingest: lines → source parser (DuckDB SQL) → Parquet lake, one batch at a time.

`ingest_lines(source, lines, cursor, target)` is the one way rows enter the lake. It parses a
batch of lines with its source, writes the events as one lake batch, and commits in one
state-store transaction: the batch's lake files, its quarantined lines (with their reasons),
its skipped counts, what the source remembers for later batches (`sources.state`) and the
cursor's new position. A killed process loses no committed batch and leaves no visible half
batch; a batch read again (same cursor `batch_key`) replaces its earlier attempt.

Lines come from anywhere a cursor describes (`events.cursors`): files (`events.files`, with
checkpoints, rotation and gzip — `ingest_paths` below), a receiver's spool, or memory.
`ingest_paths` reads every file it can: one that cannot be read (a truncated gzip, binary
content, no recognisable format) gets a report with its error, and an empty one a note.

Long fields. Whatever a source extracts, a text value longer than `FIELD_CHARS` characters (a
10 MB user agent or subject in hostile input) is cut to that length, and a list (recipients,
attachment names) keeps its first `LIST_ITEMS` items, each cut likewise. This happens here,
where rows are written, against the data model's column list, so every source is capped the
same way; the batch report's notes count the cut values per column. Such values are rare, so a
batch is first written as it is, each value tested inside the writing statement (`guard_long_fields`),
and only a batch where a value may be over the limit is counted and written again capped
(`cap_long_fields`, the reference): counting first read every batch's events once more.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path

import duckdb
import pyarrow as pa

from exfilwatch.config import Home, Settings
from exfilwatch.errors import ExfilwatchError, SourceError
from exfilwatch.events.cursors import Cursor
from exfilwatch.events.engine import connect
from exfilwatch.events.files import CHUNK_BYTES, content_fingerprint, expand_paths, read_file
from exfilwatch.events.lake import (BY_DAY_MIN_ROWS, LakeFile, remove_orphans, remove_superseded, supersede,
                                   write_batch)
from exfilwatch.events.tables import SCHEMA as EVENTS_TABLES
from exfilwatch.homelock import writing
from exfilwatch.models import ORIGIN, DataModel
from exfilwatch.sources import ParseContext, Source, UnknownFormatError, detect_source, get_source
from exfilwatch.sources.arrow import int64_range
from exfilwatch.sources.base import (ParsedBatch, line_origin_sql, raw_ref_sql, sql_string, unwrap_splunk_export,
                                     unwrap_splunk_export_sql)
from exfilwatch.sources.state import StoredSourceState
from exfilwatch.sources.tables import SCHEMA as SOURCE_TABLES
from exfilwatch.state import StateStore

RAW_LINE_LIMIT = 4096  # longest raw line kept in quarantine
FIELD_CHARS = 4096  # longest text value written to the lake (user agents, subjects, file names, addresses)
LIST_ITEMS = 1000  # most items of a list value written to the lake (recipients, attachment names)


@dataclass
class BatchReport:
    """What one batch of lines became; reports of several batches add up with `add`."""

    lines: int = 0
    events: int = 0
    quarantined: int = 0
    skipped: Counter = field(default_factory=Counter)
    batches: int = 0
    notes: list[str] = field(default_factory=list)
    # the zone and year assumed for times the lines wrote without them (shown with the notes)
    time_notes: list[str] = field(default_factory=list)
    error: ExfilwatchError | None = None  # why the file could not be read (what was committed before stays)

    @property
    def parsed(self) -> int:
        return self.lines - self.quarantined - sum(self.skipped.values())

    def add(self, batch: BatchReport) -> None:
        self.lines += batch.lines
        self.events += batch.events
        self.quarantined += batch.quarantined
        self.skipped.update(batch.skipped)
        self.batches += batch.batches
        self.notes.extend(note for note in batch.notes if note not in self.notes)
        self.time_notes.extend(note for note in batch.time_notes if note not in self.time_notes)


@dataclass
class FileReport(BatchReport):
    file: str = ""
    source: str = ""
    resumed_from_line: int = 0
    error: ExfilwatchError | None = None  # why the file could not be read (batches committed before stay)


@dataclass(frozen=True)
class ReadOptions:
    """What the user says about lines that the lines do not say themselves."""

    source_tz: str | None = None  # zone of local timestamps; default the configured zone
    year: int | None = None  # year of yearless syslog timestamps; default from the cursor's reference time
    mapping: Path | None = None  # the generic source's column mapping (--mapping)


@dataclass(frozen=True)
class IngestTarget:
    """Where batches go: the home's lake and state store, parsed on one DuckDB connection."""

    home: Home
    settings: Settings
    state: StateStore
    con: duckdb.DuckDBPyConnection


@contextmanager
def open_target(home: Home, settings: Settings) -> Iterator[IngestTarget]:
    """The home opened for ingest: under its writer lock, with the orphans of killed runs and the
    files replaced while readers held them removed."""
    with writing(home.root):
        state = StateStore(home.state_path, (SOURCE_TABLES, EVENTS_TABLES), root=home.root)
        con = connect(settings, home.spill_dir)
        try:
            remove_orphans(home.lake, state)
            remove_superseded(state)
            yield IngestTarget(home, settings, state, con)
        finally:
            con.close()
            state.close()


def line_array(lines: pa.Array | pa.ChunkedArray | Sequence[str]) -> pa.Array | pa.ChunkedArray:
    """Lines as an Arrow string array DuckDB can read. In a list of str, NUL and characters UTF-8
    cannot encode (lone surrogates) become U+FFFD, so each such line reaches its parser and is
    quarantined there; an Arrow array is taken as it is (`events.files` already cleaned it)."""
    if isinstance(lines, (pa.Array, pa.ChunkedArray)):
        return lines
    import pyarrow.compute as pc  # only here: its kernels cost file ingest 10 MB of memory (measured)

    try:
        array = pa.array(lines, pa.large_string())
    except (UnicodeEncodeError, pa.ArrowInvalid):
        array = pa.array([line.encode("utf-8", "replace").decode("utf-8") for line in lines], pa.large_string())
    if pc.any(pc.match_substring(array, "\x00")).as_py():
        array = pc.replace_substring(array, "\x00", "\ufffd")
    return array


def batch_addresses(con: duckdb.DuckDBPyConnection, files: list[str]) -> str:
    """The distinct source and destination addresses in a batch's flow files, as a JSON list.

    JSON text read by SQLite's `json_each` in one statement: fetching the addresses as Python
    tuples and inserting them with `executemany` took twice the CPU (0.16-0.22 against 0.08 CPU-s
    for 120 k addresses, measured)."""
    if not files:
        return "[]"
    return con.execute(
        "SELECT CAST(to_json(coalesce(list(DISTINCT ip), [])) AS VARCHAR) FROM (SELECT src_ip AS ip FROM read_parquet($f) "
        "UNION ALL SELECT dest_ip FROM read_parquet($f)) WHERE ip IS NOT NULL", {"f": files}
    ).fetchall()[0][0]


def assumed_time_note(parsed: ParsedBatch, ctx: ParseContext, options: ReadOptions) -> str | None:
    """The zone and year a batch's times were read in when its lines did not say, and the option that
    sets each: a wrong guess shifts every event by hours (or a year), and nothing else would show it."""
    said = []
    if parsed.zoneless_times:
        zone_from = "from --source-tz" if options.source_tz else "the configured timezone; --source-tz sets another"
        said.append(f"times without a zone were read in {ctx.source_tz} ({zone_from})")
    if parsed.yearless_times and ctx.year is not None:
        if options.year is not None:
            year_from = "from --year"
        else:
            year_from = (f"the year the lines were written (last change {ctx.reference_time:%Y-%m-%d}; a later date "
                         "goes in the year before); --year sets another")
        said.append(f"dates without a year were put in {ctx.year} ({year_from})")
    return "; ".join(said) if said else None


def _capped(column: str, typ: str) -> tuple[str, str | None]:
    """SQL for one column as written (capped when it is text), and the SQL test of a value that gets cut."""
    quoted = f'"{column}"'
    if typ == "VARCHAR":
        return (f"CASE WHEN length({quoted}) > {FIELD_CHARS} THEN left({quoted}, {FIELD_CHARS}) ELSE {quoted} END",
                f"length({quoted}) > {FIELD_CHARS}")
    if typ == "VARCHAR[]":
        too_long = f"list_bool_or(list_transform({quoted}, lambda v: length(v) > {FIELD_CHARS}))"
        return (f"CASE WHEN len({quoted}) > {LIST_ITEMS} OR {too_long} THEN list_transform({quoted}[1:{LIST_ITEMS}], "
                f"lambda v: CASE WHEN length(v) > {FIELD_CHARS} THEN left(v, {FIELD_CHARS}) ELSE v END) "
                f"ELSE {quoted} END",
                f"(len({quoted}) > {LIST_ITEMS} OR coalesce({too_long}, false))")
    return quoted, None


def cap_long_fields(con: duckdb.DuckDBPyConnection, model: DataModel, events: str) -> tuple[str, list[str]]:
    """The relation `events` with its long values cut (see the module docstring), and notes counting them."""
    columns = [(name, *_capped(name, typ)) for name, typ in model.columns]
    tests = [(name, test) for name, _, test in columns if test is not None]
    counts = con.execute(
        "SELECT " + ", ".join(f"count(*) FILTER (WHERE {test})" for _, test in tests) + f" FROM {events}"
    ).fetchall()[0]
    cut = [(name, n) for (name, _), n in zip(tests, counts) if n]
    if not cut:
        return events, []
    listed = ", ".join(f'{sql} AS "{name}"' for name, sql, _ in columns)
    detail = ", ".join(f"{name} {n}" for name, n in cut)
    note = (f"{sum(n for _, n in cut)} values longer than {FIELD_CHARS} characters (or lists longer than "
            f"{LIST_ITEMS} items) were cut to that length: {detail}")
    return f"(SELECT {listed} FROM {events})", [note]


LONG_VALUE = "exfilwatch: a value may be over the length limit"  # the error that `guard_long_fields` raises


def guard_long_fields(model: DataModel, events: str) -> str:
    """The relation `events` as it is, raising `LONG_VALUE` where a value may be over the limits of
    `cap_long_fields`: a text (or list item) of more than `FIELD_CHARS` bytes, a list of more than
    `LIST_ITEMS` items. Bytes are a bound of characters that DuckDB keeps with each string (no
    UTF-8 scan); a text of that many bytes but fewer characters only costs the capped path."""
    def guarded(name: str, typ: str) -> str:
        quoted = f'"{name}"'
        if typ == "VARCHAR":
            over = f"strlen({quoted}) > {FIELD_CHARS}"
        elif typ == "VARCHAR[]":
            over = (f"len({quoted}) > {LIST_ITEMS} OR list_bool_or(list_transform({quoted}, "
                    f"lambda v: strlen(v) > {FIELD_CHARS}))")
        else:
            return quoted
        return f"CASE WHEN {over} THEN error({sql_string(LONG_VALUE)}) ELSE {quoted} END"
    listed = ", ".join(f'{guarded(name, typ)} AS "{name}"' for name, typ in model.columns)
    return f"(SELECT {listed} FROM {events})"


def write_events(con: duckdb.DuckDBPyConnection, lake: Path, model: DataModel, batch_id: str, events: str,
                 by_day: bool) -> tuple[list[LakeFile], list[str]]:
    """Write the relation `events` as one lake batch with its long values cut (`write_batch`,
    `cap_long_fields`): its files, and the notes counting the cut values.

    The batch is written guarded (`guard_long_fields`): in one read of the events where no value is
    over a limit. Where one may be, the guard stops the write, and the batch is counted and written
    capped, as `cap_long_fields` alone would (`write_batch` replaces the stopped attempt's files).
    Counting every batch first read its events once more, to find in nearly every batch nothing to
    cut: of a 1 M-line Pulse ingest (four batches), the count and the write took 1.39-1.54 CPU-s,
    the guarded write takes 1.25 (three alternated runs each, load 5-6, 2026-12-04).
    """
    try:
        return write_batch(con, lake, model, batch_id, guard_long_fields(model, events), by_day=by_day), []
    except duckdb.InvalidInputException as exc:
        if LONG_VALUE not in str(exc):
            raise
    capped, notes = cap_long_fields(con, model, events)
    return write_batch(con, lake, model, batch_id, capped, by_day=by_day), notes


def with_origins(events: str, origins: pa.Array | pa.ChunkedArray | None, ctx: ParseContext) -> str:
    """The relation `events` with the model's `origin` column: each event gets the origin of the
    line its `raw_ref` names, null when there are none (files, syslog) or its line was in an
    earlier batch (a Postfix message completed now)."""
    if origins is None or origins.null_count == len(origins):
        return f"(SELECT *, CAST(NULL AS VARCHAR) AS {ORIGIN[0]} FROM {events})"
    return (f"(SELECT e.*, o.{ORIGIN[0]} FROM {events} e LEFT JOIN (SELECT {raw_ref_sql(ctx)} AS raw_ref, "
            f"{ORIGIN[0]} FROM raw_lines_arrow WHERE {ORIGIN[0]} IS NOT NULL) o ON o.raw_ref = e.raw_ref)")


def ingest_lines(source: Source, lines: pa.Array | pa.ChunkedArray | Sequence[str], cursor: Cursor,
                 target: IngestTarget, options: ReadOptions = ReadOptions(),
                 origins: pa.Array | pa.ChunkedArray | Sequence[str | None] | None = None) -> BatchReport:
    """Parse one batch of lines with `source`, write it to the lake and commit it with the cursor.

    `lines` is an Arrow string array (a line may still end with its newline) or a list of str.
    `origins`: per line, what its sender said about it besides the line (models.ORIGIN, JSON text).
    """
    con, state = target.con, target.state
    lines = line_array(lines)
    count = len(lines)
    batch_id = f"{source.name}-{cursor.batch_key}"
    year, reference_time = options.year, None
    if year is None and cursor.reference_time is not None:  # yearless syslog: dated by when it was written
        reference_time = cursor.reference_time
        year = reference_time.year
    source_state = StoredSourceState(state, batch_id)
    header_lines = [unwrap_splunk_export(line) for line in cursor.header_lines]
    ctx = ParseContext(origin=cursor.name, line_origins=cursor.line_origins, settings=target.settings,
                       header_lines=header_lines,
                       source_tz=options.source_tz or target.settings.timezone, year=year,
                       reference_time=reference_time, state=source_state, mapping=options.mapping)
    if origins is None or isinstance(origins, (pa.Array, pa.ChunkedArray)):
        origin_array = origins
    else:
        origin_array = pa.array(origins, pa.string())
    columns = {
        "line_no": int64_range(cursor.first_line, count),
        "line": lines,
    }
    if origin_array is not None:
        columns[ORIGIN[0]] = origin_array
    table = pa.table(columns)
    con.register("raw_lines_arrow", table)
    # Each line may still end with its newline; cutting a known suffix is 4x cheaper than rtrim.
    con.execute("CREATE OR REPLACE TEMP VIEW raw_lines AS SELECT line_no, "
                f"{unwrap_splunk_export_sql('line')} AS line FROM (SELECT line_no, CAST("
                "CASE WHEN ends_with(line, chr(13) || chr(10)) THEN left(line, -2) "
                "WHEN ends_with(line, chr(10)) THEN left(line, -1) ELSE line END AS VARCHAR) AS line "
                "FROM raw_lines_arrow)")
    parsed = source.parse(con, ctx)
    # The outcomes are counted in one pass and read again only for quarantined lines: storing
    # them as a table for three queries cost about 0.03 CPU-s per 100 k lines (measured).
    outcomes = con.execute(
        f"SELECT outcome, CASE WHEN outcome = 'skipped' THEN reason END, count(*) FROM {parsed.classified} GROUP BY ALL"
    ).fetchall()
    classified = sum(n for _, _, n in outcomes)
    if classified != count:
        raise RuntimeError(f"{cursor.name}: source {source.name} classified {classified} of {count} lines")
    skipped = [(reason, n) for outcome, reason, n in outcomes if outcome == "skipped"]
    quarantined = []
    if any(outcome == "quarantined" for outcome, _, _ in outcomes):
        line_origin, line_number = line_origin_sql(ctx, "o.line_no")
        quarantined = con.execute(
            f"""SELECT {line_origin}, {line_number}, o.reason, left(r.line, {RAW_LINE_LIMIT}) FROM {parsed.classified} o
                JOIN raw_lines r USING (line_no) WHERE o.outcome = 'quarantined' ORDER BY o.line_no"""
        ).fetchall()
    events = with_origins(parsed.events, origin_array, ctx)
    files, cap_notes = write_events(con, target.home.lake, source.data_model, batch_id, events,
                                    by_day=count >= BY_DAY_MIN_ROWS)
    events = sum(f.rows for f in files)
    addresses = batch_addresses(con, [f.path for f in files]) if source.data_model.name == "network_traffic" else "[]"
    received_at = cursor.reference_time.astimezone(timezone.utc).isoformat() if cursor.reference_time else None
    with state.transaction() as db:
        db.execute("DELETE FROM quarantine WHERE batch_id = ?", (batch_id,))
        db.execute("DELETE FROM skipped WHERE batch_id = ?", (batch_id,))
        earlier = [r[0] for r in db.execute("SELECT path FROM batch_files WHERE batch_id = ?", (batch_id,))]
        supersede(db, earlier, batch_id)  # an earlier read of this batch: a reader may hold its files
        db.execute("DELETE FROM batch_files WHERE batch_id = ?", (batch_id,))
        db.execute("DELETE FROM batches WHERE batch_id = ?", (batch_id,))
        db.execute(
            "INSERT INTO batches (batch_id, model, source, file, first_line, last_line, lines, events, quarantined, "
            "skipped, received_at, receiver) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (batch_id, source.data_model.name, source.name, cursor.name, cursor.first_line,
             cursor.first_line + count - 1, count, events, len(quarantined), sum(n for _, n in skipped),
             received_at, cursor.receiver),
        )
        db.executemany(
            "INSERT INTO batch_files VALUES (?,?,?,?,?)",
            [(state.relative(f.path), batch_id, source.data_model.name, f.day, f.rows) for f in files],
        )
        db.executemany(
            "INSERT INTO quarantine (batch_id, source, file, line_no, reason, raw) VALUES (?,?,?,?,?,?)",
            [(batch_id, source.name, origin, line, reason, raw) for origin, line, reason, raw in quarantined],
        )
        db.executemany("INSERT INTO skipped VALUES (?,?,?)", [(batch_id, kind, n) for kind, n in skipped])
        db.execute("INSERT OR IGNORE INTO lake_addresses SELECT value FROM json_each(?)", (addresses,))
        source_state.commit(db)
        cursor.commit(db, source.name)
    con.unregister("raw_lines_arrow")
    time_note = assumed_time_note(parsed, ctx, options)
    return BatchReport(lines=count, events=events, quarantined=len(quarantined), skipped=Counter(dict(skipped)),
                       batches=1, notes=list(dict.fromkeys(parsed.notes + cap_notes)),
                       time_notes=[time_note] if time_note else [])


def ingest_file(
    path: Path,
    target: IngestTarget,
    source: Source | None = None,
    options: ReadOptions = ReadOptions(),
    chunk_bytes: int = CHUNK_BYTES,
    progress: Callable[[Path, int], Callable[[int], None]] | None = None,
) -> FileReport:
    """Ingest one file from its checkpoint; `progress(path, size)` may return an advance callback."""
    reading = read_file(path, target.state, chunk_bytes)
    if reading.size == 0:
        return FileReport(file=str(path), source=source.name if source else "-", notes=["empty file, skipped"])
    chosen = source or detect_source(reading.head, str(path))
    on_progress = progress(path, reading.size) if progress else None
    if on_progress and reading.offset:
        on_progress(reading.offset)
    report = FileReport(file=str(path), source=chosen.name, resumed_from_line=reading.line_no)
    offset = reading.offset
    for lines, cursor in reading.batches():
        report.add(ingest_lines(chosen, lines, cursor, target, options))
        if on_progress:
            on_progress(cursor.end_offset - offset)
        offset = cursor.end_offset
    if report.lines == 0 and reading.line_no:
        report.notes.append(f"already read up to line {reading.line_no}; to read it again with other options "
                            "(--source, --year, --source-tz) use --replace")
    return report


@dataclass
class Forgotten:
    """What `forget_file` removed."""

    batches: int = 0
    events: int = 0


def forget_batches(db: sqlite3.Connection, batch_ids: list[str], by: str) -> None:
    """Remove committed batches inside the caller's transaction: their lake files (superseded, so
    that readers finish first), quarantined lines and skipped counts. What sources kept for them
    is dropped when they next read (sources/state.py)."""
    ids = [(batch_id,) for batch_id in batch_ids]
    paths = [row[0] for batch in ids for row in db.execute("SELECT path FROM batch_files WHERE batch_id = ?", batch)]
    supersede(db, paths, by)
    for table in ("batch_files", "quarantine", "skipped", "batches"):
        db.executemany(f"DELETE FROM {table} WHERE batch_id = ?", ids)


def forget_file(path: Path, target: IngestTarget) -> Forgotten:
    """Remove everything read from a file: its batches (their lake files, superseded so that
    readers finish first), quarantined lines, skipped counts and checkpoint, so it is read again
    from its first line. What sources kept for its batches is dropped when they next read
    (sources/state.py); derived models see their inputs gone and rebuild (features/sessions.py).

    The file's batches are those whose id carries its fingerprint (the one checkpointed, or the
    one of its content now, so a file renamed by rotation is found too) or that name it.
    """
    state = target.state
    key = str(path.resolve())
    fingerprints = {content_fingerprint(path)}
    fingerprints |= {r["fingerprint"] for r in state.query("SELECT fingerprint FROM file_checkpoints WHERE path = ?",
                                                          (key,))}
    marks = [f"%-{fingerprint.split(':')[1][:16]}-%" for fingerprint in fingerprints]
    where = " OR ".join(["batch_id LIKE ?"] * len(marks) + ["file = ?", "file = ?"])
    with state.transaction() as db:
        batches = db.execute(f"SELECT batch_id, events FROM batches WHERE {where}", (*marks, str(path), key)).fetchall()
        forget_batches(db, [row[0] for row in batches], f"ingest --replace {key}")
        db.execute("DELETE FROM file_checkpoints WHERE path = ?", (key,))
        db.executemany("DELETE FROM file_checkpoints WHERE fingerprint = ?", [(f,) for f in fingerprints])
    return Forgotten(batches=len(batches), events=sum(row[1] for row in batches))


def ingest_paths(
    paths: list[Path],
    home: Home,
    settings: Settings,
    source_name: str | None = None,
    source_tz: str | None = None,
    year: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    progress: Callable[[Path, int], Callable[[int], None]] | None = None,
    mapping: Path | None = None,
    replace: bool = False,
) -> list[FileReport]:
    """Ingest files and folders; `progress(path, size)` may return a per-file advance callback.

    A file that cannot be read gets a report with its `error`, and the next file is read.
    `replace`: first forget what was read from each file (`forget_file`), then read it again.
    """
    files = expand_paths(paths)
    source = get_source(source_name) if source_name else None
    options = ReadOptions(source_tz=source_tz, year=year, mapping=mapping)
    reports: list[FileReport] = []
    with open_target(home, settings) as target:
        for path in files:
            try:
                forgotten = forget_file(path, target) if replace else None
                report = ingest_file(path, target, source, options, chunk_bytes, progress)
            # Both are about this file alone (an unknown format asks for --source); any other
            # error, such as a bad --mapping, would fail every file alike and stops the run.
            except (SourceError, UnknownFormatError) as exc:
                reports.append(FileReport(file=str(path), source=source.name if source else "-", error=exc))
                continue
            if forgotten is not None:
                report.notes.insert(0, f"replaced: {forgotten.events} events of {forgotten.batches} earlier batches "
                                       "removed, read again from line 1")
            reports.append(report)
        remove_superseded(target.state)
    return reports
