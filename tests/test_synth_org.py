"""The synthetic organisation: real line shapes, consistent files, labelled cases that hold.

Every check reads the written files back with its own regular expressions (not the generator's
internals), so they also say what a parser of these formats has to accept.
"""

from __future__ import annotations

import calendar
import csv
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from exfilwatch.config import Home, load_settings, parse_settings
from exfilwatch.synth.org import (EXCHANGE_FIELDS, LABEL_HEADER, OrgDataset, generate_organisation,
                                  us_holidays)

USERS, DAYS, SEED, END = 30, 20, 3, date(2026, 10, 31)
TZ = ZoneInfo("America/New_York")
PERSONAL = {"gmail.com", "outlook.com", "yahoo.com", "proton.me"}

# --- Pulse Secure ---------------------------------------------------------------------------------

VPN_LINE = re.compile(
    r"^(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d) vpn01 PulseSecure: "
    r"(?P<local>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) - ive - \[(?P<ip>\d+\.\d+\.\d+\.\d+)\] "
    r"(?P<who>[a-z][\w.]*)\((?P<realm>Users)\)\[(?P<roles>|Users, VPN)\] - (?P<msg>.+)$"
)
VPN_RFC5424_PREFIX = re.compile(r"^<13[34]>1 (?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d) vpn01 PulseSecure: - - - ")
SID = r"\(session:(?P<sid>[0-9a-f]{8})\)"
TUNNEL_IP = r"(?P<tip>10\.20[01]\.\d+\.\d+)"
VPN_MESSAGES = {
    "primary-ok": re.compile(r"^Primary authentication successful for (?P<user>[\w.]+)/Corp AD from (?P<ip>[\d.]+)$"),
    "primary-failed": re.compile(r"^Primary authentication failed for (?P<user>[\w.]+)/Corp AD from (?P<ip>[\d.]+)$"),
    "login-failed": re.compile(r"^Login failed using auth server Corp AD \(Active Directory\)\.  Reason: Failed$"),
    "login": re.compile(rf"^Login succeeded for (?P<user>[\w.]+)/Users {SID} from (?P<ip>[\d.]+) with "
                        r"Pulse-Secure/[\d.]+ \([^)]+\) Pulse Secure/[\d.]+\.$"),
    "tunnel-start": re.compile(rf"^VPN Tunneling: Session started for user with IPv4 address {TUNNEL_IP}, "
                               r"hostname LAPTOP-[A-Z0-9]{7}$"),
    "tunnel-end": re.compile(rf"^VPN Tunneling: Session ended for user with IPv4 address {TUNNEL_IP}$"),
    "closed": re.compile(r"^Closed connection to TUN-VPN port 443 after (?P<secs>\d+) seconds, with \d+ bytes read "
                         r"\(in \d+ chunks\) and \d+ bytes written \(in \d+ chunks\)$"),
    "logout": re.compile(rf"^Logout from (?P<ip>[\d.]+) {SID}$"),
    "timeout": re.compile(rf"^Session timed out for (?P<user>[\w.]+)/Users {SID} due to inactivity \(last access "
                          r"at (?P<last>\d\d:\d\d:\d\d \d{4}/\d\d/\d\d)\)\. Idle session identified during routine "
                          r"system scan\.$"),
}

# --- Postfix --------------------------------------------------------------------------------------

PF_LINE = re.compile(r"^(?P<ts>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) mx1 "
                     r"(?P<prog>postfix/(?:submission/)?(?:smtpd|cleanup|qmgr|smtp|lmtp))\[(?P<pid>\d+)\]: (?P<rest>.+)$")
