"""Pulse Secure / Ivanti Connect Secure VPN logs → authentication: exact events per form, quarantine, detection, fuzz."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pytest
from hypothesis import HealthCheck, assume, given, settings as hsettings, strategies as st

from exfilwatch.config import Home
from exfilwatch.events.files import read_head
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.sources import SOURCES, detect_source
from exfilwatch.sources.base import ParseContext
from exfilwatch.sources.pulse_secure import KINDS, PulseSecure, groups_sql, kind_groups_sql
from exfilwatch.synth.writers import pulse_secure as writer
from exfilwatch.home import open_state

from .conftest import Flow, settings_for, write_conn_log

FIXTURES = Path(__file__).parent / "fixtures" / "pulse_secure"
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
SETTINGS = settings_for()
TZ = "Europe/Berlin"  # the fixtures' appliance zone: 09:00 local = 08:00 UTC in March

COLUMNS = ["_time", "user", "src_ip", "assigned_ip", "dest", "realm", "roles", "session_id", "action", "event_type",
           "duration", "bytes_in", "bytes_out", "reason", "user_agent"]
AGENT = "Pulse-Secure/9.1.3.1667 (Windows 10) Pulse/9.1.3.1667"


def ingest(home: Home, path: Path, **kwargs):
    [report] = ingest_paths([path], home, SETTINGS, source_tz=kwargs.pop("source_tz", TZ),
                            year=kwargs.pop("year", 2026), **kwargs)
    assert report.lines == report.parsed + report.quarantined + sum(report.skipped.values())
    return report


def events(home: Home) -> dict[int, tuple]:
    """The lake's authentication rows by line number, times as UTC text."""
    state = open_state(home)
    files = state.lake_files("authentication")
    state.close()
    if not files:
        return {}
    select = ", ".join(
        "strftime(timezone('UTC', _time), '%Y-%m-%d %H:%M:%S')" if c == "_time" else f'"{c}"' for c in COLUMNS
    )
    rows = duckdb.sql(f"SELECT CAST(split_part(raw_ref, ':', -1) AS INTEGER), source, {select} "
                      f"FROM read_parquet({files!r})").fetchall()
    assert {row[1] for row in rows} == {"pulse_secure"}
    return {row[0]: tuple(row[2:]) for row in rows}


def quarantine(home: Home) -> dict[int, str]:
    state = open_state(home)
    rows = state.query("SELECT file, line_no, reason FROM quarantine ORDER BY line_no")
    state.close()
    return {row["line_no"]: (row["file"], row["reason"]) for row in rows}


def ev(time, user, src, event_type, reason=None, *, assigned=None, dest="vpn01", realm="Users", roles=None,
       session=None, duration=None, bytes_in=None, bytes_out=None, agent=None):
    action = "failure" if event_type in ("failed-vpn-login", "authentication-failed") else "success"
    return (time, user, src, assigned, dest, realm, roles, session, action, event_type, duration, bytes_in,
            bytes_out, reason, agent)


STANDARD_EVENTS = {
    1: ev("2026-03-03 08:00:01", "jdoe", "203.0.113.5", "authentication-successful",
          "primary authentication (auth server ACME-AD)"),
    2: ev("2026-03-03 08:00:02", "jdoe", "203.0.113.5", "vpn-login", roles="Users, VPN", session="5f3a9c01",
          agent=AGENT),
    3: ev("2026-03-03 08:00:05", "jdoe", "203.0.113.5", "vpn-login", "tunnel session started",
          assigned="10.200.1.17", roles="Users, VPN"),
    4: ev("2026-03-03 08:05:11", "asmith", "198.51.100.23", "vpn-login", "agent login", roles="Users",
          session="8d1e4b22", agent=AGENT),
    5: ev("2026-03-03 08:07:30", "mallory", "192.0.2.99", "failed-vpn-login",
          "primary authentication failed (auth server ACME-AD)"),
    6: ev("2026-03-03 08:07:30", "mallory", "192.0.2.99", "failed-vpn-login", "Failed"),
    7: ev("2026-03-03 08:08:00", "mallory", "192.0.2.99", "authentication-failed", "source ip realm restrictions failed"),
    8: ev("2026-03-03 08:09:00", "bwayne", "198.51.100.40", "authentication-failed",
          "secondary authentication failed (auth server ACME-RADIUS)"),
    9: ev("2026-03-03 08:09:30", "ckent", "198.51.100.41", "authentication-failed", "host checker policy AV-Check failed"),
    10: ev("2026-03-03 08:10:00", "jdoe", "203.0.113.5", "web-activity-allowed",
           "web request completed, GET to https://intranet.example.com:443//hr/index.html from 203.0.113.5 "
           "result=200 sent=512 received=20480 in 0 seconds", roles="Users, VPN"),
    # bytes read by the appliance = sent by the user = bytes_out
    11: ev("2026-03-03 09:30:00", "jdoe", "203.0.113.5", "vpn-logout", "connection to TUN-VPN port 443 closed",
           roles="Users, VPN", duration=5395.0, bytes_in=1834552, bytes_out=48211234),
    12: ev("2026-03-03 09:30:00", "jdoe", "203.0.113.5", "vpn-logout", "tunnel session ended", assigned="10.200.1.17",
           roles="Users, VPN"),
    13: ev("2026-03-03 09:30:01", "jdoe", "203.0.113.5", "vpn-logout", "logout", roles="Users, VPN", session="5f3a9c01"),
    14: ev("2026-03-03 10:20:00", "asmith", "198.51.100.23", "vpn-logout", "session timed out due to inactivity",
           roles="Users", session="8d1e4b22"),
    15: ev("2026-03-03 10:21:00", "dprince", "198.51.100.60", "vpn-logout", "maximum session length reached",
           roles="Users", session="1a2b3c4d"),
    16: ev("2026-03-03 10:22:00", "pparker", "198.51.100.61", "vpn-logout",
           "logged out because the user started a new session", roles="Users", session="77aa88bb"),
    17: ev("2026-03-03 10:23:00", "bbanner", "198.51.100.70", "vpn-logout", "session terminated", roles="Users"),
    18: ev("2026-03-03 10:30:00", "pcsadmin", "192.0.2.10", "authentication-successful",
           "admin login via management port", realm="Admin Users", roles=".Administrators"),
    # CIM: the deleted account is the user; the administrator is named in the reason
    19: ev("2026-03-03 10:31:00", "olduser", "192.0.2.10", "account-deleted",
           "removed by pcsadmin from authentication server System Local", realm=None),
    # ISO header with an offset: exact, wins over the body's local time
    24: ev("2026-03-03 10:45:00", "kwong", "203.0.113.9", "vpn-logout", "logout", roles="Users", session="0c0c0c0c"),
    # no syslog header (copied from the admin UI): body time in --source-tz, the node name as dest
    25: ev("2026-03-03 10:50:00", "lfox", "203.0.113.77", "vpn-logout", "logout", dest="ive", roles="Users",
           session="0d0d0d0d"),
}


