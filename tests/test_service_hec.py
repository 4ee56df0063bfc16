"""The Splunk HEC endpoint of a real `exfilwatch serve`: what a forwarder or a curl script sees."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest

from tests.servicekit import (Served, committed_users, hec_post, pulse_login, quarantine, service_config,
                              wait_for)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    service = Served(tmp_path_factory.mktemp("hec") / "home", service_config())
    service.start()
    yield service
    service.kill()


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served.hec, timeout=30) as c:
        yield c


def acked(client: httpx.Client, channel: str, ack_id: int) -> bool:
    reply = hec_post(client, "/services/collector/ack", json.dumps({"acks": [ack_id]}), channel=channel)
    assert reply.status_code == 200
    return reply.json()["acks"][str(ack_id)]


def test_event_batch_raw_and_acks_reach_the_lake(served, client):
    events = "".join(json.dumps({"event": pulse_login(f"hec{i}", i), "sourcetype": "pulse:connectsecure",
                                 "time": 1790000000.25, "host": "vpn01"}) + ("\n" if i % 2 else "")
                     for i in range(5))
    reply = hec_post(client, "/services/collector/event", events, channel="chan-1")
    assert reply.status_code == 200
    assert reply.json()["text"] == "Success" and reply.json()["code"] == 0
    ack_id = reply.json()["ackId"]
    raw = "\n".join(pulse_login(f"raw{i}", i) for i in range(3)) + "\r\n"
    raw_reply = hec_post(client, "/services/collector/raw", raw, channel="chan-1",
                         params={"sourcetype": "juniper:sslvpn"})
    assert raw_reply.status_code == 200
    legacy = hec_post(client, "/services/collector", json.dumps({"event": pulse_login("legacy")}))
    assert legacy.json() == {"text": "Success", "code": 0}  # no channel: no ackId
    wait_for(lambda: acked(client, "chan-1", raw_reply.json()["ackId"]))
    assert acked(client, "chan-1", ack_id)
    users = Counter(committed_users(served.home))
    for user in [f"hec{i}" for i in range(5)] + [f"raw{i}" for i in range(3)]:
        assert users[user] == 1


def test_health(client):
    reply = client.get("/services/collector/health")
    assert reply.status_code == 200 and reply.json()["code"] == 17


@pytest.mark.parametrize("headers, status, code", [
    ({}, 401, 2),
    ({"Authorization": "Bearer x"}, 401, 3),
    ({"Authorization": "Splunk wrong"}, 403, 4),
])
def test_bad_tokens_are_refused_as_splunk_does(client, headers, status, code):
    reply = client.post("/services/collector/event", content='{"event": "x"}', headers=headers)
    assert reply.status_code == status and reply.json()["code"] == code


def test_bad_json_names_the_invalid_event(client):
    body = '{"event": "a"}{"event": "b"} {"event": '
    reply = hec_post(client, "/services/collector/event", body)
    assert reply.status_code == 400
    assert reply.json() == {"text": "Invalid data format", "code": 6, "invalid-event-number": 2}
    assert hec_post(client, "/services/collector/event", '{"event": "a"}{"host": "h"}').json()["code"] == 12
    assert hec_post(client, "/services/collector/event", "").json() == {"text": "No data", "code": 5}


def test_token_sourcetypes_and_unknown_sourcetypes_are_refused(client):
    refused = hec_post(client, "/services/collector/event",
                       json.dumps({"event": "x", "sourcetype": "postfix_syslog"}), token="pulse-only")
    assert refused.status_code == 400 and refused.json()["code"] == 7
    unknown = hec_post(client, "/services/collector/event", json.dumps({"event": "x", "sourcetype": "nope:nope"}))
    assert unknown.status_code == 400 and unknown.json()["invalid-event-number"] == 0


def test_ack_needs_a_channel(client):
    reply = hec_post(client, "/services/collector/ack", '{"acks": [1]}')
    assert reply.status_code == 400 and reply.json()["code"] == 10


def test_a_body_over_max_body_is_413(client):
    reply = hec_post(client, "/services/collector/raw", "x" * 70_000)
    assert reply.status_code == 413


def test_an_event_object_is_stored_as_its_json_and_an_unknown_line_is_quarantined(served, client):
    hec_post(client, "/services/collector/event", json.dumps({"event": {"not": "a log line"}}), channel="c2")
    wait_for(lambda: any('{"not":"a log line"}' in raw for _, _, raw in quarantine(served.home)))
    file, reason, _ = next(q for q in quarantine(served.home) if '"not"' in q[2])
    assert file.startswith("hec@127.0.0.1")


def test_metrics_count_what_was_received_and_committed(served, client):
    hec_post(client, "/services/collector/raw", pulse_login("metrics1"), channel="m")
    wait_for(lambda: "metrics1" in committed_users(served.home))
    text = client.get("/metrics").text
    assert 'exfilwatch_received_lines_total{listener="hec"}' in text
    assert 'exfilwatch_parsed_lines_total{listener="hec",source="pulse_secure"}' in text
    assert "exfilwatch_batches_total" in text and "exfilwatch_spool_depth" in text
