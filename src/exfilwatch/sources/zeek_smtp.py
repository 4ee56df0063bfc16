"""Zeek smtp.log → `email` and Zeek files.log → `file_transfer`, TSV and JSON.

smtp.log has one record per SMTP transaction (a connection `uid` may carry several, numbered
by `trans_depth`): envelope (`mailfrom`, `rcptto`), headers (`from`, `to`, `cc`, `msg_id`,
`subject`), the server's `last_reply`, and `fuids`, the files.log ids of the MIME parts. It
has no size. A record becomes one message row: sender = `mailfrom` (else the From header),
recipients = `rcptto` (else To + Cc), `internal_message_id` = `uid#trans_depth`, action from
`last_reply` (2xx delivered, 4xx deferred, 5xx failed). Records without MAIL FROM and RCPT TO
(probes, or STARTTLS sessions whose rest Zeek cannot see) are skipped and counted.

Size and attachment names are joined at ingest time, from what is already in the lake:

* files.log (this module's `zeek_files` sources → the `file_transfer` model): the message's
  size is the sum of `seen_bytes` of its `fuids` (the decoded MIME parts: body and
  attachments, without headers), its `file_name` the parts' file names;
* else conn.log (`network_traffic` from `zeek_conn`/`zeek_conn_json`, `session_id` = uid):
  `orig_bytes` of the connection, when it carried this one transaction (protocol and
  base64 overhead included, so about 4/3 of the files.log figure);
* else the size is null and a note says how many messages lack it and what to ingest.

So ingest files.log and conn.log before smtp.log: a folder ingest does, as it takes files in
name order (conn.log, files.log, smtp.log). The lake only appends: a size missing at ingest
stays missing. Joining at query time instead would need the fuids stored with each message,
which the `email` model does not have.
"""

from __future__ import annotations

from datetime import timedelta

import duckdb

from exfilwatch.errors import SourceError
from exfilwatch.models import EMAIL, FILE_TRANSFER
from exfilwatch.sources.base import ParseContext, ParsedBatch, epoch_seconds_sql, raw_ref_sql, sql_string
from exfilwatch.sources.mailcommon import direction_notes, email_select, install_macros
from exfilwatch.sources.zeek import first_data_line, is_zeek_json, is_zeek_tsv, read_zeek_header, zeek_value

SMTP_FIELDS = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "trans_depth", "helo", "mailfrom",
               "rcptto", "date", "from", "to", "cc", "reply_to", "msg_id", "in_reply_to", "subject",
               "x_originating_ip", "first_received", "second_received", "last_reply", "path", "user_agent", "tls",
               "fuids", "is_webmail"]
SMTP_LISTS = {"rcptto", "to", "cc", "path", "fuids"}
SMTP_REQUIRED = ["ts", "uid", "id.orig_h", "id.resp_h", "mailfrom", "rcptto"]

FILES_FIELDS = ["ts", "fuid", "tx_hosts", "rx_hosts", "conn_uids", "uid", "id.orig_h", "id.resp_h", "source", "depth",
                "analyzers", "mime_type", "filename", "duration", "local_orig", "is_orig", "seen_bytes", "total_bytes",
                "missing_bytes", "overflow_bytes", "timedout", "parent_fuid"]
FILES_LISTS = {"tx_hosts", "rx_hosts", "conn_uids", "analyzers"}
FILES_REQUIRED = ["ts", "fuid"]

NUMBERS = {"id.orig_p": "INTEGER", "id.resp_p": "INTEGER", "trans_depth": "INTEGER", "depth": "INTEGER",
           "seen_bytes": "BIGINT", "total_bytes": "BIGINT"}


