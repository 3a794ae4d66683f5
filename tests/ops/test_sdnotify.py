"""sd_notify glue against real AF_UNIX datagram sockets, and the watchdog's ping rule."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from streamd.ops import sdnotify


def _receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    address = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(address))
        yield sock


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"streamd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield sock


@pytest.mark.parametrize("fixture_name", ["path_socket", "abstract_socket"])
def test_states_reach_the_socket(fixture_name: str, request: pytest.FixtureRequest) -> None:
    sock: socket.socket = request.getfixturevalue(fixture_name)
    assert sdnotify.ready("rules synced (3), stream connected")
    assert _receive(sock) == "READY=1\nSTATUS=rules synced (3), stream connected"
    assert sdnotify.ready()
    assert _receive(sock) == "READY=1"
    assert sdnotify.status("kafka unavailable, spooling")
    assert _receive(sock) == "STATUS=kafka unavailable, spooling"
    assert sdnotify.watchdog()
    assert _receive(sock) == "WATCHDOG=1"
    assert sdnotify.reloading()
    assert _receive(sock) == "RELOADING=1"
    assert sdnotify.stopping()
    assert _receive(sock) == "STOPPING=1"


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready("x") is False
    assert sdnotify.watchdog() is False
    assert sdnotify.stopping() is False


def test_vanished_socket_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert sdnotify.notify("READY=1") is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    assert sdnotify.watchdog_interval() == 60.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 60.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None  # meant for another process
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "", "abc", "-5"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert sdnotify.watchdog_interval() is None


def test_watchdog_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "90000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    dog = sdnotify.Watchdog()
    assert dog.enabled
    assert dog.period == 45.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert not sdnotify.Watchdog().enabled
    assert sdnotify.Watchdog().period is None


class _Pings:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> bool:
        self.count += 1
        return True


def test_watchdog_pings_only_while_healthy() -> None:
    pings = _Pings()
    dog = sdnotify.Watchdog(10.0, send=pings)
    moving = [True]
    assert dog.tick(lambda: moving[0])
    assert dog.tick(lambda: moving[0])
    moving[0] = False
    assert not dog.tick(lambda: moving[0])
    assert pings.count == 2
    assert dog.pings_sent == 2


def test_watchdog_counts_only_delivered_pings() -> None:
    dog = sdnotify.Watchdog(10.0, send=lambda: False)
    assert not dog.tick(lambda: True)
    assert dog.pings_sent == 0


def test_watchdog_run_sends_real_pings_while_moving(path_socket: socket.socket) -> None:
    """Drive run() with a 40 ms WatchdogSec: pings while the pipeline moves, none after."""
    dog = sdnotify.Watchdog(0.04)
    path_socket.settimeout(0.0)
    moving = [True]

    async def scenario() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(dog.run, lambda: moving[0])
            await anyio.sleep(0.1)  # the pipeline moves for ~100 ms
            moving[0] = False
            pinged = dog.pings_sent
            await anyio.sleep(0.15)  # then it is stuck for ~7 periods
            assert dog.pings_sent == pinged
            tg.cancel_scope.cancel()

    anyio.run(scenario)
    assert dog.pings_sent >= 1
    received = []
    while True:
        try:
            received.append(_receive(path_socket))
        except BlockingIOError:
            break
    assert received == ["WATCHDOG=1"] * dog.pings_sent


def test_watchdog_run_returns_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    dog = sdnotify.Watchdog()

    async def scenario() -> None:
        with anyio.fail_after(1):
            await dog.run(lambda: True)

    anyio.run(scenario)
