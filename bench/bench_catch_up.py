"""Benchmark a first `run` on old logs: with `--now` at the end of the data, and with a `now` years later.

    python bench/bench_catch_up.py [--hosts 300] [--days 30] [--out DIR]

The logs end on 31 March 2021. The reference is `exfilwatch run --now` one day after the data
(what a user who knows the data's dates would type); the measured run is `exfilwatch run --now
2026-12-02T09:00`, the wall clock of a user who doesn't. Fires whose window can hold no data are
skipped in bulk, so the second should cost about what the first does, and find the same. Each run
is its own process on its own copy of the ingested home. Prints a markdown table for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

END = date(2021, 3, 31)
RUNS = {"run --now at the end of the data (reference)": "2021-04-01T00:00",
        "run --now 2026-12-02 (the wall clock, 5.7 years later)": "2026-12-02T09:00"}
CLI = "from exfilwatch.cli import app; app()"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cli(home: Path, *args: str) -> tuple[float, float, str]:
    """Wall and CPU seconds of one exfilwatch command in its own process, and what it printed."""
    started, cpu = time.perf_counter(), _children_cpu()
    process = subprocess.run([sys.executable, "-c", CLI, "--home", str(home), *args], capture_output=True, text=True,
                             env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, check=True)
    return time.perf_counter() - started, _children_cpu() - cpu, process.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=300)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("bench/out/catch_up"))
    args = parser.parse_args()
    from exfilwatch.synth.network import generate_network

    shutil.rmtree(args.out, ignore_errors=True)
    dataset = generate_network(args.out / "logs", days=args.days, hosts=args.hosts, seed=1, end=END)
    base = args.out / "base"
    base.mkdir(parents=True)
    shutil.copy(dataset.config, base / "config.yaml")
    cli(base, "ingest", str(dataset.conn_log))
    rows = []
    for label, now in RUNS.items():
        home = args.out / f"home-{len(rows)}"
        shutil.copytree(base, home)
        wall, cpu, _ = cli(home, "run", "--now", now)
        findings = cli(home, "findings", "--format", "jsonl")[2]
        rows.append({"run": label, "seconds": wall, "cpu": cpu,
                     "findings": sorted((r["detection_id"], r["entity"], r["time"])
                                        for r in map(json.loads, findings.splitlines()))})
    reference = rows[0]
    print(f"\n{dataset.flows} flows, {args.hosts} hosts, {args.days} days ending {END}\n")
    print("| run | seconds | CPU seconds | x reference (wall) | findings | same findings |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['run']} | {row['seconds']:.2f} | {row['cpu']:.2f} | {row['seconds'] / reference['seconds']:.2f} "
              f"| {len(row['findings'])} | {'yes' if row['findings'] == reference['findings'] else 'NO'} |")


if __name__ == "__main__":
    main()
