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
    assert not quarantined, quarantined
    if not files:
        return []
    rel = duckdb.sql(f"SELECT * EXCLUDE (day) FROM read_parquet({files!r}) ORDER BY _time")
    return [dict(zip(rel.columns, row)) for row in rel.fetchall()]


# --- Exchange without a header -------------------------------------------------------------------

HEADERLESS = FIXTURES / "exchange" / "forwarded-headerless.log"


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
