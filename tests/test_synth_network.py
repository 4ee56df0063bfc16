"""The synthetic network generator: format, determinism, labels and the two SPL conditions.

The detection conditions are recomputed here independently of the generator, with DuckDB on the
written conn.log: daily sums per local day (time zone and email servers from config.yaml),
mean + 3 sample standard deviations over all (host, day) sums including today, the host's own
mean + 3 standard deviations over its earlier days, at least 4 daily samples.
"""

from __future__ import annotations

import csv
import gzip
import ipaddress
import re
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pytest
import yaml

from exfilwatch.synth.network import DETECTION_A, DETECTION_B, FIELDS, TYPES, generate_network

HOSTS, DAYS, END, TZ, SEED = 40, 20, date(2026, 10, 31), "America/New_York", 7

CONN_COLUMNS = {
    "ts": "DOUBLE", "uid": "VARCHAR", "orig_h": "VARCHAR", "orig_p": "INTEGER", "resp_h": "VARCHAR",
    "resp_p": "INTEGER", "proto": "VARCHAR", "service": "VARCHAR", "duration": "DOUBLE", "orig_bytes": "BIGINT",
    "resp_bytes": "BIGINT", "conn_state": "VARCHAR", "local_orig": "VARCHAR", "local_resp": "VARCHAR",
    "missed_bytes": "BIGINT", "history": "VARCHAR", "orig_pkts": "BIGINT", "orig_ip_bytes": "BIGINT",
    "resp_pkts": "BIGINT", "resp_ip_bytes": "BIGINT", "tunnel_parents": "VARCHAR",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_network(tmp_path_factory.mktemp("net"), days=DAYS, hosts=HOSTS, seed=SEED, end=END, timezone=TZ)


@pytest.fixture(scope="module")
def lines(dataset):
    return dataset.conn_log.read_text().split("\n")


@pytest.fixture(scope="module")
def labels(dataset):
    with open(dataset.labels, newline="") as handle:
        return list(csv.DictReader(handle))


def _email_servers(config: Path) -> list[str]:
    cfg = yaml.safe_load(config.read_text())
    return [str(ip) for a in cfg["assets"] if a["category"] == "email_server"
            for ip in ipaddress.ip_network(a["cidr"])]


def _load(con: duckdb.DuckDBPyConnection, conn_log: Path, config: Path) -> None:
    tz = yaml.safe_load(config.read_text())["timezone"]
    columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in CONN_COLUMNS.items()) + "}"
    con.execute(f"""
        CREATE OR REPLACE TABLE conn AS
        SELECT *, CAST(timezone('{tz}', to_timestamp(ts)) AS DATE) AS day
        FROM read_csv('{conn_log}', delim = '\t', header = false, auto_detect = false, comment = '#',
                      quote = '', escape = '', nullstr = '-', columns = {columns})""")
    con.execute("CREATE OR REPLACE TABLE email_servers AS SELECT unnest(?::VARCHAR[]) AS ip", [_email_servers(config)])
    # (A) bytes_in = resp_bytes by src_ip over flows to email servers;
    # (B) bytes_out = orig_bytes by dest_ip over flows from email servers.
    con.execute("""
        CREATE OR REPLACE TABLE daily AS
        SELECT 'A' AS det, orig_h AS entity, day, sum(resp_bytes) AS v
        FROM conn WHERE resp_h IN (SELECT ip FROM email_servers) GROUP BY ALL
        UNION ALL
        SELECT 'B', resp_h, day, sum(orig_bytes)
        FROM conn WHERE orig_h IN (SELECT ip FROM email_servers) GROUP BY ALL""")