QID = r"(?P<qid>[0-9A-F]{10,12})"
HOST = r"(?P<host>[\w.\-]+)\[(?P<ip>[\d.]+)\]"
PF_MESSAGES = {
    "connect": re.compile(rf"^connect from {HOST}$"),
    "tls-in": re.compile(rf"^Anonymous TLS connection established from {HOST}: TLSv1\.3 with cipher .+$"),
    "tls-out": re.compile(r"^Trusted TLS connection established to [\w.\-]+\[[\d.]+\]:25: TLSv1\.3 with cipher .+$"),
    "disconnect": re.compile(rf"^disconnect from {HOST} ehlo=2 starttls=1 (?:auth=1 )?mail=1 rcpt=\d+ data=1 quit=1 "
                             r"commands=\d+$"),
    "client": re.compile(rf"^{QID}: client={HOST}(?:, sasl_method=LOGIN, sasl_username=(?P<sasl>\S+))?$"),
    "message-id": re.compile(rf"^{QID}: message-id=<[^<>@\s]+@[\w.\-]+>$"),
    "from": re.compile(rf"^{QID}: from=<(?P<sender>[^<>\s]+)>, size=(?P<size>\d+), nrcpt=(?P<nrcpt>\d+) \(queue active\)$"),
    "to": re.compile(rf"^{QID}: to=<(?P<rcpt>[^<>\s]+)>, relay=[\w.\-]+\[[\d.]+\]:(?:24|25), delay=[\d.]+, "
                     r"delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, dsn=2\.0\.0, status=sent \(250 .+\)$"),
    "removed": re.compile(rf"^{QID}: removed$"),
}


@dataclass
class Session:
    sid: str
    user: str
    start: datetime
    end: datetime | None = None  # logout or timeout line; None: never logged
    tunnel: str | None = None


@dataclass
class Message:
    qid: str
    submitted: datetime | None = None  # the client= line
    queued: datetime | None = None  # the qmgr from= line
    removed: datetime | None = None
    sender: str = ""
    size: int = 0
    nrcpt: int = 0
    client_ip: str = ""
    sasl: str | None = None
    rcpts: list[str] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def day(self) -> date:
        return self.submitted.date()


def _local(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=TZ)


def parse_vpn(path: Path) -> tuple[dict[str, Session], list[tuple[str, str, dict]]]:
    sessions: dict[str, Session] = {}
    events = []
    waiting_tunnel: dict[str, str] = {}  # user -> the session id whose tunnel starts next
    for line in path.read_text(encoding="utf-8").splitlines():
        m = VPN_LINE.match(line)
        assert m, f"not a Pulse Secure standard line: {line}"
        exact = datetime.fromisoformat(m["iso"])  # the header's time is the body's local time with its offset
        assert exact.replace(tzinfo=None) == exact.astimezone(TZ).replace(tzinfo=None) == _local(m["local"]).replace(
            tzinfo=None), line
        kinds = [(k, p.match(m["msg"])) for k, p in VPN_MESSAGES.items() if p.match(m["msg"])]
        assert len(kinds) == 1, f"message of no known kind: {m['msg']}"
        kind, mm = kinds[0]
        fields = {**m.groupdict(), **mm.groupdict()}
        events.append((kind, m["who"], fields))
        when = exact
        if kind == "login":
            assert fields["user"] == m["who"] and fields["ip"] == m["ip"]
            assert fields["sid"] not in sessions, "session ids are unique"
            sessions[fields["sid"]] = Session(fields["sid"], m["who"], when)
            waiting_tunnel[m["who"]] = fields["sid"]
        elif kind == "tunnel-start":
            sessions[waiting_tunnel.pop(m["who"])].tunnel = fields["tip"]
        elif kind in ("logout", "timeout"):
            s = sessions[fields["sid"]]
            assert s.user == m["who"] and s.end is None and when >= s.start
            s.end = when
    return sessions, events


def _bsd(text: str) -> datetime:
    return datetime.strptime(f"2026 {text}", "%Y %b %d %H:%M:%S").replace(tzinfo=TZ)


def parse_maillog(path: Path) -> tuple[dict[str, Message], dict[str, int]]:
    messages: dict[str, Message] = {}
    kinds: dict[str, int] = defaultdict(int)
    previous = None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = PF_LINE.match(line)
        assert m, f"not a Postfix syslog line: {line}"
        when = _bsd(m["ts"])
        assert previous is None or when >= previous, f"maillog out of time order at: {line}"
        previous = when
        found = [(k, p.match(m["rest"])) for k, p in PF_MESSAGES.items() if p.match(m["rest"])]
        assert len(found) == 1, f"Postfix line of no known kind: {line}"
        kind, mm = found[0]
        kinds[kind] += 1
        if "qid" not in mm.groupdict():
            continue
        msg = messages.setdefault(mm["qid"], Message(mm["qid"]))
        msg.lines[kind] += 1
        if kind == "client":
            msg.submitted, msg.client_ip, msg.sasl = when, mm["ip"], mm["sasl"]
        elif kind == "from":
            msg.queued, msg.sender, msg.size, msg.nrcpt = when, mm["sender"], int(mm["size"]), int(mm["nrcpt"])
        elif kind == "to":
            msg.rcpts.append(mm["rcpt"])
        elif kind == "removed":
            msg.removed = when
    return messages, kinds


