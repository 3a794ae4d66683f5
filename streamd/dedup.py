"""Dropping tweets already seen recently (reconnect overlaps, backfill, redundant streams).

A window bounded both in time and in count: an id is a duplicate if it was seen less than
`window_seconds` ago (to about a second) and is among the last `max_ids` ids.

Memory matters here (the window holds up to 200,000 ids): tweet ids are stored as ints in a
set, their first-seen order in a deque, and time only as one mark per second, "ids from
number N on were first seen at T". That is about 80 bytes an id, against about 195 for a
dict of str ids with a timestamp each (measured with tracemalloc).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from typing import Final

# The duplicate window: reconnect overlaps and backfill (at most 5 minutes) fall inside it.
# The daemon sizes its Deduplicator with these and reloads the window from the spool with
# them; the spool keeps at most DEDUP_MAX_IDS ids on disk.
DEDUP_WINDOW_S: Final = 900.0
DEDUP_MAX_IDS: Final = 200_000
# How long the spool keeps a remembered id on disk at most. Only the last DEDUP_WINDOW_S are
# ever loaded back; this only bounds the table between restarts.
REMEMBERED_MAX_AGE_S: Final = 86_400.0

_Key = int | str


def _key(tweet_id: str) -> _Key:
    # X's ids are decimal snowflakes (records.py admits only ASCII digits, at most 19);
    # anything else, e.g. an id remembered by an older version, is kept as it is. isascii()
    # first: str.isdigit() is also true for "²" and "١٢٣", which int() refuses or misreads.
    if tweet_id.isascii() and tweet_id.isdigit() and len(tweet_id) <= 19:
        return int(tweet_id)
    return tweet_id


class Deduplicator:
    def __init__(
        self,
        max_ids: int = DEDUP_MAX_IDS,
        window_seconds: float = DEDUP_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_ids = max_ids
        self._window = window_seconds
        self._clock = clock
        self._seen: set[_Key] = set()
        self._order: collections.deque[_Key] = collections.deque()
        # (time, ordinal of the first id seen at or after that time), at most one a second
        self._marks: collections.deque[tuple[float, int]] = collections.deque()
        self._added = 0  # ids ever added; the ordinal of the next one
        self._dropped = 0  # ids expired from the front; the ordinal of _order[0]

    def __len__(self) -> int:
        return len(self._order)

    def seen(self, tweet_id: str) -> bool:
        """Record `tweet_id`; True if it is a duplicate within the window."""
        return self.seen_many((tweet_id,))[0]

    def seen_many(self, tweet_ids: Iterable[str]) -> list[bool]:
        """Record each id; for each, True if it is a duplicate within the window. The ids
        were read at one instant (one network read): one clock reading and one expiry pass
        for all of them. A repeat inside the batch is a duplicate too."""
        now = self._clock()
        self._expire(now)
        seen, order, max_ids = self._seen, self._order, self._max_ids
        out: list[bool] = []
        repeat = out.append
        marked = bool(self._marks) and now - self._marks[-1][0] < 1.0
        added = self._added
        # _add, inlined (this loop runs per tweet): one mark at most per call, since `now`
        # is the same for every id of the read.
        for tweet_id in tweet_ids:
            if tweet_id.isascii() and tweet_id.isdigit() and len(tweet_id) <= 19:
                key: _Key = int(tweet_id)
            else:
                key = tweet_id
            if key in seen:
                repeat(True)
                continue
            if not marked:
                self._marks.append((now, added))
                marked = True
            seen.add(key)
            order.append(key)
            added += 1
            if len(order) > max_ids:
                seen.discard(order.popleft())
                self._dropped += 1
            repeat(False)
        self._added = added
        return out

    def _add(self, key: _Key, now: float) -> None:
        self._seen.add(key)
        self._order.append(key)
        if not self._marks or now - self._marks[-1][0] >= 1.0:
            self._marks.append((now, self._added))
        self._added += 1
        if len(self._order) > self._max_ids:
            self._seen.discard(self._order.popleft())
            self._dropped += 1

    def snapshot(self, wall_clock: Callable[[], float] = time.time) -> list[tuple[str, float]]:
        """The window as (tweet_id, epoch seconds seen, to the second), to persist it."""
        offset = wall_clock() - self._clock()
        marks = list(self._marks)
        out: list[tuple[str, float]] = []
        m = 0
        for ordinal, key in enumerate(self._order, start=self._dropped):
            while m + 1 < len(marks) and marks[m + 1][1] <= ordinal:
                m += 1
            at = marks[m][0] if marks else self._clock()
            out.append((str(key), at + offset))
        return out

    def preload(self, tweet_ids: Iterable[str]) -> None:
        """Seed the window (e.g. from the spool after a restart), as seen now."""
        now = self._clock()
        for tweet_id in tweet_ids:
            key = _key(tweet_id)
            if key not in self._seen:
                self._add(key, now)
        self._expire(now)

    def _expire(self, now: float) -> None:
        horizon = now - self._window
        marks = self._marks
        # Time: everything before the first mark that is still inside the window goes.
        while marks and marks[0][0] < horizon:
            marks.popleft()
        keep_from = marks[0][1] if marks else self._added
        # Count: never more than max_ids.
        keep_from = max(keep_from, self._added - self._max_ids)
        order, seen = self._order, self._seen
        while self._dropped < keep_from:
            seen.discard(order.popleft())
            self._dropped += 1
