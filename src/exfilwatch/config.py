"""Settings: where a home folder keeps its lake, state and config, and what config.yaml may say.

A home folder is chosen by `--home DIR`, else `$EXFILWATCH_HOME`, else `./.exfilwatch`.
`config.yaml` in the home (or `--config FILE`) is validated strictly: a mistyped key or a
bad CIDR is an error that names the file and the key.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import typing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from exfilwatch.errors import ConfigError, UsageError
from exfilwatch.riskconfig import OutputSpec, RiskModifier, SuppressionSpec

DEFAULT_HOME = ".exfilwatch"

# What DuckDB's `SET memory_limit` reads: a number and a unit (KB/MB/GB/TB in powers of 1000,
# KiB/MiB/GiB/TiB in powers of 1024, or spelled out), or a share of the machine's memory.
MEMORY_LIMIT = re.compile(
    r"\s*(?P<number>\d+(\.\d*)?|\.\d+)\s*(?P<unit>%|([kmgt](i?b)?|bytes|b|(kilo|mega|giga|tera)bytes?))\s*",
    re.IGNORECASE)


def memory_bytes(limit: str) -> int:
    """A memory_limit in bytes, as DuckDB reads it; a share (80%) is of the machine's memory."""
    match = MEMORY_LIMIT.fullmatch(limit)
    if match is None:
        raise ConfigError(f"{limit!r} is not a memory size", where="memory_limit")
    number, unit = float(match["number"]), match["unit"].lower()
    if unit == "%":
        return int(number / 100 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    power = "bkmgt".index(unit[0]) if unit[0] in "kmgt" else 0
    return int(number * (1024 if "ib" in unit else 1000) ** power)


# libyaml's safe loader when PyYAML was built with it: the same documents, 5-10x faster to load
# (the shipped catalog's YAML was 0.1 CPU-s of every command that loads it).
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml_file(path: Path, what: str = "file") -> Any:
    """The YAML document in `path`; anything that makes it unreadable is one ConfigError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} not found", where=str(path)) from None
    except IsADirectoryError:
        raise ConfigError(f"is a folder, not a {what}", where=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not a text {what} (byte {exc.start} is not UTF-8)", where=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the {what}: {exc.strerror}", where=str(path)) from None
    try:
        return yaml.load(text, Loader=YAML_LOADER)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {_yaml_problem(exc)}", where=str(path)) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # PyYAML's own message spans several lines with a caret drawing; say the same in one.
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}" + (f" ({context})" if context else "")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


PRIORITIES = ("unknown", "informational", "low", "medium", "high", "critical")  # Splunk ES's scale
Priority = Literal["unknown", "informational", "low", "medium", "high", "critical"]


def split_multi(value: Any) -> list[str]:
    """A Splunk multi-value (`a|b`) or a YAML list as a list of non-empty, stripped values."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split("|")
    return [str(item).strip() for item in items if str(item).strip()]


class Asset(StrictModel):
    """One asset inventory entry: what a network, an address range or a host is.

    Inline entries give `cidr` or `host` (an address or a name); a Splunk ES asset lookup gives
    `ip` (`|`-separated addresses, CIDR networks and `a-b` ranges) and/or the names `nt_host`,
    `dns` and `mac`. `category` is multi-valued (`email_server|pci`); its first value is the
    primary category the detections see as `src_category`/`dest_category`.
    """

    cidr: str | None = None
    host: str | None = None
    ip: str | None = None
    nt_host: str | None = None
    dns: str | None = None
    mac: str | None = None
    category: str | list[str] = Field(default_factory=list)
    bunit: str | None = None
    owner: str | None = None
    priority: Priority | None = None
    is_expected: bool | None = None
    attributes: dict[str, str] = Field(default_factory=dict)  # the lookup's other columns (city, pci_domain, ...)

    @field_validator("cidr")
    @classmethod
    def _valid_cidr(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError as exc:
            raise ValueError(f"not an IPv4 or IPv6 network: {value!r} ({exc})") from None

    @field_validator("ip")
    @classmethod
    def _valid_ip(cls, value: str | None) -> str | None:
        for item in split_multi(value):
            address_bounds(item)  # raises ValueError naming the value
        return value

    @field_validator("category", mode="after")
    @classmethod
    def _multi_category(cls, value: str | list[str]) -> list[str]:
        return split_multi(value)

    @field_validator("priority", mode="before")
    @classmethod
    def _lower_priority(cls, value: Any) -> Any:
        return value.strip().lower() or None if isinstance(value, str) else value

    @model_validator(mode="after")
    def _something_to_match(self) -> "Asset":
        if not any((self.cidr, self.host, self.ip, self.nt_host, self.dns, self.mac)):
            raise ValueError("each asset needs exactly one of 'cidr' or 'host' (a lookup file: 'ip', 'nt_host', 'dns' or 'mac')")
        if self.cidr and self.host:
            raise ValueError("each asset needs exactly one of 'cidr' or 'host'")
        return self

    @property
    def primary_category(self) -> str | None:
        return self.category[0] if self.category else None

    def address_specs(self) -> list[str]:
        """Every address, network or range this entry covers, as written."""
        specs = split_multi(self.ip) + ([self.cidr] if self.cidr else [])
        if self.host and _is_address(self.host):
            specs.append(self.host)
        return specs

    def names(self) -> list[str]:
        """Host names (lower case) this entry is known by: `nt_host`, `dns`, a `host` that is no address."""
        names = split_multi(self.nt_host) + split_multi(self.dns)
        if self.host and not _is_address(self.host):
            names.append(self.host)
        return [name.lower().rstrip(".") for name in names]


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return False
    return True


def address_bounds(spec: str) -> tuple[int, int, int]:
    """(IP version, first, last address as integers) of an address, CIDR network or `a-b` range.

    Raises ValueError with the value when it can never match an address (`10.30.0.999`).
    """
    text = spec.strip()
    try:
        if "/" in text:
            network = ipaddress.ip_network(text, strict=False)
            return network.version, int(network.network_address), int(network.broadcast_address)
        if "-" in text:
            first_text, last_text = (part.strip() for part in text.split("-", 1))
            first, last = ipaddress.ip_address(first_text), ipaddress.ip_address(last_text)
            if first.version != last.version or int(first) > int(last):
                raise ValueError("the range's ends must be of one IP version and in order")
            return first.version, int(first), int(last)
        address = ipaddress.ip_address(text.strip("[]"))
        return address.version, int(address), int(address)
    except ValueError as exc:
        raise ValueError(f"not an IPv4 or IPv6 address, network or range: {spec!r} ({exc})") from None


class Identity(StrictModel):
    """One person: the user name findings use, and the accounts and hosts that are theirs.

    `department` is the peer group (Splunk ES `bunit`); `priority`, `watchlist` and `category`
    feed risk modifiers; `start_date`/`end_date` say when the identity is valid; `attributes`
    keeps a lookup's other columns (title, phone, ...), which risk modifiers can match too.
    """

    user: str
    emails: list[str] = Field(default_factory=list)
    vpn_accounts: list[str] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)  # IP addresses or host names
    department: str | None = None  # the peer group
    name: str | None = None
    manager: str | None = None
    priority: Priority | None = None
    watchlist: bool = False
    category: list[str] = Field(default_factory=list)
    start_date: datetime | None = None
    end_date: datetime | None = None
    attributes: dict[str, str] = Field(default_factory=dict)

    @field_validator("priority", mode="before")
    @classmethod
    def _lower_priority(cls, value: Any) -> Any:
        return value.strip().lower() or None if isinstance(value, str) else value

    @field_validator("category", mode="before")
    @classmethod
    def _multi_category(cls, value: Any) -> list[str]:
        return split_multi(value)


class DomainOverrides(StrictModel):
    """Domains added to or removed from a shipped domain list."""

    add: list[str] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)