def test_standard_syslog_every_event_kind_exactly(tmp_path, home):
    path = FIXTURES / "standard.log"
    report = ingest(home, path)
    assert report.source == "pulse_secure"
    assert events(home) == STANDARD_EVENTS
    assert report.skipped == {"admin logout": 1, "concurrent user limit": 1, "tunnel ACL count": 1,
                              "other message": 1, "blank line": 1}
    assert quarantine(home) == {
        27: (str(path), 'expected a Pulse Secure line: standard "YYYY-MM-DD hh:mm:ss - NODE - [IP] USER(REALM)[ROLES] - '
                        'MESSAGE", WELF "id=firewall time=\\"…\\" … msg=\\"…\\"" or CEF "CEF:0|Juniper|Pulse Secure …|…", '
                        "optionally after a syslog header"),
        28: (str(path), "vpn login message not in the expected form: "
                        "Login succeeded for USER/REALM (session:ID) from IP with AGENT."),
        29: (str(path), "bad timestamp: 2026-13-03 09:00:00 (expected YYYY-MM-DD hh:mm:ss)"),
        30: (str(path), "bad byte count: 99999999999999999999999"),
        31: (str(path), "bad client address: vpn gateway"),
    }
    again = ingest(home, path)
    assert again.lines == 0 and len(events(home)) == len(STANDARD_EVENTS)


WELF_EVENTS = {
    1: ev("2026-03-03 08:00:01", "jdoe", "203.0.113.5", "authentication-successful",
          "primary authentication (auth server ACME-AD)"),
    2: ev("2026-03-03 08:00:02", "jdoe", "203.0.113.5", "vpn-login", roles="Users, VPN", session="5f3a9c01",
          agent=AGENT),
    # 22.x: the session id in the tunnel message (and in sessionID=), the agent from agent=
    3: ev("2026-03-03 08:00:05", "jdoe", "203.0.113.5", "vpn-login", "tunnel session started", assigned="10.200.1.17",
          roles="Users, VPN", session="5f3a9c01", agent=AGENT),
    4: ev("2026-03-03 08:05:11", "asmith@example.com", "198.51.100.23", "vpn-login", "agent login", roles="Users",
          session="8d1e4b22", agent="Pulse-Secure/22.7.1.1234 (Windows 10) Pulse/22.7.1.1234"),
    5: ev("2026-03-03 08:07:30", "mallory", "192.0.2.99", "failed-vpn-login",
          "primary authentication failed (auth server ACME-AD)"),
    6: ev("2026-03-03 08:07:30", "mallory", "192.0.2.99", "failed-vpn-login", "Failed"),
    7: ev("2026-03-03 09:30:01", "jdoe", "203.0.113.5", "vpn-logout", "logout", roles="Users, VPN", session="5f3a9c01"),
    8: ev("2026-03-03 10:20:00", "asmith@example.com", "198.51.100.23", "vpn-logout",
          "session timed out due to inactivity", roles="Users", session="8d1e4b22"),
    9: ev("2026-03-03 10:31:00", "olduser", None, "account-deleted",
          "removed by pcsadmin from authentication server System Local", realm=None),
    13: ev("2026-03-03 10:50:00", "lfox", "203.0.113.77", "vpn-logout", "logout", dest="ive", roles="Users",
           session="0d0d0d0d"),
}


