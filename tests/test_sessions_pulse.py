"""VPN sessions from Pulse Secure / Ivanti Connect Secure syslog as the appliance writes it: the
login (`session:sid…`), the tunnel (`VPN Tunneling: Session started … (session: sid…)`), the
connection and the tunnel's end under one id are one session from the login to its logout (or
timeout, or the tunnel's end when no logout comes), and the session that the seed scores at
`vpn-logout` is the one that holds the mail."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
from hypothesis import HealthCheck, example, given, settings as hsettings, strategies as st

from exfilwatch.config import parse_settings
from exfilwatch.events.engine import connect
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.events.lake import parquet_source
from exfilwatch.features.sessions import build_user_sessions, compute_sessions
from exfilwatch.home import open_state
from exfilwatch.models import EMAIL, NETWORK_TRAFFIC, USER_SESSIONS
from exfilwatch.sources.base import ParseContext
from exfilwatch.sources.pulse_secure import PulseSecure
from exfilwatch.synth.writers import postfix

from .sessionkit import load_table, mail

UTC = timezone.utc
DAY = datetime(2026, 10, 5, tzinfo=UTC)
CONFIG = {"timezone": "UTC", "internal_domains": ["corp.example"]}
LAPTOP, PHONE = "203.0.113.5", "198.51.100.23"
AGENT = "Pulse-Secure/9.1.13.15339 (Windows 10) Pulse/9.1.13.15339"


def pulse(t: datetime, client: str, user: str, message: str) -> str:
    """One line as Pulse Connect Secure 9.1 sends it through rsyslog (the standard format)."""
    return (f"{t:%Y-%m-%dT%H:%M:%S}+00:00 vpn01 PulseSecure: {t:%Y-%m-%d %H:%M:%S} - ive - [{client}] "
            f"Default Network::{user}(Users)[Users, VPN] - {message}")


def login(t, client, user, sid):
    return pulse(t, client, user, f"Login succeeded for {user}/Users (session:sid{sid}) from {client} with {AGENT}.")


def tunnel_started(t, client, user, sid, tunnel):
    return pulse(t, client, user, f"VPN Tunneling: Session started for user  (session: sid{sid}) with IPv4 address "
                                  f"{tunnel}, hostname LAPTOP-{user.upper()}")


def tunnel_without_id(t, client, user, tunnel):
    return pulse(t, client, user, f"VPN Tunneling: Session started for user with IPv4 address {tunnel}, "
                                  f"hostname LAPTOP-{user.upper()}")


def closed(t, client, user, seconds=3600):
    return pulse(t, client, user, f"Closed connection to TUN-VPN port 443 after {seconds} seconds, with 5242880 "
                                  f"bytes read (in 3745 chunks) and 73400320 bytes written (in 52429 chunks)")


def tunnel_ended(t, client, user, sid, tunnel):
    return pulse(t, client, user, f"VPN Tunneling: Session ended for user  (session: sid{sid}) with IPv4 address {tunnel}")


def logout(t, client, user, sid):
    return pulse(t, client, user, f"Logout from {client} (session:sid{sid})")


def timed_out(t, client, user, sid):
    return pulse(t, client, user, f"Session timed out for {user}/Users (session:sid{sid}) due to inactivity "
                                  f"(last access at {t - timedelta(hours=1):%H:%M:%S %Y/%m/%d}). "
                                  "Idle session identified during routine system scan.")


def at(hours: float) -> datetime:
    return DAY + timedelta(hours=hours)


def maillog(sends: list[tuple[datetime, str, str, int]]) -> list[str]:
    """Postfix lines (RFC 3339 stamps) for messages (time, sender, recipient, size)."""
    entries = []
    for n, (t, sender, rcpt, size) in enumerate(sends):
        qid = f"4F{n:07X}"
        entries += [
            postfix.Entry(t, "postfix/cleanup", 11, postfix.cleanup(qid, f"<m{n}@corp.example>"), "mx1", "rfc3339"),
            postfix.Entry(t, "postfix/qmgr", 12, postfix.queued(qid, sender, size, 1), "mx1", "rfc3339"),
            postfix.Entry(t + timedelta(seconds=1), "postfix/smtp", 13,
                          postfix.delivery(qid, rcpt, "mx.partner.example", "192.0.2.25", 25, 1,
                                           (0, 0, 0.5, 0.5), "250 ok"), "mx1", "rfc3339"),
            postfix.Entry(t + timedelta(seconds=2), "postfix/qmgr", 12, postfix.removed(qid), "mx1", "rfc3339"),
        ]
    return postfix.lines(entries)


def stored_sessions(home, tmp_path: Path, vpn: list[str], mails: list[str], now: datetime) -> list[dict]:
    (tmp_path / "vpn.log").write_text("\n".join(vpn) + "\n", encoding="utf-8")
    paths = [tmp_path / "vpn.log"]
    if mails:
        (tmp_path / "maillog").write_text("\n".join(mails) + "\n", encoding="utf-8")
        paths.append(tmp_path / "maillog")
    settings = parse_settings(CONFIG, "test")
    reports = ingest_paths(paths, home, settings)
    assert all(r.quarantined == 0 for r in reports)
    state = open_state(home)
    con = connect(settings, home.spill_dir)
    build_user_sessions(con, state, settings, now)
    sql = parquet_source(USER_SESSIONS, state.lake_files("user_sessions"))
    cur = duckdb.sql(f"SELECT * FROM ({sql}) WHERE session_kind = 'vpn' ORDER BY user, session_start")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def test_login_tunnel_and_logout_under_one_id_are_one_session_holding_the_mail(home, tmp_path):
    u = "jdoe"
    vpn = [
        login(at(9), LAPTOP, u, "5f3a9c01"),
        tunnel_started(at(9) + timedelta(seconds=4), LAPTOP, u, "5f3a9c01", "10.200.1.17"),
        closed(at(17), LAPTOP, u),
        tunnel_ended(at(17) + timedelta(seconds=1), LAPTOP, u, "5f3a9c01", "10.200.1.17"),
        logout(at(17) + timedelta(seconds=2), LAPTOP, u, "5f3a9c01"),
    ]
    sends = [(at(10), "jdoe@corp.example", "anna@partner.example", 2_000_000),
             (at(15), "jdoe@corp.example", "jdoe.home@gmail.com", 30_000_000)]
    [s] = stored_sessions(home, tmp_path, vpn, maillog(sends), at(30))
    assert (s["session_start"], s["session_end"], s["end_reason"]) == (at(9), at(17) + timedelta(seconds=2), "logout")
    assert (s["vpn_session_id"], s["assigned_ip"], s["src_ip"]) == ("5f3a9c01", "10.200.1.17", LAPTOP)
    assert s["boundary_source"].endswith("vpn.log:5")  # the logout line ends it
    assert (s["em_fnum"], s["em_bsum"], s["em_bsum_personal"]) == (2, 32_000_000, 30_000_000)


def test_two_devices_stay_apart_by_id_and_a_tunnel_ends_a_session_without_logout(home, tmp_path):
    u = "jdoe"
    vpn = [
        login(at(9), LAPTOP, u, "5f3a9c01"),
        tunnel_started(at(9) + timedelta(seconds=4), LAPTOP, u, "5f3a9c01", "10.200.1.17"),
        login(at(12), PHONE, u, "77aa0b02"),
        tunnel_started(at(12) + timedelta(seconds=3), PHONE, u, "77aa0b02", "10.200.1.40"),
        tunnel_ended(at(13), PHONE, u, "77aa0b02", "10.200.1.40"),  # no logout from the phone
        timed_out(at(18), LAPTOP, u, "5f3a9c01"),
    ]
    sends = [(at(11), "jdoe@corp.example", "anna@partner.example", 1000),
             (at(14), "jdoe@corp.example", "bob@partner.example", 3000)]
    laptop, phone = stored_sessions(home, tmp_path, vpn, maillog(sends), at(40))
    assert (laptop["vpn_session_id"], laptop["assigned_ip"]) == ("5f3a9c01", "10.200.1.17")
    assert (laptop["session_start"], laptop["session_end"], laptop["end_reason"]) == (at(9), at(18), "timeout")
    assert (phone["vpn_session_id"], phone["assigned_ip"]) == ("77aa0b02", "10.200.1.40")
    assert (phone["session_start"], phone["session_end"], phone["end_reason"]) == (at(12), at(13), "tunnel-ended")
    assert (laptop["em_fnum"], laptop["em_bsum"], phone["em_fnum"]) == (2, 4000, 0)


def test_lines_without_id_join_the_open_session_from_their_own_address(home, tmp_path):
    u = "jdoe"
    vpn = [
        login(at(9), LAPTOP, u, "5f3a9c01"),
        login(at(9.5), PHONE, u, "77aa0b02"),
        tunnel_without_id(at(9.6), LAPTOP, u, "10.200.1.17"),  # 9.x writes no id on the tunnel
        closed(at(11), LAPTOP, u),  # the laptop's connection closes; the phone stays
        logout(at(12), PHONE, u, "77aa0b02"),
    ]
    laptop, phone = stored_sessions(home, tmp_path, vpn, [], at(40))
    assert (laptop["assigned_ip"], laptop["session_end"], laptop["end_reason"]) == ("10.200.1.17", at(11),
                                                                                   "connection-closed")
    assert (phone["assigned_ip"], phone["session_end"], phone["end_reason"]) == (None, at(12), "logout")


# --- any interleaving of two devices' sessions ---------------------------------------------------------------


def parsed_sessions(lines: list[str], mails: list[dict], now: datetime) -> list[dict]:
    """The VPN sessions of `lines` (parsed by the Pulse source) and `mails`, computed in memory."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE TEMP TABLE raw_lines AS SELECT unnest(range(1, len($l) + 1)) AS line_no, unnest($l) AS line",
                {"l": lines})
    settings = parse_settings(CONFIG, "test")
    batch = PulseSecure().parse(con, ParseContext(origin="vpn.log", header_lines=lines[:64], settings=settings,
                                                  source_tz="UTC", year=2026))
    con.execute(f"CREATE TABLE t_auth AS SELECT * FROM {batch.events}")
    load_table(con, "t_mail", EMAIL, mails)
    load_table(con, "t_flows", NETWORK_TRAFFIC, [])
    compute_sessions(con, settings, now, DAY - timedelta(days=1), DAY - timedelta(days=8), auth="t_auth",
                     email="t_mail", flows="t_flows")
    cur = con.execute("SELECT * FROM _ses_result WHERE session_kind = 'vpn' ORDER BY session_start")
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, row)) for row in cur.fetchall()]
    con.close()
    return rows


