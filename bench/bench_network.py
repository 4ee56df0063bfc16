"""Benchmark the network slice: ingest a generated Zeek conn.log, run the two seed detections, and
compare them with the same detections written the way a user would otherwise write them (pandas,
following the SPL) and with a hand-written DuckDB query over the lake.

    python bench/bench_network.py [--hosts 1500] [--days 30] [--flows-per-host-day 445] [--out DIR]

Each phase runs in its own process so its peak RSS is its own. DuckDB gets memory_limit=1GB.
Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from datetime import date, datetime, time as dtime
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

END = date(2026, 10, 31)
OUT_ID = "email_servers_sending_high_volume_traffic_to_hosts"
IN_ID = "hosts_receiving_high_volume_of_network_traffic_from_email_server"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _home(out: Path):
    from exfilwatch.config import Home, load_settings

    home = Home(root=out / "home", config_path=out / "home" / "config.yaml")
    return home, load_settings(home)


def _now(settings) -> datetime:
    # The last fire of the day: judges END with its data up to 23:50 local.
    return datetime.combine(END, dtime(23, 59), tzinfo=ZoneInfo(settings.timezone))


def phase_generate(out: Path, hosts: int, days: int, per_day: int) -> dict:
    from exfilwatch.synth.network import generate_network

    dataset = generate_network(out / "logs", days=days, hosts=hosts, seed=1, end=END, flows_per_host_day=per_day)
    (out / "home").mkdir(parents=True, exist_ok=True)
    config = dataset.config.read_text() + "memory_limit: 1GB\n"
    (out / "home" / "config.yaml").write_text(config)
    return {"rows": dataset.flows}


def phase_ingest(out: Path) -> dict:
    from exfilwatch.events.ingest import ingest_paths

    home, settings = _home(out)
    [report] = ingest_paths([out / "logs" / "conn.log"], home, settings)
    return {"rows": report.events}


def phase_detect(out: Path) -> dict:
    from exfilwatch import pipeline
    from exfilwatch.detections.schema import load_detections
    from exfilwatch.events.engine import connect
    from exfilwatch.home import open_state

    home, settings = _home(out)
    detections = load_detections()
    chosen = [detections[OUT_ID], detections[IN_ID]]
    state = open_state(home)
    con = connect(settings, home.spill_dir)
    results = pipeline.run(con, state, settings, chosen, _now(settings), pipeline.Options(
        mode="once", detections=chosen, store=False, risk=False)).detections
    return {"rows": sum(len(r.findings) for r in results),
            "findings": sorted((r.detection.id, f.entity) for r in results for f in r.findings)}


def phase_detect_plain(out: Path) -> dict:
    """The detections over the plain view: the asset category joined to every row before the
    filter (what the pushdown to addresses replaced, kept as its reference)."""
    import exfilwatch.events.engine as engine

    engine.asset_pushdown = lambda con, condition: []
    return phase_detect(out)


HAND_WRITTEN = """
WITH flows AS (
    SELECT _time, src_ip, dest_ip, bytes_in, bytes_out,
           timezone('{tz}', date_trunc('day', timezone('{tz}', _time))) AS day
    FROM read_parquet('{lake}/network_traffic/*/*.parquet')
    WHERE _time >= TIMESTAMPTZ '{start}' AND _time < TIMESTAMPTZ '{latest}'
), daily AS (
    SELECT '{id}' AS detection, {host} AS host, day, sum({value}) AS value
    FROM flows WHERE {side} IN ({servers}) AND {host} IS NOT NULL GROUP BY ALL
), stats AS (
    SELECT *, avg(value) OVER () AS a, stddev_samp(value) OVER () AS s,
           count(*) OVER (PARTITION BY host) AS n,
           avg(CASE WHEN day < TIMESTAMPTZ '{today}' THEN value END) OVER (PARTITION BY host) AS pa,
           stddev_samp(CASE WHEN day < TIMESTAMPTZ '{today}' THEN value END) OVER (PARTITION BY host) AS ps
    FROM daily
)
SELECT detection, host FROM stats
WHERE n >= 4 AND value > a + 3 * s AND value > pa + 3 * ps AND day >= TIMESTAMPTZ '{today}'
"""


def _window(settings):
    from exfilwatch.timeexpr import relative_time

    now = _now(settings)
    latest = relative_time(now, "-10m@m", settings.timezone)
    return relative_time(now, "-30d@d", settings.timezone), latest, relative_time(latest, "@d", settings.timezone)


def _mail_servers(out: Path, settings) -> list[str]:
    """The generated network's mail servers, as a user would list them by hand."""
    import ipaddress

    from exfilwatch.synth.network import ADDRESSES

    networks = [ipaddress.ip_network(a.cidr) for a in settings.assets if "email_server" in a.category and a.cidr]
    servers = sorted(ip for ip in ADDRESSES.values() if any(ipaddress.ip_address(ip) in n for n in networks))
    if not servers:  # the references would compare nothing with nothing and agree on no finding
        raise SystemExit("bench_network: the inventory lists no mail server")
    return servers


