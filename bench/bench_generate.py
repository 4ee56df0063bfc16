"""Time the synthetic network generator: by default 500 hosts x 45 days x 450 flows (about 10 million flows).

    python bench/bench_generate.py [--hosts 500] [--days 45] [--flows-per-host-day 450] [--gzip] [--out DIR]

Prints the flow count, the wall time and flows per second. Without --out the files go to a
temporary folder that is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from exfilwatch.synth.network import generate_network  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=500)
    parser.add_argument("--days", type=int, default=45)
    parser.add_argument("--flows-per-host-day", type=int, default=450)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--end", default="2026-10-31")
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="exfilwatch-bench-"))
    try:
        start = time.perf_counter()
        dataset = generate_network(out, days=args.days, hosts=args.hosts, seed=args.seed,
                                   end=date.fromisoformat(args.end), gzip=args.gzip,
                                   flows_per_host_day=args.flows_per_host_day)
        elapsed = time.perf_counter() - start
        size = dataset.conn_log.stat().st_size
        print(f"{dataset.flows:,} flows in {elapsed:.1f} s: {dataset.flows / elapsed:,.0f} flows/s "
              f"({size / 1e6:,.0f} MB {dataset.conn_log.name}, {os.cpu_count()} CPUs)")
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
