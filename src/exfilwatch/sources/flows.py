"""Network flows → `network_traffic`: nfdump CSV, a generic NetFlow/IPFIX CSV, Juniper SRX RT_FLOW.

Same columns and meaning as the Zeek conn source: `src_ip` started the flow (the client), so
`bytes_out` is what it sent and `bytes_in` what it received; `_time` is when the flow began;
`event_type` is `network-connection`.

* `nfdump_csv` — `nfdump -o csv`: the `ts,te,td,sa,da,sp,dp,pr,…,ibyt,opkt,obyt,…` header (the
  columns are found by name, so 1.6 and 1.7 layouts both work) and the trailing `Summary` block,
  which is skipped. `ibyt` (bytes of the flow, sa → da) is `bytes_out`, `obyt` (the reverse
  direction, which only bidirectional exporters such as NSEL fill) is `bytes_in`. nfdump prints
  local times: they are read in `--source-tz`.
* `netflow_csv` — any CSV (`,` `;` or tab) with a header naming at least a source address, a
  destination address and a start time; column names are matched case-insensitively with `_`,
  `-`, `.` and spaces ignored, against `NETFLOW_COLUMNS` below (nfdump, nProbe/NetFlow v9,
  IPFIX, Zeek and common export names). NetFlow's IN_BYTES (bytes of the flow) is `bytes_out`
  and OUT_BYTES `bytes_in`. Times: epoch seconds, epoch milliseconds (values above 10^11), ISO
  8601 with an offset (exact) or without (`--source-tz`).
* `srx_flow` — Juniper SRX `RT_FLOW_SESSION_CLOSE` syslog, structured (`[junos@2636… key="value"
  …]`) and standard text (`session closed REASON: SRC/PORT->DST/PORT … PROTO POLICY FROM-ZONE
  TO-ZONE SESSION-ID PKTS(BYTES) PKTS(BYTES) ELAPSED APP …`). `bytes-from-client` is `bytes_out`,
  `bytes-from-server` `bytes_in`; `_time` is the close time minus `elapsed-time`.
  RT_FLOW_SESSION_CREATE / DENY and other syslog messages are skipped and counted.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

import duckdb

from exfilwatch.errors import SourceError
from exfilwatch.models import NETWORK_TRAFFIC
from exfilwatch.sources.base import ParseContext, ParsedBatch, blank_sql, epoch_sql, raw_ref_sql, sql_string
from exfilwatch.sources.syslog_header import header_time_sql, local_time_sql

_IP_RE = "[0-9A-Fa-f.:]+"


def transport_sql(expr: str) -> str:
    """SQL: an IP protocol number or name as Zeek's lower-case transport name."""
    return (f"CASE lower({expr}) WHEN '6' THEN 'tcp' WHEN '17' THEN 'udp' WHEN '1' THEN 'icmp' "
            f"WHEN '58' THEN 'icmp' WHEN 'icmp6' THEN 'icmp' WHEN 'ipv6-icmp' THEN 'icmp' WHEN '47' THEN 'gre' "
            f"WHEN '50' THEN 'esp' WHEN '51' THEN 'ah' WHEN '132' THEN 'sctp' ELSE nullif(lower({expr}), '') END")


def flow_checks_sql(cols: dict[str, str]) -> list[str]:
    """SQL `WHEN … THEN reason` clauses validating text columns named after the model's fields."""
    checks = []
    for field in ("src_ip", "dest_ip"):
        expr = cols.get(field)
        if expr:
            checks.append(f"WHEN nullif({expr}, '') IS NULL THEN 'missing {field}'")
            checks.append(
                f"WHEN NOT regexp_full_match({expr}, {sql_string(_IP_RE)}) OR NOT (contains({expr}, '.') OR contains({expr}, ':')) "
                f"THEN 'bad address in {field}: ' || {expr}"
            )
    for field in ("src_port", "dest_port"):
        expr = cols.get(field)
        if expr:
            checks.append(
                f"WHEN nullif({expr}, '') IS NOT NULL AND NOT coalesce(TRY_CAST({expr} AS INTEGER) BETWEEN 0 AND 65535, false) "
                f"THEN 'bad port in {field}: ' || {expr}"
            )
    for field in ("bytes_out", "bytes_in"):
        expr = cols.get(field)
        if expr:
            checks.append(
                f"WHEN nullif({expr}, '') IS NOT NULL AND NOT coalesce(TRY_CAST({expr} AS BIGINT) >= 0, false) "
                f"THEN 'bad byte count in {field}: ' || {expr}"
            )
    expr = cols.get("duration")
    if expr:
        checks.append(
            f"WHEN nullif({expr}, '') IS NOT NULL AND NOT coalesce(TRY_CAST({expr} AS DOUBLE) >= 0, false) "
            f"THEN 'bad duration: ' || {expr}"
        )
    return checks


