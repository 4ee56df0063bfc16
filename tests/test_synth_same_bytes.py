"""The generator writes the same bytes as before it was made to stream (commit 80d1d54).

The digests below are of files that 80d1d54's code wrote for these parameters (with the project's
pinned numpy, pyarrow and DuckDB). The generator now writes each file with its own spilling DuckDB
connection, sorts the maillog a time slice at a time, and takes the network generator's flows as
record batches into conn.log (never as text); none of it may change a byte. The tests also cut the
network's flows into batches of 1,000 rows and the maillog into slices of 500 lines, so that batch
and slice boundaries fall inside the files.
"""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import pytest

from exfilwatch.synth import network
from exfilwatch.synth.network import generate_network
from exfilwatch.synth.org import generate_organisation
from exfilwatch.synth.writers import _text

END = date(2026, 10, 31)

POSTFIX_WITH_NETWORK = {
    'config.yaml': 'bd6094cd42b90b48',
    'conn.log': '0ea03ff9a8d906e5',
    'labels.csv': 'ec97704c26d59ca1',
    'maillog': '4bebf7f70b8cf4a1',
    'network_labels.csv': '98e438ce28d8f888',
    'vpn.log': '1e4ad257db076ad4',
}

EXCHANGE_ICS22 = {
    'MessageTracking/MSGTRK20261018-1.LOG': 'c33b08068252c3b4',
    'MessageTracking/MSGTRK20261019-1.LOG': '022d82ea9d154ed6',
    'MessageTracking/MSGTRK20261020-1.LOG': '9dbda011d266d935',
    'MessageTracking/MSGTRK20261021-1.LOG': '1cbe6d7f3e7d0236',
    'MessageTracking/MSGTRK20261022-1.LOG': 'f884fae2131ca46d',
    'MessageTracking/MSGTRK20261023-1.LOG': 'e4ecedec561abc3c',
    'MessageTracking/MSGTRK20261024-1.LOG': 'fb05675699e87ac0',
    'MessageTracking/MSGTRK20261025-1.LOG': 'c9785d4fa854b7f8',
    'MessageTracking/MSGTRK20261026-1.LOG': '9c4608c046c68a28',
    'MessageTracking/MSGTRK20261027-1.LOG': 'cff01c282941ada2',
    'MessageTracking/MSGTRK20261028-1.LOG': '7b2cabd7ee524241',
    'MessageTracking/MSGTRK20261029-1.LOG': 'b586ef49799b4d86',
    'MessageTracking/MSGTRK20261030-1.LOG': 'db830b39d060467e',
    'MessageTracking/MSGTRK20261031-1.LOG': '1f53ef92256c9bac',
    'MessageTracking/MSGTRK20261101-1.LOG': 'be390c7a5326365c',
    'config.yaml': 'fc16777d9b5641e2',
    'conn.log': '1aaa06247fe954d7',
    'labels.csv': 'd1afd10215ef0521',
    'vpn.log': 'b9ea259684d15bb5',
}

NETWORK = {
    'config.yaml': '567d2ad599f97aaa',
    'conn.log': '5c9182497cddd497',
    'labels.csv': '27e53813873a5fb4',
}


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_postfix_organisation_with_network_flows_is_byte_identical_to_80d1d54(tmp_path):
    ds = generate_organisation(tmp_path, users=40, days=14, seed=3, end=END)
    assert not ds.network_note  # the network generator's flows are in conn.log
    assert _digests(tmp_path) == POSTFIX_WITH_NETWORK


def test_maillog_in_many_time_slices_and_conn_log_merged_from_many_batches_are_byte_identical_to_80d1d54(
        tmp_path, monkeypatch):
    monkeypatch.setattr(network, "_BATCH_ROWS", 1000)  # the network's ~60 k flows reach conn.log in ~60 slices
    whole = _text.time_slices
    slices: list[int] = []

    def small_slices(times, lines: int) -> list[int]:
        bounds = whole(times, lines, 500)
        slices.append(len(bounds) - 1)
        return bounds

    monkeypatch.setattr(_text, "time_slices", small_slices)
    generate_organisation(tmp_path, users=40, days=14, seed=3, end=END)
    assert slices and min(slices) > 20  # the maillog written in many slices
    assert _digests(tmp_path) == POSTFIX_WITH_NETWORK


def test_exchange_organisation_is_byte_identical_to_80d1d54(tmp_path):
    generate_organisation(tmp_path, users=30, days=14, seed=4, end=END, mail="exchange", network=False,
                          vpn_syslog="ics22")
    assert _digests(tmp_path) == EXCHANGE_ICS22


@pytest.mark.parametrize("batch_rows", [network._BATCH_ROWS, 1000])
def test_network_conn_log_is_byte_identical_to_80d1d54_whatever_the_batch(tmp_path, monkeypatch, batch_rows):
    monkeypatch.setattr(network, "_BATCH_ROWS", batch_rows)
    ds = generate_network(tmp_path, days=9, hosts=25, seed=2, flows_per_host_day=120)
    assert ds.flows > 5 * 1000  # several batches at 1,000 rows
    assert _digests(tmp_path) == NETWORK
