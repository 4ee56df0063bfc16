"""Splunk HTTP Event Collector output: findings and incidents as Splunk events.

Each request to `/services/collector/event` carries up to `batch_size` events, concatenated JSON
objects (Splunk's batch form), with `Authorization: Splunk <token>`. An event is
`{"time": <epoch seconds>, "host", "source", "sourcetype", "index", "event": <record>}`; its time
is the incident's last risk event or the finding's time, so Splunk files it where it happened.
Splunk answers `{"text": "Success", "code": 0}`; a 403 (code 4, invalid token) is not retried,
a 503 (code 9, server busy), a 429 or a connection error is, with backoff (webhook.py). A batch
acknowledged is recorded before the next is sent.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

from exfilwatch.outputs.records import epoch_millis
from exfilwatch.outputs.webhook import Outcome, http_client, post_with_retries
from exfilwatch.riskconfig import HecOutput


def hec_event(spec: HecOutput, record: dict[str, Any], host: str) -> dict[str, Any]:
    millis = epoch_millis(record.get("last_time") or record.get("time"))
    event = {"time": None if millis is None else millis / 1000, "host": host, "source": spec.source,
             "sourcetype": spec.sourcetype, "index": spec.index, "event": record}
    return {key: value for key, value in event.items() if value is not None}


def hec_outcomes(spec: HecOutput, records: list[dict[str, Any]],
                 sleep: Callable[[float], None]) -> Iterator[Outcome]:
    host = socket.gethostname()
    with http_client(spec, {"Authorization": f"Splunk {spec.token}"}) as client:
        for start in range(0, len(records), spec.batch_size):
            batch = records[start:start + spec.batch_size]
            content = "".join(json.dumps(hec_event(spec, r, host), default=str) for r in batch).encode()
            ok, attempts, error = post_with_retries(client, spec.url, content, spec.retries, spec.backoff, sleep)
            yield batch, ok, attempts, error
            if not ok:
                return
