"""The tweet feed shared by every open stream: picks matching tweet models at the configured
rate and assigns ids. Redundant connections (Enterprise) read the same feed, so they get the
same tweets, as X delivers the same data on both.

Runs on the server's event loop only. Per-tweet work is kept to a few bytes operations:
templates are rendered once per (field selection, model) and the rule match once per
(rules version, model)."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

from streamd.simulator.replay import ReplayItem
from streamd.simulator.rule_syntax import TweetFeatures
from streamd.simulator.rules import ActiveRules
from streamd.simulator.snowflake import IdSource, snowflake_ms
from streamd.simulator.state import SimulatorState
from streamd.simulator.timefmt import iso_from_ms
from streamd.simulator.tweets import (
    FieldSelection,
    TweetModel,
    make_pool,
    matching_rules_tail,
    render_head,
)

# An event: (source index, tweet id (None for a replayed non-tweet line), tail bytes).
Event = tuple[int, str | None, bytes]

_MAX_LOG_KEEP = 1 << 16


@dataclass
class Cursor:
    position: int = 0


class Feed:
    def __init__(self, state: SimulatorState, pool_size: int = 1024) -> None:
        self.state = state
        config = state.config
        self.replay: list[ReplayItem] | None = None
        self.models: list[TweetModel] = []
        if config.replay_file is not None:
            from streamd.simulator.replay import load_replay

            self.replay = load_replay(config.replay_file)
        else:
            self.models = make_pool(config.seed, pool_size)
            order = list(range(len(self.models)))
            random.Random(config.seed + 1).shuffle(order)
            self.order = order
        self.ids = IdSource()
        self.generated = 0
        self.replay_position = 0
        self._log: list[Event] = []
        self._log_base = 0
        self._cursors: list[Cursor] = []
        self._tokens = 0.0
        self._last_refill = time.monotonic()
        self._rules_version = -1
        self._eligible: list[tuple[int, bytes]] = []
        self._eligible_pos = 0
        self._heads: dict[tuple[FieldSelection, str], dict[int, bytes]] = {}
        self._ts_cache: tuple[int, bytes] = (-1, b"")
        self._match_all_seen: bool | None = None
        self._indexed_version = -1
        self._indexed: tuple[dict[str, list[int]], list[int]] = ({}, [])

    # --- cursors ------------------------------------------------------------------------

    def open_cursor(self) -> Cursor:
        cursor = Cursor(self._log_base + len(self._log))
        self._cursors.append(cursor)
        return cursor

    def close_cursor(self, cursor: Cursor) -> None:
        if cursor in self._cursors:
            self._cursors.remove(cursor)
        self._trim()

    def _trim(self) -> None:
        if not self._cursors:
            self._log_base += len(self._log)
            self._log.clear()
            return
        lowest = min(c.position for c in self._cursors)
        drop = lowest - self._log_base
        if drop >= 4096 or (drop > 0 and drop == len(self._log)):
            del self._log[:drop]
            self._log_base = lowest

    # --- rate ---------------------------------------------------------------------------

    def _refill(self, now: float) -> float:
        rate = self.state.settings.tweets_per_second
        if math.isinf(rate):
            self._tokens = math.inf
        else:
            if math.isinf(self._tokens):
                self._tokens = 0.0
            # A small burst allowance lets high rates coalesce lines into fewer chunks.
            burst = max(1.0, rate * 0.05)
            self._tokens = min(burst, self._tokens + (now - self._last_refill) * rate)
        self._last_refill = now
        return rate

    def seconds_to_next_token(self) -> float | None:
        """None when no tweet can come at all (rate 0, total reached, nothing matches)."""
        settings = self.state.settings
        total = settings.total_tweets
        if total is not None and self.generated >= total:
            return None
        if self.replay is not None and self.replay_position >= len(self.replay):
            return None
        if self.replay is None and not self._eligible:
            return None
        rate = settings.tweets_per_second
        if rate <= 0:
            return None
        if math.isinf(rate):
            return 0.0
        return max(0.0, (1.0 - self._tokens) / rate)

    # --- matching -----------------------------------------------------------------------

    def _refresh_rules(self) -> ActiveRules:
        with self.state.lock:
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

    # --- generation ---------------------------------------------------------------------

    def pull(self, cursor: Cursor, max_events: int, limit: int | None) -> list[Event]:
        """Events for one stream; generates new ones (rate permitting) when the stream has
        read everything already generated. `limit` caps the count (usage cap)."""
        active = self._refresh_rules()
        if self.state.settings.match_all != self._match_all_seen:
            self._compute_eligible(active)
        if limit is not None:
            max_events = min(max_events, limit)
        start = cursor.position - self._log_base
        available = len(self._log) - start
        if available < max_events:
            self._generate(max_events - available, active)
        events = self._log[start : start + max_events]
        cursor.position += len(events)
        self._trim()
        return events

    def _generate(self, wanted: int, active: ActiveRules) -> None:
        rate = self._refill(time.monotonic())
        if rate <= 0 or not active.rules:
            return
        count = wanted if math.isinf(self._tokens) else min(wanted, int(self._tokens))
        total = self.state.settings.total_tweets
        if total is not None:
            count = min(count, total - self.generated)
        if count <= 0:
            return
        produced = (
            self._generate_replay(count, active)
            if self.replay is not None
            else self._generate_models(count)
        )
        self.generated += produced
        if not math.isinf(self._tokens):
            self._tokens -= produced

    def _generate_models(self, count: int) -> int:
        eligible = self._eligible
        if not eligible:
            return 0
        first = self.ids.next_block(count)
        pos = self._eligible_pos
        size = len(eligible)
        log = self._log
        for offset in range(count):
            index, tail = eligible[pos]
            pos += 1
            if pos == size:
                pos = 0
            log.append((index, str(first + offset), tail))
        self._eligible_pos = pos
        return count

    def _generate_replay(self, count: int, active: ActiveRules) -> int:
        assert self.replay is not None
        produced = 0
        while produced < count and self.replay_position < len(self.replay):
            index = self.replay_position
            item = self.replay[index]
            self.replay_position += 1
            if item.tweet_id is None:
                self._log.append((index, None, b""))
                produced += 1
                continue
            tail = item.tail
            if tail is None:
                matched = self._match(active, item.features)
                if not matched:
                    continue  # X only sends tweets that match a rule
                tail = matching_rules_tail(matched)
            self._log.append((index, item.tweet_id, tail))
            produced += 1
        return produced

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
               host: str) -> bytes:
        index, tweet_id, tail = event
        head = self.head(heads, index, selection, host)
        if tweet_id is None:
            return head  # a replayed non-tweet message
        if self.replay is not None:
            return head + tail
        return (
            head.replace(b"@@TWEETID@@", tweet_id.encode())
            .replace(b"@@CREATEDAT@@", self.created_at(tweet_id))
            + tail
        )

    def fresh_line(self, selection: FieldSelection, host: str) -> tuple[str, bytes] | None:
        """A tweet line outside the feed (for truncated/unknown-field faults)."""
        if self.replay is not None or not self.models:
            return None
        index = self.order[self.generated % len(self.order)]
        tweet_id = str(self.ids.next_block(1))
        heads = self.heads_for(selection, host)
        head = self.head(heads, index, selection, host)
        line = (
            head.replace(b"@@TWEETID@@", tweet_id.encode())
            .replace(b"@@CREATEDAT@@", self.created_at(tweet_id))
            + b',"matching_rules":[]}'
        )
        return tweet_id, line
