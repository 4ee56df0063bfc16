"""Benchmark a first `run` (the catch-up of every missed fire) and the hourly run after it.

    python bench/bench_catch_up.py [--users 1000] [--days 30] [--out DIR] [--no-per-fire]
                                   [--memory-limit 1GB] [--reference-src DIR --rounds N]
                                   [--only-ingest | --reuse-base]

The synthetic organisation's logs (Pulse Secure, Postfix, Zeek conn.log with the network
generator's flows) are ingested once; that ingest is the reference the first run is compared
with. Then, each in its own process on its own copy of the home:

* the first `run` in one pass (the default) and with `--catch-up per-fire` (every fire's search
  on its own, the reference the one pass is tested against): CPU seconds and whether they stored
  the same findings;
* the steady state: after a first run up to the start of the data's last day, the run a day
  later, which catches up that day's 24 hourly fires (per fire hour: its CPU / 24).

Each command runs with DuckDB's `memory_limit` at 1 GB (`--memory-limit`) and its own peak RSS is
reported: the issue's memory aim is every step under 2 GB.

With `--reference-src` (another checkout's `src`, e.g. `git archive main src`), the first run
and the steady state are also run with that code, alternated with this one over `--rounds`
rounds on copies of the same ingested home, so that both see the same load; the median CPU of
each and whether they stored the same findings are printed.

With `--only-ingest` the benchmark stops once the reference is measured, leaving `OUT/base` and
the ingest's numbers in `OUT/base/bench_ingest.json`; `--reuse-base` starts from them instead of
generating and ingesting again (a large organisation's logs take longer to make than to judge).

Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

END = date(2026, 10, 31)
TZ = ZoneInfo("America/New_York")
CLI = "from exfilwatch.cli import app; app()"


class Command(NamedTuple):
    wall: float
    cpu: float
    out: str
    peak_rss_mb: float


def cli(home: Path, *args: str, src: Path = SRC) -> Command:
    """Wall and CPU seconds of one exfilwatch command in its own process, what it printed, and its
    peak RSS.

    The process is reaped with wait4 so that its CPU and peak RSS are its own (RUSAGE_CHILDREN's
    peak is the largest of every child so far)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen([sys.executable, "-c", CLI, "--home", str(home), *args], stdout=subprocess.PIPE,
                                   stderr=stderr, text=True, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"})
        with process.stdout:
            out = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            stderr.seek(0)
            sys.exit(f"exfilwatch {' '.join(args)} failed:\n{stderr.read().decode(errors='replace')}")
    return Command(time.perf_counter() - started, usage.ru_utime + usage.ru_stime, out, usage.ru_maxrss / 1024)


def findings(home: Path) -> list[tuple]:
    out = cli(home, "findings", "--format", "jsonl").out
    return sorted((r["detection_id"], r["entity"], r["time"], r["fields"].get("bytes_in") or r["fields"].get("bytes_out")
                   or r["fields"].get("observed")) for r in map(json.loads, out.splitlines()))


def copy_home(base: Path, home: Path, memory_limit: str) -> Path:
    """A copy of the ingested home `base` whose DuckDB `memory_limit` is this run's (a reused base
    keeps the one it was ingested with)."""
    shutil.copytree(base, home)
    config = home / "config.yaml"
    lines = [line for line in config.read_text().splitlines() if not line.startswith("memory_limit:")]
    config.write_text("\n".join(lines + [f"memory_limit: {memory_limit}"]) + "\n")
    return home


def alternated(base: Path, work: Path, sources: dict[str, Path], rounds: int, memory_limit: str) -> None:
    """The first run and the steady state with each source tree, alternated round by round."""
    cpu: dict[tuple[str, str], list[float]] = {}
    stored: dict[str, list[tuple]] = {}
    for round_ in range(rounds):
        for name, src in sources.items():
            home = copy_home(base, work / f"{name}-{round_}", memory_limit)
            cpu.setdefault((name, "first"), []).append(cli(home, "run", "--now", local(END, 24 + 2), src=src).cpu)
            stored[name] = findings(home)
            shutil.rmtree(home)
            copy_home(base, home, memory_limit)
            cli(home, "run", "--now", local(END, 0), src=src)
            cpu.setdefault((name, "steady"), []).append(cli(home, "run", "--now", local(END, 24), src=src).cpu)
            shutil.rmtree(home)
    print(f"\nalternated over {rounds} rounds, load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| code | first run CPU s (median; each round) | steady state CPU s per fire hour (median) |")
    print("|---|---:|---:|")
    for name in sources:
        first, steady = cpu[(name, "first")], cpu[(name, "steady")]
        print(f"| {name} | {statistics.median(first):.1f} ({', '.join(f'{c:.1f}' for c in first)}) "
              f"| {statistics.median(steady) / 24:.3f} |")
    names = list(sources)
    print(f"\nsame findings: {'yes' if all(stored[n] == stored[names[0]] for n in names) else 'NO'}")


def build_base(out: Path, users: int, days: int, memory_limit: str) -> dict:
    """Generate the organisation into OUT/logs and ingest it into OUT/base: the reference's numbers."""
    from exfilwatch.synth.org import generate_organisation

    shutil.rmtree(out, ignore_errors=True)
    # Generated in a process of its own: a child's peak RSS counts its parent's memory up to the
    # exec (Linux carries the old image's high-water mark over), and generation takes gigabytes.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        ds = pool.submit(generate_organisation, out / "logs", users=users, days=days, seed=1, end=END).result()
    base = out / "base"
    base.mkdir(parents=True)
    # The memory aim: every step under 2 GB of peak RSS with DuckDB's memory_limit at 1 GB.
    (base / "config.yaml").write_text(ds.config.read_text() + f"memory_limit: {memory_limit}\n")
    ingests = [cli(base, "ingest", "--source", source, str(path))
               for source, path in (("pulse_secure", ds.vpn_log), ("postfix", ds.mail_log), ("zeek_conn", ds.conn_log))]
    return {"users": ds.users, "days": days, "vpn_lines": ds.vpn_lines, "mail_lines": ds.mail_lines, "flows": ds.flows,
            "wall": sum(c.wall for c in ingests), "cpu": sum(c.cpu for c in ingests),
            "peak_rss_mb": max(c.peak_rss_mb for c in ingests)}


def local(day: date, hours: int = 0) -> str:
    return (datetime(day.year, day.month, day.day, tzinfo=TZ) + timedelta(hours=hours)).isoformat()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("bench/out/catch_up"))
    parser.add_argument("--memory-limit", default="1GB", help="DuckDB's memory_limit in the homes' config")
    parser.add_argument("--no-per-fire", action="store_true", help="skip the per-fire reference (the slow one)")
    parser.add_argument("--reference-src", type=Path, help="another checkout's src, run alternated with this one")
    parser.add_argument("--rounds", type=int, default=3)
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--only-ingest", action="store_true", help="stop after the reference, keeping OUT/base")
    stop.add_argument("--reuse-base", action="store_true", help="start from the OUT/base an --only-ingest run left")
    args = parser.parse_args()
    base = args.out / "base"
    reference = base / "bench_ingest.json"
    if args.reuse_base:
        if not reference.exists():
            raise SystemExit(f"bench_catch_up: {reference} is missing: run with --only-ingest first")
        ingest = json.loads(reference.read_text())
        for stale in args.out.iterdir():
            if stale.name not in ("base", "logs"):
                shutil.rmtree(stale)
    else:
        ingest = build_base(args.out, args.users, args.days, args.memory_limit)
        reference.write_text(json.dumps(ingest))
        if args.only_ingest:
            print(json.dumps(ingest))
            return
    ingest_cpu = ingest["cpu"]
    after_data = local(END, 24 + 2)
    rows = [("ingest of the same logs (reference)", ingest["wall"], ingest_cpu, None, None, ingest["peak_rss_mb"])]
    first_runs = {}
    for mode in ("one-pass", *(() if args.no_per_fire else ("per-fire",))):
        home = copy_home(base, args.out / f"first-{mode}", args.memory_limit)
        run = cli(home, "run", "--now", after_data, "--catch-up", mode)
        first_runs[mode] = findings(home)
        rows.append((f"first `run --catch-up {mode}`", run.wall, run.cpu, len(first_runs[mode]), None, run.peak_rss_mb))
    # Steady state: the first run stops at the last day's midnight; the next run catches up that day.
    home = copy_home(base, args.out / "steady", args.memory_limit)
    cli(home, "run", "--now", local(END, 0))
    run = cli(home, "run", "--now", local(END, 24))
    rows.append(("hourly `run` after one new day (24 fire hours)", run.wall, run.cpu, None, run.cpu / 24,
                 run.peak_rss_mb))

    same = "" if "per-fire" not in first_runs else (
        "yes" if first_runs["per-fire"] == first_runs["one-pass"] else "NO")
    print(f"\n{ingest['users']} users x {ingest['days']} days ending {END}: {ingest['vpn_lines']:,} VPN lines, "
          f"{ingest['mail_lines']:,} mail lines, {ingest['flows']:,} flows; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print(f"DuckDB memory_limit {args.memory_limit}\n")
    print("| step | wall s | CPU s | CPU x ingest | findings | CPU s per fire hour | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, wall, cpu, count, per_hour, rss in rows:
        print(f"| {label} | {wall:.1f} | {cpu:.1f} | {cpu / ingest_cpu:.2f} | {'' if count is None else count} "
              f"| {'' if per_hour is None else f'{per_hour:.2f}'} | {rss:,.0f} |")
    if same:
        print(f"\none pass and per fire stored the same findings: {same}; one pass is "
              f"{rows[2][2] / rows[1][2]:.1f}x less CPU")
    if args.reference_src:
        alternated(base, args.out / "alternated", {"reference": args.reference_src.resolve(), "this": SRC},
                   args.rounds, args.memory_limit)


if __name__ == "__main__":
    main()
