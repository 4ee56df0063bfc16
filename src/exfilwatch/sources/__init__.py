"""The registry of log sources, and picking one for a file from its first lines."""

from __future__ import annotations

import re

import pyarrow as pa

from exfilwatch.errors import UsageError

from exfilwatch.sources.base import ParseContext, ParsedBatch, Source, unwrap_splunk_export
from exfilwatch.sources.cert import CertEmail
from exfilwatch.sources.exchange import ExchangeTracking, M365TraceCSV, M365TraceJSON
from exfilwatch.sources.flows import JuniperSRXFlow, NetflowCSV, NfdumpCSV
from exfilwatch.sources.generic import GenericSource
from exfilwatch.sources.postfix import Postfix
from exfilwatch.sources.pulse_secure import PulseSecure
from exfilwatch.sources.syslog_header import ENVELOPE
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
    head = [unwrap_splunk_export(line) for line in head]
    for source in SOURCES.values():
        if source.sniff(head):
            return source
    raise UnknownFormatError(
        f"{file}: could not recognise the log format from its first lines; "
        f"pass --source with one of: {', '.join(SOURCES)}"
    )


# The program tag after a syslog header (RFC 3164 `TAG[PID]:`, RFC 5424 `APP-NAME PROCID`), and the
# source each product's tag names; a central rsyslog feed mixes them on one port. Each pattern
# matches a whole line's start, header and tag, without a capture: RE2 answers such a test with
# its DFA, three times faster over a batch than extracting the tag first (measured).
TAG_END = r"(?:[\s\[:]|$)"  # a tag ends where the PID, the colon or the message begins
TAG_SOURCES: tuple[tuple[str, str], ...] = tuple((ENVELOPE + r" +" + tag, name) for tag, name in (
    (r"(?i:PulseSecure|Pulse-Secure|Ivanti|IVE|juniper-ive)" + TAG_END, "pulse_secure"),
    (r"postfix(?:/|" + TAG_END + ")", "postfix"),
    (r"RT_FLOW", "srx_flow"),
))
_TAGS = tuple((re.compile(pattern), name) for pattern, name in TAG_SOURCES)
SYSLOG_SOURCES = ("pulse_secure", "postfix", "srx_flow")  # what `auto` tries when the tag says nothing


def route_syslog_lines(lines: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`route_syslog_line` for an Arrow array of lines (null where no source claims the line): the
    tags are matched by Arrow (RE2), and only lines whose tag names no product are asked of the
    sources one by one."""
    import pyarrow.compute as pc

    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    routed = pa.nulls(len(lines), pa.large_string())
    for pattern, name in TAG_SOURCES:
        claims = pc.match_substring_regex(lines, pattern)
        routed = pc.if_else(pc.and_kleene(pc.is_null(routed), claims), name, routed)
    unclaimed = pc.indices_nonzero(pc.is_null(routed)).to_pylist()
    if not unclaimed:
        return routed
    values = routed.to_pylist()
    for index, line in zip(unclaimed, pc.take(lines, pa.array(unclaimed, pa.int64())).to_pylist()):
        values[index] = route_syslog_line(line)
    return pa.array(values, pa.large_string())


def route_syslog_line(line: str) -> str | None:
    """The source of one syslog line by its program tag, else by the sources' own recognition; None
    when no source claims it (the receiver quarantines it)."""
    for pattern, name in _TAGS:
        if pattern.match(line):
            return name
    for name in SYSLOG_SOURCES:
        if SOURCES[name].sniff([line]):
            return name
    return None


__all__ = ["route_syslog_line", "route_syslog_lines", "SOURCES", "ParseContext", "ParsedBatch", "Source", "UnknownFormatError", "detect_source", "get_source"]
