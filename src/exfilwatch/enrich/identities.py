"""Identities: which person an email address, a VPN account or a host belongs to.

Sources, first match wins:

1. config.yaml `identities:` — an inline list, or the path of a CSV or YAML file (relative to the
   config file). Each entry names a `user` (the name findings use) with their `emails`,
   `vpn_accounts`, `hosts` (IP addresses or names) and `department` (the peer group). In CSV the
   list columns hold `;`-separated values:

       user,emails,vpn_accounts,hosts,department
       jsmith,john.smith@corp.example;js@corp.example,jsmith;CORP\\jsmith,10.1.2.3,finance

2. The asset inventory: a `host:` asset with an `owner` maps that host to the owner.
3. Default rules, case-insensitive, for everyone not listed:
   - an address in an internal domain → its local part (`John.Smith+x@corp.example` → `john.smith`);
   - a VPN account `DOMAIN\\user` → `user`, `user@REALM` → `user`, else the account itself.

An external address (a sender outside the internal domains) is not a user of the organisation
and stays unresolved; so does a host nobody owns. `identity_map` returns a table
(kind, key, user, department, rule) for the keys it is given, with `rule` saying how each was
resolved (null: unresolved), so counts of what could not be resolved can be shown.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import duckdb
import pyarrow as pa

from exfilwatch.config import ConfigError, Identity, Settings, read_yaml_file
from exfilwatch.events.engine import match_assets

KINDS = ("email", "vpn", "host")

RULE_FILE = "identities"
RULE_ASSET = "asset-owner"
RULE_LOCAL_PART = "internal-local-part"
RULE_DOMAIN_USER = "domain\\user"
RULE_USER_REALM = "user@realm"
RULE_ACCOUNT = "account-name"

_LIST_SPLIT = re.compile(r"[;|]")


def _split_list(value: str | None) -> list[str]:
    return [item.strip() for item in _LIST_SPLIT.split(value or "") if item.strip()]


def read_identity_file(path: Path) -> list[Identity]:
    """A CSV (header user,emails,vpn_accounts,hosts,department[,name]) or YAML list of identities."""
    if not path.exists():
        raise ConfigError(f"{path}: identities file not found")
    entries: list[dict] = []
    if path.suffix.lower() in (".yml", ".yaml"):
        data = read_yaml_file(path, "identities file")
        if isinstance(data, dict) and "identities" in data:
            data = data["identities"]
        if not isinstance(data, list):
            raise ConfigError(f"{path}: expected a list of identities")
        entries = data
    else:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "user" not in reader.fieldnames:
                raise ConfigError(f"{path}: expected a CSV header with at least a 'user' column")
            unknown = set(reader.fieldnames) - {"user", "emails", "vpn_accounts", "hosts", "department", "name"}
            if unknown:
                raise ConfigError(f"{path}: unknown columns {sorted(unknown)}")
            for row in reader:
                entries.append({
                    "user": row["user"],
                    "emails": _split_list(row.get("emails")),
                    "vpn_accounts": _split_list(row.get("vpn_accounts")),
                    "hosts": _split_list(row.get("hosts")),
                    "department": (row.get("department") or None),
                    "name": (row.get("name") or None),
                })
    identities = []
    for index, entry in enumerate(entries):
        try:
            identities.append(Identity.model_validate(entry))
        except Exception as exc:  # pydantic's message names the field
            raise ConfigError(f"{path}: identity {index + 1}: {exc}") from None
    return identities


def load_identities(settings: Settings) -> list[Identity]:
    if isinstance(settings.identities, str):
        return read_identity_file(Path(settings.identities))
    return list(settings.identities)


def normalise_account(account: str) -> tuple[str, str]:
    """(user name, rule) of a VPN account by the default rules."""
    name = account.strip().lower()
    if "\\" in name:
        return name.rsplit("\\", 1)[1], RULE_DOMAIN_USER
    if "@" in name:
        return name.split("@", 1)[0], RULE_USER_REALM
    return name, RULE_ACCOUNT


def local_part(address: str) -> str:
    local = address.strip().strip("<>").lower().rsplit("@", 1)[0]
    return local.split("+", 1)[0]


@dataclass
class IdentityResolver:
    """Resolves keys to users: explicit entries first, then the default rules."""

    internal_domains: frozenset[str]
    explicit: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, lower key) -> user
    explicit_rule: dict[tuple[str, str], str] = field(default_factory=dict)
    departments: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> "IdentityResolver":
        resolver = cls(internal_domains=frozenset(d.strip().lower() for d in settings.internal_domains if d))
        for asset in settings.assets:
            if asset.host and asset.owner:
                resolver._add("host", asset.host, asset.owner.strip().lower(), RULE_ASSET)
        for identity in load_identities(settings):
            user = identity.user.strip().lower()
            resolver.departments[user] = identity.department
            for email in identity.emails:
                resolver._add("email", email, user, RULE_FILE)
            for account in identity.vpn_accounts:
                resolver._add("vpn", account, user, RULE_FILE)
                short = normalise_account(account)[0]  # CORP\\jsmith also covers jsmith
                resolver.explicit.setdefault(("vpn", short), user)
                resolver.explicit_rule.setdefault(("vpn", short), RULE_FILE)
            for host in identity.hosts:
                resolver._add("host", host, user, RULE_FILE)
            # the user name itself is also a VPN account of theirs
            resolver.explicit.setdefault(("vpn", user), user)
            resolver.explicit_rule.setdefault(("vpn", user), RULE_FILE)
        return resolver

    def _add(self, kind: str, key: str, user: str, rule: str) -> None:
        k = (kind, key.strip().strip("<>").lower())
        self.explicit[k] = user
        self.explicit_rule[k] = rule

    def is_internal_domain(self, domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        return domain in self.internal_domains or any(domain.endswith("." + d) for d in self.internal_domains)

    def resolve(self, kind: str, key: str | None) -> tuple[str | None, str | None]:
        """(user, rule); (None, None) when the key cannot be resolved."""
        if not key or not key.strip():
            return None, None
        lowered = key.strip().strip("<>").lower()
        hit = self.explicit.get((kind, lowered))
        if hit is not None:
            return hit, self.explicit_rule[(kind, lowered)]
        if kind == "email":
            if "@" not in lowered or not self.is_internal_domain(lowered.rsplit("@", 1)[1]):
                return None, None
            return local_part(lowered) or None, RULE_LOCAL_PART
        if kind == "vpn":
            if "@" in lowered and ("email", lowered) in self.explicit:  # user@REALM that is a listed address
                return self.explicit[("email", lowered)], RULE_FILE
            name, rule = normalise_account(lowered)
            hit = self.explicit.get(("vpn", name))
            if hit is not None:
                return hit, RULE_FILE
            return (name or None), (rule if name else None)
        return None, None  # hosts: only the identities file and the asset inventory say whose they are


IDENTITY_SCHEMA = pa.schema([
    ("kind", pa.string()), ("key", pa.string()), ("user", pa.string()),
    ("department", pa.string()), ("rule", pa.string()),
])


def identity_map(resolver: IdentityResolver, keys: dict[str, Iterable[str | None]]) -> pa.Table:
    """One row per (kind, key as written): the user it resolves to, their department and the rule."""
    rows: dict[str, list] = {name: [] for name in IDENTITY_SCHEMA.names}
    for kind, values in keys.items():
        seen: set[str] = set()
        for key in values:
            if key is None or key in seen:
                continue
            seen.add(key)
            user, rule = resolver.resolve(kind, key)
            rows["kind"].append(kind)
            rows["key"].append(key)
            rows["user"].append(user)
            rows["department"].append(resolver.departments.get(user) if user else None)
            rows["rule"].append(rule)
    return pa.table(rows, schema=IDENTITY_SCHEMA)


def register_identity_map(con: duckdb.DuckDBPyConnection, settings: Settings,
                          key_queries: dict[str, str], name: str = "identity_map") -> pa.Table:
    """Create table `name`(kind, key, user, department, rule) for the keys each query selects.

    `key_queries` maps a kind (email, vpn, host) to SQL returning one column of keys; join on
    `kind` and `key` exactly as written in the events.
    """
    resolver = IdentityResolver.from_settings(settings)
    keys = {kind: [row[0] for row in con.execute(sql).fetchall()] for kind, sql in key_queries.items()}
    table = identity_map(resolver, keys)
    con.register("_identity_map_arrow", table)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM _identity_map_arrow")
    finally:
        con.unregister("_identity_map_arrow")
    return table


# --- one resolver for every entity: users, addresses, accounts, hosts, IPs -----------------------



@dataclass
class Resolved:
    risk_object: str
    risk_object_type: str
    attributes: dict[str, Any]


class EntityResolver:
    """Maps a risk object (user name, mail address, VPN account, IP, host name) to its entity.

    Users are resolved as the enrichment does (enrich/identities.py: the identities list, then the
    default rules), so risk lands on the same user name the session rules use. A system resolves
    to a user when the identities list it as one of their hosts or the asset inventory (a host or
    a network) names an `owner`; otherwise it stays a system.
    """

    def __init__(self, settings: Settings):
        self.assets = list(settings.assets)
        self.users = IdentityResolver.from_settings(settings)
        self.identities: dict[str, dict[str, Any]] = {}
        for identity in load_identities(settings):
            data = identity.model_dump()
            self.identities.setdefault(identity.user.strip().lower(), data)
        self._asset_cache: dict[str, dict[str, Any] | None] = {}

    def user_of(self, value: str) -> str | None:
        kind = "email" if "@" in value and "\\" not in value else "vpn"
        return self.users.resolve(kind, value)[0]

    def asset(self, value: str) -> dict[str, Any] | None:
        if value not in self._asset_cache:
            hosts = {a.host.lower(): a for a in self.assets if a.host}
            match = hosts.get(value.lower())
            if match is not None:
                self._asset_cache[value] = match.model_dump(exclude_none=True)
            else:
                table = match_assets([value], self.assets).to_pylist()
                self._asset_cache[value] = {k: v for k, v in table[0].items() if k != "ip" and v is not None} if table else None
        return self._asset_cache[value]

    def _user_attributes(self, user: str) -> dict[str, Any]:
        identity = self.identities.get(user)
        return {**(_identity_attrs(identity) if identity else {}), "user": user}

    def resolve(self, value: str, object_type: str) -> Resolved:
        if object_type == "system":
            attributes = dict(self.asset(value) or {})
            user, _ = self.users.resolve("host", value)
            if user is None and attributes.get("owner"):
                user = self.user_of(str(attributes["owner"])) or str(attributes["owner"]).strip().lower()
            if user is not None:
                return Resolved(user, "user", attributes | self._user_attributes(user))
            return Resolved(value, "system", attributes)
        if object_type == "user":
            user = self.user_of(value)
            if user is not None:
                return Resolved(user, "user", self._user_attributes(user))
            return Resolved(value, "user", {"user": value})
        return Resolved(value, object_type, {})

    def aliases(self, name: str) -> tuple[str, set[str]]:
        """An entity's canonical name and every name it is known by (for `exfilwatch entity`)."""
        resolved = self.resolve(name, "user" if self.user_of(name) in self.identities else "system")
        if resolved.risk_object_type != "user" and self.user_of(name) is not None and "@" not in name:
            resolved = self.resolve(name, "user")
        canonical = resolved.risk_object
        names = {name, canonical}
        identity = self.identities.get(canonical)
        if identity:
            names |= {str(v) for v in [*identity.get("emails", []), *identity.get("vpn_accounts", []),
                                       *identity.get("hosts", [])]}
        names |= {a.host for a in self.assets if a.host and a.owner and a.owner.strip().lower() == canonical}
        return canonical, names


def _identity_attrs(identity: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in identity.items() if v not in (None, [], "")}