DEVICE = st.fixed_dictionaries({
    "start": st.integers(0, 600),  # minutes after 08:00
    "tunnel_after": st.integers(0, 5),  # seconds: at the login's instant or just after
    "length": st.integers(30, 480),  # minutes until the tunnel ends
    "tunnel_end": st.booleans(),
    "closed": st.booleans(),
    "end": st.sampled_from(["logout", "timeout", None]),
    "end_after": st.integers(0, 120),  # seconds after the tunnel's end
})


_QUIET_LAPTOP = {"start": 0, "tunnel_after": 0, "length": 30, "tunnel_end": False, "closed": False, "end": None,
                 "end_after": 0}
_PHONE_CLOSED_THEN_LOGOUT = {**_QUIET_LAPTOP, "closed": True, "end": "logout"}


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(devices=st.lists(DEVICE, min_size=1, max_size=2), order=st.randoms(use_true_random=False))
# the phone's `Closed connection` (no id) belongs to the phone's session, which has its own logout:
# it must not end the laptop's session
@example(devices=[_QUIET_LAPTOP, _PHONE_CLOSED_THEN_LOGOUT], order=random.Random(1))
def test_any_interleaving_gives_one_session_per_login_holding_its_mail(devices, order):
    base = at(8)
    lines, mails, expected = [], [], []
    for i, d in enumerate(devices):
        client, sid, tunnel = (LAPTOP, PHONE)[i], ("5f3a9c01", "77aa0b02")[i], ("10.200.1.17", "10.200.1.40")[i]
        start = base + timedelta(minutes=d["start"], seconds=i)
        tunnel_start = start + timedelta(seconds=d["tunnel_after"])
        tunnel_stop = start + timedelta(minutes=d["length"])
        lines += [login(start, client, "jdoe", sid), tunnel_started(tunnel_start, client, "jdoe", sid, tunnel)]
        if d["closed"]:
            lines.append(closed(tunnel_stop, client, "jdoe"))
        if d["tunnel_end"]:
            lines.append(tunnel_ended(tunnel_stop, client, "jdoe", sid, tunnel))
        final = tunnel_stop + timedelta(seconds=1 + d["end_after"])
        if d["end"] == "logout":
            lines.append(logout(final, client, "jdoe", sid))
            end = (final, "logout")
        elif d["end"] == "timeout":
            lines.append(timed_out(final, client, "jdoe", sid))
            end = (final, "timeout")
        elif d["tunnel_end"]:
            end = (tunnel_stop, "tunnel-ended")
        elif d["closed"]:
            end = (tunnel_stop, "connection-closed")
        else:
            end = (tunnel_start + timedelta(hours=12), "idle-limit")
        expected.append((start, end[0], end[1], sid, tunnel))
        # mail in the session, before another device's login could take it
        mails.append(mail(start + timedelta(seconds=10), "jdoe@corp.example", ["anna@partner.example"], 1000 * (i + 1)))
    order.shuffle(lines)  # the file's line order does not matter, only the times
    rows = parsed_sessions(lines, mails, at(48))
    got = sorted((r["session_start"], r["session_end"], r["end_reason"], r["vpn_session_id"], r["assigned_ip"])
                 for r in rows)
    assert got == sorted(expected)
    # each message is in the latest-started session holding its time (two devices may overlap)
    held = {sid: 0 for *_, sid, _ in expected}
    for m in mails:
        holding = [e for e in expected if e[0] <= m["_time"] < e[1]]
        held[max(holding)[3]] += m["size"]
    assert {r["vpn_session_id"]: r["em_bsum"] for r in rows} == held
