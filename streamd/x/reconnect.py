"""Reconnect delays per disconnect reason (interface.md "Disconnect reasons", X's guidance).

Pure state machine: the clock and the random source are injected, nothing sleeps here.

Schedules (n = failures of that reason's family since the last healthy connection, from 0):

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
* too_many_connections: rate_limit_initial * 2^n up to rate_limit_max (the reset header is
  about the request window, not the slot, so it is ignored).
* usage_cap: usage_cap_initial * 2^n up to usage_cap_max.
* spool_full, shutdown: 0 (the caller decides when to reconnect).
* unauthorized, forbidden, invalid_request: `FatalDisconnect` is raised, never a delay.

Jitter: a nonzero delay d becomes d * (1 + U[0,1) * jitter): never earlier than the
schedule (so never before the rate-limit reset), up to `jitter` later (so a capped delay can
exceed its cap by that fraction). A zero delay stays zero.

Health: a connection is healthy once it delivered data (`on_data`) or has been up for
`healthy_after` seconds by the injected clock (checked when the next delay is asked for).
Being healthy resets every family's counter and `attempt()`. A 200 that drops before it is
healthy does not reset anything, so "connect, 200, instant drop" loops still back off.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from streamd.errors import FatalDisconnect
from streamd.reasons import Reason
from streamd.x.classify import Classification

__all__ = ["MAX_RESET_WAIT", "BackoffSettings", "ReconnectPolicy"]

# An X rate-limit window is 15 minutes; a reset further ahead than this is not credible.
MAX_RESET_WAIT = 3600.0
# 2^60 times any positive setting is beyond every cap; stops float overflow on long outages.
_MAX_EXPONENT = 60


@dataclass(frozen=True)
class BackoffSettings:
    """The [backoff] config keys with interface.md's defaults (seconds)."""

    network_step: float = 0.25
    network_max: float = 16.0
    http_initial: float = 5.0
    http_max: float = 320.0
    rate_limit_initial: float = 60.0
    rate_limit_max: float = 960.0
    usage_cap_initial: float = 900.0
    usage_cap_max: float = 21600.0
    jitter: float = 0.1  # fraction; delays only ever grow by up to this much
    healthy_after: float = 30.0  # seconds up that count as healthy


# Reasons sharing one attempt counter.
_FAMILY: dict[Reason, str] = {
    Reason.OPERATIONAL_DISCONNECT: "operational",
    Reason.NETWORK: "network",
    Reason.STALL: "network",
    Reason.SERVER_ERROR: "http",
    Reason.RULES_CAP: "rules_cap",
    Reason.NO_RULES: "no_rules",
    Reason.RATE_LIMITED: "rate_limit",
    Reason.TOO_MANY_CONNECTIONS: "too_many_connections",
    Reason.USAGE_CAP: "usage_cap",
    Reason.SPOOL_FULL: "local",
    Reason.SHUTDOWN: "local",
}


def _exponential(initial: float, maximum: float, n: int) -> float:
    return min(initial * 2.0 ** min(n, _MAX_EXPONENT), maximum)


class ReconnectPolicy:
    """Decides how long to wait before the next connect; one instance per stream."""

    def __init__(
        self,
        settings: BackoffSettings,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._rand = rand
        self._failures: dict[str, int] = {}
        self._attempts = 0
        self._connected_at: float | None = None

    def on_connected(self) -> None:
        """The stream answered 200. Not healthy yet: it must deliver data or stay up."""
        self._connected_at = self._clock()

    def on_data(self) -> None:
        """The connection delivered data: it is healthy, reset every counter."""
        self._reset()

    def attempt(self) -> int:
        """Reconnects scheduled since the last healthy connection (0: none yet)."""
        self._check_healthy_by_time()
        return self._attempts

    def next_delay(self, c: Classification) -> float:
        """Seconds to wait before the next connect after `c`; records the failure.

        Raises FatalDisconnect for reasons that must never be retried.
        """
        exit_code = c.reason.fatal_exit_code
        if exit_code is not None:
            raise FatalDisconnect(c.reason.value, exit_code, c.detail or "")
        self._check_healthy_by_time()
        self._connected_at = None  # this connection (if any) is over

        family = _FAMILY[c.reason]
        n = self._failures.get(family, 0)
        self._failures[family] = n + 1
        self._attempts += 1
        return self._jittered(self._base_delay(c, n))

    # --- internals ---------------------------------------------------------------------

    def _base_delay(self, c: Classification, n: int) -> float:
        s = self._settings
        reason = c.reason
        if reason is Reason.OPERATIONAL_DISCONNECT:
            return 0.0 if n == 0 else _exponential(s.http_initial, s.http_max, n - 1)
        if reason in (Reason.NETWORK, Reason.STALL):
            return min(n * s.network_step, s.network_max)
        if reason in (Reason.SERVER_ERROR, Reason.RULES_CAP, Reason.NO_RULES):
            return _exponential(s.http_initial, s.http_max, n)
        if reason is Reason.RATE_LIMITED:
            delay = _exponential(s.rate_limit_initial, s.rate_limit_max, n)
            if c.retry_after is not None:
                until_reset = min(c.retry_after - self._clock(), MAX_RESET_WAIT)
                delay = max(delay, until_reset)
            return delay
        if reason is Reason.TOO_MANY_CONNECTIONS:
            return _exponential(s.rate_limit_initial, s.rate_limit_max, n)
        if reason is Reason.USAGE_CAP:
            return _exponential(s.usage_cap_initial, s.usage_cap_max, n)
        return 0.0  # spool_full, shutdown: the caller decides

    def _jittered(self, delay: float) -> float:
        if delay <= 0.0:
            return 0.0
        return delay * (1.0 + self._rand() * self._settings.jitter)

    def _check_healthy_by_time(self) -> None:
        started = self._connected_at
        if started is not None and self._clock() - started >= self._settings.healthy_after:
            self._reset()
            # Still connected: keep the mark so the connection end is measured from it.
            self._connected_at = started

    def _reset(self) -> None:
        self._failures.clear()
        self._attempts = 0
