"""A Splunk HTTP Event Collector: what forwarders, Cribl, Vector, Fluent Bit and curl send to Splunk.

Endpoints and replies are Splunk's, so a sender works unchanged:

* `POST /services/collector/event` (and `/services/collector`): one or more concatenated JSON
  objects with `event` (a raw line, or an object stored as its JSON), optional `time`, `host`,
  `source`, `sourcetype`, `index`, `fields`. `POST /services/collector/raw`: lines, with
  `sourcetype`, `host`, `source` as query parameters. `GET /services/collector/health`.
* `Authorization: Splunk <token>`; each configured token has a default source and the
  sourcetypes it may send (none listed: any). A sourcetype is a Splunk one (`SOURCETYPES`) or
  one of our source names.
* A request is answered once its events are written to the spool. With a
  `X-Splunk-Request-Channel` header (or `?channel=`) the reply carries an `ackId`, numbered per
  channel from 0 as Splunk does, and `POST /services/collector/ack` on that channel says true
  for it once its events are fsynced and committed to the lake (service/acks.py: the ids survive
  a restart); without a channel the reply itself waits for the fsync, as it is the only
  acknowledgement the sender gets.
* What a sender says about an event besides its line — `host`, `source`, `sourcetype`, `index`,
  `fields` (of `/raw`: the query parameters) — is stored with it, as the JSON text of the
  events' `origin` column (models.ORIGIN).
* Event time. A line keeps its own timestamp. A syslog message sent without its header
  (`postfix/smtpd[12]: …`, `PulseSecure: …`, as Vector or Fluent Bit forward a parsed syslog
  message) gets one from the event's `time` (else the time of receipt) and `host`, as a syslog
  relay writes it; the sources then read it like any syslog line. The `time` also dates
  yearless RFC 3164 timestamps (the year of the event's time).

The same app answers `GET /metrics` (Prometheus text) and `GET /status` (the same as JSON, for
`exfilwatch status`), without a token, as a Prometheus scrape expects.

Errors are Splunk's codes and statuses: 2 (token required, 401), 3 (invalid authorization,
401), 4 (invalid token, 403), 5 (no data, 400), 6 (invalid data format, 400, with the
`invalid-event-number` counted from 0), 7 (a sourcetype the token may not send, 400), 10 (data
channel missing, 400), 12 / 13 (event field required / blank, 400), and 413 over `max_body`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from exfilwatch.config import HecSettings
from exfilwatch.service.spool import encode_many
from exfilwatch.sources import SOURCES

# Splunk sourcetypes (Splunk Add-ons' names) → our sources.
SOURCETYPES = {
    "pulse:connectsecure": "pulse_secure",
    "pulse:connectsecure:vpn": "pulse_secure",
    "juniper:sslvpn": "pulse_secure",
    "postfix_syslog": "postfix",
    "MSExchange:2013:MessageTracking": "exchange_tracking",
    "ms:o365:reporting:messagetrace": "m365_trace_json",
    "bro:conn:json": "zeek_conn_json",
    "zeek:conn:json": "zeek_conn_json",
    "bro:smtp:json": "zeek_smtp_json",
    "zeek:smtp:json": "zeek_smtp_json",
    "juniper:junos:firewall:structured": "srx_flow",
    "juniper:junos:firewall": "srx_flow",
    "syslog": "auto",
}

CHANNEL = "x-splunk-request-channel"


# A syslog message without its header: a program tag (`postfix/smtpd[12]: `, `PulseSecure: `) first.
HEADERLESS = re.compile(r"[A-Za-z][\w./-]{0,47}(?:\[\d{1,10}\])?: ")
META_KEYS = ("host", "source", "sourcetype", "index", "fields")


@dataclass(frozen=True)
class Collector:
    """What the endpoint needs from the service: spool records durably, and say what is committed."""

    # (encoded records, count, token, channel or None) -> the request's ackId on its channel (None without)
    submit: Callable[[bytes, int, str, str | None], Awaitable[int | None]]
    acks: Callable[[str, list[int]], dict[str, bool]]  # (channel, ackIds) -> which are committed


def reply(status: int, text: str, code: int, **extra: object) -> JSONResponse:
    return JSONResponse({"text": text, "code": code, **extra}, status_code=status)


class HecError(Exception):
    def __init__(self, status: int, text: str, code: int, **extra: object):
        self.response = reply(status, text, code, **extra)


def source_for(sourcetype: str | None, default: str, allowed: list[str], number: int) -> str:
    """Our source for an event's sourcetype (the token's default without one)."""
    if sourcetype is None or sourcetype == "":
        return default
    if allowed and sourcetype not in allowed:
        raise HecError(400, "Incorrect sourcetype", 7, **{"invalid-event-number": number})
    if sourcetype in SOURCES or sourcetype == "auto":
        return sourcetype
    mapped = SOURCETYPES.get(sourcetype) or SOURCETYPES.get(sourcetype.lower())
    if mapped is None:
        raise HecError(400, "Invalid data format", 6, **{"invalid-event-number": number})
    return mapped


def parse_events(body: bytes) -> list[dict]:
    """The concatenated JSON objects of an event request (whitespace between them allowed)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HecError(400, "Invalid data format", 6, **{"invalid-event-number": 0}) from None
    decoder = json.JSONDecoder()
    events: list[dict] = []
    position = 0
    while True:
        while position < len(text) and text[position] in " \t\r\n":
            position += 1
        if position >= len(text):
            break
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            raise HecError(400, "Invalid data format", 6, **{"invalid-event-number": len(events)}) from None
        if not isinstance(value, dict):
            raise HecError(400, "Invalid data format", 6, **{"invalid-event-number": len(events)})
        events.append(value)
    if not events:
        raise HecError(400, "No data", 5)
    return events


