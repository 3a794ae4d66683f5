"""Snowflake ids (19-digit strings today) and the created_at they encode."""

from __future__ import annotations

import time

TWITTER_EPOCH_MS = 1288834974657


def snowflake_now() -> int:
    return (int(time.time() * 1000) - TWITTER_EPOCH_MS) << 22


def snowflake_ms(snowflake: int) -> int:
    """The epoch milliseconds a snowflake was made at."""
    return (snowflake >> 22) + TWITTER_EPOCH_MS


class IdSource:
    """Strictly increasing snowflakes, never behind the wall clock."""

    def __init__(self) -> None:
        self.last = 0

    def next_block(self, count: int) -> int:
        """Reserve `count` consecutive ids; returns the first."""
        first = max(snowflake_now(), self.last + 1)
        self.last = first + count - 1
        return first
