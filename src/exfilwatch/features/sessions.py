"""User sessions: VPN sessions from `authentication` events, daily sessions for the rest, and the
outgoing-mail features of each — stored as the derived lake model `user_sessions`.

Sessions
--------
A VPN session starts at a `vpn-login` and ends at its first `vpn-logout`. Lines are linked by
the VPN session id when they carry one (`session:…`), else by the tunnel address
(`VPN Tunneling: Session started … with IPv4 address …`), per user:

* within one link key the events are taken in time order; each login opens a new session (a
  logout at the same instant as a login is taken first), so a re-login with a reused session id
  starts a new session and closes the previous one if it had no end (`re-login`);
* under a session id, the tunnel (`VPN Tunneling: Session started … (session: sid…)`), its
  connections and its end belong to the login session of that id: a tunnel start opens a
  session only when none of the id is open, and the end of the tunnel or of a connection ends
  the session only when no logout, timeout or other real end comes for it (`tunnel-ended`);
* a tunnel keyed by its address (a line without id) that starts inside a login session of the
  same user is part of it — the login session from the tunnel's own client address, else the
  latest one: the session gets the tunnel address. Its end is the login session's own first
  end line (logout, timeout, "started new session", ...); without one, the first end line of
  its tunnels (`tunnel-ended`); a tunnel that starts outside any login session is a session of
  its own;
* an end line that carries neither a session id nor an address (`Closed connection to … after
  N seconds`) ends the user's open session from the same client address that started before
  it, else their latest open one (`connection-closed`);
* a session whose end is never seen closes `sessions.idle_limit_hours` (default 12) after its
  last event (`idle-limit`); a session whose end is still in the future at `now` is open and is
  neither stored nor scored;
* end lines before any login of their key (the session began before the data) are counted
  and otherwise ignored; overlapping sessions of one user (two devices) are kept apart.

Each end keeps its kind (`logout`, `timeout`, `new-session`, `terminated`, `tunnel-ended`,
`connection-closed`, `re-login`, `idle-limit`, `end-of-day`) and the line it came from
(`boundary_source`: the raw reference `file:line`).

Attribution: a message belongs to the user its sender address resolves to (identities), and
to that user's VPN session that holds its time (the latest-started one when two overlap). A
flow belongs to the VPN session whose tunnel address is its source at its time, else — when
its source host belongs to a user — to that user's session at that time. Whatever falls
outside every VPN session belongs to the user's daily session: the local day (configured time
zone; 23 or 25 hours on DST days), which closes at the next local midnight.

Features (per session, over outgoing mail: messages sent by the user, deduplicated by
message id, with at least one recipient outside the internal domains, not failed/blocked/
relayed):

* `em_fnum` distinct messages; `em_dnum` distinct external recipient registered domains;
* `em_bsum` the sum of their sizes, each message once;
* `em_bsum_personal` the sum of the sizes of those with a recipient in a personal domain;
* `recipient_domains` every external registered domain of the session (class, messages, bytes):
  the rules compare it with the user's earlier sessions to find the domains new to the user;
* evidence: top recipients and domains (messages, bytes), the largest messages, the largest
  messages to personal addresses.

Storage
-------
Closed sessions are written to the lake as the model `user_sessions` (Parquet partitioned by the
UTC day of the session's end, committed through the state store like any batch), so a model
reads months of history from a small table instead of re-reading the mail. The table
`derived_builds` remembers up to when sessions were built, and `derived_inputs` which input lake
files the build has seen. A build recomputes from the UTC midnight before the previous build's
end, or — when input files arrived since for older days (late data) — from
`sessions.lookback_days` before the oldest of them; it replaces the stored partitions from that
day on in one transaction. A change to the identities, domain lists or session settings, or
input files removed since the last build (`ingest --replace`), rebuilds everything. Session keys are deterministic, so a rebuilt session keeps its key and a
finding about it is not repeated.

Engines
-------
The steps run on DuckDB (the reference) or, with `build_user_sessions(..., spark=session)`
(`--engine spark`), on Spark over the same committed lake files: each step's DuckDB SQL goes
through events.spark.SparkConnection, and `_dialect` picks Spark-ready SQL only where the two
differ (`_asof`, `_local`, `_instant`); Spark sums the flows per session by the hour form, the
reference of DuckDB's stretch form (`_flows_by_stretch`), and takes each row's local day by the
time-zone conversion, the reference of DuckDB's arithmetic on the zone's offsets (`LocalDays`).
tests/test_spark_conformance.py requires the same rows.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pyarrow as pa

from exfilwatch.config import Settings, memory_bytes
from exfilwatch.events.engine import plain, register_lake_views
from exfilwatch.events.lake import remove_superseded, supersede, write_batch
from exfilwatch.models import USER_SESSIONS
from exfilwatch.features.tables import SCHEMA as FEATURE_TABLES
from exfilwatch.homelock import writing
from exfilwatch.state import StateStore, dumps
from exfilwatch.timeexpr import epoch_us
from exfilwatch.enrich.domains import register_domain_table
from exfilwatch.enrich.identities import load_identities, register_identity_map
from exfilwatch.sources.arrow import string_array
from exfilwatch.sources.pulse_secure import CONNECTION_CLOSED_PREFIX as CONNECTION_END_PREFIX
from exfilwatch.sources.pulse_secure import TUNNEL_ENDED as TUNNEL_END_REASON
from exfilwatch.sources.pulse_secure import TUNNEL_STARTED as TUNNEL_START_REASON

NAME = "user_sessions"
INPUT_MODELS = ("authentication", "email", "network_traffic")

# Mail that did not leave: failed, blocked at the gateway, handed to a content filter (the
# re-injected copy is the one counted), probes and dropped messages.
NOT_SENT_ACTIONS = ("failed", "blocked", "relayed", "probe", "dropped", "rejected", "bounced", "quarantined")
NOT_SENT_EVENT_TYPES = ("email-relay", "email-out-failed", "email-in")


END_KIND_SQL = """
    CASE WHEN {r} IS NULL OR {r} = '' THEN 'logout'
         WHEN contains(lower({r}), 'timed out') OR contains(lower({r}), 'timeout')
              OR contains(lower({r}), 'maximum session') THEN 'timeout'
         WHEN contains(lower({r}), 'new session') THEN 'new-session'
         WHEN contains(lower({r}), 'tunnel') THEN 'tunnel-ended'
         WHEN starts_with(lower({r}), 'connection to') OR contains(lower({r}), 'closed') THEN 'connection-closed'
         WHEN contains(lower({r}), 'terminated') THEN 'terminated'
         ELSE 'logout' END
"""


def _sql_list(values: tuple[str, ...]) -> str:
    return "(" + ", ".join("'" + v + "'" for v in values) + ")"



class Steps(Protocol):
    """Where the build's steps run: a DuckDB connection (the reference), or an
    events.spark.SparkConnection, which takes the same DuckDB SQL and runs it on Spark."""

    def execute(self, sql: str, parameters: Any = None) -> Any: ...

    def register(self, name: str, table: Any) -> Any: ...

    def unregister(self, name: str) -> Any: ...


@dataclass
class SessionCounts:
    """What one computation saw and could not use."""

    vpn_events: int = 0
    vpn_events_unresolved: int = 0
    ends_before_login: int = 0
    messages: int = 0
    messages_unresolved_sender: int = 0  # sender outside the internal domains and not listed
    flows: int = 0
    flows_unattributed: int = 0  # source neither a tunnel address in a session nor a known host

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _settings_hash(settings: Settings) -> str:
    identities: Any = settings.identities
    if isinstance(identities, str):
        path = Path(identities)
        identities = [identities, path.stat().st_mtime_ns if path.exists() else None]
    else:
        identities = [i.model_dump() for i in identities]
    data = {
        "identities": identities,
        "internal_domains": sorted(settings.internal_domains),
        "personal_domains": settings.personal_domains.model_dump(),
        "sessions": settings.sessions.model_dump(),
        "timezone": settings.timezone,
        "assets": [a.model_dump() for a in settings.assets if a.owner],
        "version": 2,  # 2: recipient_domains
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def compute_sessions(
    con: Steps,
    settings: Settings,
    now: datetime,
    start: datetime,
    read_from: datetime,
    auth: str = "lake.authentication",
    email: str = "lake.email",
    flows: str | None = "lake.network_traffic",
    target: str = "_ses_result",
) -> SessionCounts:
    """Create temp table `target` (the `user_sessions` columns) with the sessions closed in [start, now).

    Events are read from [read_from, now) of the relations `auth`, `email` and `flows`: read_from
    must lie far enough before `start` to hold the logins of sessions that end after `start`
    (`sessions.lookback_days`). Each step reads the relations it is given and creates the temp
    tables (named `_ses_…`) it returns; on DuckDB a table is dropped once no later step reads it
    (`_drop`).

    `con` is a DuckDB connection (the reference) or an events.spark.SparkConnection: each step is
    DuckDB SQL that SQLGlot carries to Spark, except where `_dialect` picks Spark-ready SQL (ASOF
    joins in `_asof`, local clock times in `_local`/`_instant`).
    """
    counts = SessionCounts()
    tz = settings.timezone
    idle_hours = float(settings.sessions.idle_limit_hours)
    with _insertion_order_ignored(con):
        # VPN lines → login sessions and tunnels → VPN sessions with their ends
        lines = _vpn_lines(con, auth, read_from, now)
        events, vpn_identity = _vpn_events(con, settings, lines)
        counts.vpn_events = _count(con, lines)
        counts.vpn_events_unresolved = counts.vpn_events - _count(con, events)
        parts, counts.ends_before_login = _login_parts(con, events, idle_hours)
        joined = _join_tunnels(con, parts, idle_hours)
        user_ends = _connection_closed_ends(con, joined, events, idle_hours)
        vpn = _vpn_sessions(con, joined, user_ends, idle_hours)
        _drop(con, lines, events, parts, joined, user_ends)

        # mail and flows → the user's VPN session at their time, else the user's local day
        mail, flow_window = _mail_and_flows(con, email, flows, vpn, start, read_from, now)
        sources = _flow_sources(con, flow_window)
        identity = _all_identities(con, settings, vpn_identity, mail, sources)
        users, vpn_ids = _number_sessions(con, identity, vpn)
        days_of = _local_days(con, tz, read_from, now)
        mail_user, messages = _attribute_mail(con, mail, identity, users, vpn_ids, days_of)
        counts.messages = _count(con, mail)
        counts.messages_unresolved_sender = counts.messages - _count(con, mail_user)
        _drop(con, vpn, mail)
        flow_net = _attribute_flows(con, flow_window, sources, identity, users, vpn_ids, days_of)
        counts.flows = _total(con, sources, "flows")
        counts.flows_unattributed = counts.flows - _total(con, flow_net, "net_flows")
        _drop(con, sources, identity, vpn_identity)

        # features and evidence per session
        recipients, flags = _classify_recipients(con, settings, mail_user, messages)
        mail_counts = _mail_counts(con, flags)
        top_domains, top_recipients = _recipient_tops(con, recipients)
        _drop(con, recipients, flags)
        evidence = _evidence(con, mail_counts, messages, mail_user)
        _drop(con, mail_user)
        features = _session_features(con, messages, flow_net, mail_counts, top_domains, top_recipients, evidence)
        _drop(con, mail_counts, top_domains, top_recipients, evidence, messages, flow_net)

        # the sessions closed in [start, now)
        days = _daily_sessions(con, features, users, tz)
        departments = _departments(con, settings)
        _closed_sessions(con, target, vpn_ids, days, features, departments, start, now)
        _drop(con, vpn_ids, users, days, features, departments)
    return counts


@contextmanager
def _insertion_order_ignored(con: Steps) -> Iterator[None]:
    """Let DuckDB parallelise the table builds: nothing in the computation depends on the order
    rows are stored in (Spark keeps no order anyway)."""
    if _dialect(con) == "spark":
        yield
        return
    before = con.execute("SELECT current_setting('preserve_insertion_order')").fetchall()[0][0]
    con.execute("SET preserve_insertion_order = false")
    try:
        yield
    finally:
        con.execute(f"SET preserve_insertion_order = {'true' if before else 'false'}")


def _drop(con: Steps, *tables: str) -> None:
    """Drop the temp tables `tables` once no step reads them: DuckDB keeps temp tables in memory
    and spills them past `memory_limit` (at 3000 users x 90 days the mail steps' tables alone
    outgrow 1 GB). Spark's checkpoints are released when its connection closes."""
    if _dialect(con) == "spark":
        return
    for table in dict.fromkeys(tables):
        con.execute(f"DROP TABLE IF EXISTS {table}")


