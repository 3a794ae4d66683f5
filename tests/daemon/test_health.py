"""The state object and what operations read from it: /readyz's reason, READY=1, the
STATUS= line (sent on a change, not a second later), the watchdog's "moving"."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from streamd.ops import sdnotify
from streamd.ops.health import DaemonState, Phase
from streamd.ops.status import report_to_systemd


@dataclass
class Stream:
    connected: bool = False
    usage_capped: bool = False
    in_backoff: bool = False
    last_reason: str | None = None
    received: int = 0
    last_progress: float = field(default_factory=time.monotonic)


@dataclass
class Counts:
    published: int = 0


@dataclass
class Kafka:
    available: bool = True
    stats: Counts = field(default_factory=Counts)


def wired() -> tuple[DaemonState, Stream, Kafka]:
    state = DaemonState(quiet_limit=60.0)
    stream, kafka = Stream(), Kafka()
    state.stream, state.kafka = stream, kafka
    return state, stream, kafka


def test_readiness_names_the_first_reason() -> None:
    assert DaemonState(quiet_limit=60.0).readiness() == "starting"
    state, stream, kafka = wired()
    assert state.readiness() == "stream_disconnected"
    stream.connected = True
    kafka.available = False
    assert state.readiness() == "kafka_unavailable"
    kafka.available = True
    assert state.readiness() is None
    stream.usage_capped = True
    assert state.readiness() == "usage_cap"


def test_status_line_follows_the_state() -> None:
    state, stream, kafka = wired()
    stream.received, kafka.stats.published = 7, 5
    assert state.status_line() == "connecting; received 7, published 5"
    stream.last_reason = "stall"
    assert state.status_line().startswith("reconnecting after stall;")
    stream.usage_capped = True
    assert state.status_line().startswith("usage capped: waiting for X to lift the cap;")
    state.rules_started()
    state.rules_retrying("server_error, retry in 5 s")
    assert state.status_line().startswith(
        "waiting for the rules endpoint: server_error, retry in 5 s;")
    state.rules_finished()
    stream.connected = True
    assert state.status_line().startswith("streaming;")
    assert state.begin_stop(1.0)
    assert not state.begin_stop(2.0)  # the first request starts the budget
    assert (state.phase, state.stop_at) == (Phase.STOPPING, 1.0)
    assert state.status_line().startswith("stopping;")


def test_ready_and_moving_while_waiting_on_purpose() -> None:
    state, stream, _ = wired()
    stream.last_progress = time.monotonic() - 3600  # nothing from X for an hour
    assert not state.ready_to_announce()
    assert not state.moving()
    stream.in_backoff = True  # a scheduled reconnect delay, or a full spool
    assert state.ready_to_announce()
    assert state.moving()
    stream.in_backoff = False
    state.rules_started()  # a rules endpoint in trouble, retried
    assert state.moving()
    state.rules_finished()
    assert not state.moving()
    stream.last_progress = time.monotonic()  # a heartbeat
    assert state.moving()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def received(sock: socket.socket) -> list[str]:
    out: list[str] = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_status_task_reports_a_change_at_once(notify_socket: socket.socket) -> None:
    state, stream, _ = wired()

    async def scenario() -> None:
        async with anyio.create_task_group() as tg:
            # Counts alone are refreshed once a minute here: every message below is sent
            # because the state changed.
            tg.start_soon(lambda: report_to_systemd(
                state, watchdog=sdnotify.Watchdog(0), counts_every=60))
            await anyio.sleep(0.05)
            assert received(notify_socket) == ["STATUS=connecting; received 0, published 0"]
            stream.connected = True
            state.rules_in_place()  # any notify() wakes the task
            await anyio.sleep(0.05)
            assert received(notify_socket) == [
                "READY=1\nSTATUS=streaming; received 0, published 0"]
            state.begin_stop(1.0)
            await anyio.sleep(0.05)
            assert received(notify_socket) == ["STATUS=stopping; received 0, published 0"]
            tg.cancel_scope.cancel()

    anyio.run(scenario)