def phase_duckdb(out: Path) -> dict:
    import duckdb

    home, settings = _home(out)
    start, latest, today = _window(settings)
    servers = ", ".join(f"'{ip}'" for ip in _mail_servers(out, settings))
    con = duckdb.connect()
    con.execute("SET memory_limit = '1GB'")
    rows = []
    for detection, host, side, value in ((OUT_ID, "dest_ip", "src_ip", "bytes_out"), (IN_ID, "src_ip", "dest_ip", "bytes_in")):
        sql = HAND_WRITTEN.format(tz=settings.timezone, lake=home.lake, start=start.isoformat(), latest=latest.isoformat(),
                                  today=today.isoformat(), id=detection, host=host, side=side, value=value, servers=servers)
        rows += con.execute(sql).fetchall()
    return {"rows": len(rows), "findings": sorted(rows)}


def phase_pandas(out: Path) -> dict:
    import pandas as pd

    home, settings = _home(out)
    start, latest, today = _window(settings)
    servers = set(_mail_servers(out, settings))
    frame = pd.read_parquet(home.lake / "network_traffic", columns=["_time", "src_ip", "dest_ip", "bytes_in", "bytes_out"])
    frame = frame[(frame["_time"] >= start) & (frame["_time"] < latest)]
    frame["day"] = frame["_time"].dt.tz_convert(settings.timezone).dt.normalize()
    today_local = pd.Timestamp(today).tz_convert(settings.timezone)
    found = []
    for detection, host, side, value in ((OUT_ID, "dest_ip", "src_ip", "bytes_out"), (IN_ID, "src_ip", "dest_ip", "bytes_in")):
        daily = (frame[frame[side].isin(servers) & frame[host].notna()]
                 .groupby([host, "day"], as_index=False)[value].sum(min_count=1))
        avg, std = daily[value].mean(), daily[value].std()  # pandas std is the sample stdev, like SPL's
        earlier = daily[value].where(daily["day"] < today_local)
        by_host = daily.groupby(host)
        daily["n"] = by_host[value].transform("size")
        daily["pa"] = earlier.groupby(daily[host]).transform("mean")
        daily["ps"] = earlier.groupby(daily[host]).transform("std")
        hits = daily[(daily["n"] >= 4) & (daily[value] > avg + 3 * std) & (daily[value] > daily["pa"] + 3 * daily["ps"])
                     & (daily["day"] >= today_local)]
        found += [(detection, h) for h in hits[host]]
    return {"rows": len(found), "findings": sorted(found)}


PHASES = {"generate": phase_generate, "ingest": phase_ingest, "detect": phase_detect,
          "detect_plain": phase_detect_plain, "duckdb": phase_duckdb, "pandas": phase_pandas}


def run_phase(name: str, out: Path, extra: list[str]) -> dict:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--phase", name, "--out", str(out), *extra],
                          capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - started
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1500)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--flows-per-host-day", type=int, default=445)
    parser.add_argument("--out", type=Path, default=Path("bench/out/network"))
    parser.add_argument("--phase", choices=PHASES)
    parser.add_argument("--keep", action="store_true", help="Reuse generated logs and the ingested lake.")
    args = parser.parse_args()
    if args.phase:
        # Imports are not part of what is measured.
        import duckdb, pandas  # noqa: F401,E401
        import exfilwatch.pipeline, exfilwatch.events.ingest, exfilwatch.synth.network  # noqa: F401,E401
        import sqlglot.dialects.duckdb  # noqa: F401  (SQLGlot loads a dialect's module at its first use: 0.28 CPU-s)
        started, cpu = time.perf_counter(), time.process_time()
        if args.phase == "generate":
            result = phase_generate(args.out, args.hosts, args.days, args.flows_per_host_day)
        else:
            result = PHASES[args.phase](args.out)
        result.update(seconds=time.perf_counter() - started, cpu=time.process_time() - cpu, peak_rss_mb=peak_rss_mb())
        print(json.dumps(result))
        return 0

    extra = ["--hosts", str(args.hosts), "--days", str(args.days), "--flows-per-host-day", str(args.flows_per_host_day)]
    results = {}
    if not (args.keep and (args.out / "home" / "state.sqlite").exists()):
        shutil.rmtree(args.out, ignore_errors=True)
        args.out.mkdir(parents=True)
        results["generate"] = run_phase("generate", args.out, extra)
        results["ingest"] = run_phase("ingest", args.out, extra)
    for name in ("detect", "detect_plain", "duckdb", "pandas"):
        results[name] = run_phase(name, args.out, extra)
    agree = (results["detect"]["findings"] == results["detect_plain"]["findings"] == results["duckdb"]["findings"]
             == results["pandas"]["findings"])
    print(f"| phase | seconds | CPU s | rows | rows/s | peak RSS (MB) |\n|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['seconds']:.2f} | {r['cpu']:.2f} | {r['rows']:,} | {r['rows'] / r['seconds']:,.0f} "
              f"| {r['peak_rss_mb']:.0f} |")
    d, plain, h, p = (results[name]["cpu"] for name in ("detect", "detect_plain", "duckdb", "pandas"))
    print(f"\nCPU: exfilwatch detections vs pandas: {p / d:.1f}x faster; vs hand-written DuckDB: {d / h:.2f}x its CPU "
          f"(over the plain view: {plain / h:.2f}x); same findings in all four: {agree} ({results['detect']['findings']})")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
