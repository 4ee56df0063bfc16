"""HTTP delivery on httpx: a POST retried with exponential backoff, and the webhook output.

A 2xx answer delivers. A connection error, a timeout, a 5xx, 408, 425 or 429 is retried after
`backoff`, `2 x backoff`, `4 x backoff`, ... seconds (`retries` times); any other 4xx is not
retried (the request itself is wrong: a bad token, a bad URL). The error names the status and the
server's own reason where it gives one (Splunk's `{"text": "Invalid token", "code": 4}`).

One `httpx.Client` serves a whole delivery run, so items share connections (keep-alive) and the
TLS handshake is made once. The webhook POSTs one JSON body per item and yields each outcome as
soon as it is known, so the caller records an acknowledged item before sending the next.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from exfilwatch import __version__
from exfilwatch.errors import OutputError
from exfilwatch.outputs.tls import tls_context
from exfilwatch.riskconfig import HecOutput, WebhookOutput

RETRYABLE_STATUS = {408, 425, 429}

# (records, delivered, attempts, last error) for the records one request carried
Outcome = tuple[list[dict[str, Any]], bool, int, str | None]


class HttpError(OutputError):
    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


def http_client(spec: WebhookOutput | HecOutput, headers: dict[str, str]) -> httpx.Client:
    verify = tls_context(spec.verify, spec.ca_file)
    return httpx.Client(verify=verify, timeout=spec.timeout, headers={
        "Content-Type": "application/json", "User-Agent": f"exfilwatch/{__version__}", **headers})


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "text" in body:
        return f"{body['text']}" + (f" (code {body['code']})" if "code" in body else "")
    return response.reason_phrase or response.text[:200]


def post(client: httpx.Client, url: str, content: bytes) -> None:
    try:
        response = client.post(url, content=content)
    except httpx.HTTPError as exc:
        raise HttpError(f"cannot reach {url}: {exc or type(exc).__name__}", True) from None
    if not response.is_success:
        retryable = response.status_code >= 500 or response.status_code in RETRYABLE_STATUS
        raise HttpError(f"HTTP {response.status_code} {_reason(response)}", retryable)


def post_with_retries(client: httpx.Client, url: str, content: bytes, retries: int, backoff: float,
                      sleep: Callable[[float], None] = time.sleep) -> tuple[bool, int, str | None]:
    """(delivered, attempts, last error)."""
    error = None
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff * 2 ** (attempt - 1))
        try:
            post(client, url, content)
            return True, attempt + 1, None
        except HttpError as exc:
            error = str(exc)
            if not exc.retryable:
                return False, attempt + 1, error
    return False, retries + 1, error


def webhook_outcomes(spec: WebhookOutput, records: list[dict[str, Any]],
                     sleep: Callable[[float], None]) -> Iterator[Outcome]:
    """POST each record; stop at the first that cannot be delivered (the rest stay queued)."""
    with http_client(spec, spec.headers) as client:
        for record in records:
            ok, attempts, error = post_with_retries(client, spec.url, json.dumps(record, default=str).encode(),
                                                    spec.retries, spec.backoff, sleep)
            yield [record], ok, attempts, error
            if not ok:
                return
