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
* a tunnel (an address-keyed session) that starts inside a login session of the same user is
  part of it: the session gets the tunnel address. Its end is the login session's own first
  end line (logout, timeout, "started new session", ...); without one, the first end line of
  its tunnels (`tunnel-ended`); a tunnel that starts outside any login session is a session of
  its own;
* an end line that carries neither a session id nor an address (`Closed connection to … after
  N seconds`) ends the user's latest session that started before it and has no end yet
  (`connection-closed`);
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
day on in one transaction. A change to the identities, domain lists or session settings
rebuilds everything. Session keys are deterministic, so a rebuilt session keeps its key and a
finding about it is not repeated.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb

from ..config import Home, Settings
from ..engine import register_lake_views
from ..lake import write_batch
from ..models import USER_SESSIONS
from ..state import StateStore, dumps
from .domains import register_domain_table
from .identities import load_identities, register_identity_map

NAME = "user_sessions"
INPUT_MODELS = ("authentication", "email", "network_traffic")

# Mail that did not leave: failed, blocked at the gateway, handed to a content filter (the
# re-injected copy is the one counted), probes and dropped messages.
NOT_SENT_ACTIONS = ("failed", "blocked", "relayed", "probe", "dropped", "rejected", "bounced", "quarantined")
NOT_SENT_EVENT_TYPES = ("email-relay", "email-out-failed", "email-in")

STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS derived_builds (
    name TEXT PRIMARY KEY,
    built_until TEXT NOT NULL,
    settings_hash TEXT NOT NULL,
    counts TEXT  -- what the last build saw and could not use (SessionCounts, JSON)
);
CREATE TABLE IF NOT EXISTS derived_inputs (
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (name, path)
);
"""

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
        "assets": [a.model_dump() for a in settings.assets if a.host and a.owner],
        "version": 1,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def compute_sessions(con: duckdb.DuckDBPyConnection, settings: Settings, now: datetime, start: datetime,
                     read_from: datetime, **tables: Any) -> SessionCounts:
    """Create temp table `target` (the `user_sessions` columns) with the sessions closed in [start, now).

    Events are read from [read_from, now): read_from must lie far enough before `start` to hold
    the logins of sessions that end after `start` (`sessions.lookback_days`). `tables` may name
    other relations for `auth`, `email`, `flows` and the `target`.
    """
    # Nothing below depends on the order rows are stored in; without that promise DuckDB
    # parallelises the table builds.
    before = con.execute("SELECT current_setting('preserve_insertion_order')").fetchall()[0][0]
    con.execute("SET preserve_insertion_order = false")
    try:
        return _compute_sessions(con, settings, now, start, read_from, **tables)
    finally:
        con.execute(f"SET preserve_insertion_order = {'true' if before else 'false'}")


def _compute_sessions(
    con: duckdb.DuckDBPyConnection,
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

    Events are read from [read_from, now): read_from must lie far enough before `start` to hold
    the logins of sessions that end after `start` (`sessions.lookback_days`).
    """
    counts = SessionCounts()
    tz = settings.timezone
    idle = float(settings.sessions.idle_limit_hours) * 3600.0
    p = {"now": now, "read_from": read_from}

    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_auth AS
        SELECT _time, "user" AS account, nullif(trim(session_id), '') AS sid, nullif(trim(assigned_ip), '') AS ip,
               src_ip, event_type, reason, raw_ref
        FROM {auth}
        WHERE _time >= $read_from AND _time < $now
          AND (event_type IN ('vpn-login', 'vpn-logout') OR nullif(trim(session_id), '') IS NOT NULL)
    """, p)
    register_identity_map(con, settings, {"vpn": "SELECT DISTINCT account FROM _ses_auth"}, name="_ses_identity")
    departments = {i.user.strip().lower(): i.department for i in load_identities(settings)}
    con.execute("CREATE OR REPLACE TEMP TABLE _ses_departments (user VARCHAR, department VARCHAR)")
    if departments:
        con.executemany("INSERT INTO _ses_departments VALUES (?, ?)", list(departments.items()))

    # --- 1. VPN events → parts (per user, link key, login sequence) -------------------------------
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_ev AS
        SELECT a.*, m.user,
               a.event_type = 'vpn-login' AS is_login,
               a.event_type = 'vpn-logout' AS is_logout,
               CASE WHEN a.sid IS NOT NULL THEN 's:' || a.sid
                    WHEN a.ip IS NOT NULL THEN 'i:' || a.ip
                    WHEN a.event_type = 'vpn-login' THEN 'u:' END AS link
        FROM _ses_auth a JOIN _ses_identity m ON m.kind = 'vpn' AND m.key = a.account
        WHERE m.user IS NOT NULL
    """)
    counts.vpn_events = con.execute("SELECT count(*) FROM _ses_auth").fetchall()[0][0]
    counts.vpn_events_unresolved = counts.vpn_events - con.execute("SELECT count(*) FROM _ses_ev").fetchall()[0][0]
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_seq AS
        SELECT *, sum(is_login::INTEGER) OVER (PARTITION BY user, link ORDER BY _time, is_login, raw_ref
                                              ROWS UNBOUNDED PRECEDING) AS seq
        FROM _ses_ev WHERE link IS NOT NULL
    """)
    counts.ends_before_login = con.execute(
        "SELECT count(*) FROM _ses_seq WHERE seq = 0 AND is_logout").fetchall()[0][0]
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_parts AS
        WITH g AS (
            SELECT user, link, seq,
                   min(_time) FILTER (WHERE is_login) AS start,
                   arg_min(raw_ref, _time) FILTER (WHERE is_login) AS start_ref,
                   min(_time) FILTER (WHERE is_logout) AS end_explicit,
                   arg_min(reason, _time) FILTER (WHERE is_logout) AS end_reason_raw,
                   arg_min(raw_ref, _time) FILTER (WHERE is_logout) AS end_ref,
                   max(_time) AS last_event,
                   arg_min(account, _time) FILTER (WHERE is_login) AS account,
                   any_value(sid) AS sid, max(ip) AS ip,
                   arg_min(src_ip, _time) FILTER (WHERE is_login) AS src_ip
            FROM _ses_seq WHERE seq >= 1
            GROUP BY user, link, seq
        )
        SELECT *, lead(start) OVER (PARTITION BY user, link ORDER BY seq) AS next_login,
               starts_with(link, 'i:') AS is_tunnel
        FROM g
    """)
    # Tunnels inside a login session join it; the rest stand alone.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_tunnel_host AS
        SELECT t.user, t.link, t.seq, s.link AS host_link, s.seq AS host_seq
        FROM (SELECT * FROM _ses_parts WHERE is_tunnel) t
        ASOF JOIN (SELECT *, coalesce(end_explicit, least(next_login, last_event + to_seconds({idle}::DOUBLE)),
                                      last_event + to_seconds({idle}::DOUBLE)) AS own_end
                   FROM _ses_parts WHERE NOT is_tunnel) s
          ON t.user = s.user AND t.start >= s.start
        WHERE t.start < s.own_end
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_vpn0 AS
        WITH host AS (
            SELECT p.*, coalesce(h.host_link, p.link) AS g_link, coalesce(h.host_seq, p.seq) AS g_seq,
                   h.host_link IS NOT NULL AS merged
            FROM _ses_parts p
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
    # End lines with neither session id nor address end the user's latest open session.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_user_end AS
        SELECT s.user, s.g_link, s.g_seq, min(e._time) AS t,
               arg_min(e.reason, e._time) AS reason, arg_min(e.raw_ref, e._time) AS ref
        FROM (SELECT * FROM _ses_ev WHERE link IS NULL AND is_logout) e
        ASOF JOIN (SELECT *, least(next_login, last_event + to_seconds({idle}::DOUBLE)) AS soft_end
                   FROM _ses_vpn0) s
          ON e.user = s.user AND e._time >= s.session_start
        WHERE s.end_explicit IS NULL AND e._time < s.soft_end
        GROUP BY ALL
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_vpn AS
        WITH v AS (
            SELECT s.*, coalesce(s.end_explicit, u.t) AS end_seen,
                   CASE WHEN s.end_explicit IS NOT NULL THEN s.end_reason_raw ELSE u.reason END AS reason_seen,
                   CASE WHEN s.end_explicit IS NOT NULL THEN s.end_ref ELSE u.ref END AS ref_seen,
                   last_event + to_seconds({idle}::DOUBLE) AS idle_end
            FROM _ses_vpn0 s LEFT JOIN _ses_user_end u USING (user, g_link, g_seq)
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
                        ELSE 'no end seen: closed by the idle limit, {settings.sessions.idle_limit_hours:g} h after its '
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

    # Mail and flows only matter for the sessions written: those ending from `start` on. They began
    # at the earliest login among them, or (a daily session, at most 25 hours long) a day before.
    vpn_from = con.execute("SELECT min(session_start) FROM _ses_vpn WHERE session_end >= $start",
                           {"start": start}).fetchall()[0][0]
    mail_from = min(start - timedelta(hours=26), vpn_from) if vpn_from is not None else start - timedelta(hours=26)
    mail_from = max(mail_from, read_from)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_mail AS
        SELECT _time, src_user, coalesce(nullif(message_id, ''), nullif(internal_message_id, ''), raw_ref) AS mkey,
               size, recipient, subject, file_name
        FROM {email}
        WHERE _time >= $mail_from AND _time < $now AND src_user IS NOT NULL
          AND coalesce(action, '') NOT IN {_sql_list(NOT_SENT_ACTIONS)}
          AND coalesce(event_type, '') NOT IN {_sql_list(NOT_SENT_EVENT_TYPES)}
    """, {"now": now, "mail_from": mail_from})
    if flows:
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE _ses_flows AS
            SELECT _time, src_ip, coalesce(bytes_out, 0) AS bytes_out, coalesce(bytes_in, 0) AS bytes_in
            FROM {flows} WHERE _time >= $mail_from AND _time < $now AND src_ip IS NOT NULL
        """, {"now": now, "mail_from": mail_from})
    else:
        con.execute("CREATE OR REPLACE TEMP TABLE _ses_flows AS SELECT NULL::TIMESTAMPTZ AS _time, NULL::VARCHAR AS src_ip, "
                    "0::BIGINT AS bytes_out, 0::BIGINT AS bytes_in WHERE false")

    register_identity_map(con, settings, {
        "email": "SELECT DISTINCT src_user FROM _ses_mail",
        "host": "SELECT DISTINCT src_ip FROM _ses_flows",
    }, name="_ses_identity_more")
    con.execute("INSERT INTO _ses_identity SELECT * FROM _ses_identity_more")

    # --- 2. messages: resolve the sender, deduplicate, attribute to a session -----------------------
    # Sessions get integer ids for the joins and groupings below: VPN sessions 1..n, daily
    # sessions -(user number * 100000 + local day number).
    counts.messages = con.execute("SELECT count(*) FROM _ses_mail").fetchall()[0][0]
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_users AS
        SELECT user, row_number() OVER (ORDER BY user) AS uid FROM (SELECT DISTINCT user FROM _ses_identity
                                                                   WHERE user IS NOT NULL)
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_vpn_ids AS
        SELECT row_number() OVER (ORDER BY user, session_start, session_key) AS sk, v.*, u.uid
        FROM _ses_vpn v JOIN _ses_users u USING (user)
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_mail_user AS
        SELECT e.*, u.uid, u.user
        FROM _ses_mail e JOIN _ses_identity m ON m.kind = 'email' AND m.key = e.src_user
        JOIN _ses_users u ON u.user = m.user
    """)
    counts.messages_unresolved_sender = counts.messages - con.execute(
        "SELECT count(*) FROM _ses_mail_user").fetchall()[0][0]
    # one row per message (a message logged twice counts once: first time, largest size)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_msgs AS
        SELECT uid, mkey, min(_time) AS _time, max(size) AS size FROM _ses_mail_user GROUP BY uid, mkey
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_msg_attr AS
        SELECT m.uid, m.mkey, m._time, m.size, CASE WHEN m._time < s.session_end THEN s.sk END AS vpn_sk,
               m._time >= s.session_end AND m._time < s.covered_until AS overlapped
        FROM _ses_msgs m ASOF LEFT JOIN _ses_vpn_ids s ON m.uid = s.uid AND m._time >= s.session_start
    """)
    _resolve_overlaps(con, "_ses_msg_attr")

    # --- 3. flows: by tunnel address during a session, else by the host's owner -------------------
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_flow_tun AS
        SELECT f.*, CASE WHEN f._time < s.session_end THEN s.sk END AS tunnel_sk,
               CASE WHEN f._time < s.session_end THEN s.uid END AS tunnel_uid
        FROM _ses_flows f ASOF LEFT JOIN (SELECT * FROM _ses_vpn_ids WHERE assigned_ip IS NOT NULL) s
          ON f.src_ip = s.assigned_ip AND f._time >= s.session_start
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_flow_attr AS
        SELECT coalesce(f.tunnel_uid, u.uid) AS uid, f._time, f.bytes_out, f.bytes_in, f.tunnel_sk
        FROM _ses_flow_tun f
        LEFT JOIN _ses_identity m ON m.kind = 'host' AND m.key = f.src_ip
        LEFT JOIN _ses_users u ON u.user = m.user
        WHERE f.tunnel_sk IS NOT NULL OR u.uid IS NOT NULL
    """)
    counts.flows = con.execute("SELECT count(*) FROM _ses_flows").fetchall()[0][0]
    counts.flows_unattributed = counts.flows - con.execute("SELECT count(*) FROM _ses_flow_attr").fetchall()[0][0]
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_flow_owner AS
        SELECT f.uid, f._time, f.bytes_out, f.bytes_in,
               coalesce(f.tunnel_sk, CASE WHEN f._time < s.session_end THEN s.sk END) AS vpn_sk,
               f.tunnel_sk IS NULL AND f._time >= s.session_end AND f._time < s.covered_until AS overlapped
        FROM _ses_flow_attr f ASOF LEFT JOIN _ses_vpn_ids s ON f.uid = s.uid AND f._time >= s.session_start
    """)
    _resolve_overlaps(con, "_ses_flow_owner")

    # --- 4. keys: the VPN session, else the user's local day -----------------------------------------
    local_day = f"CAST(timezone('{tz}', _time) AS DATE)"
    day_sk = f"CASE WHEN vpn_sk IS NOT NULL THEN vpn_sk ELSE -(uid * 100000 + ({local_day} - DATE '1970-01-01')) END"
    con.execute(f"CREATE OR REPLACE TEMP TABLE _ses_msg_keyed AS SELECT *, {day_sk} AS sk FROM _ses_msg_attr")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _ses_flow_keyed AS SELECT *, {day_sk} AS sk FROM _ses_flow_owner")

    # recipients of each message (deduplicated across its copies), with their domain class
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_rcpt0 AS
        SELECT DISTINCT uid, mkey, lower(recipient) AS recipient,
               lower(regexp_extract(recipient, '@([^@]+)$', 1)) AS domain
        FROM (SELECT uid, mkey, unnest(recipient) AS recipient FROM _ses_mail_user)
    """)
    register_domain_table(con, settings, "SELECT DISTINCT domain FROM _ses_rcpt0 WHERE domain IS NOT NULL",
                          name="_ses_domains")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_rcpt AS
        SELECT k.sk, r.uid, r.mkey, k.size, r.recipient,
               coalesce(d.registered_domain, r.domain) AS registered_domain,
               coalesce(d.domain_class, 'internal') AS domain_class
        FROM _ses_rcpt0 r
        JOIN _ses_msg_keyed k USING (uid, mkey)
        LEFT JOIN _ses_domains d ON d.domain = r.domain
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_msg_flags AS
        SELECT k.sk, k.uid, k.mkey, k._time, k.size,
               coalesce(f.outgoing, false) AS outgoing, coalesce(f.personal, false) AS personal
        FROM _ses_msg_keyed k LEFT JOIN (
            SELECT uid, mkey, bool_or(domain_class <> 'internal') AS outgoing,
                   bool_or(domain_class = 'personal') AS personal
            FROM _ses_rcpt GROUP BY uid, mkey
        ) f USING (uid, mkey)
    """)

    # --- 5. features and evidence per session ----------------------------------------------------------
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_counts AS
        SELECT sk, count(*) AS messages_sent,
               count(*) FILTER (WHERE outgoing) AS em_fnum,
               coalesce(sum(size) FILTER (WHERE outgoing), 0) AS em_bsum,
               coalesce(sum(size) FILTER (WHERE personal), 0) AS em_bsum_personal,
               count(*) FILTER (WHERE personal) AS em_personal_fnum,
               -- the five largest messages (largest first; the same size: the earlier first)
               max_by(mkey, order_key, 5) FILTER (WHERE outgoing) AS top_messages,
               max_by(mkey, order_key, 5) FILTER (WHERE personal) AS top_personal
        FROM (SELECT *, CAST(coalesce(size, 0) AS HUGEINT) * 100000000000 + (99999999999 - CAST(epoch(_time) AS BIGINT))
                            AS order_key
              FROM _ses_msg_flags)
        GROUP BY sk
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_ext AS
        SELECT DISTINCT sk, mkey, size, recipient, registered_domain, domain_class
        FROM _ses_rcpt WHERE domain_class <> 'internal'
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_dom AS
        WITH per_message AS (
            SELECT sk, mkey, registered_domain, any_value(domain_class) AS domain_class, any_value(size) AS size
            FROM _ses_ext GROUP BY sk, mkey, registered_domain
        ), dom AS (
            SELECT sk, registered_domain, any_value(domain_class) AS domain_class, count(*) AS messages,
                   sum(size) AS bytes
            FROM per_message GROUP BY sk, registered_domain
        )
        SELECT sk, count(*) AS em_dnum,
               max_by({'domain': registered_domain, 'domain_class': domain_class, 'messages': messages,
                       'bytes': bytes}, {'m': messages, 'b': coalesce(bytes, -1), 'd': registered_domain}, 5)
                   AS top_domains
        FROM dom GROUP BY sk
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_rcp AS
        WITH rcp AS (
            SELECT sk, recipient, any_value(domain_class) AS domain_class, count(*) AS messages, sum(size) AS bytes
            FROM _ses_ext GROUP BY sk, recipient
        )
        SELECT sk, max_by({'recipient': recipient, 'domain_class': domain_class, 'messages': messages,
                           'bytes': bytes}, {'m': messages, 'b': coalesce(bytes, -1), 'r': recipient}, 5)
                   AS top_recipients
        FROM rcp GROUP BY sk
    """)
    # the details of the few messages shown as evidence
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_top AS
        SELECT sk, 'all' AS kind, unnest(top_messages) AS mkey, unnest(range(1, len(top_messages) + 1)) AS rank
        FROM _ses_counts WHERE len(top_messages) > 0
        UNION ALL
        SELECT sk, 'personal', unnest(top_personal), unnest(range(1, len(top_personal) + 1))
        FROM _ses_counts WHERE len(top_personal) > 0
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_evidence_rows AS
        WITH k AS (
            SELECT t.sk, t.kind, t.rank, m.uid, t.mkey, m._time, m.size
            FROM _ses_top t JOIN _ses_msg_keyed m USING (sk, mkey)
        ), wanted AS (
            SELECT DISTINCT uid, mkey FROM k
        ), copies AS (
            SELECT m.uid, m.mkey, count(*) AS n, min(m.subject) AS subject, any_value(m.recipient) AS recipient,
                   any_value(m.file_name) AS file_name
            FROM _ses_mail_user m SEMI JOIN wanted USING (uid, mkey) GROUP BY m.uid, m.mkey
        ), merged AS (  -- the few messages logged more than once: the union of their copies' lists
            SELECT m.uid, m.mkey, list_distinct(flatten(list(m.recipient))) AS recipient,
                   list_distinct(flatten(list(m.file_name))) AS file_name
            FROM _ses_mail_user m SEMI JOIN (SELECT uid, mkey FROM copies WHERE n > 1) USING (uid, mkey)
            GROUP BY m.uid, m.mkey
        ), rows AS (
            SELECT k.sk, k.kind, k.rank,
                   {'time': strftime(timezone('UTC', k._time), '%Y-%m-%dT%H:%M:%SZ'), 'message_id': k.mkey,
                    'size': k.size,
                    'recipients': array_to_string(list_sort(list_distinct(list_transform(
                        coalesce(g.recipient, c.recipient, []), lambda x: lower(x)))), ', '),
                    'subject': c.subject,
                    'file_name': array_to_string(list_sort(coalesce(g.file_name, c.file_name, [])), ', ')} AS message
            FROM k LEFT JOIN copies c USING (uid, mkey) LEFT JOIN merged g USING (uid, mkey)
        )
        SELECT * FROM rows
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_evidence AS
        SELECT sk,
               max_by(message, -rank, 5) FILTER (WHERE kind = 'all') AS largest_messages,
               max_by(message, -rank, 5) FILTER (WHERE kind = 'personal') AS largest_personal_messages
        FROM _ses_evidence_rows GROUP BY sk
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _ses_features AS
        WITH ev AS (
            SELECT * FROM _ses_evidence
        ), net AS (
            SELECT sk, count(*) AS net_flows, sum(bytes_out) AS net_bytes_out, sum(bytes_in) AS net_bytes_in
            FROM _ses_flow_keyed GROUP BY sk
        ), keys AS (
            SELECT sk, uid, min(_time) AS first_time FROM (
                SELECT sk, uid, _time FROM _ses_msg_keyed UNION ALL SELECT sk, uid, _time FROM _ses_flow_keyed)
            GROUP BY sk, uid
        )
        SELECT keys.sk, keys.uid, keys.first_time, c.messages_sent, c.em_fnum, d.em_dnum, c.em_bsum,
               c.em_bsum_personal, c.em_personal_fnum, net.net_flows, net.net_bytes_out, net.net_bytes_in,
               d.top_domains, r.top_recipients, ev.largest_messages, ev.largest_personal_messages
        FROM keys
        LEFT JOIN _ses_counts c USING (sk) LEFT JOIN _ses_dom d USING (sk)
        LEFT JOIN _ses_rcp r USING (sk) LEFT JOIN net USING (sk) LEFT JOIN ev USING (sk)
    """)

    # --- 6. the closed sessions: VPN sessions and daily sessions ----------------------------------------
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {target} AS
        WITH days AS (
            SELECT f.sk, u.user,
                   timezone('{tz}', date_trunc('day', timezone('{tz}', f.first_time))) AS session_start,
                   timezone('{tz}', date_trunc('day', timezone('{tz}', f.first_time)) + INTERVAL 1 DAY) AS session_end
            FROM _ses_features f JOIN _ses_users u USING (uid)
            WHERE f.sk < 0
        ), all_sessions AS (
            SELECT sk, session_key, user, 'vpn' AS session_kind, session_start, session_end, end_reason,
                   boundary_source, vpn_account, vpn_session_id, src_ip, assigned_ip
            FROM _ses_vpn_ids
            UNION ALL
            SELECT sk, 'day|' || user || '|' || strftime(timezone('{tz}', session_start), '%Y-%m-%d'), user, 'day',
                   session_start, session_end, 'end-of-day',
                   'activity outside VPN sessions on ' || strftime(timezone('{tz}', session_start), '%Y-%m-%d') ||
                   ' ({tz}), closed at local midnight', NULL, NULL, NULL, NULL
            FROM days
        )
        SELECT s.session_end AS _time, s.session_key, s.user, dep.department, s.session_kind, s.session_start,
               s.session_end, s.end_reason, s.boundary_source, s.vpn_account, s.vpn_session_id, s.src_ip,
               s.assigned_ip,
               coalesce(f.messages_sent, 0) AS messages_sent, coalesce(f.em_fnum, 0) AS em_fnum,
               coalesce(f.em_dnum, 0) AS em_dnum, coalesce(f.em_bsum, 0) AS em_bsum,
               coalesce(f.em_bsum_personal, 0) AS em_bsum_personal, coalesce(f.em_personal_fnum, 0) AS em_personal_fnum,
               coalesce(f.net_flows, 0) AS net_flows, coalesce(f.net_bytes_out, 0) AS net_bytes_out,
               coalesce(f.net_bytes_in, 0) AS net_bytes_in,
               coalesce(f.top_domains, []) AS top_domains, coalesce(f.top_recipients, []) AS top_recipients,
               coalesce(f.largest_messages, []) AS largest_messages,
               coalesce(f.largest_personal_messages, []) AS largest_personal_messages
        FROM all_sessions s
        LEFT JOIN _ses_features f USING (sk)
        LEFT JOIN _ses_departments dep ON dep.user = s.user
        WHERE s.session_end >= $start AND s.session_end <= $now
    """, {"start": start, "now": now})
    return counts


def _resolve_overlaps(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """Rows the ASOF join left outside the latest-started session but inside an earlier, longer one."""
    n = con.execute(f"SELECT count(*) FROM {table} WHERE overlapped").fetchall()[0][0]
    if not n:
        return
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ses_overlap_fix AS
        SELECT o.rowid AS rid, arg_max(s.sk, s.session_start) AS sk
        FROM (SELECT rowid, * FROM {table} WHERE overlapped) o
        JOIN _ses_vpn_ids s ON o.uid = s.uid AND o._time >= s.session_start AND o._time < s.session_end
        GROUP BY o.rowid
    """)
    con.execute(f"UPDATE {table} SET vpn_sk = f.sk FROM _ses_overlap_fix f WHERE {table}.rowid = f.rid")


