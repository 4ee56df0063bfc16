"""Microsoft Exchange message tracking logs and Microsoft 365 message trace → `email`.

Exchange 2010–2019 (`MSGTRK*.LOG`): a `#Software`/`#Version`/`#Log-type`/`#Date`/`#Fields:`
header, then one CSV line per event. The `#Fields:` line names the columns (2013 added
`network-message-id` and more; the reader follows the header, not a fixed layout). Lines
without a header (a forwarder such as NXLog or a Splunk universal forwarder ships one line at a
time) are read in the default column order of Exchange 2013–2019 (`DEFAULT_FIELDS`, 30 fields);
such a line is recognised by its shape: 30 CSV cells, an ISO 8601 `date-time` first and a known
`event-id` ninth. A line of another layout needs its `#Fields:` header, and says so.

One message is many events: on its way through the organisation it is RECEIVEd (from a
mailbox: source STOREDRIVER; from a client or another server: source SMTP), SUBMITted,
RECEIVEd again on each hop, and finally DELIVERed to mailboxes, SENT or SENDEXTERNAL'd to
another server, or FAILed. Each server writes its own log. The rule for one row per message:

* events are grouped by `network-message-id` (2013+, the same on every server), else by
  `message-id` + sender, else by `internal-message-id` + server;
* of a group only RECEIVE, SEND, SENDEXTERNAL, DELIVER and FAIL are read; every other event
  id (AGENTINFO, SUBMIT, HARECEIVE, HAREDIRECT, RESOLVE, EXPAND, TRANSFER, DSN, DEFER, DROP,
  …) is skipped and counted by its id;
* the row's time is the group's first event (the origin RECEIVE when it is in the log), the
  sender, subject and client address are those of its first event that has them
  (`original-client-ip` before `client-ip`), the size the largest `total-bytes`;
* recipients: those of DELIVER/SEND/SENDEXTERNAL (delivered, action `delivered`); with none
  of those in the logs, those of RECEIVE (action `received`); with only FAIL, the failed
  ones (action `failed`);
* a group already written from an earlier batch, another server's log or an overlapping
  export (same key, within 2 days of log time; keys are kept 8 days) is not written again.
  A message whose events straddle two batches is written from the first: the origin
  RECEIVE lists every recipient, so little is lost.

Microsoft 365 / Exchange Online message trace: the CSV export of `Get-MessageTrace` and
`Get-MessageTraceV2` (`Received,SenderAddress,RecipientAddress,Subject,Status,ToIP,FromIP,Size,
MessageId,MessageTraceId`, in any order and among other columns such as `PSComputerName` or
`Organization`, possibly after a `#TYPE` line, quoted or not) and JSON: the v1 reporting web
service (`{"d": {"results": [...]}}`), the Microsoft Graph message trace API
(`GET /admin/exchange/tracing/messageTraces`: `{"@odata.context": …, "value": [...]}` with
camelCase `id`, `messageId`, `receivedDateTime`, `senderAddress`, `recipientAddress`, `subject`,
`status` (`delivered`, `filteredAsSpam`, …), `toIP`, `fromIP`, `size`), a JSON array (PowerShell's
`ConvertTo-Json`), or JSON lines of records. The CSV and JSON readers share their deduplication
keys, so the same messages from a V2 export and from Graph are written once. A trace has one row per
recipient: rows are grouped by `MessageTraceId` (else `MessageId` + sender) into one message
whose recipients are the delivered ones (Status Delivered), else all; action `delivered`,
`pending`, `blocked` (Quarantined, FilteredAsSpam), `failed` or the status in lower case.
`Received` may be ISO 8601, `/Date(ms)/` or `M/d/yyyy h:mm:ss AM` (en-US, UTC as exported).
Overlapping exports are deduplicated as for Exchange. A pretty-printed JSON document must fit
in one ingest chunk (64 MB); JSON lines have no such limit.
"""

from __future__ import annotations

import csv
import re

import duckdb

from exfilwatch.errors import SourceError
from exfilwatch.models import EMAIL
from exfilwatch.sources.base import ParseContext, ParsedBatch, raw_ref_sql, sql_string
from exfilwatch.sources.mailcommon import Seen, csv_cells_sql, csv_covers_sql, direction_notes, email_select, install_macros

