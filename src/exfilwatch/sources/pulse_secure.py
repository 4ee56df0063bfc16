"""Juniper Networks / Pulse Secure / Ivanti Connect Secure VPN logs → `authentication`.

One source, `pulse_secure`, reads all three forms the appliance writes, line by line, because
real files mix them (a syslog filter per form sends both to one file):

* standard: `YYYY-MM-DD hh:mm:ss - NODE - [CLIENT-IP] [IVS::]USER(REALM)[ROLES] - MESSAGE`, in 22.x
  with the session id in a fourth bracket (`USER(REALM)[ROLES][30f317948f]`, `System()[][]`)
* WELF: `id=firewall time="…" pri=N fw=… vpn=NODE [ivs=…] user=… realm="…" roles="…"
  [sessionID="…"] … src=CLIENT-IP … sent= rcvd= agent="…" duration= msg="CODE: MESSAGE"`
* CEF: `CEF:0|Juniper|Pulse Secure Access|ver|CODE|MESSAGE|sev|rt=… src=… suser=… spriv=… msg=…`
  (vendor Juniper / Juniper Networks / Pulse Secure / Ivanti)

each optionally after a syslog header (see syslog_header.py) and a rsyslog `#015` (escaped CR)
at the end (a relay's BSD header before the appliance's RFC 5424 one: the inner one counts).
Session ids are normalised (`normalised_session_sql`), the line's own (bracket, WELF `sessionID`)
first, so every line of a session has one id. Time: an ISO header with a UTC offset is exact and
wins; else CEF `rt` in epoch milliseconds; else the appliance's own local time (standard/WELF, CEF
`rt` as text) in `--source-tz`; else the header's local time. Which of these a batch needed is
reported (`ParsedBatch.zoneless_times`, `yearless_times`).

The message (after its `AUT12345: ` code, when there is one) decides the event kind. The
`KINDS` table lists them in match order: each kind with an event type has a pattern the whole
message must match (else the line is quarantined with the expected form); the other kinds are
skipped and counted under their name; a message of no listed kind is skipped as `other
message (CODE)`. Byte counts are the client's view, as in `network_traffic`: bytes the
appliance read from the client are `bytes_out`, bytes it wrote to the client `bytes_in`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import duckdb

from exfilwatch.models import AUTHENTICATION
from exfilwatch.sources.base import ParseContext, ParsedBatch, blank_sql, epoch_sql, raw_ref_sql, sql_string
from exfilwatch.sources.syslog_header import (ENVELOPE, HEADER_GROUPS, envelope_sql, header_time_is_exact_sql,
                                             header_time_sql, local_time_sql, relayed_envelope_sql)

SOURCE_NAME = "pulse_secure"

# The `reason` of the lines that start and end a tunnel or one connection inside a VPN session:
# sessionisation (features/sessions.py) keeps them inside the login session of their id.
TUNNEL_STARTED = "tunnel session started"
TUNNEL_ENDED = "tunnel session ended"
CONNECTION_CLOSED_PREFIX = "connection to "

_IP = r"[0-9A-Fa-f.:]+"
_USER_REALM = r"(?P<m_user>[^/(]*?)(?:/(?P<m_realm>[^(]*?))?"

# Fields a message pattern may fill (every pattern gets all of them, unused ones null).
M_FIELDS = ["m_user", "m_realm", "m_session", "m_ip", "m_agent", "m_assigned", "m_duration",
            "m_read", "m_written", "m_reason", "m_server"]


@dataclass(frozen=True)
class OnePass:
    """A quicker reading of a kind's `pattern` for the lines that allow it.

    The kind's pattern has a lazy `.*?` or an optional part before a literal, which keeps RE2 off
    its one-pass engine (2-3 times slower on these lines). `pattern` is anchored and unambiguous,
    has the kind pattern's groups in the same order (`m_ok` non-empty when it matched), and is
    written so that where it matches (on `subject`, when `guard` holds), the kind's pattern finds
    the same groups: its leftmost, shortest choice. Elsewhere the kind's pattern decides, as
    before (tests/test_sources_vpn.py compares the two on generated messages)."""

    pattern: str
    guard: str = "true"  # SQL condition on `t`
    subject: str = "t"  # SQL over `t`


@dataclass(frozen=True)
class Kind:
    name: str  # the kind; for skipped kinds also the skip reason
    test: str  # SQL condition on `t`, the message text without its event code
    event_type: str | None = None  # None: known but irrelevant, skipped
    pattern: str | None = None  # regex the whole message must match (named groups from M_FIELDS)
    expected: str = ""  # the form shown in the quarantine reason
    reason: str = "NULL"  # SQL for the `reason` column, over `d` (the pattern's groups) and `t`
    one_pass: OnePass | None = None  # for the frequent kinds


def _starts(prefix: str) -> str:
    return f"starts_with(t, {sql_string(prefix)})"


def _has(text: str) -> str:
    return f"contains(t, {sql_string(text)})"


def _const(text: str) -> str:
    return sql_string(text)


_CLOSED = "Closed connection to "
_TUNNEL_STARTED = "VPN Tunneling: Session started for user "
_TUNNEL_ENDED = "VPN Tunneling: Session ended for user "


def _tunnel(prefix: str) -> OnePass:
    # `for user[^(]*?(?:\(session: …\) *)?with `: with a single space after `user`, the shortest
    # choice is that space and no session group
    return OnePass(rf"^(?P<m_ok>{re.escape(prefix)})(?P<m_session>)with (?:IPv[46] address|IP) (?P<m_assigned>{_IP})")


def _auth_server(prefix: str) -> OnePass:
    # `/(?P<m_server>.*?) from `: a server name without spaces followed by ` from IP` is the
    # shortest choice (a shorter one would need a space before the first one)
    return OnePass(rf"^(?P<m_ok>{re.escape(prefix)})[^/]*/(?P<m_server>[^ ]*) from (?P<m_ip>{_IP})")


# `Closed connection to [^,]*? after `: read from the first ` after ` past the prefix, when no
# comma comes before it (the target may hold spaces, so no one-pass pattern covers it whole)
_AFTER = "strpos(t, ' after ')"
_CLOSED_ONE_PASS = OnePass(
    r"^(?P<m_ok> after )(?P<m_duration>\d+) seconds?, with (?P<m_read>\d+) bytes read "
    r"(?:\(in \d+ chunks?\) )?and (?P<m_written>\d+) bytes written",
    guard=f"{_starts(_CLOSED)} AND {_AFTER} > {len(_CLOSED)} AND NOT contains(left(t, {_AFTER}), ',')",
    subject=f"substr(t, {_AFTER})")


KINDS: list[Kind] = [
    Kind("admin login", f"{_starts('Login succeeded for ')} AND {_has(' via management port')}",
         "authentication-successful",
         rf"Login succeeded for {_USER_REALM} from (?P<m_ip>{_IP}) via management port\.?",
         "Login succeeded for USER/REALM from IP via management port.", _const("admin login via management port")),
    # The frequent kinds take what the line's header does not say (user and realm are there) with
    # at most four groups and no ambiguity, which RE2 extracts quickly.
    Kind("vpn login", f"{_starts('Login succeeded for ')} AND {_has('(session:')}", "vpn-login",
         rf"Login succeeded for [^(]*\(session:(?P<m_session>[^)]*)\) from (?P<m_ip>{_IP})(?: with (?P<m_agent>.*))?",
         "Login succeeded for USER/REALM (session:ID) from IP with AGENT."),
    Kind("vpn login without session", _starts("Login succeeded for "), "vpn-login",
         rf"Login succeeded for {_USER_REALM} from (?P<m_ip>{_IP})(?: with (?P<m_agent>.*))?",
         "Login succeeded for USER/REALM from IP with AGENT."),
    Kind("agent login", _starts("Agent login succeeded for "), "vpn-login",
         rf"Agent login succeeded for [^(]*?(?:\(session: ?(?P<m_session>[^)]*)\) )?from (?P<m_ip>{_IP})(?: with (?P<m_agent>.*))?",
         "Agent login succeeded for USER/REALM (session:ID) from IP with AGENT.", _const("agent login")),
    Kind("logout", f"{_starts('Logout from ')} AND {_has('(session:')}", "vpn-logout",
         rf"Logout from (?P<m_ip>{_IP}) \(session:(?P<m_session>[^)]*)\)\.?", "Logout from IP (session:ID)",
         _const("logout")),
    Kind("admin logout", _starts("Logout from ")),
    Kind("session timed out", _starts("Session timed out for "), "vpn-logout",
         r"Session timed out for [^(]*\(session:(?P<m_session>[^)]*)\) due to inactivity.*",
         "Session timed out for USER/REALM (session:ID) due to inactivity …",
         _const("session timed out due to inactivity")),
    Kind("max session timeout", _starts("Max session timeout for "), "vpn-logout",
         r"Max session timeout for [^(]*\(session:(?P<m_session>[^)]*)\).*", "Max session timeout for USER/REALM (session:ID).",
         _const("maximum session length reached")),
    Kind("logged out for new session", f"{_has('started new session')} OR {_has('started a new session')}",
         "vpn-logout", r".*logged out.*", "… logged out … because user started new session …",
         _const("logged out because the user started a new session")),
    Kind("session terminated", f"{_starts('Session for user ')} AND {_has(' has been terminated')}", "vpn-logout",
         rf"Session for user (?P<m_user>.+?) on host (?P<m_ip>{_IP}) has been terminated.*",
         "Session for user USER on host IP has been terminated.", _const("session terminated")),
    Kind("tunnel session started",
         f"{_starts('VPN Tunneling: Session started')} OR {_starts('Network Connect: Session started')}", "vpn-login",
         r"(?P<m_ok>(?:VPN Tunneling|Network Connect): Session started for user)[^(]*?(?:\(session: ?(?P<m_session>[^)]*)\) *)?"
         rf"with (?:IPv[46] address|IP) (?P<m_assigned>{_IP})(?:, hostname \S+)?.*",
         "VPN Tunneling: Session started for user [USER] with IPv4 address IP[, hostname HOST]",
         _const(TUNNEL_STARTED), _tunnel(_TUNNEL_STARTED)),
    Kind("tunnel session ended",
         f"{_starts('VPN Tunneling: Session ended')} OR {_starts('Network Connect: Session ended')}", "vpn-logout",
         r"(?P<m_ok>(?:VPN Tunneling|Network Connect): Session ended for user)[^(]*?(?:\(session: ?(?P<m_session>[^)]*)\) *)?"
         rf"with (?:IPv[46] address|IP) (?P<m_assigned>{_IP}).*",
         "VPN Tunneling: Session ended for user [USER] with IPv4 address IP", _const(TUNNEL_ENDED),
         _tunnel(_TUNNEL_ENDED)),
    Kind("connection closed", _starts("Closed connection to "), "vpn-logout",
         r"Closed connection to [^,]*? after (?P<m_duration>\d+) seconds?, with (?P<m_read>\d+) bytes read "
         r"(?:\(in \d+ chunks?\) )?and (?P<m_written>\d+) bytes written.*",
         "Closed connection to TARGET after N seconds, with N bytes read (in N chunks) and N bytes written (in N chunks)",
         f"{sql_string(CONNECTION_CLOSED_PREFIX)} || split_part(substr(t, 22), ' after ', 1) || ' closed'",
         _CLOSED_ONE_PASS),
    Kind("primary authentication failed", _starts("Primary authentication failed for "), "failed-vpn-login",
         rf"Primary authentication failed for [^/]*/(?P<m_server>.*?) from (?P<m_ip>{_IP}).*",
         "Primary authentication failed for USER/AUTH-SERVER from IP",
         "'primary authentication failed (auth server ' || d.m_server || ')'",
         _auth_server('Primary authentication failed for ')),
    Kind("login failed", _starts("Login failed"), "failed-vpn-login",
         r"Login failed(?: using auth server (?P<m_server>.*?))?\.?\s+Reason: (?P<m_reason>.*?)\.?",
         "Login failed using auth server SERVER.  Reason: REASON", "d.m_reason"),
    Kind("primary authentication successful", _starts("Primary authentication successful for "),
         "authentication-successful",
         rf"Primary authentication successful for [^/]*/(?P<m_server>.*?) from (?P<m_ip>{_IP}).*",
         "Primary authentication successful for USER/AUTH-SERVER from IP",
         "'primary authentication (auth server ' || d.m_server || ')'",
         _auth_server('Primary authentication successful for ')),
    Kind("secondary authentication successful", _starts("Secondary authentication successful for "),
         "authentication-successful",
         rf"Secondary authentication successful for (?P<m_user>[^/]*)/(?P<m_server>.*?) from (?P<m_ip>{_IP}).*",
         "Secondary authentication successful for USER/AUTH-SERVER from IP",
         "'secondary authentication (auth server ' || d.m_server || ')'"),
    Kind("secondary authentication failed", _starts("Secondary authentication failed for "), "authentication-failed",
         rf"Secondary authentication failed for (?P<m_user>[^/]*)/(?P<m_server>.*?) from (?P<m_ip>{_IP}).*",
         "Secondary authentication failed for USER/AUTH-SERVER from IP",
         "'secondary authentication failed (auth server ' || d.m_server || ')'"),
    Kind("realm restrictions failed", _has(" realm restrictions failed for "), "authentication-failed",
         r"(?:Testing )?(?P<m_reason>.+?) realm restrictions failed for (?P<m_user>[^/]*)/(?P<m_realm>\S*).*",
         "Testing KIND realm restrictions failed for USER/REALM", "lower(d.m_reason) || ' realm restrictions failed'"),
    Kind("host checker failed", f"{_starts('Host Checker policy ')} AND {_has(' failed on host ')}",
         "authentication-failed",
         r"Host Checker policy '(?P<m_reason>[^']*)' failed on host '(?P<m_ip>[^']*)'.*",
         "Host Checker policy 'POLICY' failed on host 'IP' …", "'host checker policy ' || d.m_reason || ' failed'"),
    Kind("account deleted", _starts("User Accounts modified. Removed username "), "account-deleted",
         r"User Accounts modified\. Removed username (?P<m_user>\S+?)(?: from authentication server (?P<m_server>.+?))?\.?",
         "User Accounts modified. Removed username USER from authentication server SERVER.",
         "'removed by ' || coalesce(nullif(who_user, ''), 'unknown') || coalesce(' from authentication server ' || nullif(d.m_server, ''), '')"),
    # 22.x: the end of a session, named by its short id; the bandwidth is both directions together
    Kind("session deleted", f"{_starts('Session:[')} AND {_has(' deleted')}", "vpn-logout",
         r"Session:\[(?P<m_session>[^\]]*)\] for user:\[[^\]]*\].*? deleted\.(?: Bandwidth consumed \[(?P<m_reason>\d*)\] bytes)?.*",
         "Session:[ID] for user:[USER] with roles:[ROLES] deleted. Bandwidth consumed [N] bytes",
         "'session deleted' || CASE WHEN d.m_reason <> '' THEN ' (bandwidth consumed ' || d.m_reason || ' bytes)' ELSE '' END"),
    Kind("client version denied", f"{_starts('User ')} AND {_has(' denied access as the client version ')}",
         "authentication-failed",
         r"User (?P<m_user>.*?) denied access as the client version '(?P<m_reason>[^']*)'.*",
         "User USER denied access as the client version 'VERSION' is lower than the minimum client version configured",
         "'client version ' || d.m_reason || ' below the configured minimum'"),
    Kind("web request", _starts("WebRequest "), "web-activity-allowed", r"WebRequest (?P<m_reason>.+)",
         "WebRequest …", "'web request ' || d.m_reason"),
    # Known kinds that are not authentication events: skipped, counted by name.
    Kind("concurrent user limit", _starts("Number of concurrent users")),
    Kind("password change failed", _starts("Password change failed")),
    Kind("user account modified", _starts("User Accounts modified.")),
    Kind("admin configuration change", _starts("Changed ")),
    Kind("admin recovery token", _starts("Authentication token is created")),
    Kind("super admin session created", _starts("Super Admin session created")),
    Kind("tunnel ACL count", _has(": ACL count")),
    Kind("key exchange", _starts("Key Exchange number")),
    Kind("tunnel transport", f"{_starts('VPN Tunneling: User with IP')} OR {_starts('Established connection with type')}"),
    Kind("session created", _starts("Session created for user")),
    Kind("host checker passed", f"{_starts('Host Checker policy ')} AND {_has(' passed on host ')}"),
    Kind("realm restrictions passed", _has("realm restrictions successfully passed")),
    Kind("unauthenticated request",
         f"{_starts('Unauthenticated request')} OR ({_starts('Connection from IP ')} AND {_has('not authenticated yet')})"),
    Kind("SSL negotiation failed", _starts("SSL negotiation failed")),
    Kind("remote address changed", _starts("Remote address for user ")),
    Kind("connected to resource", _starts("Connected to ")),
    Kind("session resumed", _starts("Session resumed ")),
    Kind("client connection done", _starts(":Client connection done")),
    Kind("host checker compliance result", _starts("Host Checker Compliance Result")),
    Kind("host checker message", _starts("Host Checker ")),
]

EVENT_ACTION = {
    "vpn-login": "success", "vpn-logout": "success", "authentication-successful": "success",
    "account-deleted": "success", "web-activity-allowed": "success",
    "failed-vpn-login": "failure", "authentication-failed": "failure",
}


_META = set("\\.^$*+?()[]{}|")


def spaced_session_sql(raw: str) -> str:
    """SQL: a session id without spaces, in lower case (the first step of `normalised_session_sql`)."""
    return f"lower(replace({raw}, ' ', ''))"


def normalised_session_sql(spaced: str) -> str:
    """SQL: a session id as one spelling for every line of the session: without spaces, lower
    case, and without the `sid` the appliance puts before hexadecimal ids in messages
    (`session:sid74FA…`, `session: sid74fa…` and `74fa…` are one session).

    `spaced` is a column holding `spaced_session_sql` of the id: it is read up to three times
    here, and the id itself may take a regex to find."""
    return (f"nullif(CASE WHEN starts_with({spaced}, 'sid') AND regexp_full_match({spaced}, 'sid[0-9a-f]+') "
            f"THEN substr({spaced}, 4) ELSE {spaced} END, '')")


def _kind_regex(kind: Kind) -> tuple[str, list[str]]:
    """The kind's anchored regex and its group names in group order (DuckDB names struct fields by position).

    `m_ok` (non-empty exactly when the message matched) wraps the pattern's leading literal, so
    the regex captures little; a trailing `.*` is dropped (the match need not reach the end).
    """
    assert kind.pattern is not None
    pattern, anchor = kind.pattern, "$"
    if pattern.endswith(".*") and not pattern.endswith("\\.*"):
        pattern, anchor = pattern[:-2], ""
    if "(?P<m_ok>" not in pattern:
        cut = 0
        while cut < len(pattern) and pattern[cut] not in _META:
            cut += 1
        if cut < len(pattern) and pattern[cut] in "*+?{":
            cut -= 1  # a quantifier applies to the last literal character: leave it outside
        pattern = f"(?P<m_ok>{pattern[:cut]}){pattern[cut:]}" if cut > 0 else f"(?P<m_ok>{pattern})"
    regex = f"^{pattern}{anchor}"
    index = re.compile(regex).groupindex
    unknown = set(index) - set(M_FIELDS) - {"m_ok"}
    assert not unknown, f"{kind.name}: groups {unknown} not in M_FIELDS"
    return regex, sorted(index, key=index.__getitem__)


# Every kind's groups as one struct type, so the kinds' CASE has one type: a cast by name fills
# the fields a pattern lacks with null. Binding it costs two thirds of a struct_insert of typed nulls
# (23 kinds: 6.1 against 9.1 ms, measured), and every batch binds the statement.
GROUPS_TYPE = "STRUCT(" + ", ".join(f"{field} VARCHAR" for field in M_FIELDS + ["m_ok"]) + ")"


def _with_all_fields(extract: str) -> str:
    return f"CAST({extract} AS {GROUPS_TYPE})"


def kind_groups_sql(kind: Kind, one_pass: bool = True) -> str:
    """SQL: the struct of M_FIELDS and `m_ok` that the kind's pattern reads from `t` (with `one_pass`,
    its one-pass reading where it has one: `m_ok` is then empty where that reading does not apply,
    and `kind_groups_sql(kind, False)` decides); the fields its pattern lacks are null."""
    regex, names = _kind_regex(kind)
    listed = ", ".join(sql_string(n) for n in names)
    if kind.one_pass and one_pass:
        fast = kind.one_pass
        _positional(fast.pattern, names)
        subject = fast.subject if fast.guard == "true" else f"CASE WHEN {fast.guard} THEN {fast.subject} ELSE '' END"
        return _with_all_fields(f"regexp_extract({subject}, {sql_string(fast.pattern)}, [{listed}])")
    return _with_all_fields(f"regexp_extract(t, {sql_string(regex)}, [{listed}])")


def groups_sql(kinds: list[Kind]) -> tuple[str, str]:
    """SQL: the groups of each line's kind (`kind`, over `t`) in two steps: `d0`, with the one-pass
    readings, then the expression over `d0` that gives the kind's own pattern's groups where a
    one-pass reading did not apply (rare, so that CASE only copies what it is given elsewhere).

    Two columns rather than a CASE per kind with its fallback inside: nested CASEs over structs
    copy every struct once per level, which cost what the one-pass patterns saved (measured)."""
    first = "CASE kind " + " ".join(f"WHEN {sql_string(k.name)} THEN {kind_groups_sql(k)}" for k in kinds if k.pattern) + " END"
    one_pass = [k for k in kinds if k.one_pass]
    if not one_pass:
        return first, "d0"
    names = ", ".join(sql_string(k.name) for k in one_pass)
    fallback = " ".join(f"WHEN {sql_string(k.name)} THEN {kind_groups_sql(k, False)}" for k in one_pass)
    return first, f"CASE WHEN kind IN ({names}) AND d0.m_ok = '' THEN CASE kind {fallback} END ELSE d0 END"


def _positional(pattern: str, names: list[str]) -> None:
    index = re.compile(pattern).groupindex
    assert sorted(index, key=index.__getitem__) == names, (names, index)


# --- line shapes -------------------------------------------------------------------------------

# Line shapes. RE2 extracts groups quickly (its one-pass engine) only from unambiguous patterns
# with at most four groups, so each form is taken apart in small pieces: a pattern that finds
# the form's fixed part, string positions for the rest.
STANDARD_HEAD = r"(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) - (?P<node>\S+) - \[$"  # the text up to the first ` - [`
# then the message; 22.x adds the session's short id in a fourth bracket, kept in `sep` (`][30f317948f] - `)
# so that the pattern stays one-pass for RE2 (after `]`, `[` or ` ` decides)
STANDARD_WHO = r"^(?P<who>[^()\[\]]*)\((?P<realm>[^()]*)\)\[(?P<roles>[^\]]*)(?P<sep>\](?:\[[^\]]*\])? - )"
WELF_HEAD = r'^(?P<w_m>id=firewall) time="(?P<ts>[^"]*)" pri=\d* fw=(?P<fw>\S*) vpn=(?P<node>\S*) '
WELF_REALM = r'(?P<wr_m> realm=")(?P<realm>[^"]*)" roles="(?P<roles>[^"]*)"'
WELF_KEYS = {  # searched in the part before msg="
    "w_session": r' sessionID="([^"]*)"', "w_src": r" src=(\S*)", "w_sent": r" sent=(\S*)",
    "w_rcvd": r" rcvd=(\S*)", "w_agent": r' agent="([^"]*)"', "w_duration": r" duration=(\S*)",
}
CEF_RE = (
    r"^(?P<c_m>CEF:)\d+\|(?P<c_vendor>(?:[^|\\]|\\.)*)\|(?P<c_product>(?:[^|\\]|\\.)*)\|(?:[^|\\]|\\.)*\|"
    r"(?P<c_sig>(?:[^|\\]|\\.)*)\|(?P<c_name>(?:[^|\\]|\\.)*)\|(?:[^|\\]|\\.)*\|(?P<c_ext>.*)$"
)

_ENVELOPE_GROUPS = HEADER_GROUPS
_STANDARD_HEAD_GROUPS = ["ts", "node"]
_STANDARD_WHO_GROUPS = ["who", "realm", "roles", "sep"]
_WELF_HEAD_GROUPS = ["w_m", "ts", "fw", "node"]
_WELF_REALM_GROUPS = ["wr_m", "realm", "roles"]
_CEF_GROUPS = ["c_m", "c_vendor", "c_product", "c_sig", "c_name", "c_ext"]

for _pattern, _names in ((ENVELOPE, _ENVELOPE_GROUPS), (STANDARD_HEAD, _STANDARD_HEAD_GROUPS),
                         (STANDARD_WHO, _STANDARD_WHO_GROUPS), (WELF_HEAD, _WELF_HEAD_GROUPS),
                         (WELF_REALM, _WELF_REALM_GROUPS), (CEF_RE, _CEF_GROUPS)):
    _positional(_pattern, _names)  # regexp_extract names groups by position

_CEF_VENDOR = r"(?i)juniper|pulse|ivanti"
_CEF_PRODUCT = r"(?i).*(pulse|connect secure|secure access|policy secure|\bive\b|\bsa\b|ssl.?vpn).*"

SNIFF_PATTERNS = [
    re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d - \S+ - \[[^\]]*\] [^()\[\]]*\([^()]*\)\[[^\]]*\](?:\[[^\]]*\])? - "),
    re.compile(r'id=firewall time="[^"]*" pri=\d* fw=\S* vpn=\S* .*user=.* msg="'),
    re.compile(r"CEF:\d+\|(?:[^|]*(?:Juniper|Pulse|Ivanti)[^|]*)\|[^|]*(?:Pulse|Connect Secure|Secure Access|IVE|SSL)", re.I),
]

EXPECTED_LINE = (
    'expected a Pulse Secure line: standard "YYYY-MM-DD hh:mm:ss - NODE - [IP] USER(REALM)[ROLES] - MESSAGE", '
    'WELF "id=firewall time=\\"…\\" … msg=\\"…\\"" or CEF "CEF:0|Juniper|Pulse Secure …|…", '
    "optionally after a syslog header"
)


def _extract(pattern: str, names: list[str], subject: str = "body") -> str:
    listed = ", ".join(sql_string(n) for n in names)
    return f"regexp_extract({subject}, {sql_string(pattern)}, [{listed}])"


def _cef_value(key: str) -> str:
    return f"nullif(c_vals[list_position(c_keys, {sql_string(key)})], '')"


def _cef_labelled(label: str) -> str:
    """SQL: the value of the custom field csN whose csNLabel is `label` (case-insensitive)."""
    position = (f"list_filter(range(1, len(c_keys) + 1), lambda i: ends_with(c_keys[i], 'Label') "
                f"AND lower(c_vals[i]) = {sql_string(label.lower())})[1]")
    return f"nullif(c_vals[list_position(c_keys, replace(c_keys[{position}], 'Label', ''))], '')"


class PulseSecure:
    name = SOURCE_NAME
    data_model = AUTHENTICATION
    description = ("Juniper / Pulse Secure / Ivanti Connect Secure VPN: standard syslog, WELF and CEF "
                   "(mixed in one file is fine)")
    sample = ("<134>Mar  3 09:15:02 vpn01 PulseSecure: 2026-03-03 09:15:02 - ive - [203.0.113.5] "
              "Default Network::jdoe(Users)[Users, VPN] - Login succeeded for jdoe/Users (session:5f3a9c01) "
              "from 203.0.113.5 with Pulse-Secure/9.1.3 (Windows 10) Pulse/9.1.3.")

    def sniff(self, head: list[str]) -> bool:
        lines = [line for line in head if line.strip()][:20]
        return any(p.search(line) for line in lines for p in SNIFF_PATTERNS)

    def parse(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> ParsedBatch:
        tz = ctx.source_tz
        table = "pulse_secure_lines"
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {self._sql(ctx, tz)}")
        zoneless, yearless = con.execute(
            f"SELECT coalesce(bool_or(time_basis <> 'exact'), false), coalesce(bool_or(time_basis = 'yearless'), false) "
            f"FROM {table} WHERE outcome = 'parsed'").fetchone()
        return ParsedBatch(
            zoneless_times=zoneless, yearless_times=yearless,
            classified=f"(SELECT line_no, outcome, reason FROM {table})",
            events=f"""(
                SELECT _time, "user", src_ip, assigned_ip, dest, realm, roles, session_id, action, event_type,
                       duration, bytes_in, bytes_out, event_reason AS reason, user_agent,
                       {sql_string(self.name)} AS source, {raw_ref_sql(ctx)} AS raw_ref
                FROM {table} WHERE outcome = 'parsed')""",
        )

    def _sql(self, ctx: ParseContext, tz: str) -> str:
        kind_case = " ".join(f"WHEN {k.test} THEN {sql_string(k.name)}" for k in KINDS)
        # One CASE over the kinds: each branch extracts only its own groups (few groups extract
        # fast), cast to GROUPS_TYPE so that all branches have one type.
        detail_case, detail = groups_sql(KINDS)
        event_case = " ".join(f"WHEN {sql_string(k.name)} THEN {sql_string(k.event_type)}" for k in KINDS if k.event_type)
        reason_case = " ".join(f"WHEN {sql_string(k.name)} THEN {k.reason}" for k in KINDS if k.event_type)
        expected_case = " ".join(
            f"WHEN {sql_string(k.name)} THEN {sql_string(k.name + ' message not in the expected form: ' + k.expected)}"
            for k in KINDS if k.pattern
        )
        patterned = ", ".join(sql_string(k.name) for k in KINDS if k.pattern)
        action_case = " ".join(f"WHEN {sql_string(e)} THEN {sql_string(a)}" for e, a in EVENT_ACTION.items())
        body_time = local_time_sql("try_strptime(body_ts, '%Y-%m-%d %H:%M:%S')", tz)
        cef_local = local_time_sql(
            "try_strptime(c_rt, ['%b %d %Y %H:%M:%S', '%b %d %Y %H:%M:%S.%g'])", tz)
        headers = ", ".join(f"coalesce(h.{g}, h0.{g}, '') AS {g}" for g in HEADER_GROUPS)
        session_id = spaced_session_sql("coalesce(nullif(trim(std_session), ''), nullif(trim(w_session), ''), "
                                           "nullif(trim(d.m_session), ''), CASE WHEN contains(t, '(session:') THEN "
                                           "nullif(trim(regexp_extract(t, '\\(session:\\s*([^)]*)\\)', 1)), '') END)")
        welf_keys = ", ".join(
            f"CASE WHEN w_keys IS NOT NULL THEN regexp_extract(w_keys, {sql_string(pattern)}, 1) END AS {name}"
            for name, pattern in WELF_KEYS.items()
        )
        return f"""
        WITH cleaned AS (
            SELECT line_no,
                   CASE WHEN ends_with(line, '#015') THEN rtrim(substr(line, 1, length(line) - 4), ' ' || chr(13) || chr(9))
                        WHEN ends_with(line, ' ') OR ends_with(line, chr(13)) OR ends_with(line, chr(9))
                        THEN rtrim(line, ' ' || chr(13) || chr(9))
                        ELSE line END AS l
            FROM raw_lines
        ), located AS (
            -- the standard body: its first ` - [` is the one after the node; the timestamp and the node
            -- before it are read backwards from there (an end-anchored pattern: RE2 runs it in reverse)
            SELECT line_no, l,
                   CASE WHEN {blank_sql('l')} THEN NULL ELSE strpos(l, ' - [') END AS bracket
            FROM cleaned
        ), split AS (
            SELECT *,
                   CASE WHEN bracket > 22 AND sa.ts <> '' THEN bracket - 22 - length(sa.node) END AS std_at,
                   CASE WHEN bracket > 22 AND sa.ts <> '' THEN split_part(substr(l, bracket + 4), ']', 1) END AS std_src
            FROM (
                SELECT *, CASE WHEN bracket > 22 THEN {_extract(STANDARD_HEAD, _STANDARD_HEAD_GROUPS, 'left(l, bracket + 3)')} END AS sa
                FROM located
            )
        ), formed AS (
            SELECT *, CASE form WHEN 'standard' THEN std_at WHEN 'cef' THEN strpos(l, 'CEF:')
                                WHEN 'welf' THEN strpos(l, 'id=firewall ') END AS body_at
            FROM (
                SELECT *,
                       CASE WHEN bracket IS NULL THEN 'blank'
                            WHEN std_at > 0 AND NOT contains(left(l, std_at), 'CEF:')
                                 AND NOT contains(left(l, std_at), 'id=firewall ') THEN 'standard'
                            WHEN contains(left(l, 160), 'CEF:') THEN 'cef'
                            WHEN contains(left(l, 160), 'id=firewall ') THEN 'welf'
                            ELSE 'standard' END AS form
                FROM split
            )
        ), parts AS (
            SELECT line_no, form, l, sa, std_src, bracket, body_at, pre,
                   CASE WHEN body_at > 1 THEN {envelope_sql('pre')} END AS h0,
                   CASE WHEN form = 'standard' AND body_at > 0 THEN
                        CASE WHEN substr(l, bracket + 4 + length(std_src), 2) = '] '
                             THEN substr(l, bracket + 6 + length(std_src)) END END AS who_part,
                   CASE WHEN form <> 'standard' AND body_at > 0 THEN substr(l, body_at) END AS body
            FROM (SELECT *, CASE WHEN body_at > 1 THEN left(l, body_at - 1) END AS pre FROM formed)  -- the envelope's text, cut once
        ), extracted AS (
            SELECT *,
                   {relayed_envelope_sql('pre', 'h0')} AS h,
                   CASE WHEN who_part IS NOT NULL THEN {_extract(STANDARD_WHO, _STANDARD_WHO_GROUPS, 'who_part')} END AS sb,
                   CASE WHEN form = 'welf' THEN {_extract(WELF_HEAD, _WELF_HEAD_GROUPS)} END AS wa,
                   CASE WHEN form = 'welf' THEN strpos(body, ' user=') END AS w_user_at,
                   CASE WHEN form = 'welf' THEN strpos(body, ' msg="') END AS w_msg_at,
                   CASE WHEN form = 'cef' THEN {_extract(CEF_RE, _CEF_GROUPS)} END AS c
            FROM parts
        ), welf_split AS (
            SELECT *,
                   CASE WHEN w_msg_at > 0 THEN left(body, w_msg_at) END AS w_keys,
                   CASE WHEN w_msg_at > 0 THEN substr(body, w_msg_at + 6) END AS w_msg_q,
                   CASE WHEN w_user_at > 0 THEN substr(body, w_user_at + 6) END AS w_user_part
            FROM extracted
        ), welf AS (
            SELECT *,
                   CASE WHEN w_user_part IS NOT NULL AND strpos(w_user_part, ' realm="') > 0
                        THEN left(w_user_part, strpos(w_user_part, ' realm="') - 1) END AS w_who,
                   CASE WHEN w_user_part IS NOT NULL THEN {_extract(WELF_REALM, _WELF_REALM_GROUPS, 'w_user_part')} END AS wr,
                   CASE WHEN ends_with(w_msg_q, '"') THEN left(w_msg_q, length(w_msg_q) - 1) END AS w_msg,
                   {welf_keys}
            FROM welf_split
        ), cef_split AS (
            SELECT *, CASE WHEN form = 'cef' THEN
                          string_split(regexp_replace(c.c_ext, '\\s+([A-Za-z0-9_.]+)=', chr(1) || '\\1=', 'g'), chr(1))
                      END AS parts
            FROM welf
        ), cef_kv AS (
            SELECT *,
                   list_transform(parts, lambda p: split_part(p, '=', 1)) AS c_keys,
                   list_transform(parts, lambda p: replace(replace(substr(p, strpos(p, '=') + 1), '\\=', '='), '\\\\', '\\')) AS c_vals
            FROM cef_split
        ), unified AS (
            SELECT line_no, form, {headers},
                   CASE form WHEN 'standard' THEN coalesce(sb.sep <> '', false)
                             WHEN 'welf' THEN coalesce(wa.w_m <> '' AND w_msg IS NOT NULL AND w_who IS NOT NULL
                                                       AND wr.wr_m <> '', false)
                             WHEN 'cef' THEN c.c_m <> ''
                        ELSE true END AS ok,
                   CASE form WHEN 'standard' THEN sa.ts WHEN 'welf' THEN wa.ts END AS body_ts,
                   CASE WHEN form = 'cef' THEN {_cef_value('rt')} END AS c_rt,
                   CASE WHEN form = 'cef' THEN coalesce({_cef_value('dvchost')}, {_cef_value('dvc')})
                        WHEN form = 'standard' THEN sa.node ELSE wa.node END AS node,
                   CASE WHEN form = 'cef' THEN {_cef_value('src')} WHEN form = 'standard' THEN std_src ELSE w_src END AS src,
                   CASE WHEN form = 'cef' THEN coalesce({_cef_value('suser')}, {_cef_value('duser')})
                        ELSE coalesce(sb.who, w_who) END AS who,
                   CASE WHEN form = 'cef' THEN {_cef_labelled('realm')} ELSE coalesce(sb.realm, wr.realm) END AS realm,
                   CASE WHEN form = 'cef' THEN coalesce({_cef_value('spriv')}, {_cef_labelled('roles')})
                        ELSE coalesce(sb.roles, wr.roles) END AS roles,
                   CASE WHEN form = 'cef' THEN coalesce({_cef_value('msg')}, replace(c.c_name, '\\|', '|'))
                        WHEN form = 'standard' AND sb.sep <> ''
                        THEN substr(who_part, length(sb.who) + length(sb.realm) + length(sb.roles) + length(sb.sep) + 4)
                        ELSE w_msg END AS raw_msg,
                   CASE WHEN length(sb.sep) > 6 THEN substr(sb.sep, 3, length(sb.sep) - 6) END AS std_session,
                   w_session, w_sent, w_rcvd, w_agent, w_duration,
                   CASE WHEN form = 'cef' AND regexp_full_match(c.c_sig, '[A-Z]{{3}}[0-9]{{5}}') THEN c.c_sig END AS c_code,
                   CASE WHEN form = 'cef' THEN {_cef_value('requestClientApplication')} END AS c_agent,
                   CASE WHEN form = 'cef' THEN coalesce({_cef_value('dvchost')}, {_cef_value('dvc')}) END AS c_dest,
                   CASE WHEN form = 'cef' THEN c.c_vendor || '|' || c.c_product END AS d_vendor,
                   CASE WHEN form = 'cef' AND c.c_m <> '' THEN regexp_matches(c.c_vendor, {sql_string(_CEF_VENDOR)})
                        AND regexp_full_match(c.c_product, {sql_string(_CEF_PRODUCT)}) ELSE true END AS vendor_ok
            FROM cef_kv
        ), coded AS (
            SELECT *,
                   CASE WHEN c_code IS NOT NULL THEN c_code WHEN msg_coded THEN substr(raw_msg, 1, 8) END AS code,
                   CASE WHEN msg_coded THEN substr(raw_msg, 11) ELSE raw_msg END AS t,
                   CASE WHEN contains(who, '::') THEN substr(who, strpos(who, '::') + 2) ELSE who END AS who_user
            FROM (
                -- the message's own event code (`AUT24326: `), tested once per line; a CASE, as an
                -- AND in a select list runs its regex on every line
                SELECT *, CASE WHEN substr(raw_msg, 9, 2) = ': '
                               THEN regexp_full_match(substr(raw_msg, 1, 8), '[A-Z]{{3}}[0-9]{{5}}') ELSE false END AS msg_coded
                FROM unified
            )
        ), kinded AS (
            SELECT *, CASE WHEN form = 'blank' OR NOT ok OR NOT vendor_ok THEN NULL {kind_case}
                           -- the appliance's own messages (`System()[]`: signatures, integrity scans, …);
                           -- with an event code, the code says more
                           WHEN code IS NULL AND who_user = 'System' AND coalesce(realm, '') = '' THEN 'system message'
                           ELSE 'other message' || coalesce(' (' || code || ')', '') END AS kind
            FROM coded
        ), detailed AS (
            SELECT * EXCLUDE (d0), {detail} AS d FROM (SELECT *, {detail_case} AS d0 FROM kinded)
        ), typed AS (
            SELECT *,
                   CASE kind {event_case} END AS event_type,
                   {header_time_is_exact_sql('')} AS exact_header,
                   CASE WHEN regexp_full_match(c_rt, '[0-9]{{1,15}}') THEN
                        {epoch_sql('(CAST(c_rt AS DOUBLE) / CASE WHEN length(c_rt) > 11 THEN 1000.0 ELSE 1.0 END)')} END AS cef_epoch,
                   CASE WHEN body_ts <> '' THEN {body_time} END AS body_time,
                   CASE WHEN c_rt IS NOT NULL AND NOT regexp_full_match(c_rt, '[0-9]{{1,15}}') THEN {cef_local} END AS cef_local,
                   -- the line's own session field (22.x bracket, WELF sessionID) names the session on
                   -- all its lines; the message's `(session:sid…)` is another name for it
                   {session_id} AS session_spaced
            FROM detailed
        ), valued AS (
            SELECT *,
                   {normalised_session_sql('session_spaced')} AS session_id_v,
                   -- coalesce is lazy: the header's local time is only converted for lines without another time
                   coalesce(CASE WHEN exact_header THEN TRY_CAST(hdr_iso AS TIMESTAMPTZ) END, cef_epoch, body_time,
                            cef_local, {header_time_sql('', tz, ctx.year, ctx.reference_time)}) AS _time,
                   -- which of those times needed --source-tz (and --year): the same order as above
                   CASE WHEN exact_header OR cef_epoch IS NOT NULL THEN 'exact'
                        WHEN body_time IS NOT NULL OR cef_local IS NOT NULL OR hdr_iso <> '' THEN 'zoneless'
                        WHEN hdr_bsd <> '' THEN 'yearless' END AS time_basis,
                   CASE WHEN kind = 'account deleted' THEN nullif(d.m_user, '')
                        ELSE coalesce(nullif(who_user, ''), nullif(d.m_user, '')) END AS "user",
                   coalesce(nullif(src, ''), nullif(rtrim(d.m_ip, '.'), '')) AS src_ip,
                   nullif(d.m_assigned, '') AS assigned_ip,
                   CASE WHEN form = 'cef' THEN coalesce(c_dest, nullif(hdr_host, ''))
                        ELSE coalesce(nullif(hdr_host, ''), nullif(node, '')) END AS dest,
                   CASE WHEN kind = 'account deleted' THEN NULL
                        ELSE coalesce(nullif(realm, ''), nullif(d.m_realm, '')) END AS realm_v,
                   CASE WHEN kind = 'account deleted' THEN NULL ELSE nullif(roles, '') END AS roles_v,
                   coalesce(nullif(d.m_duration, ''), nullif(w_duration, '')) AS duration_t,
                   coalesce(nullif(d.m_read, ''), nullif(w_sent, '')) AS bytes_out_t,
                   coalesce(nullif(d.m_written, ''), nullif(w_rcvd, '')) AS bytes_in_t,
                   coalesce(nullif(CASE WHEN ends_with(d.m_agent, '.') THEN left(d.m_agent, length(d.m_agent) - 1)
                                        ELSE d.m_agent END, ''), nullif(w_agent, ''), c_agent) AS user_agent_v,
                   CASE kind {reason_case} END AS event_reason
            FROM typed
        )
        SELECT line_no, _time, time_basis, "user", src_ip, assigned_ip, dest, realm_v AS realm, roles_v AS roles,
               session_id_v AS session_id, CASE event_type {action_case} END AS action, event_type,
               TRY_CAST(duration_t AS DOUBLE) AS duration, TRY_CAST(bytes_in_t AS BIGINT) AS bytes_in,
               TRY_CAST(bytes_out_t AS BIGINT) AS bytes_out, event_reason, user_agent_v AS user_agent,
               CASE WHEN reason IS NULL THEN 'parsed'
                    WHEN form = 'blank' OR (event_type IS NULL AND reason = kind) THEN 'skipped'
                    ELSE 'quarantined' END AS outcome,
               reason
        FROM (
            SELECT *,
                CASE WHEN form = 'blank' THEN 'blank line'
                     WHEN NOT ok AND form = 'welf' THEN
                        'WELF line not in the expected form (truncated?): id=firewall time="…" pri=N fw=… vpn=… '
                        || 'user=… realm="…" roles="…" … msg="…"'
                     WHEN NOT ok AND form = 'cef' THEN
                        'CEF line not in the expected form (truncated?): CEF:0|VENDOR|PRODUCT|VERSION|CODE|NAME|SEVERITY|EXTENSIONS'
                     WHEN NOT ok THEN {sql_string(EXPECTED_LINE)}
                     WHEN NOT vendor_ok THEN 'CEF line from another product (' || d_vendor || '); expected Juniper, Pulse Secure or Ivanti'
                     WHEN event_type IS NULL THEN kind
                     WHEN kind IN ({patterned}) AND d.m_ok = '' THEN CASE kind {expected_case} END
                     WHEN body_ts <> '' AND body_time IS NULL THEN 'bad timestamp: ' || body_ts || ' (expected YYYY-MM-DD hh:mm:ss)'
                     WHEN _time IS NULL AND hdr_bsd <> '' THEN 'syslog timestamp without a year and no other date on the line: pass --year'
                     WHEN _time IS NULL THEN 'no usable timestamp' || coalesce(': ' || c_rt, '')
                     WHEN src_ip IS NOT NULL AND NOT regexp_full_match(src_ip, {sql_string(_IP)}) THEN 'bad client address: ' || src_ip
                     WHEN duration_t IS NOT NULL AND TRY_CAST(duration_t AS DOUBLE) IS NULL THEN 'bad duration: ' || duration_t
                     WHEN bytes_out_t IS NOT NULL AND (TRY_CAST(bytes_out_t AS BIGINT) IS NULL OR TRY_CAST(bytes_out_t AS BIGINT) < 0) THEN 'bad byte count: ' || bytes_out_t
                     WHEN bytes_in_t IS NOT NULL AND (TRY_CAST(bytes_in_t AS BIGINT) IS NULL OR TRY_CAST(bytes_in_t AS BIGINT) < 0) THEN 'bad byte count: ' || bytes_in_t
                     END AS reason
            FROM valued
        )
        """
