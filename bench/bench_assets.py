"""Benchmark matching the lake's addresses against the asset inventory: the DuckDB range join
(`create_asset_map`, what every run's network view uses) against the plain Python matcher a user
would write with `ipaddress` (tests/assetkit.py, the reference the tests check it against).

    python bench/bench_assets.py [--addresses 1000000] [--ranges 5000] [--sample 2000]

The Python matcher tries every range for every address, so it is timed on `--sample` addresses
and its time per address scaled to the whole set (it is linear in the addresses). Both give the
same categories on the sample (checked). Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))


def inventory(count: int, rng: random.Random):
    """Networks of /16 to /29 and a-b ranges in 10.0.0.0/8, nested as real inventories are, plus IPv6."""
    from exfilwatch.config import Asset

    assets = []
    for index in range(count):
        base = (10 << 24) + rng.randrange(2**24)
        kind = index % 10
        if kind == 0:
            spec = f"{ipaddress.IPv4Address(base)}-{ipaddress.IPv4Address(base + rng.randrange(1, 4096))}"
        elif kind == 1:
            spec = str(ipaddress.ip_network(((0x20010DB8 << 96) + (rng.randrange(2**32) << 64), rng.choice((48, 56, 64))),
                                            strict=False))
        else:
            spec = str(ipaddress.ip_network((base, rng.randrange(16, 30)), strict=False))
        assets.append(Asset(ip=spec, category=rng.choice(["email_server", "workstation", "server", "pci|server"])))
    return assets


def addresses(count: int, rng: random.Random) -> list[str]:
    out = []
    for index in range(count):
        if index % 20 == 0:
            out.append(str(ipaddress.IPv6Address((0x20010DB8 << 96) + (rng.randrange(2**32) << 64) + rng.randrange(2**16))))
        else:
            out.append(str(ipaddress.IPv4Address((10 << 24) + rng.randrange(2**24))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addresses", type=int, default=1_000_000)
    parser.add_argument("--ranges", type=int, default=5_000)
    parser.add_argument("--sample", type=int, default=2_000)
    args = parser.parse_args()

    import duckdb
    import pyarrow as pa

    from exfilwatch.events.engine import create_asset_map
    from tests.assetkit import reference_match

    rng = random.Random(1)
    assets = inventory(args.ranges, rng)
    ips = addresses(args.addresses, rng)

    con = duckdb.connect(":memory:")
    con.execute("SET threads = 2")
    con.register("ips", pa.table({"ip": pa.array(ips, pa.string())}))
    started, cpu = time.perf_counter(), time.process_time()
    create_asset_map(con, "ips", assets, "asset_map")
    duck_s, duck_cpu = time.perf_counter() - started, time.process_time() - cpu
    matched = con.execute("SELECT count(*) FROM asset_map").fetchone()[0]

    sample = ips[: args.sample]
    started = time.perf_counter()
    expected = reference_match(sample, assets)
    python_per_address = (time.perf_counter() - started) / len(sample)
    got = dict(con.execute("SELECT ip, category FROM asset_map WHERE ip IN (SELECT unnest($s))", {"s": sample}).fetchall())
    assert got == expected, "the range join and the Python matcher disagree"
    python_s = python_per_address * len(ips)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| method | addresses | ranges | matched | wall s | CPU s | addresses/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| DuckDB range join | {len(ips):,} | {len(assets):,} | {matched:,} | {duck_s:.2f} | {duck_cpu:.2f} | "
          f"{len(ips) / duck_s:,.0f} |")
    print(f"| Python `ipaddress` loop (timed on {len(sample):,}, scaled) | {len(ips):,} | {len(assets):,} | | "
          f"{python_s:,.0f} | | {1 / python_per_address:,.0f} |")
    print(f"\nrange join vs Python: {python_s / duck_s:,.0f}x faster; peak RSS {rss:,.0f} MB")


if __name__ == "__main__":
    main()
