"""What happens in the synthetic organisation, and when: the injected leak cases (slow leak to the
own personal address, burst to never-mailed domains, one large upload) and the benign hard cases
(finance month-end reporting, the weekly newsletter, a new hire, a user back from leave, a sales
user who mails many domains), who works on which day, VPN sessions and office days, the mail each
user sends and receives, the appliance's VPN events, the mail server's timeline per message and
recipient, and the org's own network flows.

Everything is numpy arrays drawn from one seed (one random stream per concern, so a change in one
leaves the others alone); `org` turns them into log files with the writers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
import pyarrow as pa

from exfilwatch.synth.population import (
    DEPARTMENTS, DOW_FACTOR, ENGINEERING, EXEC, FINANCE, HR, HYBRID, LEGAL, MAIL_SERVER, MAIL_STORE,
    MARKETING, MARKETING_SERVER, MODE_VPN, NEWSLETTER_ADDRESS, NEWSLETTER_USER, PARTNER_DOMAINS, REMOTE, SALES,
    SPRAY_NAMES, US, WEBMAIL, EXCHANGE_SERVER, INTERNAL_DOMAIN, _AddressBook, _Zone, _ip, _lognormal, _make_addresses,
    _make_people, _naive_us, _pool_ip, _set_partners, _unique_u32, us_holidays,
)
from exfilwatch.synth.profiles import PROFILES, Profile
from exfilwatch.synth.writers import pulse_secure

KIND_SUBMIT, KIND_INBOUND, KIND_NEWSLETTER = 0, 1, 2
TAG_NONE, TAG_LEAK, TAG_BURST, TAG_UPLOAD, TAG_MONTH_END, TAG_WEEKLY, TAG_NEWSLETTER = range(7)
TAG_CAMPAIGN, TAG_BILLING, TAG_NEW_DOMAIN = range(7, 10)
BILLING_USER = "svc.billing"


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
class Plan:
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


@dataclass
class Simulation:
    """What happened: the blocks of work, the VPN session ids, the messages and their recipients."""

    plan: Plan
    session_ids: np.ndarray
    msgs: dict[str, np.ndarray]
    rcpts: dict[str, np.ndarray]


class Organisation:
    """The population, the cases cast on it, and everything that happens: blocks of work, VPN sessions,
    the mail and the flows, as numpy arrays (no file formats)."""


    def __init__(self, users: int, days: int, seed: int, end: date, timezone: str, hosts_per_user: int,
                 flows_per_host_day: int | None, network: bool, vpn_syslog: str,
                 profile: Profile = PROFILES["default"]):
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
        self.profile = profile
        self.rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(16)]
        # the profile's own choices draw from a stream of their own: the default's arrays stay as they were
        self.profile_rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
        self.people = _make_people(self.rngs[0], users, hosts_per_user, profile.rate_sigma)
        self.book = _AddressBook()
        self.contacts = _make_addresses(self.rngs[1], self.book, self.people)
        self.billing = self.book.add("billing", INTERNAL_DOMAIN) if profile.billing_mailbox else -1
        self.part_time: list[int] = []
        self.always_on: list[int] = []
        self.heavy: list[int] = []
        self.campaigners: list[int] = []
        self.volume_leaker = -1
        # client host names (smtpd's "host[ip]"): 0 unknown (VPN pool, no PTR), then servers, laptops
        self.client_hosts = ["unknown", WEBMAIL[0], MARKETING_SERVER[0]] + [
            f"{name.lower()}.{INTERNAL_DOMAIN}" for name in self.people.laptop]
        self.cases: list[OrgCase] = []

    def simulate(self) -> Simulation:
        """Cast the cases, plan the days and generate all mail; the same seed gives the same arrays."""
        self.cast()
        plan = self.plan()
        session_ids = _unique_u32(self.rngs[9], int(plan.b_vpn.sum()))
        buf = _MailBuf()
        self.user_mail(plan, buf)
        self.inbound_mail(buf)
        news_days = self.newsletter(buf)
        self.cases_mail(plan, buf, session_ids)
        self.finance_reports(plan, buf)
        self.profile_mail(plan, buf, session_ids)
        msgs, rcpts = buf.build()
        self.benign_cases(plan, msgs, news_days)
        return Simulation(plan=plan, session_ids=session_ids, msgs=msgs, rcpts=rcpts)

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
        self.reporters = finance[: max(1, min(self.profile.finance_reporters, len(finance)))]
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
        self._cast_profile(taken)
        self.month_end_days = self._month_ends()
        self.week_start_days = self._week_starts()

    def _cast_profile(self, taken: set[int]) -> None:
        """The profile's people: the volume leaker, heavy users, campaigners, part-time and always-on VPN users."""
        p, rng, people = self.profile, self.profile_rng, self.people
        free = [u for u in range(self.U) if u not in taken]
        rng.shuffle(free)
        if p.new_domain_volume and free:
            # an ordinary user (a median rate): fifteen times their day is not an outlier of the whole org
            median = np.median(people.rate[free])
            self.volume_leaker = min(free, key=lambda u: abs(people.rate[u] - median))
            free.remove(self.volume_leaker)
            people.mode[self.volume_leaker] = REMOTE
            self.volume_day = self._business_day_near(self.D - 1 - max(3, self.D // 7))
            if self.volume_day in (self.burst_day, self.upload_day):
                self.volume_day = self._business_day_near(self.volume_day - 1)
        self.heavy = [free.pop() for _ in range(min(p.heavy_users, len(free)))]
        for u in self.heavy:
            people.rate[u] *= 5.0
            people.p_attach[u] = max(people.p_attach[u], 0.7)
            people.p_ext[u] = max(people.p_ext[u], 0.5)
        if p.campaigns:
            self.campaigners = [u for u in free if people.dept[u] == MARKETING][:3]
            free = [u for u in free if u not in self.campaigners]
        n_part, n_always = int(round(p.part_time_share * self.U)), int(round(p.always_on_share * self.U))
        self.part_time = free[:n_part]
        self.always_on = free[n_part:n_part + n_always]
        for u in self.always_on:
            people.mode[u] = REMOTE
            people.hours[u] = 12.5

    # -- who works when, and the VPN sessions -----------------------------------------------------

    def plan(self) -> Plan:
        rng, people, U, D = self.rngs[3], self.people, self.U, self.D
        day = np.arange(D)[None, :]
        employed = day >= people.start_day[:, None]
        leave = (day >= people.leave_lo[:, None]) & (day <= people.leave_hi[:, None])
        pto = rng.random((U, D)) < 0.03
        weekend_work = rng.random((U, D)) < 0.04
        works = employed & ~leave & np.where(self.business[None, :], ~pto, weekend_work & (self.dow[None, :] >= 5))
        chance = MODE_VPN[people.mode]
        chance[self.part_time] = 0.25
        chance[self.always_on] = 1.0
        vpn = works & (rng.random((U, D)) < chance[:, None])
        # the injected cases happen in VPN sessions on working days
        forced = [(self.leaker, d) for d in self.leak_days if self.business[d]]
        forced += [(self.burster, self.burst_day), (self.uploader, self.upload_day)]
        if self.volume_leaker >= 0:
            forced.append((self.volume_leaker, self.volume_day))
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
        return Plan(works=works, vpn=vpn, b_user=b_user, b_day=b_day, b_start=b_start, b_last=b_last,
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

    def _in_blocks(self, rng: np.random.Generator, plan: Plan, mask: np.ndarray, keys: np.ndarray,
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

    def user_mail(self, plan: Plan, buf: _MailBuf) -> None:
        rng, people, U, D = self.rngs[4], self.people, self.U, self.D
        weekend = self.dow >= 5
        shape = self.profile.day_shape
        lam = people.rate[:, None] * DOW_FACTOR[self.dow][None, :] * rng.gamma(shape, 1.0 / shape, (U, D))
        lam = np.where(weekend[None, :], lam * 0.4, lam)
        count = np.where(plan.works, rng.poisson(lam), 0)
        count[self.hire, :] = np.where(plan.works[self.hire], np.minimum(count[self.hire], 6), 0)
        keys = np.repeat(np.arange(U * D), count.ravel())
        user = keys // D
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

    def _case_mail(self, rng: np.random.Generator, plan: Plan, buf: _MailBuf, user: int, day: int, n: int,
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

    def cases_mail(self, plan: Plan, buf: _MailBuf, session_ids: np.ndarray) -> None:
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

    def finance_reports(self, plan: Plan, buf: _MailBuf) -> None:
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

    def profile_mail(self, plan: Plan, buf: _MailBuf, session_ids: np.ndarray) -> None:
        """The profile's own mail: campaigns, the billing mailbox and the volume-to-a-new-domain leak."""
        rng, people, c = self.profile_rng, self.people, self.contacts
        for u in self.campaigners:  # every other Wednesday, a campaign to prospects at many companies
            days = [d for d in range(self.D) if self.dow[d] == 2 and self.business[d] and (d // 7) % 2 == 0
                    and plan.works[u, d]]
            for d in days:
                domains = rng.choice(len(c.other_first), size=int(rng.integers(20, 31)), replace=False)
                n = int(rng.integers(len(domains), 46))
                rcpts = [np.array([c.other_first[x] + rng.integers(0, c.other_contacts)]) for x in
                         np.concatenate([domains, rng.choice(domains, n - len(domains))])]
                size = _lognormal(rng, 120_000, 0.5, n).astype(np.int64) + 3000
                self._case_mail(rng, plan, buf, u, d, n, size, rcpts, TAG_CAMPAIGN, vpn_only=False)
        if self.billing >= 0:  # invoices to customers from the automation server, twice as many at month-end
            n_partner = len(c.partner_first)
            for d in (d for d in range(self.D) if self.business[d]):
                n = int(rng.integers(20, 61)) * (2 if d in self.month_end_days else 1)
                t = self.zone.to_utc(self.day0_local[d] + (rng.uniform(7.0, 9.0, n) * 3600 * US).astype(np.int64))
                buf.add(kind=KIND_SUBMIT, sender=np.full(n, self.billing), t0=np.sort(t),
                        size=_lognormal(rng, 90_000, 0.4, n).astype(np.int64) + 2000,
                        client_ip=np.full(n, _ip(MARKETING_SERVER[1])), client_host=np.full(n, 2),
                        nrcpt=np.ones(n, np.int64),
                        rcpt=c.partner_first[rng.integers(0, n_partner, n)] + rng.integers(0, c.partner_contacts, n),
                        user=np.full(n, -1), tag=TAG_BILLING)
        u = self.volume_leaker
        if u >= 0:
            # fifteen times the user's usual (median) day, in a few large messages, to one company never mailed
            mine = [(p["t0"][p["user"] == u], p["size"][p["user"] == u]) for p in buf.parts
                    if p["kind"][0] == KIND_SUBMIT]
            t = np.concatenate([m[0] for m in mine])
            size = np.concatenate([m[1] for m in mine])
            day = (t + self.zone.offset(t) * US - self.day0_local[0]) // (86400 * US)
            usual = float(np.median(np.bincount(day, weights=size)[np.bincount(day) > 0]))
            total = 15.0 * usual
            n = max(2, int(np.ceil(total / 8_000_000)))
            target = c.burst[-1]
            sizes = np.full(n, int(total / n), np.int64)
            sessions = self._case_mail(rng, plan, buf, u, self.volume_day, n, sizes, [np.array([target])] * n,
                                       TAG_NEW_DOMAIN)
            self.cases.append(OrgCase(
                case_id="new-domain-volume", kind="new-domain-volume", user=people.names[u], expected="fire",
                days=(self.dates[self.volume_day],), sessions=tuple(f"{session_ids[i]:08x}" for i in sessions),
                recipients=(self.book.address[target],),
                description=f"volume to a new business domain: {n} messages, {total / 1e6:.0f} MB in one session "
                            f"(15 times the user's usual day of {usual / 1e6:.1f} MB) to "
                            f"{self.book.domains[self.book.domain[target]]}, never mailed before"))

    def benign_cases(self, plan: Plan, msgs: dict[str, np.ndarray], news_days: list[int]) -> None:
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
        for u in self.heavy:
            self.cases.append(OrgCase(
                case_id="always-heavy", kind="always-heavy", user=people.names[u], expected="quiet", days=days_of(u),
                description="benign: a user who always sends five times as much as their peers, mostly attachments"))
        for u in self.campaigners:
            days = tuple(self.dates[d] for d in range(self.D) if self.dow[d] == 2 and self.business[d]
                         and (d // 7) % 2 == 0 and plan.works[u, d])
            self.cases.append(OrgCase(
                case_id="campaign", kind="campaign", user=people.names[u], expected="quiet", days=days,
                description="benign: a marketing campaign every other Wednesday, 25-45 messages to 20-30 "
                            "prospect companies"))
        if self.billing >= 0:
            self.cases.append(OrgCase(
                case_id="billing-mailbox", kind="billing-mailbox", user=BILLING_USER, expected="quiet",
                days=tuple(self.dates[d] for d in range(self.D) if self.business[d]),
                description="benign: the billing mailbox mails invoices to customers every business day, twice "
                            "as many at month-end"))

    def vpn_events(self, plan: Plan, session_ids: np.ndarray) -> pa.Table:
        """The appliance's events of every VPN session (and of password spraying), with UTC offsets."""
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
        vpn = pulse_secure
        add(failed, vpn.AUTH_FAILED, fail_t)
        add(failed, vpn.LOGIN_FAILED, fail_t)
        add(all_, vpn.AUTH_OK, login - US)
        add(all_, vpn.LOGIN, login)
        add(all_, vpn.TUNNEL_START, login + rng.integers(2, 9, n) * US)
        add(has_end, vpn.TUNNEL_END, tun_end)
        add(has_end, vpn.CLOSED, tun_end, duration)
        add(end_type == 0, vpn.LOGOUT, logout_t)
        add(end_type == 1, vpn.TIMED_OUT, logout_t, last)
        # password spraying from the internet against accounts that do not exist (or do)
        daily = rng.poisson(4, self.D)
        sd = np.repeat(np.arange(self.D), daily)
        m = len(sd)
        st = self.zone.to_utc(self.day0_local[sd] + (rng.random(m) * 86400 * US).astype(np.int64)) // US * US
        sp_user = np.where(rng.random(m) < 0.2, rng.integers(0, self.U, m), -1 - rng.integers(0, len(SPRAY_NAMES), m))
        sp_src = _ip("192.0.2.0") + rng.integers(2, 254, m)
        base = (n + np.arange(m)) * 16
        for kind, dt in ((pulse_secure.AUTH_FAILED, 0), (pulse_secure.LOGIN_FAILED, 0)):
            rows.append(pa.table({
                "ts": st + dt, "ord": base + kind, "kind": np.full(m, kind, np.int8), "u": sp_user, "src": sp_src,
                "tip": np.zeros(m, np.int64), "sid": np.zeros(m, np.int64), "x": np.zeros(m, np.int64),
                "y": np.zeros(m, np.int64), "z": np.zeros(m, np.int64), "agent": np.zeros(m, np.int64)}))
        events = pa.concat_tables(rows)
        events = events.append_column("off", pa.array(self.zone.offset(events["ts"].to_numpy())))
        return events

    def mail_timeline(self, msgs: dict[str, np.ndarray], rcpts: dict[str, np.ndarray]
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """When the server handles each message and each recipient: its queue, delays, pids, TLS sessions."""
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
        timeline = {
            "m": np.arange(n), "kind": msgs["kind"], "sender": msgs["sender"], "t0": t0, "t_clean": t_clean,
            "t_qmgr": t_qmgr, "t_disc": t_qmgr + rng.integers(20_000, 90_000, n), "t_removed": t_removed,
            "size": size, "nrcpt": msgs["nrcpt"], "cip": msgs["client_ip"], "chost": msgs["client_host"],
            "inode": inode, "usec": t0 % US, "pid_d": 2000 + ((np.arange(n) // 60) * 7919 + 17) % 60000,
            "pid_c": 2000 + ((np.arange(n) // 90) * 104729 + 5003) % 60000,
            "pid_q": 1800 + (t0 // (7 * 86400 * US)) % 500 * 13, "tag": msgs["tag"],
            "off_0": self.zone.offset(t0), "off_c": self.zone.offset(t_clean), "off_q": self.zone.offset(t_qmgr),
            "off_r": self.zone.offset(t_removed),
        }
        deliveries = {
            "m": rcpts["msg"], "r": ridx, "addr": rcpts["addr"], "t": t_deliv, "off": self.zone.offset(t_deliv),
            "tls": first_dom, "local": r_local, "pid_s": 2000 + ((ridx // 45) * 6151 + 31013) % 60000,
            "d_before": before[rcpts["msg"]], "d_queue": in_queue, "d_conn": conn_setup, "d_xmit": xmit,
        }
        return timeline, deliveries

    def own_flows(self, plan: Plan, msgs: dict[str, np.ndarray], mail: str, background: bool) -> pa.Table:
        """The org's own flows: every submission from its client to the mail server, and with `background`
        (no network generator) a few mailbox syncs and web requests per block of work."""
        rng = self.rngs[12]
        # every submission: a flow from the client (tunnel, workstation, webmail, marketing server) to the
        # Postfix relay's submission port, or to Exchange (MAPI over HTTPS; SMTP for the newsletter)
        submit = msgs["kind"] != KIND_INBOUND
        t = msgs["t0"][submit]
        n = len(t)
        dur = np.maximum(((msgs["size"][submit] / 4e6) * US).astype(np.int64), 200_000) + 300_000
        mapi = (msgs["kind"][submit] == KIND_SUBMIT) & (mail == "exchange")
        server = _ip(EXCHANGE_SERVER[1]) if mail == "exchange" else _ip(MAIL_SERVER[1])
        parts = [{
            "ts": t, "orig": msgs["client_ip"][submit], "oport": rng.integers(49152, 65535, n),
            "resp": np.full(n, server), "rport": np.where(mapi, 443, 587), "service": np.zeros(n, np.int8),
            "dur": dur, "ob": msgs["size"][submit] + rng.integers(2_000, 4_000, n), "rb": rng.integers(3_000, 6_000, n),
        }]
        if background:
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
        return table
