"""The flows summed per session by the stretch between their user's session boundaries
(features/sessions.py `_flows_per_session_by_stretch`, what DuckDB runs) are those of the reference,
by the hour and an ASOF join (`_flows_per_session_by_hour`, what Spark runs): every stored column
of every session, on flows at and around the sessions' starts and ends, of sessions that overlap
(two devices), that touch (one ends the instant the next starts), on the hour, and across the
night the clocks go back; and of tunnel addresses that sessions of both users reuse, whose flows go
to the latest-started session of the address only while it holds them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from exfilwatch.features import sessions as ses

from .sessionkit import flow, login, logout, sessions, settings

ZONE = "America/New_York"  # the clocks go back at 2026-11-01 06:00 UTC: that local day has 25 hours
START = datetime(2026, 10, 30, tzinfo=timezone.utc)
NOW = datetime(2026, 11, 4, tzinfo=timezone.utc)
HOSTS = {"ann": "10.1.0.1", "ben": "10.1.0.2"}


def _build(auth: list[dict], flows: list[dict], by_stretch: bool, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    monkeypatch.setattr(ses, "_flows_by_stretch", lambda con: by_stretch)
    cfg = settings(timezone=ZONE, identities=[{"user": u, "hosts": [h]} for u, h in HOSTS.items()])
    rows, _ = sessions(auth, [], flows, now=NOW, start=START, cfg=cfg)
    monkeypatch.undo()
    return rows


# a session: its user, device (two devices' sessions overlap), start (minutes after START, often on
# the hour) and length in minutes (0: it ends the instant it starts; each device's next session
# starts where the last ended, or later: sessions that touch)
_minutes = st.one_of(st.integers(0, 3 * 24 * 60).map(lambda m: m - m % 60), st.integers(0, 3 * 24 * 60))
_session = st.tuples(st.sampled_from(sorted(HOSTS)), st.sampled_from(["laptop", "phone"]), _minutes,
                     st.sampled_from([0, 1, 59, 60, 61, 119, 600, 1500]), st.booleans())


def _data(specs: list[tuple], offsets: list[int], addresses: int | None = None) -> tuple[list[dict], list[dict]]:
    """Logins and logouts of `specs`, with a tunnel address each (its flows go by the tunnel's
    rule), or one of `addresses` shared by the sessions in turn; flows of each user's host and
    tunnel address at each session boundary plus each of `offsets` (seconds), and at each hour's
    start of the days."""
    auth, flows, boundaries = [], [], []
    ends: dict[tuple[str, str], datetime] = {}
    starts: set[tuple[str, datetime]] = set()
    for n, (user, device, minutes, length, touch) in enumerate(specs):
        begin = START + timedelta(minutes=minutes)
        if touch and (user, device) in ends:
            begin = ends[(user, device)]  # the next session starts the instant the last one ended
        begin = max(begin, ends.get((user, device), begin))
        tunnel = f"10.200.0.{n if addresses is None else n % addresses}"
        # two sessions of a user, or of a tunnel address, started at once: the reference takes either
        while (user, begin) in starts or (tunnel, begin) in starts:
            begin += timedelta(seconds=1)
        starts |= {(user, begin), (tunnel, begin)}
        end = begin + timedelta(minutes=length)
        ends[(user, device)] = end
        sid = f"{user}-{device}-{n}"
        auth += [login(begin, user, sid, ip=tunnel), logout(end, user, sid, ip=tunnel)]
        boundaries += [(user, tunnel, begin), (user, tunnel, end)]
    for user, tunnel, t in boundaries:
        for offset in offsets:
            flows.append(flow(t + timedelta(seconds=offset), HOSTS[user], 100 + offset % 7, 3))
            flows.append(flow(t + timedelta(seconds=offset), tunnel, 10, 1))
    for hour in range(4 * 24):
        for user in HOSTS:
            flows.append(flow(START + timedelta(hours=hour), HOSTS[user], 1, 1))
    return auth, flows


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(_session, min_size=1, max_size=8),
       offsets=st.lists(st.sampled_from([-3600, -61, -1, 0, 1, 59, 1800]), min_size=1, max_size=4, unique=True))
def test_flows_by_stretch_are_summed_into_the_sessions_the_reference_gives(specs, offsets, monkeypatch):
    auth, flows = _data(specs, offsets)
    reference = _build(auth, flows, False, monkeypatch)
    assert _build(auth, flows, True, monkeypatch) == reference
    assert sum(r["net_flows"] for r in reference) >= 4 * 24 * len(HOSTS)  # the hosts' flows, at least


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(_session, min_size=2, max_size=8),
       offsets=st.lists(st.sampled_from([-3600, -61, -1, 0, 1, 59, 1800]), min_size=1, max_size=4, unique=True),
       addresses=st.integers(1, 2))
def test_flows_of_reused_tunnel_addresses_by_stretch_are_those_the_reference_gives(specs, offsets, addresses,
                                                                                    monkeypatch):
    auth, flows = _data(specs, offsets, addresses)
    reference = _build(auth, flows, False, monkeypatch)
    assert _build(auth, flows, True, monkeypatch) == reference


def test_a_tunnel_address_flow_goes_to_the_latest_started_session_of_the_address_while_it_holds(monkeypatch):
    at = START + timedelta(days=1, hours=3, minutes=10)
    tunnel = "10.200.0.7"
    # ann's long session and, inside it, ben's short one on the same tunnel address; then ann's next
    auth = [login(at, "ann", "a1", ip=tunnel), logout(at + timedelta(hours=3), "ann", "a1", ip=tunnel),
            login(at + timedelta(minutes=40), "ben", "b1", ip=tunnel),
            logout(at + timedelta(minutes=80), "ben", "b1", ip=tunnel),
            login(at + timedelta(hours=4), "ann", "a2", ip=tunnel), logout(at + timedelta(hours=5), "ann", "a2", ip=tunnel)]
    flows = [flow(at + timedelta(minutes=10), tunnel, 1),  # a1, the only session of the address yet
             flow(at + timedelta(minutes=40), tunnel, 2),  # b1 started that instant: the latest-started
             flow(at + timedelta(minutes=79, seconds=59), tunnel, 4),  # b1
             # b1, the latest-started of the address, has ended: the flow is no session's, though
             # a1 still holds it (a tunnel address is no user's host)
             flow(at + timedelta(minutes=80), tunnel, 8),
             flow(at + timedelta(hours=2, minutes=59), tunnel, 16),
             flow(at + timedelta(hours=3), tunnel, 32),  # between the address's sessions
             flow(at + timedelta(hours=4, minutes=30), tunnel, 64)]  # a2
    reference = _build(auth, flows, False, monkeypatch)
    stretch = _build(auth, flows, True, monkeypatch)
    assert stretch == reference
    by_session = {r["vpn_session_id"]: r["net_bytes_out"] for r in stretch}
    assert by_session == {"a1": 1, "b1": 2 + 4, "a2": 64}


def test_the_stretches_cover_a_split_hour_touching_sessions_and_the_night_the_clocks_go_back(monkeypatch):
    at = START + timedelta(days=2, hours=5, minutes=20)  # 2026-11-01 05:20 UTC, 01:20 EDT
    auth = [login(at, "ann", "a1", ip="10.200.0.1"), logout(at + timedelta(minutes=30), "ann", "a1", ip="10.200.0.1"),
            # touches a1 and runs past the change of clocks (06:00 UTC)
            login(at + timedelta(minutes=30), "ann", "a2"), logout(at + timedelta(hours=2), "ann", "a2"),
            # another device's session inside a2, started later: it takes the flows it holds
            login(at + timedelta(minutes=50), "ann", "a3"), logout(at + timedelta(minutes=70), "ann", "a3")]
    host = HOSTS["ann"]
    flows = [flow(at - timedelta(seconds=1), host, 1),  # the local day before the session
             flow(at + timedelta(minutes=29, seconds=59), host, 2),  # a1
             flow(at + timedelta(minutes=30), host, 4),  # a2: a1 ended that instant
             flow(at + timedelta(minutes=50), host, 8),  # a3, started later than a2
             flow(at + timedelta(minutes=70), host, 16),  # a2 again
             flow(at + timedelta(hours=2), host, 32),  # after a2: the local day, 25 hours long
             flow(at + timedelta(minutes=10), "10.200.0.1", 64)]  # a1's tunnel
    reference = _build(auth, flows, False, monkeypatch)
    assert _build(auth, flows, True, monkeypatch) == reference
    by_session = {(r["session_kind"], r["vpn_session_id"]): (r["net_bytes_out"], r["session_end"] - r["session_start"])
                  for r in reference}
    assert by_session[("vpn", "a1")][0] == 2 + 64
    assert by_session[("vpn", "a2")][0] == 4 + 16
    assert by_session[("vpn", "a3")][0] == 8
    assert by_session[("day", None)] == (1 + 32, timedelta(hours=25))
