"""The sessions build alone, a reference source tree against this one, alternated: CPU per statement,
peak RSS, and whether the stored sessions are the same.

    python bench/bench_sessions_memory.py HOME --reference SRC [--rounds N] [--memory-limit SIZE]
                                          [--reference-memory-limit SIZE] [--now ISO] [--statements N]
                                          [--sides reference,this] [--save DIR] [--compare-with DIR]

HOME is an ingested home (copied for each build, never changed); SRC is the `src` folder of the
reference (e.g. `git archive f7e5cb7 src`). Each round builds the sessions once with each tree, in
a fresh process (`--child`), on a fresh copy of HOME whose config has the memory limit given (the
reference's may differ: at 10,000 users x 90 days it needs 4 GB). Prints each build's CPU seconds,
peak RSS (ru_maxrss) and its N costliest statements, and compares the stored `user_sessions` of
every build with the first reference build's (EXCEPT ALL both ways: every column and row), or with
those of --compare-with (a home, or a folder --save kept from an earlier run: at 10,000 users a build
of each side can then run alone).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "src"


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(home: Path, now: str, out: Path) -> None:
    """Build the sessions of `home` up to `now`; write CPU per statement and peak RSS to `out`."""
    from exfilwatch.config import Home, load_settings
    from exfilwatch.events.engine import connect
    from exfilwatch.features.sessions import build_user_sessions
    from exfilwatch.home import open_state

    statements: dict[str, float] = {}

    class Clock:
        def __init__(self, con):
            self._con = con

        def execute(self, sql, parameters=None):
            started = cpu()
            try:
                return self._con.execute(sql, parameters) if parameters is not None else self._con.execute(sql)
            finally:
                key = re.sub(r"^(CREATE OR REPLACE TEMP TABLE|INSERT INTO) (\w+).*", r"\2", " ".join(sql.split()))[:60]
                statements[key] = statements.get(key, 0.0) + cpu() - started

        def __getattr__(self, name):
            return getattr(self._con, name)

    config = Home(root=home, config_path=home / "config.yaml")
    settings = load_settings(config)
    started, wall = cpu(), time.time()
    report = build_user_sessions(Clock(connect(settings, config.spill_dir)), open_state(config), settings,
                                 datetime.fromisoformat(now))
    out.write_text(json.dumps({"cpu": cpu() - started, "wall": time.time() - wall, "sessions": report.sessions,
                               "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                               "statements": statements}))


def copy_home(home: Path, to: Path, memory_limit: str | None) -> Path:
    shutil.copytree(home, to, ignore=shutil.ignore_patterns("tmp", "writer.lock"))
    if memory_limit:
        config = to / "config.yaml"
        text = re.sub(r"(?m)^memory_limit:.*\n?", "", config.read_text())
        config.write_text(text + f"memory_limit: {memory_limit}\n")
    return to


def same_sessions(a: Path, b: Path) -> tuple[int, int, int]:
    """The rows of the stored sessions of home `b`, those of `a` not in `b`'s, and of `b` not in `a`'s."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET memory_limit = '2GB'")
    con.execute(f"SET temp_directory = '{a.parent / 'compare_spill'}'")
    con.execute(f"CREATE VIEW a AS SELECT * FROM read_parquet('{a}/lake/user_sessions/**/*.parquet')")
    con.execute(f"CREATE VIEW b AS SELECT * FROM read_parquet('{b}/lake/user_sessions/**/*.parquet')")
    a_only = con.execute("SELECT count(*) FROM (SELECT * FROM a EXCEPT ALL SELECT * FROM b)").fetchall()[0][0]
    b_only = con.execute("SELECT count(*) FROM (SELECT * FROM b EXCEPT ALL SELECT * FROM a)").fetchall()[0][0]
    return con.execute("SELECT count(*) FROM b").fetchall()[0][0], a_only, b_only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", type=Path)
    parser.add_argument("--reference", type=Path, required=True, help="the reference's src folder")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--memory-limit", help="this tree's memory_limit (default: the home's)")
    parser.add_argument("--reference-memory-limit", help="the reference's (default: --memory-limit)")
    parser.add_argument("--now", default="2026-11-01T02:00:00-04:00")
    parser.add_argument("--statements", type=int, default=8)
    parser.add_argument("--sides", default="reference,this",
                        help="which trees to build, in the first round's order (e.g. `this` alone)")
    parser.add_argument("--save", type=Path,
                        help="keep the first build's stored user_sessions here, to --compare-with in a later run")
    parser.add_argument("--compare-with", type=Path,
                        help="a home (or --save folder) whose stored sessions every build is compared with")
    parser.add_argument("--child", nargs=2, metavar=("NOW", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.home, args.child[0], Path(args.child[1]))
        return
    work = Path(tempfile.mkdtemp(prefix="bench_sessions_memory_"))
    known = {"reference": (args.reference, args.reference_memory_limit or args.memory_limit),
             "this": (HERE, args.memory_limit)}
    trees = {name: known[name] for name in args.sides.split(",")}
    first: Path | None = args.compare_with
    try:
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for name in order:
                src, limit = trees[name]
                home = copy_home(args.home, work / f"{name}{round_}", limit)
                out = work / f"{name}{round_}.json"
                load = os.getloadavg()[0]
                subprocess.run([sys.executable, "-W", "ignore", __file__, str(home), "--reference", str(src),
                                "--child", args.now, str(out)], check=True,
                               env={**os.environ, "PYTHONPATH": str(src)})
                result = json.loads(out.read_text())
                same = ""
                if first is None:
                    first = home
                    if args.save:
                        shutil.copytree(home / "lake" / "user_sessions", args.save / "lake" / "user_sessions")
                else:
                    same = " Stored rows %d; only in the first reference build / only in this: %d / %d" % same_sessions(
                        first, home)
                    shutil.rmtree(home)
                print(f"round {round_ + 1} {name} (memory_limit {limit or 'home'}, load {load:.1f}): "
                      f"{result['cpu']:.2f} CPU-s, {result['wall']:.1f} s wall, peak RSS {result['peak_mb']:.0f} MB, "
                      f"{result['sessions']} sessions.{same}", flush=True)
                costly = sorted(result["statements"].items(), key=lambda kv: -kv[1])[:args.statements]
                print("    " + ", ".join(f"{key} {seconds:.1f}" for key, seconds in costly), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
