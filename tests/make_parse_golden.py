"""Write the fixtures of tests/test_parse_golden.py: lines of Pulse Secure, Postfix and Juniper SRX
with every outcome, and the rows, quarantine reasons and skipped counts the parsers gave them.

The lines are the three formats as the benchmarks write them (bench/), the repository's own
fixtures (tests/fixtures/), and those lines damaged: cut short, one character replaced or
removed, white space around them. The expected files record what the parsers did when they were
written (before issue 13 restructured the parse SQL): the test keeps the rows identical.

    python tests/make_parse_golden.py           # rewrites the lines and the expected rows
    python tests/make_parse_golden.py --expect  # rewrites only the expected rows
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

import duckdb

from exfilwatch.config import Home, parse_settings
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.home import open_state

HERE = Path(__file__).resolve().parent
OUT = HERE / "parse_golden"
SOURCES = {"pulse_secure": "pulse_secure", "postfix": "postfix", "srx_flow": "srx_flow"}
TZ = "Europe/Berlin"
YEAR = 2026
# one batch, and batches of about 20 lines (Postfix keeps a message's lines between batches)
CHUNKS = {"one": 64 << 20, "small": 4096}
SETTINGS = {"timezone": "UTC"}


def _bench_lines(source: str) -> list[str]:
    sys.path.insert(0, str(HERE.parent / "bench"))
    import bench_sources_mail
    import bench_sources_vpn_flows

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lines.log"
        if source == "pulse_secure":
            bench_sources_vpn_flows.generate_pulse(path, 60)
        elif source == "srx_flow":
            bench_sources_vpn_flows.generate_srx(path, 30)
        else:
            bench_sources_mail.generate(path, 120)
        return path.read_text(encoding="utf-8").splitlines()


def write_lines(source: str, rng: random.Random) -> None:
    own = sorted((HERE / "fixtures" / source).iterdir())
    real = [line for path in own for line in path.read_text(encoding="utf-8").splitlines()]
    generated = _bench_lines(source)
    damaged = []
    whole = [line for line in real if line.strip()]
    for line in rng.sample(whole, min(len(whole), 25)) + rng.sample(generated, 10):
        for _ in range(2):
            damaged.append(line[:rng.randrange(len(line) + 1)])
            i = rng.randrange(len(line))
            damaged.append(line[:i] + rng.choice(' -[]()<>:=/"|\\#0123456789abcXZ.,;\t') + line[i + 1:])
            damaged.append(line[:i] + line[i + 1:])
        damaged.append(rng.choice([" ", "\t", "  "]) + line)
        damaged.append(line + rng.choice([" ", "\t", "#015", " #015", "\r"]))
    blank = ["", " ", "\t", "  \t ", "\u00a0", "#015"]
    lines = real + generated + damaged + blank
    (OUT / f"{source}.log").write_text("\n".join(lines) + "\n", encoding="utf-8")


def parse(source: str, chunk_bytes: int, home_dir: Path) -> dict:
    """What ingesting the source's fixture gives: rows (raw_ref without the folder), quarantine, skipped."""
    home = Home(root=home_dir, config_path=home_dir / "config.yaml")
    path = OUT / f"{source}.log"
    ingest_paths([path], home, parse_settings(SETTINGS, "test"), source_name=SOURCES[source], source_tz=TZ,
                 year=YEAR, chunk_bytes=chunk_bytes)
    state = open_state(home)
    try:
        model = {"pulse_secure": "authentication", "postfix": "email", "srx_flow": "network_traffic"}[source]
        files = state.lake_files(model)
        quarantined = [[r["line_no"], r["reason"]] for r in state.query(
            "SELECT line_no, reason FROM quarantine ORDER BY line_no")]
        skipped = {r["kind"]: r["n"] for r in state.query(
            "SELECT kind, sum(count) AS n FROM skipped GROUP BY kind ORDER BY kind")}
    finally:
        state.close()
    rows = []
    if files:
        relation = duckdb.sql(f"SELECT * FROM read_parquet({files!r})")
        columns = relation.columns
        for values in relation.fetchall():
            row = {c: (str(v) if v is not None and not isinstance(v, (int, float, str, list)) else v)
                   for c, v in zip(columns, values)}
            row["raw_ref"] = row["raw_ref"].replace(str(path), path.name) if row.get("raw_ref") else row.get("raw_ref")
            rows.append(row)
    rows.sort(key=lambda r: json.dumps(r, sort_keys=True, default=str))
    return {"rows": rows, "quarantined": quarantined, "skipped": skipped}


def main() -> None:
    rng = random.Random(13)
    OUT.mkdir(parents=True, exist_ok=True)
    if "--expect" not in sys.argv:
        for source in SOURCES:
            write_lines(source, rng)
    for source in SOURCES:
        expected = {}
        for name, chunk in CHUNKS.items():
            with tempfile.TemporaryDirectory() as tmp:
                expected[name] = parse(source, chunk, Path(tmp))
        (OUT / f"{source}.expected.json").write_text(json.dumps(expected, indent=0, sort_keys=True, default=str) + "\n",
                                                     encoding="utf-8")
        print(source, {k: (len(v["rows"]), len(v["quarantined"])) for k, v in expected.items()})


if __name__ == "__main__":
    main()
