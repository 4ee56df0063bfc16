"""A Splunk HTTP Event Collector: what forwarders, Cribl, Vector, Fluent Bit and curl send to Splunk.

Endpoints and replies are Splunk's, so a sender works unchanged:

* `POST /services/collector/event` (and `/services/collector`): one or more concatenated JSON
  objects with `event` (a raw line, or an object stored as its JSON), optional `time`, `host`,
  `source`, `sourcetype`, `index`, `fields`. `POST /services/collector/raw`: lines, with
  `sourcetype`, `host`, `source` as query parameters. `GET /services/collector/health`.
* `Authorization: Splunk <token>`; each configured token has a default source and the
  sourcetypes it may send (none listed: any). A sourcetype is a Splunk one (`SOURCETYPES`) or
  one of our source names.
* A request is answered only once its events are in the spool and fsynced. With a
  `X-Splunk-Request-Channel` header the reply carries an `ackId`, and `POST
  /services/collector/ack` says true for it once its events are committed to the lake. The
  ackId is the spool position after the request's events, so an acknowledgement survives a
  restart of the service and never says true for events that are not stored.

Errors are Splunk's codes and statuses: 2 (token required, 401), 3 (invalid authorization,
401), 4 (invalid token, 403), 5 (no data, 400), 6 (invalid data format, 400, with the
`invalid-event-number` counted from 0), 7 (a sourcetype the token may not send, 400), 10 (data
channel missing, 400), 12 / 13 (event field required / blank, 400), and 413 over `max_body`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from exfilwatch.config import HecSettings
from exfilwatch.service.spool import encode, encode_many
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


@dataclass(frozen=True)
class Collector:
    """What the endpoint needs from the service: spool records durably, and say what is committed."""

    submit: Callable[[bytes, int, str], Awaitable[int]]  # (encoded records, count, token) -> spool position
    committed: Callable[[], int]
    max_position: Callable[[], int]


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


def event_time(event: dict, number: int, received: float) -> float:
    value = event.get("time")
    if value is None:
        return received
    try:
        return float(value)
    except (TypeError, ValueError):
        raise HecError(400, "Invalid data format", 6, **{"invalid-event-number": number}) from None


def create_app(settings: HecSettings, collector: Collector, metrics: Callable[[], bytes] | None = None,
               clock: Callable[[], float] = time.time) -> FastAPI:
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

    async def accept(request: Request, records: bytes, count: int, token: str) -> JSONResponse:
        channel = request.headers.get(CHANNEL) or request.query_params.get("channel")
        position = await collector.submit(records, count, token)
        if channel:
            return reply(200, "Success", 0, ackId=position)
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
        parts = []
        events = parse_events(body)
        for number, item in enumerate(events):
            source = source_for(item.get("sourcetype"), token.source, token.sourcetypes, number)
            line = event_line(item, number)
            parts.append(encode(source, f"hec@{request.client.host if request.client else '-'}",
                                event_time(item, number, received), line))
        return await accept(request, b"".join(parts), len(parts), token.token)

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
        records = encode_many(source, origin, received, lines)
        return await accept(request, records, len(lines), token.token)

    @app.post("/services/collector/ack")
    async def ack(request: Request) -> JSONResponse:
        token_of(request)
        if not (request.headers.get(CHANNEL) or request.query_params.get("channel")):
            raise HecError(400, "Data channel is missing", 10)
        try:
            ids = json.loads(await body_of(request))["acks"]
            ids = [int(i) for i in ids]
        except (ValueError, KeyError, TypeError):
            raise HecError(400, "Invalid data format", 6) from None
        committed, issued = collector.committed(), collector.max_position()
        return JSONResponse({"acks": {str(i): 0 < i <= committed and i <= issued for i in ids}})

    @app.get("/services/collector/health")
    @app.get("/services/collector/health/1.0")
    async def health() -> JSONResponse:
        return reply(200, "HEC is healthy", 17)

    if metrics is not None:
        @app.get("/metrics")
        async def metrics_endpoint() -> Response:
            return Response(metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
