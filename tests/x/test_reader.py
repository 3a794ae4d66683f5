"""The stream reader and its reconnect policy in this process and event loop, against the
simulator on a real socket: connects, disconnects of each kind, the usage cap, fatal
answers, the 409 re-sync, the spool-room gate, and the state notifications.

Nothing here sleeps to wait: every wait is for an event (a log line, a record, a state
change), under `anyio.fail_after` so a hang fails fast. Small backoff settings keep the
waits the policy decides short; each test asserts the ones it meant to cause."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from rig import simulator

from streamd.config import Settings
from streamd.errors import FatalDisconnect
from streamd.flow import Changes, Gate
from streamd.ops.metrics import Metrics
from streamd.records import OutRecord
from streamd.simulator import ConnectFault, Fault, Simulator
from streamd.x.reconnect import NO_RULES_LEFT, ReconnectPolicy
from streamd.x.stream import StreamReader, make_client

TOKEN = "test-token"
DEADLINE = 15.0  # seconds for any one scenario; each takes about one
BACKOFF = {
    "network_step": 0.05, "network_max": 0.2, "http_initial": 0.3, "http_max": 0.6,
    "rate_limit_initial": 0.1, "rate_limit_max": 0.4, "usage_cap_initial": 0.2,
    "usage_cap_max": 0.4, "jitter": 0.0,
}


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with simulator(tweets_per_second=200.0) as running:
        yield running


class _Waitable:
    """Something that grows; `until` waits for a condition on it without polling."""

    def __init__(self) -> None:
        self._grew = anyio.Event()

    def _changed(self) -> None:
        self._grew.set()
        self._grew = anyio.Event()

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._grew.wait()


class Events(_Waitable):
    """A `Logger` that keeps every event."""

    def __init__(self) -> None:
        super().__init__()
        self.all: list[tuple[str, dict[str, Any]]] = []

    def _add(self, event: str, fields: dict[str, Any]) -> None:
        self.all.append((event, fields))
        self._changed()

    def info(self, event: str, **fields: Any) -> None:
        self._add(event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._add(event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._add(event, fields)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.all if event == name]

    async def wait(self, name: str, count: int = 1) -> list[dict[str, Any]]:
        await self.until(lambda: len(self.named(name)) >= count)
        return self.named(name)


class Sink(_Waitable):
    """The publisher's side of the queue: takes every list the reader sends."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[OutRecord] = []

    async def drain(self, receive: MemoryObjectReceiveStream[list[OutRecord]]) -> None:
        async with receive:
            async for batch in receive:
                self.records += batch
                self._changed()

    async def wait(self, count: int) -> None:
        await self.until(lambda: len(self.records) >= count)


@dataclass
class Run:
    reader: StreamReader
    events: Events
    sink: Sink
    changes: Changes
    states: list[tuple[bool, bool, bool, str | None]] = field(default_factory=list)
    fatal: FatalDisconnect | None = None
    ended: anyio.Event = field(default_factory=anyio.Event)

    def state(self) -> tuple[bool, bool, bool, str | None]:
        r = self.reader
        return (r.connected, r.usage_capped, r.in_backoff, r.last_reason)

    async def watch(self) -> None:
        """Record the reader's state at every notification (the daemon's status task)."""
        seen = 0
        while True:
            seen = await self.changes.wait(seen)
            self.states.append(self.state())


