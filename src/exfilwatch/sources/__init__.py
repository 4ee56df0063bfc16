"""The registry of log sources, and picking one for a file from its first lines."""

from __future__ import annotations

from exfilwatch.errors import UsageError

from exfilwatch.sources.base import ParseContext, ParsedBatch, Source
from exfilwatch.sources.cert import CertEmail
from exfilwatch.sources.exchange import ExchangeTracking, M365TraceCSV, M365TraceJSON
from exfilwatch.sources.flows import JuniperSRXFlow, NetflowCSV, NfdumpCSV
from exfilwatch.sources.generic import GenericSource
from exfilwatch.sources.postfix import Postfix
from exfilwatch.sources.pulse_secure import PulseSecure
from exfilwatch.sources.zeek import ZeekConnJSON, ZeekConnTSV
from exfilwatch.sources.zeek_smtp import ZeekFilesJSON, ZeekFilesTSV, ZeekSmtpJSON, ZeekSmtpTSV

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


class UnknownFormatError(UsageError):
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
