"""Write the test data of the four per-user email session rules (src/exfilwatch/content/detections/em_*/data/).

Real formats, written by the synth writers: a Pulse Secure syslog (standard format: login, tunnel
start/end, closed connection, logout) and a Postfix maillog (smtpd / cleanup / qmgr / smtp|lmtp /
removed per message), time zone America/New_York. Every user has 20 days of ordinary sessions (one VPN
session a day, 09:00 to 17:00) before the judged day, 2026-10-15, whose session ends at 12:10;
the tests run at 14:30 (window 12:00 to 13:00).

    python tests/make_em_detection_data.py      # rewrites the files
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from exfilwatch.synth.writers import postfix, pulse_secure

ZONE = ZoneInfo("America/New_York")
JUDGED = date(2026, 10, 15)
HISTORY_DAYS = 20
ROOT = Path(__file__).resolve().parents[1] / "src" / "exfilwatch" / "content" / "detections"
PARTNERS = ["partner1.com", "partner2.com"]


@dataclass
class Message:
    t: datetime
    sender: str
    recipients: list[str]
    size: int


@dataclass
class Log:
    vpn: list[tuple[datetime, dict]] = field(default_factory=list)
    mail: list[tuple[datetime, str, int, postfix.Message]] = field(default_factory=list)
    queue: int = 0x1A2B3C000

    def session(self, user: str, start: datetime, end: datetime, sid: str, tunnel_ip: str, client_ip: str) -> None:
        def event(t: datetime, kind: int, **fields) -> None:
            self.vpn.append((t, {"event": kind, "user": user, "ip": client_ip, "network": "Default Network", **fields}))

        event(start, pulse_secure.LOGIN, session=sid,
              agent="Pulse-Secure/9.1.15.8591 (Windows 10) Pulse Secure/9.1.15.8591")
        event(start + timedelta(seconds=6), pulse_secure.TUNNEL_START, tunnel=tunnel_ip, hostname=f"LAPTOP-{user.upper()}")
        event(end - timedelta(seconds=3), pulse_secure.TUNNEL_END, tunnel=tunnel_ip)
        event(end - timedelta(seconds=2), pulse_secure.CLOSED, seconds=int((end - start).total_seconds()),
              bytes_read=48213, read_chunks=120, bytes_written=1823221, written_chunks=98)
        event(end, pulse_secure.LOGOUT, session=sid)

    def message(self, m: Message, client_ip: str) -> None:
        self.queue += 0x1F3
        q = f"{self.queue:X}"
        t = m.t
        user = m.sender.split("@")[0]
        self.mail.append((t, "postfix/submission/smtpd", 2101, postfix.client(q, "unknown", client_ip, "PLAIN", user)))
        self.mail.append((t, "postfix/cleanup", 2102, postfix.cleanup(q, f"<{q}.{user}@corp.example>")))
        self.mail.append((t, "postfix/qmgr", 2103, postfix.queued(q, m.sender, m.size, len(m.recipients))))
        for i, rcpt in enumerate(m.recipients):
            domain = rcpt.split("@")[1]
            if domain == "corp.example":
                daemon = "postfix/lmtp"
                delivery = postfix.delivery(q, rcpt, "mailstore01.corp.example", "10.10.0.21", 24, 0.2, (0.1, 0, 0, 0.1),
                                            "250 2.0.0 Saved")
            else:
                daemon = "postfix/smtp"
                delivery = postfix.delivery(q, rcpt, f"mx.{domain}", f"203.0.113.{10 + i}", 25, 1.2, (0.1, 0, 0.5, 0.6),
                                            f"250 2.0.0 Ok: queued as {q}{i}")
            self.mail.append((t + timedelta(seconds=1), daemon, 2104, delivery))
        self.mail.append((t + timedelta(seconds=2), "postfix/qmgr", 2103, postfix.removed(q)))

    def write(self, folder: Path, prefix: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        vpn = sorted(self.vpn, key=lambda x: x[0])
        with open(folder / f"{prefix}_vpn.log", "w") as handle:
            for text in pulse_secure.lines({**record, "t": t.astimezone(ZONE)} for t, record in vpn):
                handle.write(text + "\n")
        mail = sorted(self.mail, key=lambda x: x[0])
        with open(folder / f"{prefix}_maillog", "w") as handle:
            for text in postfix.lines(postfix.Entry(t.astimezone(ZONE), program, pid, message, host="mail01",
                                                    stamp="rfc3339") for t, program, pid, message in mail):
                handle.write(text + "\n")


def at(day: date, hour: float) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=ZONE) + timedelta(hours=hour)


class Org:
    """Users with ordinary habits; `judged` activity is added per test."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.log = Log()
        self.n = 0

    def ip(self, user: str) -> tuple[str, str]:
        k = sum(map(ord, user)) % 200
        return f"10.200.0.{k + 10}", f"198.51.100.{k + 10}"

    def day(self, user: str, day: date, end_hour: float, habit: dict, extra: list[Message] | None = None) -> None:
        tunnel, client = self.ip(user)
        self.n += 1
        start, end = at(day, 9), at(day, end_hour)
        self.log.session(user, start, end, f"{self.n:08x}", tunnel, client)
        sender = f"{user}@corp.example"
        span = (end - start).total_seconds() - 600
        for _ in range(self.rng.randint(*habit["messages"])):
            domains = habit.get("domains") or PARTNERS
            rcpt = [f"contact{self.rng.randint(1, 5)}@{d}" for d in self.rng.sample(domains, habit.get("per_message", 1))]
            size = int(self.rng.uniform(*habit["size"]))
            self.log.message(Message(start + timedelta(seconds=300 + self.rng.uniform(0, span)), sender, rcpt, size),
                             tunnel)
        self.log.message(Message(start + timedelta(seconds=400), sender, ["team@corp.example"], 20_000), tunnel)
        for m in extra or []:
            self.log.message(m, tunnel)

    def history(self, user: str, habit: dict) -> None:
        for i in range(HISTORY_DAYS, 0, -1):
            self.day(user, JUDGED - timedelta(days=i), 17, habit)