def _count(con: Steps, rows: str) -> int:
    """How many rows `rows` holds: a relation, or a relation and a WHERE clause."""
    return con.execute(f"SELECT count(*) FROM {rows}").fetchall()[0][0]


def _total(con: Steps, rows: str, column: str) -> int:
    """The sum of `column` over the relation `rows` (0 when it has none)."""
    return int(con.execute(f"SELECT coalesce(sum({column}), 0) FROM {rows}").fetchall()[0][0])


def _idle_end_sql(idle_hours: float) -> str:
    """SQL for when a session whose end is never seen closes: the idle limit after its last event."""
    return f"last_event + to_seconds({idle_hours * 3600.0}::DOUBLE)"


def _dialect(con: Steps) -> str:
    """The engine the steps write for: `duckdb`, or `spark` for an events.spark.SparkConnection."""
    return getattr(con, "dialect", "duckdb")


def _local(con: Steps, instant: str, tz: str) -> str:
    """SQL: the wall-clock time in `tz` of `instant` (DuckDB's timezone(tz, timestamptz))."""
    return f"from_utc_timestamp({instant}, '{tz}')" if _dialect(con) == "spark" else f"timezone('{tz}', {instant})"


def _instant(con: Steps, wall_clock: str, tz: str) -> str:
    """SQL: the instant a wall-clock time in `tz` names (DuckDB's timezone(tz, timestamp))."""
    return f"to_utc_timestamp({wall_clock}, '{tz}')" if _dialect(con) == "spark" else f"timezone('{tz}', {wall_clock})"


def _asof(con: Steps, left: str, right: str, keys: list[tuple[str, str]], left_time: str, right_time: str,
          right_columns: dict[str, str], outer: bool, parameters: dict[str, Any] | None = None) -> str:
    """SQL of a relation: every column of `left` (alias `l`), and `right_columns` (name: expression
    over `right`, alias `r`) of the row of `right` whose `keys` (left, right expressions) are equal
    and whose `right_time` is the latest at or before `left_time`; NULL without one, and then the
    left row is kept only when `outer`. `parameters` are those `left` names (`$name`): the
    statement that runs the relation must pass them too.

    DuckDB runs it as an ASOF join. Spark has none: both sides go in one time order per key (a
    right row before a left row of the same instant), and each left row takes the last right row
    before it (`last_value … IGNORE NULLS` over a window) — one sort per key instead of a range
    join of every left row with every earlier right row.
    """
    if _dialect(con) != "spark":
        on = " AND ".join([f"{a} = {b}" for a, b in keys] + [f"{left_time} >= {right_time}"])
        picked = ", ".join(f"{sql} AS {name}" for name, sql in right_columns.items())
        return f"SELECT l.*, {picked} FROM {left} l ASOF {'LEFT ' if outer else ''}JOIN {right} r ON {on}"
    columns = [d[0] for d in con.execute(f"SELECT * FROM {left} l LIMIT 0", parameters).description]
    key_names = [f"_asof_k{i}" for i in range(len(keys))]
    fields = ", ".join(f"'{name}': {sql}" for name, sql in right_columns.items())
    known = " AND ".join(["_asof_t IS NOT NULL"] + [f"{k} IS NOT NULL" for k in key_names])
    left_rows = ", ".join([f'l."{c}"' for c in columns] + [f"{a} AS {k}" for (a, _), k in zip(keys, key_names)]
                          + [f"{left_time} AS _asof_t", "1 AS _asof_side", "NULL AS _asof_r"])
    right_rows = ", ".join([f'NULL AS "{c}"' for c in columns] + [f"{b} AS {k}" for (_, b), k in zip(keys, key_names)]
                           + [f"{right_time} AS _asof_t", "0 AS _asof_side", f"{{{fields}}} AS _asof_r"])
    matched = ", ".join([f'"{c}"' for c in columns] + [f"_asof_m.{name} AS {name}" for name in right_columns])
    return f"""
        SELECT {matched} FROM (
            SELECT *, CASE WHEN {known} THEN last_value(_asof_r IGNORE NULLS) OVER (
                          PARTITION BY {', '.join(key_names)} ORDER BY _asof_t, _asof_side
                          ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) END AS _asof_m
            FROM (SELECT {left_rows} FROM {left} l
                  UNION ALL
                  SELECT {right_rows} FROM {right} r
                  WHERE {right_time} IS NOT NULL {''.join(f' AND {b} IS NOT NULL' for _, b in keys)})
        ) WHERE _asof_side = 1 {'' if outer else 'AND _asof_m IS NOT NULL'}
    """


# --- 1. VPN sessions ---------------------------------------------------------------------------------


def _vpn_lines(con: Steps, auth: str, read_from: datetime, now: datetime) -> str:
    """`_ses_auth`: the lines of `auth` in [read_from, now) that may open, end or link a session.

    Columns _time, account, sid, ip (session id and tunnel address, trimmed, '' as NULL), src_ip,
    event_type, reason, raw_ref: logins, logouts and every other line with a session id.
    """
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_auth AS
        SELECT _time, "user" AS account, nullif(trim(session_id), '') AS sid, nullif(trim(assigned_ip), '') AS ip,
               src_ip, event_type, reason, raw_ref
        FROM {auth}
        WHERE _time >= $read_from AND _time < $now
          AND (event_type IN ('vpn-login', 'vpn-logout') OR nullif(trim(session_id), '') IS NOT NULL)
    """, {"now": now, "read_from": read_from})
    return "_ses_auth"


def _vpn_events(con: Steps, settings: Settings, lines: str) -> tuple[str, str]:
    """`_ses_ev` and `_ses_identity_vpn`: the `lines` whose account resolves to a user, and the
    identity rows (identities.register_identity_map) of their accounts.

    `_ses_ev` adds user, is_login, is_logout, is_tunnel_start (`VPN Tunneling: Session started`),
    is_soft_end (the end of a tunnel or of one connection: `TUNNEL_END_REASONS`) and the link
    key: `s:` session id, else `i:` tunnel address, else `u:` for a login with neither; NULL for
    an end line with neither.
    """
    register_identity_map(con, settings, {"vpn": f"SELECT DISTINCT account FROM {lines}"},
                          name="_ses_identity_vpn")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_ev AS
        SELECT a.*, m.user,
               a.event_type = 'vpn-login' AS is_login,
               a.event_type = 'vpn-logout' AS is_logout,
               a.event_type = 'vpn-login' AND coalesce(a.reason = '{TUNNEL_START_REASON}', false) AS is_tunnel_start,
               a.event_type = 'vpn-logout' AND coalesce(a.reason = '{TUNNEL_END_REASON}'
                                                        OR starts_with(a.reason, '{CONNECTION_END_PREFIX}'), false)
                   AS is_soft_end,
               CASE WHEN a.sid IS NOT NULL THEN 's:' || a.sid
                    WHEN a.ip IS NOT NULL THEN 'i:' || a.ip
                    WHEN a.event_type = 'vpn-login' THEN 'u:' END AS link
        FROM {lines} a JOIN _ses_identity_vpn m ON m.kind = 'vpn' AND m.key = a.account
        WHERE m.user IS NOT NULL
    """)
    return "_ses_ev", "_ses_identity_vpn"


