"""Helpers for session tests: data-model rows built in Python, loaded as DuckDB tables."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import duckdb

from exfilwatch.config import Settings, parse_settings
from exfilwatch.features.sessions import compute_sessions
from exfilwatch.models import AUTHENTICATION, EMAIL, NETWORK_TRAFFIC, DataModel

UTC = timezone.utc
T0 = datetime(2026, 10, 5, 8, 0, tzinfo=UTC)  # a Monday


def at(hours: float = 0, days: int = 0, base: datetime = T0) -> datetime:
    return base + timedelta(days=days, hours=hours)


def load_table(con: duckdb.DuckDBPyConnection, name: str, model: DataModel, rows: list[dict[str, Any]]) -> None:
    columns = ", ".join(f'"{c}" {t}' for c, t in model.columns)
    con.execute(f"CREATE OR REPLACE TABLE {name} ({columns})")
    names = model.column_names
    if rows:
        marks = ", ".join("?" * len(names))
        con.executemany(f"INSERT INTO {name} VALUES ({marks})", [[row.get(c) for c in names] for row in rows])


_counter = [0]


def vpn(t: datetime, user: str, event_type: str, session_id: str | None = None, ip: str | None = None,
        reason: str | None = None, src_ip: str = "198.51.100.7") -> dict[str, Any]:
    _counter[0] += 1
    return {"_time": t, "user": user, "event_type": event_type, "session_id": session_id, "assigned_ip": ip,
            "reason": reason, "src_ip": src_ip, "action": "success", "source": "test",
            "raw_ref": f"vpn.log:{_counter[0]}"}


def login(t, user, sid=None, ip=None, reason=None):
    return vpn(t, user, "vpn-login", sid, ip, reason)


def logout(t, user, sid=None, ip=None, reason="logout"):
    return vpn(t, user, "vpn-logout", sid, ip, reason)


def mail(t: datetime, sender: str, recipients: list[str], size: int = 1000, message_id: str | None = None,
         action: str = "delivered", subject: str = "hello", files: list[str] | None = None) -> dict[str, Any]:
    _counter[0] += 1
    return {"_time": t, "message_id": message_id or f"<m{_counter[0]}@corp.example>",
            "internal_message_id": f"Q{_counter[0]}", "src_user": sender, "src_user_domain": sender.split("@")[-1],
            "recipient": recipients, "recipient_domain": [r.split("@")[-1] for r in recipients],
            "recipient_count": len(recipients), "size": size, "subject": subject, "file_name": files,
            "direction": "outbound", "action": action, "event_type": "email-out", "source": "test",
            "raw_ref": f"maillog:{_counter[0]}"}


def flow(t: datetime, src: str, bytes_out: int, bytes_in: int = 0) -> dict[str, Any]:
    return {"_time": t, "src_ip": src, "dest_ip": "203.0.113.9", "bytes_out": bytes_out, "bytes_in": bytes_in,
            "event_type": "network-connection", "source": "test"}


def settings(**extra) -> Settings:
    data = {"timezone": "UTC", "internal_domains": ["corp.example"], **extra}
    return parse_settings(data, "test")


def sessions(auth: list[dict], mails: list[dict] | None = None, flows: list[dict] | None = None,
             now: datetime | None = None, cfg: Settings | None = None, start: datetime | None = None
             ) -> tuple[list[dict[str, Any]], Any]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    load_table(con, "t_auth", AUTHENTICATION, auth)
    load_table(con, "t_mail", EMAIL, mails or [])
    load_table(con, "t_flows", NETWORK_TRAFFIC, flows or [])
    cfg = cfg or settings()
    now = now or at(days=30)
    start = start or at(days=-30)
    counts = compute_sessions(con, cfg, now, start, start - timedelta(days=7), auth="t_auth", email="t_mail",
                              flows="t_flows")
    cur = con.execute("SELECT * FROM _ses_result ORDER BY user, session_start, session_key")
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r)) for r in cur.fetchall()]
    con.close()
    return rows, counts