def flow_events_sql(ctx: ParseContext, table: str, source_name: str) -> str:
    """SQL: the model's rows from a table with text columns src_ip … duration, session_id, app and `_time`."""
    return f"""(
        SELECT _time, src_ip, TRY_CAST(nullif(src_port, '') AS INTEGER) AS src_port, dest_ip,
               TRY_CAST(nullif(dest_port, '') AS INTEGER) AS dest_port, {transport_sql('transport')} AS transport,
               nullif(app, '') AS app,
               TRY_CAST(nullif(bytes_in, '') AS BIGINT) AS bytes_in, TRY_CAST(nullif(bytes_out, '') AS BIGINT) AS bytes_out,
               CASE WHEN nullif(bytes_in, '') IS NULL AND nullif(bytes_out, '') IS NULL THEN NULL
                    ELSE coalesce(TRY_CAST(nullif(bytes_in, '') AS BIGINT), 0) + coalesce(TRY_CAST(nullif(bytes_out, '') AS BIGINT), 0)
                    END AS bytes,
               duration_s AS duration, nullif(session_id, '') AS session_id, 'network-connection' AS event_type,
               {sql_string(source_name)} AS source, {raw_ref_sql(ctx)} AS raw_ref
        FROM {table} WHERE outcome = 'parsed')"""


def csv_fields_sql(line: str, sep: str) -> str:
    """SQL: the fields of a CSV line; double-quoted fields (with "" escapes) only cost a regex when present."""
    s = sql_string(sep)
    pattern = sql_string(f'("(?:[^"]|"")*"|[^{re.escape(sep)}"]*){re.escape(sep)}')
    return (
        f"CASE WHEN contains({line}, '\"') THEN list_transform(regexp_extract_all({line} || {s}, {pattern}, 1), "
        f"lambda v: CASE WHEN starts_with(v, '\"') THEN replace(substr(v, 2, length(v) - 2), '\"\"', '\"') ELSE v END) "
        f"ELSE string_split({line}, {s}) END"
    )


def flexible_time_sql(expr: str, tz: str) -> str:
    """SQL: epoch seconds / epoch ms / ISO 8601 (exact with offset, else local in `tz`) / 'YYYY-MM-DD hh:mm:ss[.f]'."""
    e = f"trim({expr})"
    return (
        f"CASE WHEN regexp_full_match({e}, '[0-9]+(\\.[0-9]+)?') THEN "
        f"  {epoch_sql(f'(TRY_CAST({e} AS DOUBLE) / CASE WHEN TRY_CAST({e} AS DOUBLE) > 1e11 THEN 1000.0 ELSE 1.0 END)')} "
        f"WHEN regexp_matches({e}, '(Z|[+-][0-9][0-9]:?[0-9][0-9])$') THEN TRY_CAST({e} AS TIMESTAMPTZ) "
        f"ELSE {local_time_sql(f'TRY_CAST({e} AS TIMESTAMP)', tz)} END"
    )


# --- nfdump ------------------------------------------------------------------------------------

NFDUMP_PREFIX = "ts,te,td,sa,da,sp,dp,pr"


def _first_line(head: list[str]) -> str | None:
    return next((line.strip() for line in head if line.strip()), None)