def _login_parts(con: Steps, events: str, idle_hours: float) -> tuple[str, int]:
    """`_ses_parts`: one row per user, link key and session start: from the start to the session's
    end line, and how many end lines came before any start of their key.

    A login starts a session. Under a session id (`s:`), the appliance writes the login, then
    the tunnel's start, connections and end under the same id: a tunnel start opens a session
    only when no session of the id is open (none before it, the previous line of the id a real
    end, or the idle limit passed), and the end of a tunnel or of a connection (`is_soft_end`)
    ends the session only when no real end (logout, timeout, ...) comes and no tunnel starts
    again after it. Under a tunnel address (`i:`) every tunnel start opens a tunnel and its end
    line ends it.

    Columns user, link, seq, start, start_ref, end_explicit, end_reason_raw, end_ref, last_event,
    account, sid, ip, src_ip, next_login (the next start of the key), is_tunnel (an `i:` key).
    """
    # the marks are read once, by the windows below: kept as a temp table of their own (`_ses_marked`
    # until the twelfth round) they cost 0.18 CPU-s with the windows against 0.14 inline (1000 users x
    # 30 days, 7 alternated rounds)
    marked = f"""(
        SELECT *, is_logout AND NOT (is_soft_end AND starts_with(link, 's:')) AS is_hard_end,
               -- a real end before a login at the same instant, and a login before its tunnel
               CASE WHEN is_logout AND NOT (is_soft_end AND starts_with(link, 's:')) THEN 0
                    WHEN is_login AND NOT is_tunnel_start THEN 1 ELSE 2 END AS rank_at_instant
        FROM {events} WHERE link IS NOT NULL)"""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_seq AS
        SELECT *, sum(opens::INTEGER) OVER (PARTITION BY user, link ORDER BY _time, rank_at_instant, raw_ref
                                           ROWS UNBOUNDED PRECEDING) AS seq
        FROM (
            SELECT *,
                   is_login AND (NOT is_tunnel_start OR NOT starts_with(link, 's:') OR prev_time IS NULL
                                 OR prev_hard_end OR _time > prev_time + to_seconds({idle_hours * 3600.0}::DOUBLE)) AS opens
            FROM (
                SELECT *, lag(_time) OVER w AS prev_time, lag(is_hard_end) OVER w AS prev_hard_end
                FROM {marked}
                WINDOW w AS (PARTITION BY user, link ORDER BY _time, rank_at_instant, raw_ref)
            )
        )
    """)
    ends_before_login = _count(con, "_ses_seq WHERE seq = 0 AND is_logout")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_parts AS
        WITH g AS (
            SELECT user, link, seq,
                   min(_time) FILTER (WHERE opens) AS start,
                   arg_min(raw_ref, _time) FILTER (WHERE opens) AS start_ref,
                   min(_time) FILTER (WHERE is_hard_end) AS hard_end,
                   arg_min(reason, _time) FILTER (WHERE is_hard_end) AS hard_reason,
                   arg_min(raw_ref, _time) FILTER (WHERE is_hard_end) AS hard_ref,
                   max(_time) FILTER (WHERE is_soft_end) AS soft_end,
                   arg_max(reason, _time) FILTER (WHERE is_soft_end) AS soft_reason,
                   arg_max(raw_ref, _time) FILTER (WHERE is_soft_end) AS soft_ref,
                   max(_time) FILTER (WHERE is_tunnel_start) AS last_tunnel_start,
                   max(_time) AS last_event,
                   arg_min(account, _time) FILTER (WHERE opens) AS account,
                   any_value(sid) AS sid, max(ip) AS ip,
                   arg_min(src_ip, _time) FILTER (WHERE opens) AS src_ip
            FROM _ses_seq WHERE seq >= 1
            GROUP BY user, link, seq
        ), ended AS (  -- a tunnel's end counts when no real end comes and no tunnel starts after it
            SELECT *, hard_end IS NULL AND soft_end IS NOT NULL
                      AND (last_tunnel_start IS NULL OR soft_end >= last_tunnel_start) AS by_soft_end
            FROM g
        )
        SELECT user, link, seq, start, start_ref,
               CASE WHEN by_soft_end THEN soft_end ELSE hard_end END AS end_explicit,
               CASE WHEN by_soft_end THEN soft_reason ELSE hard_reason END AS end_reason_raw,
               CASE WHEN by_soft_end THEN soft_ref ELSE hard_ref END AS end_ref,
               last_event, account, sid, ip, src_ip,
               lead(start) OVER (PARTITION BY user, link ORDER BY seq) AS next_login,
               starts_with(link, 'i:') AS is_tunnel
        FROM ended
    """)
    _drop(con, "_ses_seq")
    return "_ses_parts", ends_before_login


def _join_tunnels(con: Steps, parts: str, idle_hours: float) -> str:
    """`_ses_vpn0`: the `parts` with each tunnel that starts inside a login session of its user
    merged into that session; a tunnel outside every login session stays a session of its own.

    One row per session (user, g_link, g_seq: the key of the login session, or of the lone
    tunnel) with session_start, start_ref, the end line seen (end_explicit, end_reason_raw,
    end_ref: the login session's own, else its tunnels' first), last_event, next_login, account,
    sid, assigned_ip (the login session's, else its first tunnel's) and src_ip.
    """
    idle_end = _idle_end_sql(idle_hours)
    # a tunnel belongs to the login session from its own client address, else the latest one
    logins = f"""(SELECT *, coalesce(src_ip, '') AS addr, coalesce(end_explicit, least(next_login, {idle_end}),
                                                              {idle_end}) AS own_end
                  FROM {parts} WHERE NOT is_tunnel)"""
    host = {"host_link": "r.link", "host_seq": "r.seq", "host_end": "r.own_end"}
    same_address = _asof(con, f"(SELECT *, coalesce(src_ip, '') AS addr FROM {parts} WHERE is_tunnel)", logins,
                         [("l.user", "r.user"), ("l.addr", "r.addr")], "l.start", "r.start", host, outer=False)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_tunnel_same AS
        SELECT user, link, seq, host_link, host_seq FROM ({same_address}) WHERE start < host_end
    """)
    any_address = _asof(con, f"""(SELECT * FROM {parts} p WHERE is_tunnel
                                  AND NOT EXISTS (SELECT 1 FROM _ses_tunnel_same a WHERE a.user = p.user
                                                  AND a.link = p.link AND a.seq = p.seq))""",
                        logins, [("l.user", "r.user")], "l.start", "r.start", host, outer=False)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_tunnel_host AS
        SELECT * FROM _ses_tunnel_same
        UNION ALL
        SELECT user, link, seq, host_link, host_seq FROM ({any_address}) WHERE start < host_end
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_vpn0 AS
        WITH host AS (
            SELECT p.*, coalesce(h.host_link, p.link) AS g_link, coalesce(h.host_seq, p.seq) AS g_seq,
                   h.host_link IS NOT NULL AS merged
            FROM {parts} p
            LEFT JOIN _ses_tunnel_host h ON p.user = h.user AND p.link = h.link AND p.seq = h.seq
        )
        SELECT user, g_link, g_seq,
               min(start) AS session_start,
               arg_min(start_ref, start) AS start_ref,
               -- the login session's own end line wins; else the first end line of its tunnels
               coalesce(min(end_explicit) FILTER (WHERE NOT merged), min(end_explicit)) AS end_explicit,
               coalesce(arg_min(end_reason_raw, end_explicit) FILTER (WHERE NOT merged AND end_explicit IS NOT NULL),
                        arg_min(end_reason_raw, end_explicit) FILTER (WHERE end_explicit IS NOT NULL)) AS end_reason_raw,
               coalesce(arg_min(end_ref, end_explicit) FILTER (WHERE NOT merged AND end_explicit IS NOT NULL),
                        arg_min(end_ref, end_explicit) FILTER (WHERE end_explicit IS NOT NULL)) AS end_ref,
               max(last_event) AS last_event,
               min(next_login) FILTER (WHERE NOT merged) AS next_login,
               arg_min(account, start) AS account,
               any_value(sid) FILTER (WHERE NOT merged) AS sid,
               coalesce(max(ip) FILTER (WHERE NOT merged), arg_min(ip, start) FILTER (WHERE merged)) AS assigned_ip,
               arg_min(src_ip, start) AS src_ip
        FROM host GROUP BY user, g_link, g_seq
    """)
    _drop(con, "_ses_tunnel_same", "_ses_tunnel_host")
    return "_ses_vpn0"


def _connection_closed_ends(con: Steps, joined: str, events: str, idle_hours: float) -> str:
    """`_ses_user_end`: for the sessions of `joined` without an end line, the first end line in
    `events` with neither session id nor address that falls in them (the user's latest-started
    session before it, until its next login or idle limit).

    Columns user, g_link, g_seq (the session), t, reason, ref.
    """
    # an end line belongs to the session from its own client address that holds it (which may have
    # its own end already), else to the user's latest open session
    idle_end = _idle_end_sql(idle_hours)
    sessions = f"""(SELECT *, coalesce(src_ip, '') AS addr, least(next_login, {idle_end}) AS soft_end,
                           coalesce(end_explicit, least(next_login, {idle_end})) AS hold_end
                    FROM {joined})"""
    # numbered once and kept: each line is matched by address first, then to any session
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_ends AS
        SELECT row_number() OVER (ORDER BY user, _time, raw_ref) AS line, *, coalesce(src_ip, '') AS addr
        FROM {events} WHERE link IS NULL AND is_logout
    """)
    session = {"s_user": "r.user", "s_link": "r.g_link", "s_seq": "r.g_seq", "s_open": "r.end_explicit IS NULL",
               "s_until": "r.hold_end", "s_soft_end": "r.soft_end"}
    same_address = _asof(con, "_ses_ends", sessions, [("l.user", "r.user"), ("l.addr", "r.addr")],
                         "l._time", "r.session_start", session, outer=False)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_end_same AS
        SELECT line, s_user AS user, s_link AS g_link, s_seq AS g_seq, s_open AS open, _time, reason, raw_ref
        FROM ({same_address}) WHERE _time <= s_until
    """)
    any_address = _asof(con, "(SELECT * FROM _ses_ends WHERE line NOT IN (SELECT line FROM _ses_end_same))",
                        f"(SELECT * FROM {sessions} WHERE end_explicit IS NULL)", [("l.user", "r.user")],
                        "l._time", "r.session_start", session, outer=False)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_user_end AS
        SELECT user, g_link, g_seq, min(_time) AS t, arg_min(reason, _time) AS reason, arg_min(raw_ref, _time) AS ref
        FROM (SELECT * FROM _ses_end_same
              UNION ALL
              SELECT line, s_user, s_link, s_seq, true, _time, reason, raw_ref
              FROM ({any_address}) WHERE _time < s_soft_end)
        WHERE open
        GROUP BY user, g_link, g_seq
    """)
    _drop(con, "_ses_ends", "_ses_end_same")
    return "_ses_user_end"


def _vpn_sessions(con: Steps, joined: str, user_ends: str, idle_hours: float) -> str:
    """`_ses_vpn`: the VPN sessions of `joined`, each with its end and how it ended.

    The end is the session's end line, else its `user_ends` line, else the next login of its key
    (`re-login`) when that comes before the idle limit, else the idle limit (`idle-limit`).
    Columns session_key, user, session_start, session_end, end_reason, boundary_source,
    vpn_account, vpn_session_id, src_ip, assigned_ip, and covered_until: the latest end of the
    user's sessions started up to this one (overlapping sessions, see _resolve_overlaps).
    """
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_vpn AS
        WITH v AS (
            SELECT s.*, coalesce(s.end_explicit, u.t) AS end_seen,
                   CASE WHEN s.end_explicit IS NOT NULL THEN s.end_reason_raw ELSE u.reason END AS reason_seen,
                   CASE WHEN s.end_explicit IS NOT NULL THEN s.end_ref ELSE u.ref END AS ref_seen,
                   {_idle_end_sql(idle_hours)} AS idle_end
            FROM {joined} s LEFT JOIN {user_ends} u USING (user, g_link, g_seq)
        ), e AS (
            SELECT *,
                   CASE WHEN end_seen IS NOT NULL THEN end_seen
                        WHEN next_login IS NOT NULL AND next_login < idle_end THEN next_login
                        ELSE idle_end END AS session_end,
                   CASE WHEN end_seen IS NOT NULL THEN {END_KIND_SQL.format(r='reason_seen')}
                        WHEN next_login IS NOT NULL AND next_login < idle_end THEN 're-login'
                        ELSE 'idle-limit' END AS end_reason,
                   CASE WHEN end_seen IS NOT NULL THEN ref_seen
                        WHEN next_login IS NOT NULL AND next_login < idle_end THEN 'next login of the same session id'
                        ELSE 'no end seen: closed by the idle limit, {idle_hours:g} h after its '
                             || 'last event (login: ' || coalesce(start_ref, '?') || ')' END AS boundary_source
            FROM v
        )
        SELECT 'vpn|' || user || '|' || strftime(timezone('UTC', session_start), '%Y-%m-%dT%H:%M:%SZ') || '|' ||
                   coalesce(sid, assigned_ip, '-') AS session_key,
               user, session_start, session_end, end_reason, boundary_source, account AS vpn_account,
               sid AS vpn_session_id, src_ip, assigned_ip,
               max(session_end) OVER (PARTITION BY user ORDER BY session_start, session_end
                                      ROWS UNBOUNDED PRECEDING) AS covered_until
        FROM e
    """)
    return "_ses_vpn"


