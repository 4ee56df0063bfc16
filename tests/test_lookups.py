"""The lookup files users already keep: Splunk ES identity and asset lookups, HR exports, any CSV
with a column mapping; the asset inventory matched by a DuckDB range join, checked against the
plain Python matcher."""

from __future__ import annotations

import ipaddress
import shutil
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from exfilwatch.config import Asset, ConfigError, load_settings, resolve_home
from exfilwatch.enrich.identities import EntityResolver, IdentityResolver, load_identities, parse_identity_date
from exfilwatch.events.engine import create_asset_map, match_assets
from exfilwatch.risk.events import risk_events_for
from tests.assetkit import reference_match

FIXTURES = Path(__file__).parent / "fixtures" / "lookups"
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _home(tmp_path: Path, config: str, *files: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in files:
        shutil.copy(FIXTURES / name, tmp_path / name)
    (tmp_path / "config.yaml").write_text("timezone: Europe/Berlin\ninternal_domains: [corp.example]\n" + config)
    return load_settings(resolve_home(tmp_path))


# --- identities ----------------------------------------------------------------------------------------------


def _identity_view(settings) -> dict:
    resolver = IdentityResolver.from_settings(settings)
    people = {i.user: i for i in load_identities(settings)}
    return {
        "users": sorted(people),
        "resolved": [resolver.resolve("email", "Alice.Smith@corp.example")[0], resolver.resolve("vpn", "asmith")[0],
                     resolver.resolve("vpn", "CORP\\ASmith")[0], resolver.resolve("vpn", "bjones")[0],
                     resolver.resolve("vpn", "cwhite")[0]],
        "departments": {u: p.department for u, p in people.items()},
        "priority": {u: p.priority for u, p in people.items()},
        "watchlist": sorted(u for u, p in people.items() if p.watchlist),
        "manager": people["bob.jones"].manager,
        "end": people["bob.jones"].end_date, "start": people["carol.white"].start_date,
    }


def test_a_splunk_es_identity_lookup_and_an_hr_export_resolve_the_same_users(tmp_path):
    es = _identity_view(_home(tmp_path / "es", "identities: es_identities.csv\n", "es_identities.csv"))
    hr = _identity_view(_home(tmp_path / "hr", "identities: hr_identities.csv\n", "hr_identities.csv"))
    assert es == hr
    assert es["resolved"] == ["alice.smith", "alice.smith", "alice.smith", "bob.jones", "carol.white"]
    assert es["departments"] == {"alice.smith": "finance", "bob.jones": "sales", "carol.white": "exec"}
    assert es["watchlist"] == ["alice.smith"] and es["priority"]["carol.white"] == "critical"
    assert es["end"] == datetime(2026, 10, 31, 16, 0, tzinfo=UTC)  # 17:00 in the configured zone (CET)


def test_hr_export_rows_of_one_user_merge_and_other_columns_stay_attributes(tmp_path):
    settings = _home(tmp_path, "identities: hr_identities.csv\n", "hr_identities.csv")
    alice = next(i for i in load_identities(settings) if i.user == "alice.smith")
    assert alice.vpn_accounts == ["asmith", "CORP\\asmith"]
    assert alice.attributes == {"title": "Head of Treasury", "Cost Centre": "4711"}
    es = _home(tmp_path / "es", "identities: es_identities.csv\n", "es_identities.csv")
    es_alice = next(i for i in load_identities(es) if i.user == "alice.smith")
    assert es_alice.name == "Alice Smith" and es_alice.category == ["privileged", "officer"]
    assert es_alice.attributes["work_city"] == "Berlin" and es_alice.attributes["prefix"] == "Ms."


def test_any_csv_works_with_a_column_mapping(tmp_path):
    settings = _home(tmp_path, "identities: custom_identities.csv\n"
                               "identity_columns: {Login Name: user, Remote Access ID: vpn_accounts}\n",
                     "custom_identities.csv")
    resolver = IdentityResolver.from_settings(settings)
    assert resolver.resolve("vpn", "asmith")[0] == "asmith-adm"
    assert load_identities(settings)[0].department == "finance"
    (tmp_path / "config.yaml").write_text("identities: custom_identities.csv\nidentity_columns: {Login Name: usr}\n")
    with pytest.raises(ConfigError, match="column 'Login Name' maps to 'usr', not an identity field"):
        load_identities(load_settings(resolve_home(tmp_path)))


def test_identity_dates_in_splunk_es_formats_and_bad_dates_name_the_line(tmp_path):
    berlin = _home(tmp_path, "").tz
    assert parse_identity_date("1546329600", berlin) == datetime(2019, 1, 1, 8, 0, tzinfo=UTC)
    assert parse_identity_date("01/15/19 09:00", berlin) == datetime(2019, 1, 15, 8, 0, tzinfo=UTC)
    (tmp_path / "people.csv").write_text("identity,endDate\nann,31/12/2026\n")
    (tmp_path / "config.yaml").write_text("identities: people.csv\n")
    with pytest.raises(ConfigError, match=r"people.csv:2: column 'endDate': not a date: '31/12/2026'"):
        load_identities(load_settings(resolve_home(tmp_path)))


def test_priority_watchlist_and_a_leavers_end_date_feed_risk_modifiers(tmp_path):
    settings = _home(tmp_path, "identities: es_identities.csv\nrisk_modifiers:\n"
                               "  - {name: watchlist, match: {watchlist: true}, multiply: 2}\n"
                               "  - {name: leaver, match: {identity_ended: true}, add: 50}\n",
                     "es_identities.csv")
    resolver = EntityResolver(settings)

    def score(user: str, when: str) -> tuple[float, list[str]]:
        finding = {"finding_key": "k", "detection_id": "d", "time": when, "message": "m", "fields": {},
                   "risk_objects": [{"field": "user", "value": user, "type": "user", "score": 20}]}
        [event] = risk_events_for(finding, [], resolver, settings.risk_modifiers, NOW)
        return event.score, [m["modifier"] for m in event.modifiers]

    assert score("alice.smith@corp.example", "2026-11-01T10:00:00+00:00") == (40, ["watchlist"])
    assert score("bjones", "2026-10-31T15:59:00+00:00") == (20, [])  # still employed
    assert score("bjones", "2026-11-02T09:00:00+00:00") == (70, ["leaver"])  # mail after the end date
    assert resolver.resolve("bjones", "user", NOW).attributes["priority"] == "medium"


# --- assets --------------------------------------------------------------------------------------------------


ADDRESSES = ["10.10.0.5", "10.20.1.15", "10.20.9.9", "10.30.0.7", "10.30.0.10", "2001:DB8:25:0::1", "8.8.8.8"]


def _asset_view(settings) -> dict:
    matched = {row["ip"]: (row["category"], row["categories"], row["bunit"], row["priority"])
               for row in match_assets(ADDRESSES, settings.assets).to_pylist()}
    resolver = EntityResolver(settings)
    return {"matched": matched,
            "ceo": resolver.resolve("ceo-desktop", "system").risk_object,
            "laptop": resolver.resolve("FIN-LT-0015.CORP.EXAMPLE", "system").risk_object,
            "by_address": resolver.resolve("10.20.1.15", "system").risk_object,
            "mail": resolver.asset("MailGW-01")["categories"]}


def test_a_splunk_es_asset_lookup_and_an_inventory_export_resolve_the_same_assets(tmp_path):
    es = _asset_view(_home(tmp_path / "es", "assets_file: es_assets.csv\n", "es_assets.csv"))
    hr = _asset_view(_home(tmp_path / "hr", "assets_file: hr_assets.csv\n", "hr_assets.csv"))
    assert es == hr
    assert es["matched"] == {
        "10.10.0.5": ("email_server", ["email_server", "pci"], "it", "high"),
        "10.20.1.15": ("laptop", ["laptop"], "finance", "medium"),  # the host beats its /16
        "10.20.9.9": ("workstation", ["workstation"], "finance", "informational"),
        "10.30.0.7": ("backup", ["backup", "storage"], "it", "unknown"),  # inside the a-b range
        "2001:DB8:25:0::1": ("email_server", ["email_server"], "it", "high"),  # compared in canonical form
    }
    assert (es["ceo"], es["laptop"], es["by_address"]) == ("bob.jones", "alice.smith", "alice.smith")
    assert es["mail"] == ["email_server", "pci"]


def test_inline_assets_come_first_and_the_file_adds_to_them(tmp_path):
    settings = _home(tmp_path, "assets:\n  - {host: 10.10.0.5, category: relay}\nassets_file: es_assets.csv\n",
                     "es_assets.csv")
    got = {r["ip"]: r["category"] for r in match_assets(["10.10.0.5", "10.10.0.6"], settings.assets).to_pylist()}
    assert got == {"10.10.0.5": "relay", "10.10.0.6": "email_server"}


@pytest.mark.parametrize("row, message", [
    ("10.30.0.999,,x", r"assets.csv:3: column 'ip': not an IPv4 or IPv6 address, network or range: '10.30.0.999'"),
    ("10.0.0.9-10.0.0.1,,x", r"assets.csv:3: column 'ip': .*range's ends must be of one IP version and in order"),
    ("10.0.0.1,urgent,x", r"assets.csv:3: column 'priority': Input should be 'unknown', 'informational'"),
])
def test_a_value_that_can_never_match_names_the_file_line_and_column(tmp_path, row, message):
    (tmp_path / "assets.csv").write_text(f"ip,priority,category\n10.0.0.1,low,a\n{row}\n")
    (tmp_path / "config.yaml").write_text("assets_file: assets.csv\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(resolve_home(tmp_path))


def test_the_network_view_keeps_the_primary_category_and_lists_all(tmp_path):
    """`src_category = 'email_server'` (the shipped detections' SQL) holds for `email_server|pci`;
    `list_contains(src_categories, 'pci')` finds the rest."""
    settings = _home(tmp_path, "assets_file: es_assets.csv\n", "es_assets.csv")
    con = duckdb.connect(":memory:")
    con.execute("CREATE TABLE flows AS SELECT * FROM (VALUES ('10.10.0.3'), ('10.20.3.3')) t(ip)")
    create_asset_map(con, "flows", settings.assets, "asset_map")
    rows = con.execute("SELECT ip FROM flows JOIN asset_map USING (ip) WHERE category = 'email_server' "
                       "AND list_contains(categories, 'pci')").fetchall()
    assert rows == [("10.10.0.3",)]


# --- the range join agrees with the plain Python matcher -----------------------------------------------------


def _v4(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def _v6_text(value: int, form: int) -> str:
    address = ipaddress.IPv6Address(value)
    return [address.compressed, address.exploded, address.compressed.upper(), address.exploded.lstrip("0") or "0"][form]


_addresses4 = st.integers(0, 2**32 - 1).map(_v4)
_addresses6 = st.builds(_v6_text, st.integers(0, 2**128 - 1) | st.integers(0x20010DB8 << 96, (0x20010DB8 << 96) + 2**40),
                        st.integers(0, 3))
_networks4 = st.builds(lambda v, p: str(ipaddress.ip_network((v, p), strict=False)), st.integers(0, 2**32 - 1),
                       st.integers(0, 32))
_networks6 = st.builds(lambda v, p: str(ipaddress.ip_network(((0x20010DB8 << 96) + v, p), strict=False)),
                       st.integers(0, 2**40), st.integers(32, 128))
_ranges4 = st.builds(lambda a, b: f"{_v4(min(a, b))}-{_v4(max(a, b))}", st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))


@hsettings(max_examples=60, deadline=None)
@given(specs=st.lists(_networks4 | _networks6 | _ranges4 | _addresses4, min_size=1, max_size=12),
       ips=st.lists(_addresses4 | _addresses6 | st.sampled_from(["bogus", "010.1.2.3", "1:2:3", "::ffff:10.0.0.1",
                                                                 "1.2.3.256", "fe80::1::2", ""]),
                    min_size=1, max_size=30))
def test_the_duckdb_range_join_agrees_with_the_python_matcher(specs, ips):
    assets = [Asset(ip=spec, category=f"c{index}") for index, spec in enumerate(specs)]
    # addresses inside the generated networks, so matches are common
    ips = ips + [str(ipaddress.ip_network(spec.split("-")[0], strict=False).network_address) for spec in specs]
    got = {row["ip"]: row["category"] for row in match_assets(ips, assets).to_pylist()}
    assert got == reference_match(ips, assets)