class NfdumpCSV:
    name = "nfdump_csv"
    data_model = NETWORK_TRAFFIC
    description = "nfdump -o csv (NetFlow v5/v9, IPFIX, sFlow via nfcapd/sfcapd), Summary block skipped"
    sample = ("2026-03-03 09:15:02,2026-03-03 09:15:07,5.012,10.20.0.15,93.184.216.34,51234,443,TCP,.AP.SF,0,0,"
              "120,5400000,0,0,3,2,0,0,24,0,0,0,0.0.0.0,0.0.0.0,0,0,00:00:00:00:00:00,00:00:00:00:00:00,"
              "00:00:00:00:00:00,00:00:00:00:00:00,0-0-0,0-0-0,0-0-0,0-0-0,0-0-0,0-0-0,0-0-0,0-0-0,0-0-0,0-0-0,"
              "0.000,0.000,0.000,192.0.2.1,0/0,1,1970-01-01 00:00:00.000")

    def sniff(self, head: list[str]) -> bool:
        first = _first_line(head)
        return first is not None and first.startswith(NFDUMP_PREFIX)

    def parse(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> ParsedBatch:
        header = _first_line(ctx.header_lines) or ""
        names = header.split(",")
        position = {name: i + 1 for i, name in enumerate(names)}
        missing = [n for n in ("ts", "sa", "da") if n not in position]
        if missing:
            raise SourceError(f"{ctx.origin}: nfdump CSV header lacks {', '.join(missing)} (expected `nfdump -o csv` output)")

        def col(name: str) -> str:
            return f"trim(f[{position[name]}])" if name in position else "NULL"

        duration = ("TRY_CAST(td AS DOUBLE)" if "td" in position else
                    "epoch(te_time) - epoch(_time)" if "te" in position else "NULL")
        table = "nfdump_csv_lines"
        cols = {k: k for k in ("src_ip", "dest_ip", "src_port", "dest_port", "bytes_out", "bytes_in")}
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE {table} AS
            WITH split AS (
                SELECT line_no, line, string_split(line, ',') AS f FROM raw_lines
            ), fields AS (
                SELECT line_no, line, len(f) AS n, {col('ts')} AS ts, {col('te')} AS te, {col('td')} AS td,
                       {col('sa')} AS src_ip, {col('da')} AS dest_ip, {col('sp')} AS src_port, {col('dp')} AS dest_port,
                       {col('pr')} AS transport, {col('ibyt')} AS bytes_out, {col('obyt')} AS bytes_in,
                       NULL AS app, NULL AS session_id
                FROM split
            ), timed AS (
                SELECT *, {flexible_time_sql('ts', ctx.source_tz)} AS _time,
                       {flexible_time_sql('te', ctx.source_tz) if 'te' in position else 'NULL'} AS te_time
                FROM fields
            ), typed AS (
                SELECT *, CAST({duration} AS DOUBLE) AS duration_s FROM timed
            )
            SELECT *, CASE WHEN reason IS NULL THEN 'parsed'
                           WHEN reason IN ('header', 'summary', 'blank line') THEN 'skipped'
                           ELSE 'quarantined' END AS outcome
            FROM (
                SELECT *,
                    CASE WHEN {blank_sql()} THEN 'blank line'
                         WHEN starts_with(line, {sql_string(header)}) AND rtrim(line) = {sql_string(header)} THEN 'header'
                         WHEN starts_with(line, 'Summary') OR starts_with(line, 'flows,bytes,packets')
                              OR (n = 6 AND regexp_full_match(trim(line), '[0-9.]+(,[0-9.]+){{5}}')) THEN 'summary'
                         WHEN n <> {len(names)} THEN 'expected {len(names)} comma-separated fields as in the header, found ' || n
                         WHEN _time IS NULL THEN 'bad time in ts: ' || coalesce(ts, '') || ' (expected YYYY-MM-DD hh:mm:ss[.fff] or epoch)'
                         {' '.join(flow_checks_sql(cols))}
                         WHEN nullif(td, '') IS NOT NULL AND NOT coalesce(TRY_CAST(td AS DOUBLE) >= 0, false) THEN 'bad duration in td: ' || td
                         END AS reason
                FROM typed
            )
        """)
        return ParsedBatch(classified=f"(SELECT line_no, outcome, reason FROM {table})",
                           events=flow_events_sql(ctx, table, self.name))


# --- generic NetFlow / IPFIX CSV ----------------------------------------------------------------

# model field -> accepted column names (normalised: lower case, without _ - . and spaces), by priority.
NETFLOW_COLUMNS: dict[str, list[str]] = {
    "src_ip": ["srcaddr", "srcip", "srcipaddr", "srcaddress", "sa", "sourceip", "sourceaddress", "sourceipaddress",
               "sourceipv4address", "sourceipv6address", "ipv4srcaddr", "ipv6srcaddr", "idorigh", "src", "source"],
    "dest_ip": ["dstaddr", "dstip", "dstipaddr", "dstaddress", "da", "destip", "destaddr", "destinationip",
                "destinationaddress", "destinationipaddress", "destinationipv4address", "destinationipv6address",
                "ipv4dstaddr", "ipv6dstaddr", "idresph", "dst", "dest", "destination"],
    "src_port": ["srcport", "sp", "sport", "sourceport", "sourcetransportport", "l4srcport", "idorigp"],
    "dest_port": ["dstport", "dp", "dport", "destport", "destinationport", "destinationtransportport", "l4dstport",
                  "idrespp"],
    "transport": ["protocol", "proto", "pr", "prot", "protocolidentifier", "ipprotocol", "transport"],
    "bytes_out": ["bytesout", "inbytes", "ibyt", "bytes", "octets", "doctets", "octetdeltacount", "octettotalcount",
                  "srcbytes", "sentbytes", "bytessent", "origbytes"],
    "bytes_in": ["bytesin", "outbytes", "obyt", "reverseoctetdeltacount", "reverseoctettotalcount", "dstbytes",
                 "rcvdbytes", "bytesreceived", "respbytes"],
    "start": ["first", "start", "starttime", "ts", "flowstart", "flowstartseconds", "flowstartmilliseconds",
              "flowstartmicroseconds", "firstswitched", "firstseen", "timestart", "stime", "timestamp", "time"],
    "end": ["last", "end", "endtime", "te", "flowend", "flowendseconds", "flowendmilliseconds", "flowendmicroseconds",
            "lastswitched", "lastseen", "timeend", "etime"],
    "duration": ["duration", "td", "dur", "flowduration"],
    "app": ["app", "application", "applicationname", "service", "appname"],
}


def normalise_column(name: str) -> str:
    return re.sub(r"[\s_.\-]", "", name.strip().strip('"').lower())


@dataclass(frozen=True)
class CsvHeader:
    separator: str
    names: list[str]
    mapping: dict[str, int]  # model field -> 1-based column position


def read_netflow_header(head: list[str]) -> CsvHeader | None:
    line = next((row for row in head if row.strip() and not row.startswith("#")), None)
    if line is None:
        return None
    separator = max([",", ";", "\t"], key=line.count)
    if line.count(separator) < 2:
        return None
    try:
        names = next(csv.reader(io.StringIO(line), delimiter=separator))
    except csv.Error:  # a stray carriage return or quote: not a CSV header this source can read
        return None
    normalised = [normalise_column(n) for n in names]
    mapping: dict[str, int] = {}
    for field, aliases in NETFLOW_COLUMNS.items():
        for alias in aliases:
            if alias in normalised:
                mapping[field] = normalised.index(alias) + 1
                break
    if not {"src_ip", "dest_ip", "start"} <= mapping.keys():
        return None
    return CsvHeader(separator=separator, names=names, mapping=mapping)


class NetflowCSV:
    name = "netflow_csv"
    data_model = NETWORK_TRAFFIC
    description = ("NetFlow / IPFIX CSV export with a header (src/dst address, ports, protocol, bytes, "
                   "start/end or duration; see NETFLOW_COLUMNS for the accepted names)")
    sample = ("start_time,end_time,src_addr,dst_addr,src_port,dst_port,protocol,in_bytes,out_bytes\n"
              "2026-03-03T09:15:02Z,2026-03-03T09:15:07Z,10.20.0.15,93.184.216.34,51234,443,6,5400000,1200")

    def sniff(self, head: list[str]) -> bool:
        first = _first_line(head)
        if first is None or first.startswith(NFDUMP_PREFIX) or first.startswith("#") or first.startswith("{"):
            return False
        return read_netflow_header(head) is not None

    def parse(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> ParsedBatch:
        header = read_netflow_header(ctx.header_lines)
        if header is None:
            raise SourceError(
                f"{ctx.origin}: the first line is not a flow CSV header naming a source address, a destination "
                f"address and a start time (accepted names: {', '.join(NETFLOW_COLUMNS['src_ip'][:4])}, …)"
            )
        m = header.mapping

        def col(field: str) -> str:
            return f"trim(f[{m[field]}])" if field in m else "NULL"

        if "duration" in m:
            duration = f"TRY_CAST({col('duration')} AS DOUBLE)"
        elif "end" in m:
            duration = "epoch(end_time) - epoch(_time)"
        else:
            duration = "NULL"
        header_line = header.separator.join(header.names)
        table = "netflow_csv_lines"
        cols = {k: k for k in ("src_ip", "dest_ip", "src_port", "dest_port", "bytes_out", "bytes_in")}
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE {table} AS
            WITH split AS (
                SELECT line_no, line, {csv_fields_sql('line', header.separator)} AS f FROM raw_lines
            ), fields AS (
                SELECT line_no, line, len(f) AS n, {col('start')} AS start_t, {col('end')} AS end_t,
                       {col('src_ip')} AS src_ip, {col('dest_ip')} AS dest_ip, {col('src_port')} AS src_port,
                       {col('dest_port')} AS dest_port, {col('transport')} AS transport, {col('bytes_out')} AS bytes_out,
                       {col('bytes_in')} AS bytes_in, {col('app')} AS app, {col('duration')} AS duration_t,
                       NULL AS session_id
                FROM split
            ), timed AS (
                SELECT *, {flexible_time_sql('start_t', ctx.source_tz)} AS _time,
                       {flexible_time_sql('end_t', ctx.source_tz)} AS end_time
                FROM fields
            ), typed AS (
                SELECT *, CAST({duration} AS DOUBLE) AS duration_s FROM timed
            )
            SELECT *, CASE WHEN reason IS NULL THEN 'parsed'
                           WHEN reason IN ('header', 'blank line') THEN 'skipped'
                           ELSE 'quarantined' END AS outcome
            FROM (
                SELECT *,
                    CASE WHEN {blank_sql()} THEN 'blank line'
                         WHEN line_no = {self._header_line_no(ctx)} OR replace(line, '"', '') = {sql_string(header_line.replace('"', ''))} THEN 'header'
                         WHEN n <> {len(header.names)} THEN 'expected {len(header.names)} fields as in the header, found ' || n
                         WHEN _time IS NULL THEN 'bad start time: ' || coalesce(start_t, '') || ' (expected epoch seconds or ms, or ISO 8601)'
                         {' '.join(flow_checks_sql(cols))}
                         WHEN nullif(duration_t, '') IS NOT NULL AND NOT coalesce(TRY_CAST(duration_t AS DOUBLE) >= 0, false) THEN 'bad duration: ' || duration_t
                         WHEN nullif(end_t, '') IS NOT NULL AND end_time IS NULL THEN 'bad end time: ' || end_t
                         END AS reason
                FROM typed
            )
        """)
        return ParsedBatch(classified=f"(SELECT line_no, outcome, reason FROM {table})",
                           events=flow_events_sql(ctx, table, self.name))

    @staticmethod
    def _header_line_no(ctx: ParseContext) -> int:
        for index, line in enumerate(ctx.header_lines):
            if line.strip() and not line.startswith("#"):
                return index + 1
        return 1


