"""The sessions' top lists built a part of the sessions at a time (features/sessions.py,
`_in_session_parts`) are those of the one plain statement, ties and their order included."""

from __future__ import annotations

from datetime import timedelta

import duckdb
import pytest

from exfilwatch.config import memory_bytes
from exfilwatch.features import sessions as ses
from exfilwatch.models import AUTHENTICATION, EMAIL, NETWORK_TRAFFIC

from .sessionkit import at, flow, load_table, login, logout, mail, settings

USERS = ("alice", "bob", "carol", "dave")


def _mail_with_ties() -> list[dict]:
    """Per user and day, more than five messages of one size sent in the same second (the top
    messages' order key ties), to recipients and domains of equal counts and bytes (the top
    recipients and domains tie on messages and bytes), a few to personal addresses."""
    rows = []
    for u, user in enumerate(USERS):
        for day in range(4):
            t = at(1 + u, days=day)
            for i in range(9):
                recipients = [f"r{i % 3}@partner{i % 4}.com", f"{user}{i % 2}@gmail.com" if i % 3 == 0 else
                              f"x{i}@corp.example"]
                rows.append(mail(t + timedelta(seconds=i // 7), f"{user}@corp.example", recipients,
                                 size=2000 if i < 7 else 1000, subject=f"s{i}"))
            rows.append(mail(t, f"{user}@corp.example", ["inside@corp.example"], 5))
    return rows


def _auth() -> list[dict]:
    rows = []
    for u, user in enumerate(USERS):
        for day in (0, 2):
            rows += [login(at(0.5 + u, days=day), user, f"s{user}{day}", ip=f"10.200.0.{u}"),
                     logout(at(3 + u, days=day), user, f"s{user}{day}", ip=f"10.200.0.{u}")]
    return rows


def _flows() -> list[dict]:
    """Flows from each user's tunnel address, in their VPN sessions (their net_* features)."""
    return [flow(at(1 + u + i / 10, days=day), f"10.200.0.{u}", 100 * (i + 1))
            for u in range(len(USERS)) for day in (0, 2) for i in range(5)]


# made once: the helpers number messages and lines from a counter, and both builds must read the same rows
AUTH, MAIL, FLOWS = _auth(), _mail_with_ties(), _flows()


def _stored_sessions(parts: int, monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    monkeypatch.setattr(ses, "_session_parts", lambda con, rows: parts)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET threads = 1")  # one order of the rows for both: which of tied rows max_by keeps depends on it
    load_table(con, "t_auth", AUTHENTICATION, AUTH)
    load_table(con, "t_mail", EMAIL, MAIL)
    load_table(con, "t_flows", NETWORK_TRAFFIC, FLOWS)
    ses.compute_sessions(con, settings(), at(days=10), at(days=-1), at(days=-8), auth="t_auth", email="t_mail",
                         flows="t_flows")
    rows = con.execute("SELECT * FROM _ses_result ORDER BY session_key").fetchall()
    assert con.execute("SELECT count(*) FROM _ses_result WHERE net_flows = 5").fetchall()[0][0] == 8
    con.close()
    monkeypatch.undo()
    return rows


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_top_lists_built_in_parts_are_the_plain_statements_ties_and_order_included(parts, monkeypatch):
    plain = _stored_sessions(1, monkeypatch)
    in_parts = _stored_sessions(parts, monkeypatch)
    assert len(plain) == 16  # 8 VPN sessions, 8 days with mail outside them
    assert in_parts == plain
    # the data ties where the lists choose: seven messages of one size in one second, five listed
    tops = [r for r in plain if len(r[-2]) == 5]
    assert tops and all(len({(m["size"], m["time"]) for m in r[-2]}) == 1 for r in tops)


def test_the_sessions_are_aggregated_in_as_many_parts_as_keep_each_parts_lists_within_a_share_of_memory():
    con = duckdb.connect()
    con.execute("SET memory_limit = '4GB'")
    con.execute("CREATE TABLE few AS SELECT range AS sk FROM range(100000)")
    assert ses._session_parts(con, "few") == 1
    con.execute("SET memory_limit = '20MB'")
    limit = memory_bytes(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])
    share = limit / ses._LIST_STATE_SHARE_OF_MEMORY
    con.execute("CREATE TABLE many AS SELECT range AS sk FROM range(1000000)")
    for rows, n in (("few", 100000), ("many", 1000000)):
        parts = ses._session_parts(con, rows)
        assert n * ses._LIST_STATE_BYTES_PER_ROW / parts <= share < n * ses._LIST_STATE_BYTES_PER_ROW / (parts - 1)