def test_welf_every_event_kind_exactly(home):
    path = FIXTURES / "welf.log"
    report = ingest(home, path)
    assert report.source == "pulse_secure"
    assert events(home) == WELF_EVENTS
    assert report.skipped == {"concurrent user limit": 1, "unauthenticated request": 1,
                              "other message (SYS31437)": 1}
    assert quarantine(home) == {
        14: (str(path), 'WELF line not in the expected form (truncated?): id=firewall time="…" pri=N fw=… vpn=… '
                        'user=… realm="…" roles="…" … msg="…"'),
        15: (str(path), "bad timestamp: 2026-02-30 10:00:00 (expected YYYY-MM-DD hh:mm:ss)"),
    }


CEF_EVENTS = {
    1: ev("2026-03-03 08:00:02", "jdoe", "203.0.113.5", "vpn-login", dest="vpn01.example.com", roles="Users, VPN",
          session="5f3a9c01", agent=AGENT),
    2: ev("2026-03-03 08:00:05", "jdoe", "203.0.113.5", "vpn-login", "tunnel session started", assigned="10.200.1.17",
          dest="vpn01.example.com", session="5f3a9c01"),
    3: ev("2026-03-03 08:07:30", "mallory", "192.0.2.99", "failed-vpn-login", "Failed", dest="vpn01.example.com"),
    # the message in the CEF name field, rt as local text
    4: ev("2026-03-03 09:30:01", "jdoe", "203.0.113.5", "vpn-logout", "logout", dest="10.0.0.9", realm=None,
          roles="Users", session="5f3a9c01"),
}


def test_cef_juniper_pulse_and_ivanti_vendors(home):
    path = FIXTURES / "cef.log"
    report = ingest(home, path)
    assert report.source == "pulse_secure"
    assert events(home) == CEF_EVENTS
    assert report.skipped == {"concurrent user limit": 1}
    assert quarantine(home) == {
        6: (str(path), "CEF line from another product (Fortinet|Fortigate); expected Juniper, Pulse Secure or Ivanti"),
        7: (str(path), "CEF line not in the expected form (truncated?): "
                       "CEF:0|VENDOR|PRODUCT|VERSION|CODE|NAME|SEVERITY|EXTENSIONS"),
    }


def test_forms_mixed_in_one_file_and_gzip(tmp_path, home):
    import gzip

    lines = [
        (FIXTURES / "standard.log").read_text().splitlines()[1],
        (FIXTURES / "welf.log").read_text().splitlines()[6],
        (FIXTURES / "cef.log").read_text().splitlines()[2],
    ]
    path = tmp_path / "mixed.log.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    report = ingest(home, path)
    assert (report.source, report.events, report.quarantined) == ("pulse_secure", 3, 0)
    assert sorted(e[9] for e in events(home).values()) == ["failed-vpn-login", "vpn-login", "vpn-logout"]


def test_bsd_header_year_and_zone(tmp_path, home):
    path = tmp_path / "cef.log"
    # CEF without rt: only the BSD syslog header dates the line
    path.write_text("<134>Dec 31 23:30:00 vpn01 CEF:0|Pulse Secure|Pulse Connect Secure|9.1R13|AUT22673|Logout|3|"
                    "src=203.0.113.5 suser=jdoe msg=Logout from 203.0.113.5 (session:5f3a9c01)\n")
    ingest(home, path, year=2025, source_tz="America/New_York")
    [row] = events(home).values()
    assert row[0] == "2026-01-01 04:30:00" and row[1] == "jdoe"


