"""Config files: defaults, and clear errors that name the file and the key."""

from __future__ import annotations

import pytest

from exfilwatch.config import ConfigError, load_settings, resolve_home
from exfilwatch.events.engine import match_assets
from exfilwatch.config import Asset


def write(tmp_path, text):
    (tmp_path / "config.yaml").write_text(text)
    return resolve_home(tmp_path)


def test_a_home_without_config_uses_defaults(tmp_path):
    settings = load_settings(resolve_home(tmp_path))
    assert settings.timezone == "UTC" and settings.assets == []


def test_home_from_environment_and_explicit_config(tmp_path, monkeypatch):
    monkeypatch.setenv("EXFILWATCH_HOME", str(tmp_path / "env-home"))
    assert resolve_home(None).root == tmp_path / "env-home"
    assert resolve_home(tmp_path / "given").root == tmp_path / "given"
    other = tmp_path / "other.yaml"
    other.write_text("timezone: Europe/Berlin\n")
    assert load_settings(resolve_home(tmp_path, other)).timezone == "Europe/Berlin"
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_settings(resolve_home(tmp_path, tmp_path / "missing.yaml"))


def test_mistyped_key_names_file_and_key(tmp_path):
    home = write(tmp_path, "timezone: UTC\nasets:\n  - cidr: 10.0.0.0/8\n    category: x\n")
    with pytest.raises(ConfigError) as err:
        load_settings(home)
    assert f"{tmp_path / 'config.yaml'}: key 'asets': unknown key (mistyped?)" in str(err.value)


def test_bad_cidr_and_bad_timezone_name_the_key(tmp_path):
    home = write(tmp_path, "timezone: Mars/Olympus\nassets:\n  - cidr: 10.0.0.300/24\n    category: email_server\n")
    with pytest.raises(ConfigError) as err:
        load_settings(home)
    message = str(err.value)
    assert "key 'timezone': unknown IANA time zone 'Mars/Olympus'" in message
    assert "key 'assets[0].cidr': not an IPv4 or IPv6 network: '10.0.0.300/24'" in message


def test_asset_needs_cidr_or_host(tmp_path):
    home = write(tmp_path, "assets:\n  - category: email_server\n")
    with pytest.raises(ConfigError, match=r"assets\[0\]': each asset needs exactly one of 'cidr' or 'host'"):
        load_settings(home)


def test_assets_match_the_most_specific_entry_for_ipv4_and_ipv6():
    assets = [
        Asset(cidr="10.0.0.0/8", category="internal"),
        Asset(cidr="10.10.0.0/28", category="email_server", bunit="it"),
        Asset(cidr="2001:db8::/32", category="internal"),
        Asset(cidr="2001:db8:25::/48", category="email_server"),
        Asset(host="10.10.0.7", category="backup"),
    ]
    table = match_assets(["10.10.0.5", "10.99.1.1", "10.10.0.7", "2001:db8:25::1", "2001:db8:1::1", "8.8.8.8", "bogus"],
                         assets).to_pylist()
    got = {row["ip"]: row["category"] for row in table}
    assert got == {"10.10.0.5": "email_server", "10.99.1.1": "internal", "10.10.0.7": "backup",
                   "2001:db8:25::1": "email_server", "2001:db8:1::1": "internal"}
