"""Sessionisation edge cases: VPN boundaries, attribution of mail and flows, daily sessions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from .sessionkit import T0, at, flow, login, logout, mail, sessions, settings

A = "alice@corp.example"


def by_kind(rows, kind):
    return [r for r in rows if r["session_kind"] == kind]


def test_login_logout_is_one_session_and_its_mail_is_inside():
    rows, counts = sessions(
        [login(at(0), "alice", "s1"), logout(at(4), "alice", "s1")],
        [mail(at(1), A, ["x@partner.com"], 500), mail(at(5), A, ["y@partner.com"], 700)],
    )
    vpn = by_kind(rows, "vpn")
    assert len(vpn) == 1
    s = vpn[0]
    assert (s["session_start"], s["session_end"], s["end_reason"]) == (at(0), at(4), "logout")
    assert s["boundary_source"].startswith("vpn.log:")
    assert (s["em_fnum"], s["em_bsum"]) == (1, 500)
    day = by_kind(rows, "day")
    assert len(day) == 1 and day[0]["em_bsum"] == 700 and day[0]["session_key"] == "day|alice|2026-10-05"
    assert counts.ends_before_login == 0


def test_missing_logout_closes_at_the_idle_limit_and_is_open_before():
    auth = [login(at(0), "alice", "s1")]
    rows, _ = sessions(auth, now=at(11))
    assert by_kind(rows, "vpn") == []  # still open: not stored, not scored
    rows, _ = sessions(auth, now=at(13))
    [s] = by_kind(rows, "vpn")
    assert s["session_end"] == at(12) and s["end_reason"] == "idle-limit"
    assert "idle limit, 12 h after its last event" in s["boundary_source"]
    rows, _ = sessions(auth, now=at(13), cfg=settings(sessions={"idle_limit_hours": 2}))
    assert by_kind(rows, "vpn")[0]["session_end"] == at(2)


def test_relogin_with_the_same_session_id_closes_the_previous_session():
    rows, _ = sessions([login(at(0), "alice", "s1"), login(at(3), "alice", "s1"), logout(at(5), "alice", "s1")],
                       [mail(at(2), A, ["a@partner.com"]), mail(at(4), A, ["b@partner.com"], 2000)])
    first, second = by_kind(rows, "vpn")
    assert (first["session_end"], first["end_reason"]) == (at(3), "re-login")
    assert (second["session_start"], second["session_end"], second["end_reason"]) == (at(3), at(5), "logout")
    assert (first["em_fnum"], second["em_fnum"], second["em_bsum"]) == (1, 1, 2000)


def test_logout_and_login_at_the_same_instant():
    rows, _ = sessions([login(at(0), "alice", "s1"), logout(at(2), "alice", "s1"), login(at(2), "alice", "s1"),
                        logout(at(3), "alice", "s1", reason="session timed out due to inactivity")])
    first, second = by_kind(rows, "vpn")
    assert (first["session_end"], first["end_reason"]) == (at(2), "logout")
    assert (second["session_start"], second["end_reason"]) == (at(2), "timeout")


def test_overlapping_sessions_attribute_mail_to_the_latest_started_one_that_holds_it():
    rows, _ = sessions(
        [login(at(0), "alice", "laptop"), login(at(1), "alice", "phone"), logout(at(2), "alice", "phone"),
         logout(at(6), "alice", "laptop")],
        [mail(at(1.5), A, ["a@partner.com"], 10), mail(at(3), A, ["b@partner.com"], 20),
         mail(at(0.5), A, ["c@partner.com"], 40)],
    )
    laptop, phone = by_kind(rows, "vpn")
    assert laptop["vpn_session_id"] == "laptop" and phone["vpn_session_id"] == "phone"
    assert phone["em_bsum"] == 10  # inside both: the later one
    assert laptop["em_bsum"] == 60  # before the phone session, and after it ended (the overlap pass)
    assert by_kind(rows, "day") == []


def test_session_across_midnight_is_not_split_by_day():
    base = datetime(2026, 10, 5, 22, 0, tzinfo=timezone.utc)
    rows, _ = sessions([login(base, "alice", "s1"), logout(base + timedelta(hours=4), "alice", "s1")],
                       [mail(base + timedelta(hours=1.5), A, ["a@partner.com"]),
                        mail(base + timedelta(hours=3), A, ["b@other.com"])])
    [s] = by_kind(rows, "vpn")
    assert s["em_fnum"] == 2 and s["em_dnum"] == 2
    assert by_kind(rows, "day") == []


def test_daily_sessions_follow_local_midnight_across_dst():
    tz = "America/New_York"
    zone = ZoneInfo(tz)
    # 2026-11-01 is the day US clocks fall back: 25 hours long
    early = datetime(2026, 11, 1, 0, 30, tzinfo=zone)
    late = datetime(2026, 11, 1, 23, 30, tzinfo=zone)
    before = datetime(2026, 10, 31, 23, 30, tzinfo=zone)
    rows, _ = sessions([], [mail(early, A, ["a@partner.com"]), mail(late, A, ["b@partner.com"]),
                            mail(before, A, ["c@partner.com"])],
                       cfg=settings(timezone=tz), now=datetime(2026, 11, 3, tzinfo=timezone.utc),
                       start=datetime(2026, 10, 1, tzinfo=timezone.utc))
    days = {r["session_key"]: r for r in rows}
    nov1 = days["day|alice|2026-11-01"]
    assert nov1["session_start"] == datetime(2026, 11, 1, 4, 0, tzinfo=timezone.utc)
    assert nov1["session_end"] == datetime(2026, 11, 2, 5, 0, tzinfo=timezone.utc)  # 25 h
    assert nov1["em_fnum"] == 2
    assert days["day|alice|2026-10-31"]["em_fnum"] == 1
    # spring forward: 23 hours
    rows, _ = sessions([], [mail(datetime(2026, 3, 8, 12, 0, tzinfo=zone), A, ["a@partner.com"])],
                       cfg=settings(timezone=tz), now=datetime(2026, 3, 10, tzinfo=timezone.utc),
                       start=datetime(2026, 3, 1, tzinfo=timezone.utc))
    [r] = rows
    assert r["session_end"] - r["session_start"] == timedelta(hours=23)


def test_a_daily_session_is_open_until_local_midnight():
    rows, _ = sessions([], [mail(at(2), A, ["a@partner.com"])], now=at(10))
    assert rows == []
    rows, _ = sessions([], [mail(at(2), A, ["a@partner.com"])], now=at(16))  # past 00:00 UTC
    assert len(rows) == 1


def test_events_before_the_first_login():
    rows, counts = sessions(
        [logout(at(0), "alice", "old"), login(at(2), "alice", "s1"), logout(at(3), "alice", "s1")],
        [mail(at(1), A, ["a@partner.com"], 100)],
    )
    assert counts.ends_before_login == 1
    [vpn] = by_kind(rows, "vpn")
    assert vpn["session_start"] == at(2)
    [day] = by_kind(rows, "day")  # mail before any login is the day's
    assert day["em_bsum"] == 100


def test_a_tunnel_inside_a_login_session_is_part_of_it():
    rows, _ = sessions(
        [login(at(0), "alice", "s1"), login(at(0.01), "alice", ip="10.200.0.5"),
         logout(at(3), "alice", ip="10.200.0.5", reason="tunnel session ended"),
         logout(at(3.01), "alice", reason="connection to TUN-VPN port 443 closed"),
         logout(at(3.02), "alice", "s1")],
        [mail(at(2), A, ["a@partner.com"])],
        [flow(at(1), "10.200.0.5", 1234, 10), flow(at(5), "10.200.0.5", 99)],
    )
    [s] = by_kind(rows, "vpn")
    assert s["assigned_ip"] == "10.200.0.5" and s["vpn_session_id"] == "s1"
    assert (s["session_end"], s["end_reason"]) == (at(3.02), "logout")  # the login session's own end
    assert (s["net_flows"], s["net_bytes_out"], s["net_bytes_in"]) == (1, 1234, 10)
    assert s["em_fnum"] == 1


def test_tunnel_end_and_closed_connection_end_sessions_without_their_own_end():
    rows, _ = sessions([login(at(0), "alice", "s1"), login(at(0.01), "alice", ip="10.200.0.5"),
                        logout(at(3), "alice", ip="10.200.0.5", reason="tunnel session ended")])
    [s] = by_kind(rows, "vpn")
    assert (s["session_end"], s["end_reason"]) == (at(3), "tunnel-ended")
    rows, _ = sessions([login(at(0), "bob", "s9"),
                        logout(at(2), "bob", reason="connection to TUN-VPN port 443 closed")])
    [s] = by_kind(rows, "vpn")
    assert (s["session_end"], s["end_reason"]) == (at(2), "connection-closed")
    # a tunnel with no login session around it is a session of its own
    rows, _ = sessions([login(at(0), "carol", ip="10.200.0.9"),
                        logout(at(1), "carol", ip="10.200.0.9", reason="tunnel session ended")])
    [s] = by_kind(rows, "vpn")
    assert s["assigned_ip"] == "10.200.0.9" and s["end_reason"] == "tunnel-ended"


def test_end_kinds_are_kept():
    reasons = {"logged out because the user started a new session": "new-session",
               "maximum session length reached": "timeout", "session terminated": "terminated",
               "logout": "logout"}
    auth = []
    for i, reason in enumerate(reasons):
        auth += [login(at(i * 2), "alice", f"s{i}"), logout(at(i * 2 + 1), "alice", f"s{i}", reason=reason)]
    rows, _ = sessions(auth)
    assert [r["end_reason"] for r in rows] == list(reasons.values())


def test_identities_join_vpn_accounts_mail_and_hosts():
    cfg = settings(identities=[{"user": "asmith", "emails": ["Alice.Smith@corp.example"],
                                "vpn_accounts": ["CORP\\asmith"], "hosts": ["10.20.0.7"], "department": "finance"}])
    rows, counts = sessions(
        [login(at(0), "CORP\\asmith", "s1"), logout(at(2), "CORP\\asmith", "s1"),
         login(at(3), "bob@CORP", "s2"), logout(at(4), "bob@CORP", "s2")],
        [mail(at(1), "alice.smith@corp.example", ["a@gmail.com"], 300),
         mail(at(1), "stranger@elsewhere.com", ["a@partner.com"], 300),
         mail(at(3.5), "Bob+lists@Corp.Example", ["b@partner.com"], 50)],
        [flow(at(6), "10.20.0.7", 5000), flow(at(6), "10.99.9.9", 1)],
        cfg=cfg,
    )
    keyed = {(r["user"], r["session_kind"]): r for r in rows}
    alice = keyed[("asmith", "vpn")]
    assert alice["department"] == "finance" and alice["vpn_account"] == "CORP\\asmith"
    assert (alice["em_fnum"], alice["em_bsum_personal"]) == (1, 300)
    assert keyed[("bob", "vpn")]["em_bsum"] == 50  # default rules: bob@CORP and bob+lists@corp.example
    assert keyed[("asmith", "day")]["net_bytes_out"] == 5000  # her desk host, outside VPN
    assert counts.messages_unresolved_sender == 1 and counts.flows_unattributed == 1


def test_features_count_messages_once_and_skip_mail_that_did_not_leave():
    rows, _ = sessions([login(at(0), "alice", "s1"), logout(at(5), "alice", "s1")], [
        mail(at(1), A, ["a@partner.com", "b@partner.com", "c@mail.other.co.uk"], 1000, message_id="<m1>"),
        mail(at(1.1), A, ["a@partner.com"], 1000, message_id="<m1>"),  # the same message logged twice
        mail(at(2), A, ["me@gmail.com", "x@corp.example"], 5000),
        mail(at(2.5), A, ["x@corp.example", "y@sub.corp.example"], 9999),  # internal only
        mail(at(3), A, ["z@partner.com"], 7777, action="failed"),
        mail(at(3), A, ["z@mailinator.com"], 10),
    ])
    [s] = by_kind(rows, "vpn")
    assert s["messages_sent"] == 4
    assert s["em_fnum"] == 3
    assert s["em_dnum"] == 4  # partner.com, other.co.uk, gmail.com, mailinator.com
    assert s["em_bsum"] == 6010
    assert s["em_bsum_personal"] == 5000 and s["em_personal_fnum"] == 1
    domains = {d["domain"]: d for d in s["top_domains"]}
    assert domains["partner.com"]["messages"] == 1 and domains["mailinator.com"]["domain_class"] == "disposable"
    assert s["largest_messages"][0]["size"] == 5000
    assert s["largest_personal_messages"][0]["recipients"] == "me@gmail.com, x@corp.example"


def test_recipients_count_once_whatever_their_case_and_take_their_domain_in_lower_case():
    rows, _ = sessions([login(at(0), "alice", "s1"), logout(at(5), "alice", "s1")], [
        mail(at(1), A, ["Bob@Partner.COM", "Me@Mail.GMAIL.com"], 1000, message_id="<m1>"),
        mail(at(1.1), A, ["bob@partner.com"], 1000, message_id="<m1>"),  # the same message logged twice
        mail(at(2), A, ["BOB@partner.com", "x@Corp.Example"], 3000),
    ])
    [s] = by_kind(rows, "vpn")
    assert s["em_fnum"] == 2 and s["em_dnum"] == 2 and s["em_bsum"] == 4000
    assert s["em_bsum_personal"] == 1000  # Mail.GMAIL.com is gmail.com's
    assert [(d["domain"], d["domain_class"], d["messages"], d["bytes"]) for d in s["recipient_domains"]] == [
        ("gmail.com", "personal", 1, 1000), ("partner.com", "external", 2, 4000)]
    assert [(r["recipient"], r["messages"], r["bytes"]) for r in s["top_recipients"]] == [
        ("bob@partner.com", 2, 4000), ("me@mail.gmail.com", 1, 1000)]


def test_top_domains_are_the_five_with_most_messages_then_bytes_then_the_greater_name():
    sizes = {"a.com": [100, 100, 100], "b.com": [50, 50, 50], "c.com": [500, 500], "d.com": [500, 500],
             "f.com": [None], "g.com": [5]}
    sent = [mail(at(1 + i / 100), A, [f"x@{domain}"], size) for i, (domain, size) in
            enumerate((d, s) for d, listed in sizes.items() for s in listed)]
    rows, _ = sessions([login(at(0), "alice", "s1"), logout(at(5), "alice", "s1")], sent)
    [s] = by_kind(rows, "vpn")
    assert s["em_dnum"] == 6
    # c.com and d.com tie on messages and bytes: the greater name first; f.com's size is unknown: last
    assert [(d["domain"], d["messages"], d["bytes"]) for d in s["top_domains"]] == [
        ("a.com", 3, 300), ("b.com", 3, 150), ("d.com", 2, 1000), ("c.com", 2, 1000), ("g.com", 1, 5)]
    assert [d["domain"] for d in s["recipient_domains"]] == sorted(sizes)


def test_a_recipient_without_a_domain_is_local_mail_not_outgoing():
    # Postfix logs local deliveries as `to=<root>`: no domain, so nothing left the organisation
    rows, _ = sessions([login(at(0), "alice", "s1"), logout(at(5), "alice", "s1")], [
        mail(at(1), A, ["root"], 7000),
        mail(at(2), A, ["postmaster", "bob@partner.com"], 3000),
    ])
    [s] = by_kind(rows, "vpn")
    assert s["em_fnum"] == 1 and s["em_bsum"] == 3000 and s["em_dnum"] == 1
    assert [d["domain"] for d in s["recipient_domains"]] == ["partner.com"]
