"""CMU CERT insider-threat data set `email.csv` → `email`.

Layouts (the header line names them; the reader follows the header):

* r4.x: `id,date,user,pc,to,cc,bcc,from,size,attachments,content` (`attachments` is a count);
* r5.x / r6.x: `id,date,user,pc,to,cc,bcc,from,activity,size,attachments,content` (`activity` is
  Send or View; `attachments` is `path(size);path(size)`).

`date` is `MM/DD/YYYY HH:MM:SS` in local time (`--source-tz`). One row per line: sender
`from`, recipients `to` + `cc` + `bcc` (`;`-separated), size `size`, file names the base names
of the attachment paths, `message_id` = `internal_message_id` = `id`, action `delivered`.
View rows (reading a received message) are not outgoing mail: skipped and counted. Every other
row is mail the user sent, also from a personal webmail address (the data set does this), so
its direction depends on the recipients only: outbound when one is outside `internal_domains`. `content`
is not kept; extra commas in it are tolerated. The data set's `user` (the employee's account)
is kept as the model's `user`, the account that sent the message; `pc` has no column.
"""

from __future__ import annotations

import csv

import duckdb

from exfilwatch.errors import SourceError
from exfilwatch.models import EMAIL
from exfilwatch.sources.base import ParseContext, ParsedBatch, raw_ref_sql, sql_string
from exfilwatch.sources.mailcommon import csv_cells_sql, csv_covers_sql, direction_notes, email_select, install_macros

CERT_FIELDS = ["id", "date", "user", "pc", "to", "cc", "bcc", "from", "size", "attachments", "content"]


def cert_header(head: list[str]) -> list[str] | None:
    for line in head:
        text = line.lstrip("\ufeff").strip()
        if not text:
            continue
        try:
            cells = [c.strip().lower() for c in next(csv.reader([text]))]
        except (csv.Error, StopIteration):
            return None
        wanted = {"id", "date", "user", "pc", "to", "cc", "bcc", "from", "size", "attachments"}
        return cells if wanted <= set(cells) else None
    return None