# --- Juniper SRX RT_FLOW ------------------------------------------------------------------------

# The sender's time: a relay that stored the message may have put its own header in front of the
# SRX's RFC 5424 one (`Oct 19 08:20:41 relay01 [<14>]1 2026-10-19T10:20:40.120+02:00 srx01 RT_FLOW …`,
# or with an ISO timestamp first); then the inner header's time is the one read, as for Pulse.
SRX_TIME = (
    r"^(?:<\d{1,3}>)?(?:1 )?(?:(?P<hdr_bsd>[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d)\s+\S+\s+(?:<\d{1,3}>)?(?:1 )?"
    r"|\d{4}-\d\d-\d\dT\S+\s+\S+\s+(?:<\d{1,3}>)?1 )?"
    r"(?:(?P<hdr_iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?P<hdr_zone>Z|[+-]\d\d:?\d\d)?))?"
)
# Fields are taken with small patterns of few groups each (RE2 extracts those quickly): one per
# structured-data key, and for the text form one for the reason and address tuple and one for
# the run `PROTOCOL POLICY FROM-ZONE TO-ZONE SESSION-ID PKTS(BYTES) PKTS(BYTES) ELAPSED [APP]`.
# Structured data: the keys Junos writes next to each other are read by two patterns (long lines
# make every extra scan count); each key also has its own pattern, used when those two do not
# match (another Junos release, another order).
SRX_ADDRESSES = (r' source-address="([^"]*)" source-port="([^"]*)" destination-address="([^"]*)"'
                 r' destination-port="([^"]*)"')