@asynccontextmanager
async def reading(
    sim: Simulator,
    *,
    stall_timeout: float = 2.0,
    on_no_rules: Callable[[], Awaitable[bool]] | None = None,
    room: Gate | None = None,
) -> AsyncIterator[Run]:
    """A reader on the simulator, running until the block ends (then stopped), or until a
    fatal decision (kept in `run.fatal`)."""
    settings = Settings.model_validate({
        "x": {"api_url": sim.url, "bearer_token": TOKEN},
        "stream": {"stall_timeout": stall_timeout},
        "backoff": BACKOFF,
    })
    events, changes = Events(), Changes()
    reader = StreamReader(
        settings, functools.partial(make_client, settings, TOKEN), Metrics(), events,
        ReconnectPolicy(settings.backoff), on_no_rules=on_no_rules, room=room,
        changes=changes,
    )
    run = Run(reader, events, Sink(), changes)
    send, receive = anyio.create_memory_object_stream[list[OutRecord]](100)

    async def read() -> None:
        try:
            await reader.run(send)
        except FatalDisconnect as exc:
            run.fatal = exc
        run.ended.set()

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.sink.drain, receive)
            tg.start_soon(run.watch)
            tg.start_soon(read)
            yield run
            reader.stop()
            await run.ended.wait()
            tg.cancel_scope.cancel()


def scenario(test: Callable[[], Awaitable[None]]) -> None:
    anyio.run(test, backend="asyncio")


def connects_since(sim: Simulator, before: int) -> list[int]:
    return [c.status for c in sim.connects()[before:]]


def test_connects_and_reads_tweets(sim: Simulator) -> None:
    before = len(sim.connects())

    async def main() -> None:
        async with reading(sim) as run:
            await run.sink.wait(50)
            assert run.reader.connected
            (connected,) = run.events.named("stream.connected")
            assert connected["attempt"] == 1
            assert all(r.tweet_id and not r.dlq for r in run.sink.records)
            assert run.reader.received >= 50
            assert run.states[0] == (True, False, False, None)  # notified of the connect
            version = run.changes.version()
        assert run.fatal is None
        assert not run.reader.connected
        assert run.changes.version() > version  # and of the disconnect at the stop

    scenario(main)
    assert connects_since(sim, before) == [200]


def test_an_operational_disconnect_reconnects_at_once(sim: Simulator) -> None:
    before = len(sim.connects())

    async def main() -> None:
        async with reading(sim) as run:
            await run.sink.wait(20)
            sim.inject(Fault.operational_disconnect(disconnect_type="ForceDisconnect"))
            (ended,) = await run.events.wait("stream.disconnected")
            assert ended["reason"] == "operational_disconnect"
            assert ended["disconnect_type"] == "ForceDisconnect"
            (scheduled,) = await run.events.wait("stream.reconnect_scheduled")
            # The connection had delivered data: healthy, so the reconnect is attempt 1,
            # at once.
            assert scheduled == {"reason": "operational_disconnect", "attempt": 1,
                                 "delay_s": 0.0}
            second = (await run.events.wait("stream.connected", 2))[1]
            assert second["attempt"] == 1
            tweets = len(run.sink.records)
            await run.sink.wait(tweets + 20)  # and reads again

    scenario(main)
    assert connects_since(sim, before) == [200, 200]


def test_a_503_waits_the_server_error_delay(sim: Simulator) -> None:
    before = len(sim.connects())
    sim.inject_connect(ConnectFault.server_error(503))

    async def main() -> None:
        async with reading(sim) as run:
            (ended,) = await run.events.wait("stream.disconnected")
            assert (ended["reason"], ended["status"]) == ("server_error", 503)
            (scheduled,) = await run.events.wait("stream.reconnect_scheduled")
            assert scheduled == {"reason": "server_error", "attempt": 2,
                                 "delay_s": BACKOFF["http_initial"]}
            assert run.reader.in_backoff
            (connected,) = await run.events.wait("stream.connected")
            assert connected["attempt"] == 2
            await run.sink.wait(10)

    scenario(main)
    first, second = sim.connects()[before:]
    assert (first.status, second.status) == (503, 200)
    assert second.at - first.at >= BACKOFF["http_initial"]


def test_a_stall_ends_the_connection_and_reconnects(sim: Simulator) -> None:
    async def main() -> None:
        async with reading(sim, stall_timeout=1.0) as run:
            await run.sink.wait(10)
            sim.inject(Fault.stall(5.0))
            (ended,) = await run.events.wait("stream.disconnected")
            assert (ended["reason"], ended["status"]) == ("stall", 200)
            assert ended["detail"] == "no data for 1 s"
            (scheduled,) = await run.events.wait("stream.reconnect_scheduled")
            assert (scheduled["reason"], scheduled["delay_s"]) == ("stall", 0.0)
            await run.events.wait("stream.connected", 2)
            tweets = len(run.sink.records)
            await run.sink.wait(tweets + 10)

    scenario(main)


