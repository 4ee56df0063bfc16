"""What the mail sources share: addresses, direction, CSV cells in SQL, and cross-batch state.

Every mail source ends in the `email` model, one row per message. The pieces here keep them
consistent:

* `install_macros` defines DuckDB macros on the connection: `ew_addr` (an address, lower
  case, without `<>` or a display name), `ew_domain`, `ew_is_internal` (the configured
  `internal_domains`, a sub-domain counts as internal), `ew_direction`, `ew_event_type` and
  `ew_csv_cell` (one RFC 4180 cell, unquoted).
* `csv_cells_sql` splits a CSV line into its cells with one `regexp_extract_all`, and says
  whether the cells cover the whole line (an unbalanced quote does not).
* `Seen` remembers the keys of messages already written (Exchange's network message id,
  Microsoft 365's trace id) so a message logged by two servers, or exported twice in
  overlapping traces, becomes one row. The keys are kept through `ctx.state`
  (sources/state.py) and committed with the batch that wrote the messages, so a killed ingest
  that re-reads a batch neither loses nor doubles a message.

Direction (from `settings.internal_domains`, compared case-insensitively, sub-domains
included): a sender in an internal domain with any recipient outside is `outbound`, with
all recipients inside `internal`; a sender outside is `inbound`. The null sender (`<>`,
bounces) counts as ours: outbound when a recipient is outside. An address without a domain
(a local mailbox) counts as internal. With no `internal_domains` configured the direction
is `unknown` and the event type `email`, and a note says so: set them before ingesting.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

import duckdb
import pyarrow as pa

from exfilwatch.sources.base import ParseContext, sql_string

# One CSV cell and its separator: a quoted cell (with "" escapes) or an unquoted one.
CSV_CELL_RE = r'("(?:[^"]|"")*"|[^,"]*),'

EVENT_TYPES = ("email-out", "email-in", "email-internal", "email-out-failed")
FAILED_ACTIONS = ("failed", "blocked")


def _domains_literal(domains: Iterable[str]) -> str:
    cleaned = sorted({d.strip().lower().lstrip("@").rstrip(".") for d in domains if d and d.strip()})
    return "[" + ", ".join(sql_string(d) for d in cleaned) + "]::VARCHAR[]"


def install_macros(con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> None:
    domains = _domains_literal(ctx.settings.internal_domains)
    configured = "true" if ctx.settings.internal_domains else "false"
    con.execute(f"""
        CREATE OR REPLACE TEMP MACRO ew_addr(a) AS (
            nullif(lower(trim(CASE WHEN contains(a, '<') AND contains(a, '>')
                                   THEN regexp_extract(a, '<([^<>]*)>', 1) ELSE a END, ' <>"''')), ''));
        CREATE OR REPLACE TEMP MACRO ew_domain(a) AS (
            CASE WHEN NOT contains(a, '@') THEN NULL
                 WHEN ends_with(a, '.') THEN nullif(rtrim(split_part(a, '@', -1), '.'), '')
                 ELSE nullif(split_part(a, '@', -1), '') END);
        CREATE OR REPLACE TEMP MACRO ew_is_internal(d) AS (
            d IS NULL OR list_bool_or(list_transform({domains}, lambda x: d = x OR ends_with(d, '.' || x))));
        CREATE OR REPLACE TEMP MACRO ew_addr_list(l) AS (
            list_sort(list_distinct(list_filter(list_transform(l, lambda x: ew_addr(x)), lambda x: x IS NOT NULL))));
        CREATE OR REPLACE TEMP MACRO ew_direction(sender, rdomains) AS (
            CASE WHEN NOT {configured} THEN 'unknown'
                 WHEN sender IS NOT NULL AND NOT ew_is_internal(ew_domain(sender)) THEN 'inbound'
                 WHEN coalesce(list_bool_or(list_transform(rdomains, lambda d: NOT ew_is_internal(d))), false)
                      THEN 'outbound'
                 ELSE 'internal' END);
        CREATE OR REPLACE TEMP MACRO ew_event_type(direction, action) AS (
            CASE direction WHEN 'outbound' THEN CASE WHEN action IN ('failed', 'blocked')
                                                     THEN 'email-out-failed' ELSE 'email-out' END
                           WHEN 'inbound' THEN 'email-in'
                           WHEN 'internal' THEN 'email-internal'
                           ELSE 'email' END);
        CREATE OR REPLACE TEMP MACRO ew_csv_cell(c) AS (
            CASE WHEN starts_with(c, '"') THEN replace(substr(c, 2, length(c) - 3), '""', '"')
                 ELSE substr(c, 1, length(c) - 1) END);
    """)


def csv_cells_sql(line: str = "line") -> str:
    """SQL: the raw cells of a CSV line, each with its trailing comma (see `csv_covers_sql`)."""
    return f"regexp_extract_all({line} || ',', {sql_string(CSV_CELL_RE)}, 0)"


def csv_covers_sql(cells: str, line: str = "line") -> str:
    """SQL bool: the cells cover the whole line (false for an unbalanced or stray quote)."""
    return f"coalesce(list_sum(list_transform({cells}, lambda c: length(c))) = length({line}) + 1, false)"


def email_select(source_name: str, table: str, where: str = "true", sent_by_user: bool = False) -> str:
    """The email model's columns from a table holding the message fields.

    `table` has: _time, message_id, internal_message_id, src_user, recipient (VARCHAR[], already
    normalised), size, subject, file_name, action, src_ip, dest, raw_ref, and optionally
    event_type_override (NULL unless the source decides the event type itself). With
    `sent_by_user` every row is mail the user sent (CERT: also from a personal webmail account),
    so the direction depends on the recipients only.
    """
    sender = "CAST(NULL AS VARCHAR)" if sent_by_user else "src_user"
    return f"""
        SELECT _time, message_id, internal_message_id, src_user, src_user_domain, recipient, recipient_domain,
               recipient_count, size, subject, file_name, direction, action, src_ip, dest,
               coalesce(event_type_override, ew_event_type(direction, action)) AS event_type,
               {sql_string(source_name)} AS source, raw_ref
        FROM (
            SELECT *, ew_direction({sender}, recipient_domain) AS direction
            FROM (
                SELECT _time, message_id, internal_message_id, src_user,
                       ew_domain(src_user) AS src_user_domain,
                       recipient,
                       list_transform(recipient, lambda r: ew_domain(r)) AS recipient_domain,
                       CAST(len(recipient) AS INTEGER) AS recipient_count,
                       size, subject, file_name, action, src_ip, dest, event_type_override, raw_ref
                FROM {table} WHERE {where}))
    """


def direction_notes(con: duckdb.DuckDBPyConnection, ctx: ParseContext, events: str, label: str) -> list[str]:
    if ctx.settings.internal_domains:
        return []
    n = con.execute(f"SELECT count(*) FROM {events}").fetchall()[0][0]
    if not n:
        return []
    return [f"{label}: internal_domains is not set in config.yaml, so direction is 'unknown' for {n} messages "
            "(set internal_domains before ingesting mail)"]


# --- state shared across batches ---------------------------------------------------------------

def _us(value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() * 1_000_000)


class Seen:
    """Keys of messages already written by a source, within a time window around a batch."""

    RETENTION_DAYS = 8  # a duplicate further apart in log time than this is not recognised
    WINDOW_DAYS = 2  # a duplicate is looked for within this many days of the message's time

    def __init__(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext, source: str):
        self.con, self.ctx, self.source = con, ctx, source

    def drop_seen(self, candidates: str, key: str = "dedup_key", time: str = "_time") -> tuple[str, int]:
        """Register the already-seen keys; return (SQL predicate `key NOT IN seen`, count dropped)."""
        state = self.ctx.state
        empty = pa.table({"key": pa.array([], pa.string())})
        if state is None:
            self.con.register("ew_seen_arrow", empty)
            return "true", 0
        lo, hi = self.con.execute(f"SELECT min({time}), max({time}) FROM {candidates}").fetchall()[0]
        rows: list[str] = []
        if lo is not None:
            window = self.WINDOW_DAYS * 86_400_000_000
            rows = state.seen_message_keys(self.source, _us(lo) - window, _us(hi) + window)
        self.con.register("ew_seen_arrow", pa.table({"key": pa.array(rows, pa.string())}) if rows else empty)
        self.con.execute("CREATE OR REPLACE TEMP TABLE ew_seen AS SELECT DISTINCT key FROM ew_seen_arrow")
        self.con.unregister("ew_seen_arrow")
        dropped = self.con.execute(
            f"SELECT count(*) FROM {candidates} WHERE {key} IN (SELECT key FROM ew_seen)").fetchall()[0][0]
        return f"{key} NOT IN (SELECT key FROM ew_seen)", dropped

    def remember(self, written: str, key: str = "dedup_key", time: str = "_time") -> None:
        state = self.ctx.state
        if state is None:
            return
        rows = self.con.execute(
            f"SELECT {key}, epoch_us({time}) FROM {written} WHERE {key} IS NOT NULL").fetchall()
        newest = max((t for _, t in rows if t is not None), default=None)
        state.remember_message_keys(
            self.source, rows, None if newest is None else newest - self.RETENTION_DAYS * 86_400_000_000)