AGENT_22 = "Pulse-Secure/22.7.1.1234 (Windows 10) Pulse/22.7.1.1234"
ICS22_EVENTS = {
    # a relay's BSD header before the appliance's RFC 5424 one: the inner header's time (with its
    # zone) and host; auth server names with spaces and slashes
    1: ev("2026-03-03 08:00:01", "jdoe", "203.0.113.5", "authentication-successful",
          "primary authentication (auth server Corp AD (LDAP/EU))", dest="10.0.0.9"),
    2: ev("2026-03-03 08:00:02", "jdoe", "203.0.113.5", "authentication-successful",
          "secondary authentication (auth server TOTP Server)", dest="10.0.0.9"),
    # 22.x: the fourth bracket names the session on every line; the message's sid is another name for it
    4: ev("2026-03-03 08:00:04", "jdoe", "203.0.113.5", "vpn-login", "agent login", dest="vpn01", roles="Users, VPN",
          session="0a1b2c3d4e", agent=AGENT_22),
    5: ev("2026-03-03 08:00:05", "jdoe", "203.0.113.5", "vpn-login", "tunnel session started", assigned="10.200.1.17",
          dest="vpn01", roles="Users, VPN", session="0a1b2c3d4e"),
    8: ev("2026-03-03 09:30:00", "jdoe", "203.0.113.5", "vpn-logout", "connection to 10.10.0.5 closed", dest="vpn01",
          roles="Users, VPN", session="0a1b2c3d4e", duration=5395.0, bytes_in=1834552, bytes_out=48211234),
    9: ev("2026-03-03 09:30:01", "jdoe", "203.0.113.5", "vpn-logout", "session deleted (bandwidth consumed 50045786 bytes)",
          dest="vpn01", roles="Users, VPN", session="0a1b2c3d4e"),
    12: ev("2026-03-03 09:32:00", "asmith", "198.51.100.23", "authentication-failed",
           "client version 9.1.11.6725 below the configured minimum", dest="vpn01", roles="Users"),
    14: ev("2026-03-03 09:34:00", "asmith", "198.51.100.23", "authentication-failed", "host checker policy AV-Check failed",
           dest="vpn01", roles="Users", session="77aa88bb99"),
    # 9.1: `session:sid3C4D…`, `session: sid3c4d…` and `session: SID3C4D…` are one session
    15: ev("2026-03-03 09:40:00", "bwayne", "198.51.100.40", "vpn-login", "agent login", dest="10.0.0.9", roles="Users",
           session="3c4d5e6f", agent="Pulse-Secure/9.1.13.11723 (Windows 10) Pulse/9.1.13.11723"),
    16: ev("2026-03-03 09:40:01", "bwayne", "198.51.100.40", "vpn-login", "tunnel session started",
           assigned="10.200.1.40", dest="10.0.0.9", roles="Users", session="3c4d5e6f"),
    17: ev("2026-03-03 10:40:00", "bwayne", "198.51.100.40", "vpn-logout", "logout", dest="10.0.0.9", realm=None,
           session="3c4d5e6f"),
    # a `System()[][]` line that is an event: the deleted account is the user
    18: ev("2026-03-03 10:45:00", "olduser", "127.0.0.1", "account-deleted",
           "removed by System from authentication server Corp LDAP", dest="vpn01", realm=None),
    19: ev("2026-03-03 10:46:00", "pcsadmin", "192.0.2.10", "authentication-successful",
           "primary authentication (auth server AD / Kerberos)", dest="vpn01", realm="Admin Users"),
}


def test_connect_secure_22_and_relayed_rfc5424_lines(home):
    path = FIXTURES / "ics22.log"
    report = ingest(home, path, source_tz="UTC")  # every time here says its zone: --source-tz must not matter
    assert report.source == "pulse_secure" and report.quarantined == 0
    assert events(home) == ICS22_EVENTS
    assert report.skipped == {"session created": 1, "tunnel transport": 1, "session resumed": 1,
                              "client connection done": 1, "system message": 1, "host checker compliance result": 1}
    assert report.time_notes == []  # no time was read in an assumed zone


def _writer_session(style: str, user: str, sid: str, start: datetime, ip: str) -> list[dict]:
    """One VPN session in the synth writer's records: authentication, login, tunnel, traffic, end."""
    def at(offset: int, event: int, **fields) -> dict:
        return {"syslog": style, "t": start + timedelta(seconds=offset), "event": event, "user": user, "ip": ip,
                "network": "Default Network", "session": sid, **fields}

    return [
        at(0, writer.AUTH_OK, session=None, roles=""),
        at(1, writer.SECONDARY_AUTH_OK, session=None, roles="", auth_server="TOTP / Corp"),
        at(2, writer.SESSION_CREATED),
        at(3, writer.AGENT_LOGIN, agent=AGENT_22),
        at(5, writer.TUNNEL_START, tunnel="10.200.7.7", hostname="LAPTOP-7"),
        at(3600, writer.CLOSED, seconds=3595, bytes_read=4096, read_chunks=3, bytes_written=8192, written_chunks=5),
        at(3601, writer.TUNNEL_END, tunnel="10.200.7.7"),
        at(3602, writer.SESSION_DELETED, bytes_read=4096, bytes_written=8192),
        at(3603, writer.LOGOUT),
    ]


@pytest.mark.parametrize("style", writer.SYSLOG_STYLES)
def test_synth_writer_forms_round_trip(tmp_path, home, style):
    start = datetime(2026, 10, 5, 8, 59, 12, tzinfo=ZoneInfo("America/New_York"))
    path = tmp_path / f"{style}.log"
    path.write_text("\n".join(writer.lines(_writer_session(style, "jdoe", "5f3a9c01d2", start, "203.0.113.5"))) + "\n")
    report = ingest(home, path)  # the fixtures' zone, not the appliance's: the header's offset decides
    assert (report.quarantined, report.skipped) == (0, {"session created": 1})
    rows = sorted(events(home).values())
    assert rows[0][0] == "2026-10-05 12:59:12" and rows[-1][0] == "2026-10-05 13:59:15"
    kinds = [(row[9], row[13] or "") for row in rows]
    assert [k for k, _ in kinds] == ["authentication-successful"] * 2 + ["vpn-login"] * 2 + ["vpn-logout"] * 4
    assert "secondary authentication (auth server TOTP / Corp)" in {r for _, r in kinds}
    session_ids = {row[7] for row in rows if row[9].startswith("vpn-")}
    if style in ("ics22", "relay"):  # the fourth bracket: one session id on every line of the session
        assert session_ids == {"5f3a9c01d2"}
        assert [r for _, r in kinds if r.startswith("session deleted")] == ["session deleted (bandwidth consumed 12288 bytes)"]
    else:  # 9.1 writes no id on tunnel and connection lines; the lines that have one agree
        assert session_ids == {"5f3a9c01d2", None}


