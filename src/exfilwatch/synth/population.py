"""The synthetic organisation's people and the world they mail: who the employees are (names,
departments, remote / hybrid / office, mail rate, share of external and personal recipients,
attachment habit, working hours, home and tunnel addresses, laptops, partner domains), the address
book (every address with its domain and that domain's mail exchanger), the fixed infrastructure,
and the calendar (local <-> UTC across DST changes, US federal holidays).

No file formats here: `plan` decides what happens, `org` writes it with `writers`.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

INTERNAL_DOMAIN = "corp.example"
# Addresses shared with the network generator (exfilwatch.synth.network): mx1, the mailbox
# servers, the workstation range; the VPN pools are this module's own.
MAIL_SERVER = ("mx1.corp.example", "10.10.0.5")  # the Postfix relay / Exchange transport
MAIL_STORE = ("mbx1.corp.example", "10.10.0.6")  # mailboxes (LMTP from Postfix; MBX01 for Exchange)
WEBMAIL = ("webmail.corp.example", "10.10.0.7")  # webmail / ActiveSync front end
MARKETING_SERVER = ("mkt-auto01.corp.example", "10.30.0.60")
NEWSLETTER_USER = "svc.newsletter"
NEWSLETTER_ADDRESS = f"newsletter@{INTERNAL_DOMAIN}"
PARTNER_DOMAINS = 200
EXCHANGE_SERVER = ("EXCH1", "10.10.0.6")  # Exchange 2019 mailbox server with its transport

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


def _make_people(rng: np.random.Generator, users: int, hosts_per_user: int, rate_sigma: float = 0.55) -> _People:
    combos = len(FIRST_NAMES) * len(LAST_NAMES)
    picks = rng.choice(combos, size=users, replace=users > combos)
    first = [FIRST_NAMES[i // len(LAST_NAMES)] for i in picks]
    last = [LAST_NAMES[i % len(LAST_NAMES)] for i in picks]
    names, seen = [], {}
    for f, surname in zip(first, last):
        base = f"{f}.{surname}"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}{seen[base]}")
    dept = rng.permutation(np.repeat(np.arange(len(DEPARTMENTS)), _department_quota(users)))
    mode = rng.choice(3, size=users, p=MODE_SHARE)
    rate = _lognormal(rng, DEPT_MSGS[dept], rate_sigma)
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
        self.address.extend(f"{local}@{self.domains[d]}" for local, d in zip(locals_, domain_ids))
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
