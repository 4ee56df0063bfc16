"""The `email` model as detections see it: direction and event type follow the `internal_domains`
configured when the lake is queried (not when it was ingested), in DuckDB and in Spark's view SQL;
long values are cut where rows are written, and the ingest report counts them."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
import sqlglot

from exfilwatch.config import Home, parse_settings
from exfilwatch.events.engine import email_replacements, expose_models, register_lake_views
from exfilwatch.events.ingest import FIELD_CHARS, LIST_ITEMS, ingest_paths
from exfilwatch.home import open_state

from .conftest import count_of_column

FIXTURES = Path(__file__).parent / "fixtures"
NO_DOMAINS = parse_settings({}, "test")
DOMAINS = parse_settings({"internal_domains": ["Example.com"]}, "test")


def _home(tmp_path: Path) -> Home:
    return Home(root=tmp_path / "home", config_path=tmp_path / "home" / "config.yaml")


def _as_detections_see_it(home: Home, settings) -> dict[str, tuple]:
    state = open_state(home)
    con = duckdb.connect()
    try:
        register_lake_views(con, settings, state)
        expose_models(con)
        rows = con.execute("SELECT internal_message_id, direction, event_type FROM email").fetchall()
    finally:
        con.close()
        state.close()
    return {key: (direction, event_type) for key, direction, event_type in rows}


def test_setting_internal_domains_after_ingest_changes_direction_without_reingest(tmp_path):
    home = _home(tmp_path)
    [report] = ingest_paths([FIXTURES / "postfix" / "maillog-part1"], home, NO_DOMAINS, year=2026)
    assert any("no re-ingest needed" in note for note in report.notes)
    before = _as_detections_see_it(home, NO_DOMAINS)
    assert {v for k, v in before.items() if k != "B19C88D0AB"} == {("unknown", "email")}
    after = _as_detections_see_it(home, DOMAINS)
    assert after["4F2A11C03A"] == ("outbound", "email-out")  # alice@example.com → gmail
    assert after["5B3C22D04B"] == ("inbound", "email-in")
    assert after["6C4D33E05C"] == ("internal", "email-internal")
    assert after["8E6F55A07E"] == ("internal", "email-internal")  # the null sender counts as ours
    assert after["9F7A66B08F"] == ("outbound", "email-out-failed")  # blocked
    assert after["B19C88D0AB"] == ("outbound", "email-relay")  # the source's own type is kept
    # and a domain taken away again (the subsidiary was sold) makes its mail inbound
    sold = _as_detections_see_it(home, parse_settings({"internal_domains": ["example.org"]}, "test"))
    assert sold["4F2A11C03A"] == ("inbound", "email-in")


def test_cert_rows_are_sent_by_the_user_whatever_the_sender_domain(tmp_path):
    home = _home(tmp_path)
    ingest_paths([FIXTURES / "cert" / "email_r6.2.csv"], home, NO_DOMAINS)
    seen = _as_detections_see_it(home, parse_settings({"internal_domains": ["dtaa.com"]}, "test"))
    assert seen and {d for d, _ in seen.values()} <= {"outbound", "internal"}
    assert "outbound" in {d for d, _ in seen.values()}


def test_the_view_sql_translates_to_spark():
    spark_sql = sqlglot.transpile(f"SELECT {email_replacements(DOMAINS)} FROM email_stored", read="duckdb",
                                  write="spark")[0]
    assert "FILTER(recipient_domain" in spark_sql and "LIST_" not in spark_sql


def test_long_values_are_cut_and_counted(tmp_path):
    home = _home(tmp_path)
    many = [f"r{i}@gmail.com" for i in range(LIST_ITEMS + 500)]
    record = {"ts": "2026-11-02T09:01:01.5Z", "uid": "CHhAvVGS1DHFjwGM9", "id.orig_h": "10.20.0.15", "id.orig_p": 5,
              "id.resp_h": "10.10.0.5", "id.resp_p": 25, "trans_depth": 1, "mailfrom": "alice@example.com",
              "rcptto": many, "subject": "S" * 10_000_000, "last_reply": "250 ok", "user_agent": "UA" * 5000}
    short = dict(record, uid="C2", rcptto=["bob@gmail.com"], subject="fine")
    path = tmp_path / "smtp.json"
    path.write_text(json.dumps(record) + "\n" + json.dumps(short) + "\n")
    [report] = ingest_paths([path], home, DOMAINS, source_name="zeek_smtp_json")
    assert report.quarantined == 0 and report.events == 2
    [note] = [n for n in report.notes if "were cut" in n]
    assert note.startswith("3 values") and note.endswith("recipient 1, recipient_domain 1, subject 1")
    state = open_state(home)
    files = state.lake_files("email")
    state.close()
    rows = duckdb.sql(f"SELECT subject, recipient, recipient_count FROM read_parquet({files!r}) ORDER BY subject").fetchall()
    assert rows[0] == ("S" * FIELD_CHARS, sorted(many)[:LIST_ITEMS], LIST_ITEMS + 500)
    assert rows[1] == ("fine", ["bob@gmail.com"], 1)


_RECIPIENTS = sorted(f"r{i}@gmail.com" for i in range(LIST_ITEMS + 1))
_ONE = ["bob@gmail.com"]


@pytest.mark.parametrize("values, written, note", [
    (dict(subject="s" * FIELD_CHARS, rcptto=_RECIPIENTS[:LIST_ITEMS]), ("s" * FIELD_CHARS, _RECIPIENTS[:LIST_ITEMS]),
     None),
    (dict(subject="é" * FIELD_CHARS), ("é" * FIELD_CHARS, _ONE), None),  # over the limit in bytes, not characters
    (dict(subject="é" * (FIELD_CHARS + 1)), ("é" * FIELD_CHARS, _ONE), ("1 values", "subject 1")),
    (dict(rcptto=_RECIPIENTS), ("long", _RECIPIENTS[:LIST_ITEMS]), ("2 values", "recipient 1, recipient_domain 1")),
    (dict(rcptto=["x" * (FIELD_CHARS + 5) + "@gmail.com"] + _ONE), ("long", _ONE + ["x" * FIELD_CHARS]),
     ("1 values", "recipient 1")),
], ids=["at-the-limits", "two-byte-characters", "text-over", "list-over", "item-over"])
def test_long_values_are_cut_and_counted_in_a_file_sized_batch(tmp_path, values, written, note):
    """One value at, over, or in bytes only over the limits among 10,000 records (a batch written one
    file per day): the value is written cut only when it is over, and the report counts it."""
    home = _home(tmp_path)
    base = {"ts": "2026-11-02T09:01:01.5Z", "id.orig_h": "10.20.0.15", "id.orig_p": 5, "id.resp_h": "10.10.0.5",
            "id.resp_p": 25, "trans_depth": 1, "mailfrom": "alice@example.com", "rcptto": _ONE, "last_reply": "250 ok"}
    records = [dict(base, uid=f"C{i}", subject=f"s{i}") for i in range(10_000)]
    records.append({**base, "uid": "long", "subject": "long", **values})
    path = tmp_path / "smtp.json"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    [report] = ingest_paths([path], home, DOMAINS, source_name="zeek_smtp_json")
    assert report.events == len(records)
    cut = [n for n in report.notes if "were cut" in n]
    if note is None:
        assert cut == []
    else:
        assert len(cut) == 1 and cut[0].startswith(note[0]) and cut[0].endswith(f"length: {note[1]}")
    state = open_state(home)
    files = state.lake_files("email")
    state.close()
    rows = duckdb.sql(f"SELECT subject, recipient FROM read_parquet({files!r}) WHERE internal_message_id = 'long#1'")
    assert rows.fetchall() == [written]


def test_the_authenticated_sender_is_kept_as_user_across_ingests(tmp_path):
    home = _home(tmp_path)
    first = tmp_path / "maillog.1"
    second = tmp_path / "maillog"
    first.write_text("Nov  2 09:01:00 mx1 postfix/submission/smtpd[2201]: 3A1B2C3D4E: client=ws-gina.example.com"
                     "[10.20.0.21], sasl_method=PLAIN, sasl_username=Gina.Admin\n")
    second.write_text(
        "Nov  2 09:01:00 mx1 postfix/cleanup[2202]: 3A1B2C3D4E: message-id=<g1@example.com>\n"
        "Nov  2 09:01:01 mx1 postfix/qmgr[1000]: 3A1B2C3D4E: from=<payroll@example.com>, size=5000, nrcpt=1 (queue active)\n"
        "Nov  2 09:01:02 mx1 postfix/smtp[2203]: 3A1B2C3D4E: to=<gina@gmx.de>, relay=mx00.gmx.net[212.227.15.9]:25, "
        "delay=2, delays=0.1/0/1/0.9, dsn=2.0.0, status=sent (250 Requested mail action okay, completed)\n"
        "Nov  2 09:01:02 mx1 postfix/qmgr[1000]: 3A1B2C3D4E: removed\n")
    ingest_paths([first], home, DOMAINS, year=2026)  # the client line waits in the state store
    ingest_paths([second], home, DOMAINS, year=2026)
    state = open_state(home)
    con = duckdb.connect()
    register_lake_views(con, DOMAINS, state)
    rows = con.execute("SELECT src_user, \"user\", recipient FROM lake.email").fetchall()
    con.close()
    state.close()
    # the sender address stays what direction and identity resolution by address use
    assert rows == [("payroll@example.com", "gina.admin", ["gina@gmx.de"])]


def test_cert_user_is_kept(tmp_path):
    home = _home(tmp_path)
    ingest_paths([FIXTURES / "cert" / "email_r4.2.csv"], home, NO_DOMAINS)
    state = open_state(home)
    files = state.lake_files("email")
    state.close()
    users = duckdb.sql(f"SELECT DISTINCT \"user\" FROM read_parquet({files!r})").fetchall()
    assert users and all(u is not None and u[0][:3].isalpha() for u in users)


def test_lake_files_written_before_the_user_column_read_it_as_null(tmp_path):
    home = _home(tmp_path)
    ingest_paths([FIXTURES / "postfix" / "maillog-part1"], home, DOMAINS, year=2026)
    rows, with_user = count_of_column(home, DOMAINS, "email", "user", older=True)
    assert rows > 5 and with_user == 0
