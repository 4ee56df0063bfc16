"""Benchmark: `exfilwatch serve` from receipt to committed lake rows, against `ingest` of the same lines.

    python bench/bench_service.py [--tcp-lines 300000] [--hec-events 100000] [--hec-clients 4]
                                  [--peers 20 --peer-lines 40000] [--rounds 1]

Starts a real `exfilwatch serve` subprocess on ephemeral 127.0.0.1 ports and measures:

* TCP syslog: Pulse Secure and Postfix lines (half each, LF framing) on one `auto` port, as fast as
  one connection sends them; lines/s from the first byte sent to the last batch committed.
* HEC: batches of 100 events from `--hec-clients` concurrent clients with indexer acknowledgement;
  events/s from the first request to the last ack true, and per request the p50 / p99 time from
  send to the reply (spooled, fsynced) and from send to ack true (committed to the lake).
* the service's peak RSS (VmHWM) at the end, and the ingest child's (ru_maxrss);
* `ingest` (ingest_paths, in a child process, while the service idles) of the same TCP lines from
  files, in the same run: after each TCP syslog measurement when `--rounds` asks for several;
* for each, the CPU seconds it took (the service's process, all threads, from /proc; the ingest
  child's own): on a machine shared with other work, lines per CPU-second compare the code, while
  lines per wall second also measure how much of the cores the others left.

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

SRC = str(Path(__file__).resolve().parents[1] / "src")
TOKEN = "bench-token"
# How often each channel asks for its acks: Vector asks every 10 s by default
# (indexer_acknowledgements.query_interval); more often here, so the ack latency is measured finely.
ACK_POLL_SECONDS = 0.25


def pulse(i: int) -> str:
    s = i % 60
    return (f"2026-09-25T09:00:{s:02d}-04:00 vpn01 PulseSecure: 2026-09-25 09:00:{s:02d} - ive - [198.51.100.120] "
            f"Default Network::user{i % 3000:04d}(Users)[Users, VPN] - Login succeeded for user{i % 3000:04d}/Users "
            f"(session:{i:08x}) from 198.51.100.120 with Pulse-Secure/9.1.15.8591 (Windows 10) "
            "Pulse Secure/9.1.15.8591.")


def postfix(i: int) -> str:
    qid = f"{0x1A2B3C000 + i // 5:X}"
    head = "2026-09-25T09:06:40.000000-04:00 mail01"
    kind = i % 5
    if kind == 0:
        return (f"{head} postfix/submission/smtpd[2101]: {qid}: client=unknown[10.200.0.120], sasl_method=PLAIN, "
                f"sasl_username=user{i % 3000:04d}")
    if kind == 1:
        return f"{head} postfix/cleanup[2102]: {qid}: message-id=<{qid}@corp.example>"
    if kind == 2:
        return (f"{head} postfix/qmgr[2103]: {qid}: from=<user{i % 3000:04d}@corp.example>, size=20000, "
                "nrcpt=1 (queue active)")
    if kind == 3:
        return (f"{head} postfix/smtp[2104]: {qid}: to=<x{i}@gmail.com>, "
                "relay=gmail-smtp-in.l.google.com[142.250.1.26]:25, "
                "delay=0.5, delays=0.1/0/0.2/0.2, dsn=2.0.0, status=sent (250 2.0.0 OK)")
    return f"{head} postfix/qmgr[2103]: {qid}: removed"


def mixed_lines(n: int) -> list[str]:
    return [pulse(i) if i % 2 == 0 else postfix(i // 2) for i in range(n)]


def start(home: Path) -> tuple[subprocess.Popen, dict]:
    config = {"service": {
        "syslog": [{"protocol": "tcp", "host": "127.0.0.1", "port": 0, "source": "auto"}],
        "hec": {"host": "127.0.0.1", "port": 0, "tokens": [{"token": TOKEN, "source": "pulse_secure"}]},
        "batch": {"max_events": 50000, "max_seconds": 1}, "schedule": False}}
    home.mkdir(parents=True)
    (home / "config.yaml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-c", "from exfilwatch.cli import app; app()", "--home", str(home),
                                "serve"], stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC})
    assert process.stderr is not None
    for line in process.stderr:
        if '"event": "ready"' in line:
            threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
            return process, json.loads(line)["ports"]
    raise SystemExit("the service did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def committed_lines(home: Path) -> int:
    db = sqlite3.connect(home / "state.sqlite", timeout=30)
    try:
        return db.execute("SELECT coalesce(sum(lines), 0) FROM batches").fetchone()[0]
    finally:
        db.close()


def wait_committed(home: Path, total: int) -> float:
    while committed_lines(home) < total:
        time.sleep(0.02)
    return time.perf_counter()


def bench_tcp(home: Path, port: int, lines: list[str], pid: int, peers: int = 1) -> dict:
    """One connection per peer, each from an address of its own (127.0.0.1, .2, …: raw_ref and
    quarantine name each; the service parses a listener's lines of all peers in one pass), each
    sending its share of the lines."""
    payloads = ["".join(line + "\n" for line in lines[k::peers]).encode() for k in range(peers)]
    before = committed_lines(home)
    cpu = cpu_seconds(pid)
    started = time.perf_counter()

    def send(k: int) -> None:
        with socket.create_connection(("127.0.0.1", port), source_address=(f"127.0.0.{k + 1}", 0)) as tcp:
            tcp.sendall(payloads[k])

    senders = [threading.Thread(target=send, args=(k,)) for k in range(peers)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    done = wait_committed(home, before + len(lines))
    what = "serve: TCP syslog (Pulse + Postfix, auto)" + (f", {peers} peers" if peers > 1 else "")
    return {"what": what, "lines": len(lines), "seconds": done - started, "cpu": cpu_seconds(pid) - cpu}


def bench_hec(base: str, events: int, clients: int, pid: int) -> dict:
    bodies = []
    for start_at in range(0, events, 100):
        bodies.append("".join(json.dumps({"event": pulse(1_000_000 + i), "sourcetype": "pulse:connectsecure"})
                              for i in range(start_at, min(events, start_at + 100))))
    replies: list[float] = []
    pending: dict[tuple[str, int], float] = {}  # (channel, ackId): ack ids are counted per channel
    acked: list[float] = []
    lock = threading.Lock()
    cpu = cpu_seconds(pid)
    started = time.perf_counter()

    def send(part: list[str], channel: str) -> None:
        headers = {"Authorization": f"Splunk {TOKEN}", "X-Splunk-Request-Channel": channel}
        with httpx.Client(base_url=base, timeout=60) as client:
            for body in part:
                sent = time.perf_counter()
                reply = client.post("/services/collector/event", content=body, headers=headers)
                reply.raise_for_status()
                with lock:
                    replies.append(time.perf_counter() - sent)
                    pending[(channel, reply.json()["ackId"])] = sent

    threads = [threading.Thread(target=send, args=(bodies[i::clients], f"c{i}")) for i in range(clients)]
    for t in threads:
        t.start()
    with httpx.Client(base_url=base, timeout=60) as client:
        while any(t.is_alive() for t in threads) or pending:
            with lock:
                keys = list(pending)
            for channel in sorted({c for c, _ in keys}):  # as a forwarder asks: on each channel, for its ids
                headers = {"Authorization": f"Splunk {TOKEN}", "X-Splunk-Request-Channel": channel}
                ids = [i for c, i in keys if c == channel]
                answer = client.post("/services/collector/ack", content=json.dumps({"acks": ids}), headers=headers)
                now = time.perf_counter()
                with lock:
                    for ack_id, done in answer.json()["acks"].items():
                        if done:
                            acked.append(now - pending.pop((channel, int(ack_id))))
            time.sleep(ACK_POLL_SECONDS)
    seconds = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu
    replies.sort()
    acked.sort()

    def p50_p99(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.0f} / {values[int(len(values) * .99)] * 1000:.0f}"

    return {"what": f"serve: HEC, batches of 100, {clients} clients, with acks", "lines": events, "seconds": seconds,
            "cpu": cpu, "reply p50/p99 ms": p50_p99(replies), "ack p50/p99 ms": p50_p99(acked)}


def bench_ingest(folder: Path, lines: list[str]) -> dict:
    log = folder / "mixed"
    log.mkdir()
    (log / "vpn.log").write_text("".join(line + "\n" for line in lines if "PulseSecure:" in line))
    (log / "maillog").write_text("".join(line + "\n" for line in lines if "postfix/" in line))
    script = ("import resource, sys, time; from pathlib import Path; from exfilwatch.config import Home, Settings; "
              "from exfilwatch.events.ingest import ingest_paths; h = Path(sys.argv[1]); "
              "t, c = time.perf_counter(), time.process_time(); "
              "ingest_paths([Path(sys.argv[2])], Home(h, h / 'config.yaml'), Settings()); "
              "print(time.perf_counter() - t, time.process_time() - c, "
              "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)")
    done = subprocess.run([sys.executable, "-c", script, str(folder / "ingest-home"), str(log)], capture_output=True,
                          text=True, check=True, env={**os.environ, "PYTHONPATH": SRC})
    seconds, cpu, peak = done.stdout.split()[-3:]
    return {"what": "ingest of the same TCP lines from files", "lines": len(lines), "seconds": float(seconds),
            "cpu": float(cpu), "peak": int(peak)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tcp-lines", type=int, default=300_000)
    parser.add_argument("--hec-events", type=int, default=100_000)
    parser.add_argument("--hec-clients", type=int, default=4)
    parser.add_argument("--peers", type=int, default=0, help="also send --peer-lines lines from this many peers")
    parser.add_argument("--peer-lines", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure TCP syslog and ingest this many times, one after the other (a shared "
                             "machine's load changes within seconds: each round's ratio, and their median)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        home = folder / "home"
        lines = mixed_lines(args.tcp_lines)
        process, ports = start(home)
        pairs = []  # (serve TCP, ingest) of each round
        try:
            bench_tcp(home, ports["tcp:0"], mixed_lines(2000), process.pid)  # warm up: the first batch compiles
            for round_no in range(args.rounds):
                tcp = bench_tcp(home, ports["tcp:0"], lines, process.pid)
                (folder / f"round{round_no}").mkdir()
                pairs.append((tcp, bench_ingest(folder / f"round{round_no}", lines)))  # the service idles meanwhile
            rows = [bench_hec(f"http://127.0.0.1:{ports['hec']}", args.hec_events, args.hec_clients, process.pid)]
            if args.peers:
                many = bench_tcp(home, ports["tcp:0"], lines[:args.peer_lines], process.pid, args.peers)
                one = bench_tcp(home, ports["tcp:0"], lines[:args.peer_lines], process.pid)
                rows[:0] = [many, one]
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak = next(int(line.split()[1]) // 1024 for line in status.splitlines() if line.startswith("VmHWM"))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(120)
    rows = [row for pair in pairs for row in pair] + rows
    print(f"peak RSS: the service {peak} MB, ingest {max(i['peak'] for _, i in pairs)} MB; load average "
          f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} CPUs)\n")
    print("| what | lines | seconds | lines/s | CPU s | lines per CPU-s | reply p50/p99 ms | ack p50/p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for row in rows:
        print(f"| {row['what']} | {row['lines']:,} | {row['seconds']:.1f} | {row['lines'] / row['seconds']:,.0f} | "
              f"{row['cpu']:.1f} | {row['lines'] / row['cpu']:,.0f} | "
              f"{row.get('reply p50/p99 ms', '')} | {row.get('ack p50/p99 ms', '')} |")
    by_wall = [ingest["seconds"] / tcp["seconds"] for tcp, ingest in pairs]
    by_cpu = [ingest["cpu"] / tcp["cpu"] for tcp, ingest in pairs]
    print(f"\nTCP syslog / ingest, each round: {', '.join(f'{w:.0%}' for w in by_wall)} by wall time, "
          f"{', '.join(f'{c:.0%}' for c in by_cpu)} by CPU time; median {statistics.median(by_wall):.0%} and "
          f"{statistics.median(by_cpu):.0%}")


if __name__ == "__main__":
    main()
