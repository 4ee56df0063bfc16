"""What config.yaml may say about risk: modifiers, suppressions and alert outputs.

Kept apart from config.py so the risk layer's settings read in one place; `Settings` holds them
as `risk_modifiers:`, `suppressions:` and `outputs:`.

```yaml
risk_modifiers:                       # applied in order: score x every multiply, then + every add
  - match: {priority: critical}       # attributes of the risk object's asset or identity
    multiply: 2
  - match: {user: "svc-*"}            # globs; a list of values means any of them
    multiply: 0.5
suppressions:
  - id: backup-server
    detection: hosts_receiving_high_volume_of_network_traffic_from_email_server   # or "all"
    entity: 10.20.0.5                 # glob on the finding's entity
    where: {bytes_in: {max: 5000000000}, recipient_domain: partner.example}
    owner: alice
    reason: nightly mailbox backup pulls everything
    expires: 2026-12-31               # or "never"
outputs:
  - {name: soc, type: syslog, host: siem.example, port: 6514, protocol: tls, ca_file: /etc/ssl/siem-ca.pem}
  - {name: soar, type: webhook, url: "https://soar.example/hooks/exfilwatch", headers: {Authorization: "Bearer ..."}}
  - {name: splunk, type: hec, url: "https://splunk.example:8088", token: "...", index: security, send: [incidents, findings]}
  - {name: archive, type: jsonl, path: incidents.jsonl}
  - {name: lake, type: file, format: ocsf, path: ocsf.jsonl, send: [incidents, findings]}
```
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RiskModifier(_Strict):
    """Multiply and/or add to a risk event's score when the risk object's attributes match.

    Attributes are those of the resolved asset (`category`, `bunit`, `owner`, `priority`, `cidr`,
    `host`) and identity (`user`, `department`, `emails`, `vpn_accounts`, `hosts`, ...), plus
    `risk_object`, `risk_object_type`, `source_object` and `detection_id`.
    """

    name: str | None = None
    match: dict[str, Any]
    multiply: float | None = Field(default=None, ge=0)
    add: float | None = None

    @model_validator(mode="after")
    def _does_something(self) -> "RiskModifier":
        if self.multiply is None and self.add is None:
            raise ValueError("a risk modifier needs 'multiply' or 'add'")
        if not self.match:
            raise ValueError("a risk modifier needs a non-empty 'match'")
        return self


class Range(_Strict):
    """A numeric condition: min/max are inclusive, gt/lt exclusive."""

    min: float | None = None
    max: float | None = None
    gt: float | None = None
    lt: float | None = None


Condition = Range | str | int | float | bool | list[str | int | float]


class SuppressionSpec(_Strict):
    """A suppression kept in config.yaml (a suppression added with the CLI lives in the state store)."""

    id: str | None = None
    detection: str = "all"
    entity: str | None = None
    where: dict[str, Condition] = Field(default_factory=dict)
    owner: str
    reason: str
    # "never", a date (the suppression applies through that local day) or a time (ISO 8601)
    expires: str

    @field_validator("expires", mode="before")
    @classmethod
    def _expiry_text(cls, value: Any) -> str:
        if isinstance(value, (date, datetime)):
            return value.isoformat()
        if not isinstance(value, str) or not value.strip():
            raise ValueError("expected a date (2026-12-31), an ISO 8601 time or 'never'")
        return value.strip()

    @field_validator("owner", "reason")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


Send = list[Literal["incidents", "findings"]]


def _incidents() -> list:
    return ["incidents"]


class _Tls(_Strict):
    """Certificate checks for an output that speaks TLS: the system's CAs, or `ca_file` (PEM)."""

    verify: bool = True  # false only for a lab: the peer is then not authenticated
    ca_file: str | None = None


class SyslogOutput(_Tls):
    """CEF over syslog, RFC 5424 messages: one per UDP datagram (RFC 5426); over TCP (RFC 6587)
    and TLS (RFC 5425, port 6514) each framed by octet counting, `LEN SP MSG`."""

    name: str
    type: Literal["syslog"]
    host: str
    port: int = Field(default=514, ge=1, le=65535)
    protocol: Literal["udp", "tcp", "tls"] = "udp"
    facility: int = Field(default=4, ge=0, le=23)  # 4 = security/authorization messages
    app_name: str = "exfilwatch"
    hostname: str | None = None  # else the machine's name
    timeout: float = Field(default=5, gt=0)
    send: Send = Field(default_factory=_incidents)


class _Http(_Tls):
    name: str
    url: str
    timeout: float = Field(default=10, gt=0)
    retries: int = Field(default=3, ge=0, le=20)
    backoff: float = Field(default=1.0, ge=0)  # seconds before the first retry; doubles each time
    send: Send = Field(default_factory=_incidents)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value


class WebhookOutput(_Http):
    """One HTTP POST with a JSON body per item; retried with exponential backoff."""

    type: Literal["webhook"]
    headers: dict[str, str] = Field(default_factory=dict)  # e.g. a SOAR's Authorization token


class HecOutput(_Http):
    """Splunk HTTP Event Collector (`/services/collector/event`): `batch_size` events per request."""

    type: Literal["hec"]
    token: str = Field(min_length=1)
    sourcetype: str = "exfilwatch"
    index: str | None = None  # else the token's default index
    source: str = "exfilwatch"
    batch_size: int = Field(default=100, ge=1, le=10000)

    @field_validator("url")
    @classmethod
    def _collector(cls, value: str) -> str:
        # A base URL (https://splunk:8088) means Splunk's JSON event endpoint.
        return value.rstrip("/") + "/services/collector/event" if "/services/collector" not in value else value


class FileOutput(_Strict):
    """Appends to a file: JSON lines of exfilwatch's records (the default), OCSF JSON lines (Detection
    Finding 2004 / Incident Finding 2005) or CSV (cells that could run as formulas are neutralised).
    `type: jsonl` and `type: csv` are the short forms of `type: file` with that format."""

    name: str
    type: Literal["file", "jsonl", "csv"]
    format: Literal["jsonl", "csv", "ocsf"] | None = None
    path: str
    send: Send = Field(default_factory=_incidents)

    @model_validator(mode="after")
    def _format(self) -> "FileOutput":
        implied = None if self.type == "file" else self.type
        if self.format is None:
            self.format = implied or "jsonl"
        elif implied == "csv" and self.format != "csv" or implied == "jsonl" and self.format == "csv":
            raise ValueError(f"type {self.type} cannot hold format {self.format}: use type: file")
        if self.format == "csv" and len(set(self.send)) != 1:
            raise ValueError("a CSV file holds one kind (one header): send incidents and findings to two files")
        return self


OutputSpec = Annotated[SyslogOutput | WebhookOutput | HecOutput | FileOutput, Field(discriminator="type")]
