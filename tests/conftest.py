"""Shared fixtures: a fresh home folder and Zeek conn.log files written by the synth conn.log writer."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import os

import duckdb
import pytest
from hypothesis import settings as hypothesis_settings

from exfilwatch.config import Home, Settings, parse_settings
from exfilwatch.synth.writers import zeek_conn

# No per-example deadline: a shared 2-core machine makes timings noisy, and speed is measured in
# bench/, not here. In CI the examples are derandomised so that a run is reproducible.
hypothesis_settings.register_profile("exfilwatch", deadline=None, derandomize=bool(os.environ.get("CI")))
hypothesis_settings.load_profile("exfilwatch")

ZEEK_CONN_HEADER = zeek_conn.header("2026-10-01-00-00-00")


@dataclass(frozen=True)
class Flow:
    ts: float
    orig: str
    resp: str
    orig_bytes: int | None
    resp_bytes: int | None
    resp_port: int = 993
    service: str = "ssl"
    uid: str = "CAbCdEfGhIjKlMnOp1"


def _record(flow: Flow) -> zeek_conn.ConnRecord:
    return zeek_conn.ConnRecord(ts=flow.ts, orig_h=flow.orig, resp_h=flow.resp, orig_bytes=flow.orig_bytes,
                                resp_bytes=flow.resp_bytes, resp_p=flow.resp_port, service=flow.service, uid=flow.uid)


def conn_line(flow: Flow) -> str:
    return zeek_conn.line(_record(flow))


def write_conn_log(path: Path, flows: Iterable[Flow], close: bool = True) -> Path:
    return zeek_conn.write(path, [_record(f) for f in flows], close="2026-11-01-00-00-00" if close else None)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    root = tmp_path / "home"
    return Home(root=root, config_path=root / "config.yaml")


def settings_for(timezone: str = "UTC", **extra) -> Settings:
    data = {"timezone": timezone, "assets": [{"cidr": "10.10.0.0/28", "category": "email_server"}], **extra}
    return parse_settings(data, "test")


def count_of_column(home: Home, settings: Settings, model: str, column: str, older: bool) -> tuple[int, int]:
    """Rows of a model as the lake views read them, and how many have `column` set; `older`: its
    files first rewritten as a release before the column wrote them (without it)."""
    from exfilwatch.events.engine import register_lake_views
    from exfilwatch.home import open_state

    state = open_state(home)
    con = duckdb.connect()
    try:
        for path in state.lake_files(model) if older else []:
            con.execute(f"COPY (SELECT * EXCLUDE (\"{column}\") FROM read_parquet('{path}')) TO '{path}.old' "
                        "(FORMAT parquet)")
            Path(path + ".old").replace(path)
        register_lake_views(con, settings, state)
        return con.execute(f'SELECT count(*), count("{column}") FROM lake.{model}').fetchone()
    finally:
        con.close()
        state.close()
