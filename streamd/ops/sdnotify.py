"""systemd sd_notify glue: readiness, status, stopping and watchdog pings (no dependency).

Outside systemd (no $NOTIFY_SOCKET) every call is a no-op that returns False, so the daemon
can call these unconditionally.

Watchdog rule (see `Watchdog`): systemd kills the service when no WATCHDOG=1 arrives within
WatchdogSec. We ping every WatchdogSec/2, from the event loop, and only when `is_healthy()`
says the pipeline moves: bytes arrived from X recently (heartbeats count), or standing still
is intended (sleeping out a scheduled backoff, a full spool, a rules endpoint in trouble).
The daemon's answer is `streamd.ops.health.DaemonState.moving`. A blocked event loop, or a
task wedged on an await that never returns, therefore stops the pings and systemd restarts
the service.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import anyio


def _socket_address(raw: str) -> str | bytes:
    # systemd writes abstract-namespace sockets with a leading "@"; the kernel wants "\0".
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    return raw


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1\\nSTATUS=...") to $NOTIFY_SOCKET; False if not sent."""
    raw = os.environ.get("NOTIFY_SOCKET", "")
    if not raw:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), _socket_address(raw))
    except OSError:
        # Notification is advisory: a vanished socket must never take the daemon down.
        return False
    return True


def ready(status: str = "") -> bool:
    """Tell systemd start-up is complete (Type=notify), optionally with a STATUS= line."""
    return notify(f"READY=1\nSTATUS={status}" if status else "READY=1")


def status(text: str) -> bool:
    """Set the free-form one-line status shown by `systemctl status`."""
    return notify(f"STATUS={text}")


def stopping() -> bool:
    """Tell systemd a clean shutdown (flush) has begun."""
    return notify("STOPPING=1")


def reloading() -> bool:
    """Tell systemd a reload (SIGHUP: rules re-sync) is in progress; send ready() after."""
    return notify("RELOADING=1")


def watchdog() -> bool:
    """Send one watchdog keep-alive ping."""
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """WatchdogSec in seconds when the watchdog is armed for this process, else None.

    Ping at half this value (what `Watchdog` does): one lost ping is then harmless.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # the variables were meant for another process (e.g. our parent)
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


class Watchdog:
    """Pings WATCHDOG=1 only while `is_healthy()` (rule in the module doc)."""

    def __init__(
        self, timeout: float | None = None, *, send: Callable[[], bool] = watchdog,
    ) -> None:
        self.timeout = watchdog_interval() if timeout is None else timeout
        self._send = send
        self.pings_sent = 0

    @property
    def enabled(self) -> bool:
        return self.timeout is not None and self.timeout > 0

    @property
    def period(self) -> float | None:
        """Seconds between checks: half of WatchdogSec."""
        return self.timeout / 2 if self.timeout else None

    def tick(self, is_healthy: Callable[[], bool]) -> bool:
        """One decision: ping if is_healthy()."""
        if not is_healthy():
            return False
        sent = self._send()
        self.pings_sent += int(sent)
        return sent

    async def run(self, is_healthy: Callable[[], bool]) -> None:
        """Tick every `period` seconds forever; returns at once when the watchdog is off."""
        period = self.period
        if period is None:
            return
        while True:
            await anyio.sleep(period)
            self.tick(is_healthy)
