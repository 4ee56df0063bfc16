"""Where an ingest's CPU goes: per step, in one process, into a fresh home.

    python bench/profile_ingest.py FILE [--source NAME] [--source-tz ZONE] [--year YEAR]
                                   [--threads N] [--statements N] [--profile OUT.prof]

Ingests FILE as `bench_sources_*.py`'s children do (`ingest_paths` into a temporary home, 3 GB of
memory) and prints the CPU seconds of the imports, of each step of every batch (reading the file
into lines, the source's parse, the outcomes and quarantine reads, the lake write, the state
commit; summed over the batches) and of the whole ingest; with `--statements N`, the N SQL
statements that took the most CPU (summed over those whose first 120 characters are the same: each
batch runs the same statements); with `--profile`, cProfile's statistics (CPU time) go to OUT.prof.
The home is removed afterwards.
"""

from __future__ import annotations

import argparse
import cProfile
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_first_run import StatementClock, cpu, print_costliest, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--source", default="pulse_secure")
    parser.add_argument("--source-tz", default="Europe/Berlin", help="as the source benchmarks pass it")
    parser.add_argument("--year", type=int, default=2026, help="as the source benchmarks pass it")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--statements", type=int, default=0, help="print the N costliest SQL statements")
    parser.add_argument("--profile", type=Path, help="write cProfile statistics here")
    args = parser.parse_args()

    started = cpu()
    import exfilwatch.events.files as files
    import exfilwatch.events.ingest as ingest
    from exfilwatch.config import Home, parse_settings
    from exfilwatch.sources import get_source
    imports = cpu() - started

    steps: dict[str, float] = {}
    statements: dict[str, list[float]] = {}
    connect = ingest.connect
    ingest.connect = lambda *a, **k: StatementClock(connect(*a, **k), statements)
    source = get_source(args.source)
    source_type = type(source)
    source_type.parse = timed(steps, lambda a: "parse (the source's statement and its own reads)", source_type.parse)
    ingest.write_events = timed(steps, lambda a: "lake write (guarded; capped where needed)", ingest.write_events)
    ingest.write_batch = timed(steps, lambda a: "  of it, write_batch (the day count and the COPYs)", ingest.write_batch)
    ingest.ingest_lines = timed(steps, lambda a: "ingest_lines (a batch, all of it)", ingest.ingest_lines)
    files.iter_line_chunks = _timed_iterator(steps, "reading the file into lines", files.iter_line_chunks)

    root = Path(tempfile.mkdtemp(prefix="profile-ingest-"))
    settings = parse_settings({"threads": args.threads, "memory_limit": "3GB"}, "bench")
    profile = cProfile.Profile(time.process_time) if args.profile else None
    try:
        begun = cpu()
        if profile:
            profile.enable()
        [report] = ingest.ingest_paths([args.file], Home(root=root, config_path=root / "config.yaml"), settings,
                                       source_name=args.source, source_tz=args.source_tz, year=args.year)
        if profile:
            profile.disable()
            profile.dump_stats(args.profile)
        whole = cpu() - begun
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{report.lines} lines, {report.events} events, {report.quarantined} quarantined, "
          f"{sum(report.skipped.values())} skipped, {report.batches} batches")
    print(f"{imports:7.2f}  imports")
    for name, seconds in steps.items():
        print(f"{seconds:7.2f}  {name}")
    clocked = sum(sum(v) for v in statements.values())
    print(f"{clocked:7.2f}  all SQL statements")
    print(f"{whole:7.2f}  the ingest (without imports); whole process {cpu():.2f}")
    if args.statements:
        print_costliest(statements, args.statements)


def _timed_iterator(steps: dict[str, float], name: str, function: Callable) -> Callable:
    """`function` (a generator function) with the CPU of producing each item added to steps[name]."""
    def wrapper(*a, **k):
        items = function(*a, **k)
        while True:
            begun = cpu()
            try:
                item = next(items)
            except StopIteration:
                steps[name] = steps.get(name, 0.0) + cpu() - begun
                return
            steps[name] = steps.get(name, 0.0) + cpu() - begun
            yield item
    return wrapper


if __name__ == "__main__":
    main()
