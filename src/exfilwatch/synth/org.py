"""The synthetic organisation: VPN, mail and flow logs of a whole company, with labelled leaks.

`generate_organisation(out_dir, users, days, seed, end, mail, timezone, hosts_per_user)` writes

* `vpn.log` — Pulse Secure / Ivanti Connect Secure syslog, the appliance's "standard" format
  (`<date> <time> - ive - [ip] user(realm)[roles] - message`) behind the header rsyslog writes
  (`2026-10-05T08:59:12-04:00 vpn01 PulseSecure: `, the shape of real captured files), or the
  RFC 5424 header the appliance sends (`<134>1 2026-10-05T08:59:12-04:00 vpn01 PulseSecure: - - - `)
  with `vpn_syslog="rfc5424"`: primary authentication, login succeeded (with session id and
  agent), VPN tunnel started (tunnel address, host name) and ended, closed connection (seconds,
  bytes), logout, session timed out (with the last access), failed logins (users' typos and
  password spraying from the internet).
* `maillog` (`mail="postfix"`) — the Postfix relay `mx1` (10.10.0.5): users submit on port 587
  with SASL (`postfix/submission/smtpd`), the internet delivers on 25, mailboxes get their mail
  over LMTP from `mbx1` (10.10.0.6): smtpd connect / TLS / `client=` / disconnect, `cleanup`
  message-id, `qmgr` `from=<…>, size=N, nrcpt=N (queue active)` and `removed`, `smtp` / `lmtp`
  `to=<…>, relay=…, delay=…, delays=…, dsn=2.0.0, status=sent (250 …)`, in time order as the
  server writes them, with hex queue ids. Timestamps are BSD syslog (`Oct  5 08:59:12`, local
  time, no year: the file's modification time is set to the end of the last day, where a reader
  takes the year from), or RFC 3339 with `syslog_timestamps="rfc3339"` (the default when the period
  spans New Year).
  Or `MessageTracking/MSGTRK<yyyymmdd>-1.LOG` (`mail="exchange"`): Exchange 2019 (EXCH1,
  10.10.0.6) message tracking logs, one file per UTC day, the `#Software/#Version/#Log-type/#Date/
  #Fields` header and per message RECEIVE (all recipients), SEND (external ones), DELIVER
  (internal ones).
* `conn.log` — Zeek conn.log: the network generator's flows (exfilwatch.synth.network, hosts =
  users × hosts_per_user, when it is installed and accepts the size; its own labels go to
  `network_labels.csv`), plus a flow for each submission from the client (VPN tunnel address,
  workstation, webmail, marketing server) to the relay, sized as the message.
* `config.yaml` — time zone, asset inventory, `internal_domains: [corp.example]`, and
  `identities` (user, emails, vpn_accounts, hosts, department) for every employee and the
  newsletter's service account.
* `labels.csv` — `case_id,detection_id,entity,day,technique,expected,description`: one row per
  case and local day it covers (entity = user; detection_id empty = any of the four EM rules;
  T1048.003; the description names the VPN sessions of injected mail).

The people: `users` employees in seven departments (sales, finance, marketing, engineering, hr,
legal, exec), each remote, hybrid or in the office, with their own log-normal mail rate, share
of external recipients, partner domains (of 200 `partnerNNN.example`), attachment habit and
working hours; Fridays quieter, weekends nearly empty, US federal holidays off, a few days of
leave. Remote users log in to the VPN most weekday mornings for the working day; some split the
day (lunch), some come back in the evening, some never log out (the session times out, or its
end is never logged). Mail sent during a VPN session is timestamped inside it and submitted from
the tunnel address; on office days from the user's workstation; in the evening a little from
the phone (webmail). Personal webmail (gmail.com, outlook.com, yahoo.com, proton.me) is rare and
small; the internet's mail comes in too.

Injected cases (expected `fire`), each inside a VPN session of its user:
1. `slow-leak` — a user mails files to their own personal address (`first.last.home@gmail.com`),
   more often and larger over the last weeks (CERT insider-threat scenario 4);
2. `burst` — one session with 40 messages to 32 domains the user never mailed;
3. `large-upload` — one 40 MB message to a personal address.
Benign hard cases (expected `quiet`): finance month-end reporting (large attachments to
partners on the last business day of each month, and weekly reports of the same kind, so it is
in the history), the weekly marketing newsletter (service account `svc.newsletter` on the
marketing automation server, hundreds of recipients in batches of 50), a new hire five days
before the end with no history, a user back from three weeks' leave, a sales user who mails
many domains every day.

Everything is a function of the parameters: no wall clock, one seed, the same bytes each time.
Volumes are generated with numpy (no Python loop per message or per user-day) and the lines
are formatted and sorted by DuckDB.
"""

from __future__ import annotations

import calendar
import csv
import os
import shutil
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pyarrow as pa
import yaml

from .writers import _text, exchange, postfix, pulse_secure, zeek_conn

INTERNAL_DOMAIN = "corp.example"
MAIL_HOST = "mx1"
# Addresses shared with the network generator (exfilwatch.synth.network): mx1, the mailbox
# servers, the workstation range; the VPN pools are this module's own.
MAIL_SERVER = ("mx1.corp.example", "10.10.0.5")  # the Postfix relay / Exchange transport
MAIL_STORE = ("mbx1.corp.example", "10.10.0.6")  # mailboxes (LMTP from Postfix; MBX01 for Exchange)
WEBMAIL = ("webmail.corp.example", "10.10.0.7")  # webmail / ActiveSync front end
MARKETING_SERVER = ("mkt-auto01.corp.example", "10.30.0.60")
VPN_HOST = "vpn01"
VPN_REALM = "Users"
AUTH_SERVER = "Corp AD"
NEWSLETTER_USER = "svc.newsletter"
NEWSLETTER_ADDRESS = f"newsletter@{INTERNAL_DOMAIN}"
TECHNIQUE = "T1048.003"
PARTNER_DOMAINS = 200
LABEL_HEADER = ["case_id", "detection_id", "entity", "day", "technique", "expected", "description"]
MAIL_FORMATS = ("postfix", "exchange")
EXCHANGE_SERVER = ("EXCH1", "10.10.0.6")  # Exchange 2019 mailbox server with its transport
EXCHANGE_VERSION = "15.02.1118.007"
EXCHANGE_FIELDS = exchange.FIELDS

DEPARTMENTS = ("sales", "finance", "marketing", "engineering", "hr", "legal", "exec")
DEPT_SHARE = np.array([0.18, 0.10, 0.10, 0.44, 0.07, 0.06, 0.05])
DEPT_MSGS = np.array([11.0, 7.0, 8.0, 4.5, 6.0, 7.0, 9.0])  # median messages sent per working day
DEPT_EXTERNAL = np.array([0.55, 0.30, 0.40, 0.15, 0.15, 0.35, 0.30])  # share of external recipients
DEPT_ATTACH = np.array([0.25, 0.35, 0.30, 0.15, 0.25, 0.35, 0.20])  # share of messages with attachments
DEPT_PARTNERS = np.array([8.0, 3.0, 4.0, 2.0, 2.0, 3.0, 4.0])  # mean number of partner domains
SALES, FINANCE, MARKETING, ENGINEERING, HR, LEGAL, EXEC = range(7)
REMOTE, HYBRID, OFFICE = range(3)
MODE_SHARE = np.array([0.45, 0.40, 0.15])
MODE_VPN = np.array([0.92, 0.50, 0.03])  # chance of a VPN day on a working day
DOW_FACTOR = np.array([1.10, 1.05, 1.0, 1.0, 0.80, 0.30, 0.30])

FIRST_NAMES = (
    "alice bob carol david emma frank grace henry irene jack karen liam maria nathan olivia peter "
    "quinn rachel samuel tina umar victoria william xenia yusuf zoe adam beth chris diana ethan fiona "
    "george hannah ian julia kevin laura mike nina oscar paula ryan sara tom ursula vincent wendy "
    "aaron bianca caleb daria elijah freya gavin helena isaac jasmine kyle lena marcus nora owen "
    "priya raj sofia theo vera wesley yara zack amir chloe dmitri elena felix gina hugo ivy jonas "
    "kira leo mila noah pia ruben selma tariq uma viktor willa ana boris cora dylan eva finn gemma"
).split()
LAST_NAMES = (
    "smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez lopez "
    "gonzalez wilson anderson thomas taylor moore jackson martin lee perez thompson white harris "
    "sanchez clark ramirez lewis robinson walker young allen king wright scott torres nguyen hill "
    "flores green adams nelson baker hall rivera campbell mitchell carter roberts gomez phillips "
    "evans turner diaz parker cruz edwards collins reyes stewart morris morales murphy cook rogers "
    "gutierrez ortiz morgan cooper peterson bailey reed kelly howard ramos kim cox ward richardson "
    "watson brooks chavez wood james bennett gray mendoza ruiz hughes price alvarez castillo sanders "
    "patel myers long ross foster jimenez powell jenkins perry russell sullivan bell coleman butler"
).split()
DOMAIN_WORDS_A = (
    "blue green red silver golden north south east west bright clear rapid prime true open smart "
    "swift grand urban metro coastal alpine summit river lake harbor stone oak pine cedar maple iron "
    "copper crystal nova apex vertex"
).split()
DOMAIN_WORDS_B = (
    "logistics systems analytics labs partners holdings ventures solutions networks consulting media "
    "health capital foods energy robotics designs works group supply trading freight realty studio "
    "insights dynamics industries materials biotech finance legal security cloud data retail"
).split()
PERSONAL_PROVIDERS = (  # domain, MX host, MX address, share of personal recipients
    ("gmail.com", "gmail-smtp-in.l.google.com", "203.0.113.26", 0.55),
    ("outlook.com", "outlook-com.olc.protection.outlook.com", "203.0.113.33", 0.20),
    ("yahoo.com", "mta7.am0.yahoodns.net", "203.0.113.41", 0.15),
    ("proton.me", "mail.protonmail.ch", "203.0.113.50", 0.10),
)
AGENTS = (
    "Pulse-Secure/9.1.15.8591 (Windows 10) Pulse Secure/9.1.15.8591",
    "Pulse-Secure/9.1.14.6529 (Windows 10) Pulse Secure/9.1.14.6529",
    "Pulse-Secure/9.1.15.8591 (Macintosh; Intel Mac OS X 12_6) Pulse Secure/9.1.15.8591",
)
SUBJECTS = (
    "Quick question", "Meeting notes", "Updated proposal", "Follow-up", "Contract draft", "Invoice",
    "Weekly status", "Q3 forecast", "Agenda for Thursday", "Re: pricing", "Re: Re: next steps",
    "Slides for review", "Timesheet", "Project plan v2", "Fw: request", "Report attached",
    "Customer feedback", "Design review", "Budget", "Onboarding checklist", "Order confirmation",
)
SPRAY_NAMES = ("admin", "administrator", "test", "vpn", "user", "support", "guest", "scanner", "backup", "info")

US = 1_000_000  # microseconds per second
KIND_SUBMIT, KIND_INBOUND, KIND_NEWSLETTER = 0, 1, 2
TAG_NONE, TAG_LEAK, TAG_BURST, TAG_UPLOAD, TAG_MONTH_END, TAG_WEEKLY, TAG_NEWSLETTER = range(7)


@dataclass(frozen=True)
class OrgCase:
    """One labelled case: who, which local days, which VPN sessions, and what is expected."""

    case_id: str
    kind: str  # slow-leak, burst, large-upload, month-end, newsletter, new-hire, back-from-leave, sales-many-domains
    user: str
    expected: str  # fire | quiet
    days: tuple[date, ...]
    sessions: tuple[str, ...] = ()  # Pulse Secure session ids of the injected mail
    recipients: tuple[str, ...] = ()  # the addresses that matter (personal address, new domains)
    description: str = ""


