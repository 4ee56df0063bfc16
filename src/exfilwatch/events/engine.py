"""DuckDB connections and the query-time views of the data models.

`connect` applies the settings (memory limit, spill folder, threads) and fixes the session
time zone to UTC so that nothing depends on the machine's zone. `register_model_views` makes
each data model a view over its committed lake files, enriched at query time: network
traffic gets `src_category`/`dest_category` (the entry's primary category), `src_categories`/
`dest_categories` (all of them, for `list_contains`) and the business units from the asset
inventory, and mail its `direction` and `event_type` from `internal_domains`
(sources/mailcommon.py `query_time_columns`), so an inventory or domain change applies to data
ingested before it. Addresses are matched to the inventory by a range join on integer bounds in
DuckDB (`create_asset_map`).
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from pathlib import Path

import duckdb
import pyarrow as pa

from exfilwatch.config import Asset, Settings, address_bounds
from exfilwatch.events.lake import parquet_source
from exfilwatch.models import DATA_MODELS, EMAIL, DataModel
from exfilwatch.sources import SOURCES
from exfilwatch.sources.arrow import int64_range, string_array, table_of
from exfilwatch.sources.mailcommon import query_time_columns
from exfilwatch.state import StateStore


def connect(settings: Settings, spill_dir: Path | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    # DuckDB's own bar writes to stdout, into the tables and JSON lines a command prints there
    con.execute("SET enable_progress_bar = false")
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


# Addresses become integers in SQL, so matching the lake's addresses against the inventory is a
# range join in DuckDB. A text that is no address (or has leading zeros, which Python's
# ipaddress also refuses) becomes NULL and matches nothing.
_ADDRESS_MACROS = r"""
CREATE OR REPLACE TEMP MACRO ew_ipv4(a) AS (
    CASE WHEN regexp_full_match(a, '(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){3}') THEN
        list_reduce(list_transform(string_split(a, '.'), lambda o: CASE WHEN o::INTEGER <= 255 THEN o::UBIGINT END),
                    lambda acc, o: acc * 256 + o)
    END);