# --- 2. attribution of mail and flows ------------------------------------------------------------------


@dataclass(frozen=True)
class FlowWindow:
    """The flows that can fall in a session being built, left unread: `relation` is SQL of a
    relation (_time, src_ip, bytes_out, bytes_in; 0 where a byte count is missing) that needs
    `parameters`."""

    relation: str
    parameters: dict[str, Any]


# a relation of flows without any: for builds given no flows
_NO_FLOWS = ("(SELECT NULL::TIMESTAMPTZ AS _time, NULL::VARCHAR AS src_ip, 0::BIGINT AS bytes_out, "
             "0::BIGINT AS bytes_in WHERE false)")


def _mail_and_flows(con: Steps, email: str, flows: str | None, vpn: str, start: datetime,
                    read_from: datetime, now: datetime) -> tuple[str, FlowWindow]:
    """`_ses_mail`: the sent mail of `email` that can fall in a session ending in [start, now),
    and the window of the flows of `flows` (none when `flows` is None) that can.

    `_ses_mail`: _time, src_user, mkey (message id, else internal id, else the raw line), size,
    recipient, subject, file_name of mail that left (not NOT_SENT_*). The flows are not copied:
    at 3000 users x 90 days they are 28.5 M rows, and the copies of them the attribution made
    (six tables, 2.8 GB in memory at 1000 x 90) spilled past `memory_limit`; they are read where
    they are attributed (`_attribute_flows`), which keeps per session only their sums.
    """
    # Those sessions began at the earliest login among them, or (a daily session, at most 25
    # hours long) a day before `start`.
    vpn_from = con.execute(f"SELECT min(session_start) FROM {vpn} WHERE session_end >= $start",
                           {"start": start}).fetchall()[0][0]
    mail_from = min(start - timedelta(hours=26), vpn_from) if vpn_from is not None else start - timedelta(hours=26)
    p = {"now": now, "mail_from": max(mail_from, read_from)}
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_mail AS
        SELECT _time, src_user, coalesce(nullif(message_id, ''), nullif(internal_message_id, ''), raw_ref) AS mkey,
               size, recipient, subject, file_name
        FROM {email}
        WHERE _time >= $mail_from AND _time < $now AND src_user IS NOT NULL
          AND coalesce(action, '') NOT IN {_sql_list(NOT_SENT_ACTIONS)}
          AND coalesce(event_type, '') NOT IN {_sql_list(NOT_SENT_EVENT_TYPES)}
    """, p)
    if not flows:
        return "_ses_mail", FlowWindow(_NO_FLOWS, {})
    return "_ses_mail", FlowWindow(f"""(
        SELECT _time, src_ip, coalesce(bytes_out, 0) AS bytes_out, coalesce(bytes_in, 0) AS bytes_in
        FROM {flows} WHERE _time >= $mail_from AND _time < $now AND src_ip IS NOT NULL)""", p)


def _flow_sources(con: Steps, window: FlowWindow) -> str:
    """`_ses_flow_sources` (src_ip, flows): the source addresses of the flows in `window`, and how
    many flows each sent."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_flow_sources AS
        SELECT src_ip, count(*) AS flows FROM {window.relation} GROUP BY src_ip
    """, window.parameters)
    return "_ses_flow_sources"


def _all_identities(con: Steps, settings: Settings, vpn_identity: str, mail: str,
                    flow_sources: str) -> str:
    """`_ses_identity`: the rows of `vpn_identity` and the identity rows of the senders of `mail`
    (kind email) and of the source hosts in `flow_sources` (kind host)."""
    register_identity_map(con, settings, {
        "email": f"SELECT DISTINCT src_user FROM {mail}",
        "host": f"SELECT src_ip FROM {flow_sources}",
    }, name="_ses_identity_more")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_identity AS
        SELECT * FROM {vpn_identity} UNION ALL SELECT * FROM _ses_identity_more
    """)
    _drop(con, "_ses_identity_more")
    return "_ses_identity"


def _number_sessions(con: Steps, identity: str, vpn: str) -> tuple[str, str]:
    """`_ses_users` (user, uid 1..n in name order) and `_ses_vpn_ids`: the `vpn` sessions with
    their uid and sk 1..n (by user, start, key), the integer ids the joins below group by."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_users AS
        SELECT user, row_number() OVER (ORDER BY user) AS uid FROM (SELECT DISTINCT user FROM {identity}
                                                                   WHERE user IS NOT NULL)
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_vpn_ids AS
        SELECT row_number() OVER (ORDER BY user, session_start, session_key) AS sk, v.*, u.uid
        FROM {vpn} v JOIN _ses_users u USING (user)
    """)
    return "_ses_users", "_ses_vpn_ids"


def _attribute_mail(con: Steps, mail: str, identity: str, users: str, vpn_ids: str,
                    days_of: LocalDays) -> tuple[str, str]:
    """`_ses_mail_user` and `_ses_msg_keyed`: the `mail` of resolved senders, and their messages
    attributed to a session.

    `_ses_mail_user`: every logged copy, with the sender's uid and user. `_ses_msg_keyed`: one
    row per message (a message logged twice counts once: first time, largest size) with uid,
    mkey, _time, size, vpn_sk (the latest-started VPN session of the sender holding its time, or
    NULL), overlapped and sk (see _with_session_keys).
    """
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_mail_user AS
        SELECT e.*, u.uid, u.user
        FROM {mail} e JOIN {identity} m ON m.kind = 'email' AND m.key = e.src_user
        JOIN {users} u ON u.user = m.user
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_msgs AS
        SELECT uid, mkey, min(_time) AS _time, max(size) AS size FROM _ses_mail_user GROUP BY uid, mkey
    """)
    latest = _asof(con, "_ses_msgs", vpn_ids, [("l.uid", "r.uid")], "l._time", "r.session_start",
                   _LATEST_SESSION, outer=True)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_msg_attr AS
        SELECT uid, mkey, _time, size, CASE WHEN _time < s_end THEN s_sk END AS vpn_sk,
               _time >= s_end AND _time < s_covered AS overlapped
        FROM ({latest})
    """)
    attributed = _resolve_overlaps(con, "_ses_msg_attr", vpn_ids, "_ses_msg_resolved")
    keyed = _with_session_keys(con, attributed, "_ses_msg_keyed", days_of)
    _drop(con, "_ses_msgs", "_ses_msg_attr", attributed)
    return "_ses_mail_user", keyed