def _tsv_table(con: duckdb.DuckDBPyConnection, ctx: ParseContext, table: str, path: str, fields: list[str],
               lists: set[str], required: list[str]) -> None:
    """raw_lines (Zeek TSV) → `table`: one text or list column per field, and `n`/`line`/`header`."""
    header = read_zeek_header(ctx.header_lines, [])
    if not header.fields:
        raise SourceError(f"{ctx.origin}: no Zeek #fields header in the first lines")
    missing = [f for f in required if f not in header.fields]
    if missing:
        raise SourceError(f"{ctx.origin}: Zeek {path}.log #fields header lacks {', '.join(missing)}")
    set_sep = ","
    for line in ctx.header_lines:
        if line.startswith("#set_separator"):
            parts = line.split(header.separator, 1)
            set_sep = parts[1] if len(parts) == 2 else set_sep
    position = {name: i + 1 for i, name in enumerate(header.fields)}
    columns = []
    for name in fields:
        if name not in position:
            columns.append(f'CAST(NULL AS {"VARCHAR[]" if name in lists else "VARCHAR"}) AS "{name}"')
        elif name in lists:
            value = zeek_value(f"f[{position[name]}]")
            columns.append(f'CASE WHEN {value} IS NOT NULL THEN string_split({value}, {sql_string(set_sep)}) END AS "{name}"')
        else:
            columns.append(f'{zeek_value(f"f[{position[name]}]")} AS "{name}"')
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        WITH s AS (SELECT line_no, line, string_split(line, {sql_string(header.separator)}) AS f FROM raw_lines)
        SELECT line_no, line, len(f) AS n, {len(header.fields)} AS n_expected,
               starts_with(line, '#') AS header, trim(line) = '' AS blank,
               {epoch_seconds_sql(f"f[{position['ts']}]")} AS _time,
               {", ".join(columns)}
        FROM s
    """)


def _json_table(con: duckdb.DuckDBPyConnection, table: str, fields: list[str], lists: set[str]) -> None:
    """raw_lines (Zeek JSON lines) → `table` with the same columns as `_tsv_table`."""
    columns = []
    for name in fields:
        path = sql_string(f'$."{name}"')
        if name in lists:
            columns.append(f"""CASE WHEN is_json THEN CASE json_type(line, {path})
                                   WHEN 'ARRAY' THEN TRY_CAST(json_extract(line, {path}) AS VARCHAR[])
                                   WHEN 'VARCHAR' THEN [json_extract_string(line, {path})] END END AS "{name}\"""")
        else:
            columns.append(f'CASE WHEN is_json THEN json_extract_string(line, {path}) END AS "{name}"')
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        WITH c AS (
            SELECT line_no, line,
                   CASE WHEN json_valid(line) THEN json_type(line) = 'OBJECT' ELSE false END AS is_json
            FROM raw_lines
        ), f AS (SELECT line_no, line, is_json, {", ".join(columns)} FROM c)
        SELECT *, CASE WHEN is_json THEN 1 ELSE 0 END AS n, 1 AS n_expected, false AS header, trim(line) = '' AS blank,
               coalesce({epoch_seconds_sql('ts')}, TRY_CAST(ts AS TIMESTAMPTZ)) AS _time
        FROM f
    """)


def _checks(table: str, numbers: list[str], required: list[str], tsv: bool) -> str:
    """SQL CASE: the reason a row is unusable (quarantine), else null."""
    checks = []
    if tsv:
        checks.append("WHEN n <> n_expected THEN 'expected ' || n_expected || ' tab-separated fields (as the #fields header), found ' || n")
    else:
        checks.append("WHEN n = 0 THEN 'not a JSON object (expected one Zeek record per line)'")
    checks.append("WHEN _time IS NULL THEN 'bad timestamp in field ts: ' || coalesce(ts, 'missing') || ' (expected epoch seconds or ISO 8601)'")
    for name in required:
        checks.append(f'WHEN "{name}" IS NULL THEN \'missing required field {name}\'')
    for name in numbers:
        typ = NUMBERS[name]
        checks.append(f'WHEN "{name}" IS NOT NULL AND TRY_CAST("{name}" AS {typ}) IS NULL '
                      f'THEN \'bad number in field {name}: \' || "{name}"')
        checks.append(f'WHEN TRY_CAST("{name}" AS {typ}) < 0 THEN \'negative number in field {name}: \' || "{name}"')
    return "CASE " + " ".join(checks) + " END"


def _day_window(con: duckdb.DuckDBPyConnection, table: str) -> tuple[str | None, str | None]:
    lo, hi = con.execute(f"SELECT min(_time), max(_time) FROM {table}").fetchall()[0]
    if lo is None:
        return None, None
    return (lo - timedelta(days=1)).strftime("%Y-%m-%d"), (hi + timedelta(days=1)).strftime("%Y-%m-%d")


def _lake_relation(ctx: ParseContext, model: str, first: str | None, last: str | None, columns: str) -> str | None:
    if ctx.state is None or first is None:
        return None
    files = ctx.state.lake_files(model, first, last)
    if not files:
        return None
    listed = ", ".join(sql_string(f) for f in files)
    return f"(SELECT {columns} FROM read_parquet([{listed}]))"


# --- smtp.log ------------------------------------------------------------------------------------

def _smtp_parse(con: duckdb.DuckDBPyConnection, ctx: ParseContext, table: str, source: str, tsv: bool) -> ParsedBatch:
    install_macros(con, ctx)
    reason = _checks(table, ["id.orig_p", "id.resp_p", "trans_depth"], ["uid", "id.orig_h", "id.resp_h"], tsv)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table}_c AS
        SELECT *,
            CASE WHEN blank THEN 'skipped' WHEN header THEN 'skipped'
                 WHEN ({reason}) IS NOT NULL THEN 'quarantined'
                 WHEN mailfrom IS NULL AND rcptto IS NULL AND "from" IS NULL AND "to" IS NULL THEN 'skipped'
                 ELSE 'parsed' END AS outcome,
            CASE WHEN blank THEN 'blank line' WHEN header THEN 'header'
                 WHEN ({reason}) IS NOT NULL THEN {reason}
                 WHEN mailfrom IS NULL AND rcptto IS NULL AND "from" IS NULL AND "to" IS NULL THEN
                      CASE WHEN lower(tls) IN ('t', 'true') THEN 'smtp session without a message (STARTTLS: the rest is encrypted)'
                           ELSE 'smtp session without a message (no MAIL FROM / RCPT TO)' END
                 END AS reason
        FROM {table}
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table}_m AS
        SELECT line_no, _time, uid, TRY_CAST(trans_depth AS INTEGER) AS trans_depth,
               coalesce(fuids, []) AS fuids,
               nullif(trim(msg_id, '<> '), '') AS message_id,
               uid || '#' || coalesce(trans_depth, '1') AS internal_message_id,
               ew_addr(coalesce(mailfrom, "from")) AS src_user,
               ew_addr_list(CASE WHEN len(coalesce(rcptto, [])) > 0 THEN rcptto
                                 ELSE list_concat(coalesce("to", []), coalesce(cc, [])) END) AS recipient,
               subject,
               CASE WHEN regexp_matches(coalesce(last_reply, ''), '^2\\d\\d') THEN 'delivered'
                    WHEN regexp_matches(coalesce(last_reply, ''), '^4\\d\\d') THEN 'deferred'
                    WHEN regexp_matches(coalesce(last_reply, ''), '^5\\d\\d') THEN 'failed'
                    ELSE 'unknown' END AS action,
               "id.orig_h" AS src_ip, "id.resp_h" AS dest,
               CAST(NULL AS VARCHAR) AS event_type_override,
               {raw_ref_sql(ctx)} AS raw_ref
        FROM {table}_c WHERE outcome = 'parsed'
    """)
    first, last = _day_window(con, f"{table}_m")
    files = _lake_relation(ctx, FILE_TRANSFER.name, first, last, "file_id, bytes, total_bytes, file_name")
    conns = _lake_relation(ctx, "network_traffic", first, last, "session_id, bytes_out, source")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table}_files AS
        SELECT file_id, any_value(coalesce(bytes, total_bytes)) AS bytes, any_value(file_name) AS file_name
        FROM {files or "(SELECT NULL::VARCHAR AS file_id, NULL::BIGINT AS bytes, NULL::BIGINT AS total_bytes, NULL::VARCHAR AS file_name WHERE false)"}
        WHERE file_id IN (SELECT unnest(fuids) FROM {table}_m)
        GROUP BY file_id
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table}_conn AS
        SELECT session_id, max(bytes_out) AS bytes_out
        FROM {conns or "(SELECT NULL::VARCHAR AS session_id, NULL::BIGINT AS bytes_out, NULL::VARCHAR AS source WHERE false)"}
        WHERE source IN ('zeek_conn', 'zeek_conn_json') AND session_id IN (SELECT uid FROM {table}_m)
        GROUP BY session_id
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table}_sized AS
        WITH parts AS (
            SELECT m.line_no, sum(f.bytes) AS bytes, count(f.file_id) AS found,
                   list_sort(list_distinct(list(f.file_name) FILTER (WHERE f.file_name IS NOT NULL))) AS names
            FROM (SELECT line_no, unnest(fuids) AS fuid FROM {table}_m) m
            JOIN {table}_files f ON f.file_id = m.fuid GROUP BY m.line_no
        ), per_uid AS (SELECT uid, count(*) AS transactions FROM {table}_m GROUP BY uid)
        SELECT m.*,
               CASE WHEN p.found > 0 THEN p.bytes
                    WHEN u.transactions = 1 AND coalesce(m.trans_depth, 1) = 1 THEN c.bytes_out END AS size,
               CASE WHEN p.found > 0 THEN 'files' WHEN u.transactions = 1 AND coalesce(m.trans_depth, 1) = 1
                         AND c.bytes_out IS NOT NULL THEN 'conn' END AS size_from,
               CASE WHEN len(p.names) > 0 THEN p.names END AS file_name
        FROM {table}_m m
        LEFT JOIN parts p USING (line_no)
        LEFT JOIN per_uid u USING (uid)
        LEFT JOIN {table}_conn c ON c.session_id = m.uid
    """)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table}_events AS {email_select(source, table + '_sized')}")
    total, from_files, from_conn = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE size_from = 'files'), count(*) FILTER (WHERE size_from = 'conn') "
        f"FROM {table}_sized").fetchall()[0]
    notes = []
    missing = total - from_files - from_conn
    if missing:
        what = []
        if files is None:
            what.append("no files.log (zeek_files) in the lake for these days")
        if conns is None:
            what.append("no conn.log (zeek_conn) in the lake for these days")
        if not what:
            what.append("no files.log rows for their fuids (or no fuids) and no conn.log row for their connection")
        notes.append(f"zeek smtp: sizes missing for {missing} of {total} messages: {'; '.join(what)} "
                     "(ingest files.log and conn.log before smtp.log; a folder ingest takes them in name order)")
    if from_conn:
        notes.append(f"zeek smtp: {from_conn} message sizes taken from conn.log orig_bytes (with SMTP overhead)")
    notes += direction_notes(con, ctx, f"{table}_events", "zeek smtp")
    return ParsedBatch(classified=f"(SELECT line_no, outcome, reason FROM {table}_c)",
                       events=f"(SELECT * FROM {table}_events)", notes=notes)


class ZeekSmtpTSV:
    name = "zeek_smtp"
    data_model = EMAIL
    description = "Zeek smtp.log, TSV with #fields header; sizes from files.log/conn.log already ingested"
    sample = ("1793610061.123456\tCHhAvVGS1DHFjwGM9\t10.20.0.15\t51234\t10.10.0.5\t25\t1\tws-alice\talice@example.com\t"
              "bob@gmail.com\tMon, 2 Nov 2026 09:01:01 +0000\tAlice <alice@example.com>\tbob@gmail.com\t-\t-\t"
              "<abc@example.com>\t-\tQ4 pricing\t-\t-\t-\t250 2.0.0 Ok: queued as 4F2A11C03A\t10.10.0.5,10.20.0.15\t"
              "Thunderbird\tF\tFmFp351N5nhsMmAfQg")

    def sniff(self, head: list[str]) -> bool:
        return is_zeek_tsv(head, "smtp", "mailfrom")

    def parse(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> ParsedBatch:
        _tsv_table(con, ctx, "zsmtp", "smtp", SMTP_FIELDS, SMTP_LISTS, SMTP_REQUIRED)
        return _smtp_parse(con, ctx, "zsmtp", self.name, tsv=True)


class ZeekSmtpJSON:
    name = "zeek_smtp_json"
    data_model = EMAIL
    description = "Zeek smtp.log as JSON lines; sizes from files.log/conn.log already ingested"
    sample = ('{"ts":"2026-11-02T09:01:01.123456Z","uid":"CHhAvVGS1DHFjwGM9","id.orig_h":"10.20.0.15","id.orig_p":51234,'
              '"id.resp_h":"10.10.0.5","id.resp_p":25,"trans_depth":1,"mailfrom":"alice@example.com",'
              '"rcptto":["bob@gmail.com"],"subject":"Q4 pricing","last_reply":"250 2.0.0 Ok","fuids":["FmFp351N5nhsMmAfQg"]}')

    def sniff(self, head: list[str]) -> bool:
        line = first_data_line(head) or ""
        return is_zeek_json(head, {"uid", "id.orig_h"}) and (
            '"_path":"smtp"' in line.replace(" ", "") or any(k in line for k in ('"mailfrom"', '"rcptto"', '"helo"')))

    def parse(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> ParsedBatch:
        _json_table(con, "zsmtpj", SMTP_FIELDS, SMTP_LISTS)
        return _smtp_parse(con, ctx, "zsmtpj", self.name, tsv=False)


# --- files.log -----------------------------------------------------------------------------------

def _files_parse(con: duckdb.DuckDBPyConnection, ctx: ParseContext, table: str, source: str, tsv: bool) -> ParsedBatch:
    reason = _checks(table, ["depth", "seen_bytes", "total_bytes"], ["fuid"], tsv)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table}_c AS
        SELECT *,
            CASE WHEN blank OR header THEN 'skipped' WHEN ({reason}) IS NOT NULL THEN 'quarantined'
                 ELSE 'parsed' END AS outcome,
            CASE WHEN blank THEN 'blank line' WHEN header THEN 'header' ELSE {reason} END AS reason
        FROM {table}
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table}_events AS
        SELECT _time, fuid AS file_id,
               coalesce(conn_uids, CASE WHEN uid IS NOT NULL THEN [uid] END) AS session_ids,
               coalesce(tx_hosts, CASE WHEN lower(is_orig) IN ('t', 'true') THEN ["id.orig_h"]
                                       WHEN lower(is_orig) IN ('f', 'false') THEN ["id.resp_h"] END) AS src_ips,
               coalesce(rx_hosts, CASE WHEN lower(is_orig) IN ('t', 'true') THEN ["id.resp_h"]
                                       WHEN lower(is_orig) IN ('f', 'false') THEN ["id.orig_h"] END) AS dest_ips,
               source AS app, mime_type, filename AS file_name,
               TRY_CAST(seen_bytes AS BIGINT) AS bytes, TRY_CAST(total_bytes AS BIGINT) AS total_bytes,
               CASE WHEN lower(is_orig) IN ('t', 'true') THEN true WHEN lower(is_orig) IN ('f', 'false') THEN false END
                   AS is_orig,
               'file-transfer' AS event_type, {sql_string(source)} AS source, {raw_ref_sql(ctx)} AS raw_ref
        FROM {table}_c WHERE outcome = 'parsed'
    """)
    return ParsedBatch(classified=f"(SELECT line_no, outcome, reason FROM {table}_c)",
                       events=f"(SELECT * FROM {table}_events)")