@dataclass(frozen=True)
class OrgDataset:
    out_dir: Path
    vpn_log: Path
    mail_log: Path  # the Postfix maillog, or the folder of Exchange message tracking logs
    mail: str
    conn_log: Path
    config: Path
    labels: Path
    users: int
    sessions: int
    messages: int  # messages the mail server handled (submitted, inbound, newsletter)
    flows: int
    vpn_lines: int
    mail_lines: int
    cases: tuple[OrgCase, ...] = field(default=())
    network_labels: Path | None = None  # the network generator's own labelled cases (hosts, T1114)
    network_note: str = ""  # why conn.log holds only the org's own flows, when it does


# ----------------------------------------------------------------------------------------------
# time


class _Zone:
    """Vectorised local <-> UTC conversion for the generated period, exact across DST changes."""

    def __init__(self, tz: str, first: date, days: int):
        zone = ZoneInfo(tz)
        self.base = datetime(first.year, first.month, first.day) - timedelta(days=2)
        self.base_us = _naive_us(self.base)
        hours = (days + 6) * 24
        stamps = [self.base + timedelta(hours=h) for h in range(hours)]
        self.local_off = np.array([int(s.replace(tzinfo=zone).utcoffset().total_seconds()) for s in stamps])
        self.utc_off = np.array([
            int(s.replace(tzinfo=ZoneInfo("UTC")).astimezone(zone).utcoffset().total_seconds()) for s in stamps
        ])

    def _hour(self, us: np.ndarray) -> np.ndarray:
        return np.clip((us - self.base_us) // (3600 * US), 0, len(self.local_off) - 1)

    def to_utc(self, local_us: np.ndarray) -> np.ndarray:
        return local_us - self.local_off[self._hour(local_us)] * US

    def offset(self, utc_us: np.ndarray) -> np.ndarray:
        return self.utc_off[self._hour(utc_us)]


def _naive_us(value: datetime) -> int:
    return (value - datetime(1970, 1, 1)) // timedelta(microseconds=1)


def _observed(day: date) -> date:
    if day.weekday() == 5:
        return day - timedelta(days=1)
    if day.weekday() == 6:
        return day + timedelta(days=1)
    return day


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    first = date(year, month, 1)
    day = first + timedelta(days=(weekday - first.weekday()) % 7)
    if n > 0:
        return day + timedelta(weeks=n - 1)
    last = date(year, month, calendar.monthrange(year, month)[1])
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def us_holidays(year: int) -> set[date]:
    """US federal holidays (observed dates) of a year: days the office is closed."""
    days = {
        _observed(date(year, 1, 1)), _nth_weekday(year, 1, 0, 3), _nth_weekday(year, 2, 0, 3),
        _nth_weekday(year, 5, 0, -1), _observed(date(year, 6, 19)), _observed(date(year, 7, 4)),
        _nth_weekday(year, 9, 0, 1), _nth_weekday(year, 11, 3, 4), _observed(date(year, 12, 25)),
    }
    days.add(_nth_weekday(year, 11, 3, 4) + timedelta(days=1))
    return days


# ----------------------------------------------------------------------------------------------
# helpers


def _ip(value: str) -> int:
    a, b, c, d = (int(x) for x in value.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def _ip_str(value: int) -> str:
    return f"{value >> 24 & 255}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"


def _pool_ip(prefix: int, index: np.ndarray) -> np.ndarray:
    """Addresses in a /16 (`prefix` = first two octets as an int): .0.2 upwards, 250 per /24."""
    index = np.asarray(index, dtype=np.int64)
    return ((prefix << 16) + (index // 250) * 256 + index % 250 + 2).astype(np.int64)


def _workstation_ip(index: np.ndarray) -> np.ndarray:
    """Workstation i: 10.20.(1 + i // 250).(10 + i % 250), as in the network generator."""
    index = np.asarray(index, dtype=np.int64)
    return (_ip("10.20.0.0") + (1 + index // 250) * 256 + 10 + index % 250).astype(np.int64)


def _unique_u32(rng: np.random.Generator, n: int) -> np.ndarray:
    values = rng.integers(1 << 28, 1 << 32, size=n, dtype=np.int64)
    while True:
        _, first = np.unique(values, return_index=True)
        if len(first) == n:
            return values
        dup = np.ones(n, bool)
        dup[first] = False
        values[dup] = rng.integers(1 << 28, 1 << 32, size=int(dup.sum()), dtype=np.int64)


def _lognormal(rng: np.random.Generator, median, sigma, size=None) -> np.ndarray:
    return rng.lognormal(np.log(median), sigma, size)


# ----------------------------------------------------------------------------------------------
# the people


@dataclass
class _People:
    n: int
    names: list[str]
    first: list[str]
    last: list[str]
    dept: np.ndarray
    mode: np.ndarray
    rate: np.ndarray
    p_ext: np.ndarray
    p_personal: np.ndarray
    p_attach: np.ndarray
    start_hour: np.ndarray
    hours: np.ndarray
    start_day: np.ndarray
    leave_lo: np.ndarray
    leave_hi: np.ndarray
    home_ip: np.ndarray
    tunnel_ip: np.ndarray
    hosts: np.ndarray  # (n, hosts_per_user) office / laptop addresses
    laptop: list[str]
    agent: np.ndarray
    partner_ptr: np.ndarray  # CSR over partner_dom
    partner_dom: np.ndarray
    flat_partners: np.ndarray  # bool: picks partners uniformly (the many-domains sales user)


def _department_quota(users: int) -> np.ndarray:
    raw = DEPT_SHARE * users
    counts = np.maximum(np.floor(raw).astype(int), 1)
    while counts.sum() < users:
        counts[np.argmax(raw - counts)] += 1
    while counts.sum() > users:
        counts[np.argmax(np.where(counts > 1, counts - raw, -np.inf))] -= 1
    return counts


def _make_people(rng: np.random.Generator, users: int, hosts_per_user: int) -> _People:
    combos = len(FIRST_NAMES) * len(LAST_NAMES)
    picks = rng.choice(combos, size=users, replace=users > combos)
    first = [FIRST_NAMES[i // len(LAST_NAMES)] for i in picks]
    last = [LAST_NAMES[i % len(LAST_NAMES)] for i in picks]
    names, seen = [], {}
    for f, l in zip(first, last):
        base = f"{f}.{l}"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}{seen[base]}")
    dept = rng.permutation(np.repeat(np.arange(len(DEPARTMENTS)), _department_quota(users)))
    mode = rng.choice(3, size=users, p=MODE_SHARE)
    rate = _lognormal(rng, DEPT_MSGS[dept], 0.55)
    p_ext = np.clip(DEPT_EXTERNAL[dept] * _lognormal(rng, 1.0, 0.3, users), 0.02, 0.9)
    p_personal = rng.choice([0.0, 0.002, 0.006, 0.02], size=users, p=[0.25, 0.5, 0.2, 0.05])
    p_attach = np.clip(DEPT_ATTACH[dept] * _lognormal(rng, 1.0, 0.3, users), 0.02, 0.8)
    start_hour = np.clip(rng.normal(8.3, 0.6, users), 6.0, 10.5)
    hours = np.clip(rng.normal(8.6, 0.8, users), 6.0, 11.0)
    home = rng.choice(2 * 65536 - 4, size=users, replace=users > 2 * 65536 - 4) + 1
    home_ip = (_ip("198.18.0.0") + home).astype(np.int64)
    tunnel_ip = _pool_ip(_ip("10.200.0.0") >> 16, np.arange(users))
    hosts = _workstation_ip(np.arange(users * hosts_per_user)).reshape(users, hosts_per_user)
    alphabet = np.array(list("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"))
    laptop = ["LAPTOP-" + "".join(row) for row in alphabet[rng.integers(0, len(alphabet), size=(users, 7))]]
    agent = rng.choice(len(AGENTS), size=users, p=[0.6, 0.25, 0.15])
    n_partners = np.clip(1 + rng.poisson(DEPT_PARTNERS[dept] - 1), 1, PARTNER_DOMAINS)
    partner_ptr = np.concatenate([[0], np.cumsum(n_partners)])
    partner_dom = np.concatenate([rng.choice(PARTNER_DOMAINS, size=k, replace=False) for k in n_partners])
    return _People(
        n=users, names=names, first=first, last=last, dept=dept, mode=mode, rate=rate, p_ext=p_ext,
        p_personal=p_personal, p_attach=p_attach, start_hour=start_hour, hours=hours,
        start_day=np.zeros(users, np.int64), leave_lo=np.full(users, -1), leave_hi=np.full(users, -1),
        home_ip=home_ip, tunnel_ip=tunnel_ip, hosts=hosts, laptop=laptop, agent=agent,
        partner_ptr=partner_ptr, partner_dom=partner_dom, flat_partners=np.zeros(users, bool),
    )


def _set_partners(people: _People, user: int, domains: np.ndarray) -> None:
    counts = np.diff(people.partner_ptr)
    lists = [people.partner_dom[people.partner_ptr[i]:people.partner_ptr[i + 1]] for i in range(people.n)]
    lists[user] = np.asarray(domains)
    counts[user] = len(domains)
    people.partner_ptr = np.concatenate([[0], np.cumsum(counts)])
    people.partner_dom = np.concatenate(lists)


# ----------------------------------------------------------------------------------------------
# the address book: every mail address with its domain and the domain's mail exchanger


@dataclass
class _AddressBook:
    address: list[str] = field(default_factory=list)
    domain: list[int] = field(default_factory=list)  # index into domains
    domains: list[str] = field(default_factory=list)
    mx_host: list[str] = field(default_factory=list)
    mx_ip: list[str] = field(default_factory=list)
    out_host: list[str] = field(default_factory=list)  # the host their outgoing mail comes from
    out_ip: list[str] = field(default_factory=list)
    provider: list[int] = field(default_factory=list)  # 0 generic, 1 gmail, 2 outlook, 3 yahoo, 4 proton, 9 internal
    _dom_index: dict[str, int] = field(default_factory=dict)

    def add_domain(self, name: str, mx: str, mx_ip: str, out: str, out_ip: str, provider: int) -> int:
        self._dom_index[name] = len(self.domains)
        self.domains.append(name)
        self.mx_host.append(mx)
        self.mx_ip.append(mx_ip)
        self.out_host.append(out)
        self.out_ip.append(out_ip)
        self.provider.append(provider)
        return len(self.domains) - 1

    def add(self, local: str, domain: str) -> int:
        self.address.append(f"{local}@{domain}")
        self.domain.append(self._dom_index[domain])
        return len(self.address) - 1

    def add_many(self, locals_: list[str], domain_ids: list[int]) -> np.ndarray:
        start = len(self.address)
        self.address.extend(f"{l}@{self.domains[d]}" for l, d in zip(locals_, domain_ids))
        self.domain.extend(domain_ids)
        return np.arange(start, len(self.address))


def _generic_domain(book: _AddressBook, name: str, index: int) -> int:
    ip = f"198.51.100.{index % 250 + 2}"
    return book.add_domain(name, f"mx1.{name}", ip, f"mail-out.{name}", ip, 0)


@dataclass
class _Contacts:
    users: np.ndarray  # address of each employee
    newsletter: int
    partner_first: np.ndarray  # first contact address of each partner domain
    partner_contacts: int
    other_first: np.ndarray
    other_contacts: int
    personal: np.ndarray  # friends' and family's webmail addresses
    burst: np.ndarray  # one address at each of the never-mailed domains
    subscribers: np.ndarray


def _make_addresses(rng: np.random.Generator, book: _AddressBook, people: _People) -> _Contacts:
    internal = book.add_domain(INTERNAL_DOMAIN, MAIL_STORE[0], MAIL_STORE[1], MAIL_SERVER[0], MAIL_SERVER[1], 9)
    users = book.add_many(people.names, [internal] * people.n)
    newsletter = book.add("newsletter", INTERNAL_DOMAIN)
    for name, mx, ip, _ in PERSONAL_PROVIDERS:
        provider = 1 + [p[0] for p in PERSONAL_PROVIDERS].index(name)
        out = {1: "mail-sor-f41.google.com", 2: "mail-oln040092254.outbound.protection.outlook.com",
               3: "sonic309-21.consmr.mail.ne1.yahoo.com", 4: "mail-4022.protonmail.ch"}[provider]
        book.add_domain(name, mx, ip, out, ip, provider)
    combos = [a + b for a in DOMAIN_WORDS_A for b in DOMAIN_WORDS_B]
    order = rng.permutation(len(combos))
    n_other = min(1000, len(combos) - 80)
    partner_ids = [_generic_domain(book, f"partner{i:03d}.example", i) for i in range(PARTNER_DOMAINS)]
    other_ids = [_generic_domain(book, f"{combos[order[i]]}.example", i + 7) for i in range(n_other)]
    burst_ids = [_generic_domain(book, f"{combos[order[n_other + i]]}.example", i + 131) for i in range(80)]

    def contacts(domain_ids: list[int], per: int) -> np.ndarray:
        f = rng.integers(0, len(FIRST_NAMES), size=(len(domain_ids), per))
        l_ = rng.integers(0, len(LAST_NAMES), size=(len(domain_ids), per))
        locals_ = [f"{FIRST_NAMES[f[i, j]]}.{LAST_NAMES[l_[i, j]]}" for i in range(len(domain_ids)) for j in range(per)]
        doms = [d for d in domain_ids for _ in range(per)]
        # a name may repeat at one domain: make it unique with a digit, as a mail admin would
        seen: dict[str, int] = {}
        for k, (loc, d) in enumerate(zip(locals_, doms)):
            key = f"{loc}@{d}"
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:
                locals_[k] = f"{loc}{seen[key]}"
        return book.add_many(locals_, doms)[::per]

    partner_first = contacts(partner_ids, 12)
    other_first = contacts(other_ids, 3)
    burst = contacts(burst_ids, 1)
    n_personal = max(200, 2 * people.n)
    prov = rng.choice(len(PERSONAL_PROVIDERS), size=n_personal, p=[p[3] for p in PERSONAL_PROVIDERS])
    f = rng.integers(0, len(FIRST_NAMES), n_personal)
    l_ = rng.integers(0, len(LAST_NAMES), n_personal)
    num = rng.integers(1, 99, n_personal)
    personal = book.add_many(
        [f"{FIRST_NAMES[a]}.{LAST_NAMES[b]}{c}" for a, b, c in zip(f, l_, num)],
        [book._dom_index[PERSONAL_PROVIDERS[p][0]] for p in prov],
    )
    n_sub = int(np.clip(people.n // 2, 40, 600))
    partner_all = np.arange(partner_first[0], partner_first[-1] + 12)
    subscribers = np.concatenate([
        rng.choice(partner_all, size=int(n_sub * 0.7), replace=False),
        rng.choice(personal, size=n_sub - int(n_sub * 0.7), replace=False),
    ])
    return _Contacts(users=users, newsletter=newsletter, partner_first=partner_first, partner_contacts=12,
                     other_first=other_first, other_contacts=3, personal=personal, burst=burst,
                     subscribers=np.sort(subscribers))


# ----------------------------------------------------------------------------------------------
# the mail the server handles, accumulated as numpy arrays


class _MailBuf:
    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, *, kind: int, sender: np.ndarray, t0: np.ndarray, size: np.ndarray, client_ip: np.ndarray,
            client_host: np.ndarray, nrcpt: np.ndarray, rcpt: np.ndarray, user: np.ndarray,
            session: np.ndarray | None = None, tag: int = TAG_NONE) -> None:
        n = len(t0)
        if n == 0:
            return
        self.parts.append({
            "kind": np.full(n, kind, np.int8), "sender": np.asarray(sender, np.int64), "t0": np.asarray(t0, np.int64),
            "size": np.asarray(size, np.int64), "client_ip": np.asarray(client_ip, np.int64),
            "client_host": np.asarray(client_host, np.int64), "nrcpt": np.asarray(nrcpt, np.int64),
            "rcpt": np.asarray(rcpt, np.int64), "user": np.asarray(user, np.int64),
            "session": np.full(n, -1, np.int64) if session is None else np.asarray(session, np.int64),
            "tag": np.full(n, tag, np.int8),
        })

    def build(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Messages sorted by time (ties by insertion order), and their recipients, de-duplicated."""
        keys = ["kind", "sender", "t0", "size", "client_ip", "client_host", "nrcpt", "user", "session", "tag"]
        msgs = {k: np.concatenate([p[k] for p in self.parts]) for k in keys}
        counts = msgs["nrcpt"]
        rcpt = np.concatenate([p["rcpt"] for p in self.parts])
        owner = np.repeat(np.arange(len(counts)), counts)
        order = np.argsort(msgs["t0"], kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        msgs = {k: v[order] for k, v in msgs.items()}
        owner = rank[owner]
        pairs = np.unique(owner * (1 << 32) + rcpt)  # sorted by message, then address; duplicates gone
        r_msg, r_addr = pairs >> 32, pairs & ((1 << 32) - 1)
        msgs["nrcpt"] = np.bincount(r_msg, minlength=len(order)).astype(np.int64)
        return msgs, {"msg": r_msg, "addr": r_addr}


# ----------------------------------------------------------------------------------------------
# the generator


@dataclass
class _Plan:
    """Per user and day: works, VPN, and the blocks of work (VPN sessions or office days)."""

    works: np.ndarray
    vpn: np.ndarray
    b_user: np.ndarray
    b_day: np.ndarray
    b_start: np.ndarray  # UTC microseconds: login / arrival
    b_last: np.ndarray  # last activity
    b_vpn: np.ndarray
    b_end_type: np.ndarray  # 0 logout, 1 timeout, 2 end never logged (VPN blocks)
    b_session: np.ndarray  # index into sessions, -1 for office blocks
    b_client_ip: np.ndarray
    b_client_host: np.ndarray  # index into the client host table


class _Org:
    def __init__(self, users: int, days: int, seed: int, end: date, timezone: str, hosts_per_user: int,
                 flows_per_host_day: int | None, network: bool, vpn_syslog: str):
        if users < 12:
            raise ValueError("an organisation needs at least 12 users (the cases need their own people)")
        if days < 14:
            raise ValueError("an organisation needs at least 14 days (the cases need history)")
        if hosts_per_user < 1:
            raise ValueError("hosts_per_user must be at least 1")
        self.U, self.D, self.end, self.tz_name = users, days, end, timezone
        self.first = end - timedelta(days=days - 1)
        self.dates = [self.first + timedelta(days=i) for i in range(days)]
        self.zone = _Zone(timezone, self.first, days)
        self.day0_local = np.array([_naive_us(datetime(d.year, d.month, d.day)) for d in self.dates], np.int64)
        self.dow = np.array([d.weekday() for d in self.dates])
        self.holidays: set[date] = set()
        for year in {d.year for d in self.dates}:
            self.holidays |= us_holidays(year)
        self.holiday = np.array([d in self.holidays for d in self.dates])
        self.business = (self.dow < 5) & ~self.holiday
        self.hosts_per_user = hosts_per_user
        self.flows_per_host_day = flows_per_host_day
        self.use_network = network
        self.network_note = "" if network else "network generator not used: network=False"
        self.vpn_syslog = vpn_syslog
        self.seed = seed
        self.rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(16)]
        self.people = _make_people(self.rngs[0], users, hosts_per_user)
        self.book = _AddressBook()
        self.contacts = _make_addresses(self.rngs[1], self.book, self.people)
        # client host names (smtpd's "host[ip]"): 0 unknown (VPN pool, no PTR), then servers, laptops
        self.client_hosts = ["unknown", WEBMAIL[0], MARKETING_SERVER[0]] + [
            f"{name.lower()}.{INTERNAL_DOMAIN}" for name in self.people.laptop]
        self.cases: list[OrgCase] = []

    # -- who plays which case ---------------------------------------------------------------------

    def _pick(self, rng: np.random.Generator, taken: set[int], depts: tuple[int, ...], mode: int | None = REMOTE) -> int:
        people = self.people
        pool = [u for u in range(self.U) if u not in taken and people.dept[u] in depts]
        if not pool:
            pool = [u for u in range(self.U) if u not in taken]
        user = int(rng.choice(pool))
        taken.add(user)
        if mode is not None:
            people.mode[user] = mode
        return user

    def _business_day_near(self, index: int) -> int:
        for i in range(index, -1, -1):
            if self.business[i]:
                return i
        raise ValueError("no business day in the period")

    def cast(self) -> None:
        rng, people, D = self.rngs[2], self.people, self.D
        taken: set[int] = set()
        self.leaker = self._pick(rng, taken, (ENGINEERING, MARKETING, LEGAL, HR))
        self.burster = self._pick(rng, taken, (ENGINEERING, HR, LEGAL, FINANCE))
        self.uploader = self._pick(rng, taken, (ENGINEERING, MARKETING, EXEC, LEGAL))
        self.seller = self._pick(rng, taken, (SALES,))
        self.hire = self._pick(rng, taken, (ENGINEERING, MARKETING, SALES))
        self.returner = self._pick(rng, taken, (ENGINEERING, FINANCE, LEGAL, HR))
        finance = [u for u in range(self.U) if people.dept[u] == FINANCE and u not in taken]
        self.reporters = finance[: max(1, min(4, len(finance)))]
        taken.update(self.reporters)
        # the leaker and the uploader never mailed a personal address before
        people.p_personal[[self.leaker, self.uploader]] = 0.0
        people.p_personal[self.burster] = min(people.p_personal[self.burster], 0.002)
        # the many-domains sales user
        people.rate[self.seller] = 26.0
        people.p_ext[self.seller] = 0.85
        people.p_personal[self.seller] = 0.002
        people.flat_partners[self.seller] = True
        _set_partners(people, self.seller, rng.choice(PARTNER_DOMAINS, size=min(90, PARTNER_DOMAINS), replace=False))
        # the finance reporters mail their auditors and banks
        for u in self.reporters:
            people.mode[u] = HYBRID
            people.p_attach[u] = max(people.p_attach[u], 0.35)
        # the new hire starts five days before the end
        start = D - 6
        while self.dow[start] >= 5:
            start += 1
        people.start_day[self.hire] = start
        # three weeks' leave, back a week (or less) before the end
        back = D - max(3, min(8, D // 6))
        later = [i for i in range(back, D) if self.business[i]]
        back = later[0] if later else self._business_day_near(back)
        length = min(21, max(3, D // 4))
        people.leave_lo[self.returner], people.leave_hi[self.returner] = back - length, back - 1
        self.leave_back = back
        # when the injected cases happen
        self.leak_days = list(range(D - int(np.clip(D * 2 // 5, 5, 35)), D))
        self.burst_day = self._business_day_near(D - 1 - max(2, D // 9))
        self.upload_day = self._business_day_near(D - 1 - max(4, D // 5))
        if self.upload_day == self.burst_day:
            self.upload_day = self._business_day_near(self.upload_day - 1)
        self.month_end_days = self._month_ends()
        self.week_start_days = self._week_starts()

    # -- who works when, and the VPN sessions -----------------------------------------------------

    def plan(self) -> _Plan:
        rng, people, U, D = self.rngs[3], self.people, self.U, self.D
        day = np.arange(D)[None, :]
        employed = day >= people.start_day[:, None]
        leave = (day >= people.leave_lo[:, None]) & (day <= people.leave_hi[:, None])
        pto = rng.random((U, D)) < 0.03
        weekend_work = rng.random((U, D)) < 0.04
        works = employed & ~leave & np.where(self.business[None, :], ~pto, weekend_work & (self.dow[None, :] >= 5))
        vpn = works & (rng.random((U, D)) < MODE_VPN[people.mode][:, None])
        # the injected cases happen in VPN sessions on working days
        forced = [(self.leaker, d) for d in self.leak_days if self.business[d]]
        forced += [(self.burster, self.burst_day), (self.uploader, self.upload_day)]
        for u, d in forced:
            works[u, d] = vpn[u, d] = True
        for u in self.reporters:  # month-end reporting happens, whatever else
            for d in self.month_end_days:
                works[u, d] = True
        forced_mask = np.zeros((U, D), bool)
        for u, d in forced:
            forced_mask[u, d] = True

        weekend = self.dow[None, :] >= 5
        start_h = np.where(weekend, rng.uniform(9.5, 14.0, (U, D)),
                           people.start_hour[:, None] + rng.normal(0, 0.4, (U, D)))
        hours = np.where(weekend, rng.uniform(0.7, 3.0, (U, D)),
                         np.clip(people.hours[:, None] * _lognormal(rng, 1.0, 0.15, (U, D)), 1.0, 13.0))
        split = vpn & ~weekend & (rng.random((U, D)) < 0.12)
        frac = rng.uniform(0.35, 0.55, (U, D))
        gap = rng.uniform(0.5, 1.25, (U, D))
        evening = works & ~weekend & (rng.random((U, D)) < np.where(vpn, 0.08, 0.04))
        eve_start = rng.uniform(20.0, 22.5, (U, D))
        eve_len = rng.uniform(0.33, 1.0, (U, D))
        for u, d in forced:  # one clean session for the injected days
            split[u, d] = evening[u, d] = False
        end_main = start_h + hours + np.where(split, gap, 0.0)
        evening &= eve_start > end_main + 0.5

        uu, dd = np.nonzero(works)
        su, sd = np.nonzero(split)
        eu, ed = np.nonzero(evening)
        s_main = start_h[uu, dd]
        e_main = np.where(split[uu, dd], s_main + hours[uu, dd] * frac[uu, dd], s_main + hours[uu, dd])
        s_two = start_h[su, sd] + hours[su, sd] * frac[su, sd] + gap[su, sd]
        e_two = start_h[su, sd] + hours[su, sd] + gap[su, sd]
        b_user = np.concatenate([uu, su, eu])
        b_day = np.concatenate([dd, sd, ed])
        b_s = np.concatenate([s_main, s_two, eve_start[eu, ed]])
        b_e = np.concatenate([e_main, e_two, eve_start[eu, ed] + eve_len[eu, ed]])
        b_vpn = np.concatenate([vpn[uu, dd], np.ones(len(su), bool), np.ones(len(eu), bool)])
        order = np.lexsort((b_s, b_day, b_user))
        b_user, b_day, b_s, b_e, b_vpn = b_user[order], b_day[order], b_s[order], b_e[order], b_vpn[order]
        jitter = rng.integers(0, US, len(b_user))
        b_start = self.zone.to_utc(self.day0_local[b_day] + (b_s * 3600 * US).astype(np.int64) + jitter)
        b_last = self.zone.to_utc(self.day0_local[b_day] + (b_e * 3600 * US).astype(np.int64) + jitter)
        n = len(b_user)
        end_type = rng.choice(3, size=n, p=[0.72, 0.23, 0.05])
        end_type[forced_mask[b_user, b_day]] = 0
        session = np.where(b_vpn, np.cumsum(b_vpn) - 1, -1)
        # tunnel address: mostly the user's own from the pool, sometimes one from the overflow pool
        overflow = _pool_ip(_ip("10.201.0.0") >> 16, np.arange(n) % 64000)
        sticky = rng.random(n) < 0.8
        tunnel = np.where(sticky, people.tunnel_ip[b_user], overflow)
        office_host = people.hosts[b_user, rng.integers(0, self.hosts_per_user, n)]
        client_ip = np.where(b_vpn, tunnel, office_host)
        client_host = np.where(b_vpn, 0, 3 + b_user)
        return _Plan(works=works, vpn=vpn, b_user=b_user, b_day=b_day, b_start=b_start, b_last=b_last,
                     b_vpn=b_vpn, b_end_type=np.where(b_vpn, end_type, -1), b_session=session,
                     b_client_ip=client_ip, b_client_host=client_host)

    def _is_business(self, day: date) -> bool:
        return day.weekday() < 5 and day not in self.holidays

    def _month_ends(self) -> list[int]:
        """Day indices of the last business day of each month in the period."""
        result = []
        for i, d in enumerate(self.dates):
            nxt = d + timedelta(days=1)
            while nxt.month == d.month and not self._is_business(nxt):
                nxt += timedelta(days=1)
            if self.business[i] and nxt.month != d.month:
                result.append(i)
        return result

    def _week_starts(self) -> list[int]:
        """Day indices of the first business day of each week in the period."""
        return [i for i, d in enumerate(self.dates) if self.business[i]
                and not any(self._is_business(d - timedelta(days=k)) for k in range(1, d.weekday() + 1))]

    # -- sampling times inside blocks -------------------------------------------------------------

    def _in_blocks(self, rng: np.random.Generator, plan: _Plan, mask: np.ndarray, keys: np.ndarray,
                   pad_start: int = 90 * US, pad_end: int = 60 * US) -> tuple[np.ndarray, np.ndarray]:
        """A time inside one of the (masked) blocks of each key (user * D + day), weighted by length."""
        idx = np.nonzero(mask)[0]
        bkey = plan.b_user[idx] * self.D + plan.b_day[idx]
        length = np.maximum(plan.b_last[idx] - plan.b_start[idx] - pad_start - pad_end, US)
        cum = np.concatenate([[0], np.cumsum(length)])
        lo = np.searchsorted(bkey, keys, "left")
        hi = np.searchsorted(bkey, keys, "right")
        if np.any(hi <= lo):
            raise AssertionError("a message was planned on a day without a block")
        pos = cum[lo] + (rng.random(len(keys)) * (cum[hi] - cum[lo])).astype(np.int64)
        j = np.clip(np.searchsorted(cum, pos, "right") - 1, lo, hi - 1)
        t = plan.b_start[idx[j]] + pad_start + np.minimum(pos - cum[j], length[j] - 1)
        return t, idx[j]

    # -- the users' own mail ----------------------------------------------------------------------

    def _recipients(self, rng: np.random.Generator, user: np.ndarray, personal_ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Recipient counts and flattened addresses for messages sent by `user`."""
        people, c = self.people, self.contacts
        n = len(user)
        count = 1 + np.minimum(rng.poisson(0.5, n), 6)
        group = rng.random(n) < 0.05
        count = count + np.where(group, rng.poisson(5, n), 0)
        ru = np.repeat(user, count)
        m = len(ru)
        r = rng.random(m)
        p_pers = people.p_personal[ru] * np.repeat(personal_ok, count)
        p_ext = people.p_ext[ru]
        is_pers = r < p_pers
        is_ext = ~is_pers & (r < p_pers + p_ext)
        addr = np.empty(m, np.int64)
        # colleagues: 60 % the own department
        same = rng.random(m) < 0.6
        by_dept = np.argsort(people.dept, kind="stable")
        dept_lo = np.searchsorted(people.dept[by_dept], np.arange(len(DEPARTMENTS)), "left")
        dept_n = np.bincount(people.dept, minlength=len(DEPARTMENTS))
        d = people.dept[ru]
        colleague = np.where(same, by_dept[dept_lo[d] + (rng.random(m) * dept_n[d]).astype(np.int64)],
                             rng.integers(0, self.U, m))
        colleague = np.where(colleague == ru, (colleague + 1) % self.U, colleague)
        addr[:] = c.users[colleague]
        # partners (a few favourites) or other companies (each user their own handful)
        k = np.diff(people.partner_ptr)[ru]
        rank = np.where(people.flat_partners[ru], (rng.random(m) * k), (rng.random(m) ** 2.2) * k).astype(np.int64)
        partner = people.partner_dom[people.partner_ptr[ru] + np.minimum(rank, k - 1)]
        partner_addr = c.partner_first[partner] + rng.integers(0, c.partner_contacts, m)
        n_other = len(c.other_first)
        own_other = (ru * 7919 + rng.integers(0, 8, m) * 104729) % n_other
        other = np.where(rng.random(m) < 0.15, rng.integers(0, n_other, m), own_other)
        other_addr = c.other_first[other] + rng.integers(0, c.other_contacts, m)
        ext_addr = np.where(rng.random(m) < 0.85, partner_addr, other_addr)
        addr[is_ext] = ext_addr[is_ext]
        pers_addr = c.personal[(ru * 2 + rng.integers(0, 2, m)) % len(c.personal)]
        addr[is_pers] = pers_addr[is_pers]
        return count, addr

    def _sizes(self, rng: np.random.Generator, user: np.ndarray) -> np.ndarray:
        n = len(user)
        body = _lognormal(rng, 18_000, 0.7, n)
        attach = rng.random(n) < self.people.p_attach[user]
        files = _lognormal(rng, 250_000, 1.3, n) * 1.37 * (1 + rng.poisson(0.3, n))
        return np.minimum(body + np.where(attach, files, 0), 24_000_000).astype(np.int64) + 1200

    def user_mail(self, plan: _Plan, buf: _MailBuf) -> None:
        rng, people, U, D = self.rngs[4], self.people, self.U, self.D
        weekend = self.dow >= 5
        lam = people.rate[:, None] * DOW_FACTOR[self.dow][None, :] * rng.gamma(4.0, 0.25, (U, D))
        lam = np.where(weekend[None, :], lam * 0.4, lam)
        count = np.where(plan.works, rng.poisson(lam), 0)
        count[self.hire, :] = np.where(plan.works[self.hire], np.minimum(count[self.hire], 6), 0)
        keys = np.repeat(np.arange(U * D), count.ravel())
        user, day = keys // D, keys % D
        t, block = self._in_blocks(rng, plan, np.ones(len(plan.b_user), bool), keys)
        n = len(t)
        # a few messages from the phone in the evening, through the webmail / ActiveSync front end
        employed = (np.arange(D)[None, :] >= people.start_day[:, None]) & ~(
            (np.arange(D)[None, :] >= people.leave_lo[:, None]) & (np.arange(D)[None, :] <= people.leave_hi[:, None]))
        phone = np.where(employed, rng.poisson(people.rate[:, None] * 0.03 * np.ones((1, D))), 0)
        for u in (self.leaker, self.uploader, self.burster):
            phone[u] = 0
        pkeys = np.repeat(np.arange(U * D), phone.ravel())
        pu, pd = pkeys // D, pkeys % D
        pt = self.zone.to_utc(self.day0_local[pd] + (rng.uniform(19.0, 22.5, len(pkeys)) * 3600 * US).astype(np.int64))
        all_user = np.concatenate([user, pu])
        personal_ok = np.ones(len(all_user), bool)
        nrcpt, rcpt = self._recipients(rng, all_user, personal_ok)
        size = self._sizes(rng, all_user)
        # mail to a personal address is small (a note, a photo), rarely a document
        has_personal = np.zeros(len(all_user), bool)
        owner = np.repeat(np.arange(len(all_user)), nrcpt)
        pers_lo, pers_hi = self.contacts.personal[0], self.contacts.personal[-1]
        has_personal[owner[(rcpt >= pers_lo) & (rcpt <= pers_hi)]] = True
        size = np.where(has_personal, np.minimum(size, _lognormal(rng, 30_000, 0.8, len(size)).astype(np.int64) + 1200), size)
        buf.add(kind=KIND_SUBMIT, sender=self.contacts.users[all_user], t0=np.concatenate([t, pt]), size=size,
                client_ip=np.concatenate([plan.b_client_ip[block], np.full(len(pu), _ip(WEBMAIL[1]))]),
                client_host=np.concatenate([plan.b_client_host[block], np.full(len(pu), 1)]),
                nrcpt=nrcpt, rcpt=rcpt, user=all_user,
                session=np.concatenate([plan.b_session[block], np.full(len(pu), -1)]))
        self.normal_messages = n

    def inbound_mail(self, buf: _MailBuf) -> None:
        rng, people, U, D, c = self.rngs[5], self.people, self.U, self.D, self.contacts
        day = np.arange(D)[None, :]
        employed = day >= people.start_day[:, None] - 2  # mail arrives for a new hire just before day one
        lam = people.rate[:, None] * 0.5 * DOW_FACTOR[self.dow][None, :] * np.where(self.dow >= 5, 0.3, 1.0)[None, :]
        count = np.where(employed, rng.poisson(lam), 0)
        keys = np.repeat(np.arange(U * D), count.ravel())
        user, d = keys // D, keys % D
        n = len(keys)
        t = self.zone.to_utc(self.day0_local[d] + (rng.uniform(6.5, 19.5, n) * 3600 * US).astype(np.int64))
        r = rng.random(n)
        k = np.diff(people.partner_ptr)[user]
        partner = people.partner_dom[people.partner_ptr[user] + (rng.random(n) * k).astype(np.int64)]
        sender = np.where(r < 0.75, c.partner_first[partner] + rng.integers(0, c.partner_contacts, n),
                          np.where(r < 0.92, c.other_first[rng.integers(0, len(c.other_first), n)],
                                   c.personal[rng.integers(0, len(c.personal), n)]))
        extra = rng.random(n) < 0.2
        colleague = rng.integers(0, U, n)
        nrcpt = 1 + extra
        rcpt = np.empty(int(nrcpt.sum()), np.int64)
        pos = np.concatenate([[0], np.cumsum(nrcpt)[:-1]])
        rcpt[pos] = c.users[user]
        rcpt[pos[extra] + 1] = c.users[colleague[extra]]
        dom = np.asarray(self.book.domain)[sender]
        out_ip = np.array([_ip(x) for x in self.book.out_ip])[dom]
        size = (_lognormal(rng, 25_000, 0.8, n) + np.where(rng.random(n) < 0.25, _lognormal(rng, 300_000, 1.2, n), 0))
        buf.add(kind=KIND_INBOUND, sender=sender, t0=t, size=np.minimum(size, 24_000_000).astype(np.int64) + 1500,
                client_ip=out_ip, client_host=-1 - dom, nrcpt=nrcpt, rcpt=rcpt, user=np.full(n, -1))

    # -- benign hard cases and injected cases -----------------------------------------------------

    def newsletter(self, buf: _MailBuf) -> list[int]:
        rng, c = self.rngs[6], self.contacts
        days = [i for i in range(self.D) if self.dow[i] == 1 and not self.holiday[i]]
        batches = np.array_split(c.subscribers, int(np.ceil(len(c.subscribers) / 50)))
        for d in days:
            t_first = self.zone.to_utc(np.array([self.day0_local[d] + int((10 * 3600 + rng.integers(0, 240)) * US)]))[0]
            t = t_first + np.arange(len(batches)) * int(4.5 * US) + rng.integers(0, US, len(batches))
            size = np.full(len(batches), 84_000 + int(rng.integers(0, 9000)))
            buf.add(kind=KIND_NEWSLETTER, sender=np.full(len(batches), c.newsletter), t0=t, size=size,
                    client_ip=np.full(len(batches), _ip(MARKETING_SERVER[1])), client_host=np.full(len(batches), 2),
                    nrcpt=np.array([len(b) for b in batches]), rcpt=np.concatenate(batches),
                    user=np.full(len(batches), -1), tag=TAG_NEWSLETTER)
        return days

    def _case_mail(self, rng: np.random.Generator, plan: _Plan, buf: _MailBuf, user: int, day: int, n: int,
                   size: np.ndarray, recipients: list[np.ndarray], tag: int, vpn_only: bool = True) -> list[str]:
        mask = plan.b_vpn if vpn_only else np.ones(len(plan.b_user), bool)
        # the longest block of the day: one session holds the case's mail
        sel = np.nonzero(mask & (plan.b_user == user) & (plan.b_day == day))[0]
        if len(sel) == 0:
            raise AssertionError(f"no block for user {user} on day {day}")
        best = sel[np.argmax(plan.b_last[sel] - plan.b_start[sel])]
        only = np.zeros(len(plan.b_user), bool)
        only[best] = True
        t, block = self._in_blocks(rng, plan, only, np.full(n, user * self.D + day), pad_start=5 * 60 * US,
                                   pad_end=5 * 60 * US)
        buf.add(kind=KIND_SUBMIT, sender=np.full(n, self.contacts.users[user]), t0=np.sort(t), size=size,
                client_ip=plan.b_client_ip[block], client_host=plan.b_client_host[block],
                nrcpt=np.array([len(r) for r in recipients]), rcpt=np.concatenate(recipients),
                user=np.full(n, user), session=plan.b_session[block], tag=tag)
        return [int(plan.b_session[best])] if plan.b_vpn[best] else []

    def cases_mail(self, plan: _Plan, buf: _MailBuf, session_ids: np.ndarray) -> None:
        rng, people, c = self.rngs[7], self.people, self.contacts
        sid = lambda idx: tuple(f"{session_ids[i]:08x}" for i in idx)  # noqa: E731

        # 1. slow leak to the own personal address
        u = self.leaker
        first, last = people.first[u], people.last[u]
        home = self.book.add(f"{first}.{last}.home", "gmail.com")
        leak_days, leak_sessions, total = [], [], 0
        span = len(self.leak_days)
        for k, d in enumerate(self.leak_days):
            if not (plan.works[u, d] and plan.vpn[u, d]):
                continue
            frac = (k + 1) / span
            if rng.random() > 0.35 + 0.65 * frac and k < span - 3:
                continue
            n = 1 + int(rng.poisson(2.5 * frac))
            size = (_lognormal(rng, 1_500_000 * (1 + 6 * frac), 0.35, n) * 1.37).astype(np.int64) + 4000
            size = np.minimum(size, 24_000_000)
            leak_sessions += self._case_mail(rng, plan, buf, u, d, n, size, [np.array([home])] * n, TAG_LEAK)
            leak_days.append(d)
            total += int(size.sum())
        self.cases.append(OrgCase(
            case_id="slow-leak", kind="slow-leak", user=people.names[u], expected="fire",
            days=tuple(self.dates[d] for d in leak_days), sessions=sid(leak_sessions),
            recipients=(self.book.address[home],),
            description=(f"slow leak: files mailed to the user's own personal address {self.book.address[home]}, "
                         f"more often and larger over {span} days ({total / 1e6:.0f} MB in all)")))

        # 2. burst: many messages to many domains the user never mailed
        u, d = self.burster, self.burst_day
        n = 40
        targets = c.burst[rng.choice(len(c.burst), size=32, replace=False)]
        rcpts = [np.array([x]) for x in np.concatenate([targets, rng.choice(targets, n - len(targets))])]
        size = (_lognormal(rng, 600_000, 0.8, n) * 1.37).astype(np.int64) + 3000
        sessions = self._case_mail(rng, plan, buf, u, d, n, np.minimum(size, 8_000_000), rcpts, TAG_BURST)
        self.cases.append(OrgCase(
            case_id="burst", kind="burst", user=people.names[u], expected="fire", days=(self.dates[d],),
            sessions=sid(sessions), recipients=tuple(sorted(self.book.address[x] for x in targets)),
            description=f"burst: {n} messages to {len(targets)} external domains the user never mailed, in one session"))

        # 3. one large upload to a personal address
        u, d = self.uploader, self.upload_day
        personal = self.book.add(f"{people.first[u]}{people.last[u]}{int(rng.integers(10, 99))}", "proton.me")
        size = np.array([40 * 1024 * 1024 + int(rng.integers(10_000, 90_000))])
        sessions = self._case_mail(rng, plan, buf, u, d, 1, size, [np.array([personal])], TAG_UPLOAD)
        self.cases.append(OrgCase(
            case_id="large-upload", kind="large-upload", user=people.names[u], expected="fire", days=(self.dates[d],),
            sessions=sid(sessions), recipients=(self.book.address[personal],),
            description=f"large upload: one {size[0] / 2**20:.0f} MB message to the personal address "
                        f"{self.book.address[personal]}"))

    def finance_reports(self, plan: _Plan, buf: _MailBuf) -> None:
        rng, people, c = self.rngs[8], self.people, self.contacts
        month_ends = self.month_end_days
        weekly = [d for d in self.week_start_days if d not in month_ends]
        for u in self.reporters:
            auditors = people.partner_dom[people.partner_ptr[u]:people.partner_ptr[u + 1]][:3]
            for d, big in [(d, False) for d in weekly] + [(d, True) for d in month_ends]:
                if not plan.works[u, d]:
                    continue
                n = int(rng.integers(3, 7)) if big else int(rng.integers(3, 6))
                median = 6_000_000 if big else 5_500_000
                size = np.minimum(_lognormal(rng, median, 0.35, n).astype(np.int64), 24_000_000) + 5000
                rcpts = [c.partner_first[rng.choice(auditors, size=min(2, len(auditors)), replace=False)]
                         + rng.integers(0, 3) for _ in range(n)]
                self._case_mail(rng, plan, buf, u, d, n, size, rcpts, TAG_MONTH_END if big else TAG_WEEKLY,
                                vpn_only=False)
            days = tuple(self.dates[d] for d in month_ends if plan.works[u, d])
            if days:
                self.cases.append(OrgCase(
                    case_id="month-end-finance", kind="month-end", user=people.names[u], expected="quiet", days=days,
                    description="benign: finance month-end reporting, large attachments to partners (auditors, banks) "
                                "on the last business day of every month, with weekly reports of the same kind "
                                "in between"))

    # -- output -----------------------------------------------------------------------------------

    def write(self, out_dir: Path, mail: str, syslog_timestamps: str) -> OrgDataset:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.mail = mail
        self.cast()
        plan = self.plan()
        n_sessions = int(plan.b_vpn.sum())
        session_ids = _unique_u32(self.rngs[9], n_sessions)
        buf = _MailBuf()
        self.user_mail(plan, buf)
        self.inbound_mail(buf)
        news_days = self.newsletter(buf)
        self.cases_mail(plan, buf, session_ids)
        self.finance_reports(plan, buf)
        msgs, rcpts = buf.build()
        self._benign_cases(plan, msgs, news_days)

        con = duckdb.connect()
        con.execute("SET enable_progress_bar = false")
        try:
            _install_sql_macros(con)
            vpn_log = out_dir / "vpn.log"
            vpn_lines = self._write_vpn(con, plan, session_ids, vpn_log)
            if mail == "postfix":
                mail_log = out_dir / "maillog"
                mail_lines = self._write_postfix(con, msgs, rcpts, mail_log, syslog_timestamps)
            else:
                mail_log = out_dir / "MessageTracking"
                mail_lines = self._write_exchange(con, msgs, rcpts, mail_log)
            conn_log, assets, flows, network_labels = self._write_network(con, out_dir, plan, msgs)
        finally:
            con.close()
        config = self._write_config(out_dir / "config.yaml", assets)
        labels = self._write_labels(out_dir / "labels.csv")
        return OrgDataset(
            out_dir=out_dir, vpn_log=vpn_log, mail_log=mail_log, mail=mail, conn_log=conn_log, config=config,
            labels=labels, users=self.U, sessions=n_sessions, messages=len(msgs["t0"]), flows=flows,
            vpn_lines=vpn_lines, mail_lines=mail_lines, cases=tuple(self.cases), network_labels=network_labels,
            network_note=self.network_note)

    def _benign_cases(self, plan: _Plan, msgs: dict[str, np.ndarray], news_days: list[int]) -> None:
        people = self.people
        sent_day = np.zeros((self.U, self.D), bool)
        mine = msgs["user"] >= 0
        local = msgs["t0"][mine] + self.zone.offset(msgs["t0"][mine]) * US
        day = (local - self.day0_local[0]) // (86400 * US)
        ok = (day >= 0) & (day < self.D)
        sent_day[msgs["user"][mine][ok], day[ok]] = True
        active = sent_day | plan.works

        def days_of(u: int, lo: int = 0) -> tuple[date, ...]:
            return tuple(self.dates[d] for d in range(lo, self.D) if active[u, d])

        self.cases.append(OrgCase(
            case_id="newsletter", kind="newsletter", user=NEWSLETTER_USER, expected="quiet",
            days=tuple(self.dates[d] for d in news_days),
            description=f"benign: the weekly marketing newsletter from {NEWSLETTER_ADDRESS} on {MARKETING_SERVER[0]}, "
                        f"{len(self.contacts.subscribers)} subscribers at partners and webmail, in batches of 50"))
        self.cases.append(OrgCase(
            case_id="new-hire", kind="new-hire", user=people.names[self.hire], expected="quiet",
            days=days_of(self.hire, int(people.start_day[self.hire])),
            description=f"benign: new hire, first day {self.dates[int(people.start_day[self.hire])]}, "
                        "no history, ordinary mail"))
        self.cases.append(OrgCase(
            case_id="back-from-leave", kind="back-from-leave", user=people.names[self.returner], expected="quiet",
            days=days_of(self.returner, self.leave_back),
            description=f"benign: back on {self.dates[self.leave_back]} from leave "
                        f"({self.dates[int(people.leave_lo[self.returner])]} to "
                        f"{self.dates[int(people.leave_hi[self.returner])]}), ordinary mail after the gap"))
        self.cases.append(OrgCase(
            case_id="sales-many-domains", kind="sales-many-domains", user=people.names[self.seller], expected="quiet",
            days=days_of(self.seller),
            description="benign: a sales user who mails many customer domains every day"))

    # -- VPN --------------------------------------------------------------------------------------

    def _write_vpn(self, con: duckdb.DuckDBPyConnection, plan: _Plan, session_ids: np.ndarray, path: Path) -> int:
        rng, people = self.rngs[10], self.people
        s = np.nonzero(plan.b_vpn)[0]
        n = len(s)
        user = plan.b_user[s]
        login = (plan.b_start[s] // US) * US
        last = (plan.b_last[s] // US) * US
        end_type = plan.b_end_type[s]
        travel = rng.random(n) < 0.04
        src = np.where(travel, _ip("198.51.100.0") + rng.integers(2, 254, n), people.home_ip[user])
        tunnel = plan.b_client_ip[s]
        failed = rng.random(n) < 0.03
        tun_end = np.where(end_type == 0, last + rng.integers(1, 4, n) * US, last + rng.integers(60, 300, n) * US)
        timeout = last + (3600 + rng.integers(0, 600, n)) * US
        logout_t = np.where(end_type == 0, tun_end + rng.integers(0, 2, n) * US, timeout)
        duration = (tun_end - login) // US
        read = (duration * rng.uniform(800, 20_000, n)).astype(np.int64)
        written = (duration * rng.uniform(2_000, 60_000, n)).astype(np.int64)
        has_end = end_type < 2
        rows = []

        def add(mask, kind, t, extra=None):
            idx = np.nonzero(mask)[0]
            rows.append(pa.table({
                "ts": t[idx], "ord": idx.astype(np.int64) * 16 + kind, "kind": np.full(len(idx), kind, np.int8),
                "u": user[idx], "src": src[idx], "tip": tunnel[idx], "sid": session_ids[idx],
                "x": (extra[idx] if extra is not None else np.zeros(len(idx), np.int64)),
                "y": read[idx], "z": written[idx], "agent": people.agent[user[idx]],
            }))

        all_ = np.ones(n, bool)
        fail_t = login - rng.integers(15, 60, n) * US
        add(failed, 1, fail_t)
        add(failed, 2, fail_t)
        add(all_, 3, login - US)
        add(all_, 4, login)
        add(all_, 5, login + rng.integers(2, 9, n) * US)
        add(has_end, 6, tun_end)
        add(has_end, 7, tun_end, duration)
        add(end_type == 0, 8, logout_t)
        add(end_type == 1, 9, logout_t, last)
        # password spraying from the internet against accounts that do not exist (or do)
        daily = rng.poisson(4, self.D)
        sd = np.repeat(np.arange(self.D), daily)
        m = len(sd)
        st = self.zone.to_utc(self.day0_local[sd] + (rng.random(m) * 86400 * US).astype(np.int64)) // US * US
        sp_user = np.where(rng.random(m) < 0.2, rng.integers(0, self.U, m), -1 - rng.integers(0, len(SPRAY_NAMES), m))
        sp_src = _ip("192.0.2.0") + rng.integers(2, 254, m)
        base = (n + np.arange(m)) * 16
        for kind, dt in ((1, 0), (2, 0)):
            rows.append(pa.table({
                "ts": st + dt, "ord": base + kind, "kind": np.full(m, kind, np.int8), "u": sp_user, "src": sp_src,
                "tip": np.zeros(m, np.int64), "sid": np.zeros(m, np.int64), "x": np.zeros(m, np.int64),
                "y": np.zeros(m, np.int64), "z": np.zeros(m, np.int64), "agent": np.zeros(m, np.int64)}))
        events = pa.concat_tables(rows)
        events = events.append_column("off", pa.array(self.zone.offset(events["ts"].to_numpy())))
        con.register("vpn_events", events)
        con.register("vpn_users", pa.table({"u": np.arange(self.U), "name": people.names}))
        con.register("vpn_extra_users", pa.table({"u": -1 - np.arange(len(SPRAY_NAMES)), "name": list(SPRAY_NAMES)}))
        con.register("vpn_agents", pa.table({"a": np.arange(len(AGENTS)), "agent_s": list(AGENTS)}))
        con.register("vpn_hosts", pa.table({"u": np.arange(self.U), "laptop": people.laptop}))
        sql = f"""
        WITH e AS (
            SELECT e.*, n.name, make_timestamp(e.ts + e.off * 1000000) AS lt, ew_ip(e.src) AS ip, ew_ip(e.tip) AS tun,
                   printf('%08x', e.sid) AS session, a.agent_s, h.laptop
            FROM vpn_events e
            JOIN (SELECT * FROM vpn_users UNION ALL SELECT * FROM vpn_extra_users) n ON n.u = e.u
            LEFT JOIN vpn_agents a ON a.a = e.agent
            LEFT JOIN vpn_hosts h ON h.u = e.u
        )
        SELECT pulse_secure_line('{self.vpn_syslog}', lt, off, '{VPN_HOST}', 'ive', ip, NULL, name, '{VPN_REALM}',
                                 CASE WHEN kind IN (1, 2, 3) THEN '' ELSE 'Users, VPN' END, kind, '{AUTH_SERVER}',
                                 session, agent_s, tun, laptop, x, y, y // 1400 + 1, z, z // 1400 + 1,
                                 make_timestamp(x + off * 1000000)) AS line
        FROM e ORDER BY ts, ord
        """
        return _text.copy_lines(con, sql, path)

    # -- Postfix ----------------------------------------------------------------------------------

    def _register_mail(self, con: duckdb.DuckDBPyConnection, msgs: dict[str, np.ndarray], rcpts: dict[str, np.ndarray]):
        rng, book = self.rngs[11], self.book
        n, m = len(msgs["t0"]), len(rcpts["msg"])
        t0 = msgs["t0"]
        size = msgs["size"]
        # the message reaches the queue manager after the client has sent it (about 4 MB/s over the VPN)
        transfer = (size / 4e6 * US).astype(np.int64) + rng.integers(100_000, 600_000, n)
        t_clean = t0 + transfer
        t_qmgr = t_clean + rng.integers(1_000, 30_000, n)
        dom = np.asarray(book.domain, np.int64)
        provider = np.asarray(book.provider, np.int64)
        r_dom = dom[rcpts["addr"]]
        r_local = provider[r_dom] == 9
        # one delivery per recipient; lmtp to the store is quick, smtp to the internet slower
        in_queue = rng.integers(1_000, 40_000, m)
        conn_setup = np.where(r_local, rng.integers(0, 5_000, m), rng.integers(40_000, 900_000, m))
        speed = np.where(r_local, 40e6, 6e6)
        xmit = (size[rcpts["msg"]] / speed * US).astype(np.int64) + rng.integers(5_000, 120_000, m)
        t_deliv = t_qmgr[rcpts["msg"]] + in_queue + conn_setup + xmit
        before = t_qmgr - t0
        t_removed = np.zeros(n, np.int64)
        np.maximum.at(t_removed, rcpts["msg"], t_deliv)
        t_removed += rng.integers(200, 3_000, n)
        # the first recipient at each domain of a message opens the TLS session to that domain
        key = rcpts["msg"] * (1 << 24) + r_dom
        first_dom = np.ones(m, bool)
        first_dom[1:] = key[1:] != key[:-1]
        first_dom &= ~r_local  # (recipients are sorted by message then address; same domain is adjacent often enough)
        inode = self.rngs[11].permutation(n) + 0x10000
        ridx = np.arange(m)
        con.register("pf_msgs", pa.table({
            "m": np.arange(n), "kind": msgs["kind"], "sender": msgs["sender"], "t0": t0, "t_clean": t_clean,
            "t_qmgr": t_qmgr, "t_disc": t_qmgr + rng.integers(20_000, 90_000, n), "t_removed": t_removed,
            "size": size, "nrcpt": msgs["nrcpt"], "cip": msgs["client_ip"], "chost": msgs["client_host"],
            "inode": inode, "usec": t0 % US, "pid_d": 2000 + ((np.arange(n) // 60) * 7919 + 17) % 60000,
            "pid_c": 2000 + ((np.arange(n) // 90) * 104729 + 5003) % 60000,
            "pid_q": 1800 + (t0 // (7 * 86400 * US)) % 500 * 13, "tag": msgs["tag"],
            "off_0": self.zone.offset(t0), "off_c": self.zone.offset(t_clean), "off_q": self.zone.offset(t_qmgr),
            "off_r": self.zone.offset(t_removed),
        }))
        con.register("pf_rcpts", pa.table({
            "m": rcpts["msg"], "r": ridx, "addr": rcpts["addr"], "t": t_deliv, "off": self.zone.offset(t_deliv),
            "tls": first_dom, "local": r_local, "pid_s": 2000 + ((ridx // 45) * 6151 + 31013) % 60000,
            "d_before": before[rcpts["msg"]], "d_queue": in_queue, "d_conn": conn_setup, "d_xmit": xmit,
        }))
        con.register("pf_addr", pa.table({"a": np.arange(len(book.address)), "address": book.address, "dom": dom}))
        con.register("pf_dom", pa.table({
            "dom": np.arange(len(book.domains)), "domain": book.domains, "mx": book.mx_host, "mx_ip": book.mx_ip,
            "out_host": book.out_host, "out_ip": book.out_ip, "provider": provider}))
        con.register("pf_hosts", pa.table({"chost": np.arange(len(self.client_hosts)), "hostname": self.client_hosts}))

    def _write_postfix(self, con: duckdb.DuckDBPyConnection, msgs, rcpts, path: Path, stamps: str) -> int:
        self._register_mail(con, msgs, rcpts)
        host = MAIL_HOST
        con.execute(f"""
        CREATE OR REPLACE TEMP TABLE m2 AS
        WITH m AS (
            SELECT p.*, a.address AS sender_addr, d.domain AS sender_dom,
                   upper(printf('%05x', usec) || printf('%x', inode)) AS qid,
                   CASE WHEN p.chost >= 0 THEN h.hostname ELSE cd.out_host END AS client_name,
                   ew_ip(p.cip) AS client_ip,
                   CASE WHEN p.kind = {KIND_INBOUND} THEN 'postfix/smtpd' ELSE 'postfix/submission/smtpd' END AS smtpd
            FROM pf_msgs p JOIN pf_addr a ON a.a = p.sender JOIN pf_dom d ON d.dom = a.dom
            LEFT JOIN pf_hosts h ON h.chost = p.chost LEFT JOIN pf_dom cd ON cd.dom = -1 - p.chost
        )
            SELECT *, '<' || strftime(make_timestamp(t0 + off_0 * 1000000), '%Y%m%d%H%M%S') || '.'
                      || substr(md5(qid || sender_addr), 1, 12) || '@'
                      || CASE WHEN kind = {KIND_INBOUND} THEN sender_dom ELSE '{INTERNAL_DOMAIN}' END || '>' AS msgid
            FROM m""")
        con.execute("""
        CREATE OR REPLACE TEMP TABLE r2 AS
        SELECT r.*, a.address, d.mx, d.mx_ip, d.provider FROM pf_rcpts r JOIN pf_addr a ON a.a = r.addr
        JOIN pf_dom d ON d.dom = a.dom""")
        sql = f"""
        WITH lines AS (
            SELECT t0 AS ts, off_0 AS off, m, 0 AS k, 0 AS r, smtpd AS program, pid_d AS pid,
                   postfix_connect(client_name, client_ip) AS message FROM m2
            UNION ALL
            SELECT t0 + 40000, off_0, m, 1, 0, smtpd, pid_d, postfix_tls_from(client_name, client_ip) FROM m2
            UNION ALL
            SELECT t0 + 90000, off_0, m, 2, 0, smtpd, pid_d,
                   postfix_client(qid, client_name, client_ip, CASE WHEN kind = {KIND_INBOUND} THEN NULL ELSE 'LOGIN' END,
                                  sender_addr) FROM m2
            UNION ALL
            SELECT t_clean, off_c, m, 3, 0, 'postfix/cleanup', pid_c, postfix_cleanup(qid, msgid) FROM m2
            UNION ALL
            SELECT t_qmgr, off_q, m, 4, 0, 'postfix/qmgr', pid_q, postfix_queued(qid, sender_addr, size, nrcpt) FROM m2
            UNION ALL
            SELECT t_disc, off_q, m, 5, 0, smtpd, pid_d,
                   postfix_disconnect(client_name, client_ip, kind <> {KIND_INBOUND}, nrcpt) FROM m2
            UNION ALL
            SELECT r.t - r.d_xmit - 1000, r.off, r.m, 6, r.r, 'postfix/smtp', r.pid_s, postfix_tls_to(r.mx, r.mx_ip, 25)
            FROM r2 r WHERE r.tls
            UNION ALL
            SELECT r.t, r.off, r.m, 7, r.r, CASE WHEN r.local THEN 'postfix/lmtp' ELSE 'postfix/smtp' END, r.pid_s,
                   postfix_delivery(m2.qid, r.address, r.mx, r.mx_ip, CASE WHEN r.local THEN 24 ELSE 25 END,
                                    (r.t - m2.t0) / 1e6, r.d_before / 1e6, r.d_queue / 1e6, r.d_conn / 1e6,
                                    r.d_xmit / 1e6, '2.0.0', 'sent',
                   CASE r.provider
                      WHEN 9 THEN '250 2.0.0 <' || r.address || '> ' || substr(md5(m2.qid || r.address), 1, 22) || ' Saved'
                      WHEN 1 THEN '250 2.0.0 OK  ' || (r.t // 1000000) || ' ' || substr(md5(m2.qid || r.address), 1, 20)
                                  || 'si' || (r.r % 997) || '.' || (r.m % 89) || ' - gsmtp'
                      WHEN 2 THEN '250 2.6.0 ' || m2.msgid || ' [InternalId=' || (r.t % 99999999977)
                                  || ', Hostname=BN8PR12MB' || (1000 + r.m % 8999) || '.namprd12.prod.outlook.com] '
                                  || m2.size || ' bytes in 0.' || (100 + r.r % 899) || ', Queued mail for delivery'
                      WHEN 3 THEN '250 ok dirdel'
                      ELSE '250 2.0.0 Ok: queued as ' || upper(substr(md5(r.address || m2.qid), 1, 10)) END)
            FROM r2 r JOIN m2 ON m2.m = r.m
            UNION ALL
            SELECT t_removed, off_r, m, 8, 0, 'postfix/qmgr', pid_q, postfix_removed(qid) FROM m2
        )
        SELECT postfix_line(postfix_stamp('{stamps}', lt, off), '{host}', program, pid, message) AS line
        FROM (SELECT *, make_timestamp(ts + off * 1000000) AS lt FROM lines)
        ORDER BY ts, m, k, r
        """
        lines = _text.copy_lines(con, sql, path)
        con.execute("DROP TABLE m2; DROP TABLE r2")
        if stamps == "bsd":  # the year of BSD timestamps comes from the file's modification time
            last = datetime.combine(self.end, datetime.max.time().replace(microsecond=0)).replace(tzinfo=ZoneInfo(self.tz_name))
            os.utime(path, (last.timestamp(), last.timestamp()))
        return lines

    # -- Exchange ---------------------------------------------------------------------------------

    def _write_exchange(self, con: duckdb.DuckDBPyConnection, msgs, rcpts, folder: Path) -> int:
        self._register_mail(con, msgs, rcpts)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        server, server_ip = EXCHANGE_SERVER
        sql = f"""
        WITH m AS (
            SELECT p.*, a.address AS sender_addr, d.domain AS sender_dom,
                   upper(printf('%05x', usec) || printf('%x', inode)) AS qid, ew_ip(p.cip) AS client_ip,
                   CASE WHEN p.chost >= 0 THEN h.hostname ELSE cd.out_host END AS client_name
            FROM pf_msgs p JOIN pf_addr a ON a.a = p.sender JOIN pf_dom d ON d.dom = a.dom
            LEFT JOIN pf_hosts h ON h.chost = p.chost LEFT JOIN pf_dom cd ON cd.dom = -1 - p.chost
        ), m2 AS (
            SELECT *, '<' || upper(substr(md5(qid), 1, 16)) || '@'
                      || CASE WHEN kind = {KIND_INBOUND} THEN sender_dom ELSE '{server.lower()}.{INTERNAL_DOMAIN}' END || '>' AS msgid,
                   substr(md5('n' || qid), 1, 8) || '-' || substr(md5('n' || qid), 9, 4) || '-'
                   || substr(md5('n' || qid), 13, 4) || '-' || substr(md5('n' || qid), 17, 4) || '-'
                   || substr(md5('n' || qid), 21, 12) AS nmid,
                   (2000000000000 + inode * 997)::BIGINT AS imid,
                   CASE WHEN kind = {KIND_NEWSLETTER}
                        THEN 'Corp Example weekly - ' || strftime(make_timestamp(t0 + off_0 * 1000000), '%B %d')
                        ELSE ex_subject(hash(qid)) END AS subject
            FROM m
        ), r AS (
            SELECT r.m, a.address, d.provider = 9 AS local, r.t, r.r, d.mx, d.mx_ip FROM pf_rcpts r
            JOIN pf_addr a ON a.a = r.addr JOIN pf_dom d ON d.dom = a.dom
        ), g AS (
            SELECT m,
                   string_agg(address, ';' ORDER BY r) AS all_rcpt, count(*) AS n_all,
                   string_agg(address, ';' ORDER BY r) FILTER (WHERE NOT local) AS ext_rcpt,
                   count(*) FILTER (WHERE NOT local) AS n_ext,
                   string_agg(address, ';' ORDER BY r) FILTER (WHERE local) AS int_rcpt,
                   count(*) FILTER (WHERE local) AS n_int,
                   max(t) FILTER (WHERE NOT local) AS t_send, max(t) FILTER (WHERE local) AS t_deliver,
                   arg_min(mx, r) FILTER (WHERE NOT local) AS mx, arg_min(mx_ip, r) FILTER (WHERE NOT local) AS mx_ip
            FROM r GROUP BY m
        ), rows AS (
            SELECT m2.t_qmgr AS ts, m2.m, 0 AS k,
                   CASE WHEN kind <> {KIND_SUBMIT} THEN client_ip ELSE '{server_ip}' END AS client_ip_,
                   CASE WHEN kind <> {KIND_SUBMIT} THEN client_name ELSE '{server.lower()}.{INTERNAL_DOMAIN}' END
                       AS client_host_,
                   '{server_ip}' AS server_ip, '{server}' AS server_host,
                   CASE WHEN kind <> {KIND_SUBMIT} THEN upper(substr(md5(qid), 17, 16)) || ';' || exchange_time(t0) || ';0'
                        ELSE 'MDB:5b9c2f0e-3d44-4a51-9c8b-2f1e0d9c8b7a, Mailbox:' || substr(md5(sender_addr), 1, 8)
                             || '-' || substr(md5(sender_addr), 9, 4) || ', Event:' || (imid % 9000000)
                             || ', MessageClass:IPM.Note, CreationTime:' || exchange_time(t0)
                             || ', ClientType:MOMT' END AS source_context,
                   CASE kind WHEN {KIND_INBOUND} THEN '{server}\\Default Frontend {server}'
                             WHEN {KIND_NEWSLETTER} THEN '{server}\\Client Frontend {server}' ELSE '' END AS connector,
                   CASE WHEN kind <> {KIND_SUBMIT} THEN 'SMTP' ELSE 'STOREDRIVER' END AS source,
                   'RECEIVE' AS event_id, g.all_rcpt AS rcpt, '' AS rstatus, g.n_all AS rcount
            FROM m2 JOIN g USING (m)
            UNION ALL
            SELECT g.t_send, m2.m, 1, '{server_ip}', '{server.lower()}.{INTERNAL_DOMAIN}', g.mx_ip, g.mx,
                   upper(substr(md5('s' || qid), 1, 16)) || ';250 2.0.0 OK;ClientSubmitTime:' || exchange_time(t0),
                   '{server}\\Internet Send Connector', 'SMTP', 'SEND', g.ext_rcpt,
                   array_to_string(list_transform(string_split(g.ext_rcpt, ';'), lambda x: '250 2.0.0 OK'), ';'),
                   g.n_ext
            FROM m2 JOIN g USING (m) WHERE g.n_ext > 0
            UNION ALL
            SELECT g.t_deliver, m2.m, 2, '{server_ip}', '{server.lower()}.{INTERNAL_DOMAIN}', '{server_ip}',
                   '{server.lower()}.{INTERNAL_DOMAIN}', 'MDB:5b9c2f0e-3d44-4a51-9c8b-2f1e0d9c8b7a, Mailbox:'
                   || substr(md5(g.int_rcpt), 1, 8) || ', Event:' || (imid % 9000000) || ', MessageClass:IPM.Note',
                   '', 'STOREDRIVER', 'DELIVER', g.int_rcpt,
                   array_to_string(list_transform(string_split(g.int_rcpt, ';'), lambda x: '250 2.1.5 Recipient OK'), ';'),
                   g.n_int
            FROM m2 JOIN g USING (m) WHERE g.n_int > 0
        )
        SELECT ts, exchange_line(ts, client_ip_, client_host_, server_ip, server_host, source_context, connector,
               source, event_id, CAST(imid AS VARCHAR), msgid, nmid, rcpt, rstatus, CAST(size AS VARCHAR),
               CAST(rcount AS VARCHAR), '', '', subject, sender_addr, sender_addr,
               CASE WHEN k = 0 THEN exchange_time(t0) ELSE '' END,
               CASE WHEN kind = {KIND_INBOUND} THEN 'Incoming' ELSE 'Originating' END, '',
               CASE WHEN kind = {KIND_INBOUND} THEN '' ELSE client_ip END, '{server_ip}',
               CASE WHEN k = 1 THEN 'S:DeliveryPriority=Normal;S:AccountForest={INTERNAL_DOMAIN}' ELSE '' END,
               'Email', substr(md5(nmid || k), 1, 8) || '-' || substr(md5(nmid || k), 9, 4) || '-'
               || substr(md5(nmid || k), 13, 4) || '-' || substr(md5(nmid || k), 17, 4) || '-'
               || substr(md5(nmid || k), 21, 12), '{EXCHANGE_VERSION}') AS line
        FROM rows JOIN m2 USING (m)
        """
        return exchange.write_query(con, sql, folder, EXCHANGE_VERSION)

    # -- flows ------------------------------------------------------------------------------------

    def _write_network(self, con: duckdb.DuckDBPyConnection, out_dir: Path, plan: _Plan,
                       msgs: dict[str, np.ndarray]) -> tuple[Path, list[dict], int, Path | None]:
        """conn.log: the network generator's flows (if installed) plus the org's own mail flows."""
        conn_log = out_dir / "conn.log"
        own_assets = [
            {"cidr": "10.10.0.0/28", "category": "email_server", "bunit": "it"},
            {"cidr": "10.30.0.0/24", "category": "server", "bunit": "it"},
            {"cidr": "10.20.0.0/16", "category": "workstation", "bunit": "corp"},
        ]
        vpn_asset = {"cidr": "10.200.0.0/15", "category": "vpn_pool", "bunit": "it", "owner": "network-team"}
        rng = self.rngs[12]
        # every submission: a flow from the client (tunnel, workstation, webmail, marketing server) to the
        # Postfix relay's submission port, or to Exchange (MAPI over HTTPS; SMTP for the newsletter)
        submit = msgs["kind"] != KIND_INBOUND
        t = msgs["t0"][submit]
        n = len(t)
        dur = np.maximum(((msgs["size"][submit] / 4e6) * US).astype(np.int64), 200_000) + 300_000
        mapi = (msgs["kind"][submit] == KIND_SUBMIT) & (self.mail == "exchange")
        server = _ip(EXCHANGE_SERVER[1]) if self.mail == "exchange" else _ip(MAIL_SERVER[1])
        parts = [{
            "ts": t, "orig": msgs["client_ip"][submit], "oport": rng.integers(49152, 65535, n),
            "resp": np.full(n, server), "rport": np.where(mapi, 443, 587), "service": np.zeros(n, np.int8),
            "dur": dur, "ob": msgs["size"][submit] + rng.integers(2_000, 4_000, n), "rb": rng.integers(3_000, 6_000, n),
        }]
        network = self._network(out_dir) if self.use_network else None
        if network is None:
            # no network generator: each block of work syncs the mailbox (IMAPS) and browses the web
            blocks = len(plan.b_user)
            k = rng.poisson(self.flows_per_host_day or 6, blocks)
            b = np.repeat(np.arange(blocks), k)
            m = len(b)
            span = np.maximum(plan.b_last[b] - plan.b_start[b], US)
            imap = rng.random(m) < 0.3
            parts.append({
                "ts": plan.b_start[b] + (rng.random(m) * span).astype(np.int64), "orig": plan.b_client_ip[b],
                "oport": rng.integers(49152, 65535, m),
                "resp": np.where(imap, _ip(MAIL_STORE[1]), _ip("198.51.100.0") + rng.integers(2, 254, m)),
                "rport": np.where(imap, 993, 443), "service": np.ones(m, np.int8),
                "dur": rng.integers(200_000, 120 * US, m), "ob": _lognormal(rng, 2_000, 1.0, m).astype(np.int64),
                "rb": _lognormal(rng, 40_000, 1.5, m).astype(np.int64),
            })
        table = pa.table({key: np.concatenate([p[key] for p in parts]) for key in parts[0]})
        table = table.append_column("uid", pa.array(np.arange(table.num_rows)))
        con.register("conn_flows", table)
        mine = f"""
        SELECT zeek_conn_line(ts, 'C' || substr(md5('c' || uid), 1, 17), ew_ip(orig), oport, ew_ip(resp), rport, 'tcp',
                              CASE WHEN service = 0 AND rport = 587 THEN 'smtp,ssl' ELSE 'ssl' END, dur, ob, rb, 'SF',
                              'T', CASE WHEN rport = 443 AND service = 1 THEN 'F' ELSE 'T' END, 0, 'ShADadFf',
                              ob // 1400 + 4, ob + (ob // 1400 + 4) * 52, rb // 1400 + 4, rb + (rb // 1400 + 4) * 52,
                              '(empty)') AS line, ts, 0 AS src
        FROM conn_flows
        """
        if network is not None:
            theirs = str(network["conn_log"]).replace("'", "''")
            con.execute(f"""CREATE OR REPLACE TEMP TABLE conn_all AS {mine} UNION ALL
                SELECT line, CAST(round(CAST(split_part(line, chr(9), 1) AS DOUBLE) * 1e6) AS BIGINT), 1
                FROM read_csv('{theirs}', columns = {{'line': 'VARCHAR'}}, delim = e'\\x01', quote = '',
                              escape = '', header = false, auto_detect = false)
                WHERE NOT starts_with(line, '#')""")
            assets = network["assets"] + [vpn_asset]
        else:
            con.execute(f"CREATE OR REPLACE TEMP TABLE conn_all AS {mine}")
            assets = own_assets + [vpn_asset]
        count = zeek_conn.write_query(con, "SELECT line FROM conn_all ORDER BY ts, src, line", conn_log,
                                      self.first.strftime(zeek_conn.STAMP),
                                      (self.end + timedelta(days=1)).strftime(zeek_conn.STAMP))
        con.execute("DROP TABLE conn_all")
        network_labels = None
        if network is not None:
            network_labels = out_dir / "network_labels.csv"
            shutil.move(str(network["labels"]), network_labels)
            shutil.rmtree(network["folder"], ignore_errors=True)
        return conn_log, assets, count, network_labels

    def _network(self, out_dir: Path) -> dict | None:
        """Run the network generator into a scratch folder; None when it is not installed or too small."""
        try:
            from exfilwatch.synth.network import generate_network
        except ImportError:
            self.network_note = "network generator not used: exfilwatch.synth.network is not installed"
            return None
        hosts = self.U * self.hosts_per_user
        folder = out_dir / ".network"
        shutil.rmtree(folder, ignore_errors=True)
        try:
            dataset = generate_network(folder, days=self.D, hosts=hosts, seed=self.seed, end=self.end,
                                       timezone=self.tz_name,
                                       flows_per_host_day=max(100, self.flows_per_host_day or 100))
        except (RuntimeError, ValueError) as exc:  # too small a network for its cases: use the own flows
            shutil.rmtree(folder, ignore_errors=True)
            self.network_note = f"network generator not used: {exc}"
            return None
        assets = (yaml.safe_load(dataset.config.read_text(encoding="utf-8")) or {}).get("assets", [])
        return {"conn_log": dataset.conn_log, "assets": assets, "labels": dataset.labels, "folder": folder,
                "flows": dataset.flows}

    # -- config and labels ------------------------------------------------------------------------

    def _write_config(self, path: Path, assets: list[dict]) -> Path:
        people = self.people
        identities = [
            {"user": people.names[u], "emails": [self.book.address[self.contacts.users[u]]],
             "vpn_accounts": [people.names[u]], "hosts": [_ip_str(int(h)) for h in people.hosts[u]],
             "department": DEPARTMENTS[people.dept[u]]}
            for u in range(self.U)
        ]
        identities.append({"user": NEWSLETTER_USER, "emails": [NEWSLETTER_ADDRESS], "vpn_accounts": [],
                           "hosts": [MARKETING_SERVER[1]], "department": "marketing"})
        config = {"timezone": self.tz_name, "assets": assets, "internal_domains": [INTERNAL_DOMAIN],
                  "identities": identities}
        path.write_text(
            "# Generated by exfilwatch generate --org: the synthetic organisation's settings.\n"
            + yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=200), encoding="utf-8")
        return path

    def _write_labels(self, path: Path) -> Path:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(LABEL_HEADER)
            for case in self.cases:
                for day in case.days:
                    description = case.description
                    if case.sessions:
                        description += f"; VPN session(s) {' '.join(case.sessions)}"
                    writer.writerow([case.case_id, "", case.user, day.isoformat(), TECHNIQUE, case.expected, description])
        return path


def _install_sql_macros(con: duckdb.DuckDBPyConnection) -> None:
    _text.install(con)
    for writer in (pulse_secure, postfix, exchange, zeek_conn):
        writer.install(con)
    subjects = "[" + ", ".join("'" + s.replace("'", "''") + "'" for s in SUBJECTS) + "]"
    con.execute(f"""
        CREATE OR REPLACE TEMP MACRO ex_subject(h) AS {subjects}[1 + (h % {len(SUBJECTS)})::INTEGER];
    """)


def generate_organisation(
    out_dir: Path,
    users: int = 1000,
    days: int = 90,
    seed: int = 1,
    end: date = date(2026, 10, 31),
    mail: str = "postfix",
    timezone: str = "America/New_York",
    hosts_per_user: int = 1,
    flows_per_host_day: int | None = None,
    network: bool = True,
    syslog_timestamps: str | None = None,
    vpn_syslog: str = "rsyslog",
) -> OrgDataset:
    """Write a synthetic organisation's VPN, mail and flow logs with labelled cases into `out_dir`.

    `mail`: "postfix" (maillog) or "exchange" (MessageTracking/MSGTRK*.LOG). `network`: include the
    network generator's flows (exfilwatch.synth.network, `flows_per_host_day` of them per host and
    day, at least 100) in conn.log; without it (or when it is not installed) conn.log holds the
    org's own flows: mail submissions plus `flows_per_host_day` (default 6) per block of work.
    `syslog_timestamps`: "bsd" (`Oct  5 08:59:12`) or "rfc3339" for the maillog; by default
    "bsd", or "rfc3339" when the period spans New Year (a year-less log over New Year can't be dated
    from the file's modification time). `vpn_syslog`:
    "rsyslog" (`<ISO time> vpn01 PulseSecure: <standard message>`) or "rfc5424"
    (`<134>1 <ISO time> vpn01 PulseSecure: - - - <standard message>`).
    """
    if mail not in MAIL_FORMATS:
        raise ValueError(f"mail must be one of {', '.join(MAIL_FORMATS)}, not {mail!r}")
    if syslog_timestamps is None:
        syslog_timestamps = "bsd" if (end - timedelta(days=days - 1)).year == end.year else "rfc3339"
    if syslog_timestamps not in ("bsd", "rfc3339"):
        raise ValueError("syslog_timestamps must be 'bsd' or 'rfc3339'")
    if vpn_syslog not in ("rsyslog", "rfc5424"):
        raise ValueError("vpn_syslog must be 'rsyslog' or 'rfc5424'")
    org = _Org(users=users, days=days, seed=seed, end=end, timezone=timezone, hosts_per_user=hosts_per_user,
               flows_per_host_day=flows_per_host_day, network=network, vpn_syslog=vpn_syslog)
    return org.write(Path(out_dir), mail, syslog_timestamps)


__all__ = ["OrgCase", "OrgDataset", "generate_organisation", "us_holidays"]
