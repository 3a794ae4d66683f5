"""The connection registry behind the Connections API, on a fake clock (pure logic, no
sockets): zombies, terminations, listing and pagination, request parsing."""

from __future__ import annotations

import itertools

import pytest

from streamd.simulator.connections import (
    CLIENT_DISCONNECT,
    DUPLICATE_CONNECTION,
    NOT_ACTIVE_MESSAGE,
    NOT_FOUND_MESSAGE,
    OPERATOR_DISCONNECT,
    SLOW_READER,
    ConnectionRegistry,
    ListQuery,
    decode_token,
    encode_token,
    endpoint_error,
    parse_kill_body,
    parse_list_query,
    render_time,
)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeStream:
    def __init__(self) -> None:
        self.gone = False
        self.kicked = False
        self.endings: list[str] = []

    def client_went_away(self) -> bool:
        return self.gone

    def kick(self) -> None:
        self.kicked = True

    def end_by_operator(self, ending: str) -> None:
        self.endings.append(ending)


def registry(zombie_seconds: float = 0.0) -> tuple[ConnectionRegistry, Clock]:
    clock = Clock()
    ids = (f"id-{n}" for n in itertools.count(1))
    return ConnectionRegistry(clock=clock, new_id=lambda: next(ids),
                              zombie_seconds=zombie_seconds), clock


def test_a_vanished_client_is_a_zombie_for_zombie_seconds() -> None:
    reg, clock = registry(zombie_seconds=30.0)
    record = reg.open("filtered_stream", "10.0.0.1", FakeStream())
    clock.now += 5
    reg.stream_ended(record, None)  # the client went away
    clock.now += 29.999
    (held,) = reg.holders()
    assert held is record
    (snap,) = reg.snapshot()
    assert (snap.active, snap.zombie, snap.disconnected_at) == (True, True, None)
    clock.now += 0.001
    assert reg.holders() == []
    (snap,) = reg.snapshot()
    assert (snap.active, snap.zombie, snap.disconnect_reason) == (False, False, CLIENT_DISCONNECT)
    # Inactive from the moment the zombie expired, not from when someone looked.
    clock.now += 100
    assert reg.snapshot()[0].disconnected_at_epoch == pytest.approx(1_800_000_035.0)


def test_without_zombies_a_vanished_client_frees_the_slot_at_once() -> None:
    reg, clock = registry()
    stream = FakeStream()
    record = reg.open("filtered_stream", None, stream)
    clock.now += 2
    stream.gone = True  # not yet noticed by the stream: the registry looks
    assert reg.holders() == []
    assert (record.disconnect_reason, record.disconnected_at) == (CLIENT_DISCONNECT, clock.now)


def test_a_client_gone_unnoticed_becomes_a_zombie_when_looked_at() -> None:
    reg, clock = registry(zombie_seconds=10.0)
    stream = FakeStream()
    record = reg.open("filtered_stream", None, stream)
    stream.gone = True
    assert reg.holders() == [record]
    assert record.zombie_until == clock.now + 10


def test_server_ends_are_inactive_at_once_and_leave_zombies_alone() -> None:
    reg, _clock = registry(zombie_seconds=10.0)
    a = reg.open("filtered_stream", None, FakeStream())
    b = reg.open("filtered_stream", None, FakeStream())
    reg.stream_ended(a, SLOW_READER)
    assert (a.active, a.disconnect_reason) == (False, SLOW_READER)
    reg.stream_ended(b, None)
    reg.stream_ended(b, SLOW_READER)  # the zombie's stream ended: it stays a zombie
    assert b.active
    assert b.zombie_until is not None
    reg.stream_ended(a, None)  # already inactive: first reason wins
    assert a.disconnect_reason == SLOW_READER


def test_terminate_open_zombie_unknown_and_inactive() -> None:
    reg, clock = registry(zombie_seconds=60.0)
    stream = FakeStream()
    open_one = reg.open("filtered_stream", "1.2.3.4", stream)
    zombie = reg.open("filtered_stream", "1.2.3.4", FakeStream())
    reg.stream_ended(zombie, None)
    clock.now += 1
    data = reg.kill([open_one.id, zombie.id, "nope", open_one.id], "close")
    assert data == {
        "successful_kills": 2,
        "failed_kills": 2,
        "results": [
            {"uuid": open_one.id, "success": True},
            {"uuid": zombie.id, "success": True},
            {"uuid": "nope", "success": False, "error_message": NOT_FOUND_MESSAGE},
            {"uuid": open_one.id, "success": False, "error_message": NOT_ACTIVE_MESSAGE},
        ],
    }
    assert stream.endings == ["close"]  # only the open stream is ended
    assert reg.holders() == []
    for record in (open_one, zombie):
        assert (record.disconnect_reason, record.disconnected_at) == (
            OPERATOR_DISCONNECT, clock.now)


def test_replace_closes_zombies_and_open_streams() -> None:
    reg, _ = registry(zombie_seconds=60.0)
    zombie = reg.open("filtered_stream", None, FakeStream())
    reg.stream_ended(zombie, None)
    stream = FakeStream()
    live = reg.open("filtered_stream", None, stream)
    assert reg.replace(zombie) is None
    assert reg.replace(live) is stream
    assert [r.disconnect_reason for r in (zombie, live)] == [DUPLICATE_CONNECTION] * 2


