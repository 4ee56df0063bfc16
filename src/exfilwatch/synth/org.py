"""The synthetic organisation: VPN, mail and flow logs of a whole company, with labelled leaks.

`generate_organisation(out_dir, users, days, seed, end, mail, timezone, hosts_per_user)` writes

* `vpn.log` — Pulse Secure / Ivanti Connect Secure syslog, the appliance's "standard" format
  (`<date> <time> - ive - [ip] user(realm)[roles] - message`) behind the header rsyslog writes
  (`2026-10-05T08:59:12-04:00 vpn01 PulseSecure: `, the shape of real captured files), or the
  RFC 5424 header the appliance sends (`<134>1 2026-10-05T08:59:12-04:00 vpn01 PulseSecure: - - - `)
  with `vpn_syslog="rfc5424"`: primary authentication, login succeeded (with session id and
  agent), VPN tunnel started (tunnel address, host name) and ended, closed connection (seconds,
  bytes), logout, session timed out (with the last access), failed logins (users' typos and
  password spraying from the internet).
* `maillog` (`mail="postfix"`) — the Postfix relay `mx1` (10.10.0.5): users submit on port 587
  with SASL (`postfix/submission/smtpd`), the internet delivers on 25, mailboxes get their mail
  over LMTP from `mbx1` (10.10.0.6): smtpd connect / TLS / `client=` / disconnect, `cleanup`
  message-id, `qmgr` `from=<…>, size=N, nrcpt=N (queue active)` and `removed`, `smtp` / `lmtp`
  `to=<…>, relay=…, delay=…, delays=…, dsn=2.0.0, status=sent (250 …)`, in time order as the
  server writes them, with hex queue ids. Timestamps are BSD syslog (`Oct  5 08:59:12`, local
  time, no year: the file's modification time is set to the end of the last day, where a reader
  takes the year from), or RFC 3339 with `syslog_timestamps="rfc3339"` (the default when the period
  spans New Year).
  Or `MessageTracking/MSGTRK<yyyymmdd>-1.LOG` (`mail="exchange"`): Exchange 2019 (EXCH1,
  10.10.0.6) message tracking logs, one file per UTC day, the `#Software/#Version/#Log-type/#Date/
  #Fields` header and per message RECEIVE (all recipients), SEND (external ones), DELIVER
  (internal ones).
* `conn.log` — Zeek conn.log: the network generator's flows (exfilwatch.synth.network, hosts =
  users × hosts_per_user, when it is installed and accepts the size; its own labels go to
  `network_labels.csv`), plus a flow for each submission from the client (VPN tunnel address,
  workstation, webmail, marketing server) to the relay, sized as the message.
* `config.yaml` — time zone, asset inventory, `internal_domains: [corp.example]`, and
  `identities` (user, emails, vpn_accounts, hosts, department) for every employee and the
  newsletter's service account.
* `labels.csv` — `case_id,detection_id,entity,day,technique,expected,description`: one row per
  case and local day it covers (entity = user; detection_id empty = any of the four EM rules;
  T1048.003; the description names the VPN sessions of injected mail).

The people: `users` employees in seven departments (sales, finance, marketing, engineering, hr,
legal, exec), each remote, hybrid or in the office, with their own log-normal mail rate, share
of external recipients, partner domains (of 200 `partnerNNN.example`), attachment habit and
working hours; Fridays quieter, weekends nearly empty, US federal holidays off, a few days of
leave. Remote users log in to the VPN most weekday mornings for the working day; some split the
day (lunch), some come back in the evening, some never log out (the session times out, or its
end is never logged). Mail sent during a VPN session is timestamped inside it and submitted from
the tunnel address; on office days from the user's workstation; in the evening a little from
the phone (webmail). Personal webmail (gmail.com, outlook.com, yahoo.com, proton.me) is rare and
small; the internet's mail comes in too.

Injected cases (expected `fire`), each inside a VPN session of its user:
1. `slow-leak` — a user mails files to their own personal address (`first.last.home@gmail.com`),
   more often and larger over the last weeks (CERT insider-threat scenario 4);
2. `burst` — one session with 40 messages to 32 domains the user never mailed;
3. `large-upload` — one 40 MB message to a personal address.
Benign hard cases (expected `quiet`): finance month-end reporting (large attachments to
partners on the last business day of each month, and weekly reports of the same kind, so it is
in the history), the weekly marketing newsletter (service account `svc.newsletter` on the
marketing automation server, hundreds of recipients in batches of 50), a new hire five days
before the end with no history, a user back from three weeks' leave, a sales user who mails
many domains every day.

Everything is a function of the parameters: no wall clock, one seed, the same bytes each time.
Volumes are generated with numpy (no Python loop per message or per user-day) and the lines
are formatted and sorted by DuckDB: a connection per file with a 1 GB memory limit (it spills
beyond; Exchange keeps the default), the maillog sorted one time slice of ~2 M lines at a time,
conn.log one batch of the network generator's flows (with the org's own flows of its span) at a
time. What still grows with the organisation is the arrays: the messages and recipients, and the
network's flows (~100 bytes each at the peak: its plans and checks need all of them at once).

The parts: `population` (the people and the world they mail),
`plan` (the cases and what happens when), `writers` (one per log format); this module assembles
them into the files and writes config.yaml and labels.csv.
"""

