"""What the mail sources share: addresses, direction, CSV cells in SQL, and cross-batch state.

Every mail source ends in the `email` model, one row per message. The pieces here keep them
consistent:

* `install_macros` defines DuckDB macros on the connection: `ew_addr` (an address, lower
  case, without `<>` or a display name), `ew_domain`, `ew_direction` (from the configured
  `internal_domains`, a sub-domain counts as internal), `ew_event_type` and
  `ew_csv_cell` (one RFC 4180 cell, unquoted).
* `csv_cells_sql` splits a CSV line into its cells with `string_split` (commas inside quotes
  masked first: a quote toggles "inside", so the segments between quotes alternate), and
  `csv_covers_sql` says whether every cell is well formed (an unbalanced or stray quote is
  not). A `regexp_extract_all` of RFC 4180 cells gives the same cells at five times the cost,
  which made CSV mail logs (Exchange tracking) slow to ingest.
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
is `unknown` and the event type `email`, and a note says so.

The direction and event type stored in the lake are those of the ingest; the `email` view that
detections and the sessions build read (events/engine.py) computes both again from the
`internal_domains` configured when it is queried (`query_time_columns`), as asset categories
are joined at query time: setting or changing `internal_domains` fixes mail already ingested.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

import duckdb
import pyarrow as pa

from exfilwatch.sources.arrow import string_array
from exfilwatch.sources.base import ParseContext, sql_string
from exfilwatch.timeexpr import epoch_us


EVENT_TYPES = ("email-out", "email-in", "email-internal", "email-out-failed")
FAILED_ACTIONS = ("failed", "blocked")
SOURCE_EVENT_TYPES = ("email-relay",)  # decided by the source (Postfix's content-filter hop), not by direction


def _clean_domains(domains: Iterable[str]) -> list[str]:
    return sorted({d.strip().lower().lstrip("@").rstrip(".") for d in domains if d and d.strip()})


def internal_sql(domains: Iterable[str], domain: str) -> str:
    """SQL bool: `domain` (lower case) is one of `domains` or under one; a missing domain counts as internal.

    The domains are written out (no list function), so SQLGlot translates it to Spark SQL as it is."""
    cleaned = _clean_domains(domains)
    if not cleaned:
        return f"({domain} IS NULL)"
    listed = ", ".join(sql_string(d) for d in cleaned)
    under = " OR ".join(f"ends_with({domain}, {sql_string('.' + d)})" for d in cleaned)
    return f"({domain} IS NULL OR {domain} IN ({listed}) OR {under})"


def direction_sql(domains: Iterable[str], sender_domain: str, recipient_domains: str) -> str:
    """SQL: the mail direction from the sender's domain and the recipients' domains (module docstring).

    The ingest (`ew_direction`) and the lake view of `email` (events/engine.py, at query time, so a
    change of `internal_domains` applies to mail already ingested) both use it. `array_length` and
    `list_filter` keep it translatable to Spark SQL by SQLGlot.
    """
    domains = list(domains)
    if not domains:
        return "'unknown'"
    outside = (f"coalesce(array_length(list_filter({recipient_domains}, "
               f"lambda d: NOT {internal_sql(domains, 'd')})), 0) > 0")
    return (f"CASE WHEN {sender_domain} IS NOT NULL AND NOT {internal_sql(domains, sender_domain)} THEN 'inbound' "
            f"WHEN {outside} THEN 'outbound' ELSE 'internal' END")


def event_type_sql(direction: str, action: str) -> str:
    """SQL: the Exabeam-style event type of a message from its direction and action."""
    failed = ", ".join(sql_string(a) for a in FAILED_ACTIONS)
    return (f"CASE {direction} WHEN 'outbound' THEN CASE WHEN {action} IN ({failed}) "
            f"THEN 'email-out-failed' ELSE 'email-out' END "
            f"WHEN 'inbound' THEN 'email-in' WHEN 'internal' THEN 'email-internal' ELSE 'email' END")


def query_time_columns(domains: Iterable[str], sent_by_user_sources: Iterable[str]) -> dict[str, str]:
    """SQL replacing the stored `direction` and `event_type` of an `email` row by those of the
    `internal_domains` configured now. A type the source decided itself (`SOURCE_EVENT_TYPES`) is
    kept; for the sources in `sent_by_user_sources` the sender's domain does not count."""
    users = ", ".join(sql_string(s) for s in sent_by_user_sources) or "NULL"
    sender = f"CASE WHEN source IN ({users}) THEN NULL ELSE src_user_domain END"
    direction = direction_sql(domains, sender, "recipient_domain")
    kept = ", ".join(sql_string(t) for t in SOURCE_EVENT_TYPES)
    return {"direction": direction,
            "event_type": f"CASE WHEN event_type IN ({kept}) THEN event_type "
                          f"ELSE {event_type_sql(f'({direction})', 'action')} END"}