def _spl(con: duckdb.DuckDBPyConnection, det: str, today: date, start: date) -> dict[str, dict]:
    """The ESCU search for `today` with the (host, day) rows from `start`: one dict per host with a row today."""
    rows = con.execute("""
        WITH w AS (SELECT entity, day, v FROM daily WHERE det = $det AND day BETWEEN $start AND $today),
        a AS (SELECT avg(v) AS m, stddev_samp(v) AS sd FROM w),
        h AS (SELECT entity, count(*) AS n,
                     avg(CASE WHEN day < $today THEN v END) AS hm,
                     stddev_samp(CASE WHEN day < $today THEN v END) AS hs
              FROM w GROUP BY entity)
        SELECT w.entity, w.v, a.m + 3 * a.sd AS gthr, h.hm + 3 * h.hs AS hthr, h.n,
               coalesce(h.n >= 4 AND w.v > a.m + 3 * a.sd AND w.v > h.hm + 3 * h.hs, false) AS fires
        FROM w CROSS JOIN a JOIN h USING (entity) WHERE w.day = $today""",
        {"det": det, "today": today, "start": start}).fetchall()
    return {r[0]: {"v": r[1], "gthr": r[2], "hthr": r[3], "n": r[4], "fires": r[5]} for r in rows}


@pytest.fixture(scope="module")
def con(dataset):
    con = duckdb.connect()
    _load(con, dataset.conn_log, dataset.config)
    yield con
    con.close()


# ---------------------------------------------------------------------------------------------
# format


def test_header_lines(lines):
    assert lines[0] == "#separator \\x09"
    assert lines[1] == "#set_separator\t,"
    assert lines[2] == "#empty_field\t(empty)"
    assert lines[3] == "#unset_field\t-"
    assert lines[4] == "#path\tconn"
    first_day = END - timedelta(days=DAYS - 1)
    assert lines[5] == f"#open\t{first_day:%Y-%m-%d}-00-00-00"
    assert lines[6] == "#fields\t" + "\t".join(FIELDS)
    assert lines[6] == ("#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\t"
                        "orig_bytes\tresp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\thistory\t"
                        "orig_pkts\torig_ip_bytes\tresp_pkts\tresp_ip_bytes\ttunnel_parents")
    assert lines[7] == "#types\t" + "\t".join(TYPES)
    assert lines[7] == ("#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring\t"
                        "bool\tbool\tcount\tstring\tcount\tcount\tcount\tcount\tset[string]")
    assert lines[-1] == ""  # the file ends with a newline
    assert re.fullmatch(r"#close\t\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d", lines[-2])
    assert lines[-2] >= f"#close\t{END:%Y-%m-%d}"
    assert not any(line.startswith("#") for line in lines[8:-2])


def test_data_lines(dataset, lines):
    data = lines[8:-2]
    assert len(data) == dataset.flows
    assert abs(dataset.flows - HOSTS * DAYS * 450) < 0.1 * HOSTS * DAYS * 450
    uid = re.compile(r"C[0-9A-Za-z]{17}")
    ts_re = re.compile(r"\d{10}\.\d{6}")
    interval = re.compile(r"\d+\.\d{6}")
    states = {"SF", "S0", "REJ", "RSTO", "RSTR", "S1"}
    tz = ZoneInfo(TZ)
    lo = datetime.combine(END - timedelta(days=DAYS - 1), time(0), tz).timestamp()
    hi = datetime.combine(END + timedelta(days=1), time(0), tz).timestamp()
    prev = 0.0
    unset_rows = 0
    uids = set()
    for line in data:
        f = line.split("\t")
        assert len(f) == 21, line
        assert ts_re.fullmatch(f[0]) and uid.fullmatch(f[1]), line
        ts = float(f[0])
        assert prev <= ts and lo <= ts < hi, line
        prev = ts
        uids.add(f[1])
        ipaddress.IPv4Address(f[2])
        ipaddress.IPv4Address(f[4])
        assert 0 < int(f[3]) < 65536 and 0 < int(f[5]) < 65536
        assert f[6] in ("tcp", "udp") and f[11] in states
        assert f[12] in ("T", "F") and f[13] in ("T", "F")
        assert f[20] == "(empty)"
        if f[8] == "-":
            unset_rows += 1
            assert f[9] == f[10] == "-" and f[11] == "S0", line
        else:
            assert interval.fullmatch(f[8]) and f[9].isdigit() and f[10].isdigit(), line
        assert all(x.isdigit() for x in (f[14], f[16], f[17], f[18], f[19])), line
        if f[11] in ("S0", "REJ") and f[6] == "tcp":
            assert f[7] == "-" and f[9] in ("0", "-"), line
    assert unset_rows > 0
    assert len(uids) == len(data)


