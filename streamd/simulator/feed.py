"""The timeline: every tweet the simulated world creates, in order, and what each stream
reads of it.

Tweets are created at the configured rate on the simulated clock (state.SimClock), whether
or not a stream is open: the k-th tweet of a rate segment is created at `origin + k / rate`
(the segment restarts when the rate changes or the clock is advanced). The timeline begins
at the first stream connect answered 200 or the first advance (`timeline_start`
"first_connect", the default), or when the simulator starts ("start"). At rate `inf` tweets
are created as fast as a stream reads them, so only while one reads.

While rules are in force and some model matches them, every tweet created matches at least
one rule (so the rate is the filtered stream's rate) and carries its `matching_rules` as of
its creation; otherwise tweets are drawn from the whole pool and match nothing (the sample
and firehose endpoints need no rules). Replayed payloads (`replay_file`) are created in
file order at the rate.

`advance` moves the clock and creates the interval's tweets at once; `backdate` creates
the tweets of an interval that has just passed (the clock stays), which no live stream
reads. So the entries are kept in creation order, in runs sorted by created_at (a backdate
starts a run); windows merge the runs.

A stream holds a cursor (a position in the timeline): a live connection reads what is
created after it connects (back-dated entries excepted), filtered by its share
(endpoints.Share). Redundant connections
read the same timeline, so they get the same tweets, as X delivers the same data on both.
Backfill and recovery read windows of it by `created_at`.

Guarded by the state's lock: the server loop reads and creates; `advance`, `timeline` and
live settings come from other threads. Per-tweet work is kept to a few bytes operations:
templates are rendered once per (field selection, model) and the rule match once per
(rules version, model)."""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamd.simulator.config import ADVANCE_MAX_TWEETS
from streamd.simulator.endpoints import (
    Share,
    firehose_partition,
    in_sample,
    sample10_partition,
)
from streamd.simulator.records import TimelineTweet
from streamd.simulator.replay import ReplayItem
from streamd.simulator.rule_syntax import TweetFeatures
from streamd.simulator.rules import ActiveRules
from streamd.simulator.snowflake import IdSource, snowflake_at_ms, snowflake_ms
from streamd.simulator.timefmt import iso_from_ms
from streamd.simulator.tweets import (
    FieldSelection,
    TweetModel,
    make_pool,
    matching_rules_tail,
    render_head,
)

if TYPE_CHECKING:
    from streamd.simulator.state import SimulatorState

# An event: (source index, tweet id (None for a replayed non-tweet line), tail bytes). The
# tail is `,"matching_rules":[...]}` as of the tweet's creation, b"" when it matched no rule.
Event = tuple[int, str | None, bytes]

# Most events one pull looks at (a sparse share skips many), and most tweets one catch-up
# creates (a long stall of the loop catches up over several calls).
_SCAN_MAX = 1 << 16
_CATCH_UP_MAX = 1 << 17
# Back-dated ids: sequence numbers from 2**21 up (live ones count from 0 within a ms).
_BACKDATED_SEQ = 1 << 21


@dataclass
class Cursor:
    position: int = 0


