"""Benchmark: ingesting a Postfix maillog, exfilwatch (DuckDB SQL) against a Python `re` loop.

    python bench/bench_sources_mail.py [--lines 5000000] [--threads 2] [--reference-src DIR --rounds N]

Generates a realistic maillog (postscreen/anvil noise, smtpd connect/client/disconnect,
cleanup message-id, qmgr from/removed, smtp/lmtp deliveries with some deferrals and
bounces) in a temporary folder, then runs in separate child processes, so each has its own
peak memory:

* `exfilwatch`: `ingest_paths` into a fresh home: parse, join per queue id, write Parquet,
  commit to the state store: the whole ingest, not only the parse;
* `bare-duckdb`: the engine's own limit (bench/bare_duckdb.py): `read_csv` of whole lines, one
  `regexp_extract` with the named groups of the `python-re` header pattern, `COPY` to Parquet with zstd;
* `python-re`: the reference a user would write: read the file line by line, one `re` match
  for the syslog header and one per message shape, a dict of messages per queue id, emit
  on `removed` (no Parquet written: it only builds the list of messages).

Prints a markdown table: lines, wall seconds, lines/s, CPU seconds (user + system, all threads:
a fairer figure on a shared machine), messages, peak RSS. The messages of both must agree.

With `--reference-src` (another checkout's `src`), the ingest of this checkout (`src` beside
`bench/`), the one of that code and bare DuckDB run instead, alternated round by round over
`--rounds` rounds on the same file so that all three see the same load: best and median CPU
seconds of each and each ingest's share of bare DuckDB's lines per CPU-second (aim: 60 %).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bare_duckdb import bare_parse

USERS = [f"user{i:04d}" for i in range(2000)]
EXTERNAL = ["gmail.com", "yahoo.com", "outlook.com", "partner-a.example.org", "partner-b.example.net",
            "proton.me", "gmx.de", "supplier.example.com"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def generate(path: Path, n_lines: int, seed: int = 7) -> int:
    """Write about n_lines maillog lines; return the number of messages."""
    rng = random.Random(seed)
    t = 1_762_041_600  # 2026-11-02 00:00 UTC
    written = messages = 0
    qn = 0x100000
    with open(path, "w", buffering=1 << 22) as out:
        while written < n_lines:
            t += rng.randint(0, 2)
            tm = time.gmtime(t)
            stamp = f"{MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} {tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
            qn += rng.randint(1, 50)
            qid = f"{qn:X}{rng.randint(0, 0xFFF):03X}"
            user = rng.choice(USERS)
            ip = f"10.{rng.randint(20, 23)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            pid = rng.randint(1000, 60000)
            lines = []
            if rng.random() < 0.15:
                lines.append(f"{stamp} mx1 postfix/postscreen[{pid}]: CONNECT from [{ip}]:{rng.randint(1024, 65535)} to [192.0.2.10]:25")
                lines.append(f"{stamp} mx1 postfix/anvil[{pid + 1}]: statistics: max connection rate 1/60s for (smtpd:{ip}) at {stamp}")
            lines.append(f"{stamp} mx1 postfix/smtpd[{pid}]: connect from ws-{user}.example.com[{ip}]")
            lines.append(f"{stamp} mx1 postfix/smtpd[{pid}]: {qid}: client=ws-{user}.example.com[{ip}]")
            lines.append(f"{stamp} mx1 postfix/cleanup[{pid + 2}]: {qid}: message-id=<{qid}.{t}@ws-{user}.example.com>")
            nrcpt = 1 + int(rng.expovariate(0.7))
            size = int(rng.lognormvariate(9.5, 1.6))
            lines.append(f"{stamp} mx1 postfix/qmgr[812]: {qid}: from=<{user}@example.com>, size={size}, nrcpt={nrcpt} (queue active)")
            lines.append(f"{stamp} mx1 postfix/smtpd[{pid}]: disconnect from ws-{user}.example.com[{ip}] ehlo=1 mail=1 rcpt={nrcpt} data=1 quit=1 commands={4 + nrcpt}")
            for _ in range(nrcpt):
                if rng.random() < 0.5:
                    rcpt = f"{rng.choice(USERS)}@example.com"
                    lines.append(f"{stamp} mx1 postfix/lmtp[{pid + 3}]: {qid}: to=<{rcpt}>, relay=mail.example.com[private/dovecot-lmtp], delay=0.15, delays=0.04/0.01/0.02/0.08, dsn=2.0.0, status=sent (250 2.0.0 <{rcpt}> Saved)")
                    continue
                rcpt = f"r{rng.randint(0, 99999)}@{rng.choice(EXTERNAL)}"
                roll = rng.random()
                if roll < 0.03:
                    lines.append(f"{stamp} mx1 postfix/smtp[{pid + 4}]: {qid}: to=<{rcpt}>, relay=mx.remote.example[203.0.113.5]:25, delay=1.2, delays=0.1/0/0.5/0.6, dsn=4.4.2, status=deferred (conversation with mx.remote.example[203.0.113.5] timed out while receiving the initial server greeting)")
                    status, dsn, resp = "sent", "2.0.0", "250 2.0.0 Ok: queued as 4ABC123"
                elif roll < 0.05:
                    status, dsn, resp = "bounced", "5.1.1", "host mx.remote.example[203.0.113.5] said: 550 5.1.1 user unknown (in reply to RCPT TO command)"
                else:
                    status, dsn, resp = "sent", "2.0.0", "250 2.0.0 Ok: queued as 4ABC123"
                lines.append(f"{stamp} mx1 postfix/smtp[{pid + 4}]: {qid}: to=<{rcpt}>, relay=mx.remote.example[203.0.113.5]:25, delay=1.2, delays=0.1/0/0.5/0.6, dsn={dsn}, status={status} ({resp})")
            lines.append(f"{stamp} mx1 postfix/qmgr[812]: {qid}: removed")
            out.write("\n".join(lines) + "\n")
            written += len(lines)
            messages += 1
    return messages


# --- the reference: a Python re loop --------------------------------------------------------

HEADER = re.compile(r"^(?P<mon>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<hms>\d\d:\d\d:\d\d) (?P<host>\S+) "
                    r"(?P<prog>[^\s\[\]:]+)(?:\[\d+\])?: (?:(?P<qid>[0-9A-F]{5,20}): )?(?P<body>.*)$")
DELIVERY = re.compile(r"^to=<?(?P<to>[^<>,]*)>?, (?:orig_to=<?[^<>,]*>?, )?relay=(?P<relay>[^,]*), (?:conn_use=\d+, )?"
                      r"delay=[0-9.]+, (?:delays=[0-9./]+, )?dsn=(?P<dsn>[\d.]+), status=(?P<status>[a-z]+)")
FROM = re.compile(r"^from=<(?P<sender>[^<>]*)>, size=(?P<size>\d+), nrcpt=(?P<nrcpt>\d+)")
CLIENT = re.compile(r"^client=(?P<chost>[^\s\[\],]*)\[(?P<cip>[^\]]*)\]")


def python_reference(path: Path, year: int = 2026) -> tuple[int, int]:
    from datetime import datetime, timezone

    pending: dict[str, dict] = {}
    messages: list[dict] = []
    lines = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            lines += 1
            m = HEADER.match(line.rstrip("\n"))
            if not m or not m["qid"]:
                continue
            ts = datetime.strptime(f"{year} {m['mon']} {m['day']} {m['hms']}", "%Y %b %d %H:%M:%S").replace(tzinfo=timezone.utc)
            key = m["host"] + "|" + m["qid"]
            body = m["body"]
            msg = pending.setdefault(key, {"time": ts, "rcpt": {}})
            if body.startswith("to="):
                d = DELIVERY.match(body)
                if d:
                    msg["rcpt"][d["to"].lower()] = d["status"]
            elif body.startswith("from=<"):
                q = FROM.match(body)
                if q:
                    msg["sender"], msg["size"], msg["nrcpt"] = q["sender"].lower(), int(q["size"]), int(q["nrcpt"])
            elif body.startswith("message-id="):
                msg["message_id"] = body[11:].strip("<>")
            elif body.startswith("client="):
                c = CLIENT.match(body)
                if c:
                    msg["src_ip"] = c["cip"]
            elif body == "removed":
                done = pending.pop(key)
                done["recipient"] = sorted(r for r, s in done.pop("rcpt").items() if s == "sent")
                messages.append(done)
    return lines, len(messages)


# --- runners (each in its own process) ------------------------------------------------------

def run_exfilwatch(path: Path, threads: int) -> dict:
    from exfilwatch.config import Home, parse_settings
    from exfilwatch.events.ingest import ingest_paths

    with tempfile.TemporaryDirectory(prefix="bench-mail-home-") as tmp:
        root = Path(tmp)
        home = Home(root=root, config_path=root / "config.yaml")
        settings = parse_settings({"internal_domains": ["example.com"], "threads": threads}, "bench")
        start = time.perf_counter()
        [report] = ingest_paths([path], home, settings, source_name="postfix", year=2026)
        elapsed = time.perf_counter() - start
    return {"lines": report.lines, "seconds": elapsed, "messages": report.events, "notes": report.notes}


def run_python(path: Path) -> dict:
    start = time.perf_counter()
    lines, messages = python_reference(path)
    return {"lines": lines, "seconds": time.perf_counter() - start, "messages": messages}


def run_bare(path: Path, threads: int) -> dict:
    start = time.perf_counter()
    lines, matched = bare_parse(path, HEADER.pattern, threads)
    return {"lines": lines, "seconds": time.perf_counter() - start, "messages": matched}


def child(kind: str, path: Path, threads: int) -> None:
    if kind == "exfilwatch":  # imports are not part of the measurement
        import exfilwatch.config  # noqa: F401
        import exfilwatch.events.ingest  # noqa: F401
    before = resource.getrusage(resource.RUSAGE_SELF)
    runners = {"exfilwatch": lambda: run_exfilwatch(path, threads), "bare-duckdb": lambda: run_bare(path, threads),
               "python-re": lambda: run_python(path)}
    result = runners[kind]()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_seconds"] = (usage.ru_utime - before.ru_utime) + (usage.ru_stime - before.ru_stime)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    print(json.dumps(result))


def run_child(kind: str, path: Path, threads: int, src: Path | None = None) -> dict:
    """One runner in a process of its own; `src`: the exfilwatch source tree it imports."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), str(Path(__file__).parent)])
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--path", str(path), "--threads", str(threads)],
                         check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def alternated(path: Path, threads: int, reference_src: Path, rounds: int) -> None:
    """This checkout's ingest, the reference's and bare DuckDB, alternated round by round."""
    runs = {"this": ("exfilwatch", Path(__file__).resolve().parents[1] / "src"),
            "reference": ("exfilwatch", reference_src), "bare-duckdb": ("bare-duckdb", None)}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    messages: dict[str, set[int]] = {name: set() for name in runs}
    load_before = os.getloadavg()[0]
    for _ in range(rounds):
        for name, (kind, src) in runs.items():
            result = run_child(kind, path, threads, src)
            cpu[name].append(result["cpu_seconds"])
            messages[name].add(result["messages"])
    print(f"alternated over {rounds} rounds, load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after\n")
    print("| code | CPU s best | median | each round | share of bare, best | median |")
    print("|---|---:|---:|---|---:|---:|")
    bare = cpu["bare-duckdb"]
    for name, values in cpu.items():
        share = (f"{min(bare) / min(values):.0%} | {statistics.median(bare) / statistics.median(values):.0%}"
                 if name != "bare-duckdb" else "— | —")
        print(f"| {name} | {min(values):.2f} | {statistics.median(values):.2f} | "
              f"{', '.join(f'{v:.2f}' for v in values)} | {share} |")
    same = messages["this"] == messages["reference"] and len(messages["this"]) == 1
    print(f"\nsame message count in every run: {'yes' if same else 'NO'} ({sorted(messages['this'])})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=5_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["exfilwatch", "bare-duckdb", "python-re"])
    parser.add_argument("--path", type=Path)
    parser.add_argument("--reference-src", type=Path, help="another checkout's src, run alternated with this one")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.path, args.threads)
        return
    with tempfile.TemporaryDirectory(prefix="bench-maillog-") as tmp:
        path = Path(tmp) / "maillog"
        start = time.perf_counter()
        messages = generate(path, args.lines)
        size_mb = path.stat().st_size / 1e6
        print(f"generated {args.lines:,}+ lines, {messages:,} messages, {size_mb:,.0f} MB "
              f"in {time.perf_counter() - start:.0f} s; {os.cpu_count()} CPUs, threads={args.threads}\n")
        if args.reference_src:
            alternated(path, args.threads, args.reference_src, args.rounds)
            return
        rows = [(kind, run_child(kind, path, args.threads)) for kind in ("exfilwatch", "python-re", "bare-duckdb")]
        load = os.getloadavg()[0]
        print("| parser | lines | wall s | lines/s (wall) | CPU s | lines per CPU-s | messages | peak RSS (MB) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for kind, r in rows:
            print(f"| {kind} | {r['lines']:,} | {r['seconds']:.1f} | {r['lines'] / r['seconds']:,.0f} | "
                  f"{r['cpu_seconds']:.1f} | {r['lines'] / r['cpu_seconds']:,.0f} | {r['messages']:,} | "
                  f"{r['peak_rss_mb']:,.0f} |")
        ratio = (rows[0][1]["lines"] / rows[0][1]["seconds"]) / (rows[1][1]["lines"] / rows[1][1]["seconds"])
        cpu_ratio = rows[1][1]["cpu_seconds"] / rows[0][1]["cpu_seconds"]
        print(f"\nexfilwatch / python-re: {ratio:.1f}x by wall time, {cpu_ratio:.1f}x by CPU time "
              f"(load average {load:.1f} at the end: other processes share the cores)")
        bare = rows[2][1]
        print(f"exfilwatch / bare DuckDB (read_csv + one regexp_extract + COPY; its 'messages' are matched lines): "
              f"{bare['seconds'] / rows[0][1]['seconds']:.0%} of its lines/s by wall time, "
              f"{bare['cpu_seconds'] / rows[0][1]['cpu_seconds']:.0%} by CPU time (aim: 60 %)")
        for note in rows[0][1].get("notes", []):
            print(f"note: {note}")


if __name__ == "__main__":
    main()