def test_the_usage_cap_holds_until_a_connect_succeeds(sim: Simulator) -> None:
    sim.inject_connect(ConnectFault.usage_capped())

    async def main() -> None:
        async with reading(sim) as run:
            (ended,) = await run.events.wait("stream.disconnected")
            assert ended["reason"] == "usage_cap"
            (scheduled,) = await run.events.wait("stream.reconnect_scheduled")
            assert scheduled["delay_s"] == BACKOFF["usage_cap_initial"]
            await run.events.wait("stream.connected")
            await run.sink.wait(10)
            assert not run.reader.usage_capped
        # What the status task saw (the latest state at each wake-up): capped while it
        # waited out the backoff, cleared by the connect that followed.
        capped = run.states.index((False, True, True, "usage_cap"))
        assert (True, False, False, None) in run.states[capped + 1:]

    scenario(main)


def test_a_401_is_an_exit_77_after_one_connect(sim: Simulator) -> None:
    before = len(sim.connects())
    sim.inject_connect(ConnectFault.unauthorized())

    async def main() -> None:
        async with reading(sim) as run:
            await run.ended.wait()
        assert run.fatal is not None
        assert (run.fatal.exit_code, run.fatal.reason) == (77, "unauthorized")
        assert run.events.named("stream.reconnect_scheduled") == []
        assert run.sink.records == []

    scenario(main)
    assert connects_since(sim, before) == [401]


def test_a_409_resyncs_the_rules_then_reconnects(sim: Simulator) -> None:
    sim.inject_connect(ConnectFault.no_rules())
    resyncs: list[bool] = []

    async def resync() -> bool:
        resyncs.append(True)
        return True

    async def main() -> None:
        async with reading(sim, on_no_rules=resync) as run:
            (ended,) = await run.events.wait("stream.disconnected")
            assert (ended["reason"], ended["status"]) == ("no_rules", 409)
            (scheduled,) = await run.events.wait("stream.reconnect_scheduled")
            assert resyncs == [True]  # before the wait, not after
            assert scheduled == {"reason": "no_rules", "attempt": 2,
                                 "delay_s": BACKOFF["http_initial"]}
            await run.events.wait("stream.connected")
            await run.sink.wait(10)

    scenario(main)


def test_a_409_without_configured_rules_is_an_exit_78(sim: Simulator) -> None:
    sim.inject_connect(ConnectFault.no_rules())

    async def nothing_to_sync() -> bool:
        return False

    async def main() -> None:
        async with reading(sim, on_no_rules=nothing_to_sync) as run:
            await run.ended.wait()
        assert run.fatal is not None
        assert (run.fatal.exit_code, run.fatal.reason) == (78, "no_rules")
        assert run.fatal.detail == NO_RULES_LEFT

    scenario(main)


def test_a_closed_spool_gate_keeps_the_reader_off_x(sim: Simulator) -> None:
    before = len(sim.connects())
    room = Gate(open=False)  # a full spool left by a previous run

    async def main() -> None:
        async with reading(sim, room=room) as run:
            await run.events.wait("stream.paused")
            await run.changes.wait(0)
            assert run.reader.in_backoff
            assert len(sim.connects()) == before  # never asked X
            room.open()
            await run.sink.wait(20)
            # The spool fills up while streaming: the reader closes the stream itself.
            room.close()
            (ended,) = await run.events.wait("stream.disconnected")
            assert ended["reason"] == "spool_full"
            await run.events.wait("stream.paused", 2)
            assert not run.reader.connected
            assert run.events.named("stream.reconnect_scheduled") == []  # no backoff
            room.open()
            await run.events.wait("stream.connected", 2)

    scenario(main)
    assert connects_since(sim, before) == [200, 200]
