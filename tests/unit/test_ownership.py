"""Connection ownership decisions (streamd/x/ownership.py) over a table of holders: which
connection is ours, what is terminated and why, when an end is an eviction, and that
nothing evicts back within x.evict_min_interval. An in-memory stand-in for the Connections
API and a fake clock: nothing sleeps. The HTTP side is tested against the simulator
(tests/x/test_connections_api.py, tests/pipeline/test_connection_ownership.py)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio
import pytest

from streamd.config import XSettings
from streamd.errors import ConnectionsApiError, ConnectionsUnavailable
from streamd.ops.metrics import Metrics
from streamd.reasons import Reason
from streamd.x.classify import Classification
from streamd.x.connections import TERMINATED_BY_API, ConnectionsApi, Kill, KillReport, XConnection
from streamd.x.ownership import LEARN_TOLERANCE_S, OwnRecord, SlotKeeper

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.seen.append((event, kw))

    warning = error = info

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for name, kw in self.seen if name == event]


class FakeX:
    """The app's connections as X would keep them; `fail` makes every call raise it."""

    def __init__(self, *connections: XConnection) -> None:
        self.connections = list(connections)
        self.killed: list[str] = []
        self.fail: Exception | None = None
        self.calls = 0

    async def list(self, *, status: str = "active", endpoint: str | None = None,
                   max_pages: int = 20) -> list[XConnection]:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return [c for c in self.connections
                if status == "all" or (status == "active") == c.active]

    async def terminate(self, uuids: Iterable[str]) -> KillReport:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        results = []
        for uuid in uuids:
            found = next((c for c in self.connections if c.id == uuid and c.active), None)
            if found is None:
                results.append(Kill(uuid, False, "not found"))
                continue
            self.connections.remove(found)
            self.connections.append(XConnection(
                found.id, found.endpoint, found.client_ip, found.connected_at, NOW,
                TERMINATED_BY_API))
            self.killed.append(uuid)
            results.append(Kill(uuid, True))
        return KillReport(tuple(results))


class Store:
    def __init__(self, text: str | None = None) -> None:
        self.text = text

    async def load(self) -> str | None:
        return self.text

    async def save(self, text: str) -> None:
        self.text = text


def conn(cid: str, at: float, *, ip: str = "10.0.0.1", ended: str | None = None) -> XConnection:
    return XConnection(cid, "filtered_stream", ip, at, None if ended is None else at + 1, ended)


def keeper(
    x: FakeX, *, evict: str = "own", record: OwnRecord | None = None, interval: float = 300,
) -> tuple[SlotKeeper, Events, Store, Clock, Metrics]:
    @contextlib.asynccontextmanager
    async def api() -> AsyncIterator[ConnectionsApi]:
        yield x  # type: ignore[misc]

    events, clock, metrics = Events(), Clock(), Metrics()
    store = Store(record.to_text() if record is not None else None)
    settings = XSettings(evict=evict, evict_min_interval=interval)  # type: ignore[arg-type]
    k = SlotKeeper(settings, api, events, metrics, store=store, clock=clock)
    anyio.run(k.load)
    return k, events, store, clock, metrics


def terminated(metrics: Metrics, why: str) -> float:
    return metrics.connections_terminated.labels(why=why)._value.get()  # type: ignore[no-any-return]


TMC = Classification(Reason.TOO_MANY_CONNECTIONS, status=429)


# --- start-up -----------------------------------------------------------------------------


def test_start_up_terminates_the_connection_the_last_run_left() -> None:
    x = FakeX(conn("ours", NOW - 100), conn("theirs", NOW - 50))
    k, events, _, _, metrics = keeper(x, record=OwnRecord("ours", NOW - 100))
    anyio.run(k.before_first_connect)
    assert x.killed == ["ours"]
    assert events.named("connections.terminated") == [
        {"ids": ["ours"], "why": "own_stale",
         "detail": "the connection a previous run left is still active"}]
    assert terminated(metrics, "own_stale") == 1


def test_start_up_finds_a_zombie_by_its_connect_time_when_the_id_was_never_learnt() -> None:
    x = FakeX(conn("zombie", NOW - 100.4), conn("theirs", NOW - 30))
    k, _, _, _, _ = keeper(x, record=OwnRecord(None, NOW - 100))
    anyio.run(k.before_first_connect)
    assert x.killed == ["zombie"]


def test_start_up_leaves_everything_alone_when_ours_is_gone_or_unknown() -> None:
    x = FakeX(conn("theirs", NOW - 30), conn("ours", NOW - 100, ended="client_disconnect"))
    k, _, _, _, _ = keeper(x, record=OwnRecord("ours", NOW - 100))
    anyio.run(k.before_first_connect)
    k2, _, _, _, _ = keeper(x)
    anyio.run(k2.before_first_connect)
    assert x.killed == []