from __future__ import annotations

import csv
import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pyarrow as pa
import yaml

from exfilwatch.synth.plan import BILLING_USER, KIND_INBOUND, KIND_NEWSLETTER, KIND_SUBMIT, OrgCase, Organisation, Plan
from exfilwatch.synth.profiles import profile as named_profile
from exfilwatch.synth.population import (AGENTS, DEPARTMENTS, EXCHANGE_SERVER, INTERNAL_DOMAIN, MARKETING_SERVER, NEWSLETTER_ADDRESS,
                         NEWSLETTER_USER, SPRAY_NAMES, SUBJECTS, _ip_str, us_holidays)
from exfilwatch.synth.writers import _text, exchange, postfix, pulse_secure, zeek_conn

MAIL_HOST = "mx1"
VPN_HOST = "vpn01"
VPN_REALM = "Users"
AUTH_SERVER = "Corp AD"
TECHNIQUE = "T1048.003"
LABEL_HEADER = ["case_id", "detection_id", "entity", "day", "technique", "expected", "description"]
MAIL_FORMATS = ("postfix", "exchange")
VPN_SYSLOG_FORMS = ("rsyslog", "rfc5424", "ics22")
EXCHANGE_VERSION = "15.02.1118.007"
EXCHANGE_FIELDS = exchange.FIELDS


@dataclass(frozen=True)
class OrgDataset:
    out_dir: Path
    vpn_log: Path
    mail_log: Path  # the Postfix maillog, or the folder of Exchange message tracking logs
    mail: str
    conn_log: Path
    config: Path
    labels: Path
    users: int
    sessions: int
    messages: int  # messages the mail server handled (submitted, inbound, newsletter)
    flows: int
    vpn_lines: int
    mail_lines: int
    cases: tuple[OrgCase, ...] = field(default=())
    network_labels: Path | None = None  # the network generator's own labelled cases (hosts, T1114)
    network_note: str = ""  # why conn.log holds only the org's own flows, when it does