def _attribute_flows(con: Steps, window: FlowWindow, sources: str, identity: str, users: str, vpn_ids: str,
                     days_of: LocalDays) -> str:
    """`_ses_flow_net` (sk, uid, net_flows, net_bytes_out, net_bytes_in, first_time): per session,
    the flows of `window` that belong to a user, attributed to it, their count and byte sums, and
    the time of the first.

    A flow from the tunnel address of a VPN session at its time is that session's (and its
    user's); else a flow from a host a user owns is that user's, in their session at its time.
    Flows of neither are left out.
    """
    # Which of the `sources` can be a user's: a tunnel address (it is in a session by its address
    # at some times) or a host a user owns. Servers' flows (1.46 M of 3.17 M at 1000 users x 30
    # days) are neither and are read no further.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_flow_hosts AS
        WITH tunnels AS (SELECT DISTINCT assigned_ip FROM {vpn_ids} WHERE assigned_ip IS NOT NULL)
        SELECT s.src_ip, t.assigned_ip IS NOT NULL AS tunnel, u.uid AS owner_uid
        FROM {sources} s
        LEFT JOIN tunnels t ON t.assigned_ip = s.src_ip
        LEFT JOIN {identity} m ON m.kind = 'host' AND m.key = s.src_ip
        LEFT JOIN {users} u ON u.user = m.user
        WHERE t.assigned_ip IS NOT NULL OR u.uid IS NOT NULL
    """)
    rows = f"""(SELECT f._time, f.bytes_out, f.bytes_in, f.src_ip, h.tunnel, h.owner_uid
               FROM {window.relation} f JOIN _ses_flow_hosts h ON h.src_ip = f.src_ip)"""
    if _flows_by_stretch(con):
        return _flows_per_session_by_stretch(con, rows, window.parameters, vpn_ids, days_of)
    # only flows from a tunnel address go through the ASOF join with the tunnels (fifth round:
    # 1.1 CPU-s over every flow, 0.45 over those at 1000 x 30)
    tunnel = _asof(con, f"(SELECT * FROM {rows} WHERE tunnel)",
                   f"(SELECT * FROM {vpn_ids} WHERE assigned_ip IS NOT NULL)",
                   [("l.src_ip", "r.assigned_ip")], "l._time", "r.session_start",
                   {"s_sk": "r.sk", "s_uid": "r.uid", "s_end": "r.session_end"}, outer=True,
                   parameters=window.parameters)
    attributed = f"""(
        SELECT coalesce(tunnel_uid, owner_uid) AS uid, _time, bytes_out, bytes_in, tunnel_sk FROM (
            SELECT _time, bytes_out, bytes_in, owner_uid, CASE WHEN _time < s_end THEN s_sk END AS tunnel_sk,
                   CASE WHEN _time < s_end THEN s_uid END AS tunnel_uid
            FROM ({tunnel})
            UNION ALL
            SELECT _time, bytes_out, bytes_in, owner_uid, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT)
            FROM {rows} WHERE NOT tunnel)
        WHERE tunnel_sk IS NOT NULL OR owner_uid IS NOT NULL)"""
    return _flows_per_session_by_hour(con, attributed, window.parameters, vpn_ids, days_of)


def _flows_by_stretch(con: Steps) -> bool:
    """Whether the flows take their session by the stretch of time between their user's session
    boundaries (`_flows_per_session_by_stretch`, DuckDB) or by the hour and an ASOF join
    (`_flows_per_session_by_hour`: the reference, and what Spark runs)."""
    return _dialect(con) == "duckdb"


def _flows_per_session_by_hour(con: Steps, attributed: str, parameters: dict[str, Any], vpn_ids: str,
                               days_of: LocalDays) -> str:
    """`_ses_flow_net` (see `_attribute_flows`) from the `attributed` flows (uid, _time, bytes_out,
    bytes_in, tunnel_sk: the VPN session of a tunnel address's flow, else NULL), which need
    `parameters`: a flow without tunnel_sk takes the latest-started of its user's `vpn_ids`
    sessions that holds its time, else its user's local day (`_session_key_sql`).

    The reference for `_flows_per_session_by_stretch`, and the form Spark runs.
    """
    # Within a UTC hour in which no session of the user starts or ends, the latest-started session
    # holding a time is the same for every flow (`whole_sk`; none outside the hours their sessions
    # touch); only a flow in an hour where one starts or ends (`split`) goes through the ASOF join
    # with the user's sessions, and the rest are summed per session at once, in the one pass over
    # the flows. At 3000 users x 90 days the ASOF join over every flow (15.4 M rows) took 16 CPU-s
    # and spilled 1.9 GB past `memory_limit`.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_session_hours AS
        SELECT uid, hour, bool_or(hour IN (first_hour, last_hour)) AS split, arg_max(sk, session_start) AS whole_sk
        FROM (
            SELECT uid, sk, session_start, {_utc_hour('session_start')} AS first_hour,
                   {_utc_hour('session_end')} AS last_hour,
                   unnest(range({_utc_hour('session_start')}, {_utc_hour('session_end')} + 1)) AS hour
            FROM {vpn_ids})
        GROUP BY uid, hour
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_flow_parts AS
        SELECT uid, CASE WHEN split_hour THEN NULL ELSE {_session_key_sql(con, 'vpn_sk', days_of)} END AS sk,
               CASE WHEN split_hour THEN _time END AS asof_time,
               count(*) AS flows, sum(bytes_out) AS bytes_out, sum(bytes_in) AS bytes_in, min(_time) AS first_time
        FROM (
            SELECT a.uid, a._time, a.bytes_out, a.bytes_in, coalesce(a.tunnel_sk, h.whole_sk) AS vpn_sk,
                   a.tunnel_sk IS NULL AND coalesce(h.split, false) AS split_hour
            FROM {attributed} a LEFT JOIN _ses_session_hours h ON h.uid = a.uid AND h.hour = {_utc_hour('a._time')})
        GROUP BY uid, CASE WHEN split_hour THEN NULL ELSE {_session_key_sql(con, 'vpn_sk', days_of)} END,
                 CASE WHEN split_hour THEN _time END
    """, parameters)
    latest = _asof(con, "(SELECT * FROM _ses_flow_parts WHERE sk IS NULL)", vpn_ids, [("l.uid", "r.uid")],
                   "l.asof_time", "r.session_start", _LATEST_SESSION, outer=True)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_flow_latest AS
        SELECT uid, asof_time, flows, bytes_out, bytes_in, first_time,
               CASE WHEN asof_time < s_end THEN s_sk END AS vpn_sk,
               asof_time >= s_end AND asof_time < s_covered AS overlapped
        FROM ({latest})
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_flow_net AS
        WITH fix AS ({_overlap_fixes("(SELECT uid, asof_time AS _time FROM _ses_flow_latest WHERE overlapped)",
                                     vpn_ids)})
        SELECT sk, uid, CAST(sum(flows) AS BIGINT) AS net_flows, sum(bytes_out) AS net_bytes_out,
               sum(bytes_in) AS net_bytes_in, min(first_time) AS first_time
        FROM (
            SELECT uid, sk, flows, bytes_out, bytes_in, first_time FROM _ses_flow_parts WHERE sk IS NOT NULL
            UNION ALL
            SELECT l.uid, {_session_key_sql(con, 'coalesce(f.sk, l.vpn_sk)', days_of, time='l.asof_time', uid='l.uid')},
                   l.flows, l.bytes_out, l.bytes_in, l.first_time
            FROM _ses_flow_latest l LEFT JOIN fix f ON l.overlapped AND f.uid = l.uid AND f._time = l.asof_time)
        GROUP BY sk, uid
    """)
    _drop(con, "_ses_flow_hosts", "_ses_session_hours", "_ses_flow_parts", "_ses_flow_latest")
    return "_ses_flow_net"


def _flows_per_session_by_stretch(con: Steps, rows: str, parameters: dict[str, Any], vpn_ids: str,
                                  days_of: LocalDays) -> str:
    """`_attribute_flows`' `_ses_flow_net` by the reference's rules (`_flows_per_session_by_hour`,
    after the tunnel addresses' ASOF join), each flow of `rows` (_time, bytes_out, bytes_in, src_ip,
    tunnel, owner_uid; needing `parameters`) matched to its session by two equi-joins in one read of
    the flows.

    Between two consecutive starts or ends of a user's sessions the sessions holding a time do not
    change, nor does the latest-started of them. `_ses_session_stretches` cuts each UTC hour a
    session of the user touches at those boundaries, and gives each stretch (uid, hour, t_from,
    t_to) the latest-started session holding it (of two started at once, the greater sk); a flow
    finds its stretch by its user and hour (the equi-join) and t_from <= _time < t_to, and takes
    its session, else its user's local day: every flow is summed straight into its session. The
    hour form keeps each flow of an hour where a session starts or ends as a group of its own for an
    ASOF join afterwards: at 10,000 users x 90 days 4.8 M groups, whose hash table outgrew the caches
    (its cost per row twice that at 3000 users).

    A flow from a tunnel address is its tunnel session's when the latest-started session of the
    address at its time still holds it (the reference's ASOF join): a session of the address is
    that from its start until the next start of the address or its own end, whichever comes first
    (of two started at once, the greater sk). `_ses_tunnel_stretches` (assigned_ip, hour, t_from,
    t_to, sk, uid) holds that span of each session cut at the UTC hours, which a flow from the
    address finds by its address and hour (the equi-join) and t_from <= _time < t_to. The
    flows are read once for both joins: read twice (the tunnel addresses' flows for the ASOF join,
    the hosts' beside them), the two Parquet scans were 0.48 of `_ses_flow_net`'s 0.92
    operator-seconds at 1000 x 30 (tenth round), and reading them once through a materialised CTE
    spilled at 3000 x 90 (ninth round); both joins here stream the flows past hash tables of
    stretches.
    """
    hour_start = "to_timestamp(hour * 3600)"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_session_stretches AS
        WITH touching AS (  -- each session once per UTC hour it touches
            SELECT uid, sk, session_start, session_end,
                   unnest(range({_utc_hour('session_start')}, {_utc_hour('session_end')} + 1)) AS hour
            FROM {vpn_ids}
        ), cuts AS (
            SELECT DISTINCT uid, hour, cut FROM (
                SELECT uid, hour, {hour_start} AS cut FROM touching
                UNION ALL SELECT uid, {_utc_hour('session_start')}, session_start FROM {vpn_ids}
                UNION ALL SELECT uid, {_utc_hour('session_end')}, session_end FROM {vpn_ids})
        ), stretches AS (
            SELECT uid, hour, cut AS t_from,
                   lead(cut, 1, to_timestamp((hour + 1) * 3600)) OVER (PARTITION BY uid, hour ORDER BY cut) AS t_to
            FROM cuts
        )
        SELECT s.uid, s.hour, s.t_from, s.t_to, arg_max(t.sk, (t.session_start, t.sk)) AS sk
        FROM stretches s JOIN touching t ON t.uid = s.uid AND t.hour = s.hour
                                        AND t.session_start <= s.t_from AND s.t_from < t.session_end
        GROUP BY s.uid, s.hour, s.t_from, s.t_to
    """)
    # the latest-started session of an address holds [its start, the next start of the address or its
    # end, whichever comes first): the pieces of that span in each UTC hour it touches. One row per
    # tunnel session and hour (136,826 at 1000 x 30, as many as the users' stretches: a tunnel address
    # is mostly one session's), 0.03 CPU-s; cutting each hour at every boundary of the address and
    # an ASOF join of those stretches, as for the users, took 0.14 (tenth round). Memory: the ASOF
    # join it replaces sorted the tunnel addresses' flows themselves; both joins now keep only
    # stretches in their hash tables and stream the flows.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_tunnel_stretches AS
        SELECT assigned_ip, hour, greatest(span_from, to_timestamp(hour * 3600)) AS t_from,
               least(span_to, to_timestamp((hour + 1) * 3600)) AS t_to, sk, uid
        FROM (
            SELECT *, unnest(range({_utc_hour('span_from')}, {_utc_hour('span_to')} + 1)) AS hour
            FROM (
                SELECT assigned_ip, sk, uid, session_start AS span_from,
                       least(session_end, lead(session_start, 1, session_end) OVER (
                           PARTITION BY assigned_ip ORDER BY session_start, sk)) AS span_to
                FROM {vpn_ids} WHERE assigned_ip IS NOT NULL)
            WHERE span_from < span_to)
        WHERE greatest(span_from, to_timestamp(hour * 3600)) < least(span_to, to_timestamp((hour + 1) * 3600))
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_flow_net AS
        WITH attributed AS (
            SELECT coalesce(t.uid, f.owner_uid) AS uid, f._time, f.hour, f.bytes_out, f.bytes_in, t.sk AS tunnel_sk
            FROM (SELECT _time, {_utc_hour('_time')} AS hour, bytes_out, bytes_in, src_ip, owner_uid FROM {rows}) f
            LEFT JOIN _ses_tunnel_stretches t
                 ON t.assigned_ip = f.src_ip AND t.hour = f.hour AND f._time >= t.t_from AND f._time < t.t_to
            WHERE t.sk IS NOT NULL OR f.owner_uid IS NOT NULL
        )
        SELECT sk, uid, count(*) AS net_flows, sum(bytes_out) AS net_bytes_out, sum(bytes_in) AS net_bytes_in,
               min(_time) AS first_time
        FROM (
            SELECT a.uid, a._time, a.bytes_out, a.bytes_in,
                   {_session_key_sql(con, 'coalesce(a.tunnel_sk, s.sk)', days_of, time='a._time', uid='a.uid')} AS sk
            FROM attributed a LEFT JOIN _ses_session_stretches s
                 ON s.uid = a.uid AND s.hour = a.hour AND a._time >= s.t_from AND a._time < s.t_to)
        GROUP BY sk, uid
    """, parameters)
    _drop(con, "_ses_flow_hosts", "_ses_session_stretches", "_ses_tunnel_stretches")
    return "_ses_flow_net"


# the columns of the latest-started VPN session of a user at a time (an ASOF match in `vpn_ids`)
_LATEST_SESSION = {"s_sk": "r.sk", "s_end": "r.session_end", "s_covered": "r.covered_until"}


def _utc_hour(instant: str) -> str:
    """SQL: the number of the UTC hour that holds `instant` (hours since 1970)."""
    return f"CAST(floor(epoch({instant}) / 3600) AS BIGINT)"


def _overlap_fixes(rows: str, vpn_ids: str) -> str:
    """SQL of a relation (uid, _time, sk): for each distinct (uid, _time) of the relation `rows`
    (a relation, or a relation and a WHERE clause), the latest-started `vpn_ids` session holding
    it (which depends only on the user and the time)."""
    return f"""
        SELECT o.uid, o._time, arg_max(s.sk, s.session_start) AS sk
        FROM (SELECT DISTINCT uid, _time FROM {rows}) o
        JOIN {vpn_ids} s ON o.uid = s.uid AND o._time >= s.session_start AND o._time < s.session_end
        GROUP BY o.uid, o._time
    """


def _resolve_overlaps(con: Steps, table: str, vpn_ids: str, name: str) -> str:
    """`table`, or temp table `name`: its rows with vpn_sk of those the ASOF join left outside the
    latest-started session but inside an earlier, longer one (`overlapped`) set to the
    latest-started `vpn_ids` session holding them (`_overlap_fixes`)."""
    if not _count(con, f"{table} WHERE overlapped"):
        return table
    columns = [d[0] for d in con.execute(f"SELECT * FROM {table} LIMIT 0").description]
    listed = ", ".join("coalesce(f.sk, t.vpn_sk) AS vpn_sk" if c == "vpn_sk" else f't."{c}"' for c in columns)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {name} AS
        WITH fix AS ({_overlap_fixes(f"{table} WHERE overlapped", vpn_ids)})
        SELECT {listed} FROM {table} t LEFT JOIN fix f ON t.overlapped AND f.uid = t.uid AND f._time = t._time
    """)
    return name