def event_line(event: dict, number: int) -> bytes:
    if "event" not in event:
        raise HecError(400, "Event field is required", 12, **{"invalid-event-number": number})
    value = event["event"]
    if value is None or value == "" or value == {}:
        raise HecError(400, "Event field cannot be blank", 13, **{"invalid-event-number": number})
    line = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return line.rstrip("\r\n").encode("utf-8", "replace")


_META_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode


def event_meta(event: dict, known: dict[tuple, str] | None = None) -> str:
    """The JSON text of what the event says besides its line (models.ORIGIN), "" when nothing.
    `known`: texts already made in this request, by the event's plain-text `host`, `source`,
    `sourcetype` and `index` (a sender repeats them on every event of a batch)."""
    key = None
    if known is not None and event.get("fields") is None:
        key = tuple(event.get(name) for name in META_KEYS[:4])
        if not all(value is None or type(value) is str for value in key):
            key = None
        elif key in known:
            return known[key]
    meta = {name: event[name] for name in META_KEYS if event.get(name) not in (None, "", {}, [])}
    text = _META_JSON(meta) if meta else ""
    if key is not None:
        known[key] = text
    return text


def with_syslog_header(line: bytes, at: float, host: object) -> bytes:
    """A headerless syslog message with the header a relay would write (ISO 8601 time in UTC, host)."""
    if not HEADERLESS.match(line[:64].decode("utf-8", "replace")):
        return line
    stamp = datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="microseconds")
    name = str(host).split()[0] if isinstance(host, str) and host.strip() else "-"
    return f"{stamp} {name} ".encode() + line


def event_time(event: dict, number: int, received: float) -> float:
    value = event.get("time")
    if value is None:
        return received
    try:
        return float(value)
    except (TypeError, ValueError):
        raise HecError(400, "Invalid data format", 6, **{"invalid-event-number": number}) from None


