"""Shared fixtures: a fresh home folder and a writer of Zeek conn.log files in the real format."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import os

import pytest
from hypothesis import settings as hypothesis_settings

from exfilwatch.config import Home, Settings, parse_settings

# No per-example deadline: a shared 2-core machine makes timings noisy, and speed is measured in
# bench/, not here. In CI the examples are derandomised so that a run is reproducible.
hypothesis_settings.register_profile("exfilwatch", deadline=None, derandomize=bool(os.environ.get("CI")))
hypothesis_settings.load_profile("exfilwatch")

ZEEK_CONN_HEADER = (
    "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n"
    "#open\t2026-10-01-00-00-00\n"
    "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\torig_bytes\t"
    "resp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\thistory\torig_pkts\torig_ip_bytes\tresp_pkts\t"
    "resp_ip_bytes\ttunnel_parents\n"
    "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring\tbool\tbool\t"
    "count\tstring\tcount\tcount\tcount\tcount\tset[string]\n"
)


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


def conn_line(flow: Flow) -> str:
    def value(v):
        return "-" if v is None else str(v)

    return "\t".join([
        f"{flow.ts:.6f}", flow.uid, flow.orig, "51234", flow.resp, str(flow.resp_port), "tcp", flow.service,
        "1.500000", value(flow.orig_bytes), value(flow.resp_bytes), "SF", "T", "T", "0", "ShADadFf",
        "10", "1000", "10", "1000", "(empty)",
    ])


def write_conn_log(path: Path, flows: Iterable[Flow], close: bool = True) -> Path:
    with open(path, "w") as handle:
        handle.write(ZEEK_CONN_HEADER)
        for flow in flows:
            handle.write(conn_line(flow) + "\n")
        if close:
            handle.write("#close\t2026-11-01-00-00-00\n")
    return path


@pytest.fixture
def home(tmp_path: Path) -> Home:
    root = tmp_path / "home"
    return Home(root=root, config_path=root / "config.yaml")


def settings_for(timezone: str = "UTC", **extra) -> Settings:
    data = {"timezone": timezone, "assets": [{"cidr": "10.10.0.0/28", "category": "email_server"}], **extra}
    return parse_settings(data, "test")
