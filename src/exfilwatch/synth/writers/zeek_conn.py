"""Zeek conn.log in its TSV layout: the `#separator … #types` header, one tab-separated line per
connection, `-` for an unset field, `(empty)` for an empty set, and the `#close` trailer.

Times and durations are integer microseconds in the record (written `seconds.micros`, exactly),
so a line does not depend on floating point. `zeek_conn_line(...)` (the SQL macro, after
`install(con)`) takes the 21 fields in `FIELDS` order; `line(ConnRecord)` and `write(path, ...)`
are the same for Python callers; `write_query(con, sql, path, ...)` writes a query's `line`
column between header and trailer (gzip optional).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb

from exfilwatch.synth.writers import _text

FIELDS = [
    "ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service", "duration",
    "orig_bytes", "resp_bytes", "conn_state", "local_orig", "local_resp", "missed_bytes", "history",
    "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes", "tunnel_parents",
]
TYPES = [
    "time", "string", "addr", "port", "addr", "port", "enum", "string", "interval", "count", "count",
    "string", "bool", "bool", "count", "string", "count", "count", "count", "count", "set[string]",
]
# the record's names: Zeek's, with `id.` dropped and the two times in microseconds
COLUMNS = [
    ("ts_us", "BIGINT"), ("uid", "VARCHAR"), ("orig_h", "VARCHAR"), ("orig_p", "BIGINT"), ("resp_h", "VARCHAR"),
    ("resp_p", "BIGINT"), ("proto", "VARCHAR"), ("service", "VARCHAR"), ("duration_us", "BIGINT"),
    ("orig_bytes", "BIGINT"), ("resp_bytes", "BIGINT"), ("conn_state", "VARCHAR"), ("local_orig", "VARCHAR"),
    ("local_resp", "VARCHAR"), ("missed_bytes", "BIGINT"), ("history", "VARCHAR"), ("orig_pkts", "BIGINT"),
    ("orig_ip_bytes", "BIGINT"), ("resp_pkts", "BIGINT"), ("resp_ip_bytes", "BIGINT"), ("tunnel_parents", "VARCHAR"),
]
STAMP = "%Y-%m-%d-%H-%M-%S"  # #open / #close


def install(con: duckdb.DuckDBPyConnection) -> None:
    params = ", ".join(name for name, _ in COLUMNS)
    # concat_ws is several times faster than a chain of || over millions of rows; nothing is NULL by then
    fields = "concat_ws(chr(9), " + ", ".join(
        f"zeek_micros({name})" if name.endswith("_us") else f"coalesce(CAST({name} AS VARCHAR), '-')"
        for name, _ in COLUMNS) + ")"
    con.execute(f"""
        CREATE OR REPLACE TEMP MACRO zeek_micros(us) AS
            coalesce(CAST(us // 1000000 AS VARCHAR) || '.' || lpad(CAST(us % 1000000 AS VARCHAR), 6, '0'), '-');
        CREATE OR REPLACE TEMP MACRO zeek_conn_line({params}) AS {fields};
    """)


def header(open_: str) -> str:
    """The header lines; `open_` as Zeek writes it (`2026-10-01-00-00-00`, see `stamp`)."""
    return ("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n"
            f"#open\t{open_}\n#fields\t" + "\t".join(FIELDS) + "\n#types\t" + "\t".join(TYPES) + "\n")


def trailer(close: str) -> str:
    return f"#close\t{close}\n"


def stamp(epoch_s: float, tz: ZoneInfo) -> str:
    """A #open / #close time: the sensor's local time."""
    return datetime.fromtimestamp(epoch_s, tz).strftime(STAMP)


@dataclass(frozen=True)
class ConnRecord:
    """One connection; `ts` and `duration` in seconds (None: unset)."""

    ts: float
    orig_h: str
    resp_h: str
    orig_bytes: int | None
    resp_bytes: int | None
    resp_p: int = 993
    service: str = "ssl"
    uid: str = "CAbCdEfGhIjKlMnOp1"
    orig_p: int = 51234
    proto: str = "tcp"
    duration: float | None = 1.5
    conn_state: str = "SF"
    local_orig: str = "T"
    local_resp: str = "T"
    missed_bytes: int = 0
    history: str = "ShADadFf"
    orig_pkts: int = 10
    orig_ip_bytes: int = 1000
    resp_pkts: int = 10
    resp_ip_bytes: int = 1000
    tunnel_parents: str = "(empty)"


def _micros(seconds: float | None) -> int | None:
    # through the %.6f text: seconds * 1e6 in floating point can miss the last digit
    return None if seconds is None else int(Decimal(f"{seconds:.6f}") * 1_000_000)


def _values(record: ConnRecord) -> dict:
    values = asdict(record)
    values["ts_us"] = _micros(values.pop("ts"))
    values["duration_us"] = _micros(values.pop("duration"))
    return values


def lines(records: Iterable[ConnRecord]) -> list[str]:
    call = "zeek_conn_line(" + ", ".join(name for name, _ in COLUMNS) + ")"
    return _text.render(install, call, COLUMNS, (_values(r) for r in records))


def line(record: ConnRecord) -> str:
    return lines([record])[0]


def write(path: Path, records: Iterable[ConnRecord], open_: str = "2026-10-01-00-00-00",
          close: str | None = "2026-11-01-00-00-00") -> Path:
    """A conn.log of `records`; `close=None` leaves the file open (no #close line), as while Zeek writes it."""
    body = "".join(text + "\n" for text in lines(records))
    Path(path).write_text(header(open_) + body + (trailer(close) if close else ""))
    return Path(path)


def write_query(con: duckdb.DuckDBPyConnection, sql: str | Iterable[str], path: Path, open_: str, close: str,
                compress: bool = False) -> int:
    """conn.log with the `line` column of `sql` (rendered with `zeek_conn_line`; or of several queries, one
    after the other) as its body; the body's line count."""
    return _text.write_between(con, sql, path, header(open_), trailer(close), compress)
