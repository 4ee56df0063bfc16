"""Postfix maillog: syslog lines `<stamp> <host> <program>[<pid>]: <message>` with the messages
Postfix writes for one message's way through the server (smtpd connect / TLS / `client=` /
disconnect, cleanup `message-id=`, qmgr `from=<…>, size=N, nrcpt=N (queue active)` and `removed`,
smtp / lmtp TLS and `to=<…>, relay=…, delay=…, delays=a/b/c/d, dsn=…, status=… (reply)`).

Stamps are BSD syslog (`Oct  5 08:59:12`, local time, no year) or RFC 3339 with microseconds and
offset (`2026-10-05T08:59:12.123456-04:00`). Delays are seconds, written as Postfix does (two
significant digits, `0` below 5 ms, whole seconds from 100 s).

SQL: `postfix_line(stamp, host, program, pid, message)`, `postfix_stamp(style, lt, off)` and one
macro `postfix_<kind>` per message kind in `MESSAGES`. Python: the message helpers (`connect`,
`client`, `cleanup`, `queued`, `delivery`, `removed`, …) return a `Message`; `lines(entries)`
renders `Entry` records in a handful of queries, however many there are.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import duckdb

from exfilwatch.synth.writers import _text

STAMPS = ("bsd", "rfc3339")
_TLS = ("TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 "
        "server-signature RSA-PSS (2048 bits) server-digest SHA256")
# kind -> (parameters with their DuckDB types, the message as a SQL expression over them)
MESSAGES: dict[str, tuple[tuple[tuple[str, str], ...], str]] = {
    "connect": ((("name", "VARCHAR"), ("ip", "VARCHAR")), "'connect from ' || name || '[' || ip || ']'"),
    "tls_from": ((("name", "VARCHAR"), ("ip", "VARCHAR")),
                 f"'Anonymous TLS connection established from ' || name || '[' || ip || ']: {_TLS}'"),
    "client": ((("qid", "VARCHAR"), ("name", "VARCHAR"), ("ip", "VARCHAR"), ("sasl_method", "VARCHAR"),
                ("sasl_username", "VARCHAR")),
               "qid || ': client=' || name || '[' || ip || ']'"
               " || coalesce(', sasl_method=' || sasl_method || ', sasl_username=' || sasl_username, '')"),
    "cleanup": ((("qid", "VARCHAR"), ("message_id", "VARCHAR")), "qid || ': message-id=' || message_id"),
    "queued": ((("qid", "VARCHAR"), ("sender", "VARCHAR"), ("size", "BIGINT"), ("nrcpt", "BIGINT")),
               "qid || ': from=<' || sender || '>, size=' || size || ', nrcpt=' || nrcpt || ' (queue active)'"),
    # Postfix counts the commands of the SMTP session: ehlo twice (before and after STARTTLS) and one each
    "disconnect": ((("name", "VARCHAR"), ("ip", "VARCHAR"), ("auth", "BOOLEAN"), ("nrcpt", "BIGINT")),
                   "'disconnect from ' || name || '[' || ip || '] ehlo=2 starttls=1 '"
                   " || CASE WHEN auth THEN 'auth=1 ' ELSE '' END || 'mail=1 rcpt=' || nrcpt"
                   " || ' data=1 quit=1 commands=' || (6 + nrcpt + CASE WHEN auth THEN 1 ELSE 0 END)"),
    "tls_to": ((("relay", "VARCHAR"), ("ip", "VARCHAR"), ("port", "BIGINT")),
               f"'Trusted TLS connection established to ' || relay || '[' || ip || ']:' || port || ': {_TLS}'"),
    "delivery": ((("qid", "VARCHAR"), ("recipient", "VARCHAR"), ("relay", "VARCHAR"), ("ip", "VARCHAR"),
                  ("port", "BIGINT"), ("delay", "DOUBLE"), ("before_queue", "DOUBLE"), ("in_queue", "DOUBLE"),
                  ("connect", "DOUBLE"), ("transmit", "DOUBLE"), ("dsn", "VARCHAR"), ("status", "VARCHAR"),
                  ("reply", "VARCHAR")),
                 "qid || ': to=<' || recipient || '>, relay=' || relay || '[' || ip || ']:' || port"
                 " || ', delay=' || postfix_delay(delay) || ', delays=' || postfix_delay(before_queue) || '/'"
                 " || postfix_delay(in_queue) || '/' || postfix_delay(connect) || '/' || postfix_delay(transmit)"
                 " || ', dsn=' || dsn || ', status=' || status || ' (' || reply || ')'"),
    "removed": ((("qid", "VARCHAR"),), "qid || ': removed'"),
}
LINE_COLUMNS = [("stamp", "VARCHAR"), ("lt", "TIMESTAMP"), ("off", "BIGINT"), ("host", "VARCHAR"),
                ("program", "VARCHAR"), ("pid", "BIGINT"), ("message", "VARCHAR")]


def install(con: duckdb.DuckDBPyConnection) -> None:
    _text.install(con)
    con.execute("""
        CREATE OR REPLACE TEMP MACRO postfix_delay(x) AS
            CASE WHEN x < 0.005 THEN '0' WHEN x >= 100 THEN printf('%.0f', x) ELSE printf('%.2g', round(x, 2)) END;
        CREATE OR REPLACE TEMP MACRO postfix_stamp(style, lt, off) AS
            CASE WHEN style = 'bsd'
                 THEN strftime(lt, '%b ') || lpad(CAST(day(lt) AS VARCHAR), 2, ' ') || strftime(lt, ' %H:%M:%S')
                 ELSE strftime(lt, '%Y-%m-%dT%H:%M:%S.%f') || ew_offset(off) END;
        CREATE OR REPLACE TEMP MACRO postfix_line(stamp, host, program, pid, message) AS
            stamp || ' ' || host || ' ' || program || '[' || pid || ']: ' || message;
    """)
    for kind, (params, body) in MESSAGES.items():
        con.execute(f"CREATE OR REPLACE TEMP MACRO postfix_{kind}({', '.join(p for p, _ in params)}) AS {body}")


@dataclass(frozen=True)
class Message:
    kind: str
    values: dict = field(hash=False)


def connect(name: str, ip: str) -> Message:
    return Message("connect", {"name": name, "ip": ip})


def client(qid: str, name: str, ip: str, sasl_method: str | None = None, sasl_username: str | None = None) -> Message:
    return Message("client", {"qid": qid, "name": name, "ip": ip, "sasl_method": sasl_method,
                              "sasl_username": sasl_username})


def cleanup(qid: str, message_id: str) -> Message:
    """`message_id` with its angle brackets, as the header has it."""
    return Message("cleanup", {"qid": qid, "message_id": message_id})


def queued(qid: str, sender: str, size: int, nrcpt: int) -> Message:
    return Message("queued", {"qid": qid, "sender": sender, "size": size, "nrcpt": nrcpt})


def delivery(qid: str, recipient: str, relay: str, ip: str, port: int, delay: float,
             delays: tuple[float, float, float, float], reply: str, dsn: str = "2.0.0", status: str = "sent") -> Message:
    before, in_queue, conn, transmit = delays
    return Message("delivery", {"qid": qid, "recipient": recipient, "relay": relay, "ip": ip, "port": port,
                                "delay": delay, "before_queue": before, "in_queue": in_queue, "connect": conn,
                                "transmit": transmit, "dsn": dsn, "status": status, "reply": reply})


def removed(qid: str) -> Message:
    return Message("removed", {"qid": qid})


@dataclass(frozen=True)
class Entry:
    """One maillog line: when (aware, the server's zone), which program wrote it, and what."""

    t: datetime
    program: str  # postfix/smtp, postfix/submission/smtpd, …
    pid: int
    message: Message
    host: str = "mx1"
    stamp: str = "bsd"


def messages(items: Iterable[Message]) -> list[str]:
    items = list(items)
    out: list[str | None] = [None] * len(items)
    for kind, (params, _) in MESSAGES.items():
        where = [i for i, m in enumerate(items) if m.kind == kind]
        call = f"postfix_{kind}({', '.join(p for p, _ in params)})"
        for i, text in zip(where, _text.render(install, call, params, (items[i].values for i in where))):
            out[i] = text
    return out  # type: ignore[return-value]


def lines(entries: Iterable[Entry]) -> list[str]:
    entries = list(entries)
    rows = [{"stamp": e.stamp, "lt": e.t.replace(tzinfo=None), "off": int(e.t.utcoffset().total_seconds()),
             "host": e.host, "program": e.program, "pid": e.pid, "message": text}
            for e, text in zip(entries, messages(e.message for e in entries))]
    return _text.render(install, "postfix_line(postfix_stamp(stamp, lt, off), host, program, pid, message)",
                        LINE_COLUMNS, rows)


def line(entry: Entry) -> str:
    return lines([entry])[0]
