"""The asset category condition pushed down to addresses keeps exactly the rows the plain view keeps."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from exfilwatch.events.engine import asset_pushdown, connect, expose_models, register_lake_views
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.home import open_state

from .conftest import Flow, settings_for, write_conn_log

NY = ZoneInfo("America/New_York")


@pytest.fixture
def lake(tmp_path, home):
    settings = settings_for("America/New_York", assets=[
        {"cidr": "10.10.0.0/28", "category": "email_server"},
        {"cidr": "10.20.0.0/24", "category": "workstation"},
        {"ip": "10.20.0.9", "category": ["server", "email_server"]},  # most specific entry, two categories
    ])
    flows = []
    for hour in range(12):
        ts = datetime(2026, 10, 30, hour, tzinfo=NY).timestamp()
        flows += [Flow(ts, "10.10.0.5", "10.20.0.7", 1000 + hour, 10, resp_port=993),
                  Flow(ts, "10.20.0.7", "10.10.0.5", 20, 5000 + hour, resp_port=993),
                  Flow(ts, "10.20.0.9", "192.0.2.1", 30, 40, resp_port=443),  # to an address outside the inventory
                  Flow(ts, "198.51.100.3", "10.20.0.9", 50, 60, resp_port=25)]
    ingest_paths([write_conn_log(tmp_path / "conn.log", flows)], home, settings)
    state = open_state(home)
    con = connect(settings)
    register_lake_views(con, settings, state)
    yield con
    con.close()
    state.close()


@pytest.mark.parametrize("condition, pushed", [
    ("dest_category = 'email_server'", 1),
    ("(src_category IN ('email_server', 'server')) AND (dest_ip IS NOT NULL)", 1),
    ("src_category <> 'workstation'", 1),  # NULL for an unknown address: not true, so safe to push
    ("dest_category IS NULL", 0),  # true for addresses outside the inventory: not pushed
    ("coalesce(dest_category, 'none') = 'none'", 0),
    ("dest_category = src_category", 0),  # reads both sides
])
def test_pushed_down_view_keeps_the_rows_of_the_plain_view(lake, condition, pushed):
    con = lake
    assert len(asset_pushdown(con, condition)) == pushed
    plain = con.execute(f"SELECT * FROM lake.network_traffic WHERE {condition} ORDER BY ALL").fetchall()
    expose_models(con, filters={"network_traffic": condition})
    assert con.execute("SELECT * FROM network_traffic ORDER BY ALL").fetchall() == plain


def test_the_pushed_condition_filters_the_scan_before_the_inventory_join(lake):
    con = lake
    expose_models(con, filters={"network_traffic": "dest_category = 'email_server'"})
    plan = "\n".join(row[1] for row in con.execute("EXPLAIN SELECT * FROM network_traffic").fetchall())
    # The address list is a filter of the Parquet scan itself, below the joins with the asset map.
    scan = plan[plan.rindex("READ_PARQUET") if "READ_PARQUET" in plan else plan.rindex("PARQUET_SCAN"):]
    assert "10.10.0.5" in scan


@pytest.mark.parametrize("condition, reads", [
    ("dest_category = 'email_server'", ["_time", "_day", "src_ip", "dest_category", "bytes_in"]),
    ("src_category = 'email_server'", ["_time", "_day", "dest_ip", "src_category", "bytes_out"]),
    ("(src_category IN ('email_server', 'server')) AND (dest_ip IS NOT NULL)", ["_time", "dest_ip", "bytes_out"]),
    ("dest_category IS NULL", ["_time", "src_ip", "src_bunit", "src_categories"]),  # reads one side, filters on the other
])
def test_a_reader_of_one_side_gets_the_flows_and_values_of_the_plain_view(lake, condition, reads):
    """A reader that names its columns (the catch-up's lake read) may get flows joined with the
    inventory on the side it uses only: the same flows, with the same values in those columns,
    an address in two entries (the most specific wins) or outside the inventory included."""
    con = lake
    listed = ", ".join(reads)
    plain = con.execute(f"SELECT {listed} FROM lake.network_traffic WHERE {condition} ORDER BY ALL").fetchall()
    expose_models(con, filters={"network_traffic": condition}, reads={"network_traffic": reads})
    assert con.execute(f"SELECT {listed} FROM network_traffic ORDER BY ALL").fetchall() == plain
    assert plain


def test_a_reader_of_one_side_is_not_joined_with_the_inventory_on_the_other(lake):
    con = lake
    expose_models(con, filters={"network_traffic": "dest_category = 'email_server'"},
                  reads={"network_traffic": ["_time", "src_ip", "dest_category", "bytes_in"]})
    plan = "\n".join(row[1] for row in con.execute("EXPLAIN SELECT src_ip, dest_category FROM network_traffic")
                     .fetchall())
    assert "dest_ip = ip" in plan and "src_ip = ip" not in plan
