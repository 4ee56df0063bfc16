"""The syslog envelope in front of a vendor message, and its timestamps as SQL.

Appliances send their messages over syslog and whatever stored them put a header in front:
`<PRI>` (optional), a timestamp — BSD `Mmm dd hh:mm:ss` (RFC 3164, no year) or ISO 8601
(rsyslog's RFC 3339 form, RFC 5424), with or without a UTC offset — the sending host, then
the program tag (`PulseSecure: `, `RT_FLOW: `, `name[pid]: `) or the RFC 5424
`APP PROCID MSGID SD ` fields. `HEADER` matches that envelope with named groups `hdr_iso`,
`hdr_zone`, `hdr_bsd` and `hdr_host`; sources make it optional in their line patterns, so
lines copied without a header (an appliance's own log viewer) parse too.

Times: an ISO timestamp with an offset is an exact instant; one without, and a BSD one (which
takes the year from `--year` or the file's modification time), are local times in the
source's zone (`--source-tz`, default the configured zone) and are converted to UTC.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .base import sql_string

HEADER = (
    r"(?:<\d{1,3}>(?:1 )?)?"
    r"(?:(?P<hdr_iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?P<hdr_zone>Z|[+-]\d\d:?\d\d)?)"
    r"|(?P<hdr_bsd>[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d))"
    r" +(?P<hdr_host>\S+) +"
    r"(?:[A-Za-z][\w.\-/]*(?:\[\d+\])?: *|[A-Za-z][\w.\-/]* \S+ \S+ (?:-|\[[^\]]*\]) )?"
)
HEADER_GROUPS = ["hdr_iso", "hdr_zone", "hdr_bsd", "hdr_host"]


def checked_zone(tz: str) -> str:
    """The zone name, or a clear error naming the option."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r} for --source-tz (expected an IANA name such as Europe/Berlin)") from None
    return tz


def local_time_sql(naive: str, tz: str) -> str:
    """SQL: a TIMESTAMP (wall-clock time in zone `tz`) as TIMESTAMPTZ."""
    return f"timezone({sql_string(checked_zone(tz))}, {naive})"


def header_time_sql(prefix: str, tz: str, year: int | None) -> str:
    """SQL: the header's timestamp as TIMESTAMPTZ, null when there is none or it is invalid.

    `prefix` names the struct holding the HEADER groups (e.g. `h.`).
    """
    iso, zone, bsd = f"{prefix}hdr_iso", f"{prefix}hdr_zone", f"{prefix}hdr_bsd"
    if year is None:
        bsd_sql = "CAST(NULL AS TIMESTAMPTZ)"
    else:
        naive = f"try_strptime('{int(year)} ' || {bsd}, '%Y %b %d %H:%M:%S')"
        bsd_sql = local_time_sql(naive, tz)
    return (
        f"CASE WHEN {iso} <> '' AND {zone} <> '' THEN TRY_CAST({iso} AS TIMESTAMPTZ) "
        f"WHEN {iso} <> '' THEN {local_time_sql(f'TRY_CAST({iso} AS TIMESTAMP)', tz)} "
        f"WHEN {bsd} <> '' THEN {bsd_sql} END"
    )


def header_time_is_exact_sql(prefix: str) -> str:
    return f"({prefix}hdr_iso <> '' AND {prefix}hdr_zone <> '')"