ORDINARY = {"messages": (2, 4), "size": (100_000, 400_000)}
HEAVY_SENDER = {"messages": (25, 35), "size": (20_000, 80_000)}
SALES = {"messages": (12, 16), "size": (50_000, 150_000), "per_message": 1,
         "domains": [f"customer{i}.com" for i in range(1, 40)]}
FINANCE = {"messages": (3, 4), "size": (5_000_000, 8_000_000)}


def burst(user: str, count: int, domains: list[str], size: int, t0: datetime) -> list[Message]:
    return [Message(t0 + timedelta(seconds=37 * i), f"{user}@corp.example", [f"someone@{domains[i % len(domains)]}"],
                    size) for i in range(count)]


def write_rule(rule: str, positive: dict[str, list[Message]], negative: dict[str, list[Message]],
               habits: dict[str, dict], new_users: dict[str, list[Message]] | None = None) -> None:
    for kind, judged in (("positive", positive), ("negative", negative)):
        org = Org(seed=len(rule))
        for user, habit in habits.items():
            org.history(user, habit)
            org.day(user, JUDGED, 12 + 10 / 60, habit, judged.get(user, []))
        if kind == "positive" and new_users:
            for user, extra in new_users.items():
                org.day(user, JUDGED, 12 + 10 / 60, ORDINARY, extra)
        if kind == "negative":
            for user, extra in (negative.get("_new_users") or {}).items():
                org.day(user, JUDGED, 12 + 10 / 60, ORDINARY, extra)
        org.log.write(ROOT / rule / "data", kind)


def main() -> None:
    t0 = at(JUDGED, 10)
    write_rule("em_fnum",
               positive={"alice": burst("alice", 30, PARTNERS, 100_000, t0)},
               negative={"carol": burst("carol", 4, PARTNERS, 50_000, t0)},
               habits={"alice": ORDINARY, "bob": ORDINARY, "carol": HEAVY_SENDER})
    write_rule("em_dnum",
               positive={"alice": burst("alice", 24, [f"new{i}.com" for i in range(24)], 50_000, t0)},
               negative={"sam": burst("sam", 3, ["customer7.com", "customer8.com", "customer9.com"], 50_000, t0)},
               habits={"alice": ORDINARY, "bob": ORDINARY, "sam": SALES})
    write_rule("em_bsum",
               positive={"alice": burst("alice", 2, PARTNERS, 18_000_000, t0)},
               negative={"fin": burst("fin", 1, ["auditor.com"], 6_000_000, t0)},
               habits={"alice": ORDINARY, "bob": ORDINARY, "fin": FINANCE})
    write_rule("em_bsum_personal",
               positive={"alice": [Message(t0, "alice@corp.example", ["alice.home@gmail.com"], 12_000_000)]},
               negative={"alice": [Message(t0, "alice@corp.example", ["alice.home@gmail.com"], 300_000)],
                         "_new_users": {"neo": [Message(t0, "neo@corp.example", ["neo1990@hotmail.com"], 8_000_000)]}},
               habits={"alice": ORDINARY, "bob": ORDINARY},
               new_users={"neo": [Message(t0, "neo@corp.example", ["neo1990@hotmail.com"], 60_000_000)]})


if __name__ == "__main__":
    main()