def _session_key_sql(con: Steps, vpn_sk: str, days_of: LocalDays, time: str = "_time", uid: str = "uid") -> str:
    """SQL: the session of a row: its VPN session `vpn_sk`, else its user's daily session
    -(uid * 100000 + local day number) of `time`."""
    return (f"CASE WHEN {vpn_sk} IS NOT NULL THEN {vpn_sk} "
            f"ELSE -({uid} * 100000 + {days_of.number_sql(con, time)}) END")


_US_PER_DAY = 86_400_000_000


@dataclass(frozen=True)
class LocalDays:
    """The local day of an instant in `tz` (days since 1970-01-01 on the local calendar), as SQL.

    With `changes` — the zone's UTC offset (µs) from each instant (epoch µs) on, the first at or
    before `lo` — an instant in [lo, hi) takes its day by integer arithmetic (epoch µs plus the
    offset in force, floor-divided by a day); without them, and outside [lo, hi), by converting it
    to the zone's wall clock (`_local`, the reference). The conversion is a time-zone lookup per
    row: at 1000 users x 30 days `_ses_flow_net` took 0.60 CPU-s with it and 0.53 without (its
    projection 0.39 and 0.015 operator-s; ninth round, 6 alternated rounds).
    """

    tz: str
    lo: int = 0
    hi: int = 0
    changes: tuple[tuple[int, int], ...] = ()

    def number_sql(self, con: Steps, time: str) -> str:
        reference = f"date_diff('day', DATE '1970-01-01', CAST({_local(con, time, self.tz)} AS DATE))"
        if not self.changes:
            return reference
        epoch = f"epoch_us({time})"
        offset = "".join(f"WHEN {epoch} < {at} THEN {before} "
                         for (_, before), (at, _) in zip(self.changes, self.changes[1:]))
        offset = f"CASE {offset}ELSE {self.changes[-1][1]} END" if offset else str(self.changes[0][1])
        return (f"CASE WHEN {epoch} >= {self.lo} AND {epoch} < {self.hi} "
                f"THEN CAST(({epoch} + {offset}) // {_US_PER_DAY} AS BIGINT) ELSE {reference} END")


def _local_days(con: Steps, tz: str, lo: datetime, hi: datetime) -> LocalDays:
    """The `LocalDays` of `tz` for the instants in [lo, hi), with the zone's offsets as DuckDB's own
    conversion gives them: each UTC hour's offset, and where two consecutive hours' differ, the
    second at which it changes (tzdata changes offsets on whole seconds, never twice within an
    hour). The reference form (no `changes`) on Spark, before 1970-01-02 (the integer division is
    the floor only for positive wall clocks), and where an hour holds more than one change."""
    if _dialect(con) == "spark" or lo.astimezone(timezone.utc) < datetime(1970, 1, 2, tzinfo=timezone.utc):
        return LocalDays(tz)
    first, last = int(lo.timestamp()) // 3600, -(-int(hi.timestamp()) // 3600)
    zone = tz.replace("'", "''")

    def offsets(seconds: str) -> list[tuple[int, int]]:
        return con.execute(f"""
            SELECT s, epoch_us(timezone('{zone}', to_timestamp(s))) - s * 1000000 AS offset
            FROM (SELECT unnest({seconds}) AS s) ORDER BY s
        """).fetchall()

    hours = offsets(f"range({first * 3600}, {(last + 1) * 3600}, 3600)")
    changes = [(hours[0][0] * 1_000_000, hours[0][1])]
    for (start, before), (end, after) in zip(hours, hours[1:]):
        if before == after:
            continue
        within = offsets(f"range({start + 1}, {end + 1})")  # each second of the hour after `start`
        switched = [s for s, offset in within if offset != before]
        if not switched or any(offset != after for s, offset in within if s >= switched[0]):
            return LocalDays(tz)
        changes.append((switched[0] * 1_000_000, after))
    return LocalDays(tz, epoch_us(lo), epoch_us(hi), tuple(changes))


def _with_session_keys(con: Steps, attributed: str, name: str, days_of: LocalDays) -> str:
    """Temp table `name`: the rows of `attributed` (uid, _time, vpn_sk) with sk, their session
    (`_session_key_sql`)."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {name} AS
        SELECT *, {_session_key_sql(con, 'vpn_sk', days_of)} AS sk
        FROM {attributed}
    """)
    return name


# --- 3. features and evidence per session --------------------------------------------------------------


# What an aggregate whose states hold lists (max_by(…, 5), list) takes of memory per input row:
# DuckDB 2.0 does not spill such states, so the lists of the sessions aggregated at once must fit
# beside the temp tables and hash tables in `memory_limit`. Measured at 10,000 users x 90 days
# (peak RSS over the tables loaded, 8 GB limit): 180 bytes a row for `_ses_counts` (5.0 M messages),
# 330-430 for `_ses_ext`, `_ses_dom` and `_ses_rcp` together (3.0 M recipients). Counting 200 bytes a
# row against a quarter of the limit leaves room for 800, and for the temp tables beside them.
_LIST_STATE_BYTES_PER_ROW = 200
_LIST_STATE_SHARE_OF_MEMORY = 4


