"""Mail and Zeek inputs in the forms users bring them: Exchange tracking lines without their header
(as forwarders ship them), Exchange Online message trace V2 and Graph exports, Zeek lines wrapped by a
Splunk export, Zeek JSON with ISO 8601 times, and the public Zeek samples. Fixtures are ours, written
in each vendor's form; the Exchange one round-trips through the synthetic writer."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pytest

from exfilwatch.config import Home, parse_settings
from exfilwatch.events.files import read_head
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.home import open_state
from exfilwatch.sources import detect_source
from exfilwatch.sources.exchange import DEFAULT_FIELDS
from exfilwatch.synth.writers import exchange as exchange_writer

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
SETTINGS = parse_settings({"internal_domains": ["example.com"]}, "test")


def _home(tmp_path: Path, name: str = "home") -> Home:
    return Home(root=tmp_path / name, config_path=tmp_path / name / "config.yaml")


def _rows(home: Home, model: str = "email") -> list[dict]:
    state = open_state(home)
    files = state.lake_files(model)
    quarantined = state.query("SELECT file, line_no, reason FROM quarantine")
    state.close()
    assert not quarantined, [tuple(q) for q in quarantined]
    if not files:
        return []
    rel = duckdb.sql(f"SELECT * EXCLUDE (day) FROM read_parquet({files!r}) ORDER BY _time")
    return [dict(zip(rel.columns, row)) for row in rel.fetchall()]


# --- Exchange without a header -------------------------------------------------------------------

HEADERLESS = FIXTURES / "exchange_forwarded" / "forwarded-headerless.log"


def test_the_default_exchange_order_is_the_one_the_synthetic_writer_writes():
    assert exchange_writer.FIELDS.split(",") == DEFAULT_FIELDS


def test_headerless_exchange_lines_round_trip_through_the_synthetic_writer():
    lines = HEADERLESS.read_text().splitlines()
    records = []
    for cells in csv.reader(lines):
        record = {name.replace("-", "_"): (value or None) for name, value in zip(DEFAULT_FIELDS, cells)}
        stamp = datetime.strptime(cells[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        record["date_time"] = int(stamp.timestamp() * 1_000_000)
        records.append(record)
    assert exchange_writer.lines(records) == lines


def test_headerless_exchange_lines_are_recognised_and_give_one_row_per_message(tmp_path):
    assert detect_source(read_head(HEADERLESS), str(HEADERLESS)).name == "exchange_tracking"
    home = _home(tmp_path)
    [report] = ingest_paths([HEADERLESS], home, SETTINGS)
    assert (report.lines, report.events, report.quarantined) == (5, 2, 0)
    assert dict(report.skipped) == {"exchange event AGENTINFO": 1}
    first, second = _rows(home)
    assert first["subject"] == 'Board deck, v3 "confidential"'
    assert first["src_ip"] == "2001:db8:20::15" and first["src_user"] == "grace@example.com"
    assert first["recipient"] == ["grace.home@outlook.com", "henry@example.com"]
    assert (first["direction"], first["event_type"], first["size"]) == ("outbound", "email-out", 91500)
    assert (second["subject"], second["src_user"], second["direction"]) == (
        "Invoice 11/2026, due", "billing@vendor.example.net", "inbound")


def test_one_forwarded_line_at_a_time_is_read_like_the_file(tmp_path):
    home = _home(tmp_path)
    for number, line in enumerate(HEADERLESS.read_text().splitlines()):
        path = tmp_path / f"event-{number}.log"
        path.write_text(line + "\n")
        ingest_paths([path], home, SETTINGS)
    whole = _home(tmp_path, "whole")
    ingest_paths([HEADERLESS], whole, SETTINGS)
    keys = ["_time", "message_id", "src_user", "subject", "size", "src_ip", "direction", "event_type"]
    one = [{k: r[k] for k in keys} for r in _rows(home)]
    # each line alone is a group of its own: the RECEIVE is written, the later DELIVER/SEND of the same
    # network message id are recognised as already written (the deduplication across batches)
    assert [{k: r[k] for k in keys} for r in _rows(whole)] == one


def test_a_headerless_line_of_another_layout_says_what_it_needs(tmp_path):
    path = tmp_path / "short.log"
    good = HEADERLESS.read_text().splitlines()[0]
    path.write_text(good + "\n" + good.rsplit(",", 1)[0] + "\n")
    home = _home(tmp_path)
    [report] = ingest_paths([path], home, SETTINGS, source_name="exchange_tracking")
    state = open_state(home)
    [reason] = [r["reason"] for r in state.query("SELECT reason FROM quarantine")]
    state.close()
    assert report.quarantined == 1
    assert reason == ("expected 30 comma-separated fields (the Exchange 2013-2019 default order; another layout "
                      "needs its #Fields header), found 29")


# --- Zeek wrapped by a Splunk export, and Zeek JSON with ISO 8601 times ------------------------------

def _splunk_export(lines: list[str], source: str = "/opt/zeek/logs/current/conn.log") -> str:
    """Lines as `splunk search ... -output json` (or the REST export endpoint) writes them."""
    out = []
    for offset, line in enumerate(lines):
        event = {"preview": False, "offset": offset,
                 "result": {"_raw": line, "_time": "2026-11-02T09:00:00.000+00:00", "sourcetype": "bro:smtp:json",
                            "host": "sensor-1", "source": source}}
        if offset == len(lines) - 1:
            event["lastrow"] = True
        out.append(json.dumps(event))
    return "\n".join(out) + "\n"


ZEEK_CONN_ISO = [
    {"ts": "2026-11-02T09:01:00.250000Z", "uid": "CzA1b2c3", "id.orig_h": "10.20.0.15", "id.orig_p": 51234,
     "id.resp_h": "2001:db8:10::5", "id.resp_p": 993, "proto": "tcp", "service": "ssl", "duration": 2.5,
     "orig_bytes": 1200, "resp_bytes": 5400, "conn_state": "SF"},
    {"ts": "2026-11-02T10:01:00+01:00", "uid": "CzA1b2c4", "id.orig_h": "10.20.0.16", "id.orig_p": 51235,
     "id.resp_h": "10.10.0.5", "id.resp_p": 25, "proto": "tcp", "service": "smtp", "duration": 0.5,
     "orig_bytes": 48213, "resp_bytes": 700, "conn_state": "SF"},
]


@pytest.mark.parametrize("wrapped", [False, True])
def test_zeek_json_with_iso_times_plain_and_wrapped_by_a_splunk_export(tmp_path, wrapped):
    lines = [json.dumps(record) for record in ZEEK_CONN_ISO]
    path = tmp_path / "conn.json"
    path.write_text(_splunk_export(lines) if wrapped else "\n".join(lines) + "\n")
    assert detect_source(read_head(path), str(path)).name == "zeek_conn_json"
    home = _home(tmp_path)
    [report] = ingest_paths([path], home, SETTINGS)
    assert (report.events, report.quarantined) == (2, 0)
    rows = _rows(home, "network_traffic")
    assert [(r["_time"].astimezone(timezone.utc).isoformat(), r["dest_ip"], r["bytes_out"]) for r in rows] == [
        ("2026-11-02T09:01:00+00:00", "10.10.0.5", 48213),
        ("2026-11-02T09:01:00.250000+00:00", "2001:db8:10::5", 1200),
    ]


def _sample_folder(tmp_path: Path, wrap: bool) -> Path:
    folder = tmp_path / ("wrapped" if wrap else "plain")
    folder.mkdir()
    for path in [*SAMPLES.glob("zeek__smtp*"), *SAMPLES.glob("zed-sample-data__smtp.*")]:
        # btest baselines mask their timestamps: put a real one back
        with open(path, encoding="utf-8", newline="") as original:  # a CR inside a line stays in it
            text = original.read().replace("XXXXXXXXXX.XXXXXX", "1254722768.219663")
        with open(folder / path.name, "w", encoding="utf-8", newline="") as copy:
            copy.write(_splunk_export(text.rstrip("\n").split("\n"), f"/opt/zeek/{path.name}") if wrap else text)
    return folder


@pytest.mark.skipif(not SAMPLES.exists(), reason="../shared/samples not present")
def test_public_zeek_samples_wrapped_by_a_splunk_export_give_the_same_rows(tmp_path):
    rows = {}
    for wrap in (False, True):
        home = _home(tmp_path, f"home-{wrap}")
        reports = ingest_paths([_sample_folder(tmp_path, wrap)], home, SETTINGS)
        assert len(reports) == 6 and sum(r.quarantined for r in reports) == 0, _rows(home)
        assert sum(r.events for r in reports) > 24
        keys = ["_time", "internal_message_id", "src_user", "recipient", "size", "subject", "file_name", "action"]
        rows[wrap] = sorted(tuple(str(r[k]) for k in keys) for r in _rows(home))
    assert rows[True] == rows[False]


# --- Exchange Online message trace: Get-MessageTraceV2 and Microsoft Graph --------------------------

V2_CSV = FIXTURES / "m365_v2" / "MessageTraceV2_2026-11-04.csv"
GRAPH_JSON = FIXTURES / "m365_v2" / "graph_messagetraces.json"
TRACE_ROWS = [
    ("2026-11-04T08:15:00+00:00", "5e7b1c22-9a0d-4f3e-8c11-08d8f2bb0101", "grace@example.com",
     ["grace.home@outlook.com", "henry@example.com"], 91500, 'Board deck, v3 "confidential"', "delivered",
     "2a01:111:f403:c200::1", "outbound", "email-out"),
    ("2026-11-04T08:20:00+00:00", "5e7b1c22-9a0d-4f3e-8c11-08d8f2bb0103", "billing@vendor.example.net",
     ["ivan@example.com"], 20480, "Invoice 11/2026, due", "blocked", "203.0.113.44", "inbound", "email-in"),
    ("2026-11-04T21:02:30+00:00", "5e7b1c22-9a0d-4f3e-8c11-08d8f2bb0104", "henry@example.com",
     ["h.private@proton.me"], 1200, "weekend", "failed", "2a01:111:f403:c200::2", "outbound", "email-out-failed"),
]


@pytest.mark.parametrize("path, source", [(V2_CSV, "m365_trace_csv"), (GRAPH_JSON, "m365_trace_json")])
def test_message_trace_v2_export_and_graph_response_give_one_row_per_message(tmp_path, path, source):
    assert detect_source(read_head(path), str(path)).name == source
    home = _home(tmp_path)
    [report] = ingest_paths([path], home, SETTINGS)
    assert (report.events, report.quarantined) == (3, 0)
    got = [(r["_time"].astimezone(timezone.utc).isoformat(), r["internal_message_id"], r["src_user"], r["recipient"],
             r["size"], r["subject"], r["action"], r["src_ip"], r["direction"], r["event_type"]) for r in _rows(home)]
    assert got == TRACE_ROWS


def test_a_v2_export_and_the_graph_page_of_the_same_messages_are_written_once(tmp_path):
    home = _home(tmp_path)
    ingest_paths([V2_CSV], home, SETTINGS)
    [report] = ingest_paths([GRAPH_JSON], home, SETTINGS)
    assert report.events == 0 and "3 messages already written" in report.notes[0]
    assert len(_rows(home)) == 3
    again = _home(tmp_path, "again")
    ingest_paths([V2_CSV], again, SETTINGS)
    copy = tmp_path / "second-export.csv"
    copy.write_bytes(V2_CSV.read_bytes().replace(b"outlook.office365.com", b"outlook.office365.de"))
    [report] = ingest_paths([copy], again, SETTINGS)
    assert report.events == 0 and len(_rows(again)) == 3
