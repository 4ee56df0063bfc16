"""The registry of log sources, and picking one for a file from its first lines."""

from __future__ import annotations

from .base import ParseContext, ParsedBatch, Source
from .cert import CertEmail
from .exchange import ExchangeTracking, M365TraceCSV, M365TraceJSON
from .flows import JuniperSRXFlow, NetflowCSV, NfdumpCSV
from .generic import GenericSource
from .postfix import Postfix
from .pulse_secure import PulseSecure
from .zeek import ZeekConnJSON, ZeekConnTSV
from .zeek_smtp import ZeekFilesJSON, ZeekFilesTSV, ZeekSmtpJSON, ZeekSmtpTSV

# Order matters for detection: more specific formats first.
SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        ZeekConnTSV(),
        ZeekConnJSON(),
        PulseSecure(),
        NfdumpCSV(),
        JuniperSRXFlow(),
        Postfix(),
        ExchangeTracking(),
        M365TraceCSV(),
        M365TraceJSON(),
        ZeekSmtpTSV(),
        ZeekSmtpJSON(),
        ZeekFilesTSV(),
        ZeekFilesJSON(),
        CertEmail(),
        NetflowCSV(),  # keep late: it claims any CSV whose header names flow columns
        GenericSource(),  # never detected: --source generic --mapping FILE
    )
}


class UnknownFormatError(ValueError):
    pass


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise UnknownFormatError(f"unknown source {name!r}; known sources: {', '.join(SOURCES)}") from None


def detect_source(head: list[str], file: str) -> Source:
    for source in SOURCES.values():
        if source.sniff(head):
            return source
    raise UnknownFormatError(
        f"{file}: could not recognise the log format from its first lines; "
        f"pass --source with one of: {', '.join(SOURCES)}"
    )


__all__ = ["SOURCES", "ParseContext", "ParsedBatch", "Source", "UnknownFormatError", "detect_source", "get_source"]
