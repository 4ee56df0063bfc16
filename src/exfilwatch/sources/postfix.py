"""Postfix maillog (syslog) → `email`, one row per message, joined on the queue id.

A message is spread over lines of several daemons, all carrying its queue id:

    smtpd   QID: client=host[ip][, sasl_method=…, sasl_username=…] → src_ip, user (the SASL login)
    cleanup QID: message-id=<…>                               → message_id
    cleanup QID: info: header Subject: … from h[ip]; from=<…> → subject / attachment name
    qmgr    QID: from=<…>, size=N, nrcpt=N (queue active)     → sender, size, recipient count
    smtp|lmtp|local|virtual|pipe|error…
            QID: to=<…>, [orig_to=<…>,] relay=…, delay=…, dsn=…, status=sent|deferred|bounced (…)
    qmgr    QID: from=<…>, status=expired, returned to sender  → deferred recipients failed
    cleanup QID: milter-reject: … from=<…> to=<…>             → blocked
    qmgr    QID: removed                                      → the message is complete

The key is host | queue id (not the syslog name: a re-injecting smtpd often logs under its
own `syslog_name` while cleanup and qmgr log as `postfix`). A key's lines are ordered by
time, then by arrival, so rotated files ingested newest first still join; a `removed` (or
reject) line closes a message, and a queue id reused later starts a new one. A message is written once, when it is complete: its
`removed`/reject/expired line was seen, or all `nrcpt` recipients have a final status and
ten minutes of log time passed without the `removed` line. Lines of a queue id whose qmgr
`from=` line has not been seen (its start is in an older file) wait too. Until then its lines wait in the
state store (`postfix_pending`), so a message whose lines arrive in two chunks, files or
ingests is joined once and written once. A message still pending after 7 days of log time
(beyond Postfix's default 5-day queue lifetime) is written with what is known; queue ids
that never got a `qmgr from=` line (a client that gave up, or a message that began before
the logs) are dropped after a day and counted in the notes.

The row's recipients are the delivered ones (status=sent); with none delivered, the failed
ones and the action says so. A hand-off to a local content filter (relay on a loopback
address answering "queued as X") is action `relayed`, event type `email-relay`: the filter
re-injects the message under a new queue id, and that copy is the one counted as
`email-out`.

Syslog headers: RFC 3164 (`Mmm dd hh:mm:ss host prog[pid]:`; the year from `--year` or
the file's modification time, with December lines of a file last written in January dated in
the year before; the zone from `--source-tz`), the ISO 8601 high-precision
form of rsyslog/syslog-ng (`2026-11-02T09:15:01.123456+01:00 host prog[pid]:`), and RFC 5424
(`<22>1 2026-11-02T09:15:01.123456+01:00 host postfix/smtpd 2101 - - message`, rsyslog's
`RSYSLOG_SyslogProtocol23Format`, with any structured data and a BOM before the message), also
behind a relay's own header (`Nov  2 08:15:02 relay01 1 2026-11-02T09:15:01…`): such a line is
read as the ISO form of the same message (`as_traditional`), with the sender's time and host.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

from exfilwatch.models import EMAIL
from exfilwatch.sources.base import ParseContext, ParsedBatch, raw_ref_sql, sql_string
from exfilwatch.sources.mailcommon import direction_notes, email_select, install_macros
from exfilwatch.sources.state import PENDING_COLUMNS, pending_mail_table
from exfilwatch.sources.syslog_header import local_time_sql, yearless_time_sql

SOURCE_NAME = "postfix"

QID = r"[0-9A-F]{5,20}|[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,20}"
# The syslog header up to the message body. Kept cheap for RE2: it must stay "one-pass" (an
# optional capture such as a separate pid group makes it 3 times slower, measured), the body is
# not captured (it is the rest of the line after the captured parts) and the queue id is a
# loose shape checked afterwards on the short capture.
HEADER_RE = (
    r"^(?:<\d{1,3}>)?(?P<ts>[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d(?:\.\d+)?|\d{4}-\d\d-\d\d[T ]\S+)"
    r" (?P<host>\S+) (?P<prog>[^\s\[\]:]+(?:\[\d+\])?): (?:(?P<qid>[0-9A-Za-z]{5,20}): )?"
)
HEADER_GROUPS = ["ts", "host", "prog", "qid"]

# A delivery line's form (the reference: tests/test_sources_mail.py reads lines with these and
# compares) and its fields.
DELIVERY_RE = (
    r"^to=<?[^<>,]*>?, (?:orig_to=<?[^<>,]*>?, )?relay=[^,]*, (?:conn_use=\d+, )?"
    r"delay=[0-9.]+, (?:delays=[0-9./]+, )?dsn=\d\.\d{1,3}\.\d{1,3}, status=[a-z-]+(?: \(.*\))?$"
)
DELIVERY_FIELDS = {
    "rcpt": r"^to=<?([^<>,]*)",
    "relay": r"^to=<?[^<>,]*>?, (?:orig_to=<?[^<>,]*>?, )?relay=([^,]*),",
    "dsn": r", dsn=([0-9.]+), status=",
    "status": r", status=([a-z-]+)",
}
# What the parse runs: DELIVERY_RE up to the status with the four fields as its groups, in one
# pass. RE2 extracts groups fast only from a pattern it can run one-pass (at most four groups,
# the next character always choosing the way): `delays=` and `dsn=` both begin with `d`, so the
# `d` is written once. What DELIVERY_RE allows after the status (nothing, or ` (…)` to the end)
# is checked with string functions (`delivery_ok_sql`). On the benchmark's 121,585 delivery
# lines: 0.10-0.12 CPU-s against 0.25 for a match and four captures (measured alone).
DELIVERY_READ = (
    r"^to=<?(?P<rcpt>[^<>,]*)>?, (?:orig_to=<?[^<>,]*>?, )?relay=(?P<relay>[^,]*), (?:conn_use=\d+, )?"
    r"delay=[0-9.]+, d(?:elays=[0-9./]+, d)?sn=(?P<dsn>\d\.\d{1,3}\.\d{1,3}), status=(?P<status>[a-z-]+)"
)
DELIVERY_GROUPS = ["rcpt", "relay", "dsn", "status"]


def delivery_read_sql(body: str) -> str:
    """SQL: the struct of DELIVERY_GROUPS that DELIVERY_READ reads from `body` (all '' where it does not match)."""
    return _struct_regex(body, DELIVERY_READ, DELIVERY_GROUPS)


def delivery_ok_sql(body: str, read: str) -> str:
    """SQL: whether `body` is a delivery line (matches DELIVERY_RE), given `read`, the struct of
    DELIVERY_READ's groups over it. Its status is the first `, status=` (no earlier field may
    hold a comma) and an unbroken run of `[a-z-]`, so what follows it starts right after: nothing,
    or ` (` with `)` at the end of the line. Told by positions and a 2-character piece rather than
    a copy of the rest of the line, which the CASE made up to three times per delivery line."""
    status_end = f"(strpos({body}, ', status=') + 8 + length({read}.status))"
    return (f"CASE WHEN {read}.status = '' THEN false WHEN {status_end} = length({body}) THEN true "
            f"WHEN substr({body}, {status_end} + 1, 2) = ' (' THEN ends_with({body}, ')') ELSE false END")


FROM_RE = (
    r"^from=<(?P<sender>[^<>]*)>, (?:size=(?P<size>\d{1,18}), nrcpt=(?P<nrcpt>\d{1,9}) \(queue active\)"
    r"|(?P<expired>status=expired), returned to sender)$"
)
CLIENT_RE = r"^client=[^\s\[\],]*\[([^\]]*)\]"
ORIG_CLIENT_RE = r"orig_client=[^\s\[\],]*\[([^\]]*)\]"
SASL_USER_RE = r", sasl_username=([^,]+)"
REJECT_RE = r"^(?:milter-)?(?:reject|discard): (?:.*? from [^\s\[\]]*\[(?P<ip>[^\]]*)\](?::\d+)?)?.*?(?:; from=<(?P<sender>[^<>]*)> to=<(?P<to>[^<>]*)>.*)?$"
HEADER_INFO_RE = (
    r"^(?:info|warning|prepend|replace|redirect|filter|hold): header (?P<name>[^\s:]+): (?P<value>.*) "
    r"from [^\s\[\]]*\[(?P<ip>[^\]]*)\](?::\d+)?; from=<(?P<sender>[^<>]*)> to=<[^<>]*>.*$"
)
FILENAME_RE = r"""(?i)(?:^|[;\s])(?:file)?name\*?=\s*"?([^";]+)"""

DELIVERY_DAEMONS = ["smtp", "lmtp", "local", "virtual", "pipe", "error", "retry", "discard"]
KNOWN_DAEMONS = DELIVERY_DAEMONS + [
    "smtpd", "qmgr", "oqmgr", "cleanup", "pickup", "bounce", "defer", "trace", "postscreen", "anvil", "dnsblog",
    "tlsproxy", "verify", "scache", "master", "tlsmgr", "postfix-script", "postsuper", "postqueue", "postdrop",
    "sendmail", "showq", "flush", "proxymap", "trivial-rewrite", "spawn", "postlog", "postmap", "qmqpd",
    "postmulti", "smtpd-in", "submission", "policy-spf", "postalias", "local-lmtp",
]
NRCPT_GRACE = "INTERVAL 10 MINUTE"  # all recipients final, no `removed` line yet: wait this long
STALE_AFTER = "INTERVAL 7 DAY"  # beyond the 5-day default maximal_queue_lifetime
ABANDON_AFTER = "INTERVAL 1 DAY"  # a queue id with no qmgr from= line

_HEADER = re.compile(HEADER_RE)

# RFC 5424 `<PRI>1 TIMESTAMP HOST APP-NAME PROCID MSGID SD [BOM]MSG`, perhaps behind a relay's
# header. `head` is everything before MSG. The structured data's quoted values may hold `]` and
# escaped quotes. RE2 and Python's re read it alike (the BOM is the literal character).
RFC5424_RE = (
    r"^(?P<head>(?:<\d{1,3}>)?(?:(?:[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\S+) \S+ (?:<\d{1,3}>)?)?"
    r"1 (?P<ts>\d{4}-\d\d-\d\dT\S+) (?P<host>\S+) (?P<app>\S+) (?P<pid>\S+) \S+ "
    r'(?:-|(?:\[(?:[^\]"\\]|\\.|"(?:[^"\\]|\\.)*")*\])+)(?: |$)'
    "\ufeff?)"
)
# The part of RFC5424_RE up to its timestamp: a cheap anchored test that ordinary lines fail early.
RFC5424_TEST = r"^(?:<\d{1,3}>)?(?:(?:[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\S+) \S+ (?:<\d{1,3}>)?)?1 \d{4}-"
_RFC5424 = re.compile(RFC5424_RE)


def as_traditional(line: str) -> str:
    """An RFC 5424 line as the ISO form of the same message (`TIMESTAMP HOST APP[PID]: MSG`); any
    other line as it is."""
    m = _RFC5424.match(line)
    if m is None:
        return line
    pid = "" if m["pid"] == "-" else f"[{m['pid']}]"
    return f"{m['ts']} {m['host']} {m['app']}{pid}: {line[m.end():]}"


def rfc5424_read_sql(line: str) -> str:
    """SQL: the struct of RFC5424_RE's groups (head, ts, host, app, pid) read from `line`; null for
    a line that fails RFC5424_TEST (the extracting regex runs only on lines that pass it)."""
    groups = "['head', 'ts', 'host', 'app', 'pid']"
    return (f"CASE WHEN regexp_matches({line}, {sql_string(RFC5424_TEST)}) "
            f"THEN regexp_extract({line}, {sql_string(RFC5424_RE)}, {groups}) END")


def traditional_line_sql(line: str, read: str) -> str:
    """SQL: `as_traditional` of `line`, given `read`, the struct `rfc5424_read_sql` read from it."""
    return f"""CASE WHEN {read}.head IS NULL OR {read}.head = '' THEN {line}
                    ELSE {read}.ts || ' ' || {read}.host || ' ' || {read}.app
                         || CASE WHEN {read}.pid = '-' THEN '' ELSE '[' || {read}.pid || ']' END
                         || ': ' || substr({line}, length({read}.head) + 1) END"""


def traditional_lines_sql(relation: str) -> str:
    """SQL: `relation` (line_no, line) with `as_traditional` applied to each line."""
    return f"""
        SELECT line_no, {traditional_line_sql('line', 'r')} AS line
        FROM (SELECT line_no, line, {rfc5424_read_sql('line')} AS r FROM {relation})"""


def _list(values: list[str]) -> str:
    return "[" + ", ".join(sql_string(v) for v in values) + "]"


def _struct_regex(expr: str, pattern: str, groups: list[str]) -> str:
    return f"regexp_extract({expr}, {sql_string(pattern)}, {_list(groups)})"


def classify_sql(ctx: ParseContext) -> str:
    """SQL over raw_lines: every line with its header fields, shape, outcome and reason."""
    known = _list(KNOWN_DAEMONS)
    return f"""
        WITH h0 AS (
            SELECT line_no, {_struct_regex('line', HEADER_RE, HEADER_GROUPS)} AS h, line
            FROM raw_lines
        ), r AS (
            SELECT line_no, h, line, CASE WHEN h.host = '' THEN {rfc5424_read_sql('line')} END AS r
            FROM h0
        ), h AS (
            -- A line HEADER_RE reads is never in RFC 5424 form (its header is followed by
            -- `program: `, an RFC 5424 one by `1 YYYY-`), so as_traditional leaves it as it is:
            -- only the other lines are tested, converted and read again.
            SELECT line_no, CASE WHEN r IS NULL OR r.head = '' THEN h
                                 ELSE {_struct_regex(traditional_line_sql('line', 'r'), HEADER_RE, HEADER_GROUPS)} END AS h,
                   {traditional_line_sql('line', 'r')} AS line
            FROM r
        ), g AS (
            SELECT line_no, CASE WHEN h.host = '' THEN trim(line) = '' ELSE false END AS blank, h.host AS host,
                   split_part(h.prog, '[', 1) AS prog, h.ts AS stamp,
                   CASE WHEN h.qid <> '' THEN regexp_full_match(h.qid, {sql_string(QID)}) ELSE false END AS has_qid,
                   CASE WHEN starts_with(line, '<') THEN strpos(line, '>') ELSE 0 END
                       + length(h.ts) + length(h.host) + length(h.prog) + 5 AS body_at, h.qid, line
            FROM h
        ), f AS (
            SELECT line_no, blank, host, prog, stamp, line,
                   CASE WHEN has_qid THEN qid ELSE '' END AS qid,
                   CASE WHEN has_qid THEN substr(line, body_at + length(qid) + 2) ELSE substr(line, body_at) END AS body,
                   split_part(prog, '/', -1) AS daemon,
                   contains(prog, '/') AS has_slash,
                   CASE WHEN stamp = '' THEN NULL
                        WHEN NOT starts_with(stamp, '1') AND NOT starts_with(stamp, '2') THEN
                            {yearless_time_sql('stamp', ['%b %d %H:%M:%S', '%b %d %H:%M:%S.%f'], ctx.source_tz, ctx.year, ctx.reference_time)}
                        WHEN regexp_matches(stamp, '(?:Z|[+-]\\d\\d:?\\d\\d)$') THEN TRY_CAST(stamp AS TIMESTAMPTZ)
                        ELSE {local_time_sql('TRY_CAST(stamp AS TIMESTAMP)', ctx.source_tz)} END AS t
            FROM g
        ), s AS (
            SELECT *,
                CASE WHEN blank THEN 'blank'
                     WHEN host = '' THEN 'nosyslog'
                     WHEN t IS NULL THEN 'badtime'
                     WHEN NOT (has_slash AND list_contains({known}, daemon)) THEN 'other_program'
                     WHEN qid = '' THEN 'noqid'
                     WHEN starts_with(body, 'to=') THEN 'delivery'
                     WHEN starts_with(body, 'from=<') THEN 'from'
                     WHEN body = 'removed' THEN 'removed'
                     WHEN starts_with(body, 'message-id=') THEN 'mid'
                     WHEN starts_with(body, 'client=') THEN 'client'
                     WHEN regexp_matches(body, '^(?:milter-)?(?:reject|discard): ') THEN 'reject'
                     WHEN regexp_matches(body, '^(?:info|warning|prepend|replace|redirect|filter|hold): header ')
                          THEN 'header'
                     ELSE 'qother' END AS shape
            FROM f
        ), x AS (
            SELECT *,
                CASE WHEN shape = 'delivery' THEN {delivery_read_sql('body')} END AS dl,
                CASE WHEN shape = 'from' THEN {_struct_regex('body', FROM_RE, ['sender', 'size', 'nrcpt', 'expired'])} END AS q,
                CASE WHEN shape = 'client' THEN regexp_extract(body, {sql_string(CLIENT_RE)}, 1) END AS cip,
                CASE WHEN shape = 'reject' THEN {_struct_regex('body', REJECT_RE, ['ip', 'sender', 'to'])} END AS r,
                CASE WHEN shape = 'header' THEN {_struct_regex('body', HEADER_INFO_RE, ['name', 'value', 'ip', 'sender'])} END AS hi
            FROM s
        ), k AS (
            SELECT *,
                CASE WHEN shape = 'delivery' AND {delivery_ok_sql('body', 'dl')} THEN 'delivery'
                     WHEN shape = 'from' AND q.expired <> '' THEN 'expired'
                     WHEN shape = 'from' AND q.size <> '' THEN 'from'
                     WHEN shape IN ('removed', 'mid', 'reject') THEN shape
                     WHEN shape = 'client' AND cip <> '' THEN 'client'
                     WHEN shape = 'header' AND lower(hi.name) = 'subject' THEN 'subject'
                     WHEN shape = 'header' AND lower(hi.name) IN ('content-disposition', 'content-type')
                          AND regexp_matches(hi.value, {sql_string(FILENAME_RE)}) THEN 'attachment'
                     END AS kind
            FROM x
        )
        SELECT *,
            -- whether the line's time is local (a BSD stamp, an ISO stamp without an offset) and
            -- yearless (a BSD stamp): from the header already read; the regex only for other lines
            -- (CASE branches, not OR: DuckDB evaluates both sides of an OR in a select list)
            CASE WHEN host = '' THEN regexp_matches(line, {sql_string(ZONELESS_LINE)})
                 WHEN NOT (left(stamp, 1) BETWEEN '0' AND '9') THEN true
                 ELSE regexp_full_match(stamp, {sql_string(ISO_ZONELESS)}) END AS zoneless_line,
            CASE WHEN host <> '' THEN NOT (left(stamp, 1) BETWEEN '0' AND '9')
                 ELSE regexp_matches(line, {sql_string(YEARLESS_LINE)}) END AS yearless_line,
            CASE WHEN kind IS NOT NULL THEN 'parsed'
                 WHEN shape IN ('nosyslog', 'badtime', 'delivery', 'from', 'client') THEN 'quarantined'
                 ELSE 'skipped' END AS outcome,
            CASE WHEN kind IS NOT NULL THEN NULL
                 WHEN shape = 'blank' THEN 'blank line'
                 WHEN shape = 'nosyslog' THEN 'not a syslog line (expected "Mmm dd hh:mm:ss host program[pid]: message" or an ISO 8601 timestamp first)'
                 WHEN shape = 'badtime' THEN 'bad syslog timestamp: ' || stamp
                 WHEN shape = 'delivery' THEN 'malformed delivery line (expected QUEUEID: to=<…>, relay=…, delay=…, dsn=…, status=…)'
                 WHEN shape = 'from' THEN 'malformed qmgr line (expected QUEUEID: from=<…>, size=N, nrcpt=N (queue active) or status=expired, returned to sender)'
                 WHEN shape = 'client' THEN 'malformed smtpd line (expected QUEUEID: client=host[ip])'
                 WHEN shape = 'other_program' THEN 'other program (not postfix)'
                 WHEN shape = 'header' THEN 'postfix/cleanup header check (no subject or file name)'
                 WHEN shape = 'qother' AND regexp_matches(body, '^(?:sender|postmaster) (?:non-delivery|delivery status|delay) notification: ')
                      THEN 'postfix/bounce notification'
                 WHEN shape = 'qother' AND starts_with(body, 'uid=') THEN 'postfix/pickup'
                 WHEN shape = 'qother' AND regexp_matches(body, '^host \\S+ (?:said|refused to talk to me): ')
                      THEN 'postfix/smtp remote server reply'
                 WHEN shape = 'qother' THEN 'postfix/' || daemon || ' other queue message'
                 WHEN daemon IN ('smtpd', 'postscreen') AND regexp_matches(body, '^(?:connect|disconnect|CONNECT|DISCONNECT) ')
                      THEN 'postfix/' || daemon || ' connect/disconnect'
                 WHEN starts_with(body, 'NOQUEUE: ') THEN 'postfix/' || daemon || ' NOQUEUE reject'
                 WHEN starts_with(body, 'warning: ') THEN 'postfix/' || daemon || ' warning'
                 WHEN contains(body, 'TLS connection established') THEN 'postfix/' || daemon || ' TLS'
                 ELSE 'postfix/' || daemon END AS reason
        FROM k
    """


def lines_sql(ctx: ParseContext) -> str:
    """SQL: per line its outcome and reason, and for a parsed line its record (the columns kept in
    postfix_pending), in one pass so the line bodies are never stored."""
    loopback = sql_string(r"\[(?:127\.[0-9.]+|::1)\]")
    return f"""
        WITH cls AS ({classify_sql(ctx)})
        SELECT line_no, outcome, reason, zoneless_line, yearless_line,
               kh, host, queue_id, kind, t, message_id, sender, size, nrcpt, coalesce(orig_ip, direct_ip) AS client_ip,
               rcpt, relay, dsn, status,
               CASE WHEN kind = 'delivery' THEN CAST(queued AND status = 'sent' AND regexp_matches(relay, {loopback})
                                                     AS BIGINT) END AS hop,
               subject, file_name, raw_ref, ref_line, pending_id, pos
        FROM (
        SELECT line_no, outcome, reason, zoneless_line, yearless_line,
               CASE WHEN kind IS NOT NULL THEN hash(host, qid) END AS kh, host,
               CASE WHEN kind IS NOT NULL THEN qid END AS queue_id, kind, t,
               CASE WHEN kind = 'mid' THEN nullif(trim(substr(body, 12), '<> '), '') END AS message_id,
               -- on a client line `sender` holds the SASL login (postfix_pending has no column of its own)
               lower(CASE kind WHEN 'from' THEN q.sender WHEN 'expired' THEN q.sender
                               WHEN 'reject' THEN r.sender
                               WHEN 'client' THEN nullif(regexp_extract(body, {sql_string(SASL_USER_RE)}, 1), '') END)
                   AS sender,
               CASE WHEN kind = 'from' THEN TRY_CAST(q.size AS BIGINT) END AS size,
               CASE WHEN kind = 'from' THEN TRY_CAST(q.nrcpt AS BIGINT) END AS nrcpt,
               CASE kind WHEN 'client' THEN CASE WHEN contains(body, 'orig_client=')
                                                  THEN nullif(regexp_extract(body, {sql_string(ORIG_CLIENT_RE)}, 1), '') END
                         WHEN 'reject' THEN nullif(r.ip, '')
                         WHEN 'subject' THEN nullif(hi.ip, '') WHEN 'attachment' THEN nullif(hi.ip, '') END AS orig_ip,
               CASE WHEN kind = 'client' THEN cip END AS direct_ip,
               lower(CASE kind WHEN 'delivery' THEN nullif(dl.rcpt, '') WHEN 'reject' THEN nullif(r.to, '') END) AS rcpt,
               CASE WHEN kind = 'delivery' THEN dl.relay END AS relay,
               CASE WHEN kind = 'delivery' THEN dl.dsn END AS dsn,
               CASE WHEN kind = 'delivery' THEN dl.status END AS status,
               CASE WHEN kind = 'delivery' THEN contains(body, 'queued as ') END AS queued,
               CASE WHEN kind = 'subject' THEN left(hi.value, 1000) END AS subject,
               CASE WHEN kind = 'attachment' THEN left(regexp_extract(hi.value, {sql_string(FILENAME_RE)}, 1), 300) END AS file_name,
               CAST(NULL AS VARCHAR) AS raw_ref,
               line_no AS ref_line,
               CAST(NULL AS BIGINT) AS pending_id,
               (CAST(1 AS BIGINT) << 50) + line_no AS pos
        FROM cls)
    """


# Whether a line's time was read in --source-tz (a BSD stamp, an ISO stamp without an offset)
# and took --year (a BSD stamp). A line with a header (HEADER_RE) says so by its stamp; these
# anchored patterns are for the others, so a line costs a few bytes.
ISO_ZONELESS = r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?"
ZONELESS_LINE = r"^(?:<\d{1,3}>)?(?:[A-Z][a-z]{2} |\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)? )"
YEARLESS_LINE = r"^(?:<\d{1,3}>)?[A-Z][a-z]{2} "


@contextmanager
def _one_thread(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Run the enclosed statements on one thread. The message step's aggregates over a batch's
    records (361,749 of the benchmark's 500,001 lines, 60,041 messages) cost 0.41-0.55 CPU-s on
    two threads against 0.28-0.33 on one (three alternated rounds); on one thread the step's wall
    time is about what two threads took, and the ingest's peak RSS 430 MB instead of 480. The
    per-line statement, a projection, gains nothing on one thread and would take twice as long."""
    before = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    if before == 1:
        yield
        return
    con.execute("SET threads = 1")
    try:
        yield
    finally:
        con.execute(f"SET threads = {int(before)}")


