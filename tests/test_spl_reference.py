"""The two seed detections give exactly the numbers their SPL gives on the same rows.

The reference below is a direct, independent reading of the SPL (tstats by host and 1-day span
aligned to local midnight; eventstats over all rows; eventstats by host with today's row
counted but excluded from the mean/stdev; sample stdev; comparisons with null false; round to 2
places), in plain Python. It runs on random flows; the detection runs on DuckDB over the lake
built by ingesting the same flows as a Zeek conn.log.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import pytest

from .pipelinekit import detect_once
from exfilwatch.detections.schema import load_detections
from exfilwatch.events.engine import connect
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.home import open_state

from .conftest import Flow, settings_for, write_conn_log

MAIL_SERVER = "10.10.0.5"


def spl_round(x: float) -> float:
    return float(Decimal(repr(x)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def spl_reference(flows: list[Flow], direction: str, now: datetime, tz: str, threshold: float, min_samples: int):
    """Rows the SPL would table, keyed by host."""
    zone = ZoneInfo(tz)
    sums: dict[tuple[str, datetime], list[int]] = defaultdict(list)
    for f in flows:
        t = datetime.fromtimestamp(f.ts, timezone.utc)
        if t >= now:
            continue
        if direction == "out" and f.orig == MAIL_SERVER:
            host, value = f.resp, f.orig_bytes
        elif direction == "in" and f.resp == MAIL_SERVER:
            host, value = f.orig, f.resp_bytes
        else:
            continue
        day = t.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
        day = datetime(day.year, day.month, day.day, tzinfo=zone)
        sums[(host, day)].append(value)
    rows = [(host, day, sum(v for v in values if v is not None) if any(v is not None for v in values) else None)
            for (host, day), values in sums.items()]
    values = [v for _, _, v in rows if v is not None]
    avg = statistics.fmean(values) if values else None
    stdev = statistics.stdev(values) if len(values) > 1 else None
    today = datetime(*now.astimezone(zone).timetuple()[:3], tzinfo=zone)
    out = {}
    for host, day, value in rows:
        mine = [(d, v) for h, d, v in rows if h == host]
        earlier = [v for d, v in mine if d < today and v is not None]
        p_avg = statistics.fmean(earlier) if earlier else None
        p_std = statistics.stdev(earlier) if len(earlier) > 1 else None

        def gt(a, b):
            return a is not None and b is not None and a > b

        if not (len(mine) >= min_samples
                and avg is not None and stdev is not None and gt(value, avg + threshold * stdev)
                and p_avg is not None and p_std is not None and gt(value, p_avg + threshold * p_std)
                and day >= today):
            continue
        out[host] = {
            "_time": day.astimezone(timezone.utc).isoformat(),
            "value": value,
            "avg": avg,
            "per_source_avg": p_avg,
            "server_sd": spl_round(abs(value - avg) / stdev) if stdev else None,
            "client_sd": spl_round(abs(value - p_avg) / p_std) if p_std else None,
        }
    return out


def random_flows(rng: random.Random, start: datetime, days: int, hosts: int) -> list[Flow]:
    flows = []
    for host_index in range(hosts):
        host = f"10.20.0.{host_index + 1}"
        scale = rng.lognormvariate(15, 1.5)
        for day in range(days):
            if rng.random() < 0.2:  # hosts are not seen every day
                continue
            for _ in range(rng.randint(1, 4)):
                ts = (start + timedelta(days=day, seconds=rng.randrange(86400))).timestamp()
                size = int(scale * rng.lognormvariate(0, 0.6 if rng.random() > 0.1 else 2.0))
                if rng.random() < 0.5:
                    flows.append(Flow(ts, MAIL_SERVER, host, size, rng.randrange(100, 5000), resp_port=445))
                else:
                    flows.append(Flow(ts, host, MAIL_SERVER, rng.randrange(100, 5000), size))
                if rng.random() < 0.05:  # a flow with unset byte counts
                    flows.append(Flow(ts + 1, host, MAIL_SERVER, None, None))
    # Unrelated traffic that must not be counted.
    flows.append(Flow((start + timedelta(days=days - 1, hours=3)).timestamp(), "10.20.0.1", "10.99.0.1", 10**12, 10**12))
    return sorted(flows, key=lambda f: f.ts)


DETECTIONS = {
    "out": ("email_servers_sending_high_volume_traffic_to_hosts", "dest_ip", "bytes_out"),
    "in": ("hosts_receiving_high_volume_of_network_traffic_from_email_server", "src_ip", "bytes_in"),
}


@pytest.mark.parametrize("seed,tz,threshold", [(1, "UTC", 1.0), (2, "America/New_York", 0.5),
                                                (3, "Europe/Berlin", 1.5), (4, "Asia/Kolkata", 3.0)])
def test_detections_match_spl_reference_row_for_row(tmp_path, home, seed, tz, threshold):
    rng = random.Random(seed)
    zone = ZoneInfo(tz)
    # Twelve local days around a DST change in the zones that have one.
    start = datetime(2026, 10, 20, tzinfo=zone).astimezone(timezone.utc)
    flows = random_flows(rng, start, days=12, hosts=25)
    # A few hosts get a spike today so that rows really fire.
    now = datetime(2026, 10, 31, 18, 30, tzinfo=zone).astimezone(timezone.utc)
    for host in ("10.20.0.3", "10.20.0.7"):
        ts = (now - timedelta(hours=2)).timestamp()
        flows.append(Flow(ts, MAIL_SERVER, host, 10**11, 10, resp_port=445))
        flows.append(Flow(ts, host, MAIL_SERVER, 10, 10**11))
    settings = settings_for(tz)
    ingest_paths([write_conn_log(tmp_path / "conn.log", sorted(flows, key=lambda f: f.ts))], home, settings)
    detections = load_detections()
    state = open_state(home)
    con = connect(settings)
    fired = 0
    for direction, (detection_id, entity, value_field) in DETECTIONS.items():
        overrides = {"deviation_threshold": threshold, "history": "-60d@d"}
        result = detect_once(con, state, settings, [detections[detection_id]], now, latest="now",
                             overrides=overrides, store=False)[0]
        got = {f.entity: f.fields for f in result.findings}
        expected = spl_reference(flows, direction, now, tz, threshold, 4)
        assert set(got) == set(expected)
        fired += len(got)
        for host, row in expected.items():
            fields = got[host]
            assert fields[entity] == host
            assert fields["_time"] == row["_time"]
            assert fields[value_field] == row["value"]
            assert math.isclose(fields[f"avg_{value_field}"], row["avg"], rel_tol=1e-12)
            assert math.isclose(fields[f"per_source_avg_{value_field}"], row["per_source_avg"], rel_tol=1e-12)
            assert fields["num_standard_deviations_away_from_server_average"] == row["server_sd"]
            assert fields["num_standard_deviations_away_from_client_average"] == row["client_sd"]
    assert fired >= 2