def create_app(settings: HecSettings, collector: Collector, metrics: Callable[[], bytes] | None = None,
               status: Callable[[], dict] | None = None, clock: Callable[[], float] = time.time) -> FastAPI:
    tokens = {t.token: t for t in settings.tokens}
    app = FastAPI(title="exfilwatch HEC", docs_url=None, redoc_url=None, openapi_url=None)

    def token_of(request: Request):  # noqa: ANN202
        header = request.headers.get("authorization")
        if header is None:
            raise HecError(401, "Token is required", 2)
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "splunk" or not value.strip():
            raise HecError(401, "Invalid authorization", 3)
        token = tokens.get(value.strip())
        if token is None:
            raise HecError(403, "Invalid token", 4)
        return token

    async def body_of(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body:
            raise HecError(413, f"Content too large: the limit is {settings.max_body} bytes", 27)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body:
                raise HecError(413, f"Content too large: the limit is {settings.max_body} bytes", 27)
            chunks.append(chunk)
        return b"".join(chunks)

    def channel_of(request: Request) -> str | None:
        return request.headers.get(CHANNEL) or request.query_params.get("channel") or None

    async def accept(request: Request, records: bytes, count: int, token: str) -> JSONResponse:
        channel = channel_of(request)
        ack_id = await collector.submit(records, count, token, channel)
        if channel:
            return reply(200, "Success", 0, ackId=ack_id)
        return reply(200, "Success", 0)

    @app.exception_handler(HecError)
    async def _hec_error(request: Request, exc: HecError) -> JSONResponse:
        return exc.response

    @app.post("/services/collector/event")
    @app.post("/services/collector/event/1.0")
    @app.post("/services/collector")
    async def event(request: Request) -> JSONResponse:
        token = token_of(request)
        body = await body_of(request)
        received = clock()
        events = parse_events(body)
        origin = f"hec@{request.client.host if request.client else '-'}"
        runs: list[tuple[tuple[str, float, str], list[bytes]]] = []  # events in a row that share their prefix
        metas: dict[tuple, str] = {}
        for number, item in enumerate(events):
            source = source_for(item.get("sourcetype"), token.source, token.sourcetypes, number)
            at = event_time(item, number, received)
            line = with_syslog_header(event_line(item, number), at, item.get("host"))
            shared = (source, at, event_meta(item, metas))
            if runs and runs[-1][0] == shared:
                runs[-1][1].append(line)
            else:
                runs.append((shared, [line]))
        records = b"".join(encode_many(source, origin, at, lines, meta) for (source, at, meta), lines in runs)
        return await accept(request, records, len(events), token.token)

    @app.post("/services/collector/raw")
    @app.post("/services/collector/raw/1.0")
    async def raw(request: Request) -> JSONResponse:
        token = token_of(request)
        body = await body_of(request)
        source = source_for(request.query_params.get("sourcetype"), token.source, token.sourcetypes, 0)
        lines = [line.rstrip(b"\r") for line in body.split(b"\n") if line.strip()]
        if not lines:
            raise HecError(400, "No data", 5)
        received = clock()
        origin = f"hec@{request.client.host if request.client else '-'}"
        records = encode_many(source, origin, received, lines, event_meta(dict(request.query_params)))
        return await accept(request, records, len(lines), token.token)

    @app.post("/services/collector/ack")
    async def ack(request: Request) -> JSONResponse:
        token_of(request)
        channel = channel_of(request)
        if channel is None:
            raise HecError(400, "Data channel is missing", 10)
        try:
            ids = json.loads(await body_of(request))["acks"]
            ids = [int(i) for i in ids]
        except (ValueError, KeyError, TypeError):
            raise HecError(400, "Invalid data format", 6) from None
        return JSONResponse({"acks": collector.acks(channel, ids)})

    @app.get("/services/collector/health")
    @app.get("/services/collector/health/1.0")
    async def health() -> JSONResponse:
        return reply(200, "HEC is healthy", 17)

    if metrics is not None:
        @app.get("/metrics")
        async def metrics_endpoint() -> Response:
            return Response(metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if status is not None:
        @app.get("/status")
        async def status_endpoint() -> JSONResponse:
            return JSONResponse(status())

    return app