class ZeekFilesTSV:
    name = "zeek_files"
    data_model = FILE_TRANSFER
    description = "Zeek files.log, TSV (Zeek 3-4 conn_uids/tx_hosts or 5+ uid/id fields): sizes for smtp.log"
    sample = ("1793610061.200000\tFmFp351N5nhsMmAfQg\t10.20.0.15\t10.10.0.5\tCHhAvVGS1DHFjwGM9\tSMTP\t3\t(empty)\t"
              "application/pdf\tpricing.pdf\t0.000061\t-\tT\t48213\t-\t0\t0\tF\t-")

    def sniff(self, head: list[str]) -> bool:
        return is_zeek_tsv(head, "files", "fuid")

    def parse(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> ParsedBatch:
        _tsv_table(con, ctx, "zfiles", "files", FILES_FIELDS, FILES_LISTS, FILES_REQUIRED)
        return _files_parse(con, ctx, "zfiles", self.name, tsv=True)


class ZeekFilesJSON:
    name = "zeek_files_json"
    data_model = FILE_TRANSFER
    description = "Zeek files.log as JSON lines: sizes for smtp.log"
    sample = ('{"ts":1793610061.2,"fuid":"FmFp351N5nhsMmAfQg","uid":"CHhAvVGS1DHFjwGM9","id.orig_h":"10.20.0.15",'
              '"id.resp_h":"10.10.0.5","source":"SMTP","mime_type":"application/pdf","filename":"pricing.pdf",'
              '"is_orig":true,"seen_bytes":48213}')

    def sniff(self, head: list[str]) -> bool:
        return is_zeek_json(head, {"fuid"}) and any(
            k in (first_data_line(head) or "") for k in ('"seen_bytes"', '"mime_type"', '"analyzers"', '"_path":"files"'))

    def parse(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> ParsedBatch:
        _json_table(con, "zfilesj", FILES_FIELDS, FILES_LISTS)
        return _files_parse(con, ctx, "zfilesj", self.name, tsv=False)
