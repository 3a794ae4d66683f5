"""Everything the server thread and the controlling thread share, behind one lock."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streamd.simulator.config import TIERS, SimulatorConfig, TierLimits
from streamd.simulator.connections import ConnectionRegistry
from streamd.simulator.faults import ConnectFault, Fault
from streamd.simulator.ratelimit import FixedWindow
from streamd.simulator.records import (
    ConnectionsRequestRecord,
    ConnectRecord,
    RulesRequestRecord,
    SentLine,
    SentTweet,
)
from streamd.simulator.rules import RuleStore
from streamd.simulator.rules_faults import RulesFault

if TYPE_CHECKING:
    from streamd.simulator.feed import Feed
    from streamd.simulator.stream import StreamSession


class SimClock:
    """The simulated clock: epoch seconds, real time plus an offset that `advance` grows.
    Thread-safe enough: the offset only grows, under the state's lock."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


@dataclass
class LiveSettings:
    """Settings that can change while the server runs (set_tier, set_rate, ...)."""

    tier: str
    tweets_per_second: float
    total_tweets: int | None
    heartbeat_interval: float
    connection_policy: str
    usage_cap: int | None
    match_all: bool
    backfill_tiers: tuple[str, ...]
    connection_limit: int | None = None
    terminate_ending: str = "operational_disconnect"
    connections_api: str = "on"
    firehose_partitions: int = 20
    lang_firehose_partitions: dict[str, int] = field(default_factory=dict)
    endpoint_tiers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    recovery_tiers: tuple[str, ...] = ("enterprise",)
    recovery_jobs_limit: int = 2
    recovery_max_hours: float = 24.0
    recovery_rate: float = float("inf")

    @property
    def limits(self) -> TierLimits:
        return TIERS[self.tier]

    @property
    def slot_limit(self) -> int:
        """How many connections may be active at once: `connection_limit`, else the
        tier's."""
        if self.connection_limit is not None:
            return self.connection_limit
        return self.limits.connections

    @property
    def product_name(self) -> str:
        return f"standard-{self.tier}"


@dataclass
class SentLog:
    """Tweet lines in send order, on any connection (duplicates included). What was
    created, sent or not, is the timeline (feed.py)."""

    ids: list[str] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)

    def add(self, ids: list[str], lines: list[bytes]) -> None:
        self.ids.extend(ids)
        self.lines.extend(lines)