# --- the store --------------------------------------------------------------------------------------


def _ensure_schema(state: StateStore) -> None:
    state.conn.executescript(STATE_SCHEMA)
    columns = {row["name"] for row in state.query("PRAGMA table_info(derived_builds)")}
    if "counts" not in columns:  # a state store from before the column
        state.conn.execute("ALTER TABLE derived_builds ADD COLUMN counts TEXT")


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
                        rebuild: bool = False) -> BuildReport:
    """Bring the stored `user_sessions` up to `now` (see the module's Storage section)."""
    from ..ingest import ingest_lock

    home = Home(root=state.path.parent, config_path=state.path.parent / "config.yaml")
    now = now.astimezone(timezone.utc)
    with ingest_lock(home):  # no ingest may sweep our staged files as orphans meanwhile
        _ensure_schema(state)
        files = _input_files(state)
        if not files:
            return BuildReport(None, now, reason="no input data")
        settings_hash = _settings_hash(settings)
        previous = state.query("SELECT built_until, settings_hash FROM derived_builds WHERE name = ?", (NAME,))
        seen = {r["path"] for r in state.query("SELECT path FROM derived_inputs WHERE name = ?", (NAME,))}
        new_days = sorted(day for path, day in files if path not in seen)
        first_day = datetime.fromisoformat(min(day for _, day in files)).replace(tzinfo=timezone.utc)
        lookback = timedelta(days=settings.sessions.lookback_days)
        if rebuild or not previous or previous[0]["settings_hash"] != settings_hash:
            start, reason = first_day, "full build"
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
        register_lake_views(con, settings, state, read_from, now)
        counts = compute_sessions(con, settings, now, start, read_from)
        rows = con.execute("SELECT count(*) FROM _ses_result").fetchall()[0][0]
        batch_id = f"{NAME}-{start:%Y%m%d}-{uuid.uuid4().hex[:12]}"
        written = write_batch(con, home.lake, USER_SESSIONS, batch_id, "_ses_result") if rows else []
        from_day = start.date().isoformat()
        with state.transaction() as db:
            old = [r["path"] for r in db.execute(
                "SELECT path FROM batch_files WHERE model = ? AND day >= ?", (NAME, from_day)).fetchall()]
            db.execute("DELETE FROM batch_files WHERE model = ? AND day >= ?", (NAME, from_day))
            db.execute("DELETE FROM batches WHERE model = ? AND batch_id NOT IN (SELECT batch_id FROM batch_files)",
                       (NAME,))
            db.execute("INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (batch_id, NAME, "sessions", f"derived from {', '.join(INPUT_MODELS)}", 0, 0, 0, rows, 0, 0))
            db.executemany("INSERT INTO batch_files VALUES (?,?,?,?,?)",
                           [(f.path, batch_id, NAME, f.day, f.rows) for f in written])
            db.execute("INSERT INTO derived_builds VALUES (?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
                       "built_until=excluded.built_until, settings_hash=excluded.settings_hash, counts=excluded.counts",
                       (NAME, now.isoformat(), settings_hash, dumps(counts.as_dict())))
            db.executemany("INSERT OR IGNORE INTO derived_inputs VALUES (?, ?)", [(NAME, path) for path, _ in files])
        for path in old:
            Path(path).unlink(missing_ok=True)
        return BuildReport(start, now, rows, reason, counts)


def _stored_view(con: duckdb.DuckDBPyConnection, state: StateStore) -> str:
    from ..lake import parquet_source

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
    from ..detect.runner import plain

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
