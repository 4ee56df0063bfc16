"""The Splunk HEC endpoint of a real `exfilwatch serve`: what a forwarder or a curl script sees."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest

from tests.servicekit import (Served, committed_rows, committed_users, hec_post, postfix_lines, pulse_login,
                              quarantine, service_config, wait_for)


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


def test_ack_ids_are_counted_per_channel_and_answered_only_on_their_own(served, client):
    first = hec_post(client, "/services/collector/raw", pulse_login("chanA0"), channel="chan-A").json()["ackId"]
    other = hec_post(client, "/services/collector/raw", pulse_login("chanB0"), channel="chan-B").json()["ackId"]
    second = hec_post(client, "/services/collector/raw", pulse_login("chanA1"), channel="chan-A").json()["ackId"]
    assert (first, other, second) == (0, 0, 1)
    wait_for(lambda: acked(client, "chan-A", 1))
    assert acked(client, "chan-A", 0) and acked(client, "chan-B", 0)
    assert not acked(client, "chan-B", 1)  # issued on chan-A only
    assert not acked(client, "chan-never-used", 0)
    assert not acked(client, "chan-A", 2)  # not issued yet


def test_host_source_index_and_fields_are_stored_with_the_event(served, client):
    event = {"event": pulse_login("meta1"), "sourcetype": "pulse:connectsecure", "host": "vpn-east-1",
             "source": "udp:514", "index": "vpn", "fields": {"site": "east", "tier": ["a", "b"]}}
    ack = hec_post(client, "/services/collector/event", json.dumps(event), channel="meta").json()["ackId"]
    raw = hec_post(client, "/services/collector/raw", pulse_login("meta2"), channel="meta",
                   params={"sourcetype": "pulse:connectsecure", "host": "vpn-west-2", "index": "vpn2"}).json()["ackId"]
    wait_for(lambda: acked(client, "meta", ack) and acked(client, "meta", raw))
    rows = dict(committed_rows(served.home, "authentication", '"user", origin'))
    assert json.loads(rows["meta1"]) == {"host": "vpn-east-1", "source": "udp:514", "sourcetype": "pulse:connectsecure",
                                         "index": "vpn", "fields": {"site": "east", "tier": ["a", "b"]}}
    assert json.loads(rows["meta2"]) == {"host": "vpn-west-2", "sourcetype": "pulse:connectsecure", "index": "vpn2"}


def test_events_of_one_request_keep_their_own_host_and_fields(served, client):
    said = [{"host": "a"}, {"host": "b"}, {"host": "a", "fields": {"x": "1"}}, {"host": "a"}, {},
            {"host": "a", "index": "i"}, {"host": {"nested": "a"}}]
    body = "".join(json.dumps({"event": pulse_login(f"each{i}"), **meta}) for i, meta in enumerate(said))
    ack = hec_post(client, "/services/collector/event", body, channel="each").json()["ackId"]
    wait_for(lambda: acked(client, "each", ack))
    rows = dict(committed_rows(served.home, "authentication", '"user", origin'))
    assert [json.loads(rows[f"each{i}"]) if rows[f"each{i}"] else {} for i in range(len(said))] == said


def test_a_syslog_message_sent_without_its_header_is_dated_by_the_hec_time(served, client):
    # As Vector or Fluent Bit forward a parsed syslog message: the program tag and message, no header.
    lines = [line.split(" ", 2)[2] for line in postfix_lines("8A1B2C3D4E", sender="carol@corp.example")]
    at = 1790326000.5  # 2026-09-25T09:26:40.5Z
    body = "".join(json.dumps({"event": line, "time": at, "host": "mail07", "sourcetype": "postfix_syslog"})
                   for line in lines)
    ack = hec_post(client, "/services/collector/event", body, channel="headerless").json()["ackId"]
    wait_for(lambda: acked(client, "headerless", ack))
    rows = committed_rows(served.home, "email", "src_user, _time, json_extract_string(origin, '$.host')")
    assert [(t.timestamp(), host) for sender, t, host in rows if sender == "carol@corp.example"] == [(at, "mail07")]
