"""The kill test: HEC batches with acknowledgements while `exfilwatch serve` is SIGKILLed and restarted;
and SIGTERM, which commits what was received before the process exits.

Every event of a request answered "Success" was written to the spool first (a SIGKILL loses
nothing the process wrote; the fsync that guards against a power cut comes before its ackId is
true), so after the restarts it must be in the lake exactly once; every ackId that was
acknowledged true must be there too; and no event is ever stored twice.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter

import httpx

from tests.servicekit import (Served, committed_users, hec_post, metric, pulse_login, service_config, status,
                              wait_for)

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
            if round_no == 0:  # the killed service's pid and announcement are left behind: status sees through them
                assert "read from the state store: the service is not running" in status(served.home)
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


def test_sigterm_commits_what_was_just_received_once(tmp_path):
    config = service_config(batch={"max_events": 100000, "max_seconds": 600})  # nothing is due before SIGTERM
    served = Served(tmp_path / "home", config).start()
    try:
        listener = f"tcp:{served.port('tcp:0')}"
        with socket.create_connection(("127.0.0.1", served.port("tcp:0")), timeout=10) as tcp:
            tcp.sendall("".join(pulse_login(f"term{i}", i) + "\n" for i in range(200)).encode())
        with httpx.Client(base_url=served.hec, timeout=10) as client:
            reply = hec_post(client, "/services/collector/raw", "\n".join(pulse_login(f"hterm{i}", i) for i in range(50)))
            assert reply.status_code == 200
        wait_for(lambda: metric(served, "exfilwatch_received_lines_total", listener=listener) == 200)
        assert committed_users(served.home) == []  # received and spooled, not committed yet
        assert served.stop() == 0
        stored = Counter(committed_users(served.home))
        wanted = [f"term{i}" for i in range(200)] + [f"hterm{i}" for i in range(50)]
        assert [u for u in wanted if stored[u] != 1] == []  # committed by the SIGTERM, before any restart
        served.start()
        assert served.stop() == 0
        assert not any('"spool_replay"' in line for line in served.log)  # nothing left to replay
        assert Counter(committed_users(served.home)) == stored
    finally:
        served.kill()


def test_tcp_lines_spooled_before_a_sigkill_are_committed_once_after_the_restart(tmp_path):
    """Syslog over TCP has no acknowledgement: what matters is that a line the service spooled (it
    counted it received) survives a SIGKILL before any batch committed it, and is stored once.
    The lines come in reads of many lines each, CRLF and empty lines among them."""
    config = service_config(batch={"max_events": 100000, "max_seconds": 600})  # nothing is due before the kill
    served = Served(tmp_path / "home", config).start()
    try:
        listener = f"tcp:{served.port('tcp:0')}"
        lines = [pulse_login(f"kill{i}", i) + ("\r\n" if i % 3 else "\n\n") for i in range(300)]
        with socket.create_connection(("127.0.0.1", served.port("tcp:0")), timeout=10) as tcp:
            tcp.sendall("".join(lines).encode())
        wait_for(lambda: metric(served, "exfilwatch_received_lines_total", listener=listener) == 300)
        assert committed_users(served.home) == []
        served.kill()
        served.start()
        replay = [json.loads(line) for line in served.log if '"spool_replay"' in line]
        assert [event["records"] for event in replay] == [300]
        assert served.stop() == 0
        assert Counter(committed_users(served.home)) == Counter(f"kill{i}" for i in range(300))
    finally:
        served.kill()
