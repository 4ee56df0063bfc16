"""The four EM features on random data equal a plain-Python reference, session by session.

The reference is written from the definitions, not from the SQL: a message belongs to the
user of its (internal) sender address, to their VPN session holding its time, else to the
local day; it is outgoing when a recipient is outside the internal domains; a message logged
twice counts once; failed messages do not count.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from .sessionkit import flow, login, logout, mail, sessions, settings

TZ = "Europe/Berlin"
START = datetime(2026, 10, 1, tzinfo=timezone.utc)
NOW = datetime(2026, 10, 20, tzinfo=timezone.utc)
USERS = ["ann", "ben", "cho", "dev", "eli"]

# recipient address -> (registered domain, class), written out by hand
RECIPIENTS = {
    "p1@partner.com": ("partner.com", "external"),
    "p2@x.partner.com": ("partner.com", "external"),
    "o1@mail.other.co.uk": ("other.co.uk", "external"),
    "v1@vendor.example": ("vendor.example", "external"),
    "g1@gmail.com": ("gmail.com", "personal"),
    "h1@hotmail.co.uk": ("hotmail.co.uk", "personal"),
    "y1@yahoo.fr": ("yahoo.fr", "personal"),
    "d1@mailinator.com": ("mailinator.com", "disposable"),
    "i1@corp.example": ("corp.example", "internal"),
    "i2@eu.corp.example": ("corp.example", "internal"),
}


def random_dataset(seed: int):
    rng = random.Random(seed)
    auth, vpn_sessions = [], []
    for user in USERS:
        t = START + timedelta(hours=rng.uniform(0, 12))
        n = 0
        while t < NOW - timedelta(days=2):
            n += 1
            sid = f"{user}-{n}"
            length = timedelta(hours=rng.uniform(0.5, 10))
            auth.append(login(t, user, sid))
            if rng.random() < 0.15:  # no end line: closed by the 12 h idle limit
                end = t + timedelta(hours=12)
            else:
                end = t + length
                auth.append(logout(end, user, sid, reason=rng.choice(
                    ["logout", "session timed out due to inactivity"])))
            vpn_sessions.append((user, t, end))
            t = end + timedelta(hours=rng.uniform(1, 40))
    mails = []
    for i in range(400):
        t = START + timedelta(seconds=rng.uniform(0, (NOW - START).total_seconds() - 86400 * 2))
        sender = rng.choice(USERS + ["outsider"])
        address = f"{sender}@{'elsewhere.org' if sender == 'outsider' else rng.choice(['corp.example', 'Corp.Example'])}"
        recipients = rng.sample(list(RECIPIENTS), rng.randint(1, 4))
        size = rng.randint(100, 5_000_000)
        action = "failed" if rng.random() < 0.05 else "delivered"
        row = mail(t, address, recipients, size, message_id=f"<r{seed}-{i}>", action=action)
        mails.append(row)
        if rng.random() < 0.1:  # the same message logged again (e.g. after a content filter)
            mails.append(mail(t + timedelta(seconds=5), address, recipients[:1], size, message_id=f"<r{seed}-{i}>",
                              action=action))
    return auth, mails, vpn_sessions


def reference(mails, vpn_sessions):
    zone = ZoneInfo(TZ)
    messages: dict[tuple[str, str], dict] = {}
    for m in mails:
        if m["action"] == "failed":
            continue
        local, domain = m["src_user"].lower().split("@")
        if domain != "corp.example":
            continue
        key = (local, m["message_id"])
        msg = messages.setdefault(key, {"user": local, "time": m["_time"], "size": m["size"], "rcpt": set()})
        msg["time"] = min(msg["time"], m["_time"])
        msg["size"] = max(msg["size"], m["size"])
        msg["rcpt"].update(m["recipient"])
    features: dict[str, dict] = defaultdict(lambda: dict(messages_sent=0, em_fnum=0, domains=set(), em_bsum=0,
                                                         em_bsum_personal=0, em_personal_fnum=0))
    keys = {}
    for user, start, end in vpn_sessions:
        key = f"vpn|{user}|{start:%Y-%m-%dT%H:%M:%SZ}|{user}-{start}"
        keys[(user, start)] = key
    for msg in messages.values():
        session = next(((u, s) for u, s, e in vpn_sessions if u == msg["user"] and s <= msg["time"] < e), None)
        if session:
            key = ("vpn", session)
        else:
            key = ("day", msg["user"], msg["time"].astimezone(zone).date())
        f = features[key]
        f["messages_sent"] += 1
        classes = [RECIPIENTS[r][1] for r in msg["rcpt"]]
        if any(c != "internal" for c in classes):
            f["em_fnum"] += 1
            f["em_bsum"] += msg["size"]
            f["domains"].update(RECIPIENTS[r][0] for r in msg["rcpt"] if RECIPIENTS[r][1] != "internal")
        if "personal" in classes:
            f["em_bsum_personal"] += msg["size"]
            f["em_personal_fnum"] += 1
    out = {}
    for user, start, end in vpn_sessions:
        f = features.get(("vpn", (user, start)), features.default_factory())
        out[("vpn", user, start)] = f
    for key, f in features.items():
        if key[0] == "day":
            out[key] = f
    return {k: {**{n: v for n, v in f.items() if n != "domains"}, "em_dnum": len(f["domains"])} for k, f in out.items()}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_features_equal_the_reference(seed):
    auth, mails, vpn_sessions = random_dataset(seed)
    rows, counts = sessions(auth, mails, now=NOW, start=START, cfg=settings(timezone=TZ))
    got = {}
    zone = ZoneInfo(TZ)
    for r in rows:
        if r["session_kind"] == "vpn":
            key = ("vpn", r["user"], r["session_start"])
        else:
            key = ("day", r["user"], r["session_start"].astimezone(zone).date())
        got[key] = {n: r[n] for n in ("messages_sent", "em_fnum", "em_bsum", "em_bsum_personal",
                                      "em_personal_fnum", "em_dnum")}
    expected = reference(mails, vpn_sessions)
    assert set(got) == set(expected)
    for key in sorted(expected, key=str):
        assert got[key] == expected[key], key
    assert counts.messages_unresolved_sender == sum(1 for m in mails if m["src_user"].startswith("outsider")
                                                    and m["action"] != "failed")


def random_flows(seed: int):
    """Two devices per user with overlapping VPN sessions, and flows from each user's desk host,
    most of them within half an hour of a session's start or end (the hours where the build's
    shortcut for whole hours does not apply), in a zone whose midnight falls within a UTC hour."""
    rng = random.Random(seed)
    auth, vpn_sessions, flows = [], [], []
    for user in USERS[:3]:
        for device in ("laptop", "phone"):
            t = START + timedelta(hours=rng.uniform(0, 30))
            n = 0
            while t < NOW - timedelta(days=2):
                n += 1
                sid = f"{user}-{device}-{n}"
                end = t + timedelta(hours=rng.uniform(0.2, 30))
                auth += [login(t, user, sid), logout(end, user, sid)]
                vpn_sessions.append((user, t, end))
                t = end + timedelta(hours=rng.uniform(0.5, 30))
    boundaries = [b for _, s, e in vpn_sessions for b in (s, e)]
    for i in range(1500):
        user = rng.choice(USERS[:3] + ["server"])
        if rng.random() < 0.7:
            t = rng.choice(boundaries) + timedelta(minutes=rng.uniform(-30, 30))
        else:
            t = START + timedelta(seconds=rng.uniform(0, (NOW - START).total_seconds() - 86400 * 2))
        flows.append(flow(t, HOSTS.get(user, "10.9.9.9"), rng.randint(1, 10_000), rng.randint(0, 100)))
    return auth, vpn_sessions, flows


HOSTS = {"ann": "10.1.0.1", "ben": "10.1.0.2", "cho": "10.1.0.3"}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_flows_of_a_users_host_go_to_the_latest_started_session_holding_them_else_the_local_day(seed):
    zone = "Asia/Kolkata"  # UTC+05:30: local midnight half-way through a UTC hour
    auth, vpn_sessions, flows = random_flows(seed)
    cfg = settings(timezone=zone, identities=[{"user": u, "hosts": [h]} for u, h in HOSTS.items()])
    rows, counts = sessions(auth, [], flows, now=NOW, start=START, cfg=cfg)
    expected: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])
    for f in flows:
        user = next((u for u, h in HOSTS.items() if h == f["src_ip"]), None)
        if user is None:
            continue
        holding = [(s, e) for u, s, e in vpn_sessions if u == user and s <= f["_time"] < e]
        key = ("vpn", user, max(holding)[0]) if holding else ("day", user, f["_time"].astimezone(ZoneInfo(zone)).date())
        expected[key] = [a + b for a, b in zip(expected[key], (1, f["bytes_out"], f["bytes_in"]))]
    got = {}
    for r in rows:
        if r["net_flows"]:
            day = r["session_start"].astimezone(ZoneInfo(zone)).date()
            key = ("vpn", r["user"], r["session_start"]) if r["session_kind"] == "vpn" else ("day", r["user"], day)
            got[key] = [r["net_flows"], r["net_bytes_out"], r["net_bytes_in"]]
    assert got == dict(expected)
    assert counts.flows_unattributed == sum(1 for f in flows if f["src_ip"] == "10.9.9.9")