CREATE OR REPLACE TEMP MACRO ew_v6_hex(a, quad) AS (
    -- `a` lower case without its zone, `quad` its trailing dotted quad as an integer (NULL: none);
    -- the quad (::ffff:10.1.2.3) becomes two hex groups
    CASE WHEN NOT contains(a, '.') THEN a
         WHEN quad IS NOT NULL THEN regexp_extract(a, '^(.*:)', 1) || printf('%x:%x', quad // 65536, quad % 65536)
    END);
CREATE OR REPLACE TEMP MACRO ew_v6_split(p) AS (CASE WHEN p = '' THEN []::VARCHAR[] ELSE string_split(p, ':') END);
CREATE OR REPLACE TEMP MACRO ew_v6_fill(h, t) AS (
    CASE WHEN len(h) + len(t) <= 7 THEN list_concat(h, list_transform(range(8 - len(h) - len(t)), lambda i: '0'), t) END);
CREATE OR REPLACE TEMP MACRO ew_v6_groups(s) AS (
    CASE WHEN s IS NULL OR NOT regexp_full_match(s, '[0-9a-f:]+') OR contains(s, ':::')
              OR length(s) - length(replace(s, '::', '')) > 2 THEN NULL
         WHEN contains(s, '::') THEN ew_v6_fill(ew_v6_split(split_part(s, '::', 1)), ew_v6_split(split_part(s, '::', 2)))
         ELSE string_split(s, ':')
    END);
CREATE OR REPLACE TEMP MACRO ew_v6_value(g) AS (
    CASE WHEN len(g) = 8 THEN
        list_reduce(list_transform(g, lambda x: CASE WHEN regexp_full_match(x, '[0-9a-f]{1,4}') THEN ('0x' || x)::UHUGEINT END),
                    lambda acc, x: acc * 65536 + x)
    END);
"""

_RANGE_SCHEMA = pa.schema([("entry", pa.int32()), ("version", pa.int8()), ("lo_hi", pa.uint64()), ("lo_lo", pa.uint64()),
                           ("hi_hi", pa.uint64()), ("hi_lo", pa.uint64())])
ASSET_MAP_SCHEMA = pa.schema([("ip", pa.string()), ("category", pa.string()), ("categories", pa.list_(pa.string())),
                              ("bunit", pa.string()), ("owner", pa.string()), ("priority", pa.string())])
_ENTRY_SCHEMA = pa.schema([("entry", pa.int32()), *ASSET_MAP_SCHEMA.remove(0)])  # an entry's number, then what the map gives an address


def inventory_tables(assets: list[Asset]) -> tuple[pa.Table, pa.Table]:
    """(ranges, entries): every address range of the inventory as integer bounds (128-bit values
    as two 64-bit halves), and each entry's attributes, both keyed by the entry's position."""
    ranges: dict[str, list] = {name: [] for name in _RANGE_SCHEMA.names}
    for entry, asset in enumerate(assets):
        for spec in asset.address_specs():
            version, first, last = address_bounds(spec)
            for name, value in (("entry", entry), ("version", version), ("lo_hi", first >> 64),
                                ("lo_lo", first & 0xFFFFFFFFFFFFFFFF), ("hi_hi", last >> 64),
                                ("hi_lo", last & 0xFFFFFFFFFFFFFFFF)):
                ranges[name].append(value)
    entries = table_of({
        "entry": range(len(assets)),
        "category": [a.primary_category for a in assets],
        "categories": [list(a.category) for a in assets],
        "bunit": [a.bunit for a in assets],
        "owner": [a.owner for a in assets],
        "priority": [a.priority for a in assets],
    }, _ENTRY_SCHEMA)
    return table_of(ranges, _RANGE_SCHEMA), entries


def create_asset_map(con: duckdb.DuckDBPyConnection, addresses: str, assets: list[Asset], target: str) -> None:
    """Create table `target` (ip, category, categories, bunit, owner, priority): each address of
    the relation `addresses` (one column `ip`, as written) with its most specific inventory entry:
    the smallest range holding it, the first listed on a tie. Addresses that are no address, or
    that no entry holds, are left out."""
    ranges, entries = inventory_tables(assets)
    con.execute(_ADDRESS_MACROS)
    con.register("_asset_ranges_arrow", ranges)
    con.register("_asset_entries_arrow", entries)
    # Staged temp tables rather than one query: with the sizes known DuckDB picks its IEJoin for
    # the two-sided range condition (0.2 s for 100,000 addresses), where the inlined CTEs got a
    # piecewise merge join 30 times slower; and a macro's argument used twice is computed twice.
    steps = {
        "_asset_addresses": f"""
            SELECT ip, contains(ip, ':') AS is_v6 FROM (SELECT DISTINCT ip FROM {addresses} WHERE ip IS NOT NULL)""",
        "_asset_bounds": """
            SELECT entry, version, (lo_hi::UHUGEINT << 64) + lo_lo AS lo, (hi_hi::UHUGEINT << 64) + hi_lo AS hi
            FROM _asset_ranges_arrow""",
        "_asset_v4": "SELECT ip, ew_ipv4(ip) AS value FROM _asset_addresses WHERE NOT is_v6",
        "_asset_bounds_v4": "SELECT entry, lo::UBIGINT AS lo, hi::UBIGINT AS hi FROM _asset_bounds WHERE version = 4",
        "_asset_v6_text": "SELECT ip, lower(split_part(ip, '%', 1)) AS a FROM _asset_addresses WHERE is_v6",
        "_asset_v6_hex": "SELECT ip, ew_v6_hex(a, ew_ipv4(regexp_extract(a, '([^:]*)$', 1))) AS s FROM _asset_v6_text",
        "_asset_v6_groups": "SELECT ip, ew_v6_groups(s) AS g FROM _asset_v6_hex",
        "_asset_v6": "SELECT ip, ew_v6_value(g) AS value FROM _asset_v6_groups",
        "_asset_hits": """
            SELECT a.ip, r.entry, (r.hi - r.lo)::UHUGEINT AS size
            FROM _asset_v4 a JOIN _asset_bounds_v4 r ON a.value >= r.lo AND a.value <= r.hi
            UNION ALL
            SELECT a.ip, r.entry, r.hi - r.lo AS size
            FROM _asset_v6 a JOIN (SELECT * FROM _asset_bounds WHERE version = 6) r ON a.value >= r.lo AND a.value <= r.hi""",
    }
    try:
        for name, sql in steps.items():
            con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}")
        con.execute(f"""
            CREATE OR REPLACE TABLE {target} AS
            WITH best AS (SELECT ip, arg_min(entry, (size, entry)) AS entry FROM _asset_hits GROUP BY ip)
            SELECT b.ip, e.category, e.categories, e.bunit, e.owner, e.priority
            FROM best b JOIN _asset_entries_arrow e USING (entry)
        """)
    finally:
        con.unregister("_asset_ranges_arrow")
        con.unregister("_asset_entries_arrow")
        for name in steps:
            con.execute(f"DROP TABLE IF EXISTS temp.main.{name}")


def match_assets(ips: list[str], assets: list[Asset]) -> pa.Table:
    """Each address with its most specific inventory entry (see `create_asset_map`), in input order."""
    con = duckdb.connect(":memory:")
    try:
        con.register("_ips_arrow", pa.table({"ip": string_array(ips), "n": int64_range(0, len(ips))}))
        create_asset_map(con, "_ips_arrow", assets, "asset_match")
        return con.sql(
            "SELECT m.* FROM (SELECT ip, min(n) AS n FROM _ips_arrow GROUP BY ip) i "
            "JOIN asset_match m USING (ip) ORDER BY i.n").to_arrow_table().cast(ASSET_MAP_SCHEMA)
    finally:
        con.close()


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
    """Create `lake.<model>` views over the committed files, enriched, pruned to [earliest, latest);
    for network traffic also the flows enriched on one side only (`network_traffic_view`)."""
    con.execute("CREATE SCHEMA IF NOT EXISTS lake")
    day = local_day_sql("_time", settings.timezone)
    for model in DATA_MODELS.values():
        base = model_sql(model, state, earliest, latest)
        if model.name == EMAIL.name:
            con.execute(f"CREATE OR REPLACE VIEW lake.email AS SELECT * REPLACE ({email_replacements(settings)}), "
                        f"{day} AS _day FROM ({base})")
            continue
        if model.name != "network_traffic":
            con.execute(f"CREATE OR REPLACE VIEW lake.{model.name} AS SELECT *, {day} AS _day FROM ({base})")
            continue
        con.execute(f"CREATE OR REPLACE VIEW lake.network_traffic_stored AS {base}")
        _refresh_asset_map(con, settings, state)
        for sides in (SIDES, *((side,) for side in SIDES)):
            con.execute(f"CREATE OR REPLACE VIEW lake.{network_traffic_view(sides)} AS "
                        f"{_network_traffic_sql(sides, day)}")


SIDES = ("src", "dest")
_ENRICHED = ("category", "categories", "bunit")  # what the inventory adds to each side, as `lake.asset_map` names it


def network_traffic_view(sides: tuple[str, ...]) -> str:
    """The name (in schema `lake`) of the flows enriched on these sides only; both: `network_traffic`."""
    return "network_traffic" if set(sides) == set(SIDES) else f"network_traffic_{'_'.join(sides)}_side"


def _network_traffic_sql(sides: tuple[str, ...], day: str) -> str:
    """The flows with the inventory's columns of each side in `sides`. `lake.asset_map` holds one
    row per address, so each LEFT JOIN keeps every flow once: a view without one side holds the
    same flows, with the same values in every column it has."""
    alias = {"src": "s", "dest": "d"}
    enriched = [f"{alias[side]}.{name} AS {side}_{name}" for name in _ENRICHED for side in sides]
    joins = " ".join(f"LEFT JOIN lake.asset_map {alias[side]} ON t.{side}_ip = {alias[side]}.ip" for side in sides)
    return f"SELECT t.*, {', '.join(enriched)}, {day} AS _day FROM lake.network_traffic_stored t {joins}"


def sides_read(columns: list[str]) -> tuple[str, ...]:
    """The sides of a flow whose inventory columns are among `columns`."""
    return tuple(side for side in SIDES if any(f"{side}_{name}" in columns for name in _ENRICHED))


def sent_by_user_sources() -> list[str]:
    """The mail sources whose every row is mail the user sent (the sender's domain does not count)."""
    return [name for name, source in SOURCES.items() if getattr(source, "sent_by_user", False)]


def email_replacements(settings: Settings) -> str:
    """`direction` and `event_type` of the `email` view, from the `internal_domains` configured now."""
    columns = query_time_columns(settings.internal_domains, sent_by_user_sources())
    return ", ".join(f"{sql} AS {name}" for name, sql in columns.items())


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
    con.register("_lake_addresses_arrow", pa.table({"ip": string_array(ips)}))
    try:
        create_asset_map(con, "_lake_addresses_arrow", list(settings.assets), "lake.asset_map")
    finally:
        con.unregister("_lake_addresses_arrow")
    con.execute("DELETE FROM lake.asset_map_key")
    con.execute("INSERT INTO lake.asset_map_key VALUES (?)", [key])


def expose_models(
    con: duckdb.DuckDBPyConnection,
    snapshot: dict[str, tuple[list[str], datetime, datetime]] | None = None,
    condition: str | None = None,
    filters: dict[str, str] | None = None,
    reads: dict[str, list[str]] | None = None,
) -> None:
    """Make each model visible by its plain name, as detections refer to it.

    With `snapshot` (model -> columns, start, end) the model becomes an in-memory table of just
    those columns and rows (and, with `condition`, only the rows that meet it), so a catch-up that
    runs one detection for many fire times scans the lake once. With `filters` (model -> a
    condition every row that matters meets) the model is a view of only those rows. Either way a
    condition on the asset category of the flows is first turned into a condition on their
    addresses (`asset_pushdown`), so the lake is filtered before the inventory is joined. With
    `reads` (model -> the only columns read of a filtered model), flows whose reader and filter
    name only one side's inventory columns are joined with the inventory on that side only.
    """
    snapshot = snapshot or {}
    filters = filters or {}
    reads = reads or {}
    for model in DATA_MODELS.values():
        _drop_temp(con, model.name)
        if model.name in snapshot:
            columns, start, end = snapshot[model.name]
            listed = ", ".join(f'"{c}"' for c in columns)
            con.execute(
                f"CREATE TEMP TABLE {model.name} AS SELECT {listed} FROM lake.{model.name} "
                f"WHERE _time >= $start AND _time < $end AND {_filtered(con, model.name, condition)} ORDER BY _time",
                {"start": start, "end": end},
            )
        elif model.name in filters:
            source = model.name
            if model.name == "network_traffic" and model.name in reads:
                # a network rule's catch-up read at 1000 users x 30 days (800,000 of 3.2 M flows)
                # took 0.40 CPU-s instead of 0.47 on the destination side, 0.30 instead of 0.34 on
                # the source side (medians of 5 alternated): DuckDB keeps an unused LEFT JOIN
                named = [*reads[model.name], *_condition_columns(filters[model.name])]
                source = network_traffic_view(sides_read(named) or SIDES)
            con.execute(f"CREATE TEMP VIEW {model.name} AS SELECT * FROM lake.{source} "
                        f"WHERE {_filtered(con, model.name, filters[model.name])}")
        else:
            con.execute(f"CREATE TEMP VIEW {model.name} AS SELECT * FROM lake.{model.name}")


def _condition_columns(condition: str | None) -> list[str]:
    import sqlglot
    from sqlglot import exp

    return [c.name for c in sqlglot.parse_one(condition, read="duckdb").find_all(exp.Column)] if condition else []


def _filtered(con: duckdb.DuckDBPyConnection, model: str, condition: str | None) -> str:
    pushed = asset_pushdown(con, condition) if model == "network_traffic" else []
    return " AND ".join([*pushed, f"({condition})" if condition else "true"])


# An address set this small goes into the query as a literal list, which DuckDB checks against
# each Parquet row group's statistics; a larger one is a semi-join.
_INLINE_ADDRESSES = 2000


def asset_pushdown(con: duckdb.DuckDBPyConnection, condition: str | None) -> list[str]:
    """Conditions on the flows' addresses implied by `condition`'s conjuncts on one side's asset
    category (`dest_category = 'email_server'`): each becomes `dest_ip IN (the addresses whose
    inventory entry meets it)`, a filter on the stored columns that needs no join.

    A conjunct is pushed only if it reads one side's category and nothing else, and is not true
    for an address outside the inventory (whose category is NULL), so no row it keeps is lost.
    """
    if not condition:
        return []
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(condition, read="duckdb")
    conjuncts = list(tree.flatten()) if isinstance(tree, exp.And) else [tree]
    pushed = []
    for conjunct in conjuncts:
        conjunct = conjunct.unnest()
        names = {column.name for column in conjunct.find_all(exp.Column)}
        if len(names) != 1 or next(iter(names)) not in ("src_category", "dest_category") \
                or conjunct.find(exp.Select, exp.Placeholder):
            continue
        side = next(iter(names)).split("_")[0]
        on_category = conjunct.copy().transform(
            lambda n: exp.column("category") if isinstance(n, exp.Column) else n).sql(dialect="duckdb")
        on_null = conjunct.copy().transform(
            lambda n: exp.Null() if isinstance(n, exp.Column) else n).sql(dialect="duckdb")
        if con.execute(f"SELECT coalesce(({on_null}), false)").fetchall()[0][0]:
            continue
        addresses = f"SELECT ip FROM lake.asset_map WHERE {on_category}"
        matching = [ip for (ip,) in con.execute(f"{addresses} LIMIT {_INLINE_ADDRESSES + 1}").fetchall()]
        if len(matching) <= _INLINE_ADDRESSES:
            listed = ", ".join("'" + ip.replace("'", "''") + "'" for ip in matching) or "NULL"
            pushed.append(f"({side}_ip IN ({listed}))")
        else:
            pushed.append(f"({side}_ip IN ({addresses}))")
    return pushed


def _drop_temp(con: duckdb.DuckDBPyConnection, name: str) -> None:
    if con.execute("SELECT 1 FROM duckdb_tables() WHERE temporary AND table_name = ?", [name]).fetchall():
        con.execute(f"DROP TABLE temp.main.{name}")
    if con.execute("SELECT 1 FROM duckdb_views() WHERE temporary AND view_name = ?", [name]).fetchall():
        con.execute(f"DROP VIEW temp.main.{name}")
