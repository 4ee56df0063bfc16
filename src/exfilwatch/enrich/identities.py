"""Identities: which person an email address, a VPN account or a host belongs to.

Sources, first match wins:

1. config.yaml `identities:` — an inline list, or the path of a CSV or YAML file (relative to the
   config file). Each entry names a `user` (the name findings use) with their `emails`,
   `vpn_accounts`, `hosts` (IP addresses or names) and `department` (the peer group). The file
   may be a Splunk ES identity lookup as it is (`identity` `|`-separated, the first name the
   user; `bunit` the peer group; `priority`, `watchlist`, `category`, `startDate`/`endDate`), an
   HR export with its own column names (singular or plural, known synonyms; rows of one user
   merged; other columns kept as attributes), or any CSV with `identity_columns:` mapping its
   columns to ours. In our own CSV form the list columns hold `;`- or `|`-separated values:

       user,emails,vpn_accounts,hosts,department
       jsmith,john.smith@corp.example;js@corp.example,jsmith;CORP\\jsmith,10.1.2.3,finance

2. The asset inventory: an asset with an `owner` maps its names (`host`, `nt_host`, `dns`) and
   single addresses to the owner.
3. Default rules, case-insensitive, for everyone not listed:
   - an address in an internal domain → its local part (`John.Smith+x@corp.example` → `john.smith`);
   - a VPN account `DOMAIN\\user` → `user`, `user@REALM` → `user`, else the account itself.

An external address (a sender outside the internal domains) is not a user of the organisation
and stays unresolved; so does a host nobody owns. `identity_map` returns a table
(kind, key, user, department, rule) for the keys it is given, with `rule` saying how each was
resolved (null: unresolved), so counts of what could not be resolved can be shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from pydantic import ValidationError

from exfilwatch.config import Asset, ConfigError, Identity, Settings, address_bounds
from exfilwatch.events.engine import match_assets
from exfilwatch.sources.arrow import table_of
from exfilwatch.lookups import LookupRow, field_of, read_lookup_rows, row_error

KINDS = ("email", "vpn", "host")

RULE_FILE = "identities"
RULE_ASSET = "asset-owner"
RULE_LOCAL_PART = "internal-local-part"
RULE_DOMAIN_USER = "domain\\user"
RULE_USER_REALM = "user@realm"
RULE_ACCOUNT = "account-name"

_LIST_SPLIT = re.compile(r"[;|]")

# The columns of a Splunk ES identity lookup and of HR exports → Identity fields (lookups.field_of
# also tries the singular and plural of each). Other columns are kept as `attributes`.
IDENTITY_SYNONYMS = {
    **{name: name for name in ("user", "emails", "hosts", "department", "name", "manager", "priority", "watchlist",
                               "category", "identity", "email", "title")},
    "username": "user", "userid": "user", "login": "user", "samaccountname": "user", "uid": "user",
    "employee": "user", "account": "vpn_accounts",
    "mail": "emails", "emailaddress": "emails", "emailaddresse": "emails", "mailaddress": "emails", "smtp": "emails",
    "proxyaddress": "emails", "upn": "emails", "userprincipalname": "emails",
    "vpnaccount": "vpn_accounts", "vpnuser": "vpn_accounts", "vpnlogin": "vpn_accounts", "vpnusername": "vpn_accounts",
    "host": "hosts", "ip": "hosts", "ipaddress": "hosts", "workstation": "hosts", "laptop": "hosts", "computer": "hosts",
    "dept": "department", "bunit": "department", "businessunit": "department", "division": "department",
    "orgunit": "department", "team": "department",
    "fullname": "name", "displayname": "name", "nick": "nick",
    "managedby": "manager", "supervisor": "manager", "reportsto": "manager", "linemanager": "manager",
    "jobtitle": "title", "position": "title", "criticality": "priority", "risklevel": "priority",
    "startdate": "start_date", "hiredate": "start_date", "start": "start_date", "joindate": "start_date",
    "enddate": "end_date", "terminationdate": "end_date", "leavedate": "end_date", "lastday": "end_date",
    "exitdate": "end_date",
}
# Splunk ES documents %m/%d/%Y %H:%M, %m/%d/%y %H:%M and epoch seconds; HR exports write ISO dates.
_DATE_FORMATS = ("%m/%d/%Y %H:%M", "%m/%d/%y %H:%M", "%m/%d/%Y", "%m/%d/%y", "%Y-%m-%d", "%Y-%m-%d %H:%M",
                 "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%d.%m.%Y")
_LIST_FIELDS = ("emails", "vpn_accounts", "hosts", "category")


def _split_list(value: str | None) -> list[str]:
    return [item.strip() for item in _LIST_SPLIT.split(value or "") if item.strip()]


def parse_identity_date(text: str, tz: tzinfo) -> datetime:
    """A start or end date as Splunk ES or an HR export writes it; times without a zone are in `tz`."""
    text = text.strip()
    if re.fullmatch(r"\d{9,11}(\.\d+)?", text):
        return datetime.fromtimestamp(float(text), timezone.utc)
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=tz)
        except ValueError:
            continue
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a date: {text!r} (e.g. 12/31/2026 17:00, 2026-12-31 or epoch seconds)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)


def _identity_fields(path: Path, row: LookupRow, columns: dict[str, str], tz: tzinfo) -> tuple[dict, dict[str, str]]:
    """The Identity fields of one row, and field -> column for messages."""
    fields: dict[str, Any] = {"attributes": {}}
    names: dict[str, str] = {}
    for key, value in row.values.items():
        column = row.columns[key]
        name = field_of(column, IDENTITY_SYNONYMS, columns)
        if name in ("title", "nick"):  # known attributes kept by their plain name
            fields["attributes"].setdefault(name, value)
            continue
        if name is None:
            fields["attributes"][column] = value
            continue
        if name not in Identity.model_fields and name not in ("identity", "email"):
            raise ConfigError(f"{path}: column '{column}' maps to {name!r}, not an identity field "
                              f"({', '.join(f for f in Identity.model_fields if f != 'attributes')})")
        names.setdefault(name, column)
        if name == "identity":  # Splunk ES: `|`-separated names; the first is the user
            for item in _split_list(value):
                fields.setdefault("user", item)
                fields.setdefault("emails" if "@" in item else "vpn_accounts", []).append(item)
        elif name in _LIST_FIELDS or name == "email":
            fields.setdefault("emails" if name == "email" else name, []).extend(_split_list(value))
        elif name in ("start_date", "end_date"):
            try:
                fields[name] = parse_identity_date(value, tz)
            except ValueError as exc:
                raise ConfigError(f"{path}:{row.line}: column '{column}': {exc}") from None
        elif name == "watchlist":
            fields[name] = value.strip().lower() in ("true", "1", "yes", "t", "y")
        else:
            fields.setdefault(name, value)
    if "user" not in fields and "@" in (fields.get("emails") or [""])[0]:
        fields["user"] = local_part(fields["emails"][0])  # an HR export keyed by mail address only
    if "name" not in fields:
        full = " ".join(row.values[k] for k in ("first", "last") if k in row.values)
        if full:
            fields["name"] = full
    for part in ("first", "last", "prefix", "suffix"):  # Splunk ES name parts stay attributes by their name
        if part in row.values:
            fields["attributes"].pop(row.columns[part], None)
            fields["attributes"][part] = row.values[part]
    return fields, names


def _merge(into: dict[str, Any], more: dict[str, Any]) -> None:
    """Several rows of one user: lists are joined, the first value of anything else is kept."""
    for name, value in more.items():
        if name in _LIST_FIELDS:
            into.setdefault(name, [])
            into[name] += [v for v in value if v not in into[name]]
        elif name == "attributes":
            for key, item in value.items():
                into[name].setdefault(key, item)
        elif name == "watchlist":
            into[name] = bool(into.get(name)) or value
        else:
            into.setdefault(name, value)


def read_identity_file(path: Path, columns: dict[str, str] | None = None, tz: tzinfo = timezone.utc) -> list[Identity]:
    """Identities of a CSV or YAML file: a Splunk ES identity lookup as it is, an HR export with its own
    column names (singular or plural, known synonyms; `columns` maps any others), or our own form.

    Rows of one user are merged; columns that are no identity field are kept as attributes.
    """
    merged: dict[str, dict[str, Any]] = {}
    lines: dict[str, int] = {}
    names: dict[str, str] = {}
    for row in read_lookup_rows(path, "identities"):
        fields, row_names = _identity_fields(path, row, columns or {}, tz)
        names |= row_names
        if "user" not in fields:
            if not {"user", "identity"} & set(row_names):
                raise ConfigError(f"{path}: expected a CSV header with at least a 'user' column "
                                  f"(or 'identity', 'username', 'email'), or identity_columns naming the one that holds it")
            raise ConfigError(f"{path}:{row.line}: no user name in this row")
        user = str(fields["user"]).strip()
        if user.lower() in merged:
            _merge(merged[user.lower()], fields)
        else:
            merged[user.lower()], lines[user.lower()] = fields, row.line
    identities = []
    for key, fields in merged.items():
        try:
            identities.append(Identity.model_validate(fields))
        except ValidationError as exc:
            raise row_error(path, lines[key], names, exc) from None
    return identities


def load_identities(settings: Settings) -> list[Identity]:
    if isinstance(settings.identities, str):
        return read_identity_file(Path(settings.identities), settings.identity_columns, settings.tz)
    return list(settings.identities)


def asset_host_keys(asset: Asset) -> list[str]:
    """The names and single addresses an inventory entry is known by (a network is no one host)."""
    singles = [spec for spec in asset.address_specs() if (b := address_bounds(spec))[1] == b[2]]
    return [*asset.names(), *singles]


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
            if asset.owner:
                for host in asset_host_keys(asset):
                    resolver._add("host", host, asset.owner.strip().lower(), RULE_ASSET)
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
    return table_of(rows, IDENTITY_SCHEMA)


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
    """Maps a risk object (user name, mail address, VPN account, IP, host name) to its entity and
    the attributes risk modifiers match (the asset's, the identity's, and, given the event's time,
    `identity_ended`/`identity_not_started` outside the identity's end and start dates).

    Users are resolved as the enrichment does (enrich/identities.py: the identities list, then the
    default rules), so risk lands on the same user name the session rules use. A system resolves
    to a user when the identities list it as one of their hosts or the asset inventory (a host or
    a network) names an `owner`; otherwise it stays a system.
    """

    def __init__(self, settings: Settings):
        self.assets = list(settings.assets)
        self.users = IdentityResolver.from_settings(settings)
        self.identities: dict[str, dict[str, Any]] = {}
        self._validity: dict[str, tuple[datetime | None, datetime | None]] = {}
        for identity in load_identities(settings):
            user = identity.user.strip().lower()
            self.identities.setdefault(user, identity.model_dump(mode="json"))  # JSON-ready: shown by `entity`
            self._validity.setdefault(user, (identity.start_date, identity.end_date))
        self._asset_cache: dict[str, dict[str, Any] | None] = {}
        self._assets_by_name: dict[str, Asset] = {}
        for asset in self.assets:
            for name in asset.names():
                self._assets_by_name.setdefault(name, asset)

    def user_of(self, value: str) -> str | None:
        kind = "email" if "@" in value and "\\" not in value else "vpn"
        return self.users.resolve(kind, value)[0]

    def asset(self, value: str) -> dict[str, Any] | None:
        """The inventory entry of a host name (`nt_host`, `dns`, any case) or an address, as attributes."""
        if value not in self._asset_cache:
            match = self._assets_by_name.get(value.strip().lower().rstrip("."))
            if match is not None:
                data = match.model_dump(exclude_none=True)
                data["categories"], data["category"] = match.category, match.primary_category
                self._asset_cache[value] = _flat_attrs(data)
            else:
                table = match_assets([value], self.assets).to_pylist()
                self._asset_cache[value] = {k: v for k, v in table[0].items() if k != "ip" and v is not None} if table else None
        return self._asset_cache[value]

    def _user_attributes(self, user: str, at: datetime | None) -> dict[str, Any]:
        identity = self.identities.get(user)
        attributes = {**(_flat_attrs(identity) if identity else {}), "user": user}
        start, end = self._validity.get(user, (None, None))
        if at is not None:
            # a leaver's (or a not-yet-starter's) activity is worth knowing: risk modifiers can match these
            if end is not None and at > end:
                attributes["identity_ended"] = True
            if start is not None and at < start:
                attributes["identity_not_started"] = True
        return attributes

    def resolve(self, value: str, object_type: str, at: datetime | None = None) -> Resolved:
        """The entity of a risk object; `at` (the event's time) decides `identity_ended`/`identity_not_started`."""
        if object_type == "system":
            attributes = dict(self.asset(value) or {})
            user, _ = self.users.resolve("host", value)
            if user is None and attributes.get("owner"):
                user = self.user_of(str(attributes["owner"])) or str(attributes["owner"]).strip().lower()
            if user is not None:
                return Resolved(user, "user", attributes | self._user_attributes(user, at))
            return Resolved(value, "system", attributes)
        if object_type == "user":
            user = self.user_of(value)
            if user is not None:
                return Resolved(user, "user", self._user_attributes(user, at))
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
        names |= {host for a in self.assets if a.owner and a.owner.strip().lower() == canonical
                  for host in asset_host_keys(a)}
        return canonical, names


def _flat_attrs(record: dict[str, Any]) -> dict[str, Any]:
    """An identity or an inventory entry as risk attributes: the fields that have a value, and the
    lookup's other columns (`title`, `city`) beside them."""
    flat = {k: v for k, v in record.items() if k != "attributes" and v not in (None, [], "", False)}
    return {**record.get("attributes", {}), **flat}
