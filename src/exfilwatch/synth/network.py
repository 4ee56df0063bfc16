"""Synthetic enterprise network: a Zeek conn.log with labelled email-collection incidents.

`generate_network` writes three files into a folder:

* ``conn.log`` (or ``conn.log.gz``): Zeek conn.log in the real TSV layout (``#separator``
  header, ``#fields``/``#types``, rows sorted by ``ts``, ``-`` for unset values, ``#close``).
* ``config.yaml``: the asset inventory (time zone, address ranges and their categories).
* ``labels.csv``: the injected incidents that the two email-volume detections must find and
  the benign hard cases they must not flag.

The network (addresses are fixed, only volumes and timing depend on the seed):

* 10.10.0.0/28, ``email_server``: 10.10.0.5 ``mx1`` (Postfix MX and SMTP relay), 10.10.0.6
  ``exch1`` and 10.10.0.7 ``exch2`` (Exchange mailbox servers: IMAPS 993, EWS/MAPI/OWA 443).
* 10.30.0.0/24, ``server``: 10.30.0.10/.11 domain controllers (DNS, Kerberos, LDAP, NTP),
  10.30.0.20/.21 file servers, 10.30.0.25 helpdesk (receives mail by SMTP from mx1),
  10.30.0.40 backup server (nightly Exchange backups), 10.30.0.50 mail archive (pulls every
  mailbox over EWS around the clock).
* 10.20.0.0/16, ``workstation``: the ``hosts`` clients, 10.20.(1 + i // 250).(10 + i % 250).
* Internet: web servers, remote MX hosts, senders of inbound mail, two public resolvers.

Clients reach the mailbox servers over EWS/MAPI (443) or IMAPS (993) and submit over 587; their
daily mail volume is lognormal across hosts (heavy tail) and per day, with a weekday rhythm and
business hours in the local time zone. Most flows are not mail: DNS, web, SMB, Kerberos, LDAP,
NTP, RPC. Mail servers also open connections: SMTP between mx1 and Exchange, SMTP to remote
MX hosts and to the helpdesk, DAG replication, DNS/LDAP to the DCs, log copies to a file
server, nightly backups.

Labelled cases, all on the last day ``end`` (detections on daily sums per local day):

* ``hosts_receiving_high_volume_of_network_traffic_from_email_server`` (sum of ``resp_bytes``
  by ``id.orig_h`` over flows to an email server): a workstation that collects mailboxes over
  EWS at night (fire, T1114.002) and the mail archive, always heavy (quiet).
* ``email_servers_sending_high_volume_traffic_to_hosts`` (sum of ``orig_bytes`` by
  ``id.resp_h`` over flows from an email server): exch2 writing mailbox exports (PST) to the
  file server 10.30.0.21 (fire, T1114) and the nightly backup to 10.30.0.40 (quiet).

A day fires when its sum is above mean + 3 sample standard deviations of all (host, day) sums
in the window and above the host's own mean + 3 standard deviations over its earlier days,
with at least 4 daily samples for the host. The generator checks this on the data it writes:
the two ``fire`` cases exceed both thresholds by a factor of 2 and the ``quiet`` cases exceed
the all-host threshold but stay below their own, for every window of 8 or more days ending on
``end`` (so also for the detections' default 30-day history). The background is kept clean:
no other (host, day) would fire, judged with all earlier data or the last 31 days; the rare
background day that would is scaled down to its own mean + 1 standard deviation.
"""

from __future__ import annotations

import csv
import itertools
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pyarrow as pa

from exfilwatch.synth.writers import _text, zeek_conn
from exfilwatch.synth.writers.zeek_conn import FIELDS, TYPES

__all__ = ["NetworkDataset", "generate_network", "DETECTION_A", "DETECTION_B", "ADDRESSES", "FIELDS", "TYPES"]

DETECTION_A = "hosts_receiving_high_volume_of_network_traffic_from_email_server"
DETECTION_B = "email_servers_sending_high_volume_traffic_to_hosts"

# Fixed infrastructure: index in the address table -> (name, address).
MX1, EXCH1, EXCH2, DC1, DC2, FS1, FS2, HELPDESK, BACKUP, ARCHIVE = range(10)
_INFRA = [
    ("mx1", "10.10.0.5"), ("exch1", "10.10.0.6"), ("exch2", "10.10.0.7"),
    ("dc1", "10.30.0.10"), ("dc2", "10.30.0.11"), ("fs1", "10.30.0.20"), ("fs2", "10.30.0.21"),
    ("helpdesk", "10.30.0.25"), ("backup", "10.30.0.40"), ("archive", "10.30.0.50"),
]
ADDRESSES = {name: ip for name, ip in _INFRA}
_EMAIL = (MX1, EXCH1, EXCH2)
_LINUX_INFRA = (MX1, HELPDESK, BACKUP)  # TCP timestamps on: 52-byte headers
_PUBLIC_RESOLVERS = ("9.9.9.9", "149.112.112.112")

TCP, UDP = 0, 1
PROTOS = ["tcp", "udp"]
SERVICES = ["-", "dns", "ssl", "http", "smtp", "smtp,ssl", "gssapi,smb", "krb_tcp", "ldap_tcp", "ntp", "dce_rpc"]
(SV_NONE, SV_DNS, SV_SSL, SV_HTTP, SV_SMTP, SV_SMTPS, SV_SMB, SV_KRB, SV_LDAP, SV_NTP, SV_RPC) = range(11)
STATES = ["SF", "S0", "REJ", "RSTO", "RSTR", "S1"]
SF, S0, REJ, RSTO, RSTR, S1 = range(6)
HISTORIES = ["ShADadFf", "ShADadfF", "ShADdaFf", "Dd", "D", "S", "Sr", "ShADadR", "ShADadr", "ShADad"]
H_DD, H_D, H_S, H_SR, H_RSTO, H_RSTR, H_S1 = 3, 4, 5, 6, 7, 8, 9

US = 1_000_000  # microseconds per second
_B62 = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", dtype=np.uint8)

# Relative flow rate per local hour.
_H_OFFICE_WD = [1, 1, 1, 1, 1, 2, 4, 10, 22, 28, 28, 26, 22, 26, 28, 27, 24, 16, 9, 6, 5, 4, 3, 2]
_H_OFFICE_WE = [3, 2, 2, 1, 1, 1, 2, 3, 5, 7, 8, 8, 8, 8, 8, 8, 7, 7, 7, 7, 6, 5, 4, 3]
_H_INTERNET = [4, 4, 3, 3, 3, 4, 6, 9, 12, 13, 13, 12, 11, 12, 12, 12, 11, 10, 8, 7, 6, 5, 5, 4]
_H_FLAT = [1] * 24

# The judged windows: every window of at least this many days ending on the last day, and for
# the days before it the window from the first day and the detections' default -30d@d window.
MIN_WINDOW_DAYS = 8
HISTORY_DAYS = 30
FIRE_MARGIN = 2.0        # injected sums are at least this multiple of both thresholds
HARD_CASE_MARGIN = 1.1   # benign heavy hosts are at least this multiple of the all-host threshold
CLEAN_GLOBAL_SHARE = 0.8  # background days above own threshold and 80% of the global one are damped


@dataclass(frozen=True)
class NetworkDataset:
    conn_log: Path | None  # None: the flows went to `flows_to`
    config: Path
    labels: Path
    flows: int


@dataclass(frozen=True)
class _Case:
    case_id: str
    detection_id: str
    entity: str
    day: str
    technique: str
    expected: str
    description: str


# --------------------------------------------------------------------------------------------
# calendar and address plan