class CertEmail:
    name = "cert_email"
    data_model = EMAIL
    sent_by_user = True  # every row is mail the user sent: direction from the recipients only
    description = "CMU CERT insider-threat email.csv (r4.2 and r5/r6 with activity Send/View)"
    sample = ("{R3I7-S4TX96FG-8219JWFF},01/02/2010 07:11:45,LAP0338,PC-5758,Dean.Flynn.Hines@dtaa.com;"
              "Wade_Harrison@lockheed.com,Nathaniel.Hunter.Heath@dtaa.com,,Lynn.Adena.Bradley@dtaa.com,Send,25830,"
              "C:\\\\Documents\\\\notes.doc(12345),middle f2 earth ...")

    def sniff(self, head: list[str]) -> bool:
        return cert_header(head) is not None

    def parse(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> ParsedBatch:
        install_macros(con, ctx)
        header = cert_header(ctx.header_lines)
        if header is None:
            raise SourceError(f"{ctx.origin}: no CERT email.csv header (id,date,user,pc,to,cc,bcc,from,…) on the first line")
        pos = {name: i + 1 for i, name in enumerate(header)}
        n = len(header) - (1 if header[-1] == "content" else 0)  # content may hold commas: at least the others
        has_activity = "activity" in pos

        def cell(name: str) -> str:
            return f"nullif(trim(ew_csv_cell(cells[{pos[name]}])), '')" if name in pos else "CAST(NULL AS VARCHAR)"

        fields = ["id", "date", "user", "to", "cc", "bcc", "from", "size", "attachments"] + (["activity"] if has_activity else [])
        cols = ", ".join(f'{cell(f)} AS "{f}"' for f in fields)
        if not has_activity:
            cols += ', CAST(NULL AS VARCHAR) AS "activity"'
        tz = sql_string(ctx.source_tz)
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE cert_lines AS
            WITH c AS (
                SELECT line_no, line,
                    CASE WHEN trim(line) = '' THEN 'blank line'
                         WHEN lower(ltrim(line, chr(65279))) LIKE 'id,date,user,pc,%' THEN 'header' END AS skip
                FROM raw_lines
            ), s AS (
                SELECT line_no, skip, CASE WHEN skip IS NULL THEN {csv_cells_sql()} END AS cells, line FROM c
            ), f AS (
                SELECT line_no, skip, len(cells) AS n, {csv_covers_sql('cells')} AS covered, {cols} FROM s
            ), t AS (
                SELECT *, timezone({tz}, try_strptime("date", ['%m/%d/%Y %H:%M:%S', '%m/%d/%Y %H:%M'])) AS _time
                FROM f
            )
            SELECT *,
                CASE WHEN skip IS NOT NULL THEN 'skipped'
                     WHEN NOT covered OR n < {n} OR _time IS NULL THEN 'quarantined'
                     WHEN "size" IS NOT NULL AND TRY_CAST("size" AS BIGINT) IS NULL THEN 'quarantined'
                     WHEN "from" IS NULL THEN 'quarantined'
                     WHEN "activity" IS NULL OR lower("activity") = 'send' THEN 'parsed'
                     ELSE 'skipped' END AS outcome,
                CASE WHEN skip IS NOT NULL THEN skip
                     WHEN NOT covered THEN 'unbalanced quotes in CSV line'
                     WHEN n < {n} THEN 'expected at least {n} comma-separated fields (as the header), found ' || n
                     WHEN _time IS NULL THEN 'bad date: ' || coalesce("date", 'missing') || ' (expected MM/DD/YYYY HH:MM:SS)'
                     WHEN "size" IS NOT NULL AND TRY_CAST("size" AS BIGINT) IS NULL THEN 'bad number in size: ' || "size"
                     WHEN "from" IS NULL THEN 'missing from'
                     WHEN "activity" IS NULL OR lower("activity") = 'send' THEN NULL
                     WHEN lower("activity") = 'view' THEN 'CERT View (reading a received message, not sending)'
                     ELSE 'CERT activity (other than Send/View)' END AS reason
            FROM t
        """)
        attachments = (
            """CASE WHEN "attachments" IS NOT NULL AND NOT regexp_matches("attachments", '^\\d+$') THEN
                   list_filter(list_transform(string_split("attachments", ';'),
                       lambda a: nullif(regexp_extract(trim(a), '([^\\\\/]+?)(?:\\(\\d+\\))?$', 1), '')),
                       lambda a: a IS NOT NULL) END"""
        )
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE cert_msgs AS
            SELECT _time, trim("id") AS message_id, trim("id") AS internal_message_id,
                   ew_addr("from") AS src_user,
                   ew_addr_list(list_concat(string_split(coalesce("to", ''), ';'), string_split(coalesce(cc, ''), ';'),
                                            string_split(coalesce(bcc, ''), ';'))) AS recipient,
                   TRY_CAST("size" AS BIGINT) AS size, CAST(NULL AS VARCHAR) AS subject,
                   nullif({attachments}, []) AS file_name,
                   'delivered' AS action, CAST(NULL AS VARCHAR) AS src_ip, CAST(NULL AS VARCHAR) AS dest,
                   CAST(NULL AS VARCHAR) AS event_type_override, "user", {raw_ref_sql(ctx)} AS raw_ref
            FROM cert_lines WHERE outcome = 'parsed'
        """)
        events = email_select(self.name, "cert_msgs", sent_by_user=self.sent_by_user, user='"user"')
        con.execute(f"CREATE OR REPLACE TEMP TABLE cert_events AS {events}")
        return ParsedBatch(classified="(SELECT line_no, outcome, reason FROM cert_lines)",
                           events="(SELECT * FROM cert_events)",
                           notes=direction_notes(con, ctx, "cert_events", "cert email"))