class SparkSettings(StrictModel):
    """`spark:` — where `--engine spark` runs and how its executors reach the lake (docs/scale.md)."""

    master: str = "local[2]"  # spark.master: local[N], spark://host:7077, yarn, k8s://…
    # The home's `lake/` folder as the executors reach it (s3a://bucket/exfilwatch/lake, hdfs://…/lake),
    # when it is copied or mounted there; default: the local path, which every executor must see.
    lake_uri: str | None = None
    conf: dict[str, str] = Field(default_factory=dict)  # more Spark settings (spark.executor.memory, fs.s3a.…)


class SessionSettings(StrictModel):
    """How VPN events become sessions (see exfilwatch.enrich.sessions)."""

    idle_limit_hours: float = Field(default=12, gt=0)  # a session with no end seen closes this long after its last event
    lookback_days: int = Field(default=7, ge=1)  # how far before a rebuild VPN events are read (longest session)


SIZE = re.compile(r"\s*(?P<number>\d+)\s*(?P<unit>[KMG]i?B|B)?\s*", re.IGNORECASE)


def size_bytes(text: str | int) -> int:
    """`10MB`, `512KiB` or a number of bytes, as bytes (KB/MB/GB in powers of 1000, KiB/MiB/GiB of 1024)."""
    if isinstance(text, int):
        return text
    match = SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size: expected e.g. 10MB, 512KiB or a number of bytes")
    unit = (match["unit"] or "B").upper()
    power = "BKMG".index(unit[0])
    return int(match["number"]) * (1024 if "I" in unit else 1000) ** power