class _Calendar:
    """The local days of the data set and how to turn local clock times into epoch time."""

    def __init__(self, end: date, days: int, timezone: str) -> None:
        tz = ZoneInfo(timezone)
        self.days = days
        self.dates = [end - timedelta(days=days - 1 - i) for i in range(days)]
        epoch = date(1970, 1, 1)

        def utc(d: date, t: time = time(0)) -> int:
            return int(datetime.combine(d, t, tzinfo=tz).timestamp())

        self.start = np.array([utc(d) for d in self.dates], dtype=np.int64)
        self.stop = np.array([utc(d + timedelta(days=1)) for d in self.dates], dtype=np.int64)
        naive = np.array([(d - epoch).days * 86400 for d in self.dates], dtype=np.int64)
        self.naive = naive
        self.off_midnight = naive - self.start
        self.off_noon = np.array(
            [int(datetime.combine(d, time(12), tzinfo=tz).utcoffset().total_seconds()) for d in self.dates],
            dtype=np.int64)
        self.weekday = np.array([d.weekday() for d in self.dates], dtype=np.int8)
        self.weekend = self.weekday >= 5
        self.tz = tz

    def epoch_us(self, day: np.ndarray, tod_us: np.ndarray) -> np.ndarray:
        """Local clock time of day `tod_us` on day index `day` -> epoch microseconds, kept inside the day."""
        off = np.where(tod_us < 3 * 3600 * US, self.off_midnight[day], self.off_noon[day])
        ts = (self.naive[day] - off) * US + tod_us
        return np.clip(ts, self.start[day] * US, self.stop[day] * US - 1)


def _public_ips(rng: np.random.Generator, n: int, exclude: set[int]) -> np.ndarray:
    """`n` distinct unicast public IPv4 addresses (as uint32), outside private and reserved ranges."""
    reserved = [(0x00000000, 8), (0x0A000000, 8), (0x64400000, 10), (0x7F000000, 8), (0xA9FE0000, 16),
                (0xAC100000, 12), (0xC0000000, 24), (0xC0000200, 24), (0xC0A80000, 16), (0xC6120000, 15),
                (0xC6336400, 24), (0xCB007100, 24)]
    out = np.empty(0, dtype=np.uint32)
    while out.size < n:
        cand = rng.integers(0x01000000, 0xDF000000, size=2 * n + 64, dtype=np.uint32)
        keep = np.ones(cand.size, dtype=bool)
        for net, bits in reserved:
            keep &= (cand >> np.uint32(32 - bits)) != np.uint32(net >> (32 - bits))
        keep &= (cand & 0xFF) != 0
        keep &= (cand & 0xFF) != 0xFF
        cand = np.concatenate([out, cand[keep]])
        _, first = np.unique(cand, return_index=True)
        cand = cand[np.sort(first)]
        out = cand[~np.isin(cand, np.array(sorted(exclude), dtype=np.uint32))] if exclude else cand
    return out[:n]


def _ip_str(value: int) -> str:
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def _ip_int(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


class _Network:
    """The address table: every address a flow can use, by index."""

    def __init__(self, rng: np.random.Generator, hosts: int) -> None:
        self.hosts = hosts
        names = [ip for _, ip in _INFRA]
        self.client0 = len(names)
        names += [f"10.20.{1 + i // 250}.{10 + i % 250}" for i in range(hosts)]
        n_web = min(40_000, 3_000 + 30 * hosts)
        n_mx = min(10_000, 300 + 2 * hosts)
        n_senders = min(20_000, 600 + 4 * hosts)
        pool = _public_ips(rng, n_web + n_mx + n_senders, {_ip_int(x) for x in _PUBLIC_RESOLVERS})
        self.web0 = len(names)
        self.n_web = n_web
        self.mx0 = self.web0 + n_web
        self.n_mx = n_mx
        self.sender0 = self.mx0 + n_mx
        self.n_senders = n_senders
        names += [_ip_str(int(v)) for v in pool]
        self.resolver0 = len(names)
        names += list(_PUBLIC_RESOLVERS)
        self.names = names
        n = len(names)
        self.is_email = np.zeros(n, dtype=bool)
        self.is_email[list(_EMAIL)] = True
        self.is_local = np.zeros(n, dtype=bool)
        self.is_local[: self.client0 + hosts] = True
        self.linux = np.ones(n, dtype=bool)  # the internet: mostly Linux
        self.linux[: self.client0 + hosts] = False
        self.linux[list(_LINUX_INFRA)] = True

    def __len__(self) -> int:
        return len(self.names)


# --------------------------------------------------------------------------------------------
# flows

_COLS = {
    "day": np.int32, "tod": np.int64, "oh": np.int32, "op": np.int32, "rh": np.int32, "rp": np.int32,
    "proto": np.int8, "svc": np.int8, "state": np.int8, "hist": np.int8, "dur": np.int64,
    "ob": np.int64, "rb": np.int64, "unset": np.bool_, "missed": np.int64,
}
_DEFAULTS = {"state": SF, "hist": 0, "unset": False, "missed": 0, "proto": TCP}


class _Flows:
    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, n: int, **cols: object) -> None:
        if n == 0:
            return
        rec = {}
        for name, dtype in _COLS.items():
            value = cols[name] if name in cols else _DEFAULTS[name]
            arr = np.asarray(value, dtype=dtype)
            rec[name] = np.broadcast_to(arr, (n,)) if arr.ndim == 0 else arr
            if rec[name].shape != (n,):
                raise ValueError(f"column {name}: shape {rec[name].shape}, expected ({n},)")
        self.parts.append(rec)

    def build(self) -> dict[str, np.ndarray]:
        # a column at a time, letting go of its parts: the parts and the whole never all live at once
        columns = {}
        for name, dtype in _COLS.items():
            columns[name] = np.concatenate([p.pop(name) for p in self.parts]).astype(dtype, copy=False)
        self.parts = []
        return columns


def _hours(rng: np.random.Generator, n: int, weights: list[int]) -> np.ndarray:
    p = np.asarray(weights, dtype=np.float64)
    cum = np.cumsum(p / p.sum())
    return np.minimum(np.searchsorted(cum, rng.random(n), side="right"), 23)


def _tod(rng: np.random.Generator, cal: _Calendar, day: np.ndarray,
         weekday_hours: list[int], weekend_hours: list[int] | None = None) -> np.ndarray:
    """Local time of day (µs) for flows on `day`, following hourly weights."""
    n = day.size
    hour = _hours(rng, n, weekday_hours)
    if weekend_hours is not None:
        we = cal.weekend[day]
        hour[we] = _hours(rng, int(we.sum()), weekend_hours)
    return hour.astype(np.int64) * 3600 * US + rng.integers(0, 3600 * US, n)


def _window_tod(rng: np.random.Generator, n: int, start_s: float, end_s: float) -> np.ndarray:
    return rng.integers(int(start_s * US), int(end_s * US), n).astype(np.int64)


def _lognormal_int(rng: np.random.Generator, median: float, sigma: float, n: int,
                   lo: int = 0, hi: float = 5e10) -> np.ndarray:
    return np.clip(rng.lognormal(np.log(median), sigma, n), lo, hi).astype(np.int64)


def _seconds_us(seconds: np.ndarray) -> np.ndarray:
    return np.maximum((seconds * US).astype(np.int64), 1)


