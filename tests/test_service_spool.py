"""The spool read back as Arrow gives what the record-by-record reader gives, for hostile lines
too (separators, NUL, bytes that are not UTF-8), and `auto` routes a column of lines as it routes
each line."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import HealthCheck, given, settings, strategies as st

from exfilwatch.service.spool import Spool, encode_many
from exfilwatch.sources import route_syslog_line, route_syslog_lines
from tests.servicekit import postfix_lines, pulse_login

LINES = st.lists(st.binary(max_size=60) | st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
                 min_size=1, max_size=20)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(st.tuples(st.sampled_from(["auto", "postfix"]), st.sampled_from(["", '{"host":"h"}']),
                                   LINES), min_size=1, max_size=5),
       limit=st.integers(1, 60))
def test_read_table_gives_what_read_gives(tmp_path_factory, requests, limit):
    spool = Spool(tmp_path_factory.mktemp("spool"), 0)
    for i, (source, meta, lines) in enumerate(requests):
        spool.append(encode_many(source, f"tcp:1@10.0.0.{i}", 1790000000.5 + i, lines, meta))
    for start in (0, spool.read(0, spool.end, 1)[0].end):
        expected = [r._asdict() for r in spool.read(start, spool.end, limit)]
        for row in expected:
            row["line"] = row["line"].replace("\x00", "\ufffd")
        assert spool.read_table(start, spool.end, limit).to_pylist() == expected
    spool.close()


def test_auto_routes_a_column_of_lines_as_each_line():
    lines = [pulse_login("u1"), *postfix_lines("1A2B3C4D5E"), "<13>Oct 11 22:14:15 host sshd[7]: x", "junk", "",
             "<14>1 2026-03-03T09:15:07.120+01:00 srx01 RT_FLOW - RT_FLOW_SESSION_CLOSE [junos@2636 a=\"b\"]",
             "Oct 19 10:20:40 relay 1 2026-10-19T10:20:40+02:00 mail01 postfix/smtpd 1 - - 1A2B3C4D5E: client=a[1.2.3.4]"]
    routed = route_syslog_lines(pa.chunked_array([pa.array(lines[:3], pa.large_string()),
                                                  pa.array(lines[3:], pa.large_string())]))
    assert routed.to_pylist() == [route_syslog_line(line) for line in lines]
    assert routed.to_pylist()[0] == "pulse_secure" and routed.to_pylist()[-1] == "postfix"
