"""Exchange Server message tracking logs (MSGTRK<yyyymmdd>-<n>.LOG): the `#Software / #Version /
#Log-type / #Date / #Fields` header, then one CSV line per tracking event with the 30 fields of
`FIELDS` (Exchange 2013 to 2019), times in UTC with milliseconds (`2026-10-05T12:59:12.123Z`), a
field quoted when it holds a comma or a quote, multiple recipients joined with `;`.

A record has the fields of `FIELDS` with `_` for `-`; `date_time` is UTC microseconds.
SQL: `exchange_line(...)` in `FIELDS` order and `exchange_time(us)`. Python: `lines(records)`,
`header(version, first_us)`, `file_name(day)`; `write_query` writes a query's lines into one file
per UTC day, each with its header.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from pathlib import Path

import duckdb

from exfilwatch.synth.writers import _text

FIELDS = (
    "date-time,client-ip,client-hostname,server-ip,server-hostname,source-context,connector-id,source,"
    "event-id,internal-message-id,message-id,network-message-id,recipient-address,recipient-status,"
    "total-bytes,recipient-count,related-recipient-address,reference,message-subject,sender-address,"
    "return-path,message-info,directionality,tenant-id,original-client-ip,original-server-ip,custom-data,"
    "transport-traffic-type,log-id,schema-version"
)
COLUMNS = [(name.replace("-", "_"), "BIGINT" if name == "date-time" else "VARCHAR") for name in FIELDS.split(",")]
US_PER_DAY = 86_400_000_000


def install(con: duckdb.DuckDBPyConnection) -> None:
    params = ", ".join(name for name, _ in COLUMNS)
    # a NULL field is an empty one: concat_ws would drop it and shift every later field
    fields = ", ".join("exchange_time(date_time)" if name == "date_time" else f"exchange_csv(coalesce({name}, ''))"
                       for name, _ in COLUMNS)
    con.execute(f"""
        CREATE OR REPLACE TEMP MACRO exchange_time(us) AS strftime(make_timestamp(us), '%Y-%m-%dT%H:%M:%S.%g') || 'Z';
        CREATE OR REPLACE TEMP MACRO exchange_csv(s) AS
            CASE WHEN contains(s, ',') OR contains(s, '"') THEN '"' || replace(s, '"', '""') || '"' ELSE s END;
        CREATE OR REPLACE TEMP MACRO exchange_line({params}) AS concat_ws(',', {fields});
    """)


CALL = "exchange_line(" + ", ".join(name for name, _ in COLUMNS) + ")"


def lines(records: Iterable[Mapping[str, object]]) -> list[str]:
    return _text.render(install, CALL, COLUMNS, records)


def header(version: str, first_us: int) -> str:
    """The header of a log whose first event is at `first_us` (UTC microseconds)."""
    [stamp] = _text.render(install, "exchange_time(date_time)", [("date_time", "BIGINT")], [{"date_time": first_us}])
    return (f"#Software: Microsoft Exchange Server\n#Version: {version}\n#Log-type: Message Tracking Log\n"
            f"#Date: {stamp}\n#Fields: {FIELDS}\n")


def file_name(day: date, number: int = 1) -> str:
    return f"MSGTRK{day.strftime('%Y%m%d')}-{number}.LOG"


def write_query(con: duckdb.DuckDBPyConnection, sql: str, folder: Path, version: str) -> int:
    """One file per UTC day of the `line` column of `sql` (with `ts`, UTC microseconds, for the day and the
    order); return the number of lines written (headers included)."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE exchange_lines AS SELECT ts, line FROM ({sql})")
    total = 0
    days = con.execute(f"SELECT ts // {US_PER_DAY} AS d, min(ts) FROM exchange_lines GROUP BY d ORDER BY d").fetchall()
    for uday, first in days:
        path = folder / file_name(date(1970, 1, 1) + timedelta(days=int(uday)))
        path.write_text(header(version, int(first)), encoding="utf-8")
        total += _text.copy_lines(con, f"SELECT line FROM exchange_lines WHERE ts // {US_PER_DAY} = {int(uday)} "
                                       "ORDER BY ts, line", path, append=True)
    con.execute("DROP TABLE exchange_lines")
    return total