SRX_COUNTERS = (r' session-id(?:-32)?="([^"]*)" packets-from-client="[^"]*" bytes-from-client="([^"]*)"'
                r' packets-from-server="[^"]*" bytes-from-server="([^"]*)" elapsed-time="([^"]*)"')
SRX_ADDRESS_FIELDS = {"src_ip": "source-address", "src_port": "source-port", "dest_ip": "destination-address",
                      "dest_port": "destination-port"}
SRX_COUNTER_FIELDS = {"session_id": "session-id-32", "bytes_out": "bytes-from-client",
                      "bytes_in": "bytes-from-server", "elapsed": "elapsed-time"}
SRX_OTHER_FIELDS = {"transport": "protocol-id", "application": "application", "service": "service-name"}
SRX_TEXT_HEAD = r"session closed ([^:]*): (\S+) (\S+) (\S+)"
SRX_TEXT_COUNTERS = r" (\d+ \S+ \S+ \S+ \d+ \d+\(\d+\) \d+\(\d+\) \d+)(?: (\S+))?"
_SRX_SYSLOG = r"^(?:<\d{1,3}>)?(?:1 )?(?:[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)"


def _sd_run_anchored(pattern: str, first_key: str, names: list[str]) -> str:
    """SQL: `pattern`'s groups in `m`, read where its first key first occurs.

    Every match of `pattern` starts with `first_key`, so when the pattern matches at that key's
    first occurrence, that is the leftmost match an unanchored search would find; there the
    pattern is anchored, which RE2 runs one-pass instead of searching a ~700-byte line from every
    position. Where it finds nothing, `_sd_run_searched` gives the unanchored search's groups."""
    listed = ", ".join(sql_string(n) for n in names)
    return f"regexp_extract(substr(m, strpos(m, {sql_string(first_key)})), {sql_string('^' + pattern)}, [{listed}])"