def _windows_ephemeral(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(49152, 65536, n)


def _linux_ephemeral(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(32768, 61000, n)


def _tcp_outcome(rng: np.random.Generator, n: int, ob: np.ndarray, rb: np.ndarray, dur: np.ndarray,
                 fail: tuple[float, float, float, float, float] = (0.012, 0.006, 0.015, 0.012, 0.004)
                 ) -> dict[str, np.ndarray]:
    """Connection states for TCP flows: SF mostly; S0, REJ, RSTO, RSTR, S1 with the given shares.

    Failed flows (S0, REJ) carry no payload; a single-SYN S0 has duration and bytes unset.
    """
    u = rng.random(n)
    cum = np.cumsum(fail)
    state = np.where(u < cum[-1], 1 + np.searchsorted(cum, u, side="right"), SF).astype(np.int8)
    hist = rng.choice(3, n, p=[0.6, 0.25, 0.15]).astype(np.int8)
    hist[state == S0] = H_S
    hist[state == REJ] = H_SR
    hist[state == RSTO] = H_RSTO
    hist[state == RSTR] = H_RSTR
    hist[state == S1] = H_S1
    ob = ob.copy()
    rb = rb.copy()
    dur = dur.copy()
    failed = (state == S0) | (state == REJ)
    ob[failed] = 0
    rb[failed] = 0
    s0 = state == S0
    single = s0 & (rng.random(n) < 0.6)
    retry = s0 & ~single
    dur[single] = 0
    dur[retry] = np.where(rng.random(int(retry.sum())) < 0.7, 3, 9) * US + rng.integers(0, 20_000, int(retry.sum()))
    rej = state == REJ
    dur[rej] = _lognormal_int(rng, 350, 0.8, int(rej.sum()), lo=20)
    cut = (state == RSTO) | (state == RSTR)
    frac = rng.uniform(0.02, 1.0, int(cut.sum()))
    ob[cut] = (ob[cut] * frac).astype(np.int64)
    rb[cut] = (rb[cut] * frac).astype(np.int64)
    dur[cut] = np.maximum((dur[cut] * frac).astype(np.int64), 1)
    return {"state": state, "hist": hist, "ob": ob, "rb": rb, "dur": dur, "unset": single}


def _udp_outcome(rng: np.random.Generator, n: int, rb: np.ndarray, dur: np.ndarray,
                 p_noreply: float) -> dict[str, np.ndarray]:
    noreply = rng.random(n) < p_noreply
    rb = np.where(noreply, 0, rb)
    dur = np.where(noreply, 0, dur)
    return {"state": np.where(noreply, S0, SF).astype(np.int8),
            "hist": np.where(noreply, H_D, H_DD).astype(np.int8),
            "rb": rb, "dur": dur, "unset": noreply}


def _split_exact(rng: np.random.Generator, total: float, n: int, sigma: float) -> np.ndarray:
    """`n` positive integers summing to round(total), with lognormal shares."""
    w = rng.lognormal(0.0, sigma, n)
    cum = np.round(np.cumsum(w) / w.sum() * round(total)).astype(np.int64)
    return np.diff(np.concatenate([[0], cum]))


def _split_grouped(rng: np.random.Generator, key: np.ndarray, totals: np.ndarray, sigma: float) -> np.ndarray:
    """Split totals[key] among the flows sharing each key, lognormal shares (floor rounding)."""
    w = rng.lognormal(0.0, sigma, key.size)
    wsum = np.bincount(key, weights=w, minlength=totals.size)
    return (totals[key] * w / wsum[key]).astype(np.int64)


def _per_day(rng: np.random.Generator, cal: _Calendar, weekday_mean: float, weekend_factor: float) -> np.ndarray:
    """Day index of each flow of a stream with Poisson daily counts."""
    lam = np.where(cal.weekend, weekday_mean * weekend_factor, weekday_mean)
    return np.repeat(np.arange(cal.days, dtype=np.int32), rng.poisson(lam))


# --------------------------------------------------------------------------------------------
# the streams of flows


def _steady_plan(rng: np.random.Generator, days: int, level: float, sigma: float) -> np.ndarray:
    """Daily totals around `level`; the last day at mean + 1.5 sd of the earlier days (a normal day)."""
    plan = level * rng.lognormal(0.0, sigma, days)
    prev = plan[:-1]
    plan[-1] = prev.mean() + 1.5 * prev.std(ddof=1)
    return plan


def _gen_infrastructure(rng: np.random.Generator, cal: _Calendar, net: _Network, fs: _Flows) -> None:
    H, D = net.hosts, cal.days

    # Inbound internet mail: senders -> mx1:25. About half are rejected early (spam, postscreen).
    day = _per_day(rng, cal, 10 * H + 50, 0.6)
    n = day.size
    src = net.sender0 + (net.n_senders * rng.random(n) ** 2.2).astype(np.int32)
    accepted = rng.random(n) < 0.55
    ob = np.where(accepted, _lognormal_int(rng, 25_000, 1.7, n), _lognormal_int(rng, 260, 0.5, n))
    rb = np.where(accepted, _lognormal_int(rng, 1_500, 0.35, n), _lognormal_int(rng, 420, 0.4, n))
    dur = _seconds_us(np.where(accepted, rng.lognormal(np.log(1.8), 0.9, n), rng.lognormal(np.log(0.4), 0.8, n))
                      + ob / 2e6)
    out = _tcp_outcome(rng, n, ob, rb, dur, (0.02, 0.01, 0.03, 0.04, 0.003))
    svc = np.where(rng.random(n) < 0.65, SV_SMTPS, SV_SMTP)
    svc[(out["state"] == S0) | (out["state"] == REJ)] = SV_NONE
    fs.add(n, day=day, tod=_tod(rng, cal, day, _H_INTERNET), oh=src, op=rng.integers(1024, 65536, n),
           rh=MX1, rp=25, svc=svc, **out)

    # mx1 delivers inbound mail to the mailbox servers; Exchange hands outgoing mail to mx1.
    for src_kind, mean, we in (("mx1", 6 * H + 20, 0.5), ("exch", 3 * H + 10, 0.3)):
        day = _per_day(rng, cal, mean, we)
        n = day.size
        exch = np.where(rng.random(n) < 0.5, EXCH1, EXCH2)
        ob = _lognormal_int(rng, 40_000 if src_kind == "mx1" else 60_000, 1.6, n)
        rb = _lognormal_int(rng, 1_300, 0.3, n)
        dur = _seconds_us(rng.lognormal(np.log(0.3), 0.8, n) + ob / 40e6)
        out = _tcp_outcome(rng, n, ob, rb, dur, (0.001, 0.001, 0.004, 0.004, 0.002))
        if src_kind == "mx1":
            fs.add(n, day=day, tod=_tod(rng, cal, day, _H_INTERNET), oh=MX1, op=_linux_ephemeral(rng, n),
                   rh=exch, rp=25, svc=SV_SMTPS, **out)
        else:
            fs.add(n, day=day, tod=_tod(rng, cal, day, _H_OFFICE_WD, _H_OFFICE_WE), oh=exch,
                   op=_windows_ephemeral(rng, n), rh=MX1, rp=25, svc=SV_SMTPS, **out)

    # mx1 -> remote MX hosts (outgoing internet mail) and -> the helpdesk (ticket mail).
    day = _per_day(rng, cal, 2.5 * H + 30, 0.3)
    n = day.size
    dst = net.mx0 + (net.n_mx * rng.random(n) ** 2.5).astype(np.int32)
    ob = _lognormal_int(rng, 50_000, 1.6, n)
    rb = _lognormal_int(rng, 1_500, 0.4, n)
    dur = _seconds_us(rng.lognormal(np.log(1.2), 0.9, n) + ob / 5e6)
    out = _tcp_outcome(rng, n, ob, rb, dur, (0.04, 0.02, 0.02, 0.02, 0.002))
    svc = np.where(rng.random(n) < 0.8, SV_SMTPS, SV_SMTP)
    svc[(out["state"] == S0) | (out["state"] == REJ)] = SV_NONE
    fs.add(n, day=day, tod=_tod(rng, cal, day, _H_OFFICE_WD, _H_OFFICE_WE), oh=MX1,
           op=_linux_ephemeral(rng, n), rh=dst, rp=25, svc=svc, **out)
    day = _per_day(rng, cal, 0.4 * H + 8, 0.2)
    n = day.size
    ob = _lognormal_int(rng, 30_000, 1.4, n)
    out = _tcp_outcome(rng, n, ob, _lognormal_int(rng, 900, 0.2, n), _seconds_us(rng.lognormal(np.log(0.1), 0.6, n)),
                       (0.001, 0.0, 0.002, 0.002, 0.0))
    fs.add(n, day=day, tod=_tod(rng, cal, day, _H_OFFICE_WD, _H_OFFICE_WE), oh=MX1,
           op=_linux_ephemeral(rng, n), rh=HELPDESK, rp=25, svc=SV_SMTP, **out)

    # Exchange DAG replication, both directions, every ~15 minutes (volume follows the mail load).
    for src, dst in ((EXCH1, EXCH2), (EXCH2, EXCH1)):
        level = H * 4e6 * np.where(cal.weekend, 0.3, 1.0) * rng.lognormal(0.0, 0.2, D)
        counts = rng.poisson(96, D)
        day = np.repeat(np.arange(D, dtype=np.int32), counts)
        n = day.size
        ob = _split_grouped(rng, day, level, 0.8) + 200
        rb = ob // 180 + 120
        fs.add(n, day=day, tod=_tod(rng, cal, day, _H_INTERNET), oh=src, op=_windows_ephemeral(rng, n),
               rh=dst, rp=64327, svc=SV_NONE, ob=ob, rb=rb,
               dur=_seconds_us(rng.lognormal(np.log(20), 0.8, n) + ob / 80e6), hist=0)

    # Servers -> domain controllers: DNS, LDAP, Kerberos.
    for src, dns_mean, ldap_mean in ((MX1, 6 * H + 50, 0.2 * H + 20), (EXCH1, 4 * H + 50, 2 * H + 50),
                                     (EXCH2, 4 * H + 50, 2 * H + 50), (ARCHIVE, 0.5 * H + 20, 0.3 * H + 10),
                                     (FS1, 1 * H, 0.5 * H), (FS2, 1 * H, 0.5 * H)):
        _dns_flows(rng, cal, net, fs, _per_day(rng, cal, dns_mean, 0.5), src, linux=bool(net.linux[src]))
        day = _per_day(rng, cal, ldap_mean, 0.5)
        n = day.size
        ob = _lognormal_int(rng, 700, 0.6, n)
        rb = _lognormal_int(rng, 2_500, 1.1, n)
        out = _tcp_outcome(rng, n, ob, rb, _seconds_us(rng.lognormal(np.log(0.05), 1.0, n)),
                           (0.001, 0.0, 0.005, 0.002, 0.01))
        port = np.where(rng.random(n) < 0.3, 3268, 389)
        fs.add(n, day=day, tod=_tod(rng, cal, day, _H_OFFICE_WD, _H_OFFICE_WE), oh=src,
               op=_linux_ephemeral(rng, n) if net.linux[src] else _windows_ephemeral(rng, n),
               rh=np.where(rng.random(n) < 0.6, DC1, DC2), rp=port, svc=SV_LDAP, **out)

    # DCs forward DNS to public resolvers; DC replication.
    for dc in (DC1, DC2):
        day = _per_day(rng, cal, 5 * H + 100, 0.4)
        n = day.size
        ob = rng.integers(30, 70, n)
        rb = ob + rng.integers(16, 400, n)
        out = _udp_outcome(rng, n, rb, _seconds_us(rng.lognormal(np.log(0.02), 0.6, n)), 0.01)
        fs.add(n, day=day, tod=_tod(rng, cal, day, _H_OFFICE_WD, _H_OFFICE_WE), oh=dc,
               op=rng.integers(1024, 65536, n), rh=net.resolver0 + (rng.random(n) < 0.4), rp=53,
               proto=UDP, svc=SV_DNS, ob=ob, **out)
    day = _per_day(rng, cal, 300, 1.0)
    n = day.size
    ob = _lognormal_int(rng, 3_000, 1.5, n)
    rb = _lognormal_int(rng, 6_000, 1.8, n)
    out = _tcp_outcome(rng, n, ob, rb, _seconds_us(rng.lognormal(np.log(0.2), 1.0, n)), (0.0, 0.0, 0.002, 0.0, 0.0))
    src = np.where(rng.random(n) < 0.5, DC1, DC2)
    fs.add(n, day=day, tod=_tod(rng, cal, day, _H_FLAT), oh=src, op=_windows_ephemeral(rng, n),
           rh=np.where(src == DC1, DC2, DC1), rp=135, svc=SV_RPC, **out)

    # Mail servers and the archive reach the internet over HTTPS (updates, malware definitions).
    for src in (MX1, EXCH1, EXCH2, ARCHIVE):
        day = _per_day(rng, cal, 0.2 * H + 30, 1.0)
        n = day.size
        ob = _lognormal_int(rng, 1_800, 0.9, n)
        rb = _lognormal_int(rng, 20_000, 2.0, n, hi=2e9)
        out = _tcp_outcome(rng, n, ob, rb, _seconds_us(rng.lognormal(np.log(1.5), 1.2, n) + rb / 5e6))
        fs.add(n, day=day, tod=_tod(rng, cal, day, _H_FLAT), oh=src,
               op=_linux_ephemeral(rng, n) if net.linux[src] else _windows_ephemeral(rng, n),
               rh=net.web0 + (net.n_web * rng.random(n) ** 3).astype(np.int32), rp=443, svc=SV_SSL, **out)

    # exch1/exch2 copy message-tracking logs to the file server fs2 shortly after midnight.
    for src in (EXCH1, EXCH2):
        level = (60e6 + 0.5e6 * H) * rng.lognormal(0.0, 0.3, D)
        counts = rng.integers(2, 5, D)
        day = np.repeat(np.arange(D, dtype=np.int32), counts)
        n = day.size
        ob = _split_grouped(rng, day, level, 0.6) + 1_000
        fs.add(n, day=day, tod=_window_tod(rng, n, 5 * 60, 40 * 60), oh=src, op=_windows_ephemeral(rng, n),
               rh=FS2, rp=445, svc=SV_SMB, ob=ob, rb=ob // 400 + 2_000,
               dur=_seconds_us(0.5 + ob / 60e6), hist=0)

    # Nightly backups to the backup server: both Exchange servers (4 streams each) and the file servers.
    plan = _steady_plan(rng, D, 2 * H * 120e6, 0.12)
    for src, share in ((EXCH1, 0.55), (EXCH2, 0.45)):
        day = np.repeat(np.arange(D, dtype=np.int32), 4)
        n = day.size
        ob = np.concatenate([_split_exact(rng, plan[d] * share, 4, 0.3) for d in range(D)])
        tod = _window_tod(rng, n, 3600 + (0 if src == EXCH1 else 1200), 3600 + 600 + (0 if src == EXCH1 else 1200))
        fs.add(n, day=day, tod=tod, oh=src, op=_windows_ephemeral(rng, n), rh=BACKUP, rp=2500, svc=SV_NONE,
               ob=ob, rb=ob // 2_000 + 4_000, dur=_seconds_us(ob / rng.uniform(80e6, 160e6, n)), hist=0)
    for src in (FS1, FS2):
        level = H * 300e6 * rng.lognormal(0.0, 0.3, D)
        day = np.repeat(np.arange(D, dtype=np.int32), 2)
        n = day.size
        ob = _split_grouped(rng, day, level, 0.3)
        fs.add(n, day=day, tod=_window_tod(rng, n, 2 * 3600, 3 * 3600), oh=src, op=_windows_ephemeral(rng, n),
               rh=BACKUP, rp=2500, svc=SV_NONE, ob=ob, rb=ob // 2_000 + 4_000,
               dur=_seconds_us(ob / rng.uniform(80e6, 160e6, n)), hist=0)

    # The mail archive pulls every mailbox over EWS, around the clock, every day.
    plan = _steady_plan(rng, D, H * 25e6, 0.12)
    for d in range(D):
        n = 96 + int(rng.integers(0, 48))
        rb = _split_exact(rng, plan[d], n, 0.7)
        day = np.full(n, d, dtype=np.int32)
        fs.add(n, day=day, tod=np.sort(_window_tod(rng, n, 0, 86400)), oh=ARCHIVE, op=_windows_ephemeral(rng, n),
               rh=np.where(rng.random(n) < 0.5, EXCH1, EXCH2), rp=443, svc=SV_SSL,
               ob=rb // 60 + _lognormal_int(rng, 3_000, 0.5, n), rb=rb,
               dur=_seconds_us(rng.lognormal(np.log(30), 0.6, n) + rb / 30e6), hist=0)


def _dns_flows(rng: np.random.Generator, cal: _Calendar, net: _Network, fs: _Flows, day: np.ndarray,
               src: np.ndarray | int, linux: bool, weekday_hours: list[int] = _H_OFFICE_WD,
               weekend_hours: list[int] | None = _H_OFFICE_WE) -> None:
    n = day.size
    ob = rng.integers(28, 64, n)
    rb = ob + rng.integers(16, 260, n)
    out = _udp_outcome(rng, n, rb, _seconds_us(rng.lognormal(np.log(0.0015), 0.8, n)), 0.025)
    fs.add(n, day=day, tod=_tod(rng, cal, day, weekday_hours, weekend_hours), oh=src,
           op=_linux_ephemeral(rng, n) if linux else rng.integers(1024, 65536, n),
           rh=np.where(rng.random(n) < 0.7, DC1, DC2), rp=53, proto=UDP, svc=SV_DNS, ob=ob, **out)


# Client flow categories and their shares.
_CATS = ["dns", "https", "http", "smb", "krb", "ldap", "ntp", "rpc", "mail"]
_CAT_P = np.array([0.43, 0.30, 0.03, 0.05, 0.03, 0.03, 0.01, 0.02, 0.10])


def _gen_clients(rng: np.random.Generator, cal: _Calendar, net: _Network, fs: _Flows, n_target: int) -> None:
    """Workstation traffic, about `n_target` flows."""
    H, D = net.hosts, cal.days
    weekend = cal.weekend
    desktop = rng.random(H) < 0.35
    rate = rng.lognormal(0.0, 0.45, H)
    p_active = np.where(weekend[None, :], np.where(desktop, 0.55, 0.12)[:, None],
                        np.where(desktop, 0.97, 0.92)[:, None])
    active = rng.random((H, D)) < p_active
    w = rate[:, None] * np.where(weekend, 0.3, 1.0)[None, :] * rng.lognormal(0.0, 0.25, (H, D)) * active
    n_hd = rng.poisson(w * (max(n_target, 0) / max(w.sum(), 1e-9)))
    mail_median = rng.lognormal(np.log(30e6), 1.0, H)
    mail_total = (mail_median[:, None] * np.where(weekend, 0.35, 1.0)[None, :]
                  * rng.lognormal(0.0, 0.45, (H, D))).ravel()
    mailbox = np.where(rng.random(H) < 0.5, EXCH1, EXCH2).astype(np.int32)
    imap = rng.random(H) < 0.22

    # per flow, held until the last category: only the narrowest types (a 10k x 90 network has 95 M flows)
    key = np.repeat(np.arange(H * D, dtype=np.int64), n_hd.ravel())
    host = (key // D).astype(np.int32)
    day = (key % D).astype(np.int32)
    n = key.size
    del key
    cat = np.minimum(np.searchsorted(np.cumsum(_CAT_P / _CAT_P.sum()), rng.random(n), side="right"),
                     len(_CATS) - 1).astype(np.int8)
    tod = _tod(rng, cal, day, _H_OFFICE_WD, _H_OFFICE_WE)
    oh = net.client0 + host

    def take(c: int) -> np.ndarray:
        return np.flatnonzero(cat == c)

    # DNS (UDP) to the DCs.
    i = take(0)
    m = i.size
    ob = rng.integers(28, 64, m)
    out = _udp_outcome(rng, m, ob + rng.integers(16, 260, m), _seconds_us(rng.lognormal(np.log(0.0015), 0.8, m)), 0.025)
    fs.add(m, day=day[i], tod=tod[i], oh=oh[i], op=rng.integers(1024, 65536, m),
           rh=np.where(rng.random(m) < 0.7, DC1, DC2), rp=53, proto=UDP, svc=SV_DNS, ob=ob, **out)

    # Web (HTTPS, HTTP) to the internet: a few popular sites take most flows.
    for c, port, svc in ((1, 443, SV_SSL), (2, 80, SV_HTTP)):
        i = take(c)
        m = i.size
        ob = _lognormal_int(rng, 1_500 if port == 443 else 600, 1.0, m)
        rb = _lognormal_int(rng, 9_000 if port == 443 else 5_000, 2.0, m, hi=3e9)
        dur = _seconds_us(rng.lognormal(np.log(2.0), 1.6, m) + rb / rng.lognormal(np.log(4e6), 0.8, m))
        out = _tcp_outcome(rng, m, ob, rb, dur, (0.008, 0.002, 0.02, 0.015, 0.006))
        svcs = np.full(m, svc, dtype=np.int8)
        svcs[(out["state"] == S0) | (out["state"] == REJ)] = SV_NONE
        fs.add(m, day=day[i], tod=tod[i], oh=oh[i], op=_windows_ephemeral(rng, m),
               rh=net.web0 + (net.n_web * rng.random(m) ** 3).astype(np.int32), rp=port, svc=svcs, **out)

    # SMB to the file servers (reads mostly, some uploads).
    i = take(3)
    m = i.size
    upload = rng.random(m) < 0.05
    ob = np.where(upload, _lognormal_int(rng, 2e6, 1.5, m), _lognormal_int(rng, 4_000, 1.6, m))
    rb = _lognormal_int(rng, 30_000, 2.2, m, hi=5e9)
    out = _tcp_outcome(rng, m, ob, rb, _seconds_us(rng.lognormal(np.log(20), 1.5, m) + (ob + rb) / 40e6),
                       (0.002, 0.001, 0.01, 0.01, 0.01))
    fs.add(m, day=day[i], tod=tod[i], oh=oh[i], op=_windows_ephemeral(rng, m),
           rh=np.where(rng.random(m) < 0.7, FS1, FS2), rp=445, svc=SV_SMB, **out)

    # Kerberos, LDAP, NTP, RPC to the DCs.
    for c, port, proto, svc, obm, rbm in ((4, 88, TCP, SV_KRB, 1_500, 1_600), (5, 389, TCP, SV_LDAP, 700, 2_500),
                                          (6, 123, UDP, SV_NTP, 48, 48), (7, 135, TCP, SV_RPC, 1_200, 900)):
        i = take(c)
        m = i.size
        if proto == UDP:
            out = _udp_outcome(rng, m, np.full(m, 48, dtype=np.int64), _seconds_us(rng.lognormal(np.log(0.002), 0.5, m)),
                               0.005)
            fs.add(m, day=day[i], tod=tod[i], oh=oh[i], op=123, rh=np.where(rng.random(m) < 0.5, DC1, DC2),
                   rp=port, proto=UDP, svc=svc, ob=48, **out)
            continue
        ob = _lognormal_int(rng, obm, 0.4, m)
        rb = _lognormal_int(rng, rbm, 0.8, m)
        out = _tcp_outcome(rng, m, ob, rb, _seconds_us(rng.lognormal(np.log(0.02), 1.0, m)),
                           (0.002, 0.002, 0.01, 0.004, 0.002))
        fs.add(m, day=day[i], tod=tod[i], oh=oh[i], op=_windows_ephemeral(rng, m),
               rh=np.where(rng.random(m) < 0.6, DC1, DC2), rp=port, svc=svc, **out)

    # Mail: Outlook (MAPI/EWS over 443) or IMAP clients (993 to the mailbox server, 587 to mx1).
    i = take(8)
    m = i.size
    h = host[i]
    is_imap = imap[h]
    submit = is_imap & (rng.random(m) < 0.15)
    rh = np.where(submit, MX1, mailbox[h]).astype(np.int32)
    rp = np.where(submit, 587, np.where(is_imap, 993, 443))
    svc = np.where(submit, SV_SMTPS, SV_SSL).astype(np.int8)
    ob = np.where(submit, _lognormal_int(rng, 45_000, 1.6, m), _lognormal_int(rng, 3_500, 0.9, m))
    sends = ~is_imap & (rng.random(m) < 0.08)
    ob[sends] += _lognormal_int(rng, 80_000, 1.5, int(sends.sum()))
    rb = np.where(submit, _lognormal_int(rng, 1_400, 0.3, m), _lognormal_int(rng, 3_000, 1.0, m))
    base = np.where(is_imap, rng.lognormal(np.log(240), 1.0, m), rng.lognormal(np.log(45), 1.3, m))
    dur = _seconds_us(np.where(submit, rng.lognormal(np.log(1.5), 0.6, m), np.minimum(base, 1800)))
    out = _tcp_outcome(rng, m, ob, rb, dur, (0.003, 0.001, 0.01, 0.008, 0.01))
    download = ~submit & ((out["state"] == SF) | (out["state"] == S1))
    k = (host[i].astype(np.int64) * D + day[i])[download]
    out["rb"][download] = _split_grouped(rng, k, mail_total, 1.0) + 1_200
    out["dur"][download] += _seconds_us(out["rb"][download] / 25e6)
    svc[(out["state"] == S0) | (out["state"] == REJ)] = SV_NONE
    fs.add(m, day=day[i], tod=tod[i], oh=oh[i], op=_windows_ephemeral(rng, m), rh=rh, rp=rp, svc=svc, **out)


# --------------------------------------------------------------------------------------------
# the detections' arithmetic on (host, day) sums


class _Daily:
    """Daily sums by entity for one detection: S (sum of non-null values), valid (any non-null), present (any row)."""

    def __init__(self, entity: np.ndarray, day: np.ndarray, value: np.ndarray, unset: np.ndarray,
                 n_entities: int, days: int) -> None:
        key = entity.astype(np.int64) * days + day
        size = n_entities * days
        ok = ~unset
        self.present = (np.bincount(key, minlength=size) > 0).reshape(n_entities, days)
        self.valid = (np.bincount(key[ok], minlength=size) > 0).reshape(n_entities, days)
        self.S = np.bincount(key[ok], weights=value[ok].astype(np.float64), minlength=size).reshape(n_entities, days)
        self.days = days

    def copy(self) -> "_Daily":
        other = object.__new__(_Daily)
        other.present, other.valid, other.S, other.days = self.present, self.valid, self.S.copy(), self.days
        return other


@dataclass
class _Judgement:
    gthr: float
    rows: np.ndarray      # entities with a valid sum on the judged day
    today: np.ndarray
    hmean: np.ndarray
    hsd: np.ndarray       # nan when fewer than 2 earlier values (stddev_samp is null)
    nsamp: np.ndarray

    @property
    def hthr(self) -> np.ndarray:
        return self.hmean + 3 * self.hsd

    def fires(self, global_share: float = 1.0) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return (self.nsamp >= 4) & (self.today > global_share * self.gthr) & (self.today > self.hthr)


def _global_stats(daily: _Daily, start: int, t: int) -> tuple[int, float, float]:
    vals = daily.S[:, start:t + 1][daily.valid[:, start:t + 1]]
    return vals.size, float(vals.sum()), float(np.square(vals).sum())


def _thr_from_sums(n: int, s1: float, s2: float) -> float:
    if n < 2:
        return float("nan")
    mean = s1 / n
    var = max((s2 - n * mean * mean) / (n - 1), 0.0)
    return mean + 3 * np.sqrt(var)


def _judge(daily: _Daily, start: int, t: int, rows: np.ndarray | None = None) -> _Judgement:
    """The detection on day t with the window [start, t] (all arrays aligned to `rows`)."""
    vals = daily.S[:, start:t + 1][daily.valid[:, start:t + 1]]
    gthr = float(vals.mean() + 3 * vals.std(ddof=1)) if vals.size >= 2 else float("nan")
    if rows is None:
        rows = np.flatnonzero(daily.valid[:, t])
    prev = daily.S[rows, start:t]
    pv = daily.valid[rows, start:t]
    k = pv.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        hmean = np.where(k > 0, (prev * pv).sum(1) / np.maximum(k, 1), np.nan)
        hvar = np.where(k > 1, (np.square(prev - hmean[:, None]) * pv).sum(1) / np.maximum(k - 1, 1), np.nan)
    return _Judgement(gthr=gthr, rows=rows, today=daily.S[rows, t], hmean=hmean, hsd=np.sqrt(hvar),
                      nsamp=daily.present[rows, start:t + 1].sum(1))


def _last_day_windows(days: int) -> list[int]:
    """Window starts judged on the last day: every window of MIN_WINDOW_DAYS days or more."""
    return list(range(0, max(days - MIN_WINDOW_DAYS, 0) + 1))


def _day_windows(t: int) -> list[int]:
    return sorted({0, max(0, t - HISTORY_DAYS)})


def _clean_day(daily: _Daily, factors: np.ndarray, t: int, starts: list[int], keep: set[int]) -> None:
    """Damp background (entity, day t) sums that would fire: to own mean + 1 sd (smallest over windows)."""
    for _ in range(20):
        target: dict[int, float] = {}
        for s in starts:
            if t - s + 1 < 4:
                continue
            j = _judge(daily, s, t)
            hit = j.fires(CLEAN_GLOBAL_SHARE)
            for r, m, sd in zip(j.rows[hit], j.hmean[hit], j.hsd[hit]):
                if int(r) in keep:
                    continue
                goal = max(m + sd, 0.0)
                target[int(r)] = min(target.get(int(r), goal), goal)
        if not target:
            return
        for r, goal in target.items():
            f = goal / daily.S[r, t] if daily.S[r, t] > 0 else 1.0
            daily.S[r, t] *= f
            factors[r, t] *= f


def _scale_heavy(daily: _Daily, factors: np.ndarray, heavy: int, boost: float) -> None:
    """Scale the heavy entity's whole history until its last day is well above the all-host threshold."""
    T = daily.days - 1
    sums = []
    for s in _last_day_windows(daily.days):
        n, s1, s2 = _global_stats(daily, s, T)
        row = daily.S[heavy, s:T + 1][daily.valid[heavy, s:T + 1]]
        sums.append((n, s1 - row.sum(), s2 - np.square(row).sum(), float(row.sum()), float(np.square(row).sum())))
    today = daily.S[heavy, T]
    c = boost
    for _ in range(400):
        if all(c * today >= 2.0 * _thr_from_sums(n, o1 + c * r1, o2 + c * c * r2) for n, o1, o2, r1, r2 in sums):
            break
        c *= 1.15
    else:
        raise RuntimeError("cannot make the heavy host stand out; use more hosts or days")
    daily.S[heavy] *= c
    factors[heavy] *= c


def _set_steady_last_day(daily: _Daily, factors: np.ndarray, heavy: int) -> None:
    """The benign heavy entity's last day: own mean + 1.5 sd, the smallest over the judged windows."""
    T = daily.days - 1
    goal = min(float(j.hmean[0] + 1.5 * j.hsd[0])
               for j in (_judge(daily, s, T, np.array([heavy])) for s in _last_day_windows(daily.days)))
    f = goal / daily.S[heavy, T]
    daily.S[heavy, T] *= f
    factors[heavy, T] *= f


def _injected_total(daily: _Daily, entity: int, floor: float) -> float:
    """Smallest (geometric grid) last-day sum for `entity` that is FIRE_MARGIN x both thresholds in every window."""
    T = daily.days - 1
    base = daily.S[entity, T] if daily.valid[entity, T] else 0.0
    checks = []
    own = 0.0
    for s in _last_day_windows(daily.days):
        n, s1, s2 = _global_stats(daily, s, T)
        if daily.valid[entity, T]:
            n, s1, s2 = n - 1, s1 - base, s2 - base * base
        checks.append((n, s1, s2))
        j = _judge(daily, s, T, np.array([entity]))
        if not np.isfinite(j.hthr[0]):
            raise RuntimeError("the injected host has too little history")
        own = max(own, float(j.hthr[0]))
    x = max(floor, FIRE_MARGIN * own, base * 2)
    for _ in range(2000):
        if all(x >= FIRE_MARGIN * _thr_from_sums(n + 1, s1 + x, s2 + x * x) for n, s1, s2 in checks):
            return x
        x *= 1.05
    raise RuntimeError("cannot make the injected host stand out; use more hosts or days")


@dataclass
class _Plan:
    """Per (entity, day) factors for one detection, the injected volume and the cases' entities."""

    factors: np.ndarray
    inject: float
    heavy: int
    injected: int


def _plan_detection(daily0: _Daily, heavy: int, injected: int, floor: float, clean: bool = True) -> _Plan:
    D = daily0.days
    T = D - 1
    labelled = {heavy, injected}
    for attempt in range(8):
        daily = daily0.copy()
        factors = np.ones_like(daily.S)
        _scale_heavy(daily, factors, heavy, 1.5 ** attempt)
        if clean:
            for t in range(3, T):
                _clean_day(daily, factors, t, _day_windows(t), keep=set())
        _set_steady_last_day(daily, factors, heavy)
        if clean:
            _clean_day(daily, factors, T, sorted(set(_last_day_windows(D)) | set(_day_windows(T))), keep=labelled)
        total = _injected_total(daily, injected, floor)
        base = daily.S[injected, T] if daily.valid[injected, T] else 0.0
        check = daily.copy()
        check.S[injected, T] = total
        check.valid = check.valid.copy()
        check.valid[injected, T] = True
        ok = all(check.S[heavy, T] >= HARD_CASE_MARGIN * _judge(check, s, T, np.array([heavy])).gthr
                 for s in _last_day_windows(D))
        if ok:
            return _Plan(factors=factors, inject=total - base, heavy=heavy, injected=injected)
    raise RuntimeError("cannot place the benign heavy host above the all-host threshold")


# --------------------------------------------------------------------------------------------
# injected incidents


def _inject_collection(rng: np.random.Generator, net: _Network, fs: _Flows, T: int, client: int, total: float) -> None:
    """A workstation pulls mailboxes over EWS from both Exchange servers, 01:10-04:40 local (T1114.002)."""
    n = 150 + int(rng.integers(0, 80))
    rb = _split_exact(rng, total, n, 0.5)
    ob = rb // 250 + _lognormal_int(rng, 2_500, 0.4, n)
    fs.add(n, day=T, tod=np.sort(_window_tod(rng, n, 70 * 60, 280 * 60)), oh=net.client0 + client,
           op=_windows_ephemeral(rng, n), rh=np.where(rng.random(n) < 0.5, EXCH1, EXCH2), rp=443, svc=SV_SSL,
           ob=ob, rb=rb, dur=_seconds_us(rb / rng.uniform(25e6, 45e6, n) + 0.5), hist=0)


def _inject_export(rng: np.random.Generator, fs: _Flows, T: int, total: float) -> None:
    """exch2 writes mailbox exports (PST) to a share on fs2, 02:40-03:30 local (T1114)."""
    n = 8 + int(rng.integers(0, 9))
    ob = _split_exact(rng, total, n, 0.6)
    fs.add(n, day=T, tod=np.sort(_window_tod(rng, n, 160 * 60, 210 * 60)), oh=EXCH2,
           op=_windows_ephemeral(rng, n), rh=FS2, rp=445, svc=SV_SMB, ob=ob, rb=ob // 500 + 3_000,
           dur=_seconds_us(ob / rng.uniform(60e6, 110e6, n) + 1.0), hist=0)


# --------------------------------------------------------------------------------------------
# writing


def _packets(f: dict[str, np.ndarray], linux: np.ndarray) -> tuple[np.ndarray, ...]:
    ob, rb, state = f["ob"], f["rb"], f["state"]
    tcp = f["proto"] == TCP
    hdr = np.where(linux[f["oh"]], 52, 40).astype(np.int64)
    syn = hdr + np.where(hdr == 52, 8, 12)
    seg = np.where(hdr == 52, 1448, 1460)
    do = -(-ob // seg)
    dr = -(-rb // seg)
    fin = (state == SF).astype(np.int64)
    opk = 2 + do + (dr + 1) // 2 + fin
    rpk = 1 + dr + (do + 1) // 2 + fin
    oipb = ob + opk * hdr + (syn - hdr)
    ripb = rb + rpk * hdr + (syn - hdr)
    s0 = tcp & (state == S0)
    opk = np.where(s0, np.where(f["unset"], 1, np.where(f["dur"] >= 6 * US, 3, 2)), opk)
    oipb = np.where(s0, opk * syn, oipb)
    rpk = np.where(s0, 0, rpk)
    ripb = np.where(s0, 0, ripb)
    rej = tcp & (state == REJ)
    opk = np.where(rej, 1, opk)
    oipb = np.where(rej, syn, oipb)
    rpk = np.where(rej, 1, rpk)
    ripb = np.where(rej, 40, ripb)
    udp = ~tcp
    u_o = np.maximum(1, -(-ob // 1472))
    u_r = np.where(state == S0, 0, np.maximum(1, -(-rb // 1472)))
    opk = np.where(udp, u_o, opk)
    rpk = np.where(udp, u_r, rpk)
    oipb = np.where(udp, ob + 28 * u_o, oipb)
    ripb = np.where(udp, rb + 28 * u_r, ripb)
    return opk, oipb, rpk, ripb


def _uid_bytes(rng: np.random.Generator, n: int) -> np.ndarray:
    """The n connection uids (`C` and 17 base-62 characters), a row of 18 bytes each."""
    raw = np.empty((n, 18), dtype=np.uint8)
    raw[:, 0] = ord("C")
    raw[:, 1:] = _B62[rng.integers(0, 62, (n, 17), dtype=np.uint8)]
    return raw


def _uids(raw: np.ndarray) -> pa.Array:
    raw = np.ascontiguousarray(raw)
    offsets = np.arange(0, 18 * len(raw) + 1, 18, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(len(raw), pa.py_buffer(offsets), pa.py_buffer(raw))


# Rows per batch written: the table of every flow at once (with its packet counts) held ~130 bytes a
# flow beside the flows themselves, 3.7 GB at 3000 users x 90 days; a batch holds ~200 MB.
_BATCH_ROWS = 1 << 20


def _conn_batches(ts: np.ndarray, uids: np.ndarray, f: dict[str, np.ndarray], net: _Network) -> pa.RecordBatchReader:
    """The conn.log records of the flows (sorted by `ts`) as a stream of record batches, each built when read."""
    def batches() -> Iterator[pa.RecordBatch]:
        for lo in range(0, ts.size, _BATCH_ROWS):
            rows = slice(lo, lo + _BATCH_ROWS)
            part = {k: v[rows] for k, v in f.items()}
            opk, oipb, rpk, ripb = _packets(part, net.linux)
            unset = part["unset"]
            size = unset.size
            yield pa.RecordBatch.from_pydict({
                "ts_us": ts[rows],
                "uid": _uids(uids[rows]),
                "orig_h": _dict(part["oh"], net.names),
                "orig_p": part["op"],
                "resp_h": _dict(part["rh"], net.names),
                "resp_p": part["rp"],
                "proto": _dict(part["proto"], PROTOS),
                "service": _dict(part["svc"], SERVICES),
                "duration_us": pa.array(part["dur"], mask=unset),
                "orig_bytes": pa.array(part["ob"], mask=unset),
                "resp_bytes": pa.array(part["rb"], mask=unset),
                "conn_state": _dict(part["state"], STATES),
                "local_orig": _dict((~net.is_local[part["oh"]]).astype(np.int8), ["T", "F"]),
                "local_resp": _dict((~net.is_local[part["rh"]]).astype(np.int8), ["T", "F"]),
                "missed_bytes": part["missed"],
                "history": _dict(part["hist"], HISTORIES),
                "orig_pkts": opk,
                "orig_ip_bytes": oipb,
                "resp_pkts": rpk,
                "resp_ip_bytes": ripb,
                "tunnel_parents": _dict(np.zeros(size, np.int8), ["(empty)"]),
            })

    stream = batches()
    first = next(stream)
    return pa.RecordBatchReader.from_batches(first.schema, itertools.chain([first], stream))


def _dict(indices: np.ndarray, names: list[str]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(indices), pa.array(names, type=pa.string()))


def _write_conn(path: Path, flows: pa.RecordBatchReader, open_ts: float, close_ts: float, tz: ZoneInfo,
                compress: bool) -> None:
    con = _text.spilling_connection(path.parent / ".duckdb")
    try:
        con.execute("SET preserve_insertion_order = true")
        zeek_conn.install(con)
        con.register("flows", flows)
        columns = ", ".join(name for name, _ in zeek_conn.COLUMNS)
        zeek_conn.write_query(con, f"SELECT zeek_conn_line({columns}) AS line FROM flows", path,
                              zeek_conn.stamp(open_ts, tz), zeek_conn.stamp(close_ts, tz), compress)
    finally:
        con.close()
        shutil.rmtree(path.parent / ".duckdb", ignore_errors=True)


def _config_yaml(timezone: str) -> str:
    return (
        f"timezone: {timezone}\n"
        "assets:\n"
        "  - cidr: 10.10.0.0/28\n"
        "    category: email_server\n"
        "    bunit: it\n"
        "    owner: mail-team\n"
        "  - cidr: 10.30.0.0/24\n"
        "    category: server\n"
        "    bunit: it\n"
        "    owner: infra-team\n"
        "  - cidr: 10.20.0.0/16\n"
        "    category: workstation\n"
        "    bunit: corp\n"
        "    owner: desktop-team\n"
    )


# --------------------------------------------------------------------------------------------
# entry point


def generate_network(
    out_dir: Path,
    days: int = 45,
    hosts: int = 500,
    seed: int = 1,
    end: date = date(2026, 10, 31),
    timezone: str = "America/New_York",
    gzip: bool = False,
    flows_per_host_day: int = 450,
    clean_background: bool = True,
    flows_to: Callable[[pa.RecordBatchReader], None] | None = None,
) -> NetworkDataset:
    """Write conn.log (or conn.log.gz), config.yaml and labels.csv for a synthetic network into `out_dir`.

    The data covers the `days` local days (in `timezone`) ending with `end`, inclusive; about
    `hosts * days * flows_per_host_day` flows. The same arguments give the same bytes.
    `clean_background=False` leaves the clients' heavy-tailed daily volumes as they are drawn
    (no background day scaled down), so the faithful detections meet the ordinary noise their
    authors warn of; the labelled cases hold either way. `flows_to`: instead of conn.log, hand the flows in
    its order to this function, as a stream of record batches with the columns of `zeek_conn.COLUMNS`
    (the dataset's `conn_log` is then None).
    """
    if days < MIN_WINDOW_DAYS:
        raise ValueError(f"days must be at least {MIN_WINDOW_DAYS}")
    if not 20 <= hosts <= 63_500:
        raise ValueError("hosts must be between 20 and 63500")
    if flows_per_host_day < 100:
        raise ValueError("flows_per_host_day must be at least 100")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cal = _Calendar(end, days, timezone)
    net = _Network(rng, hosts)
    T = days - 1

    fs = _Flows()
    _gen_infrastructure(rng, cal, net, fs)
    n_target = hosts * days * flows_per_host_day
    infra = sum(p["day"].size for p in fs.parts)
    _gen_clients(rng, cal, net, fs, n_target - infra)
    f = fs.build()

    # The injected client: a workstation of middling mail volume with a long history.
    a_rows = net.is_email[f["rh"]]
    daily_a = _Daily(f["oh"][a_rows], f["day"][a_rows], f["rb"][a_rows], f["unset"][a_rows], len(net), days)
    b_rows = net.is_email[f["oh"]]
    daily_b = _Daily(f["rh"][b_rows], f["day"][b_rows], f["ob"][b_rows], f["unset"][b_rows], len(net), days)
    clients = np.arange(net.client0, net.client0 + hosts)
    history = daily_a.valid[clients, :T].sum(1)
    candidates = clients[history >= max(4, int(0.7 * T))]
    if candidates.size == 0:
        raise RuntimeError("no workstation with enough history")
    med = np.array([np.median(daily_a.S[c, :T][daily_a.valid[c, :T]]) for c in candidates])
    order = candidates[np.argsort(med, kind="stable")]
    middle = order[order.size // 3: max(order.size // 3 + 1, 2 * order.size // 3)]
    victim = int(middle[rng.integers(0, middle.size)])

    plan_a = _plan_detection(daily_a, heavy=ARCHIVE, injected=victim, floor=rng.uniform(1.2e9, 2.4e9),
                             clean=clean_background)
    plan_b = _plan_detection(daily_b, heavy=BACKUP, injected=FS2, floor=rng.uniform(4e9, 8e9), clean=clean_background)

    # Apply the plans to the flows (bytes scale, durations follow).
    for rows, plan, ent, col in ((a_rows, plan_a, "oh", "rb"), (b_rows, plan_b, "rh", "ob")):
        idx = np.flatnonzero(rows)
        fac = plan.factors[f[ent][idx], f["day"][idx]]
        change = fac != 1.0
        idx, fac = idx[change], fac[change]
        f[col][idx] = (f[col][idx] * fac).astype(np.int64)
        f["dur"][idx] = np.where(f["unset"][idx], f["dur"][idx], np.maximum((f["dur"][idx] * fac).astype(np.int64), 1))

    inj = _Flows()
    _inject_collection(rng, net, inj, T, victim - net.client0, plan_a.inject)
    _inject_export(rng, inj, T, plan_b.inject)
    g = inj.build()
    for k in f:  # in place, a column at a time (a second dict would hold every column twice)
        f[k] = np.concatenate([f[k], g[k]])

    # Zeek names a service only once an analyzer saw payload: none for S0/REJ over TCP.
    f["svc"][(f["proto"] == TCP) & ((f["state"] == S0) | (f["state"] == REJ))] = SV_NONE

    # Rare sensor drops on big flows.
    big = np.flatnonzero((f["rb"] > 5_000_000) & (f["state"] == SF))
    hit = big[rng.random(big.size) < 0.003]
    f["missed"][hit] = np.minimum(rng.integers(1, 40, hit.size) * 1448, f["rb"][hit] // 10)

    order = np.argsort(cal.epoch_us(f["day"], f["tod"]), kind="stable")
    for k in f:  # in place, a column at a time
        f[k] = f[k][order]
    del order
    ts = cal.epoch_us(f["day"], f["tod"])
    del f["tod"]  # in `ts` now
    n = ts.size

    cases = [
        _Case("NET-A-001", DETECTION_A, net.names[victim], end.isoformat(), "T1114.002", "fire",
              "workstation pulls mailboxes over EWS from exch1 and exch2 at night (mailbox collection)"),
        _Case("NET-A-002", DETECTION_A, net.names[ARCHIVE], end.isoformat(), "T1114.002", "quiet",
              "benign: the mail archive pulls a lot from exch1 and exch2 every day; the last day is within its normal range"),
        _Case("NET-B-001", DETECTION_B, net.names[FS2], end.isoformat(), "T1114", "fire",
              "exch2 writes mailbox exports (PST) to a share on file server fs2"),
        _Case("NET-B-002", DETECTION_B, net.names[BACKUP], end.isoformat(), "T1114", "quiet",
              "benign: nightly backup of exch1 and exch2 to the backup server; the last night is within its normal range"),
    ]
    _verify(f, net, days, cases, clean_background)

    del f["day"]  # _verify's last use
    uids = _uid_bytes(rng, n)  # all at once, before any row is written: the random stream of every run
    conn_log = None if flows_to else out_dir / ("conn.log.gz" if gzip else "conn.log")
    open_ts = float(cal.start[0])
    close_ts = float(max(int(np.ceil(ts[-1] / US)) + 1, cal.start[0]))
    if conn_log is None:
        flows_to(_conn_batches(ts, uids, f, net))
    else:
        _write_conn(conn_log, _conn_batches(ts, uids, f, net), open_ts, close_ts, cal.tz, gzip)
    del f, ts, uids

    config = out_dir / "config.yaml"
    config.write_text(_config_yaml(timezone))
    labels = out_dir / "labels.csv"
    with open(labels, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["case_id", "detection_id", "entity", "day", "technique", "expected", "description"])
        for c in cases:
            writer.writerow([c.case_id, c.detection_id, c.entity, c.day, c.technique, c.expected, c.description])
    return NetworkDataset(conn_log=conn_log, config=config, labels=labels, flows=n)


def _verify(f: dict[str, np.ndarray], net: _Network, days: int, cases: list[_Case], clean: bool = True) -> None:
    """Check the labelled cases (every judged window) and, when `clean`, the clean background on the final flows."""
    T = days - 1
    index = {name: i for i, name in enumerate(net.names)}
    for det, rows, ent, col in ((DETECTION_A, net.is_email[f["rh"]], "oh", "rb"),
                                (DETECTION_B, net.is_email[f["oh"]], "rh", "ob")):
        daily = _Daily(f[ent][rows], f["day"][rows], f[col][rows], f["unset"][rows], len(net), days)
        mine = [c for c in cases if c.detection_id == det]
        labelled = {index[c.entity] for c in mine}
        for s in _last_day_windows(days):
            j = _judge(daily, s, T)
            fired = {int(r) for r in j.rows[j.fires()]}
            pos = {int(r): i for i, r in enumerate(j.rows)}
            for c in mine:
                e = index[c.entity]
                i = pos.get(e)
                if i is None:
                    raise RuntimeError(f"{c.case_id}: no traffic on the last day")
                if c.expected == "fire" and not (j.today[i] > FIRE_MARGIN * 0.99 * max(j.gthr, j.hthr[i])
                                                 and j.nsamp[i] >= 4):
                    raise RuntimeError(f"{c.case_id}: does not stand out in the window from day {s}")
                if c.expected == "quiet" and not (HARD_CASE_MARGIN * 0.99 * j.gthr < j.today[i] < j.hthr[i]):
                    raise RuntimeError(f"{c.case_id}: not a hard case in the window from day {s}")
            extra = fired - labelled
            if extra and clean:
                raise RuntimeError(f"{det}: unlabelled hosts fire on the last day: {sorted(extra)}")
        for t in range(3, T) if clean else ():
            for s in _day_windows(t):
                j = _judge(daily, s, t)
                if j.fires().any():
                    raise RuntimeError(f"{det}: background fires on day {t}: {sorted(j.rows[j.fires()].tolist())}")
