"""Pulse Secure / Ivanti Connect Secure VPN syslog in the appliance's "standard" format:

    <syslog header><yyyy-mm-dd hh:mm:ss> - <node> - [<client ip>] [<network>::]<user>(<realm>)[<roles>] - <message>

behind the header rsyslog writes (`2026-10-05T08:59:12-04:00 vpn01 PulseSecure: `, the shape of
real captured files) or the RFC 5424 header the appliance sends (`<134>1 … vpn01 PulseSecure: - - - `;
failures at severity notice, 133). Two more `syslog` styles write Ivanti Connect Secure 22.x
forms: `ics22`, the RFC 5424 header with the 22.x user form, whose fourth bracket holds the
session id (`Default Network::jdoe(Users)[Users, VPN][5f3a9c01]`), and messages that write it
`sid5f3a9c01` (tunnel lines `(session: sid…)`, with a space); `relay`, the same behind the BSD
header of a relay that stored it (`Mar  3 09:00:02 vpn01 1 2026-03-03T09:00:02+01:00 vpn01 …`).

The messages are the appliance's texts for the events in `EVENTS`: failed and successful
primary authentication, failed login, login (session id, agent), VPN tunnel start (tunnel
address, host name) and end, closed connection (seconds, bytes and chunks read and written),
logout, session timed out (last access); and agent login, secondary authentication, session
created and the 22.x session deleted (bandwidth: bytes read and written together).

A record holds the local time (`lt`, a naive timestamp in the appliance's zone) and its UTC offset
in seconds (`off`); `pulse_secure_line(...)` takes the fields in `COLUMNS` order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

import duckdb

from exfilwatch.synth.writers import _text

AUTH_FAILED, LOGIN_FAILED, AUTH_OK, LOGIN, TUNNEL_START, TUNNEL_END, CLOSED, LOGOUT, TIMED_OUT = range(1, 10)
AGENT_LOGIN, SECONDARY_AUTH_OK, SESSION_CREATED, SESSION_DELETED = range(10, 14)
EVENTS = (AUTH_FAILED, LOGIN_FAILED, AUTH_OK, LOGIN, TUNNEL_START, TUNNEL_END, CLOSED, LOGOUT, TIMED_OUT,
          AGENT_LOGIN, SECONDARY_AUTH_OK, SESSION_CREATED, SESSION_DELETED)
SYSLOG_STYLES = ("rsyslog", "rfc5424", "ics22", "relay")
COLUMNS = [
    ("syslog", "VARCHAR"), ("lt", "TIMESTAMP"), ("off", "BIGINT"), ("host", "VARCHAR"), ("node", "VARCHAR"),
    ("ip", "VARCHAR"), ("network", "VARCHAR"), ("user", "VARCHAR"), ("realm", "VARCHAR"), ("roles", "VARCHAR"),
    ("event", "BIGINT"), ("auth_server", "VARCHAR"), ("session", "VARCHAR"), ("agent", "VARCHAR"),
    ("tunnel", "VARCHAR"), ("hostname", "VARCHAR"), ("seconds", "BIGINT"), ("bytes_read", "BIGINT"),
    ("read_chunks", "BIGINT"), ("bytes_written", "BIGINT"), ("written_chunks", "BIGINT"), ("last_access", "TIMESTAMP"),
]


def install(con: duckdb.DuckDBPyConnection) -> None:
    _text.install(con)
    params = ", ".join(name for name, _ in COLUMNS)
    con.execute(f"""
        -- the session id as 22.x messages write it
        CREATE OR REPLACE TEMP MACRO pulse_sid(syslog, session) AS
            CASE WHEN syslog IN ('ics22', 'relay') THEN 'sid' || session ELSE session END;
        CREATE OR REPLACE TEMP MACRO pulse_secure_line({params}) AS
        CASE WHEN syslog IN ('rfc5424', 'ics22', 'relay')
             THEN CASE WHEN syslog = 'relay' THEN strftime(lt, '%b ') || lpad(CAST(day(lt) AS VARCHAR), 2, ' ') || strftime(lt, ' %H:%M:%S ')
                                                   || host || ' 1 '
                       ELSE '<' || CASE WHEN event IN ({AUTH_FAILED}, {LOGIN_FAILED}) THEN '133' ELSE '134' END || '>1 ' END
                  || strftime(lt, '%Y-%m-%dT%H:%M:%S') || ew_offset(off) || ' ' || host || ' PulseSecure: - - - '
             ELSE strftime(lt, '%Y-%m-%dT%H:%M:%S') || ew_offset(off) || ' ' || host || ' PulseSecure: ' END
        || strftime(lt, '%Y-%m-%d %H:%M:%S') || ' - ' || node || ' - [' || ip || '] '
        || coalesce(network || '::', '') || user || '(' || realm || ')[' || roles || ']'
        || CASE WHEN syslog IN ('ics22', 'relay') THEN '[' || coalesce(session, '') || ']' ELSE '' END || ' - '
        || CASE event
           WHEN {AUTH_FAILED} THEN 'Primary authentication failed for ' || user || '/' || auth_server || ' from ' || ip
           WHEN {LOGIN_FAILED} THEN 'Login failed using auth server ' || auth_server
                                    || ' (Active Directory).  Reason: Failed'
           WHEN {AUTH_OK} THEN 'Primary authentication successful for ' || user || '/' || auth_server || ' from ' || ip
           WHEN {LOGIN} THEN 'Login succeeded for ' || user || '/' || realm || ' (session:' || pulse_sid(syslog, session)
                             || ') from ' || ip || ' with ' || agent || '.'
           WHEN {TUNNEL_START} THEN 'VPN Tunneling: Session started for user '
                                    || CASE WHEN syslog IN ('ics22', 'relay') THEN ' (session: ' || pulse_sid(syslog, session) || ') '
                                            ELSE '' END
                                    || 'with IPv4 address ' || tunnel || ', hostname ' || hostname
           WHEN {TUNNEL_END} THEN 'VPN Tunneling: Session ended for user '
                                  || CASE WHEN syslog IN ('ics22', 'relay') THEN ' (session: ' || pulse_sid(syslog, session) || ') '
                                          ELSE '' END
                                  || 'with IPv4 address ' || tunnel
           WHEN {CLOSED} THEN 'Closed connection to TUN-VPN port 443 after ' || seconds || ' seconds, with ' || bytes_read
                              || ' bytes read (in ' || read_chunks || ' chunks) and ' || bytes_written
                              || ' bytes written (in ' || written_chunks || ' chunks)'
           WHEN {LOGOUT} THEN 'Logout from ' || ip || ' (session:' || pulse_sid(syslog, session) || ')'
           WHEN {TIMED_OUT} THEN 'Session timed out for ' || user || '/' || realm || ' (session:' || pulse_sid(syslog, session)
                                 || ') due to inactivity (last access at ' || strftime(last_access, '%H:%M:%S %Y/%m/%d')
                                 || '). Idle session identified during routine system scan.'
           WHEN {AGENT_LOGIN} THEN 'Agent login succeeded for ' || user || '/' || realm || ' (session:'
                                   || pulse_sid(syslog, session) || ') from ' || ip || ' with ' || agent || '.'
           WHEN {SECONDARY_AUTH_OK} THEN 'Secondary authentication successful for ' || user || '/' || auth_server
                                         || ' from ' || ip
           WHEN {SESSION_CREATED} THEN 'Session created for user: [' || user || '/' || realm || '] from [' || ip
                                       || '] with primary auth-server type: [LDAP Server], primary auth-server name: ['
                                       || auth_server || '].'
           WHEN {SESSION_DELETED} THEN 'Session:[' || session || '] for user:[' || user || '] with roles:[' || roles
                                       || '] deleted. Bandwidth consumed [' || (bytes_read + bytes_written) || '] bytes'
           END
    """)


CALL = "pulse_secure_line(" + ", ".join(name for name, _ in COLUMNS) + ")"
DEFAULTS = {"syslog": "rsyslog", "host": "vpn01", "node": "ive", "realm": "Users", "roles": "Users, VPN",
            "auth_server": "Corp AD"}


def _local(t: datetime) -> tuple[datetime, int]:
    if t.tzinfo is None:
        raise ValueError("a Pulse Secure record needs an aware time (the appliance's zone)")
    return t.replace(tzinfo=None), int(t.utcoffset().total_seconds())


def lines(records: Iterable[Mapping[str, object]]) -> list[str]:
    """One line per record: `t` (aware, in the appliance's zone), `event`, `user`, `ip` and the event's own
    fields (`session`, `agent`, `tunnel`, `hostname`, `seconds`, `bytes_read`, …); `DEFAULTS` for the rest."""
    rows = []
    for record in records:
        row = {**DEFAULTS, **record}
        row["lt"], row["off"] = _local(row.pop("t"))
        if isinstance(row.get("last_access"), datetime):
            row["last_access"] = _local(row["last_access"])[0]
        rows.append(row)
    return _text.render(install, CALL, COLUMNS, rows)


def line(**record: object) -> str:
    return lines([record])[0]