def _session_parts(con: Steps, rows: str) -> int:
    """How many parts the sessions of `rows` (a relation with sk) are aggregated in so that the
    list states of one part fit in DuckDB's `memory_limit`: 1 on Spark, which spills them."""
    if _dialect(con) == "spark":
        return 1
    limit = memory_bytes(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])
    need = _count(con, rows) * _LIST_STATE_BYTES_PER_ROW * _LIST_STATE_SHARE_OF_MEMORY
    return max(1, -(-need // limit))


def _in_session_parts(con: Steps, name: str, rows: str, select: Callable[[str], str],
                      parts: int | None = None, parameters: dict[str, Any] | None = None) -> str:
    """Temp table `name`: the rows of `select(part)`, a statement that groups `rows` by session
    (sk) and reads only those of its `rows` where the SQL condition `part` holds, run once per
    part of the sessions (hash(sk) modulo `parts`, by default `_session_parts`) and appended;
    `parameters` are those the statement names (`$name`).

    A session falls in one part whole, so each part's groups are those of the whole statement
    (`parts` = 1, the reference): aggregates whose states hold lists keep to `memory_limit`.
    """
    parts = _session_parts(con, rows) if parts is None else parts
    for i in range(parts):
        rows_of_part = f"hash(sk) % {parts} = {i}" if parts > 1 else "true"
        into = f"CREATE OR REPLACE TEMP TABLE {name} AS" if i == 0 else f"INSERT INTO {name}"
        con.execute(f"{into} {select(rows_of_part)}", parameters)
    return name


def _classify_recipients(con: Steps, settings: Settings, mail_user: str,
                         messages: str) -> tuple[str, str]:
    """`_ses_rcpt` and `_ses_msg_flags`: the recipients of each message and what they make it.

    `_ses_rcpt`: one row per message of `messages` and recipient (lower case, deduplicated across
    the message's copies in `mail_user`) with sk, uid, mkey, size, registered_domain and
    domain_class (enrich.domains; `internal` for an address without a domain).
    `_ses_msg_flags`: every message of `messages` (sk, uid, mkey, _time, size) with outgoing (a
    recipient outside the internal domains) and personal (a recipient in a personal domain).
    """
    # The domain of an address is taken once per distinct address (`_ses_addresses`), not once per
    # message and recipient: 6,952 addresses against 289,482 recipients at 1000 users x 30 days, where
    # the per-row regexp_extract made the three statements 0.29 CPU-s against 0.21 (7 alternated
    # rounds). The domain of the lower-cased address is the lower-cased domain: lower() maps each
    # character to one, and never to or from '@'.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_rcpt0 AS
        SELECT DISTINCT uid, mkey, lower(recipient) AS recipient
        FROM (SELECT uid, mkey, unnest(recipient) AS recipient FROM {mail_user})
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_addresses AS
        -- regexp_extract gives '' for an address without a domain (`to=<root>`, local delivery):
        -- null, so it stays internal, as the docstring says, rather than an external domain ''
        SELECT recipient, nullif(regexp_extract(recipient, '@([^@]+)$', 1), '') AS domain
        FROM (SELECT DISTINCT recipient FROM _ses_rcpt0 WHERE recipient IS NOT NULL)
    """)
    register_domain_table(con, settings, "SELECT DISTINCT domain FROM _ses_addresses WHERE domain IS NOT NULL",
                          name="_ses_domains")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_rcpt AS
        SELECT k.sk, r.uid, r.mkey, k.size, r.recipient,
               coalesce(d.registered_domain, a.domain) AS registered_domain,
               coalesce(d.domain_class, 'internal') AS domain_class
        FROM _ses_rcpt0 r
        JOIN {messages} k USING (uid, mkey)
        LEFT JOIN _ses_addresses a ON a.recipient = r.recipient
        LEFT JOIN _ses_domains d ON d.domain = a.domain
    """)
    _drop(con, "_ses_rcpt0", "_ses_addresses", "_ses_domains")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_msg_flags AS
        SELECT k.sk, k.uid, k.mkey, k._time, k.size,
               coalesce(f.outgoing, false) AS outgoing, coalesce(f.personal, false) AS personal
        FROM {messages} k LEFT JOIN (
            SELECT uid, mkey, bool_or(domain_class <> 'internal') AS outgoing,
                   bool_or(domain_class = 'personal') AS personal
            FROM _ses_rcpt GROUP BY uid, mkey
        ) f USING (uid, mkey)
    """)
    return "_ses_rcpt", "_ses_msg_flags"


def _mail_counts(con: Steps, flags: str) -> str:
    """`_ses_counts`: per session (sk) of `flags`, messages_sent, em_fnum, em_bsum,
    em_bsum_personal, em_personal_fnum, and the keys (mkey) of the five largest outgoing messages
    (top_messages) and of the five largest to personal addresses (top_personal), largest first,
    of one size the earlier first. Built a part of the sessions at a time (`_in_session_parts`)."""

    def counts(part: str) -> str:
        return f"""
            SELECT sk, count(*) AS messages_sent,
                   count(*) FILTER (WHERE outgoing) AS em_fnum,
                   coalesce(sum(size) FILTER (WHERE outgoing), 0) AS em_bsum,
                   coalesce(sum(size) FILTER (WHERE personal), 0) AS em_bsum_personal,
                   count(*) FILTER (WHERE personal) AS em_personal_fnum,
                   max_by(mkey, order_key, 5) FILTER (WHERE outgoing) AS top_messages,
                   max_by(mkey, order_key, 5) FILTER (WHERE personal) AS top_personal
            FROM (SELECT *, CAST(coalesce(size, 0) AS HUGEINT) * 100000000000
                            + (99999999999 - CAST(epoch(_time) AS BIGINT)) AS order_key
                  FROM {flags} WHERE {part})
            GROUP BY sk
        """
    return _in_session_parts(con, "_ses_counts", flags, counts)


def _recipient_tops(con: Steps, recipients: str) -> tuple[str, str]:
    """`_ses_dom` (sk, em_dnum, recipient_domains, top_domains) and `_ses_rcp` (sk, top_recipients):
    per session, over the external recipients in `recipients`, the distinct registered domains
    (all of them, by name, and the top five) and the top five recipients by messages, then bytes
    (each message once per domain or recipient). Built a part of the sessions at a time
    (`_in_session_parts`)."""
    # `recipients` holds each recipient of a message once (one session per message and user), so
    # its external rows are read where they are: a DISTINCT copy of them (`_ses_ext` until the
    # ninth round) cost 0.13 CPU-s at 1000 x 30 and held the same rows.
    external = f"{recipients} WHERE domain_class <> 'internal'"
    parts = _session_parts(con, external)  # one count for both statements

    # list_sort orders the structs by their first field, the domain, which is each domain's once in a
    # session: the order `list(… ORDER BY registered_domain)` gave, without the ordered aggregate's
    # per-group sort (its group by: 0.45 against 0.32 operator-s at 1000 x 30, ninth round).
    # top_domains is the first five of that list in the order of (messages, bytes, domain), largest
    # first: the domain is each domain's once, so the order is total and is the one
    # `max_by(…, {m, b, d}, 5)` gave, without a second list state per session (0.16 against 0.14
    # CPU-s at 1000 x 30, 7 alternated rounds on the build's own `_ses_rcpt`).
    def domains(part: str) -> str:
        return f"""
            WITH per_message AS (
                SELECT sk, mkey, registered_domain, any_value(domain_class) AS domain_class, any_value(size) AS size
                FROM {external} AND {part} GROUP BY sk, mkey, registered_domain
            ), dom AS (
                SELECT sk, registered_domain, any_value(domain_class) AS domain_class, count(*) AS messages,
                       sum(size) AS bytes
                FROM per_message GROUP BY sk, registered_domain
            ), listed AS (
                SELECT sk, count(*) AS em_dnum,
                       list_sort(list({{'domain': registered_domain, 'domain_class': domain_class,
                                        'messages': messages, 'bytes': bytes}})) AS recipient_domains
                FROM dom GROUP BY sk
            )
            SELECT sk, em_dnum, recipient_domains,
                   list_transform(array_slice(list_reverse_sort(list_transform(recipient_domains, lambda d: {{
                       'm': d.messages, 'b': coalesce(d.bytes, -1), 'd': d.domain, 'entry': d}})), 1, 5),
                                  lambda ranked: ranked.entry) AS top_domains
            FROM listed
        """

    def top_recipients(part: str) -> str:
        return f"""
            WITH rcp AS (
                SELECT sk, recipient, any_value(domain_class) AS domain_class, count(*) AS messages,
                       sum(size) AS bytes
                FROM {external} AND {part} GROUP BY sk, recipient
            )
            SELECT sk, max_by({{'recipient': recipient, 'domain_class': domain_class, 'messages': messages,
                               'bytes': bytes}}, {{'m': messages, 'b': coalesce(bytes, -1), 'r': recipient}}, 5)
                       AS top_recipients
            FROM rcp GROUP BY sk
        """
    _in_session_parts(con, "_ses_dom", external, domains, parts)
    _in_session_parts(con, "_ses_rcp", external, top_recipients, parts)
    return "_ses_dom", "_ses_rcp"


def _evidence(con: Steps, mail_counts: str, messages: str, mail_user: str) -> str:
    """`_ses_evidence` (sk, largest_messages, largest_personal_messages): the details of the
    messages named in `mail_counts`' top_messages and top_personal, in their order.

    A message: time, message_id, size (from `messages`), recipients, subject, file_name (from
    its copies in `mail_user`; a message logged more than once shows the union of their lists).
    """
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_top AS
        -- a message is in a session's list once: its place in the list is its rank
        SELECT sk, kind, mkey, array_position(top, mkey) AS rank FROM (
            SELECT sk, 'all' AS kind, top_messages AS top, unnest(top_messages) AS mkey
            FROM {mail_counts} WHERE array_length(top_messages) > 0
            UNION ALL
            SELECT sk, 'personal', top_personal, unnest(top_personal)
            FROM {mail_counts} WHERE array_length(top_personal) > 0)
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_evidence_rows AS
        WITH k AS (
            SELECT t.sk, t.kind, t.rank, m.uid, t.mkey, m._time, m.size
            FROM _ses_top t JOIN {messages} m USING (sk, mkey)
        ), wanted AS (
            SELECT DISTINCT uid, mkey FROM k
        ), copies AS (
            SELECT m.uid, m.mkey, count(*) AS n, min(m.subject) AS subject, any_value(m.recipient) AS recipient,
                   any_value(m.file_name) AS file_name
            FROM {mail_user} m SEMI JOIN wanted USING (uid, mkey) GROUP BY m.uid, m.mkey
        ), merged AS (  -- the few messages logged more than once: the union of their copies' lists
            SELECT m.uid, m.mkey, list_distinct(flatten(list(m.recipient))) AS recipient,
                   list_distinct(flatten(list(m.file_name))) AS file_name
            FROM {mail_user} m SEMI JOIN (SELECT uid, mkey FROM copies WHERE n > 1) USING (uid, mkey)
            GROUP BY m.uid, m.mkey
        ), rows AS (
            SELECT k.sk, k.kind, k.rank,
                   {{'time': strftime(timezone('UTC', k._time), '%Y-%m-%dT%H:%M:%SZ'), 'message_id': k.mkey,
                    'size': k.size,
                    'recipients': array_to_string(list_sort(list_distinct(list_transform(
                        coalesce(g.recipient, c.recipient, []), lambda x: lower(x)))), ', '),
                    'subject': c.subject,
                    'file_name': array_to_string(list_sort(coalesce(g.file_name, c.file_name, [])), ', ')}} AS message
            FROM k LEFT JOIN copies c USING (uid, mkey) LEFT JOIN merged g USING (uid, mkey)
        )
        SELECT * FROM rows
    """)

    def evidence(part: str) -> str:
        return f"""
            SELECT sk,
                   max_by(message, -rank, 5) FILTER (WHERE kind = 'all') AS largest_messages,
                   max_by(message, -rank, 5) FILTER (WHERE kind = 'personal') AS largest_personal_messages
            FROM _ses_evidence_rows WHERE {part} GROUP BY sk
        """
    _in_session_parts(con, "_ses_evidence", "_ses_evidence_rows", evidence)
    _drop(con, "_ses_top", "_ses_evidence_rows")
    return "_ses_evidence"


def _session_features(con: Steps, messages: str, flow_net: str, mail_counts: str,
                      top_domains: str, top_recipients: str, evidence: str) -> str:
    """`_ses_features`: one row per session (sk) with mail or flows: uid, first_time (its first
    message or flow), the columns of `mail_counts`, `top_domains`, `top_recipients` and
    `evidence`, and net_flows, net_bytes_out, net_bytes_in of `flow_net` (NULL where none).
    Built a part of the sessions at a time (`_in_session_parts`): joined at once, the lists ran out
    of 1 GB at 10,000 users x 90 days."""
    def features(part: str) -> str:
        def rows(table: str) -> str:
            return f"(SELECT * FROM {table} WHERE {part})"
        return f"""
            WITH keys AS (
                SELECT sk, uid, min(_time) AS first_time FROM (
                    SELECT sk, uid, _time FROM {rows(messages)}
                    UNION ALL SELECT sk, uid, first_time FROM {rows(flow_net)})
                GROUP BY sk, uid
            )
            SELECT keys.sk, keys.uid, keys.first_time, c.messages_sent, c.em_fnum, d.em_dnum, c.em_bsum,
                   c.em_bsum_personal, c.em_personal_fnum, net.net_flows, net.net_bytes_out, net.net_bytes_in,
                   d.recipient_domains, d.top_domains, r.top_recipients, ev.largest_messages,
                   ev.largest_personal_messages
            FROM keys
            LEFT JOIN {rows(mail_counts)} c USING (sk) LEFT JOIN {rows(top_domains)} d USING (sk)
            LEFT JOIN {rows(top_recipients)} r USING (sk) LEFT JOIN {rows(flow_net)} net USING (sk)
            LEFT JOIN {rows(evidence)} ev USING (sk)
        """
    return _in_session_parts(con, "_ses_features", messages, features)


# --- 4. the closed sessions ------------------------------------------------------------------------------