# --- times without a zone ------------------------------------------------------------------------


def _ingest_cli(home: Path, *args: str) -> str:
    from typer.testing import CliRunner

    from exfilwatch.cli.main import app

    home.mkdir(exist_ok=True)
    (home / "config.yaml").write_text("timezone: America/New_York\n")
    result = CliRunner().invoke(app, ["--home", str(home), "ingest", *args])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # the table and notes as the user reads them, unwrapped


def test_ingest_says_which_zone_and_year_it_assumed_per_file(tmp_path):
    bare = tmp_path / "pcs-viewer.log"  # copied from the admin UI: no header, the appliance's local time
    bare.write_text("2026-03-03 09:00:01 - ive - [203.0.113.5] jdoe(Users)[Users] - Logout from 203.0.113.5 "
                    "(session:5f3a9c01)\n")
    zoned = tmp_path / "pcs-zoned.log"
    zoned.write_text("<134>1 2026-03-03T09:00:01+01:00 vpn01 PulseSecure: - - - 2026-03-03 09:00:01 - ive - [203.0.113.5] "
                     "jdoe(Users)[Users] - Logout from 203.0.113.5 (session:5f3a9c01)\n")
    maillog = tmp_path / "maillog"
    maillog.write_bytes((Path(__file__).parent / "fixtures" / "postfix" / "maillog-part1").read_bytes())
    written = datetime(2026, 11, 5, 12, 0, tzinfo=timezone.utc).timestamp()
    os.utime(maillog, (written, written))  # yearless syslog is dated by when the file was written

    guessed = _ingest_cli(tmp_path / "home-a", str(bare), str(zoned), str(maillog))
    assert (f"note: {bare}: times without a zone were read in America/New_York "
            "(the configured timezone; --source-tz sets another)") in guessed
    assert (f"note: {maillog}: times without a zone were read in America/New_York (the configured timezone; "
            "--source-tz sets another); dates without a year were put in 2026 (the year the lines were written "
            "(last change 2026-11-05; a later date goes in the year before); --year sets another)") in guessed
    assert f"note: {zoned}" not in guessed  # its header says the zone: nothing was assumed

    told = _ingest_cli(tmp_path / "home-b", str(bare), str(maillog), "--source-tz", "Europe/Berlin", "--year", "2025")
    assert f"note: {bare}: times without a zone were read in Europe/Berlin (from --source-tz)" in told
    assert (f"note: {maillog}: times without a zone were read in Europe/Berlin (from --source-tz); "
            "dates without a year were put in 2025 (from --year)") in told


# --- format detection ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["standard.log", "welf.log", "cef.log"])
def test_detection_picks_pulse_secure(name):
    path = FIXTURES / name
    assert detect_source(read_head(path), str(path)).name == "pulse_secure"


def test_detection_does_not_confuse_pulse_and_zeek(tmp_path):
    conn = write_conn_log(tmp_path / "conn.log", [Flow(1761955200.0, "10.20.0.1", "10.10.0.5", 1, 2)])
    assert detect_source(read_head(conn), str(conn)).name == "zeek_conn"
    assert not PulseSecure().sniff(read_head(conn))
    for name in ("standard.log", "welf.log", "cef.log"):
        head = read_head(FIXTURES / name)
        assert not SOURCES["zeek_conn"].sniff(head) and not SOURCES["zeek_conn_json"].sniff(head)


# --- the public samples ------------------------------------------------------------------------


@pytest.mark.skipif(not SAMPLES.exists(), reason="../shared/samples not present")
def test_every_public_pulse_secure_sample_parses_without_quarantine(tmp_path):
    files = sorted(SAMPLES.glob("usiem-pulsesecure__*"))
    assert files
    home = Home(root=tmp_path / "home", config_path=tmp_path / "none.yaml")
    reports = ingest_paths(files, home, SETTINGS, year=2021)  # format detected
    for path, report in zip(files, reports):
        assert report.source == "pulse_secure", path
        assert report.quarantined == 0, (path, quarantine(home))
        assert report.lines == report.parsed + sum(report.skipped.values())
    kinds = {row[9] for row in events(home).values()}
    assert kinds == {"vpn-login", "vpn-logout", "failed-vpn-login", "authentication-successful",
                     "authentication-failed"}


# --- fuzz ---------------------------------------------------------------------------------------


_CON: list[duckdb.DuckDBPyConnection] = []


def run_parser(source, lines: list[str], head: list[str] | None = None, **ctx_args):
    """Parse `lines` with the source on a DuckDB connection (reused: fuzz examples stay cheap)."""
    if not _CON:
        _CON.append(duckdb.connect())
        _CON[0].execute("SET TimeZone = 'UTC'")
    con = _CON[0]
    con.execute("CREATE OR REPLACE TEMP TABLE raw_lines AS SELECT * FROM (SELECT unnest(range(1, len($l) + 1)) AS line_no, "
                "unnest($l) AS line)", {"l": lines})
    ctx = ParseContext(origin="fuzz.log", header_lines=head if head is not None else lines[:64], settings=SETTINGS,
                       source_tz="Europe/Berlin", year=2026, **ctx_args)
    batch = source.parse(con, ctx)
    outcomes = con.execute(f"SELECT line_no, outcome FROM {batch.classified} ORDER BY line_no").fetchall()
    parsed = con.execute(f"SELECT count(*), count(_time), count(event_type) FROM {batch.events}").fetchone()
    assert [n for n, _ in outcomes] == list(range(1, len(lines) + 1))
    assert parsed[0] == parsed[1] == parsed[2]
    return [o for _, o in outcomes]


