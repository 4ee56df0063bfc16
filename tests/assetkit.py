"""The plain Python asset matcher: the reference the DuckDB range join is tested and benchmarked against.

For each address, every inventory range is tried in a loop (what a user would write with the
`ipaddress` module); the most specific entry wins: the smallest range, the first listed on a tie.
"""

from __future__ import annotations

import ipaddress

from exfilwatch.config import Asset, address_bounds


def reference_match(ips: list[str], assets: list[Asset]) -> dict[str, str | None]:
    """address as written -> the primary category of its most specific entry (absent: no entry)."""
    ranges = [(address_bounds(spec), entry, asset) for entry, asset in enumerate(assets)
              for spec in asset.address_specs()]
    out: dict[str, str | None] = {}
    for ip in ips:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            continue
        value = int(address)
        best = None
        for (version, first, last), entry, asset in ranges:
            if version == address.version and first <= value <= last:
                key = (last - first, entry)
                if best is None or key < best[0]:
                    best = (key, asset)
        if best is not None:
            out[ip] = best[1].primary_category
    return out
