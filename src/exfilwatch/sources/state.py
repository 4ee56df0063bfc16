"""What sources remember between batches, behind one interface: `SourceState`.

A source is lines → rows; a few formats spread one event over lines that may arrive in
different batches, files or ingests, so they keep something between batches:

* Postfix: the lines of messages not complete yet (`postfix_pending`), joined with the next
  batch's lines of the same queue id;
* Exchange and Microsoft 365: the keys of messages already written (`mail_seen`), so a message
  logged by two servers or exported twice becomes one row;
* Zeek smtp.log: the committed lake files of `files.log` and `conn.log` for sizes.

Reads go to the state store at once. Writes are staged and applied by `commit(db)` inside the
transaction that commits the batch (`events.ingest.ingest_lines`), so a batch and what its
source remembered are committed together or not at all. Rows carry the batch that produced
(and consumed) them: a re-read of the same batch replaces what it wrote, and rows left by a
release that wrote them outside the batch's transaction count only once their batch is in
`batches` (`_recover`).

The tables belong to the sources stage; their migrations are in sources/tables.py.
"""

from __future__ import annotations

import sqlite3
from typing import Protocol

import pyarrow as pa

from exfilwatch.sources.arrow import int64_array, string_array
from exfilwatch.state import StateStore

# postfix_pending's message columns (sources/tables.py) in order, and their DuckDB types
PENDING_COLUMNS = [
    ("key", "VARCHAR"), ("queue_id", "VARCHAR"), ("kind", "VARCHAR"), ("time", "BIGINT"),
    ("message_id", "VARCHAR"), ("sender", "VARCHAR"), ("size", "BIGINT"), ("nrcpt", "BIGINT"),
    ("client_ip", "VARCHAR"), ("rcpt", "VARCHAR"), ("relay", "VARCHAR"), ("dsn", "VARCHAR"),
    ("status", "VARCHAR"), ("hop", "BIGINT"), ("subject", "VARCHAR"), ("file_name", "VARCHAR"),
    ("raw_ref", "VARCHAR"),
]
_ARRAYS = {"VARCHAR": string_array, "BIGINT": int64_array}

class SourceState(Protocol):
    """What a source may read and remember between batches (times are epoch microseconds)."""

    def pending_mail_lines(self) -> pa.Table:
        """Postfix lines kept from earlier batches: `pending_id` and `PENDING_COLUMNS`, oldest first."""

    def keep_pending_mail_lines(self, rows: list[tuple], completed_ids: list[int]) -> None:
        """Keep new lines (`PENDING_COLUMNS` order) and forget kept ones whose message is now complete."""

    def seen_message_keys(self, source: str, first_us: int, last_us: int) -> list[str]:
        """Keys of messages of `source` already written with a time in [first_us, last_us]."""

    def remember_message_keys(self, source: str, keys: list[tuple[str, int]], forget_before_us: int | None) -> None:
        """Remember (key, time) of messages written now; forget those older than `forget_before_us`."""

    def lake_files(self, model: str, first_day: str | None = None, last_day: str | None = None) -> list[str]:
        """Committed Parquet files of a data model, optionally only days in [first_day, last_day]."""


def pending_mail_table(rows: list[dict]) -> pa.Table:
    """Postfix pending lines as `SourceState.pending_mail_lines` returns them (empty: none kept)."""
    columns = {"pending_id": int64_array([r["pending_id"] for r in rows])}
    for name, typ in PENDING_COLUMNS:
        columns[name] = _ARRAYS[typ]([r[name] for r in rows])
    return pa.table(columns)


class StoredSourceState:
    """`SourceState` for one batch, read from the state store; writes wait for `commit(db)`."""

    def __init__(self, store: StateStore, batch_id: str):
        self.store, self.batch_id = store, batch_id
        self._staged: list[tuple[str, list[tuple]]] = []
        self._recovered: set[str] = set()

    def _recover(self, table: str) -> None:
        """Forget what this batch id wrote before, and rows of batches never committed.

        What an earlier read of this batch consumed becomes available again; rows consumed by
        committed batches are deleted for good.
        """
        if table in self._recovered:
            return
        self._recovered.add(table)
        with self.store.transaction() as db:
            if table == "postfix_pending":
                db.execute(
                    "UPDATE postfix_pending SET consumed_by = NULL WHERE consumed_by = ? OR "
                    "(consumed_by IS NOT NULL AND consumed_by NOT IN (SELECT batch_id FROM batches))",
                    (self.batch_id,),
                )
            db.execute(f"DELETE FROM {table} WHERE produced_by = ? OR produced_by NOT IN (SELECT batch_id FROM batches)",
                       (self.batch_id,))
            if table == "postfix_pending":
                db.execute("DELETE FROM postfix_pending WHERE consumed_by IS NOT NULL")

    def pending_mail_lines(self) -> pa.Table:
        self._recover("postfix_pending")
        names = [name for name, _ in PENDING_COLUMNS]
        rows = self.store.query(f"SELECT rowid AS pending_id, {', '.join(names)} FROM postfix_pending "
                                "WHERE consumed_by IS NULL ORDER BY rowid")
        return pending_mail_table(rows)

    def keep_pending_mail_lines(self, rows: list[tuple], completed_ids: list[int]) -> None:
        names = ", ".join(name for name, _ in PENDING_COLUMNS)
        marks = ", ".join("?" * (len(PENDING_COLUMNS) + 1))
        self._staged.append(("UPDATE postfix_pending SET consumed_by = ? WHERE rowid = ?",
                             [(self.batch_id, rowid) for rowid in completed_ids]))
        self._staged.append((f"INSERT INTO postfix_pending ({names}, produced_by) VALUES ({marks})",
                             [(*row, self.batch_id) for row in rows]))

    def seen_message_keys(self, source: str, first_us: int, last_us: int) -> list[str]:
        self._recover("mail_seen")
        return [r["key"] for r in self.store.query(
            "SELECT key FROM mail_seen WHERE source = ? AND time BETWEEN ? AND ?", (source, first_us, last_us))]

    def remember_message_keys(self, source: str, keys: list[tuple[str, int]], forget_before_us: int | None) -> None:
        self._staged.append(("INSERT OR IGNORE INTO mail_seen (source, key, time, produced_by) VALUES (?,?,?,?)",
                             [(source, key, time, self.batch_id) for key, time in keys]))
        if forget_before_us is not None:
            self._staged.append(("DELETE FROM mail_seen WHERE source = ? AND time < ?", [(source, forget_before_us)]))

    def lake_files(self, model: str, first_day: str | None = None, last_day: str | None = None) -> list[str]:
        return self.store.lake_files(model, first_day, last_day)

    def commit(self, db: sqlite3.Connection) -> None:
        """Apply the staged writes inside the caller's (the batch's) transaction."""
        for sql, rows in self._staged:
            db.executemany(sql, rows)
        self._staged.clear()
