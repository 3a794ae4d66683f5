"""Dropping tweets already seen recently (reconnect overlaps, backfill, redundant streams).

A window bounded both in time and in count: an id is a duplicate if it was seen less than
`window_seconds` ago and is among the last `max_ids` ids. Memory is O(max_ids).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable


class Deduplicator:
    def __init__(
        self,
        max_ids: int = 200_000,
        window_seconds: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_ids = max_ids
        self._window = window_seconds
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._order: collections.deque[tuple[str, float]] = collections.deque()

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, tweet_id: str) -> bool:
        """Record `tweet_id`; True if it is a duplicate within the window."""
        now = self._clock()
        self._expire(now)
        if tweet_id in self._seen:
            return True
        self._seen[tweet_id] = now
        self._order.append((tweet_id, now))
        return False

    def snapshot(self, wall_clock: Callable[[], float] = time.time) -> list[tuple[str, float]]:
        """The window as (tweet_id, epoch seconds seen), to persist across a restart."""
        offset = wall_clock() - self._clock()
        return [(tweet_id, at + offset) for tweet_id, at in self._order
                if self._seen.get(tweet_id) == at]

    def preload(self, tweet_ids: Iterable[str]) -> None:
        """Seed the window (e.g. from the spool after a restart)."""
        now = self._clock()
        for tweet_id in tweet_ids:
            if tweet_id not in self._seen:
                self._seen[tweet_id] = now
                self._order.append((tweet_id, now))
        self._expire(now)

    def _expire(self, now: float) -> None:
        order = self._order
        horizon = now - self._window
        while order and (len(order) > self._max_ids or order[0][1] < horizon):
            tweet_id, at = order.popleft()
            if self._seen.get(tweet_id) == at:
                del self._seen[tweet_id]