def _write(org: Organisation, out_dir: Path, mail: str, syslog_timestamps: str) -> OrgDataset:
    out_dir.mkdir(parents=True, exist_ok=True)
    sim = org.simulate()
    plan, session_ids, msgs, rcpts = sim.plan, sim.session_ids, sim.msgs, sim.rcpts
    n_sessions = len(session_ids)

    scratch = out_dir / ".duckdb"
    try:
        # a connection per file: closing it hands what its sort held back before the next file's begins
        with _writer_connection(scratch) as con:
            vpn_log = out_dir / "vpn.log"
            vpn_lines = _write_vpn(con, org, plan, session_ids, vpn_log)
        # the Exchange writer is not sliced and was not measured at scale: it keeps DuckDB's default limit
        with _writer_connection(scratch, None if mail == "exchange" else _text.WRITER_MEMORY) as con:
            if mail == "postfix":
                mail_log = out_dir / "maillog"
                mail_lines = _write_postfix(con, org, msgs, rcpts, mail_log, syslog_timestamps)
            else:
                mail_log = out_dir / "MessageTracking"
                mail_lines = _write_exchange(con, org, msgs, rcpts, mail_log)
        with _writer_connection(scratch) as con:
            conn_log, assets, flows, network_labels = _write_network(con, org, out_dir, plan, mail, msgs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    config = _write_config(org, out_dir / "config.yaml", assets)
    labels = _write_labels(org, out_dir / "labels.csv")
    return OrgDataset(
        out_dir=out_dir, vpn_log=vpn_log, mail_log=mail_log, mail=mail, conn_log=conn_log, config=config,
        labels=labels, users=org.U, sessions=n_sessions, messages=len(msgs["t0"]), flows=flows,
        vpn_lines=vpn_lines, mail_lines=mail_lines, cases=tuple(org.cases), network_labels=network_labels,
        network_note=org.network_note)


def _write_vpn(con: duckdb.DuckDBPyConnection, org: Organisation, plan: Plan, session_ids: np.ndarray,
               path: Path) -> int:
    people = org.people
    events = org.vpn_events(plan, session_ids)
    con.register("vpn_events", events)
    con.register("vpn_users", pa.table({"u": np.arange(org.U), "name": people.names}))
    con.register("vpn_extra_users", pa.table({"u": -1 - np.arange(len(SPRAY_NAMES)), "name": list(SPRAY_NAMES)}))
    con.register("vpn_agents", pa.table({"a": np.arange(len(AGENTS)), "agent_s": list(AGENTS)}))
    con.register("vpn_hosts", pa.table({"u": np.arange(org.U), "laptop": people.laptop}))
    sql = f"""
    WITH e AS (
        SELECT e.*, n.name, make_timestamp(e.ts + e.off * 1000000) AS lt, ew_ip(e.src) AS ip, ew_ip(e.tip) AS tun,
               printf('%08x', e.sid) AS session, a.agent_s, h.laptop
        FROM vpn_events e
        JOIN (SELECT * FROM vpn_users UNION ALL SELECT * FROM vpn_extra_users) n ON n.u = e.u
        LEFT JOIN vpn_agents a ON a.a = e.agent
        LEFT JOIN vpn_hosts h ON h.u = e.u
    )
    SELECT pulse_secure_line('{org.vpn_syslog}', lt, off, '{VPN_HOST}', 'ive', ip, NULL, name, '{VPN_REALM}',
                             CASE WHEN kind IN ({pulse_secure.AUTH_FAILED}, {pulse_secure.LOGIN_FAILED}, {pulse_secure.AUTH_OK})
                                      THEN '' ELSE 'Users, VPN' END, kind, '{AUTH_SERVER}',
                             session, agent_s, tun, laptop, x, y, y // 1400 + 1, z, z // 1400 + 1,
                             make_timestamp(x + off * 1000000)) AS line
    FROM e ORDER BY ts, ord
    """
    return _text.copy_lines(con, sql, path)


def _register_mail(con: duckdb.DuckDBPyConnection, org: Organisation, msgs: dict[str, np.ndarray],
                   rcpts: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Register the messages' and recipients' timeline (`pf_msgs`, `pf_rcpts`) and the names; return the two."""
    book = org.book
    timeline, deliveries = org.mail_timeline(msgs, rcpts)
    con.register("pf_msgs", pa.table(timeline))
    con.register("pf_rcpts", pa.table(deliveries))
    dom = np.asarray(book.domain, np.int64)
    provider = np.asarray(book.provider, np.int64)
    con.register("pf_addr", pa.table({"a": np.arange(len(book.address)), "address": book.address, "dom": dom}))
    con.register("pf_dom", pa.table({
        "dom": np.arange(len(book.domains)), "domain": book.domains, "mx": book.mx_host, "mx_ip": book.mx_ip,
        "out_host": book.out_host, "out_ip": book.out_ip, "provider": provider}))
    con.register("pf_hosts", pa.table({"chost": np.arange(len(org.client_hosts)), "hostname": org.client_hosts}))
    return timeline, deliveries


def _write_postfix(con: duckdb.DuckDBPyConnection, org: Organisation, msgs, rcpts, path: Path, stamps: str) -> int:
    timeline, deliveries = _register_mail(con, org, msgs, rcpts)
    host = MAIL_HOST
    # the messages and recipients of a slice (see below), with their addresses and names
    messages = f"""
    CREATE OR REPLACE TEMP TABLE m2 AS
    WITH m AS (
        SELECT p.*, a.address AS sender_addr, d.domain AS sender_dom,
               upper(printf('%05x', usec) || printf('%x', inode)) AS qid,
               CASE WHEN p.chost >= 0 THEN h.hostname ELSE cd.out_host END AS client_name,
               ew_ip(p.cip) AS client_ip,
               CASE WHEN p.kind = {KIND_INBOUND} THEN 'postfix/smtpd' ELSE 'postfix/submission/smtpd' END AS smtpd
        FROM (SELECT * FROM pf_msgs WHERE {{where}}) p JOIN pf_addr a ON a.a = p.sender JOIN pf_dom d ON d.dom = a.dom
        LEFT JOIN pf_hosts h ON h.chost = p.chost LEFT JOIN pf_dom cd ON cd.dom = -1 - p.chost
    )
        SELECT *, '<' || strftime(make_timestamp(t0 + off_0 * 1000000), '%Y%m%d%H%M%S') || '.'
                  || substr(md5(qid || sender_addr), 1, 12) || '@'
                  || CASE WHEN kind = {KIND_INBOUND} THEN sender_dom ELSE '{INTERNAL_DOMAIN}' END || '>' AS msgid
        FROM m"""
    recipients = """
    CREATE OR REPLACE TEMP TABLE r2 AS
    SELECT r.*, a.address, d.mx, d.mx_ip, d.provider FROM (SELECT * FROM pf_rcpts WHERE {where}) r
    JOIN pf_addr a ON a.a = r.addr JOIN pf_dom d ON d.dom = a.dom"""
    sql = f"""
    WITH lines AS (
        SELECT t0 AS ts, off_0 AS off, m, 0 AS k, 0 AS r, smtpd AS program, pid_d AS pid,
               postfix_connect(client_name, client_ip) AS message FROM m2
        UNION ALL
        SELECT t0 + 40000, off_0, m, 1, 0, smtpd, pid_d, postfix_tls_from(client_name, client_ip) FROM m2
        UNION ALL
        SELECT t0 + 90000, off_0, m, 2, 0, smtpd, pid_d,
               postfix_client(qid, client_name, client_ip, CASE WHEN kind = {KIND_INBOUND} THEN NULL ELSE 'LOGIN' END,
                              sender_addr) FROM m2
        UNION ALL
        SELECT t_clean, off_c, m, 3, 0, 'postfix/cleanup', pid_c, postfix_cleanup(qid, msgid) FROM m2
        UNION ALL
        SELECT t_qmgr, off_q, m, 4, 0, 'postfix/qmgr', pid_q, postfix_queued(qid, sender_addr, size, nrcpt) FROM m2
        UNION ALL
        SELECT t_disc, off_q, m, 5, 0, smtpd, pid_d,
               postfix_disconnect(client_name, client_ip, kind <> {KIND_INBOUND}, nrcpt) FROM m2
        UNION ALL
        SELECT r.t - r.d_xmit - 1000, r.off, r.m, 6, r.r, 'postfix/smtp', r.pid_s, postfix_tls_to(r.mx, r.mx_ip, 25)
        FROM r2 r WHERE r.tls
        UNION ALL
        SELECT r.t, r.off, r.m, 7, r.r, CASE WHEN r.local THEN 'postfix/lmtp' ELSE 'postfix/smtp' END, r.pid_s,
               postfix_delivery(m2.qid, r.address, r.mx, r.mx_ip, CASE WHEN r.local THEN 24 ELSE 25 END,
                                (r.t - m2.t0) / 1e6, r.d_before / 1e6, r.d_queue / 1e6, r.d_conn / 1e6,
                                r.d_xmit / 1e6, '2.0.0', 'sent',
               CASE r.provider
                  WHEN 9 THEN '250 2.0.0 <' || r.address || '> ' || substr(md5(m2.qid || r.address), 1, 22) || ' Saved'
                  WHEN 1 THEN '250 2.0.0 OK  ' || (r.t // 1000000) || ' ' || substr(md5(m2.qid || r.address), 1, 20)
                              || 'si' || (r.r % 997) || '.' || (r.m % 89) || ' - gsmtp'
                  WHEN 2 THEN '250 2.6.0 ' || m2.msgid || ' [InternalId=' || (r.t % 99999999977)
                              || ', Hostname=BN8PR12MB' || (1000 + r.m % 8999) || '.namprd12.prod.outlook.com] '
                              || m2.size || ' bytes in 0.' || (100 + r.r % 899) || ', Queued mail for delivery'
                  WHEN 3 THEN '250 ok dirdel'
                  ELSE '250 2.0.0 Ok: queued as ' || upper(substr(md5(r.address || m2.qid), 1, 10)) END)
        FROM r2 r JOIN m2 ON m2.m = r.m
        UNION ALL
        SELECT t_removed, off_r, m, 8, 0, 'postfix/qmgr', pid_q, postfix_removed(qid) FROM m2
    )
    SELECT postfix_line(postfix_stamp('{stamps}', lt, off), '{host}', program, pid, message) AS line
    FROM (SELECT *, make_timestamp(ts + off * 1000000) AS lt FROM lines WHERE ts >= {{lo}} AND ts < {{hi}})
    ORDER BY ts, m, k, r
    """

    def slices() -> Iterator[str]:
        # Sorted a time slice at a time, and only the slice's rows in DuckDB: all 20 M lines at once ran out
        # of memory at 3000 users x 90 days under a 1 or 2 GB limit, and tables of all the messages and
        # recipients (sliced or not) at 10,000 x 90. A slice holds the recipients with a line in [lo, hi), and
        # the messages with a line in it or a recipient there.
        bounds = _text.time_slices(timeline["t0"], 7 * len(timeline["t0"]) + 2 * len(deliveries["m"]))
        for lo, hi in itertools.pairwise(bounds):
            con.execute(recipients.format(where=f"least(t - d_xmit - 1000, t) < {hi} "
                                                f"AND greatest(t - d_xmit - 1000, t) >= {lo}"))
            con.execute(messages.format(where=f"(least(t0, t_clean, t_qmgr, t_disc, t_removed) < {hi} AND "
                                              f"greatest(t0 + 90000, t_clean, t_qmgr, t_disc, t_removed) >= {lo}) "
                                              "OR m IN (SELECT m FROM r2)"))
            yield sql.format(lo=lo, hi=hi)

    lines = _text.copy_slices(con, slices(), path)
    con.execute("DROP TABLE m2; DROP TABLE r2")
    if stamps == "bsd":  # the year of BSD timestamps comes from the file's modification time
        last = datetime.combine(org.end, datetime.max.time().replace(microsecond=0)).replace(tzinfo=ZoneInfo(org.tz_name))
        os.utime(path, (last.timestamp(), last.timestamp()))
    return lines


def _write_exchange(con: duckdb.DuckDBPyConnection, org: Organisation, msgs, rcpts, folder: Path) -> int:
    _register_mail(con, org, msgs, rcpts)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    server, server_ip = EXCHANGE_SERVER
    sql = f"""
    WITH m AS (
        SELECT p.*, a.address AS sender_addr, d.domain AS sender_dom,
               upper(printf('%05x', usec) || printf('%x', inode)) AS qid, ew_ip(p.cip) AS client_ip,
               CASE WHEN p.chost >= 0 THEN h.hostname ELSE cd.out_host END AS client_name
        FROM pf_msgs p JOIN pf_addr a ON a.a = p.sender JOIN pf_dom d ON d.dom = a.dom
        LEFT JOIN pf_hosts h ON h.chost = p.chost LEFT JOIN pf_dom cd ON cd.dom = -1 - p.chost
    ), m2 AS (
        SELECT *, '<' || upper(substr(md5(qid), 1, 16)) || '@'
                  || CASE WHEN kind = {KIND_INBOUND} THEN sender_dom ELSE '{server.lower()}.{INTERNAL_DOMAIN}' END || '>' AS msgid,
               substr(md5('n' || qid), 1, 8) || '-' || substr(md5('n' || qid), 9, 4) || '-'
               || substr(md5('n' || qid), 13, 4) || '-' || substr(md5('n' || qid), 17, 4) || '-'
               || substr(md5('n' || qid), 21, 12) AS nmid,
               (2000000000000 + inode * 997)::BIGINT AS imid,
               CASE WHEN kind = {KIND_NEWSLETTER}
                    THEN 'Corp Example weekly - ' || strftime(make_timestamp(t0 + off_0 * 1000000), '%B %d')
                    ELSE ex_subject(hash(qid)) END AS subject
        FROM m
    ), r AS (
        SELECT r.m, a.address, d.provider = 9 AS local, r.t, r.r, d.mx, d.mx_ip FROM pf_rcpts r
        JOIN pf_addr a ON a.a = r.addr JOIN pf_dom d ON d.dom = a.dom
    ), g AS (
        SELECT m,
               string_agg(address, ';' ORDER BY r) AS all_rcpt, count(*) AS n_all,
               string_agg(address, ';' ORDER BY r) FILTER (WHERE NOT local) AS ext_rcpt,
               count(*) FILTER (WHERE NOT local) AS n_ext,
               string_agg(address, ';' ORDER BY r) FILTER (WHERE local) AS int_rcpt,
               count(*) FILTER (WHERE local) AS n_int,
               max(t) FILTER (WHERE NOT local) AS t_send, max(t) FILTER (WHERE local) AS t_deliver,
               arg_min(mx, r) FILTER (WHERE NOT local) AS mx, arg_min(mx_ip, r) FILTER (WHERE NOT local) AS mx_ip
        FROM r GROUP BY m
    ), rows AS (
        SELECT m2.t_qmgr AS ts, m2.m, 0 AS k,
               CASE WHEN kind <> {KIND_SUBMIT} THEN client_ip ELSE '{server_ip}' END AS client_ip_,
               CASE WHEN kind <> {KIND_SUBMIT} THEN client_name ELSE '{server.lower()}.{INTERNAL_DOMAIN}' END
                   AS client_host_,
               '{server_ip}' AS server_ip, '{server}' AS server_host,
               CASE WHEN kind <> {KIND_SUBMIT} THEN upper(substr(md5(qid), 17, 16)) || ';' || exchange_time(t0) || ';0'
                    ELSE 'MDB:5b9c2f0e-3d44-4a51-9c8b-2f1e0d9c8b7a, Mailbox:' || substr(md5(sender_addr), 1, 8)
                         || '-' || substr(md5(sender_addr), 9, 4) || ', Event:' || (imid % 9000000)
                         || ', MessageClass:IPM.Note, CreationTime:' || exchange_time(t0)
                         || ', ClientType:MOMT' END AS source_context,
               CASE kind WHEN {KIND_INBOUND} THEN '{server}\\Default Frontend {server}'
                         WHEN {KIND_NEWSLETTER} THEN '{server}\\Client Frontend {server}' ELSE '' END AS connector,
               CASE WHEN kind <> {KIND_SUBMIT} THEN 'SMTP' ELSE 'STOREDRIVER' END AS source,
               'RECEIVE' AS event_id, g.all_rcpt AS rcpt, '' AS rstatus, g.n_all AS rcount
        FROM m2 JOIN g USING (m)
        UNION ALL
        SELECT g.t_send, m2.m, 1, '{server_ip}', '{server.lower()}.{INTERNAL_DOMAIN}', g.mx_ip, g.mx,
               upper(substr(md5('s' || qid), 1, 16)) || ';250 2.0.0 OK;ClientSubmitTime:' || exchange_time(t0),
               '{server}\\Internet Send Connector', 'SMTP', 'SEND', g.ext_rcpt,
               array_to_string(list_transform(string_split(g.ext_rcpt, ';'), lambda x: '250 2.0.0 OK'), ';'),
               g.n_ext
        FROM m2 JOIN g USING (m) WHERE g.n_ext > 0
        UNION ALL
        SELECT g.t_deliver, m2.m, 2, '{server_ip}', '{server.lower()}.{INTERNAL_DOMAIN}', '{server_ip}',
               '{server.lower()}.{INTERNAL_DOMAIN}', 'MDB:5b9c2f0e-3d44-4a51-9c8b-2f1e0d9c8b7a, Mailbox:'
               || substr(md5(g.int_rcpt), 1, 8) || ', Event:' || (imid % 9000000) || ', MessageClass:IPM.Note',
               '', 'STOREDRIVER', 'DELIVER', g.int_rcpt,
               array_to_string(list_transform(string_split(g.int_rcpt, ';'), lambda x: '250 2.1.5 Recipient OK'), ';'),
               g.n_int
        FROM m2 JOIN g USING (m) WHERE g.n_int > 0
    )
    SELECT ts, exchange_line(ts, client_ip_, client_host_, server_ip, server_host, source_context, connector,
           source, event_id, CAST(imid AS VARCHAR), msgid, nmid, rcpt, rstatus, CAST(size AS VARCHAR),
           CAST(rcount AS VARCHAR), '', '', subject, sender_addr, sender_addr,
           CASE WHEN k = 0 THEN exchange_time(t0) ELSE '' END,
           CASE WHEN kind = {KIND_INBOUND} THEN 'Incoming' ELSE 'Originating' END, '',
           CASE WHEN kind = {KIND_INBOUND} THEN '' ELSE client_ip END, '{server_ip}',
           CASE WHEN k = 1 THEN 'S:DeliveryPriority=Normal;S:AccountForest={INTERNAL_DOMAIN}' ELSE '' END,
           'Email', substr(md5(nmid || k), 1, 8) || '-' || substr(md5(nmid || k), 9, 4) || '-'
           || substr(md5(nmid || k), 13, 4) || '-' || substr(md5(nmid || k), 17, 4) || '-'
           || substr(md5(nmid || k), 21, 12), '{EXCHANGE_VERSION}') AS line
    FROM rows JOIN m2 USING (m)
    """
    return exchange.write_query(con, sql, folder, EXCHANGE_VERSION)


def _write_network(con: duckdb.DuckDBPyConnection, org: Organisation, out_dir: Path, plan: Plan, mail: str,
                   msgs: dict[str, np.ndarray]) -> tuple[Path, list[dict], int, Path | None]:
    """conn.log: the network generator's flows (if installed) plus the org's own mail flows, in time order."""
    conn_log = out_dir / "conn.log"
    own_assets = [
        {"cidr": "10.10.0.0/28", "category": "email_server", "bunit": "it"},
        {"cidr": "10.30.0.0/24", "category": "server", "bunit": "it"},
        {"cidr": "10.20.0.0/16", "category": "workstation", "bunit": "corp"},
    ]
    vpn_asset = {"cidr": "10.200.0.0/15", "category": "vpn_pool", "bunit": "it", "owner": "network-team"}
    stamps = org.first.strftime(zeek_conn.STAMP), (org.end + timedelta(days=1)).strftime(zeek_conn.STAMP)
    mine = """
    SELECT zeek_conn_line(ts, 'C' || substr(md5('c' || uid), 1, 17), ew_ip(orig), oport, ew_ip(resp), rport, 'tcp',
                          CASE WHEN service = 0 AND rport = 587 THEN 'smtp,ssl' ELSE 'ssl' END, dur, ob, rb, 'SF',
                          'T', CASE WHEN rport = 443 AND service = 1 THEN 'F' ELSE 'T' END, 0, 'ShADadFf',
                          ob // 1400 + 4, ob + (ob // 1400 + 4) * 52, rb // 1400 + 4, rb + (rb // 1400 + 4) * 52,
                          '(empty)') AS line, ts, 0 AS src
    FROM conn_flows WHERE ts >= {lo} AND ts < {hi}
    """
    written: list[int] = []

    def merge(flows: pa.RecordBatchReader) -> None:
        # the own flows are drawn only once the network has its flows (it may give up before: see below)
        con.register("conn_flows", org.own_flows(plan, msgs, mail, background=False))
        written.append(zeek_conn.write_query(con, _merged_slices(con, flows, mine), conn_log, *stamps))

    network = _network(org, out_dir, merge) if org.use_network else None
    if network is None:
        table = org.own_flows(plan, msgs, mail, background=True)
        con.register("conn_flows", table)
        bounds = _text.time_slices(table["ts"].to_numpy(), len(table))
        written.append(zeek_conn.write_query(
            con, (f"SELECT line FROM ({mine.format(lo=lo, hi=hi)}) ORDER BY ts, src, line"
                  for lo, hi in itertools.pairwise(bounds)), conn_log, *stamps))
        assets = own_assets + [vpn_asset]
        network_labels = None
    else:
        assets = network["assets"] + [vpn_asset]
        network_labels = out_dir / "network_labels.csv"
        shutil.move(str(network["labels"]), network_labels)
        shutil.rmtree(network["folder"], ignore_errors=True)
    return conn_log, assets, written[-1], network_labels


def _merged_slices(con: duckdb.DuckDBPyConnection, flows: pa.RecordBatchReader, mine: str) -> Iterator[str]:
    """The queries of conn.log's time slices: each batch of the network's flows (in time order) with the org's
    own flows of its span, sorted as one sort of them all would (time, the org's first, then the line).

    The network's flows never become text in between: at 10,000 users x 90 days its conn.log is 14 GB, and
    a table of its lines to sort with the org's spilled as much again.
    """
    columns = ", ".join(name for name, _ in zeek_conn.COLUMNS)

    def query(held: pa.Table, lo: int, hi: int) -> str:
        con.register("net_slice", held)
        return (f"SELECT line FROM ({mine.format(lo=lo, hi=hi)} UNION ALL "
                f"SELECT zeek_conn_line({columns}), ts_us, 1 FROM net_slice) ORDER BY ts, src, line")

    lo, held = _text.BEFORE_ALL, None
    for batch in flows:
        if held is None:
            held = pa.Table.from_batches([batch])
            continue
        # a time held by both batches goes with the next: a slice ends where the time changes
        cut = int(batch.column("ts_us")[0].as_py())
        keep = int(np.searchsorted(held.column("ts_us").to_numpy(), cut, side="left"))
        yield query(held.slice(0, keep), lo, cut)
        held = pa.concat_tables([held.slice(keep), pa.Table.from_batches([batch])])
        lo = cut
    if held is not None:
        yield query(held, lo, _text.AFTER_ALL)


def _network(org: Organisation, out_dir: Path, flows_to: Callable[[pa.RecordBatchReader], None]) -> dict | None:
    """Run the network generator (its flows to `flows_to`, its files into a scratch folder); None when it is
    not installed or too small."""
    try:
        from exfilwatch.synth.network import generate_network
    except ImportError:
        org.network_note = "network generator not used: exfilwatch.synth.network is not installed"
        return None
    hosts = org.U * org.hosts_per_user
    folder = out_dir / ".network"
    shutil.rmtree(folder, ignore_errors=True)
    try:
        dataset = generate_network(folder, days=org.D, hosts=hosts, seed=org.seed, end=org.end,
                                   timezone=org.tz_name,
                                   flows_per_host_day=max(100, org.flows_per_host_day or 100), flows_to=flows_to)
    except (RuntimeError, ValueError) as exc:  # too small a network for its cases: use the own flows
        shutil.rmtree(folder, ignore_errors=True)
        org.network_note = f"network generator not used: {exc}"
        return None
    assets = (yaml.safe_load(dataset.config.read_text(encoding="utf-8")) or {}).get("assets", [])
    return {"assets": assets, "labels": dataset.labels, "folder": folder, "flows": dataset.flows}


def _write_config(org: Organisation, path: Path, assets: list[dict]) -> Path:
    people = org.people
    identities = [
        {"user": people.names[u], "emails": [org.book.address[org.contacts.users[u]]],
         "vpn_accounts": [people.names[u]], "hosts": [_ip_str(int(h)) for h in people.hosts[u]],
         "department": DEPARTMENTS[people.dept[u]]}
        for u in range(org.U)
    ]
    identities.append({"user": NEWSLETTER_USER, "emails": [NEWSLETTER_ADDRESS], "vpn_accounts": [],
                       "hosts": [MARKETING_SERVER[1]], "department": "marketing"})
    if org.billing >= 0:
        identities.append({"user": BILLING_USER, "emails": [org.book.address[org.billing]], "vpn_accounts": [],
                           "hosts": [], "department": "finance"})
    config = {"timezone": org.tz_name, "assets": assets, "internal_domains": [INTERNAL_DOMAIN],
              "identities": identities}
    path.write_text(
        "# Generated by exfilwatch generate --org: the synthetic organisation's settings.\n"
        + yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=200), encoding="utf-8")
    return path

def _write_labels(org: Organisation, path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(LABEL_HEADER)
        for case in org.cases:
            for day in case.days:
                description = case.description
                if case.sessions:
                    description += f"; VPN session(s) {' '.join(case.sessions)}"
                writer.writerow([case.case_id, "", case.user, day.isoformat(), TECHNIQUE, case.expected, description])
    return path


def _writer_connection(scratch: Path, memory_limit: str | None = _text.WRITER_MEMORY) -> duckdb.DuckDBPyConnection:
    """A spilling DuckDB connection with every writer's macros (a context manager: closed on exit)."""
    con = _text.spilling_connection(scratch, memory_limit)
    _install_sql_macros(con)
    return con


def _install_sql_macros(con: duckdb.DuckDBPyConnection) -> None:
    _text.install(con)
    for writer in (pulse_secure, postfix, exchange, zeek_conn):
        writer.install(con)
    subjects = "[" + ", ".join("'" + s.replace("'", "''") + "'" for s in SUBJECTS) + "]"
    con.execute(f"""
        CREATE OR REPLACE TEMP MACRO ex_subject(h) AS {subjects}[1 + (h % {len(SUBJECTS)})::INTEGER];
    """)


def generate_organisation(
    out_dir: Path,
    users: int = 1000,
    days: int = 90,
    seed: int = 1,
    end: date = date(2026, 10, 31),
    mail: str | None = None,
    timezone: str = "America/New_York",
    hosts_per_user: int = 1,
    flows_per_host_day: int | None = None,
    network: bool = True,
    syslog_timestamps: str | None = None,
    vpn_syslog: str | None = None,
    profile: str = "default",
) -> OrgDataset:
    """Write a synthetic organisation's VPN, mail and flow logs with labelled cases into `out_dir`.

    `profile`: the kind of organisation (synth/profiles.py: `default`, `varied`). `mail`:
    "postfix" (maillog) or "exchange" (MessageTracking/MSGTRK*.LOG); the profile's by default.
    `network`: include the network generator's flows (exfilwatch.synth.network,
    `flows_per_host_day` of them per host and day, at least 100) in conn.log; without it (or when
    it is not installed) conn.log holds the org's own flows: mail submissions plus
    `flows_per_host_day` (default 6) per block of work. `syslog_timestamps`: "bsd" (`Oct  5
    08:59:12`) or "rfc3339" for the maillog; by default "bsd", or "rfc3339" when the period spans
    New Year (a year-less log over New Year can't be dated from the file's modification time).
    `vpn_syslog` (the profile's by default): "rsyslog" (`<ISO time> vpn01 PulseSecure: <standard
    message>`), "rfc5424" (`<134>1 <ISO time> vpn01 PulseSecure: - - - <standard message>`) or
    "ics22" (Ivanti Connect Secure 22.x: RFC 5424, the session id `sid…` in the messages and in a
    fourth bracket).
    """
    chosen = named_profile(profile)
    mail = mail or chosen.mail
    vpn_syslog = vpn_syslog or chosen.vpn_syslog
    if mail not in MAIL_FORMATS:
        raise ValueError(f"mail must be one of {', '.join(MAIL_FORMATS)}, not {mail!r}")
    if syslog_timestamps is None:
        syslog_timestamps = "bsd" if (end - timedelta(days=days - 1)).year == end.year else "rfc3339"
    if syslog_timestamps not in ("bsd", "rfc3339"):
        raise ValueError("syslog_timestamps must be 'bsd' or 'rfc3339'")
    if vpn_syslog not in VPN_SYSLOG_FORMS:
        raise ValueError(f"vpn_syslog must be one of {', '.join(VPN_SYSLOG_FORMS)}, not {vpn_syslog!r}")
    org = Organisation(users=users, days=days, seed=seed, end=end, timezone=timezone, hosts_per_user=hosts_per_user,
               flows_per_host_day=flows_per_host_day, network=network, vpn_syslog=vpn_syslog, profile=chosen)
    return _write(org, Path(out_dir), mail, syslog_timestamps)


__all__ = ["OrgCase", "OrgDataset", "generate_organisation", "us_holidays"]
