"""The three network rules' catch-up alone, this code against a reference, on copies of one home.

    python bench/bench_network_catch_up.py HOME --reference-src DIR [--rounds 3] [--memory-limit 1GB]
                                           [--now ISO] [--statements N] [--work DIR]

HOME is an ingested home (the sessions need not be built: these rules read flows only); it is
copied, never changed. Each round runs, in a fresh process per side on a fresh copy of HOME, a
first run of only the three network detections (no risk step, no incident rules), the sides in
alternating order; it prints each rule's CPU seconds (median and each round), the process's peak
RSS, the N costliest SQL statements of the last round (summed over statements whose first 120
characters are equal), the load average, and whether both sides stored the same findings (every
column but the run ids), runs (without their ids) and watermarks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

THIS = Path(__file__).resolve()
SRC = THIS.parents[1] / "src"
RULES = ["email_servers_sending_high_volume_traffic_to_hosts",
         "hosts_receiving_high_volume_of_network_traffic_from_email_server",
         "hosts_receiving_unusual_mail_volume_robust"]


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(home: Path, now_text: str, statements_wanted: int) -> None:
    """Run the three rules' catch-up on `home` with the exfilwatch on PYTHONPATH; print JSON."""
    import exfilwatch.pipeline as pipeline
    from exfilwatch.config import resolve_home, load_settings
    from exfilwatch.detections.schema import load_detections
    from exfilwatch.events.engine import connect
    from exfilwatch.home import writer
    from exfilwatch.timeexpr import parse_time
    from datetime import datetime, timezone

    steps: dict[str, float] = {}
    catch_up = pipeline._catch_up

    def timed(*a, **k):
        started = cpu()
        try:
            return catch_up(*a, **k)
        finally:
            steps[a[3].id] = cpu() - started

    pipeline._catch_up = timed
    statements: dict[str, list[float]] = {}

    class Clock:
        def __init__(self, con):
            self._con = con

        def execute(self, query, *args, **kwargs):
            started = cpu()
            try:
                return self._con.execute(query, *args, **kwargs)
            finally:
                statements.setdefault(" ".join(str(query).split())[:120], []).append(cpu() - started)

        def __getattr__(self, name):
            return getattr(self._con, name)

    place = resolve_home(home)
    settings = load_settings(place)
    catalog = load_detections()
    now = parse_time(now_text, datetime.now(timezone.utc), settings.timezone)
    with writer(place) as state:
        con = connect(settings, place.spill_dir)
        try:
            pipeline.run(Clock(con) if statements_wanted else con, state, settings, list(catalog.values()), now,
                         pipeline.Options(detections=[catalog[r] for r in RULES], risk=False))
        finally:
            con.close()
    costliest = sorted(statements.items(), key=lambda item: -sum(item[1]))[:statements_wanted]
    print(json.dumps({"steps": steps, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "statements": [(sum(t), len(t), text) for text, t in costliest]}))


def stored(home: Path) -> dict[str, list[tuple]]:
    """What a run leaves that the two sides must agree on."""
    with sqlite3.connect(home / "state.sqlite") as db:
        return {
            "findings": sorted(db.execute(
                "SELECT finding_key, detection_id, entity, bucket, time, value, risk_score, message, risk_objects, "
                "fields, updates FROM findings")),
            "runs": sorted(db.execute("SELECT detection_id, mode, now, earliest, latest, findings FROM detection_runs")),
            "watermarks": sorted(db.execute("SELECT detection_id, last_fire FROM watermarks")),
        }


def copy_home(base: Path, home: Path, memory_limit: str | None) -> None:
    shutil.copytree(base, home)
    if memory_limit:
        config = home / "config.yaml"
        text = config.read_text()
        line = f"memory_limit: {memory_limit}"
        text = re.sub(r"(?m)^memory_limit:.*$", line, text) if re.search(r"(?m)^memory_limit:", text) \
            else text.rstrip("\n") + f"\n{line}\n"
        config.write_text(text)


def one_side(src: Path, home: Path, now: str, statements: int) -> dict:
    process = subprocess.run([sys.executable, str(THIS), "--child", str(home), "--now", now,
                              "--statements", str(statements)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(src)})
    if process.returncode:
        sys.exit(f"the run with {src} failed:\n{process.stderr}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", type=Path)
    parser.add_argument("--reference-src", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-limit", help="the copies' DuckDB memory_limit (default: the home's)")
    parser.add_argument("--now", default="2026-11-01T02:00:00-04:00")
    parser.add_argument("--statements", type=int, default=0)
    parser.add_argument("--work", type=Path, help="where the copies go (default: a temporary folder)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.home, args.now, args.statements)
        return
    sides = {"this": SRC, **({"reference": args.reference_src} if args.reference_src else {})}
    work = Path(tempfile.mkdtemp(prefix="netcu-", dir=args.work))
    results: dict[str, list[dict]] = {name: [] for name in sides}
    agree = True
    loads = [os.getloadavg()[0]]
    try:
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            kept = {}
            for name in order:
                home = work / f"{name}-{round_}"
                copy_home(args.home, home, args.memory_limit)
                results[name].append(one_side(sides[name], home, args.now, args.statements))
                kept[name] = stored(home)
                shutil.rmtree(home)
                loads.append(os.getloadavg()[0])
                print(f"round {round_ + 1} {name}: " + ", ".join(f"{v:.2f}" for v in results[name][-1]["steps"].values())
                      + f" CPU s, peak RSS {results[name][-1]['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
            first = kept[order[0]]
            agree = agree and all(kept[name] == first for name in order)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.rounds} rounds alternated, load average {min(loads):.1f}-{max(loads):.1f}\n")
    print("| rule | " + " | ".join(f"{name}: CPU s median (rounds)" for name in sides) + " |")
    print("|---|" + "---:|" * len(sides))
    for rule in [*RULES, "the three rules"]:
        cells = []
        for name in sides:
            values = [sum(r["steps"].values()) if rule == "the three rules" else r["steps"][rule] for r in results[name]]
            cells.append(f"{statistics.median(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})")
        print(f"| {rule} | " + " | ".join(cells) + " |")
    print("| peak RSS, MB (largest) | " + " | ".join(
        f"{max(r['peak_rss_mb'] for r in results[name]):.0f}" for name in sides) + " |")
    print(f"\nsame findings, runs and watermarks: {'yes' if agree else 'NO'}")
    for name in sides:
        if results[name][-1]["statements"]:
            print(f"\n{name}, last round: CPU s, runs, statement")
            for seconds, runs, text in results[name][-1]["statements"]:
                print(f"{seconds:8.2f} {runs:6d}  {text}")


if __name__ == "__main__":
    main()
