"""Lookup files users already keep: Splunk ES asset lookups and any CSV with a header.

`read_lookup_rows` reads a CSV (or a YAML list of mappings) into rows keyed by a normalised
column name (`Managed By` → `managedby`), each with the line it came from, so every error names
the file, the line and the column. `read_asset_file` turns a Splunk ES asset lookup
(`ip,mac,nt_host,dns,owner,priority,lat,long,city,country,bunit,category,pci_domain,is_expected,
should_timesync,should_update,requires_av`) into inventory entries as it is: `ip` holds
`|`-separated addresses, CIDR networks and `a-b` ranges, `category` is multi-valued, `priority`
is Splunk's `unknown`…`critical`, booleans are `true` or blank, and every other column is kept
as an attribute. A value that can never match (`10.30.0.999`) is an error, not a silent miss.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from exfilwatch.config import Asset, read_yaml_file
from exfilwatch.errors import ConfigError

_NOT_NAME = re.compile(r"[^a-z0-9]+")


def column_key(name: str) -> str:
    """A column name as matched: lower case, letters and digits only (`Managed By` → `managedby`)."""
    return _NOT_NAME.sub("", name.strip().lower())


@dataclass
class LookupRow:
    line: int  # in the file (the header is line 1); the entry's number for YAML
    values: dict[str, str]  # column_key -> stripped value; empty values left out
    columns: dict[str, str]  # column_key -> the column as written, for messages


def read_lookup_rows(path: Path, what: str) -> list[LookupRow]:
    """The rows of a CSV with a header, or of a YAML list of mappings; `what` names the file's role."""
    if not path.exists():
        raise ConfigError(f"{path}: {what} file not found")
    if path.suffix.lower() in (".yml", ".yaml"):
        data = read_yaml_file(path, f"{what} file")
        if isinstance(data, dict) and what in data:  # `identities: [...]` as in config.yaml
            data = data[what]
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise ConfigError(f"{path}: expected a list of {what} entries")
        return [_row(index + 1, {str(k): v for k, v in item.items()}) for index, item in enumerate(data)]
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise ConfigError(f"{path}: empty {what} file (a CSV needs a header line)")
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            if len(record) > len(header):
                raise ConfigError(f"{path}:{reader.line_num}: {len(record)} values for {len(header)} columns")
            rows.append(_row(reader.line_num, dict(zip(header, record))))
    return rows


def _row(line: int, record: dict[str, Any]) -> LookupRow:
    values, columns = {}, {}
    for column, value in record.items():
        key = column_key(column)
        columns.setdefault(key, column)
        text = "|".join(str(v) for v in value) if isinstance(value, list) else ("" if value is None else str(value))
        if text.strip():
            values.setdefault(key, text.strip())
    return LookupRow(line, values, columns)


def field_of(column: str, synonyms: dict[str, str], mapping: dict[str, str]) -> str | None:
    """Our field for a column: the config's mapping first, then the known names and synonyms,
    singular or plural (`emails`, `email`, `E-Mail`); None for a column kept as an attribute."""
    mapped = {column_key(theirs): ours for theirs, ours in mapping.items()}
    key = column_key(column)
    for candidate in (key, key.removesuffix("s"), key + "s"):
        if candidate in mapped:
            return mapped[candidate]
    for candidate in (key, key.removesuffix("s"), key.removesuffix("es")):
        if candidate in synonyms:
            return synonyms[candidate]
    return None


# Splunk ES asset lookup columns and the names inventories exported elsewhere use → Asset fields;
# every other column (lat, city, pci_domain, should_update, ...) is kept as an attribute.
ASSET_SYNONYMS = {
    **{name: name for name in ("ip", "cidr", "host", "dns", "mac", "category", "bunit", "owner", "priority")},
    "nthost": "nt_host", "isexpected": "is_expected",
    "address": "ip", "ipaddress": "ip", "ipaddresse": "ip", "network": "ip", "subnet": "ip", "range": "ip",
    "hostname": "nt_host", "computername": "nt_host", "computer": "nt_host", "netbiosname": "nt_host",
    "fqdn": "dns", "dnsname": "dns", "macaddress": "mac", "macaddresse": "mac",
    "role": "category", "assettype": "category", "type": "category",
    "businessunit": "bunit", "department": "bunit", "dept": "bunit",
    "criticality": "priority", "assignedto": "owner",
}
ASSET_FIELDS = ("ip", "cidr", "host", "nt_host", "dns", "mac", "category", "bunit", "owner", "priority", "is_expected")


def read_asset_file(path: Path, columns: dict[str, str] | None = None) -> list[Asset]:
    """Inventory entries of a Splunk ES asset lookup CSV (or another export, or a YAML list), in file order.

    `columns` maps the file's own column names to Asset fields, for headers no synonym covers.
    """
    assets = []
    for row in read_lookup_rows(path, "assets"):
        fields: dict[str, Any] = {"attributes": {}}
        names: dict[str, str] = {}  # field -> the column it came from, for messages
        for key, value in row.values.items():
            name = field_of(row.columns[key], ASSET_SYNONYMS, columns or {})
            if name is None:
                fields["attributes"][row.columns[key]] = value
                continue
            if name not in ASSET_FIELDS:
                raise ConfigError(f"{path}: column '{row.columns[key]}' maps to {name!r}, not an asset field "
                                  f"({', '.join(ASSET_FIELDS)})")
            if name in fields:
                continue  # two columns for one field: the first wins
            names[name] = row.columns[key]
            fields[name] = value.lower() in ("true", "1", "yes", "t", "y") if name == "is_expected" else value
        try:
            assets.append(Asset.model_validate(fields))
        except ValidationError as exc:
            raise row_error(path, row.line, names, exc) from None
    return assets


def row_error(path: Path, line: int, names: dict[str, str], exc: ValidationError) -> ConfigError:
    """One line per problem: `file:line: column 'ip': message`."""
    lines = []
    for err in exc.errors():
        message = err["msg"].removeprefix("Value error, ")
        field = str(err["loc"][0]) if err["loc"] else None
        column = names.get(field, field) if field else None
        lines.append(f"{path}:{line}: column '{column}': {message}" if column else f"{path}:{line}: {message}")
    return ConfigError("\n".join(lines))
