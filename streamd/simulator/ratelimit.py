"""Fixed 15-minute request windows behind the x-rate-limit-* headers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class WindowState:
    allowed: bool
    limit: int
    remaining: int
    reset: int  # UNIX seconds

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-rate-limit-limit", str(self.limit).encode()),
            (b"x-rate-limit-remaining", str(self.remaining).encode()),
            (b"x-rate-limit-reset", str(self.reset).encode()),
        ]


class FixedWindow:
    """`limit` requests per `seconds`, the window starting at the first request after the
    previous one ended (X's windows behave this way per app and endpoint)."""

    def __init__(self, limit: int, seconds: float, clock: Callable[[], float] = time.time):
        self.limit = limit
        self.seconds = seconds
        self._clock = clock
        self._start: float | None = None
        self._used = 0

    def _roll(self, now: float) -> None:
        if self._start is None or now >= self._start + self.seconds:
            self._start = now
            self._used = 0

    def hit(self) -> WindowState:
        """Count one request; `allowed` is False once the window is exhausted."""
        now = self._clock()
        self._roll(now)
        self._used += 1
        assert self._start is not None
        allowed = self._used <= self.limit
        return WindowState(
            allowed, self.limit, max(0, self.limit - self._used), int(self._start + self.seconds)
        )

    def peek(self) -> WindowState:
        now = self._clock()
        if self._start is None or now >= self._start + self.seconds:
            return WindowState(True, self.limit, self.limit, int(now + self.seconds))
        return WindowState(
            self._used < self.limit,
            self.limit,
            max(0, self.limit - self._used),
            int(self._start + self.seconds),
        )
