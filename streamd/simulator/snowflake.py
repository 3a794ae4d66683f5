"""Snowflake ids (19-digit strings today) and the created_at they encode."""

from __future__ import annotations

import time
from collections.abc import Callable

TWITTER_EPOCH_MS = 1288834974657


def snowflake_now() -> int:
    return (int(time.time() * 1000) - TWITTER_EPOCH_MS) << 22


def snowflake_at_ms(epoch_ms: int) -> int:
    """The first snowflake of an epoch millisecond."""
    return (epoch_ms - TWITTER_EPOCH_MS) << 22


def snowflake_ms(snowflake: int) -> int:
    """The epoch milliseconds a snowflake was made at."""
    return (snowflake >> 22) + TWITTER_EPOCH_MS


class IdSource:
    """Strictly increasing snowflakes, never behind `clock` (epoch seconds; the simulated
    clock in the simulator)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.last = 0
        self._clock = clock

    def next_block(self, count: int) -> int:
        """Reserve `count` consecutive ids at the clock's now; returns the first."""
        return self.at_ms(int(self._clock() * 1000), count)

    def at_ms(self, epoch_ms: int, count: int = 1) -> int:
        """Reserve `count` consecutive ids made at `epoch_ms` (or just after the last id
        when that is later); returns the first."""
        first = max(snowflake_at_ms(epoch_ms), self.last + 1)
        self.last = first + count - 1
        return first