class Postfix:
    name = SOURCE_NAME
    data_model = EMAIL
    description = "Postfix maillog (syslog): smtpd/cleanup/qmgr/smtp lines joined per queue id, across files and ingests"
    sample = ("Nov  2 09:15:01 mx1 postfix/qmgr[812]: 4F2A11C03A: from=<alice@example.com>, size=48213, "
              "nrcpt=1 (queue active)")

    def sniff(self, head: list[str]) -> bool:
        hits = 0
        for line in head:
            m = _HEADER.match(as_traditional(line))
            if m and "/" in m.group("prog") and m.group("prog").split("[")[0].rsplit("/", 1)[1] in KNOWN_DAEMONS \
                    and (not m.group("qid") or re.fullmatch(QID, m.group("qid"))):
                hits += 1
        return hits > 0

    def parse(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> ParsedBatch:
        install_macros(con, ctx)
        con.execute(f"CREATE OR REPLACE TEMP TABLE pf_lines AS {lines_sql(ctx)}")
        # What follows reads the records, not the lines: aggregates over a few hundred thousand
        # rows, cheaper on one thread (_one_thread).
        with _one_thread(con):
            self._load_pending(con, ctx)
            # One read of the staged lines for the batch's latest time and its time notes; the
            # time stays in SQL instead of a round trip through Python.
            con.execute("""
                CREATE OR REPLACE TEMP TABLE pf_now AS
                SELECT max(t) FILTER (WHERE kind IS NOT NULL) AS batch_max,
                       coalesce(bool_or(zoneless_line), false) AS zoneless,
                       coalesce(bool_or(yearless_line), false) AS yearless
                FROM pf_lines""")
            zoneless, yearless = con.execute("SELECT zoneless, yearless FROM pf_now").fetchone()
            self._join(con, ctx)
            con.execute(f"CREATE OR REPLACE TEMP TABLE pf_events AS "
                        f"{email_select(self.name, 'pf_messages', 'emit', user='sasl_user')}")
            notes = self._notes(con, ctx)
            self._save_pending(con, ctx)
        return ParsedBatch(
            classified="(SELECT line_no, outcome, reason FROM pf_lines)",
            events="(SELECT * FROM pf_events)",
            notes=notes,
            zoneless_times=zoneless,
            yearless_times=yearless,
        )

    # --- the join -----------------------------------------------------------------------------

    def _load_pending(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> None:
        pending = ctx.state.pending_mail_lines() if ctx.state is not None else pending_mail_table([])
        con.register("pf_pending_arrow", pending)
        con.execute("""
            CREATE OR REPLACE TEMP TABLE pf_pending AS SELECT * FROM pf_pending_arrow;
            CREATE OR REPLACE TEMP VIEW pf_recs AS
            SELECT *, (CAST(epoch_us(t) AS HUGEINT) << 52) + pos AS o, kind IN ('removed', 'reject') AS boundary
            FROM (
            SELECT hash(split_part(key, '|', 1), queue_id) AS kh, split_part(key, '|', 1) AS host, queue_id, kind,
                   timezone('UTC', make_timestamp(time)) AS t, message_id, sender, size, nrcpt, client_ip,
                   rcpt, relay, dsn, status, hop, subject, file_name, raw_ref, CAST(NULL AS BIGINT) AS ref_line,
                   pending_id, pending_id AS pos
            FROM pf_pending
            UNION ALL BY NAME
            SELECT * EXCLUDE (line_no, outcome, reason, zoneless_line, yearless_line) FROM pf_lines WHERE kind IS NOT NULL)
        """)
        con.unregister("pf_pending_arrow")

    def _join(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext, one_segment_view: bool = True) -> None:
        """The messages of the batch's lines and pending lines (`pf_messages`), through their
        segments (`pf_segs`). `one_segment_view=False` always copies the segments into a table
        (the reference the view's shortcut is tested against)."""
        # Segments: a message ends at its `removed` (or reject) line. Lines are ordered by time,
        # then arrival (o). Most queue ids have at most one such line: their segment is found
        # with a hash join; the few with more (a reused queue id) go through a window.
        con.execute("""
            CREATE OR REPLACE TEMP TABLE pf_kb AS
            SELECT kh, count(*) FILTER (WHERE boundary) AS nb, min(o) FILTER (WHERE boundary) AS fb, max(o) AS last
            FROM pf_recs GROUP BY kh""")
        # Usually no key has a line after its boundary (one segment each): the segments are then
        # the records with seg 0, read through a view instead of copied with the join's result,
        # which cost 0.17 of the join's 0.58 CPU-s per 500 k lines (measured, the benchmark's maillog).
        one_segment = one_segment_view and con.execute(
            "SELECT coalesce(bool_and(nb = 0 OR (nb = 1 AND last = fb)), true) FROM pf_kb").fetchone()[0]
        if one_segment:
            con.execute("CREATE OR REPLACE TEMP VIEW pf_segs AS SELECT *, 0 AS seg FROM pf_recs")
        else:
            con.execute("""
                CREATE OR REPLACE TEMP TABLE pf_segments AS
                SELECT r.*, CASE WHEN k.nb = 0 OR r.o <= k.fb THEN 0 ELSE 1 END AS seg
                FROM pf_recs r JOIN pf_kb k USING (kh) WHERE k.nb <= 1
                UNION ALL BY NAME
                SELECT *, coalesce(sum(CAST(boundary AS INTEGER)) OVER (
                            PARTITION BY kh ORDER BY o ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS seg
                FROM pf_recs WHERE kh IN (SELECT kh FROM pf_kb WHERE nb > 1);
                CREATE OR REPLACE TEMP VIEW pf_segs AS SELECT * FROM pf_segments""")
        first_ref = raw_ref_sql(ctx, "coalesce(from_ref, first_ref).l")
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE pf_messages AS
            WITH info AS (
                SELECT kh, seg,
                    any_value(queue_id) AS queue_id,
                    min(t) AS t0, max(t) AS t1,
                    any_value(message_id) AS message_id,
                    any_value(sender) FILTER (WHERE kind IN ('from', 'expired')) AS sender_q,
                    any_value(sender) FILTER (WHERE kind = 'reject') AS sender_r,
                    any_value(sender) FILTER (WHERE kind = 'client') AS sasl_user,
                    max(size) AS size, max(nrcpt) AS nrcpt,
                    any_value(client_ip) FILTER (WHERE kind = 'client') AS client_ip,
                    any_value(client_ip) FILTER (WHERE kind <> 'client') AS other_ip,
                    any_value(rcpt) FILTER (WHERE kind = 'reject') AS reject_rcpt,
                    any_value(subject) AS subject,
                    list_sort(list_distinct(list(file_name) FILTER (WHERE kind = 'attachment'))) AS files,
                    bool_or(kind = 'from') AS has_from,
                    bool_or(kind = 'mid') AS has_mid,
                    bool_or(kind = 'removed') AS has_removed,
                    bool_or(kind = 'reject') AS has_reject,
                    bool_or(kind = 'expired') AS has_expired,
                    bool_or(kind IN ('delivery', 'mid', 'client', 'subject', 'attachment')) AS has_content,
                    bool_or(kind IN ('delivery', 'removed', 'expired', 'from')) AS has_tail,
                    arg_min({{'r': raw_ref, 'l': ref_line}}, o) FILTER (WHERE kind = 'from') AS from_ref,
                    arg_min({{'r': raw_ref, 'l': ref_line}}, o) AS first_ref
                FROM pf_segs GROUP BY kh, seg
            ), last_status AS (
                SELECT kh, seg, rcpt, min(o) AS first_pos,
                       arg_max(status, o) AS status, arg_max(relay, o) AS relay, arg_max(hop, o) AS hop
                FROM pf_segs WHERE kind = 'delivery' GROUP BY kh, seg, rcpt
            ), rcpt_state AS (
                -- a recipient still deferred when the message expired has failed: that is applied
                -- in `m` (n_final, any_failed), so info is read once, not joined here too
                SELECT l.*, nullif(nullif(split_part(l.relay, '[', 1), 'none'), '') AS relay_host,
                    CASE WHEN l.status = 'sent' AND l.hop = 1 THEN 'hop'
                         WHEN l.status = 'sent' THEN 'delivered'
                         WHEN l.status IN ('bounced', 'expired') THEN 'failed'
                         WHEN l.status = 'deferred' THEN 'deferred'
                         WHEN l.status = 'deliverable' OR starts_with(l.status, 'undeliverable') THEN 'probe'
                         ELSE 'other' END AS state
                FROM last_status l
            ), rc AS (
                SELECT kh, seg,
                    list(rcpt) FILTER (WHERE state = 'delivered') AS delivered,
                    list(rcpt) FILTER (WHERE state = 'hop') AS hops,
                    list(rcpt) FILTER (WHERE state IN ('failed', 'deferred', 'other')) AS undelivered,
                    list(rcpt) FILTER (WHERE state = 'probe') AS probes,
                    count(*) FILTER (WHERE state IN ('delivered', 'hop', 'failed', 'probe')) AS n_final,
                    bool_or(state = 'failed') AS any_failed,
                    arg_min(relay_host, first_pos) FILTER (WHERE state = 'delivered') AS dest_delivered,
                    arg_min(relay_host, first_pos) AS dest_any,
                    count(*) FILTER (WHERE state = 'deferred') AS n_deferred
                FROM rcpt_state GROUP BY kh, seg
            ), m AS (
                SELECT i.*,
                    rc.* EXCLUDE (kh, seg, n_deferred) REPLACE (
                        rc.n_final + CASE WHEN i.has_expired THEN rc.n_deferred ELSE 0 END AS n_final,
                        rc.any_failed OR (i.has_expired AND rc.n_deferred > 0) AS any_failed),
                    n.batch_max,
                    i.has_removed OR i.has_reject OR i.has_expired
                        OR coalesce(i.has_from AND i.nrcpt > 0 AND coalesce(rc.n_final, 0) >= i.nrcpt
                                    AND i.t1 < n.batch_max - {NRCPT_GRACE}, false) AS closed,
                    coalesce(i.t1 < n.batch_max - {STALE_AFTER}, false) AS stale,
                    -- cleanup's message-id (or reject) line marks the message's beginning: a tail
                    -- without it waits a day for an older file that may hold it
                    i.has_mid OR i.has_reject AS start_seen,
                    coalesce(NOT (i.has_mid OR i.has_reject) AND i.t1 < n.batch_max - {ABANDON_AFTER}, false)
                        AS abandoned
                FROM info i LEFT JOIN rc USING (kh, seg) CROSS JOIN pf_now n
            )
            SELECT *,
                (closed AND start_seen AND (has_from OR has_reject)) OR abandoned OR stale AS complete,
                ((closed AND start_seen) OR abandoned OR stale) AND (has_from OR has_reject) AS emit,
                closed AND start_seen AND (has_from OR has_reject) AS ready,
                t0 AS _time,
                queue_id AS internal_message_id,
                nullif(coalesce(sender_q, sender_r), '') AS src_user,
                list_sort(list_distinct(CASE WHEN coalesce(len(delivered), 0) > 0 THEN delivered
                                  WHEN coalesce(len(hops), 0) > 0 THEN hops
                                  WHEN coalesce(len(undelivered), 0) > 0 THEN undelivered
                                  WHEN coalesce(len(probes), 0) > 0 THEN probes
                                  WHEN reject_rcpt IS NOT NULL THEN [reject_rcpt]
                                  ELSE []::VARCHAR[] END)) AS recipient,
                CASE WHEN coalesce(len(files), 0) > 0 THEN files END AS file_name,
                CASE WHEN coalesce(len(delivered), 0) > 0 THEN 'delivered'
                     WHEN has_reject THEN 'blocked'
                     WHEN coalesce(len(hops), 0) > 0 THEN 'relayed'
                     WHEN coalesce(any_failed, false) THEN 'failed'
                     WHEN coalesce(len(undelivered), 0) > 0 THEN 'deferred'
                     WHEN coalesce(len(probes), 0) > 0 THEN 'probe'
                     ELSE 'dropped' END AS action,
                coalesce(client_ip, other_ip) AS src_ip,
                coalesce(dest_delivered, dest_any) AS dest,
                CASE WHEN coalesce(len(delivered), 0) = 0 AND NOT has_reject AND coalesce(len(hops), 0) > 0 THEN 'email-relay' END
                    AS event_type_override,
                coalesce(coalesce(from_ref, first_ref).r,
                         {first_ref}) AS raw_ref
            FROM m
        """)

    def _notes(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> list[str]:
        pending, partial, orphans, unfinished = con.execute("""
            SELECT count(*) FILTER (WHERE NOT complete AND (start_seen OR NOT has_tail)),
                   count(*) FILTER (WHERE NOT complete AND NOT start_seen AND has_tail),
                   count(*) FILTER (WHERE complete AND NOT emit AND (has_content OR has_from)),
                   count(*) FILTER (WHERE emit AND NOT ready)
            FROM pf_messages""").fetchall()[0]
        notes = []
        kept = "kept in the state store and joined when their next lines are ingested" if ctx.state is not None \
            else "not kept: no state store"
        if pending:
            notes.append(f"postfix: {pending} messages pending (no `removed` line yet, or only their smtpd line), {kept}")
        if partial:
            notes.append(f"postfix: {partial} queue ids seen without their beginning (cleanup `message-id=` line; it may "
                         f"be in an older file not ingested yet), {kept} for a day of log time")
        if orphans:
            notes.append(f"postfix: {orphans} queue ids dropped: no qmgr `from=` line within a day "
                         "(the message began before these logs, or only smtpd/cleanup lines exist)")
        if unfinished:
            notes.append(f"postfix: {unfinished} messages written with what was seen: their beginning did not come within "
                         "a day, or their `removed` line within 7 days of log time")
        return notes + direction_notes(con, ctx, "pf_events", "postfix")

    def _save_pending(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> None:
        if ctx.state is None:
            return
        names = [name for name, _ in PENDING_COLUMNS]
        special = {"time": "epoch_us(r.t)", "key": "r.host || '|' || r.queue_id",
                   "raw_ref": f"coalesce(r.raw_ref, {raw_ref_sql(ctx, 'r.ref_line')})"}
        selected = ", ".join(special.get(n, f"r.{n}") for n in names)
        new_rows = con.execute(f"""
            SELECT {selected} FROM pf_segs r JOIN pf_messages m USING (kh, seg)
            WHERE NOT m.complete AND r.pending_id IS NULL ORDER BY r.kh, r.o""").fetchall()
        consumed = con.execute("""
            SELECT r.pending_id FROM pf_segs r JOIN pf_messages m USING (kh, seg)
            WHERE m.complete AND r.pending_id IS NOT NULL""").fetchall()
        ctx.state.keep_pending_mail_lines(new_rows, [pending_id for (pending_id,) in consumed])