class SimulatorState:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.clock = SimClock()
        self.lock = threading.RLock()
        self.sent_changed = threading.Condition(self.lock)
        # Notified on every new connect, rules request or Connections API request record.
        self.log_changed = threading.Condition(self.lock)
        self.settings = LiveSettings(
            tier=config.tier,
            tweets_per_second=config.tweets_per_second,
            total_tweets=config.total_tweets,
            heartbeat_interval=config.heartbeat_interval,
            connection_policy=config.connection_policy,
            usage_cap=config.usage_cap,
            match_all=config.match_all,
            backfill_tiers=tuple(config.backfill_tiers),
            connection_limit=config.connection_limit,
            terminate_ending=config.terminate_ending,
            connections_api=config.connections_api,
            firehose_partitions=config.firehose_partitions,
            lang_firehose_partitions=dict(config.lang_firehose_partitions),
            endpoint_tiers=dict(config.endpoint_tiers),
            recovery_tiers=tuple(config.recovery_tiers),
            recovery_jobs_limit=config.recovery_jobs_limit,
            recovery_max_hours=config.recovery_max_hours,
            recovery_rate=config.recovery_rate,
        )
        self.rules = RuleStore(wall=self.clock.now)
        self.rules.propagation_delay = config.rule_propagation_delay
        self.stream_window = FixedWindow(config.connect_window_limit, config.connect_window_seconds)
        self.rules_get_window = FixedWindow(config.rules_get_limit, config.rules_window_seconds)
        self.rules_post_window = FixedWindow(config.rules_post_limit, config.rules_window_seconds)
        # The Connections API: the registry of every connection, its windows, its log.
        self.connections = ConnectionRegistry(self.lock, clock=self.clock.now,
                                              zombie_seconds=config.zombie_seconds)
        seconds = config.connections_window_seconds
        self.connections_get_window = FixedWindow(config.connections_get_limit, seconds)
        self.connections_delete_window = FixedWindow(config.connections_delete_limit, seconds)
        self.connections_delete_endpoint_window = FixedWindow(
            config.connections_delete_endpoint_limit, seconds
        )
        self.connections_delete_all_window = FixedWindow(
            config.connections_delete_all_limit, seconds
        )
        self.connections_log: list[ConnectionsRequestRecord] = []
        self.sent = SentLog()
        self.other_lines: list[SentLine] = []
        self.connect_log: list[ConnectRecord] = []
        self.connect_faults: collections.deque[ConnectFault] = collections.deque()
        # (fault, method) in injection order; a request takes the first that matches it.
        self.rules_faults: list[tuple[RulesFault, str]] = []
        self.rules_log: list[RulesRequestRecord] = []
        # Faults injected while no stream is open wait for the next stream.
        self.pending_faults: list[Fault] = []
        # recovery_cut faults injected while no recovery stream is open wait for the next.
        self.pending_recovery_faults: list[Fault] = []
        self.sessions: list[StreamSession] = []
        self.feed: Feed | None = None  # the timeline (set by Feed)
        self.recovery_sent = 0  # tweets sent on recovery streams so far
        # Sessions whose stream has ended but whose socket is still being closed.
        self.closing: set[StreamSession] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        # Set (in the loop) when the simulator stops: ends requests that never answer.
        self.stop_event: asyncio.Event | None = None
        self.started_at = time.monotonic()
        self.stopping = False

    # --- records ------------------------------------------------------------------------

    def record_tweets(self, ids: list[str], lines: list[bytes]) -> None:
        with self.lock:
            self.sent.add(ids, lines)
            self.sent_changed.notify_all()

    def record_line(self, kind: str, line: bytes) -> None:
        with self.lock:
            self.other_lines.append(SentLine(kind, line))

    def record_connect(self, record: ConnectRecord) -> None:
        with self.lock:
            self.connect_log.append(record)
            self.log_changed.notify_all()

    def record_rules_request(self, record: RulesRequestRecord) -> None:
        with self.lock:
            self.rules_log.append(record)
            self.log_changed.notify_all()

    def record_connections_request(self, record: ConnectionsRequestRecord) -> None:
        with self.lock:
            self.connections_log.append(record)
            self.log_changed.notify_all()

    def sent_count(self) -> int:
        return len(self.sent.ids)

    def sent_tweets(self) -> list[SentTweet]:
        with self.lock:
            return [SentTweet(i, line) for i, line in zip(self.sent.ids, self.sent.lines,
                                                          strict=True)]

    def usage_exhausted(self) -> bool:
        cap = self.settings.usage_cap
        return cap is not None and len(self.sent.ids) >= cap

    # --- faults and wake-ups ------------------------------------------------------------

    def inject(self, fault: Fault) -> None:
        with self.lock:
            if fault.kind == "recovery_cut":
                # Only recovery streams take it: the open ones, else the next one.
                recovering = [s for s in self.sessions if not s.finished and s.recovery]
                if not recovering:
                    self.pending_recovery_faults.append(fault)
                    return
                for session in recovering:
                    session.faults.append(fault)
                self.wake_all()
                return
            sessions = [s for s in self.sessions if not s.finished]
            if not sessions:
                self.pending_faults.append(fault)
                return
            for session in sessions:
                session.faults.append(fault)
        self.wake_all()

    def take_pending_faults(self, recovery: bool = False) -> list[Fault]:
        """The faults waiting for the next stream: for a live stream the stream faults, for
        a recovery stream the recovery_cut faults."""
        with self.lock:
            if recovery:
                faults, self.pending_recovery_faults = self.pending_recovery_faults, []
            else:
                faults, self.pending_faults = self.pending_faults, []
            return faults

    def inject_connect(self, fault: ConnectFault, count: int) -> None:
        with self.lock:
            self.connect_faults.extend([fault] * count)

    def next_connect_fault(self) -> ConnectFault | None:
        with self.lock:
            return self.connect_faults.popleft() if self.connect_faults else None

    def inject_rules_fault(self, fault: RulesFault, method: str, count: int) -> None:
        with self.lock:
            self.rules_faults.extend([(fault, method)] * count)

    def next_rules_fault(self, method: str) -> RulesFault | None:
        with self.lock:
            for index, (fault, wanted) in enumerate(self.rules_faults):
                if wanted in (method, "any"):
                    del self.rules_faults[index]
                    return fault
            return None

    def request_stop(self) -> None:
        """From any thread: streams end at their next step, hanging requests at once."""
        self.stopping = True
        loop, event = self.loop, self.stop_event
        if loop is not None and event is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # loop closed between the check and the call
                return
        self.wake_all()

    def call_in_loop(self, callback: Callable[[], object]) -> None:
        """Run `callback` on the server's loop (from any thread); dropped once it is
        closed."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closed between the check and the call
            loop.call_soon_threadsafe(callback)

    def wake_all(self) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with self.lock:
            sessions = list(self.sessions)
        for session in sessions:
            try:
                loop.call_soon_threadsafe(session.wake.set)
            except RuntimeError:  # loop closed between the check and the call
                return

    def open_sessions(self) -> Iterable[StreamSession]:
        with self.lock:
            return [s for s in self.sessions if not s.finished]

    def sessions_holding_sockets(self) -> list[StreamSession]:
        """Open sessions and those still closing: what a stop must abort if it lingers."""
        with self.lock:
            return [s for s in self.sessions if not s.finished] + list(self.closing)