class Feed:
    def __init__(self, state: SimulatorState, pool_size: int = 1024) -> None:
        self.state = state
        state.feed = self
        config = state.config
        self.replay: list[ReplayItem] | None = None
        self.models: list[TweetModel] = []
        self.order: list[int] = []
        if config.replay_file is not None:
            from streamd.simulator.replay import load_replay

            self.replay = load_replay(config.replay_file)
        else:
            self.models = make_pool(config.seed, pool_size)
            order = list(range(len(self.models)))
            random.Random(config.seed + 1).shuffle(order)
            self.order = order
        self.ids = IdSource(state.clock.now)
        self.generated = 0  # timeline entries created (tweets and replayed lines)
        self.replay_position = 0
        self._events: list[Event] = []
        self._created_ms: list[int] = []  # created_at of each event, epoch ms
        # 1 for an entry live streams read, 0 for a back-dated one (read by nobody).
        self._live = bytearray()
        # Positions where a run of entries sorted by created_at begins: 0, then every
        # backdate (its tweets are older than the ones before them).
        self._runs: list[int] = [0]
        self._backdated = 0  # back-dated ids made so far (their sequence numbers)
        # The rate segment: tweets due at origin + k / rate, k = 1, 2, ...
        self.started = False
        self._origin = 0.0
        self._rate = 0.0
        self._made = 0
        self._pool_pos = 0
        self._rules_version = -1
        self._eligible: list[tuple[int, bytes]] = []
        self._eligible_pos = 0
        self._heads: dict[tuple[FieldSelection, str], dict[int, bytes]] = {}
        self._ts_cache: tuple[int, bytes] = (-1, b"")
        self._match_all_seen: bool | None = None
        self._indexed_version = -1
        self._indexed: tuple[dict[str, list[int]], list[int]] = ({}, [])

    # --- the schedule -------------------------------------------------------------------

    def _now(self) -> float:
        return self.state.clock.now()

    def start(self, now: float | None = None) -> None:
        """Begin the timeline (once): tweets are due from `now` on."""
        with self.state.lock:
            if not self.started:
                self.started = True
                self._restart(self._now() if now is None else now)

    def _restart(self, now: float) -> None:
        self._origin = now
        self._rate = self.state.settings.tweets_per_second
        self._made = 0

    def reschedule(self) -> None:
        """The rate changed: what the old rate made due so far is created first, then a new
        segment starts now. Caller holds the lock, before the new rate is set."""
        if self.started:
            now = self._now()
            self.catch_up(now)
            self._origin = now
            self._made = 0

    def _remaining(self) -> int | None:
        total = self.state.settings.total_tweets
        return None if total is None else max(0, total - self.generated)

    def catch_up(self, now: float | None = None) -> None:
        """Create every tweet due by `now` (the simulated clock's now by default)."""
        with self.state.lock:
            if not self.started:
                return
            if now is None:
                now = self._now()
            rate = self._rate = self.state.settings.tweets_per_second
            if rate <= 0 or math.isinf(rate):
                self._origin = now
                self._made = 0
                return
            due = math.floor((now - self._origin) * rate + 1e-9) - self._made
            if due <= 0:
                return
            first = self._made  # the segment's tweets 1..first exist already
            count = min(due, _CATCH_UP_MAX)
            remaining = self._remaining()
            if remaining is not None and remaining < count:
                self._made += due  # the total is reached: the rest is never created
                count = remaining
            else:
                self._made += count
            origin = self._origin
            self._create(int((origin + (first + i + 1) / rate) * 1000) for i in range(count))

    def seconds_to_next_tweet(self) -> float | None:
        """None when no tweet can come (not started, rate 0, total reached, replay done)."""
        with self.state.lock:
            if not self.started:
                return None
            remaining = self._remaining()
            if remaining is not None and remaining <= 0:
                return None
            if self.replay is not None and self.replay_position >= len(self.replay):
                return None
            rate = self.state.settings.tweets_per_second
            if rate <= 0:
                return None
            if math.isinf(rate):
                return 0.0
            if rate != self._rate:
                return 0.0  # the next catch-up starts the new segment
            due_at = self._origin + (self._made + 1) / rate
            return max(0.0, due_at - self._now())

    def advance(self, seconds: float) -> tuple[float, int]:
        """The clock moves `seconds` ahead; the tweets of that interval are created at once,
        `created_at` spread evenly over it: the rate times the interval, at most
        ADVANCE_MAX_TWEETS (and the total). Caller holds the lock, has caught up to the
        present and has stopped the streams that must not read them. Returns when the
        interval began and how many tweets it holds."""
        clock = self.state.clock
        start = clock.now()
        clock.offset += seconds
        if not self.started:
            self.started = True
        count = self._interval_count(seconds)
        step = seconds / count if count else 0.0
        self._create(int((start + (i + 1) * step) * 1000) for i in range(count))
        self._restart(start + seconds)
        return start, count

    def backdate(self, seconds: float) -> tuple[float, float, int]:
        """The tweets of the last `seconds` that nobody read: created at once, `created_at`
        spread evenly over [now - seconds, now), counted as an advance counts them; no live
        stream reads them (they are in the past), backfill and recovery windows do. The
        clock does not move. Returns the interval and how many."""
        with self.state.lock:
            now = self._now()
            if not self.started:
                self.started = True
                self._restart(now)
            self.catch_up(now)
            count = self._interval_count(seconds)
            start = now - seconds
            if count:
                step = seconds / count
                self._runs.append(len(self._events))
                self._create((int((start + i * step) * 1000) for i in range(count)),
                             backdated=True)
            return start, now, count

    def _interval_count(self, seconds: float) -> int:
        """How many tweets an interval of `seconds` holds: the rate times it, at most
        ADVANCE_MAX_TWEETS and what the total leaves."""
        rate = self.state.settings.tweets_per_second
        if rate <= 0 or seconds <= 0:
            count = 0
        elif math.isinf(rate):
            count = ADVANCE_MAX_TWEETS
        else:
            count = min(math.floor(rate * seconds + 1e-9), ADVANCE_MAX_TWEETS)
        remaining = self._remaining()
        return count if remaining is None else min(count, remaining)

    # --- creation -----------------------------------------------------------------------

    def _create(self, times_ms: Iterable[int], backdated: bool = False) -> None:
        """Append one timeline entry per time; each tweet's id encodes its created_at. Live
        ids come from the id source, which never goes back, so a created_at is never before
        the previous one; back-dated ids use the upper half of the sequence bits, so they
        never collide with live ids of the same millisecond."""
        active = self._refresh_rules()
        if self.state.settings.match_all != self._match_all_seen:
            self._compute_eligible(active)
        events = self._events
        created = self._created_ms
        live = self._live
        flag = 0 if backdated else 1
        ids = self.ids
        for at_ms in times_ms:
            if self.replay is not None:
                if self.replay_position >= len(self.replay):
                    return
                index, tweet_id, tail = self._next_replay(active)
                created.append(at_ms)  # replayed ids are the file's
            else:
                index, tail = self._next_model()
                if backdated:
                    number = snowflake_at_ms(at_ms) + _BACKDATED_SEQ + (
                        self._backdated % _BACKDATED_SEQ)
                    self._backdated += 1
                else:
                    number = ids.at_ms(at_ms)
                tweet_id = str(number)
                created.append(snowflake_ms(number))
            events.append((index, tweet_id, tail))
            live.append(flag)
            self.generated += 1

    def _next_model(self) -> tuple[int, bytes]:
        eligible = self._eligible
        if eligible:
            pos = self._eligible_pos
            chosen = eligible[pos]
            self._eligible_pos = pos + 1 if pos + 1 < len(eligible) else 0
            return chosen
        pos = self._pool_pos
        self._pool_pos = pos + 1 if pos + 1 < len(self.order) else 0
        return self.order[pos], b""

    def _next_replay(self, active: ActiveRules) -> Event:
        assert self.replay is not None
        index = self.replay_position
        item = self.replay[index]
        self.replay_position += 1
        if item.tweet_id is None:
            return index, None, b""
        tail = item.tail
        if tail is None:
            matched = self._match(active, item.features)
            tail = matching_rules_tail(matched) if matched else b""
        return index, item.tweet_id, tail

    def _on_demand(self, wanted: int) -> None:
        """Rate inf: create `wanted` tweets now (only while a stream reads)."""
        remaining = self._remaining()
        if remaining is not None:
            wanted = min(wanted, remaining)
        if wanted > 0:
            now_ms = int(self._now() * 1000)
            self._create(now_ms for _ in range(wanted))

    # --- matching -----------------------------------------------------------------------

    def _refresh_rules(self) -> ActiveRules:
        active = self.state.rules.active()
        if active.version != self._rules_version:
            self._rules_version = active.version
            self._compute_eligible(active)
        return active

    def _index(self, active: ActiveRules) -> tuple[dict[str, list[int]], list[int]]:
        """Plain-keyword rules by word, and the positions of all other rules."""
        if self._indexed_version != active.version:
            by_word: dict[str, list[int]] = {}
            others: list[int] = []
            for position, keyword in enumerate(active.keywords):
                if keyword is None:
                    others.append(position)
                else:
                    by_word.setdefault(keyword, []).append(position)
            self._indexed = (by_word, others)
            self._indexed_version = active.version
        return self._indexed

    def _match(self, active: ActiveRules, features: TweetFeatures | None) -> list[
        tuple[str, str | None]
    ]:
        rules = active.rules
        if self.state.settings.match_all:
            return [(rule.id, rule.tag) for rule in rules]
        if features is None:
            return []
        by_word, others = self._index(active)
        hits = [position for word in features.words for position in by_word.get(word, ())]
        hits.extend(p for p in others if active.predicates[p](features))
        return [(rules[p].id, rules[p].tag) for p in sorted(set(hits))]

    def _compute_eligible(self, active: ActiveRules) -> None:
        self._match_all_seen = self.state.settings.match_all
        if self.replay is not None:
            return
        eligible: list[tuple[int, bytes]] = []
        if active.rules:
            for index in self.order:
                matched = self._match(active, self.models[index].features)
                if matched:
                    eligible.append((index, matching_rules_tail(matched)))
        self._eligible = eligible
        self._eligible_pos = 0

    # --- reading ------------------------------------------------------------------------

    def lang_of(self, event: Event) -> str | None:
        if self.replay is not None:
            features = self.replay[event[0]].features
            return features.lang if features is not None else None
        return self.models[event[0]].lang

    def takes(self, share: Share, event: Event) -> bool:
        """Whether a connection of `share` receives this timeline entry."""
        tweet_id = event[1]
        if share.filtered:
            return tweet_id is None or bool(event[2])
        return tweet_id is not None and share.takes(tweet_id, self.lang_of(event))

    def open_cursor(self, now: float | None = None) -> Cursor:
        """A cursor at `now` (the present by default): it reads what is created after."""
        with self.state.lock:
            self.catch_up(now)
            return Cursor(len(self._events))

    def pull(self, cursor: Cursor, max_events: int, limit: int | None, share: Share,
             upto: int | None = None) -> list[Event]:
        """The next events of `share` for a stream, created by now; never past `upto` (a
        stream the clock's advance ends). `limit` caps the count (usage cap)."""
        if limit is not None:
            max_events = min(max_events, limit)
        with self.state.lock:
            self.catch_up()
            end = len(self._events)
            if upto is not None:
                end = min(end, upto)
            elif cursor.position >= end and math.isinf(self.state.settings.tweets_per_second):
                self._on_demand(min(_SCAN_MAX, max_events * _spread(share)))
                end = len(self._events)
            events = self._events
            position = cursor.position
            stop = min(end, position + _SCAN_MAX)
            out: list[Event] = []
            takes = self.takes
            live = self._live
            while position < stop and len(out) < max_events:
                event = events[position]
                if live[position] and takes(share, event):
                    out.append(event)
                position += 1
            cursor.position = position
            return out

    def at_end(self, cursor: Cursor, upto: int | None) -> bool:
        with self.state.lock:
            return cursor.position >= (len(self._events) if upto is None else upto)

    def position(self) -> int:
        with self.state.lock:
            return len(self._events)

    def window(self, start: float, end: float, share: Share, upto: int | None = None,
               after: int = 0) -> list[Event]:
        """The entries of `share` created in [start, end) (epoch seconds), oldest first;
        only those at positions from `after` and before `upto`."""
        with self.state.lock:
            self.catch_up()
            events = self._events
            return [events[p] for p in self._positions(start, end, upto)
                    if p >= after and self.takes(share, events[p])]

    def _positions(self, start: float | None, end: float | None, upto: int | None = None
                   ) -> list[int]:
        """Positions of the entries created in [start, end), oldest first (by created_at,
        then id). Caller holds the lock."""
        created = self._created_ms
        total = len(created) if upto is None else min(upto, len(created))
        lo_ms = None if start is None else math.ceil(start * 1000 - 1e-6)
        hi_ms = None if end is None else math.ceil(end * 1000 - 1e-6)
        runs = self._runs
        picked: list[range] = []
        for index, first in enumerate(runs):
            last = runs[index + 1] if index + 1 < len(runs) else len(created)
            last = min(last, total)
            if first >= last:
                continue
            lo = first if lo_ms is None else bisect.bisect_left(created, lo_ms, first, last)
            hi = last if hi_ms is None else bisect.bisect_left(created, hi_ms, first, last)
            if lo < hi:
                picked.append(range(lo, hi))
        if len(picked) == 1:
            return list(picked[0])
        positions = [p for run in picked for p in run]
        events = self._events

        def order(position: int) -> tuple[int, int, int]:
            tweet_id = events[position][1]
            number = int(tweet_id) if tweet_id is not None and tweet_id.isdigit() else 0
            return created[position], number, position

        positions.sort(key=order)
        return positions

    def timeline(self, start: float | None, end: float | None, share: Share | None) -> list[
        TimelineTweet
    ]:
        """The tweets created in [start, end) (epoch seconds; None: unbounded), oldest first;
        only those of `share` when given."""
        host = self.state.config.problem_host
        selection = FieldSelection()
        heads = self.heads_for(selection, host)
        with self.state.lock:
            self.catch_up()
            picked = [(self._events[p], self._created_ms[p]) for p in self._positions(start, end)]
            partitions = self.state.settings.firehose_partitions
        out: list[TimelineTweet] = []
        for event, created_ms in picked:
            tweet_id = event[1]
            if tweet_id is None or (share is not None and not self.takes(share, event)):
                continue
            matching = bool(event[2])
            out.append(TimelineTweet(
                id=tweet_id,
                created_at=created_ms / 1000,
                partition=firehose_partition(tweet_id, partitions),
                lang=self.lang_of(event),
                matching=matching,
                in_sample=in_sample(tweet_id),
                sample10_partition=sample10_partition(tweet_id),
                line=self.render(event, heads, selection, host, filtered=matching),
            ))
        return out

    # --- rendering ----------------------------------------------------------------------

    def heads_for(self, selection: FieldSelection, host: str) -> dict[int, bytes]:
        key = (selection, host)
        heads = self._heads.get(key)
        if heads is None:
            heads = self._heads[key] = {}
        return heads

    def head(self, heads: dict[int, bytes], index: int, selection: FieldSelection,
             host: str) -> bytes:
        cached = heads.get(index)
        if cached is None:
            if self.replay is not None:
                cached = self.replay[index].head
            else:
                cached = render_head(self.models[index], selection, host)
            heads[index] = cached
        return cached

    def created_at(self, tweet_id: str) -> bytes:
        ms = snowflake_ms(int(tweet_id))
        cached_ms, cached = self._ts_cache
        if ms != cached_ms:
            cached = iso_from_ms(ms).encode()
            self._ts_cache = (ms, cached)
        return cached

    def render(self, event: Event, heads: dict[int, bytes], selection: FieldSelection,
               host: str, filtered: bool = True) -> bytes:
        """The line of an entry: with its matching_rules on the filtered stream, without on
        the others."""
        index, tweet_id, tail = event
        head = self.head(heads, index, selection, host)
        if tweet_id is None:
            return head  # a replayed non-tweet message
        if not filtered or not tail:
            tail = b"}"
        if self.replay is not None:
            return head + tail
        return (
            head.replace(b"@@TWEETID@@", tweet_id.encode())
            .replace(b"@@CREATEDAT@@", self.created_at(tweet_id))
            + tail
        )

    def fresh_line(self, selection: FieldSelection, host: str) -> tuple[str, bytes] | None:
        """A tweet line outside the timeline (for truncated/unknown-field faults)."""
        if self.replay is not None or not self.models:
            return None
        index = self.order[self.generated % len(self.order)]
        with self.state.lock:
            tweet_id = str(self.ids.next_block(1))
        heads = self.heads_for(selection, host)
        head = self.head(heads, index, selection, host)
        line = (
            head.replace(b"@@TWEETID@@", tweet_id.encode())
            .replace(b"@@CREATEDAT@@", self.created_at(tweet_id))
            + b',"matching_rules":[]}'
        )
        return tweet_id, line

    def next_id(self) -> str:
        """An id outside the timeline (faults' made-up messages), after every id so far."""
        with self.state.lock:
            return str(self.ids.next_block(1))


def _spread(share: Share) -> int:
    """About how many tweets of the timeline make one of `share` (on-demand creation)."""
    family = share.endpoint.family
    if share.filtered:
        return 1
    if family == "sample":
        return 100
    if family == "sample10":
        return 20
    return share.partitions * (10 if share.endpoint.lang is not None else 1)