def _daily_sessions(con: Steps, features: str, users: str, tz: str) -> str:
    """`_ses_days`: the daily sessions, one per user and local day with mail or flows outside VPN
    sessions (the negative sk of `features`), from local midnight to the next.

    Columns sk, session_key (`day|user|date`), user, session_kind, session_start, session_end,
    end_reason (`end-of-day`) and boundary_source.
    """
    midnight = f"date_trunc('day', {_local(con, 'f.first_time', tz)})"
    date = f"strftime({_local(con, 'session_start', tz)}, '%Y-%m-%d')"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_days AS
        WITH days AS (
            SELECT f.sk, u.user, {_instant(con, midnight, tz)} AS session_start,
                   {_instant(con, f"{midnight} + INTERVAL 1 DAY", tz)} AS session_end
            FROM {features} f JOIN {users} u USING (uid)
            WHERE f.sk < 0
        )
        SELECT sk, 'day|' || user || '|' || {date} AS session_key,
               user, 'day' AS session_kind, session_start, session_end, 'end-of-day' AS end_reason,
               'activity outside VPN sessions on ' || {date} || ' ({tz}), closed at local midnight' AS boundary_source
        FROM days
    """)
    return "_ses_days"


def _departments(con: Steps, settings: Settings) -> str:
    """`_ses_departments` (user, department): the departments the identities list."""
    departments = {i.user.strip().lower(): i.department for i in load_identities(settings)}
    con.register("_ses_departments_arrow", pa.table({"user": string_array(list(departments)),
                                                     "department": string_array(list(departments.values()))}))
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE _ses_departments AS SELECT * FROM _ses_departments_arrow")
    finally:
        con.unregister("_ses_departments_arrow")
    return "_ses_departments"


def _closed_sessions(con: Steps, target: str, vpn_ids: str, days: str, features: str,
                     departments: str, start: datetime, now: datetime) -> None:
    """Temp table `target` (the `user_sessions` columns): the VPN sessions of `vpn_ids` and the
    daily sessions of `days` that end in [start, now], with their user's department and their
    `features` (0 and [] where none). Built a part of the sessions at a time (`_in_session_parts`)."""
    def closed(part: str) -> str:
        return f"""
            WITH all_sessions AS (
                SELECT sk, session_key, user, 'vpn' AS session_kind, session_start, session_end, end_reason,
                       boundary_source, vpn_account, vpn_session_id, src_ip, assigned_ip
                FROM {vpn_ids} WHERE {part}
                UNION ALL
                SELECT sk, session_key, user, session_kind, session_start, session_end, end_reason,
                       boundary_source, NULL, NULL, NULL, NULL
                FROM {days} WHERE {part}
            )
            SELECT s.session_end AS _time, s.session_key, s.user, dep.department, s.session_kind, s.session_start,
                   s.session_end, s.end_reason, s.boundary_source, s.vpn_account, s.vpn_session_id, s.src_ip,
                   s.assigned_ip,
                   coalesce(f.messages_sent, 0) AS messages_sent, coalesce(f.em_fnum, 0) AS em_fnum,
                   coalesce(f.em_dnum, 0) AS em_dnum, coalesce(f.em_bsum, 0) AS em_bsum,
                   coalesce(f.em_bsum_personal, 0) AS em_bsum_personal,
                   coalesce(f.em_personal_fnum, 0) AS em_personal_fnum,
                   coalesce(f.net_flows, 0) AS net_flows, coalesce(f.net_bytes_out, 0) AS net_bytes_out,
                   coalesce(f.net_bytes_in, 0) AS net_bytes_in,
                   coalesce(f.recipient_domains, []) AS recipient_domains, coalesce(f.top_domains, []) AS top_domains,
                   coalesce(f.top_recipients, []) AS top_recipients,
                   coalesce(f.largest_messages, []) AS largest_messages,
                   coalesce(f.largest_personal_messages, []) AS largest_personal_messages
            FROM all_sessions s
            LEFT JOIN (SELECT * FROM {features} WHERE {part}) f USING (sk)
            LEFT JOIN {departments} dep ON dep.user = s.user
            WHERE s.session_end >= $start AND s.session_end <= $now
        """
    _in_session_parts(con, target, features, closed, parameters={"start": start, "now": now})


# --- the store --------------------------------------------------------------------------------------


def _utc_midnight(t: datetime) -> datetime:
    t = t.astimezone(timezone.utc)
    return datetime(t.year, t.month, t.day, tzinfo=timezone.utc)


@dataclass
class BuildReport:
    built_from: datetime | None  # None: nothing to do
    built_until: datetime
    sessions: int = 0
    reason: str = ""
    counts: SessionCounts = field(default_factory=SessionCounts)


def _last_counts(state: StateStore) -> SessionCounts:
    row = state.query("SELECT counts FROM derived_builds WHERE name = ?", (NAME,))
    if not row or not row[0]["counts"]:
        return SessionCounts()
    return SessionCounts(**json.loads(row[0]["counts"]))


def _input_files(state: StateStore) -> list[tuple[str, str]]:
    marks = ",".join("?" * len(INPUT_MODELS))
    return [(r["path"], r["day"]) for r in state.query(
        f"SELECT path, day FROM batch_files WHERE model IN ({marks})", INPUT_MODELS)]


def build_user_sessions(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings, now: datetime,
                        rebuild: bool = False, spark: Any = None) -> BuildReport:
    """Bring the stored `user_sessions` up to `now` (see the module's Storage section).

    With `spark` (a SparkSession) the sessions are computed on Spark over the same committed lake
    files (`_compute_on_spark`); this process still writes and commits them, as the home's writer.
    """
    now = now.astimezone(timezone.utc)
    with writing(state.writes_to):  # no ingest may sweep our staged files as orphans meanwhile
        state.migrate((FEATURE_TABLES,))
        files = _input_files(state)
        if not files:
            return BuildReport(None, now, reason="no input data")
        settings_hash = _settings_hash(settings)
        previous = state.query("SELECT built_until, settings_hash FROM derived_builds WHERE name = ?", (NAME,))
        seen = {r["path"] for r in state.query("SELECT path FROM derived_inputs WHERE name = ?", (NAME,))}
        new_days = sorted(day for path, day in files if path not in seen)
        first_day = datetime.fromisoformat(min(day for _, day in files)).replace(tzinfo=timezone.utc)
        lookback = timedelta(days=settings.sessions.lookback_days)
        removed = seen - {path for path, _ in files}  # inputs removed since (ingest --replace)
        full = rebuild or not previous or previous[0]["settings_hash"] != settings_hash or bool(removed)
        if full:
            start, reason = first_day, "input data removed" if removed and not rebuild else "full build"
        else:
            built_until = datetime.fromisoformat(previous[0]["built_until"])
            start, reason = _utc_midnight(built_until), "incremental"
            if new_days:
                late = datetime.fromisoformat(new_days[0]).replace(tzinfo=timezone.utc) - lookback
                if late < start:
                    start, reason = max(late, first_day), "late input data"
            if not new_days and now <= built_until:
                return BuildReport(None, built_until, reason="up to date", counts=_last_counts(state))
        start = _utc_midnight(start)
        read_from = start - lookback
        if spark is None:
            register_lake_views(con, settings, state, read_from, now)
            # the flows as stored: the sessions read none of the asset columns the enriched view
            # joins on (DuckDB keeps both joins: 0.46 against 0.29 CPU-s for 3.2 M flows, measured)
            counts = compute_sessions(con, settings, now, start, read_from, flows="lake.network_traffic_stored")
        else:
            counts = _compute_on_spark(con, spark, state, settings, now, start, read_from)
        rows = con.execute("SELECT count(*) FROM _ses_result").fetchall()[0][0]
        batch_id = f"{NAME}-{start:%Y%m%d}-{uuid.uuid4().hex[:12]}"
        written = write_batch(con, state.lake, USER_SESSIONS, batch_id, "_ses_result") if rows else []
        from_day = "" if full else start.date().isoformat()  # a full build replaces every stored session
        with state.transaction() as db:
            old = [r["path"] for r in db.execute(
                "SELECT path FROM batch_files WHERE model = ? AND day >= ?", (NAME, from_day)).fetchall()]
            db.execute("DELETE FROM batch_files WHERE model = ? AND day >= ?", (NAME, from_day))
            db.execute("DELETE FROM batches WHERE model = ? AND batch_id NOT IN (SELECT batch_id FROM batch_files)",
                       (NAME,))
            derived_from = f"derived from {', '.join(INPUT_MODELS)}"
            db.execute("INSERT INTO batches (batch_id, model, source, file, first_line, last_line, lines, events, "
                       "quarantined, skipped, receiver) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       (batch_id, NAME, "sessions", derived_from, 0, 0, 0, rows, 0, 0, derived_from))
            db.executemany("INSERT INTO batch_files VALUES (?,?,?,?,?)",
                           [(state.relative(f.path), batch_id, NAME, f.day, f.rows) for f in written])
            db.execute("INSERT INTO derived_builds VALUES (?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
                       "built_until=excluded.built_until, settings_hash=excluded.settings_hash, counts=excluded.counts",
                       (NAME, now.isoformat(), settings_hash, dumps(counts.as_dict())))
            if full:
                db.execute("DELETE FROM derived_inputs WHERE name = ?", (NAME,))
            db.executemany("INSERT OR IGNORE INTO derived_inputs VALUES (?, ?)", [(NAME, path) for path, _ in files])
            supersede(db, old, batch_id)  # a reader may still be scanning them: lake.py deletes them when none can
        con.execute("DROP TABLE IF EXISTS _ses_result")  # written: the run's later steps read the lake
        remove_superseded(state)
        return BuildReport(start, now, rows, reason, counts)


def _compute_on_spark(con: duckdb.DuckDBPyConnection, spark: Any, state: StateStore, settings: Settings,
                      now: datetime, start: datetime, read_from: datetime) -> SessionCounts:
    """`compute_sessions` on Spark (the same steps, events.spark.SparkConnection), its result handed
    to `con` as `_ses_result` for the writer to store. The result is the new sessions only (a day's
    at the hourly run), small beside the events the executors read to make them."""
    from exfilwatch.events.spark import SparkConnection, register_spark_views

    register_spark_views(spark, settings, state, read_from, now)
    steps = SparkConnection(spark)
    try:
        counts = compute_sessions(steps, settings, now, start, read_from, auth="authentication", email="email",
                                  flows="network_traffic")
        con.register("_ses_result_spark", steps.table_arrow("_ses_result"))
        con.execute("CREATE OR REPLACE TEMP TABLE _ses_result AS SELECT * FROM _ses_result_spark")
        con.unregister("_ses_result_spark")
    finally:
        steps.close()
    return counts


def _stored_view(con: duckdb.DuckDBPyConnection, state: StateStore) -> str:
    from exfilwatch.events.lake import parquet_source

    con.execute(f"CREATE OR REPLACE TEMP VIEW _stored_sessions AS {parquet_source(USER_SESSIONS, state.lake_files(NAME))}")
    return "_stored_sessions"


def session_overview(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings) -> list[dict[str, Any]]:
    """Stored sessions per kind and end: how many, over which days, average features."""
    view = _stored_view(con, state)
    cur = con.execute(f"""
        SELECT session_kind AS kind, end_reason AS "end", count(*) AS sessions, count(DISTINCT user) AS users,
               strftime(timezone($tz, min(session_start)), '%Y-%m-%d') AS first,
               strftime(timezone($tz, max(session_end)), '%Y-%m-%d') AS last,
               round(avg(em_fnum), 2) AS "avg EM-FNum", round(avg(em_dnum), 2) AS "avg EM-DNum",
               formatReadableDecimalSize(CAST(avg(em_bsum) AS BIGINT)) AS "avg EM-BSum",
               formatReadableDecimalSize(CAST(avg(em_bsum_personal) AS BIGINT)) AS "avg EM-BSum-personal"
        FROM {view} GROUP BY ALL ORDER BY kind DESC, sessions DESC
    """, {"tz": settings.timezone})
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def list_sessions(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings, user: str | None = None,
                  limit: int = 30) -> list[dict[str, Any]]:
    """The most recently closed stored sessions (of one user), newest first, times on the local clock."""
    view = _stored_view(con, state)
    cur = con.execute(f"""
        SELECT session_key AS session_id, user, department, session_kind,
               strftime(timezone($tz, session_start), '%Y-%m-%d %H:%M') AS session_start,
               strftime(timezone($tz, session_end), '%Y-%m-%d %H:%M') AS session_end,
               end_reason, boundary_source, vpn_account, vpn_session_id, src_ip, assigned_ip, messages_sent,
               em_fnum, em_dnum, em_bsum, em_bsum_personal, net_flows, net_bytes_out, top_domains
        FROM {view} WHERE $user IS NULL OR user = lower($user)
        ORDER BY _time DESC, session_key LIMIT $limit
    """, {"tz": settings.timezone, "user": user, "limit": limit})
    names = [d[0] for d in cur.description]
    return [{n: plain(v) for n, v in zip(names, row)} for row in cur.fetchall()]


__all__ = ["BuildReport", "SessionCounts", "build_user_sessions", "compute_sessions", "list_sessions",
           "session_overview", "dumps"]