class SyslogListener(StrictModel):
    """One syslog listener of `exfilwatch serve`: UDP, TCP or TLS on an address, lines for one source or `auto`."""

    protocol: Literal["udp", "tcp", "tls"]
    host: str = "0.0.0.0"
    port: int = Field(ge=0, le=65535)  # 0: any free port (tests)
    source: str = "auto"
    cert: Path | None = None  # tls only: the certificate chain and its key, PEM
    key: Path | None = None

    @model_validator(mode="after")
    def _tls_has_cert(self) -> "SyslogListener":
        if self.protocol == "tls" and (self.cert is None or self.key is None):
            raise ValueError("a tls listener needs 'cert' and 'key' (PEM files)")
        return self


class HecToken(StrictModel):
    """A Splunk HEC token: the source of its events without a sourcetype, and the sourcetypes it may send."""

    token: str = Field(min_length=1)
    source: str = "auto"
    sourcetypes: list[str] = Field(default_factory=list)  # [] = any


class HecSettings(StrictModel):
    host: str = "0.0.0.0"
    port: int = Field(default=8088, ge=0, le=65535)
    tokens: list[HecToken] = Field(default_factory=list)
    max_body: int = Field(default=10_000_000, gt=0)

    @field_validator("max_body", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return size_bytes(value) if isinstance(value, str) else value


class TailPath(StrictModel):
    path: str  # a file or a glob
    source: str = "auto"


class BatchSettings(StrictModel):
    max_events: int = Field(default=50_000, gt=0)
    max_seconds: float = Field(default=2, gt=0)


class WebSettings(StrictModel):
    """`service.web:` — the web console: where it listens, its TLS certificate, and the login lock-out."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)  # 0: any free port (tests)
    cert: Path | None = None  # both: HTTPS (PEM certificate chain and its key); neither: HTTP
    key: Path | None = None
    max_failed_logins: int = Field(default=5, ge=1)  # in a row, then the account is locked
    lockout_minutes: float = Field(default=15, gt=0)
    session_hours: float = Field(default=12, gt=0)  # a login lasts this long

    @model_validator(mode="after")
    def _cert_and_key(self) -> "WebSettings":
        if (self.cert is None) != (self.key is None):
            raise ValueError("HTTPS needs both 'cert' and 'key' (PEM files); give both or neither")
        for name in ("cert", "key"):
            path = getattr(self, name)
            if path is not None and not path.expanduser().is_file():
                raise ValueError(f"'{name}': no such file {str(path)!r}")
        return self


class ServiceSettings(StrictModel):
    """`service:` — what `exfilwatch serve` listens on, tails, and how it batches and schedules."""

    syslog: list[SyslogListener] = Field(default_factory=list)
    hec: HecSettings | None = None
    tail: list[TailPath] = Field(default_factory=list)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    schedule: bool = True
    web: WebSettings | None = None  # the console is served only when configured


class Settings(StrictModel):
    timezone: str = "UTC"
    memory_limit: str = "4GB"
    threads: int | None = None
    engine: Literal["duckdb", "spark"] = "duckdb"
    spark: SparkSettings = Field(default_factory=SparkSettings)
    assets: list[Asset] = Field(default_factory=list)
    # a Splunk ES asset lookup (CSV) or a YAML list, added after the inline `assets:` (relative to the config file)
    assets_file: str | None = None
    asset_columns: dict[str, str] = Field(default_factory=dict)  # the asset file's own column names -> ours
    internal_domains: list[str] = Field(default_factory=list)
    # identities: an inline list, or the path of a CSV or YAML file (relative to the config file)
    identities: list[Identity] | str = Field(default_factory=list)
    # the identity file's own column names -> ours (user, emails, vpn_accounts, hosts, department, ...)
    identity_columns: dict[str, str] = Field(default_factory=dict)
    personal_domains: DomainOverrides = Field(default_factory=DomainOverrides)
    sessions: SessionSettings = Field(default_factory=SessionSettings)
    # detection id -> parameter name -> value; overrides the detection's defaults
    detections: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # the user's own detection folders, added to the shipped ones (relative to the config file)
    detections_path: list[Path] = Field(default_factory=list)
    # risk-based alerting (riskconfig.py): score modifiers, suppressions, alert outputs
    risk_modifiers: list[RiskModifier] = Field(default_factory=list)
    suppressions: list[SuppressionSpec] = Field(default_factory=list)
    outputs: list[OutputSpec] = Field(default_factory=list)
    service: ServiceSettings = Field(default_factory=ServiceSettings)

    @field_validator("memory_limit")
    @classmethod
    def _valid_memory_limit(cls, value: str) -> str:
        if not MEMORY_LIMIT.fullmatch(value):
            raise ValueError(f"{value!r} is not a memory size: expected e.g. 4GB, 512MiB or 80% (of the machine's memory)")
        return value.strip()

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r} (e.g. UTC, Europe/Berlin)") from None
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class Home:
    """The folder that holds one installation's lake, state store and config."""

    root: Path
    config_path: Path

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def state_path(self) -> Path:
        return self.root / "state.sqlite"

    @property
    def spill_dir(self) -> Path:
        return self.root / "tmp"

    def create(self) -> None:
        """Make the home folder if it is missing; a path that cannot be one is the user's to change."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"the home folder cannot be created ({exc.strerror}): choose another with --home "
                             "or $EXFILWATCH_HOME", where=str(self.root)) from None


def resolve_home(home: str | Path | None, config: str | Path | None = None) -> Home:
    root = Path(home or os.environ.get("EXFILWATCH_HOME") or DEFAULT_HOME)
    config_path = Path(config) if config else root / "config.yaml"
    return Home(root=root, config_path=config_path)


def _error_location(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def parse_settings(data: Any, source: str) -> Settings:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level, got {type(data).__name__}")
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, source) from None


def _did_you_mean(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """'; did you mean port?' for a mistyped key at `loc`: the closest key its section knows ('' if none)."""
    for item in loc[:-1]:
        if isinstance(item, int):
            continue
        field = model.model_fields.get(str(item))
        inner = [t for t in (*typing.get_args(field.annotation), field.annotation) if field is not None
                 for t in (typing.get_args(t) or (t,)) if isinstance(t, type) and issubclass(t, BaseModel)]
        if not inner:
            return ""
        model = inner[0]
    matches = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f"; did you mean {matches[0]}?" if matches else ""


def validation_error(exc: ValidationError, source: str) -> ConfigError:
    """A pydantic error as the user should read it: one line per problem, naming file and key."""
    lines = []
    for err in exc.errors():
        key = _error_location(err["loc"])
        message = (f"unknown key (mistyped?){_did_you_mean(Settings, err['loc'])}" if err["type"] == "extra_forbidden"
                   else err["msg"])
        message = message.removeprefix("Value error, ")
        lines.append(f"{source}: key '{key}': {message}" if err["loc"] else f"{source}: {message}")
    return ConfigError("\n".join(lines))


def load_settings(home: Home) -> Settings:
    """Read the home's config.yaml; a home without one uses the defaults."""
    path = home.config_path
    if path == home.root / "config.yaml" and not path.exists():
        return Settings()
    data = read_yaml_file(path, "config file")
    settings = parse_settings(data, str(path))
    if isinstance(settings.identities, str) and not Path(settings.identities).is_absolute():
        settings.identities = str(path.parent / settings.identities)
    if settings.assets_file is not None:
        from exfilwatch.lookups import read_asset_file  # it builds on this module's Asset

        settings.assets_file = str(path.parent / Path(settings.assets_file).expanduser())
        settings.assets = [*settings.assets, *read_asset_file(Path(settings.assets_file), settings.asset_columns)]
    settings.detections_path = [path.parent / folder.expanduser() for folder in settings.detections_path]
    return settings
