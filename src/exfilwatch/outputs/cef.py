"""CEF records in RFC 5424 syslog messages, and the two syslog transports.

A record is `CEF:0|exfilwatch|exfilwatch|<version>|<rule id>|<name>|<severity 0-10>|<extension>`
(ArcSight Common Event Format 0): `|` and `\\` are escaped in the header, `=`, `\\` and line
breaks in extension values. The CEF severity follows the record's severity (an incident's from
its rule, a finding's banded from its risk score, see records.py): informational 1, low 3,
medium 5, high 8, critical 10; `cat` is the detection's category; the ATT&CK techniques and
tactics travel in `cs2`/`cs3` (findings) and `cs5`/`cs3` (incidents); an incident's rule (the one
that opened it) in `cs2` and every rule that contributed to it in `cs6`.

It travels as the MSG of an RFC 5424 message `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID - MSG`;
over UDP one message per datagram (RFC 5426), over TCP (RFC 6587 3.4.1) and TLS (RFC 5425) each
message framed by octet counting, `LEN SP MSG`, so a message may contain line breaks safely.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from exfilwatch import __version__
from exfilwatch.outputs.records import epoch_millis

CEF_SEVERITY = {"informational": 1, "low": 3, "medium": 5, "high": 8, "critical": 10}
SYSLOG_SEVERITY = {"informational": 6, "low": 5, "medium": 4, "high": 3, "critical": 2}  # notice..critical

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def header_escape(value: Any) -> str:
    text = _CONTROL.sub("?", str(value)).replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\r", " ").replace("\n", " ")


def extension_escape(value: Any) -> str:
    text = _CONTROL.sub("?", str(value)).replace("\\", "\\\\").replace("=", "\\=")
    return text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")


def _object_fields(value: str, object_type: str) -> dict[str, Any]:
    if object_type == "user":
        return {"duser": value}
    try:
        ipaddress.ip_address(value)
        return {"dst": value} if ":" not in value else {"c6a3": value, "c6a3Label": "riskObjectAddress"}
    except ValueError:
        return {"dhost": value} if object_type == "system" else {"cs4": value, "cs4Label": "riskObject"}


def cef_record(signature: str, name: str, severity: str, extension: dict[str, Any]) -> str:
    ext = " ".join(f"{key}={extension_escape(value)}" for key, value in extension.items() if value not in (None, ""))
    return (f"CEF:0|exfilwatch|exfilwatch|{header_escape(__version__)}|{header_escape(signature)}|"
            f"{header_escape(name)}|{CEF_SEVERITY.get(severity, 5)}|{ext}")


def incident_cef(incident: dict[str, Any]) -> str:
    extension = {
        "externalId": incident["incident_id"],
        "rt": epoch_millis(incident["last_time"]),
        "start": epoch_millis(incident["first_time"]),
        "end": epoch_millis(incident["last_time"]),
        "cat": incident.get("category"),
        "msg": incident["message"],
        "cn1": incident.get("score"),
        "cn1Label": "riskScore" if incident.get("score") is not None else None,
        "cs1": incident["incident_key"],
        "cs1Label": "incidentKey",
        "cs2": incident["rule"],
        "cs2Label": "rule",
        "cs6": ",".join(incident.get("rules") or []),  # every rule that contributed to the episode
        "cs6Label": "rules" if incident.get("rules") else None,
        "cs3": ",".join(incident.get("tactics") or []),
        "cs3Label": "tactics" if incident.get("tactics") else None,
        "cs5": ",".join(incident.get("mitre_attack_id") or []),
        "cs5Label": "mitreAttackId" if incident.get("mitre_attack_id") else None,
        **_object_fields(incident["risk_object"], incident["risk_object_type"]),
    }
    return cef_record(incident["rule"], incident.get("rule_name") or incident["rule"], incident["severity"], extension)


def finding_cef(finding: dict[str, Any]) -> str:
    first = (finding.get("risk_objects") or [{}])[0]
    extension = {
        "rt": epoch_millis(finding.get("time")),
        "cat": finding.get("category"),
        "msg": finding.get("message"),
        "cn1": finding.get("risk_score"),
        "cn1Label": "riskScore",
        "cs1": finding.get("finding_key"),
        "cs1Label": "findingKey",
        "cs2": ",".join(finding.get("mitre_attack_id") or []),
        "cs2Label": "mitreAttackId" if finding.get("mitre_attack_id") else None,
        "cs3": ",".join(finding.get("tactics") or []),
        "cs3Label": "tactics" if finding.get("tactics") else None,
        **(_object_fields(str(first["value"]), first.get("type", "other")) if first.get("value") is not None else {}),
    }
    return cef_record(finding["detection_id"], finding.get("detection_name") or finding["detection_id"],
                      finding.get("severity", "low"), extension)


def _printable(text: str, limit: int) -> str:
    cleaned = "".join(ch if 33 <= ord(ch) <= 126 else "_" for ch in text)[:limit]
    return cleaned or "-"


def rfc5424(msg: str, now: datetime, severity: str, facility: int = 4, hostname: str | None = None,
            app_name: str = "exfilwatch", msgid: str = "incident") -> bytes:
    """One RFC 5424 message with no structured data; TIMESTAMP is the run's `now` in UTC."""
    pri = facility * 8 + SYSLOG_SEVERITY.get(severity, 5)
    stamp = now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    host = _printable(hostname or socket.gethostname() or "-", 255)
    return f"<{pri}>1 {stamp} {host} {_printable(app_name, 48)} - {_printable(msgid, 32)} - {msg}".encode("utf-8")


def octet_frame(message: bytes) -> bytes:
    return str(len(message)).encode("ascii") + b" " + message


def send_udp(host: str, port: int, messages: list[bytes], timeout: float) -> None:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.settimeout(timeout)
        for message in messages:
            sock.sendto(message, address)


def send_stream(host: str, port: int, messages: list[bytes], timeout: float,
                tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """Send octet-counted frames on one TCP connection, over TLS when given a context; yields each
    message's index once it is written, so the caller can record it before the next one."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock = tls.wrap_socket(raw, server_hostname=host) if tls else raw
        with sock:
            for index, message in enumerate(messages):
                sock.sendall(octet_frame(message))
                yield index