def as_lines(payload: str | bytes) -> list[str]:
    text = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else payload
    text = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return [line.rstrip("\r") for line in text.split("\n")]


PREFIXES = [
    "",
    "<134>Mar  3 09:00:01 vpn01 PulseSecure: 2026-03-03 09:00:01 - ive - [203.0.113.5] Default Network::jdoe(Users)[] - ",
    '2026-03-03T09:00:01+01:00 vpn01 PulseSecure: id=firewall time="2026-03-03 09:00:01" pri=6 fw=10.0.0.9 vpn=ive user=',
    "<134>Mar  3 09:00:01 vpn01 CEF:0|Pulse Secure|Pulse Connect Secure|9.1R13|",
]
FUZZ = hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Each example is a whole file of random lines: one parse (whose SQL planning dominates) checks many.
RANDOM = st.lists(st.one_of(st.binary(max_size=300), st.text(max_size=300)), min_size=1, max_size=30)


@FUZZ
@given(payloads=RANDOM)
def test_random_bytes_and_unicode_are_quarantined_or_skipped(payloads):
    outcomes = run_parser(PulseSecure(), [line for p in payloads for line in as_lines(p)])
    assert set(outcomes) <= {"quarantined", "skipped"}


BROKEN = st.tuples(
    st.sampled_from(PREFIXES),
    st.one_of(st.text(max_size=200),
              st.text(alphabet="Login succeded for/()[]:.- 0123456789session", max_size=200),
              st.text(alphabet='=" |\\abcmsgCEF:0123456789', min_size=2000, max_size=20000)),
)


@FUZZ
@given(lines=st.lists(BROKEN, min_size=1, max_size=30))
def test_broken_pulse_lines_never_crash(lines):
    run_parser(PulseSecure(), [line for prefix, body in lines for line in as_lines(prefix + body)])


def parsed_rows(lines: list[str], source_tz: str = "Europe/Berlin") -> list[tuple]:
    """(outcome, UTC time, dest, session id) per line, parsed on the shared connection."""
    run_parser(PulseSecure(), lines)
    return _CON[0].execute(
        "SELECT outcome, strftime(timezone('UTC', _time), '%Y-%m-%d %H:%M:%S'), dest, session_id "
        "FROM pulse_secure_lines ORDER BY line_no").fetchall()


SESSION_ID = st.text(alphabet="0123456789abcdef", min_size=8, max_size=48)


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sid=SESSION_ID, spellings=st.lists(st.tuples(st.sampled_from(["sid", "SID", "Sid", ""]), st.sampled_from(["", " ", "  "]),
                                                    st.booleans()), min_size=4, max_size=4),
       bracket=st.booleans())
def test_every_spelling_of_a_session_id_gives_one_id(sid, spellings, bracket):
    """`session:sid…`, `session: sid…`, upper case, a 22.x bracket: every line of the session has one id."""
    def spelled(i: int) -> str:
        prefix, space, upper = spellings[i]
        return space + prefix + (sid.upper() if upper else sid)

    who = f"Default Network::jdoe(Users)[Users][{sid.upper() if spellings[0][2] else sid}]" if bracket \
        else "Default Network::jdoe(Users)[Users]"
    head = "<134>1 2026-03-03T09:00:01+01:00 vpn01 PulseSecure: - - - 2026-03-03 09:00:01 - ive - [203.0.113.5] " + who
    lines = [
        f"{head} - Agent login succeeded for jdoe/Users (session:{spelled(0)}) from 203.0.113.5 with Pulse-Secure/22.7.1.",
        f"{head} - VPN Tunneling: Session started for user  (session:{spelled(1)}) with IPv4 address 10.200.1.17",
        f"{head} - Session timed out for jdoe/Users (session:{spelled(2)}) due to inactivity (last access at 09:00:00 2026/03/03).",
        f"{head} - Logout from 203.0.113.5 (session:{spelled(3)})",
    ]
    rows = parsed_rows(lines)
    assert [r[0] for r in rows] == ["parsed"] * 4
    assert {r[3] for r in rows} == {sid}


LOCAL = ZoneInfo("Europe/Berlin")


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(when=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(timezone.utc)),
       form=st.sampled_from(["none", "rsyslog", "rfc5424", "bsd", "relay", "relay-pri"]),
       host=st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True))