def _sd_run_searched(anchored: str, pattern: str, names: list[str]) -> str:
    """SQL: the unanchored search of `pattern` in `m` on the structured lines where `anchored` (the
    column of `_sd_run_anchored`) found nothing, else null. A separate column that is null on
    almost every line, read with coalesce: a CASE choosing between two structs would copy one
    on every line, which cost what the anchored pattern saves (measured)."""
    listed = ", ".join(sql_string(n) for n in names)
    nothing = " AND ".join(f"{anchored}.{n} = ''" for n in names)
    return f"CASE WHEN structured AND {nothing} THEN regexp_extract(m, {sql_string(pattern)}, [{listed}]) END"


def _sd(key: str) -> str:
    pattern = " " + key + '="([^"]*)"'
    return f"nullif(regexp_extract(m, {sql_string(pattern)}, 1), '')"


class JuniperSRXFlow:
    name = "srx_flow"
    data_model = NETWORK_TRAFFIC
    description = "Juniper SRX RT_FLOW_SESSION_CLOSE syslog, structured (sd-syslog) and standard text"
    sample = ('<14>1 2026-03-03T09:15:07.120Z srx01 RT_FLOW - RT_FLOW_SESSION_CLOSE [junos@2636.1.1.1.2.129 '
              'reason="TCP FIN" source-address="10.20.0.15" source-port="51234" destination-address="93.184.216.34" '
              'destination-port="443" service-name="junos-https" protocol-id="6" policy-name="trust-to-untrust" '
              'source-zone-name="trust" destination-zone-name="untrust" session-id-32="40012" packets-from-client="120" '
              'bytes-from-client="5400000" packets-from-server="90" bytes-from-server="1200" elapsed-time="5" '
              'application="SSL" nested-application="UNKNOWN"]')

    def sniff(self, head: list[str]) -> bool:
        lines = [line for line in head if line.strip()][:20]
        return any("RT_FLOW_SESSION_" in line and "RT_FLOW" in line.split("RT_FLOW_SESSION_", 1)[0] + "RT_FLOW"
                   for line in lines)

    def parse(self, con: duckdb.DuckDBPyConnection, ctx: ParseContext) -> ParsedBatch:
        tz = ctx.source_tz
        table = "srx_flow_lines"
        cols = {k: k for k in ("src_ip", "dest_ip", "src_port", "dest_port", "bytes_out", "bytes_in")}
        close_kinds = "('CLOSE', 'CLOSE_LS')"
        sd_other = ", ".join(f"{name} := {_sd(key)}" for name, key in SRX_OTHER_FIELDS.items())

        def sd_value(group: str, name: str, key: str) -> str:
            fallback = f"coalesce({_sd(key)}, {_sd('session-id')})" if key == "session-id-32" else _sd(key)
            value = f"coalesce({group}1.{name}, {group}0.{name})"  # see _sd_run_searched
            return f"CASE WHEN {value} <> '' THEN {value} ELSE {fallback} END"
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE {table} AS
            WITH base AS (
                SELECT line_no, line, strpos(line, 'RT_FLOW_SESSION_') AS pos FROM raw_lines
            ), kinded AS (
                SELECT *, CASE WHEN pos > 0 THEN regexp_extract(substr(line, pos + 16, 32), '^([A-Z_]+)', 1) END AS kind
                FROM base
            ), closes AS (
                SELECT *, kind IN {close_kinds} AS is_close,
                       CASE WHEN kind IN {close_kinds} THEN substr(line, pos + 16 + length(kind), 8) = ' [junos@' END AS structured,
                       CASE WHEN kind IN {close_kinds} THEN substr(line, pos) END AS m
                FROM kinded
            ), extracted AS (
                -- every line goes one way: CASE evaluates each branch on its own rows only
                SELECT *,
                       CASE WHEN structured THEN {_sd_run_anchored(SRX_ADDRESSES, ' source-address="', list(SRX_ADDRESS_FIELDS))} END AS sa0,
                       CASE WHEN structured THEN {_sd_run_anchored(SRX_COUNTERS, ' session-id', list(SRX_COUNTER_FIELDS))} END AS sc0,
                       CASE WHEN structured THEN struct_pack({sd_other}) END AS so,
                       CASE WHEN NOT structured THEN regexp_extract(m, {sql_string(SRX_TEXT_HEAD)}, ['reason', 'tuple', 't2', 't3']) END AS a,
                       CASE WHEN NOT structured THEN regexp_extract(m, {sql_string(SRX_TEXT_COUNTERS)}, ['run', 'app']) END AS c
                FROM closes
            ), text_split AS (
                SELECT *, {_sd_run_searched('sa0', SRX_ADDRESSES, list(SRX_ADDRESS_FIELDS))} AS sa1,
                       {_sd_run_searched('sc0', SRX_COUNTERS, list(SRX_COUNTER_FIELDS))} AS sc1,
                       string_split(c.run, ' ') AS run,
                       string_split(split_part(a.tuple, '->', 1), '/') AS client,
                       string_split(split_part(a.tuple, '->', 2), '/') AS server
                FROM extracted
            ), fields AS (
                SELECT line_no, line, kind, is_close, substr(line, 1, pos - 1) AS pre,
                       CASE WHEN structured THEN true
                            ELSE a.tuple <> '' AND c.run <> '' AND len(client) = 2 AND len(server) = 2 END AS ok,
                       CASE WHEN structured THEN {sd_value('sa', 'src_ip', SRX_ADDRESS_FIELDS['src_ip'])} ELSE client[1] END AS src_ip,
                       CASE WHEN structured THEN {sd_value('sa', 'src_port', SRX_ADDRESS_FIELDS['src_port'])} ELSE client[2] END AS src_port,
                       CASE WHEN structured THEN {sd_value('sa', 'dest_ip', SRX_ADDRESS_FIELDS['dest_ip'])} ELSE server[1] END AS dest_ip,
                       CASE WHEN structured THEN {sd_value('sa', 'dest_port', SRX_ADDRESS_FIELDS['dest_port'])} ELSE server[2] END AS dest_port,
                       CASE WHEN structured THEN so.transport ELSE run[1] END AS transport,
                       CASE WHEN structured THEN {sd_value('sc', 'session_id', 'session-id-32')} ELSE run[5] END AS session_id,
                       CASE WHEN structured THEN {sd_value('sc', 'bytes_out', SRX_COUNTER_FIELDS['bytes_out'])} ELSE rtrim(split_part(run[6], '(', 2), ')') END AS bytes_out,
                       CASE WHEN structured THEN {sd_value('sc', 'bytes_in', SRX_COUNTER_FIELDS['bytes_in'])} ELSE rtrim(split_part(run[7], '(', 2), ')') END AS bytes_in,
                       CASE WHEN structured THEN {sd_value('sc', 'elapsed', SRX_COUNTER_FIELDS['elapsed'])} ELSE run[8] END AS elapsed,
                       CASE WHEN structured THEN so.application ELSE nullif(c.app, '') END AS application,
                       CASE WHEN structured THEN so.service WHEN starts_with(a.t2, '0x') THEN a.t3 ELSE a.t2 END AS service
                FROM text_split
            ), timed AS (
                SELECT *, {header_time_sql('h.', tz, ctx.year, ctx.reference_time)} AS close_time, h.hdr_bsd AS hdr_bsd,
                       CASE WHEN upper(coalesce(application, '')) IN ('', 'UNKNOWN', 'N/A', 'NONE') THEN
                            CASE WHEN upper(coalesce(service, '')) IN ('', 'NONE', 'N/A') THEN NULL ELSE service END
                            ELSE lower(application) END AS app
                FROM (SELECT *, CASE WHEN is_close THEN regexp_extract(pre, {sql_string(SRX_TIME)}, ['hdr_bsd', 'hdr_iso', 'hdr_zone']) END AS h
                      FROM fields)
            ), classified AS (
                SELECT *, close_time - to_seconds(CASE WHEN TRY_CAST(elapsed AS BIGINT) BETWEEN 0 AND 3153600000
                                                       THEN TRY_CAST(elapsed AS BIGINT) ELSE 0 END) AS _time,
                       TRY_CAST(elapsed AS DOUBLE) AS duration_s,
                    CASE WHEN {blank_sql()} THEN 'blank line'
                         WHEN kind IS NULL AND regexp_matches(line, {sql_string(_SRX_SYSLOG)}) THEN 'other syslog message'
                         WHEN kind IS NULL THEN 'not a syslog line (expected a Juniper SRX RT_FLOW message)'
                         WHEN NOT is_close THEN 'RT_FLOW_SESSION_' || kind
                         WHEN NOT ok THEN 'RT_FLOW_SESSION_CLOSE not in the expected form: session closed REASON: '
                              || 'SRC/PORT->DST/PORT … PROTOCOL POLICY FROM-ZONE TO-ZONE SESSION-ID PKTS(BYTES) PKTS(BYTES) ELAPSED …'
                         WHEN close_time IS NULL AND hdr_bsd <> '' THEN 'syslog timestamp without a year: pass --year'
                         WHEN close_time IS NULL THEN 'no usable syslog timestamp'
                         {' '.join(flow_checks_sql(cols))}
                         WHEN nullif(elapsed, '') IS NOT NULL AND NOT coalesce(TRY_CAST(elapsed AS BIGINT) BETWEEN 0 AND 3153600000, false)
                              THEN 'bad elapsed-time: ' || elapsed
                         END AS reason
                FROM timed
            )
            -- only what the events and the outcomes read: the lines themselves are not stored again
            SELECT line_no, reason, _time, src_ip, src_port, dest_ip, dest_port, transport, app, bytes_in, bytes_out,
                   duration_s, session_id,
                   CASE WHEN reason IS NULL THEN 'parsed'
                           WHEN reason = 'blank line' OR reason = 'other syslog message'
                                OR (kind IS NOT NULL AND NOT is_close) THEN 'skipped'
                           ELSE 'quarantined' END AS outcome
            FROM classified
        """)
        return ParsedBatch(classified=f"(SELECT line_no, outcome, reason FROM {table})",
                           events=flow_events_sql(ctx, table, self.name))
