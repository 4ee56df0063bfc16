"""Where a first `run`'s CPU goes: per step, in one process, on a copy of an ingested home.

    python bench/profile_first_run.py HOME [--now ISO] [--profile OUT.prof] [--statements N]
                                      [--memory-limit SIZE] [run options…]

HOME is an ingested home that never ran (e.g. OUT/base of `bench_catch_up.py --only-ingest`); it
is copied, never changed. Prints the CPU seconds of the sessions build, each detection's catch-up,
the risk step and the incident rules; with `--profile`, cProfile's statistics go to OUT.prof too;
with `--statements N`, the N SQL statements that took the most CPU (summed over the statements
whose first 120 characters are the same: a catch-up runs one statement per fire or chunk).
"""

from __future__ import annotations

import argparse
import cProfile
import re
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StatementClock:
    """A DuckDB connection that adds each statement's CPU seconds to `statements`, keyed by its text."""

    def __init__(self, con, statements: dict[str, list[float]]):
        self._con, self._statements = con, statements

    def execute(self, query, *args, **kwargs):
        started = cpu()
        try:
            return self._con.execute(query, *args, **kwargs)
        finally:
            key = " ".join(str(query).split())[:120]
            self._statements.setdefault(key, []).append(cpu() - started)

    def __getattr__(self, name):
        return getattr(self._con, name)


def timed(steps: dict[str, float], name: Callable[[tuple], str], step: Callable) -> Callable:
    """`step` with the CPU seconds of each call added to `steps[name(args)]`, listed in the order the
    steps were first entered (so an outer step comes before the steps inside it)."""
    def wrapper(*a, **k):
        key = name(a)
        steps.setdefault(key, 0.0)
        started = cpu()
        try:
            return step(*a, **k)
        finally:
            steps[key] += cpu() - started
    return wrapper


def print_costliest(statements: dict[str, list[float]], count: int) -> None:
    """The `count` statements of `StatementClock` that took the most CPU, summed over their runs."""
    print(f"\n{'CPU s':>8} {'runs':>6}  statement")
    for text, times in sorted(statements.items(), key=lambda item: -sum(item[1]))[:count]:
        print(f"{sum(times):8.2f} {len(times):6d}  {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", type=Path)
    parser.add_argument("--now", default="2026-11-01T02:00:00-04:00", help="the run's now (bench_catch_up's data end)")
    parser.add_argument("--profile", type=Path, help="write cProfile statistics here")
    parser.add_argument("--statements", type=int, default=0, help="print the N costliest SQL statements")
    parser.add_argument("--memory-limit", help="the copy's DuckDB memory_limit (default: the home's)")
    args, run_options = parser.parse_known_args()
    import exfilwatch.cli.run as run_command
    import exfilwatch.pipeline as pipeline
    from exfilwatch.cli import app

    steps: dict[str, float] = {}
    # the pipeline calls its steps by these module names, so timing them here times each run of one
    pipeline._catch_up = timed(steps, lambda a: a[3].id, pipeline._catch_up)
    pipeline.build_user_sessions = timed(steps, lambda a: "sessions build", pipeline.build_user_sessions)
    pipeline.run_incident_rules = timed(steps, lambda a: "incident rules", pipeline.run_incident_rules)
    pipeline.rebuild_risk_events = timed(steps, lambda a: "risk", pipeline.rebuild_risk_events)
    statements: dict[str, list[float]] = {}
    if args.statements:
        connect = run_command.connect
        run_command.connect = lambda *a, **k: StatementClock(connect(*a, **k), statements)
    work = Path(tempfile.mkdtemp(prefix="first-run-"))
    try:
        home = work / "home"
        shutil.copytree(args.home, home)
        if args.memory_limit:
            config = home / "config.yaml"
            config.write_text(re.sub(r"(?m)^memory_limit:.*$", f"memory_limit: {args.memory_limit}", config.read_text()))
        command = ["--home", str(home), "run", "--now", args.now, *run_options]
        started, wall = cpu(), time.perf_counter()
        profile = cProfile.Profile() if args.profile else None
        try:
            profile.runcall(app, command, standalone_mode=False) if profile else app(command, standalone_mode=False)
        except SystemExit:
            pass
        print(f"\nCPU {cpu() - started:.1f} s, wall {time.perf_counter() - wall:.1f} s")
        if profile:
            profile.dump_stats(args.profile)
        for name, seconds in steps.items():
            print(f"{name:70s} {seconds:6.2f}")
        if statements:
            print_costliest(statements, args.statements)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