def test_header_forms_give_one_instant(when, form, host):
    """The same event behind any header the appliance or a relay writes is one instant and one host."""
    local = when.astimezone(LOCAL)
    # the hour the clocks go back happens twice: its local time alone cannot say which (the header's offset can)
    assume(local.replace(fold=0).utcoffset() == local.replace(fold=1).utcoffset() or form in ("rsyslog", "rfc5424",
                                                                                               "relay", "relay-pri"))
    offset = local.strftime("%z")
    iso = local.strftime("%Y-%m-%dT%H:%M:%S") + offset[:3] + ":" + offset[3:]
    bsd = local.strftime("%b ") + f"{local.day:2d}" + local.strftime(" %H:%M:%S")
    header = {
        "none": "",
        "rsyslog": f"{iso} {host} PulseSecure: ",
        "rfc5424": f"<134>1 {iso} {host} PulseSecure: - - - ",
        "bsd": f"<134>{bsd} {host} PulseSecure: ",
        "relay": f"{bsd} relay1 1 {iso} {host} PulseSecure: - - - ",
        "relay-pri": f"<134>{bsd} relay1 1 {iso} {host} PulseSecure: - - - ",
    }[form]
    body = local.strftime("%Y-%m-%d %H:%M:%S") + " - ive - [203.0.113.5] jdoe(Users)[Users] - Logout from 203.0.113.5 (session:5f3a9c01)"
    [(outcome, time, dest, _)] = parsed_rows([header + body])
    assert outcome == "parsed"
    assert time == when.strftime("%Y-%m-%d %H:%M:%S")
    assert dest == ("ive" if form == "none" else host)


def test_very_long_line_is_quarantined():
    line = "<134>Mar  3 09:00:01 vpn01 PulseSecure: 2026-03-03 09:00:01 - ive - [" + "9" * 200_000
    assert run_parser(PulseSecure(), [line]) == ["quarantined"]


# --- the one-pass readings of the frequent Pulse kinds give what the kinds' own patterns give ---

_ONE_PASS_KINDS = [kind for kind in KINDS if kind.one_pass]
# the messages as the appliance writes them, in pieces; the test inserts, removes and replaces pieces
_MESSAGE_TEMPLATES = [
    ["Closed connection to ", "TUN-VPN", " port 443", " after ", "12", " seconds", ", with ", "34", " bytes read ",
     "(in 3 chunks) ", "and ", "56", " bytes written", " (in 9 chunks)"],
    ["VPN Tunneling: Session started for user", " ", "with ", "IPv4 address ", "10.0.0.1", ", hostname WS-1"],
    ["VPN Tunneling: Session ended for user", " ", "with ", "IPv4 address ", "10.0.0.1"],
    ["Primary authentication successful for ", "jdoe", "/", "ACME-AD", " from ", "198.51.100.7"],
    ["Primary authentication failed for ", "jdoe", "/", "ACME-AD", " from ", "198.51.100.7"],
]
_MESSAGE_PIECES = sorted({piece for template in _MESSAGE_TEMPLATES for piece in template} | {
    "", " ", "  ", ",", "(", ")", "/", "after ", "IP ", "IPv6 address ", "fe80::1", "(session:ab12) ", "(session: sidAB) ",
    " second", "(in 1 chunk) ", "ACME AD", "x", "."})
_EDIT = st.tuples(st.integers(0, 14), st.sampled_from(["insert", "replace", "remove"]), st.sampled_from(_MESSAGE_PIECES))


def _edited(template: list[str], edits: list[tuple[int, str, str]]) -> str:
    pieces = list(template)
    for at, how, piece in edits:
        at = at % (len(pieces) + 1)
        if how == "insert":
            pieces.insert(at, piece)
        elif pieces and at < len(pieces):
            pieces[at:at + 1] = [piece] if how == "replace" else []
    return "".join(pieces)


def _assert_readings_agree(messages: list[str]) -> None:
    """What the parser reads (one-pass readings, then the fallback) is what the kind's own pattern reads."""
    con = duckdb.connect()
    first, detail = groups_sql(KINDS)
    for kind in _ONE_PASS_KINDS:
        rows = con.execute(f"""
            SELECT {detail} AS parsed, {kind_groups_sql(kind, False)} AS own
            FROM (SELECT *, {first} AS d0 FROM (SELECT unnest($m) AS t, $kind AS kind))""",
                           {"m": messages, "kind": kind.name}).fetchall()
        for parsed, own in rows:  # m_ok: only whether it matched (it holds the literal each pattern starts with)
            assert parsed | {"m_ok": parsed["m_ok"] != ""} == own | {"m_ok": own["m_ok"] != ""}, kind.name
    con.close()


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(range(len(_MESSAGE_TEMPLATES))), st.lists(_EDIT, min_size=2, max_size=4)),
                min_size=20, max_size=60))
def test_pulse_one_pass_readings_agree_with_the_kind_patterns(edits):
    _assert_readings_agree([_edited(_MESSAGE_TEMPLATES[template], changes) for template, changes in edits])


def test_pulse_one_pass_readings_agree_on_every_single_edit():
    """Every piece inserted at, or put in place of, every position of each message, and each piece removed."""
    messages = []
    for template in _MESSAGE_TEMPLATES:
        for at in range(len(template) + 1):
            messages += [_edited(template, [(at, "insert", piece)]) for piece in _MESSAGE_PIECES]
            messages += [_edited(template, [(at, "replace", piece)]) for piece in _MESSAGE_PIECES]
    _assert_readings_agree(messages)


