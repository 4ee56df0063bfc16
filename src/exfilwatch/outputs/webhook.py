"""HTTP webhook: one POST with a JSON body per item, retried with exponential backoff.

A 2xx answer delivers the item. A connection error, a timeout, a 5xx, 408 or 429 is retried
after `backoff`, `2 x backoff`, `4 x backoff`, ... seconds (`retries` times); any other 4xx is
not retried (the request itself is wrong). The caller keeps what was not delivered queued.
"""

from __future__ import annotations

from exfilwatch.errors import OutputError

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from exfilwatch import __version__

RETRYABLE_STATUS = {408, 425, 429}


class WebhookError(OutputError):
    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


def post_json(url: str, body: dict[str, Any], headers: dict[str, str], timeout: float) -> int:
    data = json.dumps(body, default=str).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": f"exfilwatch/{__version__}", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        retryable = exc.code >= 500 or exc.code in RETRYABLE_STATUS
        raise WebhookError(f"HTTP {exc.code} {exc.reason}", retryable) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WebhookError(f"cannot reach {url}: {reason}", True) from None


def post_with_retries(url: str, body: dict[str, Any], headers: dict[str, str], timeout: float, retries: int,
                      backoff: float, sleep: Callable[[float], None] = time.sleep) -> tuple[bool, int, str | None]:
    """(delivered, attempts, last error)."""
    error = None
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff * 2 ** (attempt - 1))
        try:
            post_json(url, body, headers, timeout)
            return True, attempt + 1, None
        except WebhookError as exc:
            error = str(exc)
            if not exc.retryable:
                return False, attempt + 1, error
    return False, retries + 1, error
