"""The kill test: HEC batches with acknowledgements while `exfilwatch serve` is SIGKILLed and restarted.

Every event of a request answered "Success" was fsynced to the spool first, so after the
restarts it must be in the lake exactly once; every ackId that was acknowledged true must be
there too; and no event is ever stored twice.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import httpx

from tests.servicekit import Served, committed_users, hec_post, pulse_login, service_config, wait_for

ROUNDS = 3
BATCH = 50


def test_acknowledged_events_survive_sigkill_exactly_once(tmp_path):
    config = service_config(batch={"max_events": 120, "max_seconds": 0.1})
    served = Served(tmp_path / "home", config)
    answered: list[str] = []  # users of events whose request was answered Success
    acked: dict[int, list[str]] = {}  # ackId -> users, still to be acknowledged
    confirmed: list[str] = []  # users of events acknowledged true
    sent = 0
    try:
        for round_no in range(ROUNDS):
            served.start()
            deadline = time.monotonic() + 1.0 + 0.5 * round_no  # kill at a different point of a batch each round
            with httpx.Client(base_url=served.hec, timeout=10) as client:
                while time.monotonic() < deadline:
                    users = [f"k{sent + i}" for i in range(BATCH)]
                    sent += BATCH
                    body = "".join(json.dumps({"event": pulse_login(u, i)}) for i, u in enumerate(users))
                    try:
                        reply = hec_post(client, "/services/collector/event", body, channel="kill")
                    except httpx.HTTPError:
                        break
                    assert reply.status_code == 200, reply.text
                    answered.extend(users)
                    acked[reply.json()["ackId"]] = users
                    if len(acked) % 3 == 0:  # ask now and then, as a forwarder does
                        _confirm(client, acked, confirmed)
                served.kill()
        served.start()
        with httpx.Client(base_url=served.hec, timeout=10) as client:
            # ackIds issued before the kills are still answered after the restart
            wait_for(lambda: _confirm(client, acked, confirmed) or not acked, timeout=60)
        assert served.stop() == 0
    except BaseException:
        print("".join(served.log[-30:]))  # the service's own log lines say why it stopped
        raise
    finally:
        served.kill()
    stored = Counter(committed_users(served.home))
    assert confirmed, "no acknowledgement arrived"
    assert len(answered) >= ROUNDS * BATCH  # every incarnation took requests before it was killed
    assert [u for u in confirmed if stored[u] != 1] == []
    assert [u for u in answered if stored[u] != 1] == []
    assert [u for u, n in stored.items() if n > 1] == []


def _confirm(client: httpx.Client, pending: dict[int, list[str]], confirmed: list[str]) -> bool:
    if not pending:
        return True
    reply = hec_post(client, "/services/collector/ack", json.dumps({"acks": list(pending)}), channel="kill")
    for ack_id, done in reply.json()["acks"].items():
        if done:
            confirmed.extend(pending.pop(int(ack_id)))
    return not pending