EXCHANGE_NAME = "exchange_tracking"
M365_CSV_NAME = "m365_trace_csv"
M365_JSON_NAME = "m365_trace_json"
# The CSV and JSON traces share their message keys: a Get-MessageTraceV2 export and a Graph page of
# the same messages (MessageTraceId = Graph's id) give each message once.
M365_SCOPE = "m365_trace"

MESSAGE_EVENTS = ["RECEIVE", "SEND", "SENDEXTERNAL", "DELIVER", "FAIL"]
DELIVERED_EVENTS = ["SEND", "SENDEXTERNAL", "DELIVER"]
KNOWN_EVENTS = MESSAGE_EVENTS + [
    "AGENTINFO", "BADMAIL", "CLIENTSUBMISSION", "DEFER", "DELIVERFAIL", "DROP", "DSN", "DUPLICATEDELIVER",
    "DUPLICATEEXPAND", "DUPLICATEREDIRECT", "EXPAND", "HADISCARD", "HARECEIVE", "HAREDIRECT", "HAREDIRECTFAIL",
    "INITMESSAGECREATED", "LOAD", "MODERATIONEXPIRE", "MODERATORAPPROVE", "MODERATORREJECT", "MODERATORSALLNDR",
    "NOTIFYMAPI", "NOTIFYSHADOW", "POISONMESSAGE", "PROCESS", "PROCESSMEETINGMESSAGE", "RECIPIENTSUBMITINFO",
    "REDIRECT", "RESOLVE", "RESUBMIT", "RESUBMITDEFER", "RESUBMITFAIL", "SUBMIT", "SUBMITDEFER", "SUBMITFAIL",
    "SUPPRESSED", "THROTTLE", "TRANSFER", "SAFETYNET", "SUBMITRECOVER",
]
EXCHANGE_REQUIRED = ["date-time", "event-id", "recipient-address", "sender-address"]
# The #Fields line of Exchange 2013, 2016 and 2019 (the synthetic writer, synth/writers/exchange.py,
# writes the same; a test holds them equal).
DEFAULT_FIELDS = [
    "date-time", "client-ip", "client-hostname", "server-ip", "server-hostname", "source-context", "connector-id",
    "source", "event-id", "internal-message-id", "message-id", "network-message-id", "recipient-address",
    "recipient-status", "total-bytes", "recipient-count", "related-recipient-address", "reference", "message-subject",
    "sender-address", "return-path", "message-info", "directionality", "tenant-id", "original-client-ip",
    "original-server-ip", "custom-data", "transport-traffic-type", "log-id", "schema-version",
]
EXCHANGE_COLUMNS = [
    "date-time", "client-ip", "client-hostname", "server-ip", "server-hostname", "source", "event-id",
    "internal-message-id", "message-id", "network-message-id", "recipient-address", "total-bytes",
    "message-subject", "sender-address", "original-client-ip", "directionality",
]


def _list(values: list[str]) -> str:
    return "[" + ", ".join(sql_string(v) for v in values) + "]"


def exchange_fields(head: list[str]) -> list[str] | None:
    for line in head:
        text = line.lstrip("\ufeff")
        if text.startswith("#Fields:"):
            return [f.strip().lower() for f in text.split(":", 1)[1].strip().split(",")]
    return None


