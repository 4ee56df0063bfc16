"""Spool records → lake, in micro-batches: the one consumer of the receivers' spool.

`Ingester.batch()` reads every record waiting after the committed position (up to `BATCH_BYTES`
of spool, as `ingest` reads a file in chunks of that size: a service that fell behind catches
up in few large batches, each paying the sources' fixed cost of a parse once), routes each
(`auto` by its syslog program tag), and commits one `ingest_lines` per source and listener with
a `SpoolCursor`, however many peers sent the lines (a parse has a fixed cost: paid once per
batch, not once per peer; raw_ref and quarantine still name each line's peer, and the sources
join lines per host, never across hosts); lines no source claims are quarantined with their
origin (the peer address) and the reason, in a transaction of their own that is replaced if the
batch is replayed. When the last part commits, the spool position moves past the batch and HEC acknowledgements up to it
turn true. It runs on the service's one worker thread (DuckDB and SQLite work blocks).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from exfilwatch.events.cursors import SpoolCursor, commit_spool_position, spool_position
from exfilwatch.events.files import CHUNK_BYTES
from exfilwatch.events.ingest import RAW_LINE_LIMIT, BatchReport, IngestTarget, forget_batches, ingest_lines
from exfilwatch.service.spool import Spool
from exfilwatch.sources import get_source, route_syslog_lines

SPOOL = "receivers"
BATCH_BYTES = CHUNK_BYTES  # most spool bytes in one batch (a record larger than this is a batch of its own)
UNROUTED = "unrouted"


@dataclass
class BatchOutcome:
    records: int
    seconds: float
    per_source: Counter = field(default_factory=Counter)  # (source, listener) -> lines
    reports: dict[str, BatchReport] = field(default_factory=dict)
    unrouted: int = 0


class Ingester:
    def __init__(self, target: IngestTarget, spool: Spool, max_bytes: int = BATCH_BYTES):
        self.target = target
        self.spool = spool
        self.max_bytes = max_bytes
        self.committed, self._pending_end = spool_position(target.state.conn, SPOOL)
        self.depth = spool.count(self.committed, spool.end)  # lines waiting, replayed first
        self.replayed = self.depth

    def batch(self) -> BatchOutcome | None:
        """Commit the next batch of spooled records; None when there is none."""
        started = time.perf_counter()
        replaying = self._pending_end > self.committed
        if replaying:  # a batch half committed before a crash: cut it the same way
            table = self.spool.read_table(self.committed, self._pending_end, 1 << 62)
        else:
            end = self.spool.end
            table = self.spool.read_table(self.committed, min(end, self.committed + self.max_bytes), 1 << 62)
            if table.num_rows == 0 and end > self.committed:  # one record larger than max_bytes
                table = self.spool.read_table(self.committed, end, 1)
        if table.num_rows == 0:
            return None
        start, end = self.committed, table["end"][-1].as_py()
        table = table.append_column("route", routes(table))
        routed = pc.is_valid(table["route"])
        unrouted = table.filter(pc.invert(routed)).select(["origin", "end", "line"]).to_pylist()
        table = table.filter(routed)
        outcome = BatchOutcome(records=len(unrouted) + table.num_rows, seconds=0.0, unrouted=len(unrouted))
        parts = source_parts(table)
        cursors = [SpoolCursor(SPOOL, listener, start, end, last=i == len(parts) - 1,
                               received_at=datetime.fromtimestamp(pc.max(part["received"]).as_py(), timezone.utc),
                               peers=peers)
                   for i, (_, listener, part, peers) in enumerate(parts)]
        state = self.target.state
        with state.transaction() as db:
            if replaying:  # parts of this batch committed before a crash by a release that cut it otherwise
                ours = {f"{name}-{cursor.batch_key}" for (name, *_), cursor in zip(parts, cursors)}
                cut_otherwise = [row[0] for row in db.execute("SELECT batch_id FROM batches WHERE batch_id LIKE ?",
                                                              (f"%-{SPOOL}-{start}-{end}-%",)) if row[0] not in ours]
                forget_batches(db, cut_otherwise, f"spool batch {start}-{end} read again")
            unrouted_id = f"{UNROUTED}-{SPOOL}-{start}-{end}"
            db.execute("DELETE FROM quarantine WHERE batch_id = ?", (unrouted_id,))
            db.executemany(
                "INSERT INTO quarantine (batch_id, source, file, line_no, reason, raw) VALUES (?,?,?,?,?,?)",
                [(unrouted_id, "auto", r["origin"], r["end"], f"no source recognises this line (from {r['origin']})",
                  r["line"][:RAW_LINE_LIMIT]) for r in unrouted])
            if parts:
                commit_spool_position(db, SPOOL, None, end)
            else:
                commit_spool_position(db, SPOOL, end, end)
        for (name, listener, part, _), cursor in zip(parts, cursors):
            meta = part["meta"]
            origins = pc.if_else(pc.equal(meta, ""), None, meta) if pc.any(pc.not_equal(meta, "")).as_py() else None
            report = ingest_lines(get_source(name), part["line"], cursor, self.target, origins=origins)
            outcome.reports[f"{name}\x1f{listener}"] = report
            outcome.per_source[(name, listener)] += part.num_rows
        self.committed = self._pending_end = end
        self.depth = max(0, self.depth - outcome.records)
        self.spool.release(end)
        outcome.seconds = time.perf_counter() - started
        return outcome


def source_parts(table: pa.Table) -> list[tuple[str, str, pa.Table, tuple[tuple[str, int], ...]]]:
    """The routed records cut into one part per source and listener, each parsed in one pass:
    (source, listener, its records with each peer's together in the order received, and the
    peers with their number of lines, in that order). The cut depends only on the records, so a
    batch replayed after a crash is cut the same way.

    Records are grouped by small integer codes (the batch's few sources and origins), never by
    sorting their text, and taken in that order only when they are not in it already (one
    source from one peer: the records as they are)."""
    if table.num_rows == 0:
        return []
    routes = pc.dictionary_encode(table["route"]).combine_chunks()
    origins = pc.dictionary_encode(table["origin"]).combine_chunks()
    names, origin_names = routes.dictionary.to_pylist(), origins.dictionary.to_pylist()
    # origins ranked by (listener, origin): a listener's peers come together, each peer's lines in order
    ranked = sorted(range(len(origin_names)), key=lambda i: (origin_names[i].split("@", 1)[0], origin_names[i]))
    rank = np.empty(len(origin_names), np.int64)
    rank[ranked] = np.arange(len(ranked))
    code = np.asarray(routes.indices).astype(np.int64) * len(origin_names) + rank[np.asarray(origins.indices)]
    if len(code) > 1 and np.any(code[1:] < code[:-1]):
        order = np.argsort(code, kind="stable")
        code = code[order]
        table = table.select(["received", "meta", "line"]).take(pa.array(order))
    # runs of one code: one peer's lines of one source
    starts = np.concatenate([[0], np.flatnonzero(code[1:] != code[:-1]) + 1])
    counts = np.diff(np.concatenate([starts, [len(code)]]))
    runs: list[tuple[str, str, int, tuple[tuple[str, int], ...]]] = []  # source, listener, first record, peers
    for first, count in zip(starts.tolist(), counts.tolist()):
        name = names[code[first] // len(origin_names)]
        origin = origin_names[ranked[code[first] % len(origin_names)]]
        listener = origin.split("@", 1)[0]
        if runs and runs[-1][:2] == (name, listener):
            _, _, part_first, peers = runs[-1]
            runs[-1] = (name, listener, part_first, (*peers, (origin, count)))
        else:
            runs.append((name, listener, first, ((origin, count),)))
    return [(name, listener, table.slice(first, sum(n for _, n in peers)), peers)
            for name, listener, first, peers in runs]


def routes(table: pa.Table) -> pa.ChunkedArray:
    """Each record's source: its own, or for `auto` the one its program tag names (null: none)."""
    source = table["source"]
    auto = pc.equal(source, "auto")
    if not pc.any(auto).as_py():
        return source
    routed = route_syslog_lines(table["line"].filter(auto))
    return pa.chunked_array([pc.replace_with_mask(source.combine_chunks(), auto.combine_chunks(),
                                                  routed.cast(pa.large_string()))])