def test_pulse_one_pass_readings_take_the_appliances_messages():
    """The quick reading is the one taken on the messages as Pulse writes them (else it would only cost)."""
    messages = {
        "tunnel session started": "VPN Tunneling: Session started for user with IPv4 address 10.200.3.4, hostname WS-jdoe",
        "tunnel session ended": "VPN Tunneling: Session ended for user with IPv4 address 10.200.3.4",
        "connection closed": ("Closed connection to TUN-VPN port 443 after 3600 seconds, with 5000 bytes read "
                              "(in 12 chunks) and 7000 bytes written (in 9 chunks)"),
        "primary authentication successful": "Primary authentication successful for jdoe/ACME-AD from 198.51.100.7",
        "primary authentication failed": "Primary authentication failed for jdoe/ACME-AD from 198.51.100.7",
    }
    assert sorted(messages) == sorted(kind.name for kind in _ONE_PASS_KINDS)
    con = duckdb.connect()
    for kind in _ONE_PASS_KINDS:
        fast = kind.one_pass
        taken, = con.execute(f"SELECT {fast.guard} AND regexp_matches({fast.subject}, ?) FROM (SELECT ? AS t)",
                             [fast.pattern, messages[kind.name]]).fetchone()
        assert taken, kind.name
    con.close()


# A standard line built from its parts: the parser gives back each part in its column.
_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12)
_IPV4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda o: ".".join(map(str, o)))
_STANDARD_MESSAGES = {
    # kind: (message template, event type, {column: template of its value})
    "vpn login": ("Login succeeded for {user}/{realm} (session:{sid}) from {ip} with {agent}.", "vpn-login",
                  {"session_id": "{sid}", "user_agent": "{agent}"}),
    "logout": ("Logout from {ip} (session:{sid})", "vpn-logout", {"session_id": "{sid}"}),
    "tunnel session started": ("VPN Tunneling: Session started for user with IPv4 address {assigned}, hostname WS-{user}",
                               "vpn-login", {"assigned_ip": "{assigned}"}),
    "connection closed": ("Closed connection to TUN-VPN port 443 after {seconds} seconds, with {read} bytes read "
                          "(in 3 chunks) and {written} bytes written (in 4 chunks)", "vpn-logout",
                          {"duration": "{seconds}", "bytes_out": "{read}", "bytes_in": "{written}"}),
    "primary authentication successful": ("Primary authentication successful for {user}/{server} from {ip}",
                                          "authentication-successful", {}),
}
_STANDARD_PARTS = st.fixed_dictionaries({
    "kind": st.sampled_from(sorted(_STANDARD_MESSAGES)), "user": _NAME, "host": _NAME, "node": _NAME,
    "realm": st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghij-", min_size=1, max_size=12).filter(str.strip),
    "roles": st.sampled_from(["", "Users", "Users, VPN"]), "ip": _IPV4, "assigned": _IPV4, "server": _NAME,
    "sid": st.text(alphabet="0123456789abcdef", min_size=8, max_size=32), "agent": st.sampled_from([AGENT, "Pulse/22.7"]),
    "seconds": st.integers(0, 10**6), "read": st.integers(0, 10**12), "written": st.integers(0, 10**12),
    "prefix": st.sampled_from(["", "Default Network::", "Users::"]),
    # whole days away from the zone's clock changes, where a local time is ambiguous or missing
    "when": st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31)).filter(
        lambda t: t.month not in (3, 10)),
})


@hsettings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_STANDARD_PARTS, min_size=1, max_size=25))
def test_standard_lines_give_back_their_parts(lines):
    texts, expected = [], []
    for p in lines:
        template, event_type, columns = _STANDARD_MESSAGES[p["kind"]]
        when = p["when"].replace(microsecond=0)
        bsd = f"{when:%b} {when.day:2d} {when:%H:%M:%S}"
        texts.append(f"<134>{bsd} {p['host']} PulseSecure: {when:%Y-%m-%d %H:%M:%S} - {p['node']} - [{p['ip']}] "
                     f"{p['prefix']}{p['user']}({p['realm']})[{p['roles']}] - {template.format(**p)}")
        row = {"outcome": "parsed", "_time": when.replace(tzinfo=ZoneInfo(TZ)).astimezone(timezone.utc).replace(tzinfo=None),
               "user": p["user"], "src_ip": p["ip"], "dest": p["host"], "realm": p["realm"], "roles": p["roles"] or None,
               "event_type": event_type, "session_id": None, "assigned_ip": None, "duration": None, "bytes_out": None,
               "bytes_in": None, "user_agent": None}
        row |= {column: value.format(**p) for column, value in columns.items()}
        row |= {column: float(row[column]) if column == "duration" else int(row[column])
                for column in ("duration", "bytes_out", "bytes_in") if row[column] is not None}
        expected.append(row)
    run_parser(PulseSecure(), texts)
    names = list(expected[0])
    got = _CON[0].execute(
        f"SELECT {', '.join(names[:1])}, timezone('UTC', _time), {', '.join(chr(34) + n + chr(34) for n in names[2:])} "
        "FROM pulse_secure_lines ORDER BY line_no").fetchall()
    assert [dict(zip(names, row)) for row in got] == expected