def is_headerless_exchange_line(line: str) -> bool:
    """The line has the shape of an Exchange 2013-2019 tracking event in the default column order."""
    try:
        cells = next(csv.reader([line.lstrip("\ufeff")]))
    except (csv.Error, StopIteration):
        return False
    return (len(cells) == len(DEFAULT_FIELDS) and cells[8].upper() in KNOWN_EVENTS
            and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?", cells[0]) is not None)


def _csv_header(head: list[str], required: set[str]) -> list[str] | None:
    for line in head:
        text = line.lstrip("\ufeff").strip()
        if not text or text.startswith("#"):
            continue
        try:
            cells = next(csv.reader([text]))
        except (csv.Error, StopIteration):
            return None
        return cells if required <= set(cells) else None
    return None


def _split_time_sql(expr: str) -> str:
    """SQL: a timestamp written as ISO 8601, /Date(ms)/ or an en-US date, as TIMESTAMPTZ (UTC)."""
    return f"""CASE
        WHEN {expr} IS NULL OR {expr} = '' THEN NULL
        WHEN starts_with({expr}, '/Date(') THEN
            make_timestamptz(TRY_CAST(regexp_extract({expr}, '^/Date\\((-?\\d{{1,15}})', 1) AS BIGINT) * 1000)
        WHEN regexp_matches({expr}, '^\\d{{4}}-') THEN
            coalesce(TRY_CAST({expr} AS TIMESTAMPTZ),
                     timezone('UTC', TRY_CAST(regexp_replace({expr}, '(\\.\\d{{6}})\\d+', '\\1') AS TIMESTAMP)),
                     TRY_CAST(regexp_replace({expr}, '(\\.\\d{{6}})\\d+', '\\1') AS TIMESTAMPTZ))
        ELSE timezone('UTC', try_strptime({expr}, ['%m/%d/%Y %I:%M:%S %p', '%m/%d/%Y %H:%M:%S', '%m/%d/%Y %I:%M %p']))
        END"""


# --- Exchange ------------------------------------------------------------------------------------

class ExchangeTracking:
    name = EXCHANGE_NAME
    data_model = EMAIL
    description = ("Microsoft Exchange 2010-2019 message tracking log (#Fields: CSV, or headerless lines in the "
                   "2013-2019 default order), one row per message")
    sample = ("2026-11-02T09:01:01.123Z,10.20.0.15,WS-ALICE,10.10.0.5,EX01,08D8F1,EX01\\Default EX01,STOREDRIVER,"
              "RECEIVE,1234,<abc@ex01.example.com>,3f2504e0-4f89-11d3-9a0c-0305e82c3301,bob@gmail.com,,48213,1,,,"
              "Q4 pricing,alice@example.com,alice@example.com,,Originating,,10.20.0.15,,")

    def sniff(self, head: list[str]) -> bool:
        text = "\n".join(head[:10])
        fields = exchange_fields(head)
        if fields is None:
            first = next((line for line in head if line.strip() and not line.startswith("#")), None)
            return first is not None and is_headerless_exchange_line(first)
        return ("Message Tracking Log" in text or "#Software: Microsoft Exchange" in text) and "event-id" in fields

    def parse(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> ParsedBatch:
        install_macros(con, ctx)
        fields = exchange_fields(ctx.header_lines)
        layout = "as the #Fields header"
        if fields is None:
            fields, layout = DEFAULT_FIELDS, "the Exchange 2013-2019 default order; another layout needs its #Fields header"
        missing = [f for f in EXCHANGE_REQUIRED if f not in fields]
        if missing:
            raise SourceError(f"{ctx.origin}: Exchange #Fields header lacks {', '.join(missing)}")
        pos = {name: i + 1 for i, name in enumerate(fields)}
        n = len(fields)

        def cell(name: str) -> str:
            return f"nullif(ew_csv_cell(cells[{pos[name]}]), '')" if name in pos else "CAST(NULL AS VARCHAR)"

        cols = ", ".join(f'{cell(name)} AS "{name}"' for name in EXCHANGE_COLUMNS)
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE ex_lines AS
            WITH c AS (
                SELECT line_no, line, {csv_cells_sql()} AS cells FROM raw_lines
                WHERE NOT starts_with(line, '#') AND trim(line) <> ''
            ), f AS (
                SELECT line_no, len(cells) AS n, {csv_covers_sql('cells')} AS covered, {cols} FROM c
            ), t AS (
                SELECT *, TRY_CAST("date-time" AS TIMESTAMPTZ) AS _t, upper("event-id") AS event FROM f
            )
            SELECT *,
                CASE WHEN NOT covered THEN 'quarantined'
                     WHEN n <> {n} THEN 'quarantined'
                     WHEN _t IS NULL THEN 'quarantined'
                     WHEN event IS NULL THEN 'quarantined'
                     WHEN TRY_CAST("total-bytes" AS BIGINT) IS NULL AND "total-bytes" IS NOT NULL THEN 'quarantined'
                     WHEN list_contains({_list(MESSAGE_EVENTS)}, event) THEN 'parsed'
                     ELSE 'skipped' END AS outcome,
                CASE WHEN NOT covered THEN 'unbalanced quotes in CSV line'
                     WHEN n <> {n} THEN 'expected {n} comma-separated fields ({layout}), found ' || n
                     WHEN _t IS NULL THEN 'bad date-time: ' || coalesce("date-time", 'missing') || ' (expected ISO 8601)'
                     WHEN event IS NULL THEN 'missing event-id'
                     WHEN TRY_CAST("total-bytes" AS BIGINT) IS NULL AND "total-bytes" IS NOT NULL
                          THEN 'bad number in total-bytes: ' || "total-bytes"
                     WHEN list_contains({_list(MESSAGE_EVENTS)}, event) THEN NULL
                     WHEN list_contains({_list(KNOWN_EVENTS)}, event) THEN 'exchange event ' || event
                     ELSE 'exchange event (other id)' END AS reason
            FROM t
        """)
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE ex_events AS
            SELECT line_no, _t, event,
                   coalesce("network-message-id",
                            "message-id" || '|' || lower(coalesce("sender-address", '')),
                            "internal-message-id" || '@' || coalesce("server-hostname", "server-ip", '')) AS dedup_key,
                   trim("message-id", '<> ') AS message_id,
                   coalesce("network-message-id", "internal-message-id") AS internal_id,
                   "sender-address" AS sender,
                   list_filter(string_split(coalesce("recipient-address", ''), ';'), lambda x: trim(x) <> '') AS rcpts,
                   TRY_CAST("total-bytes" AS BIGINT) AS size,
                   "message-subject" AS subject,
                   CASE WHEN event = 'RECEIVE' THEN coalesce("original-client-ip", "client-ip") END AS client_ip,
                   CASE WHEN event IN ('SEND', 'SENDEXTERNAL') THEN coalesce("server-hostname", "server-ip")
                        WHEN event = 'DELIVER' THEN coalesce("server-hostname", "server-ip") END AS dest_host,
                   {raw_ref_sql(ctx)} AS raw_ref,
                   {{'t': _t, 'l': line_no}} AS o
            FROM ex_lines WHERE outcome = 'parsed'
        """)
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE ex_groups AS
            WITH g AS (
                SELECT dedup_key,
                    min(_t) AS _time,
                    arg_min(message_id, o) FILTER (WHERE message_id <> '') AS message_id,
                    arg_min(internal_id, o) AS internal_message_id,
                    arg_min(sender, o) FILTER (WHERE sender IS NOT NULL) AS sender,
                    flatten(list(rcpts) FILTER (WHERE event IN {tuple(DELIVERED_EVENTS)})) AS delivered,
                    flatten(list(rcpts) FILTER (WHERE event = 'RECEIVE')) AS received,
                    flatten(list(rcpts) FILTER (WHERE event = 'FAIL')) AS failed,
                    max(size) AS size,
                    arg_min(subject, o) FILTER (WHERE subject IS NOT NULL) AS subject,
                    arg_min(client_ip, o) FILTER (WHERE client_ip IS NOT NULL) AS src_ip,
                    arg_min(dest_host, o) FILTER (WHERE event IN ('SEND', 'SENDEXTERNAL')) AS dest_sent,
                    arg_min(dest_host, o) FILTER (WHERE event = 'DELIVER') AS dest_delivered,
                    arg_min(raw_ref, o) AS raw_ref
                FROM ex_events GROUP BY dedup_key
            )
            SELECT dedup_key, _time, message_id, internal_message_id,
                   ew_addr(sender) AS src_user,
                   ew_addr_list(CASE WHEN len(coalesce(delivered, [])) > 0 THEN delivered
                                     WHEN len(coalesce(received, [])) > 0 THEN received
                                     ELSE coalesce(failed, []) END) AS recipient,
                   size, subject, CAST(NULL AS VARCHAR[]) AS file_name,
                   CASE WHEN len(coalesce(delivered, [])) > 0 THEN 'delivered'
                        WHEN len(coalesce(failed, [])) > 0 AND len(coalesce(received, [])) = 0 THEN 'failed'
                        WHEN len(coalesce(failed, [])) > 0
                             AND len(list_filter(ew_addr_list(received), lambda r: NOT list_contains(ew_addr_list(failed), r))) = 0
                             THEN 'failed'
                        ELSE 'received' END AS action,
                   src_ip, coalesce(dest_sent, dest_delivered) AS dest,
                   CAST(NULL AS VARCHAR) AS event_type_override, raw_ref
            FROM g
        """)
        return _dedup_and_emit(con, ctx, self.name, "ex_groups",
                               "(SELECT line_no, outcome, reason FROM ex_lines UNION ALL "
                               "SELECT line_no, 'skipped', CASE WHEN starts_with(line, '#') THEN 'header' ELSE 'blank line' END "
                               "FROM raw_lines WHERE starts_with(line, '#') OR trim(line) = '')",
                               "exchange")


def _dedup_and_emit(con: duckdb.DuckDBPyConnection, ctx: ParseContext, source: str, groups: str,
                    classified: str, label: str, scope: str | None = None) -> ParsedBatch:
    """Write the groups not already written by this source (or by any source of `scope`)."""
    seen = Seen(con, ctx, scope or source)
    predicate, dropped = seen.drop_seen(groups)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {groups}_new AS SELECT * FROM {groups} WHERE {predicate}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {groups}_events AS {email_select(source, groups + '_new')}")
    seen.remember(f"{groups}_new")
    notes = []
    if dropped:
        notes.append(f"{label}: {dropped} messages already written from another log or an earlier export (not written again)")
    notes += direction_notes(con, ctx, f"{groups}_events", label)
    return ParsedBatch(classified=classified, events=f"(SELECT * FROM {groups}_events)", notes=notes)


# --- Microsoft 365 message trace --------------------------------------------------------------

M365_FIELDS = ["Received", "SenderAddress", "RecipientAddress", "Subject", "Status", "ToIP", "FromIP", "Size",
               "MessageId", "MessageTraceId"]
# JSON names: the reporting web service's, then Graph's camelCase
M365_JSON_PATHS = {
    "Received": ["Received", "received", "receivedDateTime"],
    "SenderAddress": ["SenderAddress", "senderAddress"],
    "RecipientAddress": ["RecipientAddress", "recipientAddress"],
    "Subject": ["Subject", "subject"],
    "Status": ["Status", "status"],
    "ToIP": ["ToIP", "toIP", "toIp"],
    "FromIP": ["FromIP", "fromIP", "fromIp"],
    "Size": ["Size", "size"],
    "MessageId": ["MessageId", "messageId"],
    "MessageTraceId": ["MessageTraceId", "messageTraceId", "id"],
}


def _m365_groups_sql(ctx: ParseContext, rows: str) -> str:
    """SQL grouping trace rows (columns named as M365_FIELDS plus _t, raw_ref, o) into messages."""
    return f"""
        WITH r AS (
            SELECT *, lower(coalesce("Status", '')) AS st FROM {rows}
        ), g AS (
            SELECT coalesce(nullif(trim("MessageTraceId"), ''),
                            trim("MessageId", '<> ') || '|' || lower(coalesce("SenderAddress", ''))) AS dedup_key,
                   min(_t) AS _time,
                   arg_min(nullif(trim("MessageId", '<> '), ''), o) AS message_id,
                   arg_min(nullif(trim("MessageTraceId"), ''), o) AS internal_message_id,
                   arg_min("SenderAddress", o) FILTER (WHERE "SenderAddress" IS NOT NULL) AS sender,
                   list("RecipientAddress") FILTER (WHERE st = 'delivered') AS delivered,
                   list("RecipientAddress") FILTER (WHERE st <> 'expanded') AS others,
                   list("RecipientAddress") AS everyone,
                   bool_or(st = 'delivered') AS any_delivered,
                   bool_or(st IN ('pending', 'gettingstatus')) AS any_pending,
                   bool_or(st IN ('quarantined', 'filteredasspam')) AS any_blocked,
                   bool_or(st = 'failed') AS any_failed,
                   arg_min(st, o) AS first_status,
                   max(TRY_CAST("Size" AS BIGINT)) AS size,
                   arg_min("Subject", o) FILTER (WHERE "Subject" IS NOT NULL) AS subject,
                   arg_min("FromIP", o) FILTER (WHERE "FromIP" IS NOT NULL) AS src_ip,
                   arg_min("ToIP", o) FILTER (WHERE "ToIP" IS NOT NULL) AS dest,
                   arg_min(raw_ref, o) AS raw_ref
            FROM r GROUP BY dedup_key
        )
        SELECT dedup_key, _time, message_id, internal_message_id, ew_addr(sender) AS src_user,
               ew_addr_list(CASE WHEN any_delivered THEN delivered
                                 WHEN len(coalesce(others, [])) > 0 THEN others ELSE everyone END) AS recipient,
               size, subject, CAST(NULL AS VARCHAR[]) AS file_name,
               CASE WHEN any_delivered THEN 'delivered' WHEN any_pending THEN 'pending'
                    WHEN any_blocked THEN 'blocked' WHEN any_failed THEN 'failed'
                    ELSE nullif(first_status, '') END AS action,
               src_ip, dest, CAST(NULL AS VARCHAR) AS event_type_override, raw_ref
        FROM g
    """


def _m365_reason(prefix: str = "") -> str:
    """SQL: why a trace row is unusable, else null (shared by the CSV and JSON readers)."""
    return f"""CASE WHEN {prefix}"SenderAddress" IS NULL AND {prefix}"RecipientAddress" IS NULL
                          THEN 'not a message trace record (no SenderAddress or RecipientAddress)'
                     WHEN _t IS NULL THEN 'bad Received time: ' || coalesce({prefix}"Received", 'missing')
                          || ' (expected ISO 8601, /Date(ms)/ or M/d/yyyy h:mm:ss AM)'
                     WHEN {prefix}"Size" IS NOT NULL AND TRY_CAST({prefix}"Size" AS BIGINT) IS NULL
                          THEN 'bad number in Size: ' || {prefix}"Size"
                     WHEN {prefix}"MessageTraceId" IS NULL AND {prefix}"MessageId" IS NULL
                          THEN 'no MessageTraceId or MessageId' END"""


class M365TraceCSV:
    name = M365_CSV_NAME
    data_model = EMAIL
    description = "Microsoft 365 / Exchange Online message trace, CSV export (Get-MessageTrace | Export-Csv)"
    sample = ('"2026-11-02T09:01:01.0000000Z","alice@example.com","bob@gmail.com","Q4 pricing","Delivered",'
              '"142.250.102.26","10.20.0.15","48213","<abc@example.com>","3f2504e0-4f89-11d3-9a0c-0305e82c3301"')

    def sniff(self, head: list[str]) -> bool:
        return _csv_header(head, {"Received", "SenderAddress", "RecipientAddress", "MessageTraceId"}) is not None

    def parse(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> ParsedBatch:
        install_macros(con, ctx)
        header = _csv_header(ctx.header_lines, {"Received", "SenderAddress", "RecipientAddress"})
        if header is None:
            raise SourceError(f"{ctx.origin}: no message trace header (Received, SenderAddress, RecipientAddress, …) "
                             "in the first lines")
        pos = {name: i + 1 for i, name in enumerate(header)}
        n = len(header)

        def cell(name: str) -> str:
            return f"nullif(trim(ew_csv_cell(cells[{pos[name]}])), '')" if name in pos else "CAST(NULL AS VARCHAR)"

        cols = ", ".join(f'{cell(name)} AS "{name}"' for name in M365_FIELDS)
        first = sql_string(header[0])
        reason = _m365_reason()
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE m365c_lines AS
            WITH c AS (
                SELECT line_no, ltrim(line, chr(65279)) AS line FROM raw_lines
            ), k AS (
                SELECT line_no, line,
                    CASE WHEN trim(line) = '' THEN 'blank line'
                         WHEN starts_with(line, '#') THEN 'header'
                         WHEN starts_with(line, '"' || {first} || '"') OR starts_with(line, {first} || ',') THEN 'header'
                         END AS skip
                FROM c
            ), s AS (
                SELECT line_no, skip, CASE WHEN skip IS NULL THEN {csv_cells_sql()} END AS cells, line FROM k
            ), f AS (
                SELECT line_no, skip, len(cells) AS n, {csv_covers_sql('cells')} AS covered, {cols} FROM s
            ), t AS (
                SELECT *, {_split_time_sql('"Received"')} AS _t FROM f
            )
            SELECT *,
                CASE WHEN skip IS NOT NULL THEN 'skipped'
                     WHEN NOT covered OR n <> {n} THEN 'quarantined'
                     WHEN ({reason}) IS NOT NULL THEN 'quarantined'
                     ELSE 'parsed' END AS outcome,
                CASE WHEN skip IS NOT NULL THEN skip
                     WHEN NOT covered THEN 'unbalanced quotes in CSV line'
                     WHEN n <> {n} THEN 'expected {n} comma-separated fields (as the header), found ' || n
                     ELSE {reason} END AS reason
            FROM t
        """)
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE m365c_groups AS
            {_m365_groups_sql(ctx, f"(SELECT *, {raw_ref_sql(ctx)} AS raw_ref, {{'t': _t, 'l': line_no}} AS o FROM m365c_lines WHERE outcome = 'parsed')")}
        """)
        return _dedup_and_emit(con, ctx, self.name, "m365c_groups",
                               "(SELECT line_no, outcome, reason FROM m365c_lines)", "m365 trace", M365_SCOPE)


class M365TraceJSON:
    name = M365_JSON_NAME
    data_model = EMAIL
    description = ("Microsoft 365 message trace as JSON: the reporting web service's {\"d\": {\"results\": […]}} "
                   "or {\"value\": […]}, a JSON array, or JSON lines")
    sample = ('{"d": {"results": [{"Received": "/Date(1793610061000)/", "SenderAddress": "alice@example.com", '
              '"RecipientAddress": "bob@gmail.com", "Subject": "Q4 pricing", "Status": "Delivered", "Size": 48213, '
              '"MessageId": "<abc@example.com>", "MessageTraceId": "3f2504e0-4f89-11d3-9a0c-0305e82c3301"}]}}')

    def sniff(self, head: list[str]) -> bool:
        text = "\n".join(head).lstrip("\ufeff").lstrip()
        if not text.startswith(("{", "[")):
            return False
        return ('"SenderAddress"' in text or '"senderAddress"' in text) and \
            ('"RecipientAddress"' in text or '"recipientAddress"' in text) and \
            ('"MessageTraceId"' in text or '"Received"' in text or '"receivedDateTime"' in text)

    def parse(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> ParsedBatch:
        install_macros(con, ctx)
        note = None
        nonblank, valid = con.execute(
            "SELECT count(*) FILTER (WHERE trim(line) <> ''), "
            "count(*) FILTER (WHERE trim(line) <> '' AND json_valid(ltrim(line, chr(65279)))) FROM raw_lines"
        ).fetchall()[0]
        document = False
        if valid < nonblank:
            document = bool(con.execute(
                "SELECT coalesce(json_valid(string_agg(ltrim(line, chr(65279)), chr(10) ORDER BY line_no)), false) "
                "FROM raw_lines").fetchall()[0][0])
        if document:
            con.execute("""
                CREATE OR REPLACE TEMP TABLE m365j_docs AS
                SELECT min(line_no) AS line_no, CAST(string_agg(ltrim(line, chr(65279)), chr(10) ORDER BY line_no) AS JSON) AS doc
                FROM raw_lines
            """)
            classified_lines = ("(SELECT line_no, CASE WHEN trim(line) = '' THEN 'skipped' ELSE 'parsed' END AS outcome, "
                                "CASE WHEN trim(line) = '' THEN 'blank line' END AS reason FROM raw_lines)")
        else:
            con.execute("""
                CREATE OR REPLACE TEMP TABLE m365j_docs AS
                SELECT line_no, CASE WHEN json_valid(ltrim(line, chr(65279))) THEN CAST(ltrim(line, chr(65279)) AS JSON) END AS doc,
                       trim(line) = '' AS blank
                FROM raw_lines
            """)
            classified_lines = None
        # each document (a line or the whole batch) → its records, with their index
        con.execute("""
            CREATE OR REPLACE TEMP TABLE m365j_records AS
            WITH d AS (
                SELECT line_no, doc,
                    CASE WHEN doc IS NULL THEN NULL
                         WHEN json_type(doc) = 'ARRAY' THEN doc
                         WHEN json_type(doc) <> 'OBJECT' THEN NULL
                         WHEN json_type(doc, '$.d.results') = 'ARRAY' THEN json_extract(doc, '$.d.results')
                         WHEN json_type(doc, '$.value') = 'ARRAY' THEN json_extract(doc, '$.value')
                         WHEN json_type(doc, '$.d') = 'ARRAY' THEN json_extract(doc, '$.d')
                         WHEN json_type(doc, '$.d') = 'OBJECT' THEN json_array(json_extract(doc, '$.d'))
                         ELSE json_array(doc) END AS records
                FROM m365j_docs WHERE doc IS NOT NULL
            )
            SELECT line_no, u.i AS idx, u.rec
            FROM d, LATERAL (SELECT generate_subscripts(json_transform(records, '["JSON"]'), 1) AS i,
                                    unnest(json_transform(records, '["JSON"]')) AS rec) u
            WHERE records IS NOT NULL
        """)

        def field(name: str) -> str:
            paths = M365_JSON_PATHS[name]
            return "coalesce(" + ", ".join(f"json_extract_string(rec, '$.\"{p}\"')" for p in paths) + ")"

        cols = ", ".join(f'nullif(trim({field(name)}), \'\') AS "{name}"' for name in M365_FIELDS)
        reason = _m365_reason()
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE m365j_rows AS
            WITH f AS (
                SELECT line_no, idx, json_type(rec) = 'OBJECT' AS is_object, {cols} FROM m365j_records
            ), t AS (
                SELECT *, {_split_time_sql('"Received"')} AS _t FROM f
            )
            SELECT *, CASE WHEN NOT is_object THEN 'record is not a JSON object' ELSE {reason} END AS reason FROM t
        """)
        if classified_lines is None:
            # a line is parsed when all its records are good, else quarantined with the first reason
            classified_lines = """(
                SELECT d.line_no,
                    CASE WHEN d.blank THEN 'skipped'
                         WHEN d.doc IS NULL THEN 'quarantined'
                         WHEN count(r.idx) = 0 THEN 'skipped'
                         WHEN count(r.reason) > 0 THEN 'quarantined'
                         ELSE 'parsed' END AS outcome,
                    CASE WHEN d.blank THEN 'blank line'
                         WHEN d.doc IS NULL THEN 'not JSON (expected a message trace record or document per line)'
                         WHEN count(r.idx) = 0 THEN 'JSON without message trace records'
                         ELSE arg_min(r.reason, r.idx) FILTER (WHERE r.reason IS NOT NULL) END AS reason
                FROM m365j_docs d LEFT JOIN m365j_rows r USING (line_no)
                GROUP BY d.line_no, d.blank, d.doc IS NULL)"""
            good = "SELECT r.* FROM m365j_rows r WHERE r.line_no NOT IN (SELECT line_no FROM m365j_rows WHERE reason IS NOT NULL)"
        else:
            # a document's lines are one unit: its bad records are left out and reported in a note
            good = "SELECT * FROM m365j_rows WHERE reason IS NULL"
            bad = con.execute("SELECT count(*), arg_min(reason, idx) FROM m365j_rows WHERE reason IS NOT NULL").fetchall()[0]
            if bad[0]:
                note = f"m365 trace: {bad[0]} records of the JSON document left out, the first: {bad[1]}"
        ref = f"{raw_ref_sql(ctx)} || '#' || CAST(idx AS VARCHAR)"
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE m365j_groups AS
            {_m365_groups_sql(ctx, f"(SELECT *, {ref} AS raw_ref, {{'t': _t, 'l': line_no, 'i': idx}} AS o FROM ({good}))")}
        """)
        batch = _dedup_and_emit(con, ctx, self.name, "m365j_groups", classified_lines, "m365 trace", M365_SCOPE)
        if note:
            batch.notes.insert(0, note)
        return batch

