"""Two small primitives the daemon's parts use to tell each other about state, without
polling and without handing out an `anyio.Event` that gets replaced behind the reader's back.

* `Gate`: open or closed, with a wait for "open". The publisher closes its spool-room gate
  when the spool is full and opens it again when half of it is free; the reader stays off X
  while it is closed.
* `Changes`: "something observable changed" (connected, usage cap, Kafka available, spool
  room). Parts call `notify()`; the systemd status task waits on it instead of polling.

Both are loop-local (anyio) and cheap to call on a hot path.
"""

from __future__ import annotations

import anyio


class Gate:
    """A gate that is open or closed; `wait_open()` returns once it is open."""

    def __init__(self, *, open: bool = True) -> None:
        self._opened = anyio.Event()
        if open:
            self._opened.set()

    def is_open(self) -> bool:
        return self._opened.is_set()

    def open(self) -> None:
        self._opened.set()

    def close(self) -> None:
        if self._opened.is_set():
            # An Event cannot be cleared: a fresh one, private to the gate, so nobody holds
            # a stale one (waiters of the old one were woken when it was set).
            self._opened = anyio.Event()

    async def wait_open(self) -> None:
        while not self._opened.is_set():
            await self._opened.wait()


class Changes:
    """A notification that state changed. Each `wait()` returns after the next `notify()`
    (or at once if one happened since the caller's previous `wait()` returned)."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._version = 0

    def notify(self) -> None:
        self._version += 1
        # Wake everyone waiting now; later waiters wait on a fresh event.
        event, self._event = self._event, anyio.Event()
        event.set()

    def version(self) -> int:
        return self._version

    async def wait(self, seen: int) -> int:
        """Wait for a change after version `seen`; return the current version."""
        while self._version == seen:
            await self._event.wait()
        return self._version
