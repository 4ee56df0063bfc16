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

import yaml
from pydantic import ValidationError

from exfilwatch.config import Asset
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
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
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


# Splunk ES asset lookup columns → Asset fields; every other column becomes an attribute.
_ASSET_FIELDS = {"ip": "ip", "cidr": "cidr", "host": "host", "nthost": "nt_host", "dns": "dns", "mac": "mac",
                 "category": "category", "bunit": "bunit", "owner": "owner", "priority": "priority",
                 "isexpected": "is_expected"}


def read_asset_file(path: Path) -> list[Asset]:
    """Inventory entries of a Splunk ES asset lookup CSV (or a YAML list), in file order."""
    assets = []
    for row in read_lookup_rows(path, "assets"):
        fields: dict[str, Any] = {"attributes": {}}
        for key, value in row.values.items():
            name = _ASSET_FIELDS.get(key)
            if name is None:
                fields["attributes"][row.columns[key]] = value
            elif name == "is_expected":
                fields[name] = value.lower() in ("true", "1", "yes", "t", "y")
            else:
                fields[name] = value
        try:
            assets.append(Asset.model_validate(fields))
        except ValidationError as exc:
            raise _row_error(path, row, exc) from None
    return assets


def _row_error(path: Path, row: LookupRow, exc: ValidationError) -> ConfigError:
    """One line per problem: `file:line: column 'ip': message`."""
    reverse = {field: key for key, field in _ASSET_FIELDS.items()}
    lines = []
    for err in exc.errors():
        message = err["msg"].removeprefix("Value error, ")
        field = str(err["loc"][0]) if err["loc"] else None
        column = row.columns.get(reverse.get(field, ""), field) if field else None
        lines.append(f"{path}:{row.line}: column '{column}': {message}" if column else f"{path}:{row.line}: {message}")
    return ConfigError("\n".join(lines))