def test_traffic_mix_and_rhythm(con):
    total, mail = con.execute("""
        SELECT count(*), count(*) FILTER (WHERE resp_h IN (SELECT ip FROM email_servers)
                                           OR orig_h IN (SELECT ip FROM email_servers)) FROM conn""").fetchone()
    assert mail < 0.3 * total  # most flows are not mail
    weekday, weekend = con.execute("""
        SELECT count(*) FILTER (WHERE isodow(day) < 6) / count(DISTINCT day) FILTER (WHERE isodow(day) < 6),
               count(*) FILTER (WHERE isodow(day) >= 6) / count(DISTINCT day) FILTER (WHERE isodow(day) >= 6)
        FROM conn""").fetchone()
    assert weekday > 2 * weekend
    office, night = con.execute(f"""
        WITH h AS (SELECT hour(timezone('{TZ}', to_timestamp(ts))) AS hr FROM conn WHERE isodow(day) < 6)
        SELECT count(*) FILTER (WHERE hr BETWEEN 9 AND 16), count(*) FILTER (WHERE hr < 6) FROM h""").fetchone()
    assert office > 5 * night
    services = dict(con.execute("SELECT resp_p, count(*) FROM conn GROUP BY ALL").fetchall())
    for port in (53, 443, 993, 587, 25, 445):
        assert services.get(port, 0) > 0


# ---------------------------------------------------------------------------------------------
# labels and config


def test_labels(dataset, labels):
    header = dataset.labels.read_text().split("\n", 1)[0]
    assert header == "case_id,detection_id,entity,day,technique,expected,description"
    assert len(labels) == 4
    assert len({r["case_id"] for r in labels}) == 4
    by = {(r["detection_id"], r["expected"]): r for r in labels}
    assert set(by) == {(DETECTION_A, "fire"), (DETECTION_A, "quiet"), (DETECTION_B, "fire"), (DETECTION_B, "quiet")}
    assert all(r["day"] == END.isoformat() for r in labels)
    assert ipaddress.ip_address(by[DETECTION_A, "fire"]["entity"]) in ipaddress.ip_network("10.20.0.0/16")
    assert by[DETECTION_A, "fire"]["technique"] == "T1114.002"
    assert by[DETECTION_A, "quiet"]["entity"] == "10.30.0.50"
    assert by[DETECTION_B, "fire"]["entity"] == "10.30.0.21"
    assert by[DETECTION_B, "fire"]["technique"] == "T1114"
    assert by[DETECTION_B, "quiet"]["entity"] == "10.30.0.40"


def test_config(dataset):
    cfg = yaml.safe_load(dataset.config.read_text())
    assert set(cfg) == {"timezone", "assets"}
    assert cfg["timezone"] == TZ
    for asset in cfg["assets"]:
        assert set(asset) <= {"cidr", "host", "category", "bunit", "owner"}
    assert cfg["assets"][0] == {"cidr": "10.10.0.0/28", "category": "email_server", "bunit": "it", "owner": "mail-team"}
    assert _email_servers(dataset.config)
    from exfilwatch.config import parse_settings

    settings = parse_settings(cfg, str(dataset.config))
    assert settings.timezone == TZ


# ---------------------------------------------------------------------------------------------
# the SPL conditions on the generated file


