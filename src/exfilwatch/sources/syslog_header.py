"""The syslog envelope in front of a vendor message, and its timestamps as SQL.

Appliances send their messages over syslog and whatever stored them put a header in front:
`<PRI>` (optional), the RFC 5424 version `1 ` (optional), a timestamp — BSD `Mmm dd hh:mm:ss`
(RFC 3164, no year) or ISO 8601 (rsyslog's RFC 3339 form, RFC 5424), with or without a UTC
offset — and the sending host; then a program tag or the RFC 5424 fields, which sources do not
need. `ENVELOPE` matches that on the text before a source has found its message body, with
named groups `hdr_iso`, `hdr_zone`, `hdr_bsd` and `hdr_host`; it is unambiguous and has four
groups, so RE2 extracts it with its fast one-pass engine. Text before the body that is not such
an envelope (a line copied from an appliance's log viewer has none) leaves the groups empty.

A relay that stores what it receives may put its own BSD header in front of the sender's RFC
5424 one (`Oct 19 10:20:40 pcs-node1 1 2021-10-19T10:20:40+02:00 10.5.2.3 PulseSecure: - - -`);
`envelope_sql` then reads the inner header: the sender's own time, with its zone, and its own
host name, so a line says the same whether it came through the relay or not.

Times: an ISO timestamp with an offset is an exact instant; one without, and a BSD one (which
takes the year from `--year` or the file's modification time), are local times in the
source's zone (`--source-tz`, default the configured zone) and are converted to UTC.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from exfilwatch.errors import UsageError
from exfilwatch.sources.base import sql_string

ENVELOPE = (
    r"^(?:<\d{1,3}>)?(?:1 )?(?:(?P<hdr_iso>2\d{3}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?P<hdr_zone>Z|[+-]\d\d:?\d\d)?)"
    r"|(?P<hdr_bsd>[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d)) +(?P<hdr_host>\S+)"
)
HEADER_GROUPS = ["hdr_iso", "hdr_zone", "hdr_bsd", "hdr_host"]


def envelope_sql(text: str) -> str:
    """SQL: the struct of HEADER_GROUPS read by ENVELOPE at the start of `text` (the part of a
    line before its message body); see `relayed_envelope_sql` for what follows."""
    listed = ", ".join(sql_string(group) for group in HEADER_GROUPS)
    return f"regexp_extract({text}, {sql_string(ENVELOPE)}, [{listed}])"


def relayed_envelope_sql(text: str, envelope: str) -> str:
    """SQL: the inner RFC 5424 header's groups when a relay's BSD header comes first in `text`
    (`envelope` is the column holding `envelope_sql(text)`), else null; a line's header field is
    then `coalesce(relayed.FIELD, envelope.FIELD)` (regexp_extract gives '' for a group that did
    not match, never null). Null rather than a copy of `envelope`: a CASE over structs copies
    every field of every row.

    The relay case is told apart with string functions on what follows the BSD header's host
    (` 1 ` and a digit), so lines without it pay no second regex; ENVELOPE stays one pattern that
    RE2 runs one-pass (folding the relay prefix into it would make it ambiguous and slower).
    """
    bsd, host = f"{envelope}.hdr_bsd", f"{envelope}.hdr_host"
    # `hdr_bsd` is where the envelope starts (after any <PRI>); the host follows it after spaces
    after_host = f"substr(ltrim(substr({text}, strpos({text}, {bsd}) + length({bsd}))), length({host}) + 1)"
    # `contains` first: a cheap test that most BSD lines fail, before the string arithmetic
    return (f"CASE WHEN {bsd} <> '' AND contains({text}, ' 1 ') AND starts_with({after_host}, ' 1 ') AND substr({after_host}, 4, 1) "
            f"BETWEEN '0' AND '9' THEN {envelope_sql(f'substr({after_host}, 2)')} END")


def checked_zone(tz: str) -> str:
    """The zone name, or a clear error naming the option."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"unknown time zone {tz!r} for --source-tz (expected an IANA name such as Europe/Berlin)") from None
    return tz


# Zones that are UTC at every instant: their wall-clock time is the instant itself.
UTC_ZONES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu",
                       "GMT", "Etc/GMT", "Etc/GMT0", "Etc/GMT+0", "Etc/GMT-0", "GMT0", "GMT+0", "GMT-0",
                       "Etc/Greenwich", "Greenwich"})


def local_time_sql(naive: str, tz: str) -> str:
    """SQL: a TIMESTAMP (wall-clock time in zone `tz`) as TIMESTAMPTZ.

    In UTC the TIMESTAMP's microseconds are already the instant's: `make_timestamptz` of them
    costs nothing beside the parse, `timezone('UTC', …)` 0.045 CPU-s per 500 k times (ICU's
    calendar per value, measured). It gives null for the infinities, which `timezone` keeps:
    those (and nulls) take `timezone`, evaluated only for them as coalesce is lazy."""
    zone = sql_string(checked_zone(tz))
    if tz in UTC_ZONES:
        return f"coalesce(make_timestamptz(epoch_us({naive})), timezone({zone}, {naive}))"
    return f"timezone({zone}, {naive})"


def yearless_time_sql(stamp: str, formats: list[str], tz: str, year: int | None,
                      reference: datetime | None = None) -> str:
    """SQL: a timestamp without a year (`Oct 11 22:14:15`) as TIMESTAMPTZ, dated in `year`.

    With a `reference` (the file's modification time, when the year came from it), a time more
    than a day after the reference belongs to the year before: the December lines of a log that
    was last written in January.
    """
    if year is None:
        return "CAST(NULL AS TIMESTAMPTZ)"
    listed = "[" + ", ".join(sql_string("%Y " + f) for f in formats) + "]"

    def dated(y: int) -> str:
        return local_time_sql(f"try_strptime('{int(y)} ' || {stamp}, {listed})", tz)

    if reference is None:
        return dated(year)
    limit = sql_string((reference + timedelta(days=1)).isoformat())
    return f"CASE WHEN {dated(year)} > TIMESTAMPTZ {limit} THEN {dated(year - 1)} ELSE {dated(year)} END"


def header_time_sql(prefix: str, tz: str, year: int | None, reference: datetime | None = None) -> str:
    """SQL: the header's timestamp as TIMESTAMPTZ, null when there is none or it is invalid.

    `prefix` names the struct holding the HEADER groups (e.g. `h.`).
    """
    iso, zone, bsd = f"{prefix}hdr_iso", f"{prefix}hdr_zone", f"{prefix}hdr_bsd"
    bsd_sql = yearless_time_sql(bsd, ["%b %d %H:%M:%S"], tz, year, reference)
    return (
        f"CASE WHEN {iso} <> '' AND {zone} <> '' THEN TRY_CAST({iso} AS TIMESTAMPTZ) "
        f"WHEN {iso} <> '' THEN {local_time_sql(f'TRY_CAST({iso} AS TIMESTAMP)', tz)} "
        f"WHEN {bsd} <> '' THEN {bsd_sql} END"
    )


def header_time_is_exact_sql(prefix: str) -> str:
    return f"({prefix}hdr_iso <> '' AND {prefix}hdr_zone <> '')"