def install_macros(con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> None:
    domains = ctx.settings.internal_domains
    csv_cell_value = _unmask_sql("""CASE WHEN starts_with(c, '"') THEN replace(c[2:-2], '""', '"') ELSE c END""")
    con.execute(f"""
        CREATE OR REPLACE TEMP MACRO ew_addr(a) AS (
            nullif(lower(trim(CASE WHEN contains(a, '<') AND contains(a, '>')
                                   THEN regexp_extract(a, '<([^<>]*)>', 1) ELSE a END, ' <>"''')), ''));
        CREATE OR REPLACE TEMP MACRO ew_domain(a) AS (
            CASE WHEN NOT contains(a, '@') THEN NULL
                 WHEN ends_with(a, '.') THEN nullif(rtrim(split_part(a, '@', -1), '.'), '')
                 ELSE nullif(split_part(a, '@', -1), '') END);
        CREATE OR REPLACE TEMP MACRO ew_addr_list(l) AS (
            list_sort(list_distinct(list_filter(list_transform(l, lambda x: ew_addr(x)), lambda x: x IS NOT NULL))));
        CREATE OR REPLACE TEMP MACRO ew_direction(sender, rdomains) AS (
            {direction_sql(domains, 'ew_domain(sender)', 'rdomains')});
        CREATE OR REPLACE TEMP MACRO ew_event_type(direction, action) AS ({event_type_sql('direction', 'action')});
        CREATE OR REPLACE TEMP MACRO ew_csv_cell(c) AS (
            {csv_cell_value});
    """)


# A comma inside a quoted cell is written as MASK + COMMA_MARK while the line is split; a MASK
# already in the line as MASK + MASK_MARK, so that unmasking gives every line back exactly.
_MASK, _COMMA_MARK, _MASK_MARK = "chr(1)", "chr(3)", "chr(2)"


def _unmask_sql(cell: str) -> str:
    return f"replace(replace({cell}, {_MASK} || {_COMMA_MARK}, ','), {_MASK} || {_MASK_MARK}, {_MASK})"


def csv_cells_sql(line: str = "line") -> str:
    """SQL: the raw cells of a CSV line (quotes kept, commas inside quotes masked); `ew_csv_cell`
    gives a cell's value, `csv_covers_sql` whether they are all well formed."""
    escaped = f"replace({line}, {_MASK}, {_MASK} || {_MASK_MARK})"
    # Between quotes, segments alternate outside / inside (an escaped "" is an empty outside segment).
    masked = (f"array_to_string(list_transform(string_split({escaped}, '\"'), lambda s, i: "
              f"CASE WHEN i % 2 = 0 THEN replace(s, ',', {_MASK} || {_COMMA_MARK}) ELSE s END), '\"')")
    return f"string_split({masked}, ',')"


def csv_covers_sql(cells: str) -> str:
    """SQL bool: every cell is unquoted without a quote, or quoted with only doubled quotes inside
    (false for an unbalanced or stray quote)."""
    return (f"coalesce(list_bool_and(list_transform({cells}, lambda c: NOT contains(c, '\"') OR "
            f"(length(c) >= 2 AND starts_with(c, '\"') AND ends_with(c, '\"') "
            f"AND NOT contains(replace(c[2:-2], '\"\"', ''), '\"')))), false)")


def email_select(source_name: str, table: str, where: str = "true", sent_by_user: bool = False,
                 user: str = "CAST(NULL AS VARCHAR)") -> str:
    """The email model's columns from a table holding the message fields.

    `table` has: _time, message_id, internal_message_id, src_user, recipient (VARCHAR[], already
    normalised), size, subject, file_name, action, src_ip, dest, raw_ref, and optionally
    event_type_override (NULL unless the source decides the event type itself). `user` is the SQL
    of the authenticated sender (Postfix `sasl_username`, CERT's `user`), when the source knows it.
    With `sent_by_user` every row is mail the user sent (CERT: also from a personal webmail
    account), so the direction depends on the recipients only.
    """
    sender = "CAST(NULL AS VARCHAR)" if sent_by_user else "src_user"
    return f"""
        SELECT _time, message_id, internal_message_id, src_user, src_user_domain, "user", recipient, recipient_domain,
               recipient_count, size, subject, file_name, direction, action, src_ip, dest,
               coalesce(event_type_override, ew_event_type(direction, action)) AS event_type,
               {sql_string(source_name)} AS source, raw_ref
        FROM (
            SELECT *, ew_direction({sender}, recipient_domain) AS direction
            FROM (
                SELECT _time, message_id, internal_message_id, src_user,
                       ew_domain(src_user) AS src_user_domain, nullif(trim({user}), '') AS "user",
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
            "until it is (then the direction of mail already ingested follows it: no re-ingest needed)"]


# --- state shared across batches ---------------------------------------------------------------

def _us(value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return epoch_us(value)


class Seen:
    """Keys of messages already written by a source, within a time window around a batch."""

    RETENTION_DAYS = 8  # a duplicate further apart in log time than this is not recognised
    WINDOW_DAYS = 2  # a duplicate is looked for within this many days of the message's time

    def __init__(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext, source: str):
        self.con, self.ctx, self.source = con, ctx, source

    def drop_seen(self, candidates: str, key: str = "dedup_key", time: str = "_time") -> tuple[str, int]:
        """Register the already-seen keys; return (SQL predicate `key NOT IN seen`, count dropped)."""
        state = self.ctx.state
        empty = pa.table({"key": string_array([])})
        if state is None:
            self.con.register("ew_seen_arrow", empty)
            return "true", 0
        lo, hi = self.con.execute(f"SELECT min({time}), max({time}) FROM {candidates}").fetchall()[0]
        rows: list[str] = []
        if lo is not None:
            window = self.WINDOW_DAYS * 86_400_000_000
            rows = state.seen_message_keys(self.source, _us(lo) - window, _us(hi) + window)
        self.con.register("ew_seen_arrow", pa.table({"key": string_array(rows)}) if rows else empty)
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