@pytest.mark.parametrize("window_days", [DAYS, 8])
@pytest.mark.parametrize("det", ["A", "B"])
def test_labelled_cases_on_the_last_day(con, labels, det, window_days):
    detection = DETECTION_A if det == "A" else DETECTION_B
    result = _spl(con, det, END, END - timedelta(days=window_days - 1))
    cases = [r for r in labels if r["detection_id"] == detection]
    for case in cases:
        row = result[case["entity"]]
        if case["expected"] == "fire":
            assert row["fires"], (case, row)
            assert row["n"] >= 4
            assert row["v"] > 1.5 * row["gthr"] and row["v"] > 1.5 * row["hthr"], (case, row)
        else:
            assert not row["fires"], (case, row)
            # a hard case: above the all-host threshold, below its own
            assert row["gthr"] < row["v"] <= row["hthr"], (case, row)
    fired = {e for e, row in result.items() if row["fires"]}
    assert fired == {r["entity"] for r in cases if r["expected"] == "fire"}


@pytest.mark.parametrize("det", ["A", "B"])
def test_background_is_quiet_on_earlier_days(con, det):
    first = END - timedelta(days=DAYS - 1)
    for k in range(3, DAYS - 1):
        today = first + timedelta(days=k)
        result = _spl(con, det, today, first)
        assert not [e for e, row in result.items() if row["fires"]], today


# ---------------------------------------------------------------------------------------------
# determinism and options


def test_same_seed_same_bytes(dataset, tmp_path):
    again = generate_network(tmp_path / "again", days=DAYS, hosts=HOSTS, seed=SEED, end=END, timezone=TZ)
    for a, b in ((dataset.conn_log, again.conn_log), (dataset.config, again.config), (dataset.labels, again.labels)):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert again.flows == dataset.flows
    other = generate_network(tmp_path / "other", days=DAYS, hosts=HOSTS, seed=SEED + 1, end=END, timezone=TZ)
    assert other.conn_log.read_bytes() != dataset.conn_log.read_bytes()


def test_gzip_holds_the_same_log(dataset, tmp_path):
    gz = generate_network(tmp_path / "gz", days=DAYS, hosts=HOSTS, seed=SEED, end=END, timezone=TZ, gzip=True)
    assert gz.conn_log.name == "conn.log.gz"
    raw = gz.conn_log.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip, no mtime: the same bytes each time
    assert gzip.decompress(raw) == dataset.conn_log.read_bytes()
    con = duckdb.connect()
    _load(con, gz.conn_log, gz.config)
    assert con.execute("SELECT count(*) FROM conn").fetchone()[0] == gz.flows


def test_other_zone_across_a_dst_change(tmp_path):
    end = date(2026, 10, 25)  # clocks go back in Europe/Berlin
    ds = generate_network(tmp_path, days=12, hosts=25, seed=3, end=end, timezone="Europe/Berlin", flows_per_host_day=150)
    assert abs(ds.flows - 25 * 12 * 150) < 0.15 * 25 * 12 * 150
    assert yaml.safe_load(ds.config.read_text())["timezone"] == "Europe/Berlin"
    con = duckdb.connect()
    _load(con, ds.conn_log, ds.config)
    days = [r[0] for r in con.execute("SELECT DISTINCT day FROM conn ORDER BY 1").fetchall()]
    assert days == [end - timedelta(days=11 - i) for i in range(12)]
    with open(ds.labels, newline="") as handle:
        labels = list(csv.DictReader(handle))
    for det in ("A", "B"):
        result = _spl(con, det, end, days[0])
        detection = DETECTION_A if det == "A" else DETECTION_B
        expected = {r["entity"] for r in labels if r["detection_id"] == detection and r["expected"] == "fire"}
        assert {e for e, row in result.items() if row["fires"]} == expected


def test_rejects_too_few_days(tmp_path):
    with pytest.raises(ValueError):
        generate_network(tmp_path, days=3, hosts=40)
