"""Flow sources → network_traffic (nfdump CSV, NetFlow/IPFIX CSV, Juniper SRX) and the generic mapped source."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from hypothesis import given, strategies as st

from exfilwatch.config import ConfigError
from exfilwatch.events.files import read_head
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.sources import SOURCES, detect_source
from exfilwatch.sources.flows import (SRX_ADDRESS_FIELDS, SRX_ADDRESSES, SRX_COUNTER_FIELDS, SRX_COUNTERS, JuniperSRXFlow,
                                      NetflowCSV, NfdumpCSV, _sd_run_anchored, _sd_run_searched)
from exfilwatch.sources.generic import GenericSource, load_mapping
from exfilwatch.home import open_state

from .conftest import Flow, settings_for, write_conn_log
from .test_sources_vpn import FUZZ, RANDOM, as_lines, quarantine, run_parser

FIXTURES = Path(__file__).parent / "fixtures"
SETTINGS = settings_for()
TZ = "Europe/Berlin"

FLOW_COLUMNS = ["_time", "src_ip", "src_port", "dest_ip", "dest_port", "transport", "app", "bytes_in", "bytes_out",
                "bytes", "duration", "session_id", "event_type"]


def ingest(home, path, **kwargs):
    [report] = ingest_paths([path], home, SETTINGS, source_tz=kwargs.pop("source_tz", TZ), year=2026, **kwargs)
    assert report.lines == report.parsed + report.quarantined + sum(report.skipped.values())
    return report


def lake(home, model: str, columns: list[str]) -> dict[int, tuple]:
    state = open_state(home)
    files = state.lake_files(model)
    state.close()
    if not files:
        return {}
    select = ", ".join(
        "strftime(timezone('UTC', _time), '%Y-%m-%d %H:%M:%S.%g')" if c == "_time" else f'"{c}"' for c in columns
    )
    rows = duckdb.sql(f"SELECT CAST(split_part(raw_ref, ':', -1) AS INTEGER), source, {select} "
                      f"FROM read_parquet({files!r})").fetchall()
    return {row[0]: (row[1],) + tuple(row[2:]) for row in rows}


def flow(source, time, src, sport, dst, dport, transport, app, bytes_in, bytes_out, duration, session=None):
    total = None if bytes_in is None and bytes_out is None else (bytes_in or 0) + (bytes_out or 0)
    return (source, time, src, sport, dst, dport, transport, app, bytes_in, bytes_out, total, duration, session,
            "network-connection")


# --- nfdump ------------------------------------------------------------------------------------


def test_nfdump_csv_exact_flows_summary_skipped_bad_lines_quarantined(home):
    path = FIXTURES / "nfdump_csv" / "nfdump.csv"
    report = ingest(home, path)
    assert report.source == "nfdump_csv"
    # nfdump prints local time: 09:15:02 in Europe/Berlin is 08:15:02 UTC; ibyt = sent by sa = bytes_out
    assert lake(home, "network_traffic", FLOW_COLUMNS) == {
        2: flow("nfdump_csv", "2026-03-03 08:15:02.000", "10.20.0.15", 51234, "93.184.216.34", 443, "tcp", None,
                0, 5400000, 5.012),
        3: flow("nfdump_csv", "2026-03-03 08:15:02.250", "2001:db8::5", 40000, "2001:db8::25", 25, "tcp", None,
                64000, 800, 0.75),
        4: flow("nfdump_csv", "2026-03-03 08:16:00.000", "10.20.0.16", 53000, "10.10.0.53", 53, "udp", None,
                0, 74, 0.0),
    }
    assert report.skipped == {"header": 1, "summary": 3}
    assert quarantine(home) == {
        5: (str(path), "expected 48 comma-separated fields as in the header, found 5"),
        6: (str(path), "bad address in src_ip: 10.20.0.999x"),
        7: (str(path), "bad port in src_port: 70000"),
    }


# --- NetFlow / IPFIX CSV --------------------------------------------------------------------------


def test_netflow_csv_nprobe_names_epoch_ms(home):
    path = FIXTURES / "netflow_csv" / "nprobe.csv"
    report = ingest(home, path)
    assert report.source == "netflow_csv"
    # IN_BYTES (the flow's own direction) = bytes_out, OUT_BYTES = bytes_in
    assert lake(home, "network_traffic", FLOW_COLUMNS) == {
        2: flow("netflow_csv", "2026-03-03 09:15:02.000", "10.20.0.15", 51300, "10.10.0.5", 993, "tcp", None,
                880000, 3200, 62.0),
        3: flow("netflow_csv", "2026-03-03 09:16:40.500", "10.20.0.16", 51301, "93.184.216.34", 443, "tcp", None,
                52000, 7340032, 10.0),
    }
    assert quarantine(home) == {
        4: (str(path), "bad byte count in bytes_out: -5"),
        5: (str(path), "bad start time: yesterday (expected epoch seconds or ms, or ISO 8601)"),
    }


def test_netflow_csv_quoted_semicolon_export_iso_times(home):
    path = FIXTURES / "netflow_csv" / "export.csv"
    report = ingest(home, path)
    assert report.source == "netflow_csv"
    assert lake(home, "network_traffic", FLOW_COLUMNS) == {
        2: flow("netflow_csv", "2026-03-03 08:15:02.000", "10.20.0.15", 51234, "10.10.0.5", 587, "tcp", "smtp",
                4200, 2500000, 5.0),
        # no offset: local time in --source-tz
        3: flow("netflow_csv", "2026-03-03 08:20:00.000", "10.20.0.16", 51235, "10.10.0.5", 587, "tcp", "smtp",
                900, 12000, 30.0),
    }
    assert quarantine(home) == {4: (str(path), "expected 10 fields as in the header, found 4")}


# --- Juniper SRX ---------------------------------------------------------------------------------


def test_srx_structured_and_text_close_events(home):
    path = FIXTURES / "srx_flow" / "srx.log"
    report = ingest(home, path)
    assert report.source == "srx_flow"
    # bytes-from-client = bytes_out, bytes-from-server = bytes_in; _time = close time - elapsed-time
    assert lake(home, "network_traffic", FLOW_COLUMNS) == {
        1: flow("srx_flow", "2026-03-03 08:15:02.120", "10.20.0.15", 51234, "93.184.216.34", 443, "tcp", "ssl",
                1200, 5400000, 5.0, "40012"),
        3: flow("srx_flow", "2026-03-03 08:16:00.000", "10.20.0.16", 51300, "10.10.0.5", 993, "tcp", "junos-imaps",
                880000, 3200, 62.0, "40013"),
        4: flow("srx_flow", "2026-03-03 08:16:30.000", "10.20.0.17", 53000, "10.10.0.53", 53, "udp", "dns",
                190, 74, 60.0, "40014"),
        # logical-system variant
        11: flow("srx_flow", "2026-03-03 08:20:50.000", "10.30.0.5", 40000, "10.10.0.5", 25, "tcp", "smtp",
                 4000, 150000, 10.0, "50001"),
        # an older release: session-id, keys in another order (read one by one), UNKNOWN app -> the service
        12: flow("srx_flow", "2026-03-03 08:21:30.000", "10.30.0.6", 40001, "203.0.113.80", 443, "tcp", "junos-https",
                 20000, 900000, 30.0, "50002"),
    }
    assert report.skipped == {"RT_FLOW_SESSION_CREATE": 1, "RT_FLOW_SESSION_DENY": 1, "other syslog message": 1}
    text_form = ("RT_FLOW_SESSION_CLOSE not in the expected form: session closed REASON: SRC/PORT->DST/PORT … PROTOCOL "
                 "POLICY FROM-ZONE TO-ZONE SESSION-ID PKTS(BYTES) PKTS(BYTES) ELAPSED …")
    assert quarantine(home) == {
        7: (str(path), text_form),  # truncated text line
        8: (str(path), "missing dest_ip"),  # truncated structured line
        9: (str(path), text_form),  # 3(x200)
        10: (str(path), "not a syslog line (expected a Juniper SRX RT_FLOW message)"),
    }
    # the asset inventory is matched against the committed addresses: exactly those of the lake's flows
    state = open_state(home)
    committed = {row["ip"] for row in state.query("SELECT ip FROM lake_addresses")}
    state.close()
    flows = lake(home, "network_traffic", ["src_ip", "dest_ip"]).values()
    assert committed == {ip for _, src, dest in flows for ip in (src, dest)}


def test_srx_bsd_timestamp_needs_a_year(tmp_path, home):
    line = (FIXTURES / "srx_flow" / "srx.log").read_text().splitlines()[2]
    path = tmp_path / "srx.log"
    path.write_text(line + "\n")
    from exfilwatch.sources.base import ParseContext

    con = duckdb.connect()
    con.execute("CREATE TEMP TABLE raw_lines AS SELECT 1::BIGINT AS line_no, ? AS line", [line])
    batch = JuniperSRXFlow().parse(con, ParseContext(origin="x", header_lines=[line], settings=SETTINGS, year=None))
    assert con.execute(f"SELECT outcome, reason FROM {batch.classified}").fetchall() == [
        ("quarantined", "syslog timestamp without a year: pass --year")]


# --- detection -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, name", [
    (FIXTURES / "nfdump_csv" / "nfdump.csv", "nfdump_csv"),
    (FIXTURES / "netflow_csv" / "nprobe.csv", "netflow_csv"),
    (FIXTURES / "netflow_csv" / "export.csv", "netflow_csv"),
    (FIXTURES / "srx_flow" / "srx.log", "srx_flow"),
    (FIXTURES / "pulse_secure" / "standard.log", "pulse_secure"),
])
def test_detection_picks_each_flow_format(path, name):
    assert detect_source(read_head(path), str(path)).name == name


def test_zeek_is_not_taken_for_a_flow_format_nor_the_reverse(tmp_path):
    conn = write_conn_log(tmp_path / "conn.log", [Flow(1761955200.0, "10.20.0.1", "10.10.0.5", 1, 2)])
    head = read_head(conn)
    assert detect_source(head, str(conn)).name == "zeek_conn"
    for source in (NfdumpCSV(), NetflowCSV(), JuniperSRXFlow(), GenericSource()):
        assert not source.sniff(head)
    for sub in ("nfdump_csv/nfdump.csv", "netflow_csv/nprobe.csv", "srx_flow/srx.log"):
        head = read_head(FIXTURES / sub)
        assert not SOURCES["zeek_conn"].sniff(head) and not SOURCES["zeek_conn_json"].sniff(head)
        assert not SOURCES["pulse_secure"].sniff(head)


# --- generic ---------------------------------------------------------------------------------------

AUTH_COLUMNS = ["_time", "user", "src_ip", "assigned_ip", "dest", "action", "event_type", "duration", "bytes_in",
                "bytes_out"]


def test_generic_csv_to_authentication(home):
    gen = FIXTURES / "generic"
    path = gen / "vpn_export.csv"
    report = ingest(home, path, source_name="generic", mapping=gen / "vpn_mapping.yaml")
    assert report.source == "generic"
    assert lake(home, "authentication", AUTH_COLUMNS) == {
        2: ("acme_vpn_export", "2026-03-03 09:15:02.000", "jdoe", "203.0.113.5", "10.200.1.17", "gw1.example.com",
            "success", "vpn-login", None, None, None),
        3: ("acme_vpn_export", "2026-03-03 10:45:30.000", "smith, j", "203.0.113.6", "10.200.1.18", "gw1.example.com",
            "success", "vpn-logout", 5400.5, 1834552, 48211234),
    }
    assert report.skipped == {"header": 1}
    assert quarantine(home) == {
        4: (str(path), "bad time in column 'When' (field _time): 31/02/2026 10:16:02 (expected %d/%m/%Y %H:%M:%S)"),
        5: (str(path), "bad value in column 'Seconds' (field duration): ten (expected double)"),
        6: (str(path), "expected 9 fields as in the header, found 2"),
    }


def test_generic_jsonl_to_email_with_lists_and_json_paths(home):
    gen = FIXTURES / "generic"
    path = gen / "mail.jsonl"
    report = ingest(home, path, source_name="generic", mapping=gen / "mail_mapping.yaml")
    columns = ["_time", "message_id", "src_user", "recipient", "size", "subject", "file_name", "direction", "action",
               "event_type"]
    assert lake(home, "email", columns) == {
        1: ("generic", "2026-03-03 09:15:02.500", "<a1@example.com>", "jdoe@example.com",
            ["x@gmail.com", "y@partner.example"], 5242880, "Q1 plan", ["plan.xlsx", "budget.pdf"], "outbound",
            "delivered", "email-out"),
    }
    assert quarantine(home) == {
        2: (str(path), "bad value in column '$.meta.bytes' (field size): 12k (expected bigint)"),
        3: (str(path), "not a JSON object (expected one record per line)"),
        4: (str(path), "missing time in column 'ts' (field _time)"),
    }
    assert report.events == 1


@pytest.mark.parametrize("text, message", [
    ("model: network_traffic\nformat: csv\ncolumns: {a: _time, b: srcip}\n",
     "columns.b: unknown field 'srcip' of model network_traffic"),
    ("model: network_traffic\nformat: csv\ncolumns: {a: src_ip}\n",
     "no column is mapped to _time"),
    ("model: authentication\nformat: csv\ncolumns: {a: _time}\n",
     "constants.event_type: required for model authentication"),
    ("model: network_traffic\nformat: csv\ncolumns: {a: _time, b: src_ip, c: src_ip}\n",
     "columns.c: field 'src_ip' is already mapped from column 'b'"),
    ("model: network_traffic\nformat: xml\ncolumns: {a: _time}\n", "key 'format': Input should be 'csv' or 'jsonl'"),
    ("model: vpn\nformat: csv\ncolumns: {a: _time}\n", "key 'model': Input should be"),
    ("model: network_traffic\nformat: csv\ncolumns: {a: _time}\ntimezone: Mars/Olympus\n",
     "key 'timezone': unknown IANA time zone 'Mars/Olympus'"),
    ("model: network_traffic\nformat: csv\ncolumns: {a: _time}\ntime_format: dd/mm/yyyy\n",
     "key 'time_format': expected a strptime format"),
    ("model: network_traffic\nformat: csv\ncolumns: {a: _time}\ncolumn: {}\n", "key 'column': unknown key (mistyped?)"),
    ("model: [unclosed\n", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping (model, format, columns, …) at the top level"),
])
def test_mapping_errors_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "mapping.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_mapping(path)
    assert str(info.value).startswith(f"{path}:") and message in str(info.value)


def test_generic_needs_a_mapping_and_matching_header(tmp_path, home):
    data = tmp_path / "x.csv"
    data.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="needs a mapping file"):
        ingest_paths([data], home, SETTINGS, source_name="generic")
    mapping = tmp_path / "m.yaml"
    mapping.write_text("model: network_traffic\nformat: csv\ncolumns: {start: _time}\n")
    with pytest.raises(ConfigError, match=r"columns 'start' are not in the header .* \(it has: a, b\)"):
        ingest_paths([data], home, SETTINGS, source_name="generic", mapping=mapping)
    with pytest.raises(ConfigError, match="mapping file not found"):
        ingest_paths([data], home, SETTINGS, source_name="generic", mapping=tmp_path / "missing.yaml")
    assert not GenericSource().sniff(read_head(data))


# --- fuzz ------------------------------------------------------------------------------------------

NFDUMP_HEAD = (FIXTURES / "nfdump_csv" / "nfdump.csv").read_text().splitlines()[:1]
NPROBE_HEAD = (FIXTURES / "netflow_csv" / "nprobe.csv").read_text().splitlines()[:1]


@FUZZ
@given(payloads=RANDOM)
def test_random_input_never_crashes_flow_parsers(payloads):
    lines = [line for p in payloads for line in as_lines(p)]
    for source, head in ((NfdumpCSV(), NFDUMP_HEAD), (NetflowCSV(), NPROBE_HEAD), (JuniperSRXFlow(), lines[:64])):
        outcomes = run_parser(source, lines, head=head)
        assert set(outcomes) <= {"quarantined", "skipped"}


SRX_PREFIXES = [
    "<14>Mar  3 09:17:02 srx01 RT_FLOW: RT_FLOW_SESSION_CLOSE: session closed TCP FIN: ",
    "<14>Mar  3 09:17:02 srx01 RT_FLOW: RT_FLOW_SESSION_CLOSE: session closed TCP FIN: 10.0.0.1/1->10.0.0.2/2 0x0 x "
    "10.0.0.1/1->10.0.0.2/2 0x0 N/A N/A N/A N/A 6 p z1 z2 7 1(",
    '<14>1 2026-03-03T09:15:07.120+01:00 srx01 RT_FLOW - RT_FLOW_SESSION_CLOSE [junos@2636.1.1.1.2.129 reason="',
    "2026-03-03 09:15:02,2026-03-03 09:15:07,5.012,",
]


@FUZZ
@given(lines=st.lists(st.tuples(st.sampled_from(SRX_PREFIXES),
                                st.one_of(st.text(max_size=300),
                                          st.text(alphabet='0123456789./->() ="abc', min_size=1000, max_size=20000))),
                      min_size=1, max_size=20))
def test_broken_flow_lines_never_crash(lines):
    text = [line for prefix, body in lines for line in as_lines(prefix + body)]
    run_parser(JuniperSRXFlow(), text)
    run_parser(NfdumpCSV(), text, head=NFDUMP_HEAD)
    run_parser(NetflowCSV(), text, head=NPROBE_HEAD)


@FUZZ
@given(payloads=RANDOM)
def test_random_input_never_crashes_generic(payloads):
    lines = [line for p in payloads for line in as_lines(p)]
    gen = FIXTURES / "generic"
    csv_head = (gen / "vpn_export.csv").read_text().splitlines()[:1]
    outcomes = run_parser(GenericSource(), lines, head=csv_head, mapping=gen / "vpn_mapping.yaml")
    assert set(outcomes) <= {"quarantined", "skipped"}
    outcomes = run_parser(GenericSource(), lines, head=[], mapping=gen / "mail_mapping.yaml")
    assert set(outcomes) <= {"quarantined", "skipped"}


@pytest.mark.parametrize("relay", [
    "Mar  3 08:15:08 relay01 ",  # a relay's BSD header in front of the SRX's RFC 5424 one
    "<14>Mar  3 08:15:08 relay01 ",
    "Mar  3 08:15:08 relay01 <14>",  # the relay kept the SRX's <PRI> too
    "2026-03-03T08:15:08.000000+00:00 relay01 ",  # rsyslog's RFC 3339 file format
])
def test_srx_behind_a_relay_keeps_the_srx_time(tmp_path, home, relay):
    line = (FIXTURES / "srx_flow" / "srx.log").read_text().splitlines()[0]
    path = tmp_path / "relayed.log"
    path.write_text(relay + line.removeprefix("<14>") + "\n")
    report = ingest(home, path)
    assert (report.source, report.parsed) == ("srx_flow", 1)
    [row] = lake(home, "network_traffic", ["_time", "src_ip", "bytes_out"]).values()
    assert row == ("srx_flow", "2026-03-03 08:15:02.120", "10.20.0.15", 5400000)  # 09:15:07.120+01:00 - 5 s


# The structured-data runs are read where their first key first occurs, and searched for only
# where that finds nothing: the groups are those of the unanchored search in every case.
_SD_PIECES = [' source-address="10.0.0.1"', ' source-port="5"', ' destination-address="10.0.0.2"',
              ' destination-port="443"', ' session-id-32="7"', ' session-id="8"', ' packets-from-client="1"',
              ' bytes-from-client="100"', ' packets-from-server="2"', ' bytes-from-server="200"', ' elapsed-time="3"',
              ' reason="x source-address=\\"1.1.1.1\\""', ' nat-source-address="10.9.9.9"', ' source-address=""', '"', ' ']
_SD_RUNS = [(SRX_ADDRESSES, ' source-address="', list(SRX_ADDRESS_FIELDS)),
            (SRX_COUNTERS, ' session-id', list(SRX_COUNTER_FIELDS))]


@given(st.lists(st.lists(st.sampled_from(_SD_PIECES), max_size=16), min_size=1, max_size=30))
def test_srx_structured_runs_read_as_the_unanchored_search(bodies):
    usual = "".join(_SD_PIECES[:11])
    messages = ["RT_FLOW_SESSION_CLOSE [junos@2636.1.1.1.2.129" + "".join(b) + "]" for b in bodies]
    messages += ["RT_FLOW_SESSION_CLOSE [junos@2636.1.1.1.2.129" + usual + "]"]
    con = duckdb.connect()
    for pattern, key, names in _SD_RUNS:
        listed = "[" + ", ".join(f"'{n}'" for n in names) + "]"
        rows = con.execute(f"""
            SELECT {' , '.join(f"coalesce(r1.{n}, r0.{n})" for n in names)}, {' , '.join(f"s.{n}" for n in names)}
            FROM (SELECT *, {_sd_run_searched('r0', pattern, names)} AS r1
                  FROM (SELECT m, true AS structured, {_sd_run_anchored(pattern, key, names)} AS r0,
                               regexp_extract(m, ?, {listed}) AS s FROM (SELECT unnest(?) AS m)))""",
                           [pattern, messages]).fetchall()
        assert [row[:len(names)] for row in rows] == [row[len(names):] for row in rows]
        assert rows[-1][0] not in ("", None)  # the usual line is read
    con.close()
