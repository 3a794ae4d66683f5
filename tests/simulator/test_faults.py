"""Every in-stream fault, observed by a real httpx client."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import httpx
import pytest
from sim_helpers import fixture_body, open_stream

from streamd.simulator import Fault, Simulator


@pytest.fixture
def busy(make_simulator: Callable[..., Simulator]) -> Simulator:
    sim = make_simulator(match_all=True, tweets_per_second=200.0, slow_reader_seconds=1.0)
    sim.add_rules([("cat", "cats")])
    return sim


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    "disconnect_type",
    ["OperationalDisconnect", "UpstreamOperationalDisconnect", "ForceDisconnect", "SlowReader",
     "InternalError", "ClientApplicationStateDegraded", "InvalidRules",
     "UpstreamUncleanDisconnect"],
)
def test_operational_disconnect_message_then_clean_end(
    busy: Simulator, disconnect_type: str
) -> None:
    with open_stream(busy) as (_, reader):
        reader.wait_tweets(3)
        busy.inject(Fault.operational_disconnect(disconnect_type))
        assert reader.wait_end(3.0)
    assert reader.error is None
    last = json.loads(reader.lines[-1])
    problem = last["errors"][0]
    real = fixture_body("operational_disconnect")["errors"][0]
    assert set(problem) == set(real)
    assert problem["type"] == real["type"]
    assert problem["title"] == "operational-disconnect"
    assert problem["disconnect_type"] == disconnect_type
    if disconnect_type == "OperationalDisconnect":
        assert problem == real
    assert busy.sent_lines()[-1].kind == "operational_disconnect"


def test_close_ends_the_body_without_a_message(busy: Simulator) -> None:
    with open_stream(busy) as (_, reader):
        reader.wait_tweets(3)
        busy.inject(Fault.close())
        assert reader.wait_end(3.0)
    assert reader.error is None
    assert all(line == b"" or line.startswith(b'{"data"') for line in reader.lines)
    assert busy.wait_connections(0, 2.0)


def test_reset_mid_line_leaves_half_a_line_and_a_transport_error(busy: Simulator) -> None:
    with open_stream(busy) as (_, reader):
        reader.wait_tweets(3)
        busy.inject(Fault.reset_mid_line())
        assert reader.wait_end(3.0)
    assert isinstance(reader.error, httpx.TransportError)
    assert reader.partial.startswith(b'{"data"')
    assert not _is_json(reader.partial)
    assert busy.sent_lines()[-1].kind == "reset_partial"
    # Every tweet recorded as sent before the reset reached the client.
    received = {t["data"]["id"] for t in reader.tweets()}
    assert {s.id for s in busy.sent_tweets()} <= received


def test_slow_reader_drop_closes_mid_body(busy: Simulator) -> None:
    with open_stream(busy) as (_, reader):
        reader.wait_tweets(3)
        busy.inject(Fault.slow_reader_drop())
        assert reader.wait_end(3.0)
    assert isinstance(reader.error, httpx.RemoteProtocolError)  # no terminating chunk
    assert busy.wait_connections(0, 2.0)


def test_stall_stops_everything_then_resumes(busy: Simulator) -> None:
    with open_stream(busy) as (_, reader):
        reader.wait_tweets(3)
        busy.inject(Fault.stall(seconds=1.2))
        time.sleep(0.2)
        count = len(reader.chunks)
        time.sleep(0.8)
        assert len(reader.chunks) == count  # no tweets, no heartbeats, socket open
        assert not reader.ended.is_set()
        assert reader.wait_for(lambda r: len(r.chunks) > count, 2.0)


def test_split_line_arrives_in_several_chunks(busy: Simulator) -> None:
    busy.set_rate(5.0)
    with open_stream(busy) as (_, reader):
        reader.wait_tweets(1)
        before = len(busy.sent_tweets())
        busy.inject(Fault.split_line())
        assert busy.wait_sent(before + 1, 3.0)
        split = busy.sent_tweets()[before]
        reader.wait_for(lambda r: split.line in r.lines, 3.0)
    assert split.line in reader.lines
    assert not any(split.line in chunk for chunk in reader.chunks)


def test_malformed_truncated_unknown_message_are_not_tweets(busy: Simulator) -> None:
    with open_stream(busy) as (_, reader):
        reader.wait_tweets(2)
        busy.inject(Fault.malformed(count=2))
        busy.inject(Fault.truncated(count=1))
        busy.inject(Fault.unknown_message())
        assert reader.wait_for(lambda r: any(b"foo_event" in line for line in r.lines), 3.0)
    kinds = [s.kind for s in busy.sent_lines()]
    assert kinds == ["malformed", "malformed", "truncated", "unknown_message"]
    lines = busy.sent_lines()
    for recorded in lines[:3]:
        assert recorded.line in reader.lines
        assert not _is_json(recorded.line)
    assert lines[2].line.startswith(b'{"data"')
    unknown = json.loads(lines[3].line)
    assert set(unknown) == {"foo_event"}
    sent_ids = {s.id for s in busy.sent_tweets()}
    assert all(t["data"]["id"] in sent_ids for t in reader.tweets())


def test_duplicate_resends_the_previous_line_byte_identical(busy: Simulator) -> None:
    with open_stream(busy) as (_, reader):
        reader.wait_tweets(2)
        busy.inject(Fault.duplicate(count=2))
        assert reader.wait_for(
            lambda r: any(r.lines[i] == r.lines[i + 1] == r.lines[i + 2] != b""
                          for i in range(len(r.lines) - 2)),
            3.0,
        )
    sent = busy.sent_tweets()
    ids = [s.id for s in sent]
    triple = [i for i in set(ids) if ids.count(i) == 3]
    assert len(triple) == 1


def test_unknown_fields_and_partial_errors_are_tweets(busy: Simulator) -> None:
    with open_stream(busy) as (_, reader):
        reader.wait_tweets(2)
        busy.inject(Fault.unknown_fields())
        busy.inject(Fault.partial_errors())
        assert reader.wait_for(lambda r: any("errors" in t for t in r.tweets()), 3.0)
        assert reader.wait_for(lambda r: any("future_field" in t["data"] for t in r.tweets()),
                               3.0)
    sent_lines = {s.line for s in busy.sent_tweets()}
    for tweet_line in reader.lines:
        if b"future_field" in tweet_line or b'"errors"' in tweet_line:
            assert tweet_line in sent_lines
    partial = next(t for t in reader.tweets() if "errors" in t)
    assert partial["errors"][0]["type"].endswith("/2/problems/resource-not-found")
    assert "data" in partial
    assert "matching_rules" in partial


def test_out_of_order_swaps_two_tweets(busy: Simulator) -> None:
    with open_stream(busy) as (_, reader):
        reader.wait_tweets(2)
        busy.inject(Fault.out_of_order())
        assert reader.wait_for(
            lambda r: any(int(a["data"]["id"]) > int(b["data"]["id"])
                          for a, b in zip(r.tweets(), r.tweets()[1:], strict=False)),
            3.0,
        )


def test_fault_waits_for_the_next_stream_when_none_is_open(busy: Simulator) -> None:
    busy.inject(Fault.operational_disconnect("ForceDisconnect"))
    with open_stream(busy) as (_, reader):
        assert reader.wait_end(3.0)
    assert b"ForceDisconnect" in reader.lines[-1]


def test_a_reader_that_stops_reading_is_dropped(busy: Simulator) -> None:
    busy.set_rate(float("inf"))
    sock = socket.create_connection(("127.0.0.1", busy.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        b"GET /2/tweets/search/stream HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer test-token\r\n\r\n"
    )
    try:
        assert busy.wait_connections(1, 2.0)
        assert busy.wait_connections(0, 8.0)  # slow_reader_seconds=1 once buffers are full
    finally:
        sock.close()
