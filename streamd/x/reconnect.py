"""The one reconnect decision (README "Disconnect reasons and backoff"; X's guidance:
https://docs.x.com/x-api/posts/filtered-stream/integrate/handling-disconnections).

After every ended connection, failed connect or failed rules request, `decide` says what
comes next, as one of:

* `Delay(seconds, reason, attempt)`: wait, then try again (attempt `attempt`);
* `Resync(reason)`: the stream has no rules: re-sync them, then ask `after_resync`, which
  says `Delay` (rules are in place) or `Exit` 78 (none are configured);
* `WaitForRoom(reason)`: streamd closed the stream itself because the spool is full:
  reconnect as soon as it has room, no backoff;
* `Exit(code, reason, detail)`: never retried; the process ends with `code`
  (77 unauthorized/forbidden, 78 invalid_request, 70 a caller's patience ran out, 0 a stop).

Pure state machine: the clock and the random source are injected, nothing sleeps here.

Stream schedules (n = failures of that reason's family since the last healthy connection,
from 0):

* operational_disconnect: 0 when n == 0, then http_initial * 2^(n-1) up to http_max.
* network, stall (one family): n * network_step up to network_max, so the first reconnect
  after a healthy stream drops is immediate, then 0.25 s, 0.5 s, ... 16 s.
* server_error: http_initial * 2^n up to http_max.
* rules_cap: the same http schedule, own counter.
* no_rules: the same http schedule, own counter: the first retry (after the caller re-synced
  the rules) waits http_initial; if X keeps saying "no rules" it backs off instead of
  hammering.
* rate_limited: max(x-rate-limit-reset - now, rate_limit_initial * 2^n); the cap
  rate_limit_max applies to the exponential part only: X's reset time is authoritative, so
  a later reset is honoured even beyond the cap. A reset more than `MAX_RESET_WAIT` ahead is
  treated as bogus (clock skew, wrong units) and clipped to that.
* too_many_connections, evicted (one family): rate_limit_initial * 2^n up to
  rate_limit_max (the reset header is about the request window, not the slot, so it is
  ignored). When streamd freed the slot itself through the Connections API,
  `after_eviction` says EVICTION_DELAY instead, counting nothing. An `evicted` end waits at
  least EVICTED_MIN_DELAY, so the client that took the slot gets it.
* usage_cap: usage_cap_initial * 2^n up to usage_cap_max.

Jitter: a nonzero delay d becomes d * (1 + U[0,1) * jitter): never earlier than the
schedule (so never before the rate-limit reset), up to `jitter` later (so a capped delay can
exceed its cap by that fraction). A zero delay stays zero.

The rules endpoints (`for_rules`, README "Rules as code"): network errors, 5xx, a 402 and a
429 share one counter on the server_error schedule (http_initial doubling to http_max),
without jitter; a 429 waits at least until its window's reset plus a second, however far
off that is. `max_attempts` and `max_wait` bound a caller's patience (a command at a
terminal); past them the decision is `Exit` 70. The daemon sets neither: it waits the
trouble out, as it does for the stream.

Attempts: `start_attempt()` numbers each connect (or request) since the last healthy one,
from 1; a `Delay` carries the number the next one will get. Health: a connection is
healthy once it delivered data (`on_data`; for the rules endpoints, a good answer) or has
been up for `healthy_after` seconds by the injected clock (checked at the next decision).
Being healthy resets every family's counter and the attempt number. A 200 that drops
before it is healthy resets nothing, so "connect, 200, instant drop" loops still back off.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from streamd.config import BackoffSettings
from streamd.reasons import ExitCode, Reason
from streamd.x.classify import Classification

__all__ = [
    "EVICTED_MIN_DELAY",
    "EVICTION_DELAY",
    "MAX_RESET_WAIT",
    "NO_RULES_LEFT",
    "RULES_ENDPOINTS",
    "STREAM",
    "Decision",
    "Delay",
    "Exit",
    "Profile",
    "ReconnectPolicy",
    "Resync",
    "WaitForRoom",
]

# After streamd freed the slot through the Connections API: X may need a moment to count
# the terminated connection out; then the slot is ours to take.
EVICTION_DELAY = 2.0
# After our connection was evicted, the first reconnect waits at least this long: the
# client that took the slot reconnects EVICTION_DELAY after its termination, and a quick
# evicted side would take the slot from under it (no eviction, just a race it must lose).
EVICTED_MIN_DELAY = 2.5 * EVICTION_DELAY
# An X rate-limit window is 15 minutes; a reset further ahead than this is not credible.
MAX_RESET_WAIT = 3600.0
# 2^60 times any positive setting is beyond every cap; stops float overflow on long outages.
_MAX_EXPONENT = 60

NO_RULES_LEFT = (
    "the stream has no rules and none are configured: add [[rules.rule]] entries "
    '(rules.mode = "sync" or "add") or create rules on X'
)


# --- decisions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delay:
    """Wait `seconds`, then make attempt number `attempt`."""

    seconds: float
    reason: Reason
    attempt: int


@dataclass(frozen=True, slots=True)
class Resync:
    """Re-sync the rules, then report how it went to `after_resync`."""

    reason: Reason


@dataclass(frozen=True, slots=True)
class WaitForRoom:
    """Reconnect once the spool has room again."""

    reason: Reason


@dataclass(frozen=True, slots=True)
class Exit:
    """Stop trying; the process ends with `code`."""

    code: ExitCode
    reason: Reason
    detail: str


Decision = Delay | Resync | WaitForRoom | Exit


# --- schedules ---------------------------------------------------------------------------

Schedule = Callable[[BackoffSettings, int], float]


def _doubling(initial: float, maximum: float, n: int) -> float:
    return min(initial * 2.0 ** min(n, _MAX_EXPONENT), maximum)


def _network(s: BackoffSettings, n: int) -> float:
    return min(n * s.network_step, s.network_max)


def _http(s: BackoffSettings, n: int) -> float:
    return _doubling(s.http_initial, s.http_max, n)


def _at_once_then_http(s: BackoffSettings, n: int) -> float:
    return 0.0 if n == 0 else _http(s, n - 1)


def _rate_limit(s: BackoffSettings, n: int) -> float:
    return _doubling(s.rate_limit_initial, s.rate_limit_max, n)


def _usage_cap(s: BackoffSettings, n: int) -> float:
    return _doubling(s.usage_cap_initial, s.usage_cap_max, n)


@dataclass(frozen=True)
class Family:
    """Reasons of one family (same `name`) share one failure counter."""

    name: str
    schedule: Schedule
    honours_reset: bool = False  # never earlier than the x-rate-limit-reset
    floor: float = 0.0  # never a shorter delay than this


@dataclass(frozen=True)
class Profile:
    """Which reasons are retried on which schedule, and how a reset header is taken."""

    families: Mapping[Reason, Family]
    jitter: bool  # add up to `backoff.jitter` of each delay
    reset_margin: float  # seconds past the reset before the next attempt
    reset_clip: float  # a reset further ahead than this is not credible


_NETWORK = Family("network", _network)
# Another holder of the slot: the same wait whether it refused us or terminated us.
_TOO_MANY_CONNECTIONS = Family("too_many_connections", _rate_limit)
# Evicted: the same counter, and never back before the evictor took the slot.
_EVICTED = Family("too_many_connections", _rate_limit, floor=EVICTED_MIN_DELAY)
STREAM = Profile(
    families={
        Reason.OPERATIONAL_DISCONNECT: Family("operational", _at_once_then_http),
        Reason.NETWORK: _NETWORK,
        Reason.STALL: _NETWORK,
        Reason.SERVER_ERROR: Family("http", _http),
        Reason.RULES_CAP: Family("rules_cap", _http),
        Reason.NO_RULES: Family("no_rules", _http),
        Reason.RATE_LIMITED: Family("rate_limit", _rate_limit, honours_reset=True),
        Reason.TOO_MANY_CONNECTIONS: _TOO_MANY_CONNECTIONS,
        Reason.EVICTED: _EVICTED,
        Reason.USAGE_CAP: Family("usage_cap", _usage_cap),
    },
    jitter=True,
    reset_margin=0.0,
    reset_clip=MAX_RESET_WAIT,
)

_RULES_ENDPOINT = Family("rules_endpoint", _http)
RULES_ENDPOINTS = Profile(
    families={
        Reason.NETWORK: _RULES_ENDPOINT,
        Reason.SERVER_ERROR: _RULES_ENDPOINT,
        Reason.USAGE_CAP: _RULES_ENDPOINT,  # 402: credits pass when topped up
        Reason.RATE_LIMITED: Family("rules_endpoint", _http, honours_reset=True),
    },
    jitter=False,
    reset_margin=1.0,  # the reset is whole seconds: the window may not have rolled yet
    reset_clip=math.inf,  # the daemon waits out any reset; max_wait bounds a command
)

# Reasons no retry can fix: only a person can (the token, the app's tier, the request).
_FATAL: dict[Reason, ExitCode] = {
    Reason.UNAUTHORIZED: ExitCode.CREDENTIALS,
    Reason.FORBIDDEN: ExitCode.CREDENTIALS,
    Reason.INVALID_REQUEST: ExitCode.CONFIG,
}


# --- the policy --------------------------------------------------------------------------


class ReconnectPolicy:
    """Decides what follows a failure; one instance per stream or rules client."""

    def __init__(
        self,
        settings: BackoffSettings,
        *,
        profile: Profile = STREAM,
        max_attempts: int | None = None,
        max_wait: float = math.inf,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._profile = profile
        self._max_attempts = max_attempts
        self._max_wait = max_wait
        self._clock = clock
        self._rand = rand
        self._failures: dict[str, int] = {}
        self._started = 0  # attempts since the last healthy one
        self._connected_at: float | None = None

    @classmethod
    def for_rules(
        cls,
        settings: BackoffSettings,
        *,
        max_attempts: int | None = None,
        max_wait: float = math.inf,
        clock: Callable[[], float] = time.time,
    ) -> ReconnectPolicy:
        """The rules endpoints' policy: forever by default (the daemon); a command passes
        its `max_attempts` and `max_wait`."""
        return cls(settings, profile=RULES_ENDPOINTS, max_attempts=max_attempts,
                   max_wait=max_wait, clock=clock)

    def start_attempt(self) -> int:
        """A connect (or request) is being made: its number since the last healthy one."""
        self._started += 1
        return self._started

    def on_connected(self) -> None:
        """The stream answered 200. Not healthy yet: it must deliver data or stay up."""
        self._connected_at = self._clock()

    def on_data(self) -> None:
        """The connection delivered data (the request got a good answer): it is healthy,
        every counter resets."""
        self._failures.clear()
        self._started = 0

    def decide(self, c: Classification) -> Decision:
        """What follows the end (or failure) `c`; records the failure."""
        code = _FATAL.get(c.reason)
        if code is not None:
            return Exit(code, c.reason, c.detail or "")
        if c.reason in (Reason.SHUTDOWN, Reason.RECOVERY_COMPLETE, Reason.NOT_LEADER):
            return Exit(ExitCode.OK, c.reason, c.detail or "")
        self._check_healthy_by_time()
        self._connected_at = None  # this connection (if any) is over
        if c.reason is Reason.SPOOL_FULL:
            return WaitForRoom(c.reason)  # our own choice, not X's: no backoff
        if c.reason is Reason.NO_RULES:
            return Resync(c.reason)
        return self._delay(c)

    def after_resync(self, c: Classification, *, synced: bool) -> Delay | Exit:
        """After `Resync`: reconnect on the no_rules schedule if the server holds rules
        now, else exit 78 (there is nothing to stream)."""
        if not synced:
            return Exit(ExitCode.CONFIG, c.reason, NO_RULES_LEFT)
        return self._delay(c)

    def after_eviction(self, c: Classification) -> Delay:
        """After TooManyConnections, streamd freed the slot itself through the Connections
        API (its own stale connection, or per x.evict): reconnect after EVICTION_DELAY, not
        on the too_many_connections ladder. Nothing is counted: if the slot is taken
        again, the next refusal waits on the ladder as usual."""
        self._connected_at = None
        return Delay(self._jittered(EVICTION_DELAY), c.reason, self._started + 1)

    def until_reset(self, reset_at: float, detail: str) -> Delay | Exit:
        """A wait for a rate-limit window to reset before the next request (pacing, not a
        failure: nothing is counted). `detail` says which window, should it be too long."""
        until = reset_at - self._clock()
        seconds = until + self._profile.reset_margin if until > 0 else 0.0
        return self._bounded(Delay(seconds, Reason.RATE_LIMITED, self._started + 1), detail)

    # --- internals ---------------------------------------------------------------------

    def _delay(self, c: Classification) -> Delay | Exit:
        detail = c.detail or str(c.reason)
        family = self._profile.families.get(c.reason)
        if family is None:
            return Exit(ExitCode.INTERNAL, c.reason, f"not retried here: {detail}")
        if self._max_attempts is not None and self._started >= self._max_attempts:
            return Exit(ExitCode.INTERNAL, c.reason,
                        f"gave up after {self._max_attempts} attempts: {detail}")
        n = self._failures.get(family.name, 0)
        self._failures[family.name] = n + 1
        seconds = max(family.schedule(self._settings, n), family.floor)
        if family.honours_reset:
            seconds = max(seconds, self._until_reset(c.reset_at) + self._profile.reset_margin)
        return self._bounded(Delay(self._jittered(seconds), c.reason, self._started + 1),
                             detail)

    def _until_reset(self, reset_at: float | None) -> float:
        if reset_at is None:
            return 0.0
        return min(reset_at - self._clock(), self._profile.reset_clip)

    def _bounded(self, delay: Delay, detail: str) -> Delay | Exit:
        if delay.seconds > self._max_wait:
            return Exit(
                ExitCode.INTERNAL, delay.reason,
                f"{detail}: the next request is allowed in {delay.seconds:.0f} s, "
                f"longer than the {self._max_wait:.0f} s we wait",
            )
        return delay

    def _jittered(self, delay: float) -> float:
        if delay <= 0.0:
            return 0.0
        if not self._profile.jitter:
            return delay
        return delay * (1.0 + self._rand() * self._settings.jitter)

    def _check_healthy_by_time(self) -> None:
        started = self._connected_at
        if started is not None and self._clock() - started >= self._settings.healthy_after:
            self.on_data()
