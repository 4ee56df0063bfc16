"""Benchmark: ingesting Exchange message tracking logs, exfilwatch against a Python `csv` loop and bare DuckDB.

    python bench/bench_exchange_ingest.py [--users 100] [--days 30] [--seed 1]

Generates the `varied` organisation's Exchange 2019 message tracking logs (one MSGTRK file per day,
`#Fields:` header, RECEIVE / DELIVER / SEND events of every message, quoted `source-context` and
subjects) in a temporary folder, then runs each of these on the same files:

* `exfilwatch`: `ingest_paths` into a fresh home: classify every line, group the events into one
  row per message, deduplicate across files, write Parquet and commit to the state store;
* `python-csv`: the reference a user would write: `csv.reader` over each file, skip the `#` lines,
  keep RECEIVE / SEND / SENDEXTERNAL / DELIVER / FAIL, one dict per `network-message-id` with the
  first time, sender, largest size and recipients (no Parquet written);
* `bare-duckdb`: `read_csv` of the files (all columns as text, `#` lines as comments) and the same
  GROUP BY in SQL: the engine's own limit with no per-line classification or quarantine.

Prints a markdown table: lines, messages, wall seconds, CPU seconds (user + system: fairer on a
shared machine) and the CPU time as a multiple of `python-csv`'s in the same run.
"""

from __future__ import annotations

import argparse
import csv
import resource
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from exfilwatch.config import Home, load_settings  # noqa: E402
from exfilwatch.events.ingest import ingest_paths  # noqa: E402
from exfilwatch.synth.org import generate_organisation  # noqa: E402

MESSAGE_EVENTS = {"RECEIVE", "SEND", "SENDEXTERNAL", "DELIVER", "FAIL"}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def python_csv(files: list[Path]) -> int:
    messages: dict[str, dict] = {}
    for path in files:
        with open(path, newline="") as handle:
            fields: list[str] = []
            for row in csv.reader(handle):
                if row and row[0].startswith("#Fields:"):
                    fields = [row[0].split(":", 1)[1].strip()] + row[1:]
                    continue
                if not row or row[0].startswith("#"):
                    continue
                event = dict(zip(fields, row))
                if event.get("event-id", "").upper() not in MESSAGE_EVENTS:
                    continue
                m = messages.setdefault(event["network-message-id"], {
                    "time": event["date-time"], "sender": event["sender-address"], "size": 0, "recipients": set()})
                m["size"] = max(m["size"], int(event["total-bytes"] or 0))
                m["recipients"].update(r for r in event["recipient-address"].split(";") if r)
    return len(messages)


def bare_duckdb(folder: Path, fields: list[str]) -> int:
    con = duckdb.connect()
    columns = "{" + ", ".join(f"'{f}': 'VARCHAR'" for f in fields) + "}"
    return con.execute(f"""
        SELECT count(*) FROM (
            SELECT "network-message-id", min("date-time"), arg_min("sender-address", "date-time"),
                   max(TRY_CAST("total-bytes" AS BIGINT)), list(DISTINCT "recipient-address")
            FROM read_csv('{folder}/*.LOG', comment = '#', header = false, columns = {columns}, delim = ',', quote = '"', escape = '"', auto_detect = false,
                          strict_mode = false)
            WHERE upper("event-id") IN ('RECEIVE', 'SEND', 'SENDEXTERNAL', 'DELIVER', 'FAIL')
            GROUP BY 1)""").fetchall()[0][0]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-exchange-"))
    try:
        made = generate_organisation(work / "org", users=args.users, days=args.days, seed=args.seed,
                                     end=date(2026, 10, 31), network=False, profile="varied")
        files = sorted(made.mail_log.glob("*.LOG"))
        lines = sum(1 for path in files for _ in open(path))
        fields = next(line for line in open(files[0]) if line.startswith("#Fields:")).split(":", 1)[1].strip().split(",")
        rows = []
        for name, run in (
            ("python-csv", lambda: python_csv(files)),
            ("bare-duckdb", lambda: bare_duckdb(made.mail_log, fields)),
            ("exfilwatch", lambda: sum(r.events for r in ingest_paths(
                [made.mail_log], Home(root=work / "home", config_path=made.config),
                load_settings(Home(root=work / "home", config_path=made.config))))),
        ):
            wall, cpu = time.perf_counter(), _cpu()
            messages = run()
            rows.append((name, messages, time.perf_counter() - wall, _cpu() - cpu))
        reference = rows[0][3]
        print(f"{lines:,} lines in {len(files)} files ({args.users} users x {args.days} days, varied, seed {args.seed})\n")
        print("| run | messages | wall s | CPU s | CPU / python-csv |")
        print("|---|---|---|---|---|")
        for name, messages, wall, cpu in rows:
            print(f"| {name} | {messages:,} | {wall:.1f} | {cpu:.1f} | {cpu / reference:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