def test_listing_newest_first_with_stable_pagination() -> None:
    reg, clock = registry()
    records = []
    for _ in range(5):
        clock.now += 1
        records.append(reg.open("filtered_stream", None, FakeStream()))
    reg.stream_ended(records[0], None)
    page = reg.lookup(ListQuery(status="all", max_results=2, fields=frozenset({"id"})))
    assert [c["id"] for c in page["data"]] == [records[4].id, records[3].id]
    token = page["meta"]["next_token"]
    assert len(token) == 16
    assert page["meta"]["result_count"] == 2
    reg.open("filtered_stream", None, FakeStream())  # a new one does not shift the pages
    cursor = decode_token(token)
    assert cursor is not None
    page = reg.lookup(ListQuery(status="all", max_results=2, cursor=cursor,
                                fields=frozenset({"id"})))
    assert [c["id"] for c in page["data"]] == [records[2].id, records[1].id]
    cursor = decode_token(page["meta"]["next_token"])
    assert cursor is not None
    page = reg.lookup(ListQuery(status="all", max_results=2, cursor=cursor,
                                fields=frozenset({"id"})))
    assert [c["id"] for c in page["data"]] == [records[0].id]
    assert "next_token" not in page["meta"]
    active = reg.lookup(ListQuery(max_results=100))
    assert active["meta"] == {"result_count": 5}
    assert all(set(c) == {"endpoint_name", "connected_at"} for c in active["data"])
    assert reg.lookup(ListQuery(endpoints=frozenset({"sample_stream"}))) == {
        "meta": {"result_count": 0}}


def test_rendering_of_active_and_inactive_connections() -> None:
    reg, clock = registry()
    clock.now = 1_796_180_645.123  # 2026-12-02T03:04:05.123Z
    record = reg.open("filtered_stream", "10.1.2.3", FakeStream())
    every = frozenset({"id", "client_ip", "connected_at", "disconnected_at",
                       "disconnect_reason", "endpoint_name"})
    assert record.render(every) == {
        "id": record.id, "endpoint_name": "filtered_stream", "client_ip": "10.1.2.3",
        "connected_at": "2026-12-02T03:04:05.123Z",
    }
    clock.now += 60
    reg.kill([record.id], "close")
    assert record.render(every)["disconnected_at"] == "2026-12-02T03:05:05.123Z"
    assert record.render(every)["disconnect_reason"] == OPERATOR_DISCONNECT
    assert "disconnected_at" not in record.render(frozenset())
    assert render_time(0.0) == "1970-01-01T00:00:00.000Z"


def test_tokens_round_trip_and_reject_garbage() -> None:
    assert decode_token(encode_token(42)) == 42
    assert decode_token("abc") is None
    assert decode_token("0" * 16) is None  # decodes, but is not one of ours
    assert decode_token("!" * 16) is None


def test_parse_list_query() -> None:
    reg, _ = registry()
    reg.open("filtered_stream", None, FakeStream())
    query, errors = parse_list_query(
        [("status", "all"), ("endpoints", "filtered_stream,sample_stream"),
         ("max_results", "100"), ("connection.fields", "id,client_ip"),
         ("pagination_token", encode_token(1))], reg)
    assert errors == []
    assert query == ListQuery(status="all",
                              endpoints=frozenset({"filtered_stream", "sample_stream"}),
                              max_results=100, cursor=1, fields=frozenset({"id", "client_ip"}))
    _, errors = parse_list_query(
        [("status", "gone"), ("max_results", "0"), ("connection.fields", "id,ip"),
         ("endpoints", "x"), ("pagination_token", encode_token(7)), ("since", "1")], reg)
    assert [list(e["parameters"]) for e in errors] == [
        ["status"], ["max_results"], ["connection.fields"], ["endpoints"],
        ["pagination_token"], ["since"],
    ]
    assert errors[2]["parameters"] == {"connection.fields": ["ip"]}
    assert errors[-1]["message"] == (
        "The query parameter [since] is not one of"
        " [connection.fields,endpoints,max_results,pagination_token,status]"
    )


@pytest.mark.parametrize(
    ("raw", "uuids", "fails"),
    [
        (b'{"uuids": ["a", "b"]}', ["a", "b"], False),
        (b"", None, True),
        (b"not json", None, True),
        (b"[]", None, True),
        (b'{"uuids": []}', [], True),
        (b'{"uuids": "a"}', None, True),
        (b'{"uuids": [1]}', None, True),
        (b'{"uuids": ["a"], "more": 1}', None, True),
        (b'{"ids": ["a"]}', None, True),
    ],
)
def test_parse_kill_body(raw: bytes, uuids: list[str] | None, fails: bool) -> None:
    parsed, errors = parse_kill_body(raw)
    assert parsed == uuids
    assert bool(errors) is fails


def test_parse_kill_body_caps_at_100() -> None:
    ok, errors = parse_kill_body(b'{"uuids": [' + b",".join([b'"x"'] * 100) + b"]}")
    assert ok is not None
    assert len(ok) == 100
    assert errors == []
    _, errors = parse_kill_body(b'{"uuids": [' + b",".join([b'"x"'] * 101) + b"]}")
    assert errors


def test_endpoint_ids_are_the_openapi_enum() -> None:
    assert endpoint_error("filtered_stream") is None
    assert endpoint_error("likes_compliance_stream") is None
    error = endpoint_error("filtered")
    assert error is not None
    assert error["parameters"] == {"endpoint_id": ["filtered"]}