# --- learning our id ----------------------------------------------------------------------


def test_learn_records_the_one_connection_that_began_when_we_connected() -> None:
    x = FakeX(conn("old", NOW - 500), conn("mine", NOW + 0.3))
    k, events, store, _, _ = keeper(x)
    anyio.run(k.learn, NOW)
    assert k.record == OwnRecord("mine", NOW)
    assert OwnRecord.from_text(store.text) == OwnRecord("mine", NOW)
    assert events.named("connections.own")[0]["id"] == "mine"


def test_learn_records_nothing_when_two_connections_began_together() -> None:
    x = FakeX(conn("a", NOW - 1), conn("b", NOW + LEARN_TOLERANCE_S / 2))
    k, events, store, _, _ = keeper(x)
    anyio.run(k.learn, NOW)
    assert k.record.id is None
    # The connect time alone is still recorded (a crash before learning leaves it).
    assert OwnRecord.from_text(store.text) == OwnRecord(None, NOW)
    (why,) = events.named("connections.own_unknown")
    assert why["candidates"] == 2
    assert "not recording" in why["detail"]


# --- TooManyConnections -------------------------------------------------------------------


def test_too_many_connections_names_every_holder_and_evicts_only_our_own() -> None:
    x = FakeX(conn("ours", NOW - 100, ip="10.0.0.9"), conn("theirs", NOW - 50))
    k, events, _, _, _ = keeper(x, record=OwnRecord("ours", NOW - 100))
    c, freed = anyio.run(lambda: k.after_end(TMC, established=False))
    assert c is TMC
    assert freed
    assert x.killed == ["ours"]
    holders = {h["id"]: h for h in events.named("connections.holder")}
    assert holders["ours"]["own"]
    assert not holders["theirs"]["own"]
    assert holders["ours"]["client_ip"] == "10.0.0.9"
    assert holders["theirs"]["connected_at"].endswith("Z")


def test_evict_own_never_touches_another_deployment() -> None:
    x = FakeX(conn("theirs", NOW - 50))
    k, events, _, _, _ = keeper(x, evict="own")
    _, freed = anyio.run(lambda: k.after_end(TMC, established=False))
    assert not freed
    assert x.killed == []
    assert len(events.named("connections.holder")) == 1


def test_evict_never_terminates_nothing_not_even_our_own() -> None:
    x = FakeX(conn("ours", NOW - 100))
    k, _, _, _, _ = keeper(x, evict="never", record=OwnRecord("ours", NOW - 100))
    _, freed = anyio.run(lambda: k.after_end(TMC, established=False))
    assert not freed
    assert x.killed == []


def test_evict_endpoint_takes_the_slot_once_per_interval() -> None:
    x = FakeX(conn("theirs", NOW - 50))
    k, events, store, clock, metrics = keeper(x, evict="endpoint", interval=300)
    _, freed = anyio.run(lambda: k.after_end(TMC, established=False))
    assert freed
    assert x.killed == ["theirs"]
    assert events.named("connections.terminated")[0]["why"] == "evict"
    assert terminated(metrics, "evict") == 1
    assert OwnRecord.from_text(store.text).evicted_others_at == NOW
    # Someone takes the slot back at once: no second eviction within the interval.
    x.connections.append(conn("back", NOW + 10))
    clock.now = NOW + 299
    _, freed = anyio.run(lambda: k.after_end(TMC, established=False))
    assert not freed
    assert x.killed == ["theirs"]
    assert "at most one eviction" in events.named("connections.evict_skipped")[0]["detail"]
    clock.now = NOW + 301
    _, freed = anyio.run(lambda: k.after_end(TMC, established=False))
    assert freed
    assert x.killed == ["theirs", "back"]


# --- after an established connection ended ------------------------------------------------


def test_an_end_by_termination_through_the_api_is_an_eviction_and_is_never_answered() -> None:
    x = FakeX(conn("ours", NOW - 100, ended=TERMINATED_BY_API), conn("taker", NOW - 1))
    k, events, store, clock, _ = keeper(x, evict="endpoint", record=OwnRecord("ours", NOW - 100))
    end = Classification(Reason.OPERATIONAL_DISCONNECT, status=200,
                         disconnect_type="ForceDisconnect")
    c, freed = anyio.run(lambda: k.after_end(end, established=True))
    assert c.reason is Reason.EVICTED
    assert not freed
    assert "by another client" in (c.detail or "")
    assert OwnRecord.from_text(store.text).evicted_at == NOW
    # The taker holds the slot now: with evict = "endpoint" we still do not evict back.
    clock.now = NOW + 120
    _, freed = anyio.run(lambda: k.after_end(TMC, established=False))
    assert not freed
    assert x.killed == []
    assert "never evicting back" in events.named("connections.evict_skipped")[0]["detail"]
    # A restart remembers it (the record is in the spool).
    k2, _, _, _, _ = keeper(x, evict="endpoint", record=OwnRecord.from_text(store.text))
    k2._clock = clock
    _, freed = anyio.run(lambda: k2.after_end(TMC, established=False))
    assert not freed
    assert x.killed == []


