"""Benchmark: ingesting Pulse Secure VPN syslog and Juniper SRX RT_FLOW logs, exfilwatch against a Python `re` loop.

    python bench/bench_sources_vpn_flows.py [--pulse-lines 5000000] [--srx-lines 1000000] [--threads 2]
                                            [--formats pulse srx] [--rounds 1] [--reference-src DIR]

Generates, in a temporary folder, a Pulse Secure standard-syslog file (BSD header; VPN sessions
with primary authentication, login, tunnel start, closed connection with bytes, tunnel end and
logout; failed logins, timeouts, concurrent-user warnings and other messages in between) and an
SRX file (RT_FLOW_SESSION_CREATE and _CLOSE, half structured sd-syslog, half standard text).
Then, for each file, in separate child processes so that each has its own peak memory:

* `exfilwatch`: `ingest_paths` into a fresh home: parse with DuckDB SQL, write Parquet, commit
  to the state store — the whole ingest, not only the parse;
* `bare-duckdb`: the engine's own limit (bench/bare_duckdb.py): `read_csv` of whole lines, one
  `regexp_extract` with the named groups of the `python-re` line pattern, `COPY` to Parquet with zstd;
* `python-re`: the reference a user would write: read the file line by line, one `re` match for
  the line shape, `str.startswith` to pick the message kind, one `re` per kind for its fields,
  `datetime.strptime` and `zoneinfo` for the time, a list of event tuples (no Parquet written).

Prints a markdown table: format, method, lines, seconds, lines/s, events, peak RSS, speed-up, and
exfilwatch's lines/s as a share of bare DuckDB's (wall and CPU).

With `--rounds N` the children run N times, alternated (exfilwatch, the reference, bare DuckDB),
so that all see the same load; each row is the run of median CPU. `--reference-src DIR` (another
checkout's `src`) adds `exfilwatch-ref`: the same ingest with that code, for before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bare_duckdb import bare_parse

MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
USERS = [f"user{i:04d}" for i in range(3000)]
AGENT = "Pulse-Secure/9.1.3.1667 (Windows 10) Pulse/9.1.3.1667"
YEAR = 2026
TZ = "Europe/Berlin"


def _stamp(t: int) -> tuple[str, str]:
    tm = time.gmtime(t)
    bsd = f"{MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} {tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
    body = f"{tm.tm_year}-{tm.tm_mon:02d}-{tm.tm_mday:02d} {tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
    return bsd, body


def generate_pulse(path: Path, n_lines: int, seed: int = 11) -> None:
    rng = random.Random(seed)
    t = 1_772_496_000  # 2026-03-03 00:00 UTC
    written = 0
    with open(path, "w", buffering=1 << 22) as out:
        while written < n_lines:
            t += rng.randint(0, 1)
            bsd, body = _stamp(t)
            user = rng.choice(USERS)
            ip = f"198.51.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            head = f"<134>{bsd} vpn01 PulseSecure: {body} - ive - [{ip}] Default Network::{user}(Users)"
            sid = f"{rng.getrandbits(32):08x}"
            tun = f"10.200.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            roll = rng.random()
            lines = []
            if roll < 0.12:
                lines.append(f"{head}[] - Primary authentication failed for {user}/ACME-AD from {ip}")
                lines.append(f"{head}[] - Login failed using auth server ACME-AD (Active Directory).  Reason: Failed")
            elif roll < 0.17:
                lines.append(f"<134>{bsd} vpn01 PulseSecure: {body} - ive - [127.0.0.1] Root::System()[] - "
                             f"Number of concurrent users (250) exceeded the system limit (250).")
                lines.append(f"{head}[Users, VPN] - Key Exchange number 3 occurred for user with NCIP {tun}")
            else:
                lines.append(f"{head}[] - Primary authentication successful for {user}/ACME-AD from {ip}")
                lines.append(f"{head}[Users, VPN] - Login succeeded for {user}/Users (session:{sid}) from {ip} with {AGENT}.")
                lines.append(f"{head}[Users, VPN] - VPN Tunneling: Session started for user with IPv4 address {tun}, hostname WS-{user}")
                seconds = rng.randint(60, 30000)
                lines.append(f"{head}[Users, VPN] - Closed connection to TUN-VPN port 443 after {seconds} seconds, with "
                             f"{rng.randint(10_000, 900_000_000)} bytes read (in {rng.randint(10, 90000)} chunks) and "
                             f"{rng.randint(10_000, 90_000_000)} bytes written (in {rng.randint(10, 90000)} chunks)")
                lines.append(f"{head}[Users, VPN] - VPN Tunneling: Session ended for user with IPv4 address {tun}")
                if rng.random() < 0.2:
                    lines.append(f"{head}[Users, VPN] - Session timed out for {user}/Users (session:{sid}) due to "
                                 f"inactivity (last access at 10:05:12 2026/03/03). Idle session identified during routine system scan.")
                else:
                    lines.append(f"{head}[Users, VPN] - Logout from {ip} (session:{sid})")
            out.write("\n".join(lines) + "\n")
            written += len(lines)


def generate_srx(path: Path, n_lines: int, seed: int = 13) -> None:
    rng = random.Random(seed)
    t = 1_772_496_000
    written = 0
    with open(path, "w", buffering=1 << 22) as out:
        while written < n_lines:
            t += rng.randint(0, 1)
            bsd, _ = _stamp(t)
            iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".000Z"
            src = f"10.20.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            dst = rng.choice(["10.10.0.5", "93.184.216.34", "203.0.113.80", "10.10.0.53"])
            sp, dp = rng.randint(1024, 65535), rng.choice([443, 993, 587, 53])
            sid = rng.randint(1, 10**8)
            bc, bs, el = rng.randint(60, 10**8), rng.randint(60, 10**7), rng.randint(0, 3600)
            if rng.random() < 0.5:
                out.write(
                    f'<14>1 {iso} srx01 RT_FLOW - RT_FLOW_SESSION_CREATE [junos@2636.1.1.1.2.129 source-address="{src}" '
                    f'source-port="{sp}" destination-address="{dst}" destination-port="{dp}" connection-tag="0" '
                    f'service-name="junos-https" protocol-id="6" policy-name="trust-to-untrust" source-zone-name="trust" '
                    f'destination-zone-name="untrust" session-id-32="{sid}" username="N/A" roles="N/A" '
                    f'packet-incoming-interface="ge-0/0/1.0" application="UNKNOWN"]\n'
                    f'<14>1 {iso} srx01 RT_FLOW - RT_FLOW_SESSION_CLOSE [junos@2636.1.1.1.2.129 reason="TCP FIN" '
                    f'source-address="{src}" source-port="{sp}" destination-address="{dst}" destination-port="{dp}" '
                    f'connection-tag="0" service-name="junos-https" nat-source-address="{src}" nat-source-port="{sp}" '
                    f'nat-destination-address="{dst}" nat-destination-port="{dp}" nat-connection-tag="0" '
                    f'src-nat-rule-type="N/A" src-nat-rule-name="N/A" dst-nat-rule-type="N/A" dst-nat-rule-name="N/A" '
                    f'protocol-id="6" policy-name="trust-to-untrust" source-zone-name="trust" '
                    f'destination-zone-name="untrust" session-id-32="{sid}" packets-from-client="{bc // 900 + 1}" '
                    f'bytes-from-client="{bc}" packets-from-server="{bs // 900 + 1}" bytes-from-server="{bs}" '
                    f'elapsed-time="{el}" application="SSL" nested-application="UNKNOWN" username="N/A" roles="N/A" '
                    f'packet-incoming-interface="ge-0/0/1.0" encrypted="No"]\n')
            else:
                out.write(
                    f"<14>{bsd} srx01 RT_FLOW: RT_FLOW_SESSION_CREATE: session created {src}/{sp}->{dst}/{dp} 0x0 "
                    f"junos-https {src}/{sp}->{dst}/{dp} 0x0 N/A N/A N/A N/A 6 trust-to-untrust trust untrust {sid} "
                    f"N/A(N/A) ge-0/0/1.0 UNKNOWN UNKNOWN UNKNOWN N/A N/A -1 N/A N/A N/A Off root\n"
                    f"<14>{bsd} srx01 RT_FLOW: RT_FLOW_SESSION_CLOSE: session closed TCP FIN: {src}/{sp}->{dst}/{dp} 0x0 "
                    f"junos-https {src}/{sp}->{dst}/{dp} 0x0 N/A N/A N/A N/A 6 trust-to-untrust trust untrust {sid} "
                    f"{bc // 900 + 1}({bc}) {bs // 900 + 1}({bs}) {el} SSL UNKNOWN N/A(N/A) ge-0/0/1.0 UNKNOWN N/A N/A "
                    f"-1 N/A NA 0 0.0.0.0/0->0.0.0.0/0 NA NA N/A N/A Off root\n")
            written += 2


# --- the reference: a Python `re` loop --------------------------------------------------------

PULSE_LINE = re.compile(
    r"^<\d+>(?P<bsd>\w{3} [ \d]\d \d\d:\d\d:\d\d) (?P<host>\S+) PulseSecure: (?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) - "
    r"(?P<node>\S+) - \[(?P<src>[^\]]*)\] (?P<who>[^()\[\]]*)\((?P<realm>[^()]*)\)\[(?P<roles>[^\]]*)\] - (?P<msg>.*)$")
PULSE_KINDS = [
    ("Login succeeded for ", "vpn-login",
     re.compile(r"Login succeeded for (?P<user>[^/]*)/(?P<realm>.*?)(?: \(session:(?P<session>[^)]*)\))? from (?P<ip>\S+?)(?: with (?P<agent>.*?))?\.?$")),
    ("VPN Tunneling: Session started", "vpn-login",
     re.compile(r"VPN Tunneling: Session started for user(?: \S+)? with IPv4 address (?P<assigned>[\d.]+)")),
    ("Closed connection to ", "vpn-logout",
     re.compile(r"Closed connection to .+? after (?P<duration>\d+) seconds, with (?P<read>\d+) bytes read.*? and (?P<written>\d+) bytes written")),
    ("VPN Tunneling: Session ended", "vpn-logout",
     re.compile(r"VPN Tunneling: Session ended for user(?: \S+)? with IPv4 address (?P<assigned>[\d.]+)")),
    ("Logout from ", "vpn-logout", re.compile(r"Logout from (?P<ip>\S+) \(session:(?P<session>[^)]*)\)")),
    ("Session timed out for ", "vpn-logout", re.compile(r"Session timed out for (?P<user>[^/]*)/\S+ \(session:(?P<session>[^)]*)\)")),
    ("Primary authentication failed for ", "failed-vpn-login",
     re.compile(r"Primary authentication failed for (?P<user>[^/]*)/(?P<server>.*?) from (?P<ip>\S+)")),
    ("Login failed", "failed-vpn-login", re.compile(r"Login failed.*?Reason: (?P<reason>.*)$")),
    ("Primary authentication successful for ", "authentication-successful",
     re.compile(r"Primary authentication successful for (?P<user>[^/]*)/(?P<server>.*?) from (?P<ip>\S+)")),
]


def reference_pulse(path: Path) -> tuple[int, int]:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    zone, utc = ZoneInfo(TZ), ZoneInfo("UTC")
    events, lines = [], 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            lines += 1
            m = PULSE_LINE.match(line.rstrip("\n"))
            if m is None:
                continue  # quarantined
            msg = m["msg"]
            for prefix, event_type, pattern in PULSE_KINDS:
                if msg.startswith(prefix):
                    d = pattern.match(msg)
                    if d is None:
                        break
                    fields = d.groupdict()
                    when = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone).astimezone(utc)
                    who = m["who"]
                    user = who.split("::", 1)[1] if "::" in who else who
                    events.append((when, user or fields.get("user"), m["src"], fields.get("assigned"), m["host"],
                                   m["realm"] or None, m["roles"] or None, fields.get("session"), event_type,
                                   float(fields["duration"]) if fields.get("duration") else None,
                                   int(fields["written"]) if fields.get("written") else None,
                                   int(fields["read"]) if fields.get("read") else None,
                                   fields.get("reason"), fields.get("agent")))
                    break
    return lines, len(events)


SRX_SD = re.compile(r'^<\d+>1 (?P<iso>\S+) \S+ RT_FLOW - RT_FLOW_SESSION_(?P<kind>\w+) \[junos@[\d.]+ (?P<sd>.*)\]$')
SRX_KV = re.compile(r'([\w-]+)="([^"]*)"')
SRX_TEXT_HEAD = re.compile(r"^<\d+>(?P<bsd>\w{3} [ \d]\d \d\d:\d\d:\d\d) \S+ RT_FLOW: RT_FLOW_SESSION_(?P<kind>[A-Z_]+): (?P<rest>.*)$")
SRX_TEXT_CLOSE = re.compile(
    r"session closed (?P<reason>[^:]*): (?P<src>[\da-fA-F.:]+)/(?P<sport>\d+)->(?P<dst>[\da-fA-F.:]+)/(?P<dport>\d+) "
    r"(?:0x[0-9a-fA-F]+ )?(?P<service>\S+) .*? (?P<proto>\d+) \S+ \S+ \S+ (?P<sid>\d+) \d+\((?P<bc>\d+)\) "
    r"\d+\((?P<bs>\d+)\) (?P<elapsed>\d+)")


def reference_srx(path: Path) -> tuple[int, int]:
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    zone, utc = ZoneInfo(TZ), ZoneInfo("UTC")
    events, lines = [], 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            lines += 1
            line = line.rstrip("\n")
            m = SRX_SD.match(line)
            if m is not None:
                if m["kind"] != "CLOSE":
                    continue
                kv = dict(SRX_KV.findall(m["sd"]))
                close = datetime.fromisoformat(m["iso"])
                elapsed = int(kv["elapsed-time"])
                events.append((close - timedelta(seconds=elapsed), kv["source-address"], int(kv["source-port"]),
                               kv["destination-address"], int(kv["destination-port"]), kv["protocol-id"],
                               int(kv["bytes-from-server"]), int(kv["bytes-from-client"]), elapsed,
                               kv.get("session-id-32")))
                continue
            m = SRX_TEXT_HEAD.match(line)
            if m is None or m["kind"] != "CLOSE":
                continue
            d = SRX_TEXT_CLOSE.match(m["rest"])
            if d is None:
                continue
            close = datetime.strptime(f"{YEAR} {m['bsd']}", "%Y %b %d %H:%M:%S").replace(tzinfo=zone).astimezone(utc)
            elapsed = int(d["elapsed"])
            events.append((close - timedelta(seconds=elapsed), d["src"], int(d["sport"]), d["dst"], int(d["dport"]),
                           d["proto"], int(d["bs"]), int(d["bc"]), elapsed, d["sid"]))
    return lines, len(events)


def run_exfilwatch(path: Path, source: str, threads: int) -> tuple[int, int]:
    from exfilwatch.config import Home, parse_settings
    from exfilwatch.events.ingest import ingest_paths

    root = Path(tempfile.mkdtemp(prefix="bench-home-"))
    settings = parse_settings({"threads": threads, "memory_limit": "3GB"}, "bench")
    [report] = ingest_paths([path], Home(root=root, config_path=root / "config.yaml"), settings,
                            source_name=source, source_tz=TZ, year=YEAR)
    assert report.quarantined == 0, report
    return report.lines, report.events


def child(method: str, fmt: str, path: str, threads: int) -> None:
    started = time.perf_counter()
    if method == "exfilwatch":
        lines, events = run_exfilwatch(Path(path), {"pulse": "pulse_secure", "srx": "srx_flow"}[fmt], threads)
    elif method == "bare-duckdb":
        lines, events = bare_parse(Path(path), (PULSE_LINE if fmt == "pulse" else SRX_SD).pattern, threads)
    else:
        lines, events = (reference_pulse if fmt == "pulse" else reference_srx)(Path(path))
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"lines": lines, "events": events, "seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime,
                      "rss_mb": usage.ru_maxrss / 1024}))


def _run_child(method: str, fmt: str, path: Path, threads: int, src: str | None = None) -> dict:
    env = os.environ | ({"PYTHONPATH": src} if src else {})
    out = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--child", method, fmt, str(path)],
                         check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pulse-lines", type=int, default=5_000_000)
    parser.add_argument("--srx-lines", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--formats", nargs="+", choices=["pulse", "srx"], default=["pulse", "srx"])
    parser.add_argument("--rounds", type=int, default=1, help="alternated runs of each child; the median CPU's run is shown")
    parser.add_argument("--reference-src", help="another checkout's src: its ingest runs as exfilwatch-ref")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "FORMAT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, threads=args.threads)
        return
    with tempfile.TemporaryDirectory(prefix="bench-vpn-flows-") as tmp:
        generators = {"pulse": (generate_pulse, args.pulse_lines), "srx": (generate_srx, args.srx_lines)}
        files = {fmt: Path(tmp) / f"{fmt}.log" for fmt in args.formats}
        started = time.perf_counter()
        for fmt, path in files.items():
            generate, lines = generators[fmt]
            generate(path, lines)
        print(f"generated in {time.perf_counter() - started:.1f} s: "
              + ", ".join(f"{k} {p.stat().st_size / 1e6:.0f} MB" for k, p in files.items()), file=sys.stderr)
        methods = {"exfilwatch": None, **({"exfilwatch-ref": args.reference_src} if args.reference_src else {}),
                   "bare-duckdb": None}
        rows = []
        for fmt, path in files.items():
            runs: dict[str, list[dict]] = {method: [] for method in methods}
            for _ in range(args.rounds):
                for method, src in methods.items():
                    result = _run_child(method.removesuffix("-ref"), fmt, path, args.threads, src)
                    runs[method].append(result)
                    print(f"{fmt} {method}: {result} load {os.getloadavg()[0]:.1f}", file=sys.stderr)
            results = {method: sorted(r, key=lambda x: x["cpu"])[len(r) // 2] for method, r in runs.items()}
            results["python-re"] = _run_child("python-re", fmt, path, args.threads)
            bare = results["bare-duckdb"]
            for method, r in results.items():
                speedup = results["python-re"]["seconds"] / r["seconds"]
                cpus = ", ".join(f"{x['cpu']:.2f}" for x in runs.get(method, [r]))
                rows.append(f"| {fmt} | {method} | {r['lines']:,} | {r['seconds']:.1f} | {r['lines'] / r['seconds']:,.0f} "
                            f"| {r['cpu']:.2f} ({cpus}) | {r['events']:,} | {r['rss_mb']:,.0f} MB | {speedup:.1f}× "
                            f"| {bare['seconds'] / r['seconds']:.0%} | {bare['cpu'] / r['cpu']:.0%} |")
    print(f"\n{args.threads} DuckDB threads; exfilwatch = whole ingest (parse, Parquet, state commit); "
          "python-re = parse into a list only; bare-duckdb = read_csv + one regexp_extract + COPY (events = lines its pattern matched).\n")
    load = os.getloadavg()[0]
    print(f"load average at the end: {load:.1f} on {os.cpu_count()} cores (wall times stretch when other work runs; "
          f"CPU seconds are the process's own user + system time; {args.rounds} alternated round(s), the median's run shown)\n")
    print("| format | method | lines | wall s | lines/s | CPU s (every round) | events | peak RSS | speed-up (wall) vs python-re "
          "| share of bare DuckDB (wall) | (CPU) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
