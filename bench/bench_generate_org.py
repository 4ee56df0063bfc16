"""Time the synthetic organisation generator: by default 1000 users x 90 days, Postfix mail.

    python bench/bench_generate_org.py [--users 1000] [--days 90] [--mail postfix|exchange]
                                       [--no-network] [--flows-per-host-day N] [--out DIR]

Prints the counts (users, VPN sessions, messages, log lines, flows), the sizes of the files, the
wall time, the peak memory of the process, and lines per second. `--no-network` leaves out the
network generator's flows (conn.log then holds the org's own flows only), which shows the cost
of each part. Without --out the files go to a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from exfilwatch.synth.org import generate_organisation  # noqa: E402


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--mail", choices=["postfix", "exchange"], default="postfix")
    parser.add_argument("--no-network", action="store_true", help="leave out the network generator's flows")
    parser.add_argument("--flows-per-host-day", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--end", default="2026-10-31")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="exfilwatch-bench-org-"))
    try:
        start, cpu = time.perf_counter(), time.process_time()
        ds = generate_organisation(out, users=args.users, days=args.days, seed=args.seed,
                                   end=date.fromisoformat(args.end), mail=args.mail, network=not args.no_network,
                                   flows_per_host_day=args.flows_per_host_day)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        lines = ds.vpn_lines + ds.mail_lines + ds.flows
        print(f"{ds.users:,} users x {args.days} days, mail={ds.mail}, network={'no' if ds.network_note else 'yes'}"
              f" ({os.cpu_count()} CPUs)")
        print(f"  {ds.sessions:,} VPN sessions, {ds.vpn_lines:,} lines, {_size(ds.vpn_log) / 1e6:,.0f} MB {ds.vpn_log.name}")
        print(f"  {ds.messages:,} messages, {ds.mail_lines:,} lines, {_size(ds.mail_log) / 1e6:,.0f} MB {ds.mail_log.name}")
        print(f"  {ds.flows:,} flows, {_size(ds.conn_log) / 1e6:,.0f} MB {ds.conn_log.name}")
        if ds.network_note:
            print(f"  {ds.network_note}")
        print(f"  {elapsed:.1f} s wall, {cpu:.1f} s CPU (all threads), {lines / elapsed:,.0f} lines/s, "
              f"peak RSS {peak_mb:,.0f} MB, load average {os.getloadavg()[0]:.1f}")
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
