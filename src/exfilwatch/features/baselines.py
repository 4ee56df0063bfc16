"""The series an analyst compares a finding with: a user's per-session mail features, and a
host's daily bytes to and from the mail servers with the all-hosts figures of the same days.

Read-only, over the lake (`user_sessions` and `network_traffic`, enriched with the asset
inventory as the detections see it); the console's entity charts are drawn from these.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import duckdb

from exfilwatch.config import Settings
from exfilwatch.events.engine import plain, register_lake_views
from exfilwatch.state import StateStore

SESSION_FEATURES = ("em_fnum", "em_dnum", "em_bsum", "em_bsum_personal")


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [{name: plain(value) for name, value in zip(names, row)} for row in cursor.fetchall()]


def user_session_series(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings, user: str,
                        start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The user's closed sessions ending in [start, end), oldest first, with their EM feature values."""
    register_lake_views(con, settings, state, start, end)
    return _rows(con, f"""
        SELECT session_key AS session_id, session_kind, session_start, session_end, {', '.join(SESSION_FEATURES)}
        FROM lake.user_sessions WHERE "user" = $user AND _time >= $start AND _time < $end
        ORDER BY session_end, session_key""", {"user": user, "start": start, "end": end})


def host_daily_mail_bytes(con: duckdb.DuckDBPyConnection, state: StateStore, settings: Settings, host: str,
                          start: datetime, end: datetime) -> dict[str, Any]:
    """A host's bytes received from (bytes_in) and sent to (bytes_out) the mail servers per local day
    in [start, end), and the all-hosts mean and sample standard deviation of the daily values, as
    the network detections compute them (flows whose destination is an `email_server` asset)."""
    register_lake_views(con, settings, state, start, end)
    daily = """
        SELECT src_ip, _day AS day, sum(bytes_in) AS bytes_in, sum(bytes_out) AS bytes_out
        FROM lake.network_traffic
        WHERE dest_category = 'email_server' AND src_ip IS NOT NULL AND _time >= $start AND _time < $end
        GROUP BY ALL"""
    params = {"start": start, "end": end}
    days = _rows(con, f"SELECT day, bytes_in, bytes_out FROM ({daily}) WHERE src_ip = $host ORDER BY day",
                 params | {"host": host})
    overall = _rows(con, f"""SELECT avg(bytes_in) AS mean_in, stddev_samp(bytes_in) AS stdev_in,
                                    avg(bytes_out) AS mean_out, stddev_samp(bytes_out) AS stdev_out FROM ({daily})""",
                    params)[0]
    return {"days": days, "all_hosts": overall}