def test_an_end_by_our_own_termination_is_not_an_eviction() -> None:
    x = FakeX(conn("ours", NOW - 100))
    k, _, _, _, _ = keeper(x, record=OwnRecord("ours", NOW - 100))
    stall = Classification(Reason.STALL, status=200)
    c, _ = anyio.run(lambda: k.after_end(stall, established=True))
    # X still counted ours after the stall: terminated as stale, the reason stays stall.
    assert c is stall
    assert x.killed == ["ours"]
    c, _ = anyio.run(lambda: k.after_end(stall, established=True))
    assert c is stall


def test_a_failed_connect_or_a_shutdown_asks_x_nothing() -> None:
    x = FakeX(conn("ours", NOW - 100))
    k, _, _, _, _ = keeper(x, record=OwnRecord("ours", NOW - 100))
    for c, established in ((Classification(Reason.SERVER_ERROR, status=503), False),
                           (Classification(Reason.SHUTDOWN), True)):
        assert anyio.run(functools.partial(k.after_end, c, established=established)) == (
            c, False)
    assert x.calls == 0


# --- the API unavailable or failing -------------------------------------------------------


def test_forbidden_api_logs_once_and_is_never_asked_again() -> None:
    x = FakeX(conn("theirs", NOW - 50))
    x.fail = ConnectionsUnavailable(403, "client-forbidden")
    k, events, _, _, _ = keeper(x, evict="endpoint", record=OwnRecord("ours", NOW - 100))
    anyio.run(k.before_first_connect)
    for _ in range(3):
        assert anyio.run(lambda: k.after_end(TMC, established=False)) == (TMC, False)
    anyio.run(k.learn, NOW)
    assert x.calls == 1
    (line,) = events.named("connections.unavailable")
    assert line["status"] == 403


def test_a_failing_api_is_logged_and_the_disconnect_handled_as_before() -> None:
    x = FakeX(conn("ours", NOW - 100))
    x.fail = ConnectionsApiError("GET /2/connections answered 503")
    k, events, _, _, _ = keeper(x, record=OwnRecord("ours", NOW - 100))
    assert anyio.run(lambda: k.after_end(TMC, established=False)) == (TMC, False)
    assert k.available
    assert "503" in events.named("connections.failed")[0]["error"]


# --- the persisted record -----------------------------------------------------------------


@pytest.mark.parametrize("text", [
    None, "", "not json", "[]", '{"id": 5}', '{"id": "' + "x" * 500 + '"}',
    '{"connected_at": "yesterday"}', '{"connected_at": true}', '{"evicted_at": 1e999}',
])
def test_a_record_that_is_not_ours_reads_as_none(text: str | None) -> None:
    record = OwnRecord.from_text(text)
    assert record.id is None
    assert record.connected_at is None
    assert record.evicted_at is None


def test_a_record_round_trips() -> None:
    record = OwnRecord("abc-123", NOW, NOW - 5, NOW - 9)
    assert OwnRecord.from_text(record.to_text()) == record


# --- what the Connections API answers, checked before use ----------------------------------


def test_hostile_connection_fields_are_dropped_or_bounded() -> None:
    from streamd.x.connections import _connection, parse_time

    c = _connection({
        "id": "abc\x1b[2J", "endpoint_name": "filtered_stream\n\u202e", "client_ip": "x" * 10_000,
        "connected_at": "2026-12-02T03:04:05.123Z", "disconnected_at": "yesterday",
        "disconnect_reason": 7,
    })
    assert c.id is None  # not an id X issues: never matched, never printed
    assert c.endpoint is not None
    assert "\n" not in c.endpoint
    assert c.client_ip is not None
    assert len(c.client_ip) <= 128
    assert c.connected_at == parse_time("2026-12-02T03:04:05.123+00:00")
    assert c.disconnected_at is None
    assert c.disconnect_reason is None
    assert c.active
    assert parse_time("2026-12-02T03:04:05") is None  # no zone: not X's RFC 3339
    assert parse_time("9" * 100) is None
