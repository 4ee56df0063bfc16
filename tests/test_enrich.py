"""Identities and recipient domains."""

from __future__ import annotations

from pathlib import Path

import pytest

from exfilwatch.config import ConfigError, load_settings, parse_settings, resolve_home
from exfilwatch.enrich.domains import DomainClassifier, registered_domain
from exfilwatch.enrich.identities import IdentityResolver, load_identities


@pytest.mark.parametrize("domain, registered, klass", [
    ("gmail.com", "gmail.com", "personal"),
    ("GoogleMail.com", "googlemail.com", "personal"),
    ("hotmail.co.uk", "hotmail.co.uk", "personal"),
    ("yahoo.co.jp", "yahoo.co.jp", "personal"),
    ("gmx.de", "gmx.de", "personal"),
    ("mail.yandex.ru", "yandex.ru", "personal"),
    ("comcast.net", "comcast.net", "personal"),
    ("mailinator.com", "mailinator.com", "disposable"),
    ("corp.example", "corp.example", "internal"),
    ("eu.mail.corp.example", "corp.example", "internal"),
    ("mx.partner.co.uk", "partner.co.uk", "external"),
    ("partner017.example", "partner017.example", "external"),
    ("[10.1.2.3]", "10.1.2.3", "external"),
])
def test_domain_classes(domain, registered, klass):
    classifier = DomainClassifier.build(internal=["corp.example"])
    assert classifier.classify(domain) == (registered, klass)


def test_personal_list_can_be_extended_and_reduced_in_config():
    settings = parse_settings({"internal_domains": ["corp.example"],
                               "personal_domains": {"add": ["isp.example", "freemail.*"], "remove": ["gmail.com", "yahoo.*"]}},
                              "test")
    classifier = DomainClassifier.from_settings(settings)
    assert classifier.classify("isp.example")[1] == "personal"
    assert classifier.classify("freemail.co.uk")[1] == "personal"
    assert classifier.classify("gmail.com")[1] == "external"
    assert classifier.classify("yahoo.fr")[1] == "external"


def test_registered_domain_is_offline_and_handles_addresses():
    assert registered_domain("Bob@Mail.Example.CO.UK") == "example.co.uk"
    assert registered_domain("") == ""


def test_identity_file_csv_and_yaml(tmp_path: Path):
    (tmp_path / "people.csv").write_text(
        "user,emails,vpn_accounts,hosts,department\n"
        "jsmith,john.smith@corp.example;js@corp.example,CORP\\jsmith,10.1.2.3,finance\n")
    (tmp_path / "config.yaml").write_text("internal_domains: [corp.example]\nidentities: people.csv\n")
    settings = load_settings(resolve_home(tmp_path))
    [person] = load_identities(settings)
    assert person.emails == ["john.smith@corp.example", "js@corp.example"] and person.department == "finance"
    resolver = IdentityResolver.from_settings(settings)
    assert resolver.resolve("email", "JS@corp.example") == ("jsmith", "identities")
    assert resolver.resolve("vpn", "jsmith")[0] == "jsmith"
    assert resolver.resolve("vpn", "CORP\\JSmith")[0] == "jsmith"
    assert resolver.resolve("host", "10.1.2.3")[0] == "jsmith"
    (tmp_path / "people.yaml").write_text("- user: ann\n  emails: [ann.lee@corp.example]\n")
    (tmp_path / "config.yaml").write_text("identities: people.yaml\n")
    assert [i.user for i in load_identities(load_settings(resolve_home(tmp_path)))] == ["ann"]
    (tmp_path / "bad.csv").write_text("name,mail\nx,y\n")
    (tmp_path / "config.yaml").write_text("identities: bad.csv\n")
    with pytest.raises(ConfigError, match="'user' column"):
        load_identities(load_settings(resolve_home(tmp_path)))


def test_default_rules():
    resolver = IdentityResolver.from_settings(parse_settings({"internal_domains": ["corp.example"],
                                                              "assets": [{"host": "10.9.9.9", "category": "laptop",
                                                                          "owner": "Dana"}]}, "t"))
    assert resolver.resolve("email", "Dana.Lee+news@EU.Corp.Example") == ("dana.lee", "internal-local-part")
    assert resolver.resolve("email", "someone@gmail.com") == (None, None)
    assert resolver.resolve("vpn", "CORP\\Dana") == ("dana", "domain\\user")
    assert resolver.resolve("vpn", "dana@CORP.EXAMPLE") == ("dana", "user@realm")
    assert resolver.resolve("vpn", "Dana") == ("dana", "account-name")
    assert resolver.resolve("host", "10.9.9.9") == ("dana", "asset-owner")
    assert resolver.resolve("host", "10.9.9.8") == (None, None)
