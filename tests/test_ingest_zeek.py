"""Ingesting Zeek conn.log: exact events, quarantine with reasons, and resumable, idempotent reads."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from exfilwatch.events import ingest as ingest_module
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.events.lake import remove_orphans
from exfilwatch.home import open_state

from .conftest import ZEEK_CONN_HEADER, Flow, conn_line, settings_for, write_conn_log

SETTINGS = settings_for()


def lake_rows(home, order="raw_ref"):
    state = open_state(home)
    files = state.lake_files("network_traffic")
    state.close()
    if not files:
        return []
    rel = duckdb.sql(f"SELECT * EXCLUDE (day) FROM read_parquet({files!r}) ORDER BY _time, src_ip")
    return [dict(zip(rel.columns, row)) for row in rel.fetchall()]


def flows(n, start=1761955200.0):
    return [Flow(start + i, f"10.20.0.{i % 7 + 1}", "10.10.0.5", 100 + i, 1000 * i, uid=f"C{i:017d}") for i in range(n)]


def test_tsv_maps_to_cim_fields_with_unset_values_as_null(tmp_path, home):
    path = write_conn_log(tmp_path / "conn.log", [
        Flow(1761955200.123456, "10.20.0.15", "10.10.0.5", 1200, 5400000),
        Flow(1761955201.0, "10.20.0.16", "10.10.0.5", None, None, service="-"),
    ])
    [report] = ingest_paths([path], home, SETTINGS)
    assert (report.source, report.lines, report.events, report.quarantined) == ("zeek_conn", 11, 2, 0)
    assert report.skipped == {"header": 9}
    first, second = lake_rows(home)
    assert first["src_ip"] == "10.20.0.15" and first["dest_ip"] == "10.10.0.5"
    assert (first["bytes_out"], first["bytes_in"], first["bytes"]) == (1200, 5400000, 5401200)
    assert (first["src_port"], first["dest_port"], first["transport"], first["app"]) == (51234, 993, "tcp", "ssl")
    assert first["_time"].timestamp() == pytest.approx(1761955200.123456)
    assert first["event_type"] == "network-connection" and first["source"] == "zeek_conn"
    assert first["raw_ref"] == f"{path}:9"
    assert (second["bytes_out"], second["bytes_in"], second["bytes"], second["app"]) == (None, None, None, None)


def test_json_lines_and_gzip(tmp_path, home):
    records = [
        {"ts": 1761955200.5, "uid": "Cx1", "id.orig_h": "10.20.0.1", "id.orig_p": 5000, "id.resp_h": "10.10.0.5",
         "id.resp_p": 993, "proto": "tcp", "service": "ssl", "duration": 2.5, "orig_bytes": 10, "resp_bytes": 20,
         "conn_state": "SF"},
        {"ts": "2026-11-01T00:00:01.000000Z", "uid": "Cx2", "id.orig_h": "fe80::1", "id.orig_p": 5001,
         "id.resp_h": "fe80::2", "id.resp_p": 25, "proto": "tcp", "conn_state": "S0"},
    ]
    path = tmp_path / "conn.json.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(json.dumps(r) for r in records) + "\nnot json\n")
    [report] = ingest_paths([path], home, SETTINGS)
    assert (report.source, report.events, report.quarantined) == ("zeek_conn_json", 2, 1)
    rows = lake_rows(home)
    assert rows[0]["bytes_in"] == 20 and rows[0]["duration"] == 2.5
    assert rows[1]["src_ip"] == "fe80::1" and rows[1]["bytes_out"] is None
    state = open_state(home)
    [bad] = state.query("SELECT line_no, reason FROM quarantine")
    assert bad["line_no"] == 3 and "not a JSON object" in bad["reason"]


def test_bad_lines_are_quarantined_with_file_line_and_reason(tmp_path, home):
    good = conn_line(Flow(1761955200.0, "10.20.0.1", "10.10.0.5", 1, 2))
    lines = [
        good,
        good.replace("1761955200.000000", "yesterday"),
        good.replace("\t51234\t", "\t51x34\t"),
        good.replace("\t1\t2\tSF", "\t-5\t2\tSF"),
        "\t".join(good.split("\t")[:12]),
        good + "\textra",
    ]
    path = tmp_path / "conn.log"
    path.write_text(ZEEK_CONN_HEADER + "\n".join(lines) + "\n")
    [report] = ingest_paths([path], home, SETTINGS)
    assert report.lines == report.parsed + report.quarantined + sum(report.skipped.values())
    assert (report.events, report.quarantined) == (1, 5)
    state = open_state(home)
    rows = state.query("SELECT file, line_no, reason, raw FROM quarantine ORDER BY line_no")
    assert [r["line_no"] for r in rows] == [10, 11, 12, 13, 14]
    assert all(r["file"] == str(path) for r in rows)
    reasons = [r["reason"] for r in rows]
    assert "bad timestamp in field ts: yesterday" in reasons[0]
    assert "bad number in field id.orig_p: 51x34" in reasons[1]
    assert "negative number in field orig_bytes" in reasons[2]
    assert reasons[3] == "expected 21 tab-separated fields, found 12"
    assert reasons[4] == "expected 21 tab-separated fields, found 22"
    assert rows[1]["raw"] == lines[2]


def test_reingest_adds_nothing_and_a_grown_file_is_read_from_where_it_stopped(tmp_path, home):
    path = write_conn_log(tmp_path / "conn.log", flows(5), close=False)
    first = ingest_paths([path], home, SETTINGS)[0]
    again = ingest_paths([path], home, SETTINGS)[0]
    assert (first.events, again.lines, again.events) == (5, 0, 0)
    with open(path, "a") as handle:
        for flow in flows(3, start=1761960000.0):
            handle.write(conn_line(flow) + "\n")
    grown = ingest_paths([path], home, SETTINGS)[0]
    assert (grown.resumed_from_line, grown.lines, grown.events) == (13, 3, 3)
    assert len(lake_rows(home)) == 8


def test_rotated_truncated_and_renamed_files(tmp_path, home):
    path = write_conn_log(tmp_path / "conn.log", flows(4))
    ingest_paths([path], home, SETTINGS)
    # Rotation: the old file moves to conn.log.1 (same content, already read) ...
    os.rename(path, tmp_path / "conn.log.1")
    assert ingest_paths([tmp_path / "conn.log.1"], home, SETTINGS)[0].events == 0
    # ... and a new, shorter conn.log starts (different content, truncated size): read from the start.
    new = ZEEK_CONN_HEADER.replace("2026-10-01-00-00-00", "2026-10-02-00-00-00")
    path.write_text(new + conn_line(Flow(1762041600.0, "10.20.0.9", "10.10.0.5", 7, 8)) + "\n")
    report = ingest_paths([path], home, SETTINGS)[0]
    assert (report.resumed_from_line, report.events) == (0, 1)
    assert len(lake_rows(home)) == 5


def test_small_chunks_give_the_same_events_in_several_batches(tmp_path, home, monkeypatch):
    path = write_conn_log(tmp_path / "conn.log", flows(50))
    [report] = ingest_paths([path], home, SETTINGS, chunk_bytes=700)
    assert report.batches > 5 and report.events == 50 and report.quarantined == 0
    assert sorted(r["session_id"] for r in lake_rows(home)) == sorted(f.uid for f in flows(50))


def test_a_killed_ingest_leaves_no_half_batch_and_the_next_run_completes_it(tmp_path, home, monkeypatch):
    path = write_conn_log(tmp_path / "conn.log", flows(40))
    real_write = ingest_module.write_batch
    calls = {"n": 0}

    def dying_write(*args, **kwargs):
        files = real_write(*args, **kwargs)  # the files are renamed into the lake ...
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")  # ... but the process dies before the commit
        return files

    monkeypatch.setattr(ingest_module, "write_batch", dying_write)
    with pytest.raises(KeyboardInterrupt):
        ingest_paths([path], home, SETTINGS, chunk_bytes=600)
    committed = len(lake_rows(home))
    assert 0 < committed < 40  # the committed batches are visible, the killed one is not
    monkeypatch.setattr(ingest_module, "write_batch", real_write)
    ingest_paths([path], home, SETTINGS, chunk_bytes=600)
    rows = lake_rows(home)
    assert len(rows) == 40 and len({r["session_id"] for r in rows}) == 40
    state = open_state(home)
    assert remove_orphans(home.lake, state) == 0
    on_disk = {str(p) for p in Path(home.lake).rglob("*.parquet")}
    assert on_disk == {state.absolute(p) for p in state.committed_lake_paths()}


def test_unknown_format_is_a_clear_error(tmp_path, home):
    path = tmp_path / "weird.log"
    path.write_text("hello world\n")
    [report] = ingest_paths([path], home, SETTINGS)  # a file that cannot be read is reported; the others go on
    with pytest.raises(ValueError, match="could not recognise the log format.*zeek_conn"):
        raise report.error
    with pytest.raises(ValueError, match="unknown source 'nope'; known sources: zeek_conn"):
        ingest_paths([path], home, SETTINGS, source_name="nope")


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(
    st.binary(max_size=400),
    st.text(max_size=300),
    st.text(alphabet="\t-0123456789.abc", min_size=1000, max_size=5000),
))
def test_random_input_never_crashes_and_every_line_is_accounted_for(tmp_path_factory, payload):
    tmp = tmp_path_factory.mktemp("fuzz")
    home = settings_home = tmp / "home"
    from exfilwatch.config import Home

    path = tmp / "conn.log"
    data = payload if isinstance(payload, bytes) else payload.encode("utf-8", "surrogatepass")
    path.write_bytes(ZEEK_CONN_HEADER.encode() + data)
    [report] = ingest_paths([path], Home(root=settings_home, config_path=settings_home / "c.yaml"), SETTINGS,
                            source_name="zeek_conn")
    assert report.lines == report.parsed + report.quarantined + sum(report.skipped.values())
    assert report.events == report.parsed
