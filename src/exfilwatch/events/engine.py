"""DuckDB connections and the query-time views of the data models.

`connect` applies the settings (memory limit, spill folder, threads) and fixes the session
time zone to UTC so that nothing depends on the machine's zone. `register_model_views` makes
each data model a view over its committed lake files, enriched at query time: network
traffic gets `src_category`/`dest_category` from the asset inventory, so an inventory change
applies to data ingested before it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from pathlib import Path

import duckdb
import pyarrow as pa

from exfilwatch.config import Asset, Settings
from exfilwatch.events.lake import parquet_source
from exfilwatch.models import DATA_MODELS, DataModel
from exfilwatch.state import StateStore


def connect(settings: Settings, spill_dir: Path | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{settings.memory_limit}'")
    if settings.threads:
        con.execute(f"SET threads = {int(settings.threads)}")
    if spill_dir is not None:
        spill_dir.mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = '{spill_dir}'")
    return con


def plain(value: Any) -> Any:
    """A JSON-ready value: datetimes in ISO 8601 UTC, decimals as floats, NaN as null."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def match_assets(ips: list[str], assets: list[Asset]) -> pa.Table:
    """Map each address to its most specific inventory entry (longest prefix; a host entry wins)."""
    hosts = {asset.host: asset for asset in assets if asset.host}
    networks = sorted(
        ((ipaddress.ip_network(asset.cidr), asset) for asset in assets if asset.cidr),
        key=lambda pair: pair[0].prefixlen,
        reverse=True,
    )
    out: dict[str, list] = {"ip": [], "category": [], "bunit": [], "owner": [], "priority": []}
    for ip in ips:
        match = hosts.get(ip)
        if match is None:
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                continue
            match = next((asset for net, asset in networks if address in net), None)
        if match is not None:
            out["ip"].append(ip)
            out["category"].append(match.category)
            out["bunit"].append(match.bunit)
            out["owner"].append(match.owner)
            out["priority"].append(match.priority)
    return pa.table(out, schema=pa.schema([(name, pa.string()) for name in out]))


def _day_bounds(earliest: datetime | None, latest: datetime | None) -> tuple[str | None, str | None]:
    # Partitions are UTC days; widen by a day so no row in range is pruned.
    first = (earliest.date() - timedelta(days=1)).isoformat() if earliest else None
    last = (latest.date() + timedelta(days=1)).isoformat() if latest else None
    return first, last


def model_sql(model: DataModel, state: StateStore, earliest: datetime | None = None, latest: datetime | None = None) -> str:
    """SQL over the model's committed files, pruned to the partitions that can hold [earliest, latest)."""
    first, last = _day_bounds(earliest, latest)
    return parquet_source(model, state.lake_files(model.name, first, last))


def local_day_sql(column: str, tz: str) -> str:
    """SQL: the local midnight (as TIMESTAMPTZ) of the day holding `column` in zone `tz`.

    Every model view carries it as `_day`, the daily bucket of Splunk's `span=1d` aligned to the
    configured zone; a catch-up snapshot computes it once instead of once per fire time.
    """
    zone = tz.replace("'", "''")
    return f"timezone('{zone}', date_trunc('day', timezone('{zone}', {column})))"


def register_lake_views(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    state: StateStore,
    earliest: datetime | None = None,
    latest: datetime | None = None,
) -> None:
    """Create `lake.<model>` views over the committed files, enriched, pruned to [earliest, latest)."""
    con.execute("CREATE SCHEMA IF NOT EXISTS lake")
    day = local_day_sql("_time", settings.timezone)
    for model in DATA_MODELS.values():
        base = model_sql(model, state, earliest, latest)
        if model.name != "network_traffic":
            con.execute(f"CREATE OR REPLACE VIEW lake.{model.name} AS SELECT *, {day} AS _day FROM ({base})")
            continue
        con.execute(f"CREATE OR REPLACE VIEW lake.network_traffic_stored AS {base}")
        _refresh_asset_map(con, settings, state)
        con.execute(
            f"""
            CREATE OR REPLACE VIEW lake.network_traffic AS
            SELECT t.*, s.category AS src_category, d.category AS dest_category,
                   s.bunit AS src_bunit, d.bunit AS dest_bunit, {day} AS _day
            FROM lake.network_traffic_stored t
            LEFT JOIN lake.asset_map s ON t.src_ip = s.ip
            LEFT JOIN lake.asset_map d ON t.dest_ip = d.ip
            """
        )


def _refresh_asset_map(con: duckdb.DuckDBPyConnection, settings: Settings, state: StateStore) -> None:
    """`lake.asset_map`: each address seen in the lake with its inventory entry.

    Rebuilt only when the inventory or the set of addresses (append-only) changed since the
    connection last built it, so several detections in one run match addresses once.
    """
    count = state.query("SELECT count(*) AS n FROM lake_addresses")[0]["n"]
    inventory = json.dumps([asset.model_dump() for asset in settings.assets], sort_keys=True)
    key = f"{count}:{hashlib.sha256(inventory.encode()).hexdigest()}"
    con.execute("CREATE TABLE IF NOT EXISTS lake.asset_map_key (key VARCHAR)")
    if con.execute("SELECT 1 FROM lake.asset_map_key WHERE key = ?", [key]).fetchall():
        return
    ips = [row["ip"] for row in state.query("SELECT ip FROM lake_addresses")]
    con.register("asset_map_arrow", match_assets(ips, settings.assets))
    con.execute("CREATE OR REPLACE TABLE lake.asset_map AS SELECT * FROM asset_map_arrow")
    con.unregister("asset_map_arrow")
    con.execute("DELETE FROM lake.asset_map_key")
    con.execute("INSERT INTO lake.asset_map_key VALUES (?)", [key])


def expose_models(
    con: duckdb.DuckDBPyConnection,
    snapshot: dict[str, tuple[list[str], datetime, datetime]] | None = None,
    condition: str | None = None,
) -> None:
    """Make each model visible by its plain name, as detections refer to it.

    With `snapshot` (model -> columns, start, end) the model becomes an in-memory table of just
    those columns and rows (and, with `condition`, only the rows that meet it), so a catch-up that
    runs one detection for many fire times scans the lake once.
    """
    snapshot = snapshot or {}
    for model in DATA_MODELS.values():
        _drop_temp(con, model.name)
        if model.name in snapshot:
            columns, start, end = snapshot[model.name]
            listed = ", ".join(f'"{c}"' for c in columns)
            con.execute(
                f"CREATE TEMP TABLE {model.name} AS SELECT {listed} FROM lake.{model.name} "
                f"WHERE _time >= $start AND _time < $end AND {condition or 'true'} ORDER BY _time",
                {"start": start, "end": end},
            )
        else:
            con.execute(f"CREATE TEMP VIEW {model.name} AS SELECT * FROM lake.{model.name}")


def _drop_temp(con: duckdb.DuckDBPyConnection, name: str) -> None:
    if con.execute("SELECT 1 FROM duckdb_tables() WHERE temporary AND table_name = ?", [name]).fetchall():
        con.execute(f"DROP TABLE temp.main.{name}")
    if con.execute("SELECT 1 FROM duckdb_views() WHERE temporary AND view_name = ?", [name]).fetchall():
        con.execute(f"DROP VIEW temp.main.{name}")