def domain(address: str) -> str:
    return address.rsplit("@", 1)[1]


def read_labels(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == LABEL_HEADER
        return list(reader)


# --- fixtures -------------------------------------------------------------------------------------


@dataclass
class Org:
    ds: OrgDataset
    sessions: dict[str, Session]
    vpn_events: list
    messages: dict[str, Message]
    kinds: dict[str, int]
    labels: list[dict[str, str]]
    config: dict

    def case(self, kind: str):
        return next(c for c in self.ds.cases if c.kind == kind)

    def sent_by(self, user: str) -> list[Message]:
        return [m for m in self.messages.values() if m.sender == f"{user}@corp.example"]


@pytest.fixture(scope="module")
def org(tmp_path_factory) -> Org:
    ds = generate_organisation(tmp_path_factory.mktemp("org"), users=USERS, days=DAYS, seed=SEED, end=END)
    sessions, events = parse_vpn(ds.vpn_log)
    messages, kinds = parse_maillog(ds.mail_log)
    config = yaml.safe_load(ds.config.read_text(encoding="utf-8"))
    return Org(ds, sessions, events, messages, kinds, read_labels(ds.labels), config)


# --- tests ----------------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    def files(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    kwargs = dict(users=14, days=14, end=END, network=False)
    a = files(generate_organisation(tmp_path / "a", seed=5, **kwargs).out_dir)
    b = files(generate_organisation(tmp_path / "b", seed=5, **kwargs).out_dir)
    c = files(generate_organisation(tmp_path / "c", seed=6, **kwargs).out_dir)
    assert set(a) == {"vpn.log", "maillog", "conn.log", "config.yaml", "labels.csv"}
    assert a == b
    assert a["vpn.log"] != c["vpn.log"] and a["maillog"] != c["maillog"]


def test_dataset_counts_match_the_files(org):
    ds = org.ds
    assert ds.users == USERS and ds.mail == "postfix"
    assert ds.sessions == len(org.sessions)
    assert ds.messages == len(org.messages)
    assert ds.vpn_lines == len(org.vpn_events)
    assert ds.mail_lines == sum(org.kinds.values())
    conn_rows = [l for l in ds.conn_log.read_text().splitlines() if not l.startswith("#")]
    assert ds.flows == len(conn_rows) > 0


def test_vpn_log_has_the_pulse_secure_shapes_and_session_life(org):
    kinds = defaultdict(int)
    for kind, _, _ in org.vpn_events:
        kinds[kind] += 1
    for kind in VPN_MESSAGES:  # every shape occurs
        assert kinds[kind] > 0, kind
    assert kinds["login"] == len(org.sessions) == kinds["tunnel-start"] == kinds["primary-ok"]
    assert kinds["primary-failed"] == kinds["login-failed"]
    ends = defaultdict(int)
    for s in org.sessions.values():
        assert s.tunnel is not None
        ends["open" if s.end is None else "closed"] += 1
    assert ends["open"] > 0 and ends["closed"] > 0.8 * len(org.sessions)  # a few ends are never logged
    assert kinds["timeout"] > 0.1 * kinds["logout"]
    # remote workers log in on weekday mornings and stay for hours
    starts = [s.start for s in org.sessions.values()]
    assert sum(s.weekday() < 5 for s in starts) > 0.9 * len(starts)
    morning = [s for s in org.sessions.values() if s.start.weekday() < 5 and 5 <= s.start.hour < 11]
    assert len(morning) > 0.6 * len(starts)
    hours = sorted((s.end - s.start).total_seconds() / 3600 for s in morning if s.end)
    assert 5 < hours[len(hours) // 2] < 11
    # re-login: some users have two sessions on one day
    per_day = defaultdict(int)
    for s in org.sessions.values():
        per_day[(s.user, s.start.date())] += 1
    assert max(per_day.values()) >= 2


def test_vpn_rfc5424_form(tmp_path):
    ds = generate_organisation(tmp_path, users=14, days=14, end=END, network=False, vpn_syslog="rfc5424")
    for line in ds.vpn_log.read_text().splitlines():
        prefix = VPN_RFC5424_PREFIX.match(line)
        assert prefix, line
        # the rest is the same standard message as in the rsyslog form
        body = line[prefix.end():]
        assert VPN_LINE.match(f"{prefix['iso']} vpn01 PulseSecure: {body}"), line


def test_postfix_messages_are_complete_and_realistic(org):
    assert org.kinds["connect"] == org.kinds["disconnect"] == org.kinds["client"] == len(org.messages)
    for msg in org.messages.values():
        assert dict(msg.lines) == {"client": 1, "message-id": 1, "from": 1, "to": msg.nrcpt, "removed": 1} | (
            {} if msg.nrcpt else {}), msg
        assert msg.nrcpt == len(msg.rcpts) == len(set(msg.rcpts)) >= 1
        assert msg.submitted <= msg.queued <= msg.removed
        assert msg.size > 1000
        if msg.sender.endswith("@corp.example"):
            assert msg.sasl == msg.sender  # submissions authenticate as their sender
        else:
            assert msg.sasl is None and all(r.endswith("@corp.example") for r in msg.rcpts)
    internal = [m for m in org.messages.values() if m.sender.endswith("@corp.example")]
    partners = {domain(r) for m in internal for r in m.rcpts if domain(r).startswith("partner")}
    assert len(partners) > 20
    personal = [m for m in internal if any(domain(r) in PERSONAL for r in m.rcpts)]
    assert personal and len(personal) < 0.1 * len(internal)
    sizes = sorted(m.size for m in internal)
    assert sizes[len(sizes) // 2] < 200_000 < sizes[-1]  # small typically, attachments sometimes large
    assert any(m.size > 1_000_000 for m in internal)


def test_injected_cases_happen_inside_a_vpn_session_of_their_user(org):
    checked = 0
    for case in org.ds.cases:
        if case.expected != "fire":
            continue
        user = case.user
        msgs = [m for m in org.sent_by(user) if set(m.rcpts) & set(case.recipients)]
        assert msgs, case.case_id
        assert {m.day for m in msgs} == set(case.days)
        for msg in msgs:
            inside = [s for s in org.sessions.values() if s.user == user and s.sid in case.sessions
                      and s.start <= msg.submitted and msg.removed <= (s.end or s.start + timedelta(hours=14))]
            assert len(inside) == 1, (case.case_id, msg)
            assert msg.client_ip == inside[0].tunnel  # submitted through the tunnel
            checked += 1
    assert checked > 40


def test_labels_rows_match_the_cases(org):
    identities = {i["user"] for i in org.config["identities"]}
    first = END - timedelta(days=DAYS - 1)
    rows_by_case = defaultdict(list)
    for row in org.labels:
        assert row["detection_id"] == "" and row["technique"] == "T1048.003"
        assert row["entity"] in identities
        assert first <= date.fromisoformat(row["day"]) <= END
        rows_by_case[row["case_id"]].append(row)
    expected = {"slow-leak": "fire", "burst": "fire", "large-upload": "fire", "month-end-finance": "quiet",
                "newsletter": "quiet", "new-hire": "quiet", "back-from-leave": "quiet", "sales-many-domains": "quiet"}
    assert set(rows_by_case) == set(expected)
    for case_id, rows in rows_by_case.items():
        assert {r["expected"] for r in rows} == {expected[case_id]}
    for case in org.ds.cases:  # one row per case, user and day
        rows = [r for r in org.labels if r["case_id"] == case.case_id and r["entity"] == case.user]
        assert sorted(r["day"] for r in rows) == sorted(d.isoformat() for d in case.days)
    fire_users = {r["entity"] for r in org.labels if r["expected"] == "fire"}
    quiet_users = {r["entity"] for r in org.labels if r["expected"] == "quiet"}
    assert not fire_users & quiet_users


def test_slow_leak_grows_to_the_own_personal_address(org):
    case = org.case("slow-leak")
    home = case.recipients[0]
    assert home == f"{case.user}.home@gmail.com"
    leak = sorted((m for m in org.sent_by(case.user) if home in m.rcpts), key=lambda m: m.submitted)
    assert len(case.days) >= 3 and len(leak) >= len(case.days)
    # nobody else mails it, and the user never mailed a personal address before the leak
    assert all(m.sender == f"{case.user}@corp.example" for m in org.messages.values() if home in m.rcpts)
    before = [m for m in org.sent_by(case.user) if m.day < min(case.days)]
    assert before and not any(domain(r) in PERSONAL for m in before for r in m.rcpts)
    per_day = defaultdict(int)
    for m in leak:
        per_day[m.day] += m.size
    days = sorted(per_day)
    third = max(1, len(days) // 3)
    early = sum(per_day[d] for d in days[:third]) / third
    late = sum(per_day[d] for d in days[-third:]) / third
    assert late > 2 * early  # larger (and more often) in the last weeks
    assert max(m.size for m in leak[-third:]) > 5_000_000


def test_burst_goes_to_many_never_mailed_domains_in_one_session(org):
    case = org.case("burst")
    (day,) = case.days
    (sid,) = case.sessions
    burst = [m for m in org.sent_by(case.user) if m.day == day and set(m.rcpts) & set(case.recipients)]
    domains = {domain(r) for m in burst for r in m.rcpts}
    assert len(burst) >= 30 and len(domains) >= 25
    earlier = {domain(r) for m in org.sent_by(case.user) if m.day < day for r in m.rcpts}
    assert not domains & earlier
    session = org.sessions[sid]
    assert all(session.start <= m.submitted <= (session.end or session.start + timedelta(hours=14)) for m in burst)


def test_large_upload_is_one_40mb_message_to_a_personal_address(org):
    case = org.case("large-upload")
    (address,) = case.recipients
    assert domain(address) in PERSONAL
    msgs = [m for m in org.messages.values() if address in m.rcpts]
    assert len(msgs) == 1 and msgs[0].size >= 40 * 2**20 and msgs[0].rcpts == [address]
    assert msgs[0].day == case.days[0]


def test_benign_hard_cases_hold(org):
    # the new hire: nothing at all before the first day, ordinary mail afterwards
    hire = org.case("new-hire")
    start = min(hire.days)
    assert start == END - timedelta(days=5)
    assert not [m for m in org.sent_by(hire.user) if m.day < start]
    assert not [s for s in org.sessions.values() if s.user == hire.user and s.start.date() < start]
    sent = org.sent_by(hire.user)
    assert sent and max(m.size for m in sent) < 30_000_000
    # back from leave: nothing sent and no VPN during the leave, mail again afterwards
    back = org.case("back-from-leave")
    lo, hi = (date.fromisoformat(x) for x in re.search(r"leave \((\S+) to (\S+)\)", back.description).groups())
    assert (hi - lo).days + 1 == min(21, max(3, DAYS // 4)) and hi < min(back.days)
    assert not [m for m in org.sent_by(back.user) if lo <= m.day <= hi]
    assert not [s for s in org.sessions.values() if s.user == back.user and lo <= s.start.date() <= hi]
    assert [m for m in org.sent_by(back.user) if m.day > hi]
    # month-end: the last business day of the month, large attachments to partners
    holidays = us_holidays(2026)
    for case in (c for c in org.ds.cases if c.kind == "month-end"):
        for day in case.days:
            rest = [day + timedelta(days=k) for k in range(1, calendar.monthrange(day.year, day.month)[1] - day.day + 1)]
            assert day.weekday() < 5 and not [d for d in rest if d.weekday() < 5 and d not in holidays]
            big = [m for m in org.sent_by(case.user) if m.day == day and m.size > 3_000_000
                   and all(domain(r).startswith("partner") for r in m.rcpts)]
            assert len(big) >= 3
        weekly = [m for m in org.sent_by(case.user) if m.day not in case.days and m.size > 3_000_000]
        assert len(weekly) >= 3  # the same kind of mail is part of the history
    # the newsletter: a service account on the marketing server, many recipients, weekly
    news = org.case("newsletter")
    letters = [m for m in org.messages.values() if m.sender == "newsletter@corp.example"]
    assert {m.day for m in letters} == set(news.days) and len(news.days) >= 2
    assert all(m.client_ip == "10.30.0.60" for m in letters)
    assert min(sum(m.nrcpt for m in letters if m.day == d) for d in news.days) >= 40
    # the sales user mails many domains every day
    seller = org.case("sales-many-domains")
    per_day = defaultdict(set)
    for m in org.sent_by(seller.user):
        per_day[m.day] |= {domain(r) for r in m.rcpts if domain(r) != "corp.example"}
    weekdays = [len(v) for d, v in per_day.items() if d.weekday() < 5]
    assert sorted(weekdays)[len(weekdays) // 2] >= 8


def test_config_has_identities_assets_and_parses(org):
    config = org.config
    assert config["timezone"] == "America/New_York" and config["internal_domains"] == ["corp.example"]
    assert {a.get("category") for a in config["assets"]} >= {"email_server", "workstation", "vpn_pool"}
    identities = config["identities"]
    assert len(identities) == USERS + 1  # and the newsletter's service account
    for ident in identities:
        assert set(ident) == {"user", "emails", "vpn_accounts", "hosts", "department"}
        assert ident["department"] in {"sales", "finance", "marketing", "engineering", "hr", "legal", "exec"}
    people = {i["user"]: i for i in identities}
    vpn_users = {s.user for s in org.sessions.values()}
    assert vpn_users <= {a for i in identities for a in i["vpn_accounts"]}
    senders = {m.sender for m in org.messages.values() if m.sender.endswith("@corp.example")}
    assert senders <= {e for i in identities for e in i["emails"]}
    # office days: mail is submitted from the user's own workstation
    host_of = {h: u for u, i in people.items() for h in i["hosts"]}
    office = [m for m in org.messages.values() if m.client_ip.startswith("10.20.")]
    assert office and all(host_of[m.client_ip] == m.sender.split("@")[0] for m in office)
    settings = parse_settings(config, str(org.ds.config))
    assert settings.internal_domains == ["corp.example"]


def test_conn_log_holds_the_submissions(org):
    rows = [l.split("\t") for l in org.ds.conn_log.read_text().splitlines() if not l.startswith("#")]
    assert all(len(r) == 21 for r in rows)
    ts = [float(r[0]) for r in rows]
    assert ts == sorted(ts)
    to_relay = {(r[2], int(r[9])) for r in rows if r[4] == "10.10.0.5" and r[5] == "587"}
    upload = org.case("large-upload")
    (msg,) = [m for m in org.messages.values() if upload.recipients[0] in m.rcpts]
    assert any(ip == msg.client_ip and size >= msg.size for ip, size in to_relay)
    assert any(ip.startswith("10.200.") or ip.startswith("10.201.") for ip, _ in to_relay)


def test_exchange_message_tracking(tmp_path, org):
    ds = generate_organisation(tmp_path, users=USERS, days=DAYS, seed=SEED, end=END, mail="exchange", network=False)
    assert ds.messages == org.ds.messages  # the same mail, written the other way
    assert read_labels(ds.labels) == org.labels
    files = sorted(ds.mail_log.glob("MSGTRK*.LOG"))
    assert len(files) >= DAYS - 1
    fields = EXCHANGE_FIELDS.split(",")
    assert len(fields) == 30
    events = defaultdict(lambda: defaultdict(list))
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines[0] == "#Software: Microsoft Exchange Server"
        assert lines[1] == "#Version: 15.02.1118.007"
        assert lines[2] == "#Log-type: Message Tracking Log"
        assert re.match(r"^#Date: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", lines[3])
        assert lines[4] == "#Fields: " + EXCHANGE_FIELDS
        for row in csv.DictReader(lines[5:], fieldnames=fields):
            assert None not in row and row["schema-version"] == "15.02.1118.007"
            assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", row["date-time"])
            assert path.name == f"MSGTRK{row['date-time'][:10].replace('-', '')}-1.LOG"
            events[row["message-id"]][row["event-id"]].append(row)
    assert len(events) == ds.messages
    for rows in events.values():
        assert set(rows) <= {"RECEIVE", "SEND", "DELIVER"} and len(rows["RECEIVE"]) == 1
        (receive,) = rows["RECEIVE"]
        everyone = receive["recipient-address"].split(";")
        assert int(receive["recipient-count"]) == len(everyone)
        sent = [r for row in rows["SEND"] for r in row["recipient-address"].split(";")]
        delivered = [r for row in rows["DELIVER"] for r in row["recipient-address"].split(";")]
        assert sorted(sent + delivered) == sorted(everyone)
        assert all(not r.endswith("@corp.example") for r in sent)
        assert all(r.endswith("@corp.example") for r in delivered)
        assert {row["total-bytes"] for kind in rows.values() for row in kind} == {receive["total-bytes"]}
        outgoing = receive["sender-address"].endswith("@corp.example")
        assert receive["directionality"] == ("Originating" if outgoing else "Incoming")
    from exfilwatch.events.ingest import ingest_paths

    home = Home(root=tmp_path / "home", config_path=ds.config)
    reports = ingest_paths([ds.mail_log], home, load_settings(home))
    assert {r.source for r in reports} == {"exchange_tracking"}
    assert sum(r.quarantined for r in reports) == 0
    assert sum(r.events for r in reports) == ds.messages  # one event per message


def test_maillog_over_new_year_has_full_timestamps(tmp_path):
    ds = generate_organisation(tmp_path, users=14, days=14, end=date(2027, 1, 5), network=False)
    lines = ds.mail_log.read_text().splitlines()
    assert lines[0].startswith("2026-12-") and lines[-1].startswith("2027-01-")
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d mx1 postfix/", l) for l in lines)


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="mail must be one of"):
        generate_organisation(tmp_path, users=20, days=20, mail="sendmail")
    with pytest.raises(ValueError, match="at least 12 users"):
        generate_organisation(tmp_path, users=5, days=20)
    with pytest.raises(ValueError, match="at least 14 days"):
        generate_organisation(tmp_path, users=20, days=7)


def test_cli_generate_org(tmp_path):
    from typer.testing import CliRunner

    from exfilwatch.cli.main import app

    result = CliRunner().invoke(app, ["generate", "--org", "--users", "14", "--days", "14", "--out", str(tmp_path),
                                      "--mail", "exchange"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "vpn.log").exists() and list((tmp_path / "MessageTracking").glob("MSGTRK*.LOG"))
    bad = CliRunner().invoke(app, ["generate", "--org", "--out", str(tmp_path), "--mail", "lotus"])
    assert bad.exit_code == 2


def _ingest(ds: OrgDataset, root: Path):
    from exfilwatch.events.ingest import ingest_paths

    home = Home(root=root, config_path=ds.config)
    settings = load_settings(home)
    return {Path(r.file).name: r for r in ingest_paths([ds.vpn_log, ds.mail_log, ds.conn_log], home, settings)}


def test_generated_files_ingest_without_quarantine(org, tmp_path):
    reports = _ingest(org.ds, tmp_path / "home")
    assert {name: r.source for name, r in reports.items()} == {
        "vpn.log": "pulse_secure", "maillog": "postfix", "conn.log": "zeek_conn"}
    for report in reports.values():
        assert report.quarantined == 0, report
        assert report.events > 0
    assert reports["maillog"].events == len(org.messages)  # one event per message
    assert reports["vpn.log"].events + sum(reports["vpn.log"].skipped.values()) == len(org.vpn_events)
    assert reports["conn.log"].events == org.ds.flows


@pytest.mark.parametrize("vpn_syslog", ["rsyslog", "rfc5424"])
def test_both_vpn_header_forms_ingest_without_quarantine(tmp_path, vpn_syslog):
    ds = generate_organisation(tmp_path / "logs", users=14, days=14, end=END, network=False, vpn_syslog=vpn_syslog)
    report = _ingest(ds, tmp_path / "home")["vpn.log"]
    assert report.quarantined == 0 and report.events > 0
