"""The daemon's state in one object, and the answers operations derive from it.

`DaemonState` is what `/readyz`, the `STATUS=` line, the systemd watchdog and the shutdown
read; nothing else keeps a copy of it:

* the lifecycle's own facts: the phase (starting, running, stopping, stopped), when the
  stop was asked for, the exit code, whether the rules are in place or being waited on;
* the stream's and Kafka's facts, read live from the part that decides them (the stream
  reader decides "connected", the publisher "available"), through the two narrow views
  below. A copy would be a second truth to keep in step; a view is never stale.

Every change of state, the daemon's own and the parts', is announced on `changes`
(`streamd.flow.Changes`): the status task waits on it instead of polling.

This module knows neither the reader nor the publisher (it sits below them): they satisfy
`StreamSide` and `KafkaSide` by their attributes; with `ha.mode = "kafka"` the leadership
(streamd.ha) satisfies `HaSide`.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from streamd.flow import Changes
from streamd.reasons import ExitCode


class StreamSide(Protocol):
    """What the state reads of the stream reader."""

    @property
    def connected(self) -> bool: ...
    @property
    def usage_capped(self) -> bool: ...
    @property
    def in_backoff(self) -> bool:
        """Waiting on purpose: a scheduled reconnect delay, or held off X by a full spool."""
        ...
    @property
    def last_reason(self) -> str | None: ...
    @property
    def received(self) -> int: ...
    @property
    def last_progress(self) -> float:
        """time.monotonic() of the last byte read from X (heartbeats count)."""
        ...


class _Counts(Protocol):
    @property
    def published(self) -> int: ...


class KafkaSide(Protocol):
    """What the state reads of the publisher."""

    @property
    def available(self) -> bool: ...
    @property
    def stats(self) -> _Counts: ...


class HaSide(Protocol):
    """What the state reads of the election (ha.mode = "kafka", streamd.ha)."""

    @property
    def role(self) -> str:
        """"leader", "standby", or "joining" (not a member yet, or Kafka does not answer)."""
        ...
    @property
    def in_group(self) -> bool:
        """A member that heard from the group coordinator within ha.session_timeout."""
        ...
    @property
    def group(self) -> str: ...


# /readyz's answer for a healthy standby: 200, so that rollouts do not wait for it.
STANDBY_READY: Final[Mapping[str, str]] = {"role": "standby"}


class Phase(enum.Enum):
    """The lifecycle's phases, in order (streamd.daemon runs them)."""

    STARTING = "starting"  # acquiring the spool, starting the parts, the start-up rules sync
    RUNNING = "running"  # the main loop: reading X
    STOPPING = "stopping"  # a stop was asked for (signal or fatal error): the shutdown
    STOPPED = "stopped"  # the shutdown is over; the exit code is final


@dataclass(eq=False)
class DaemonState:
    """The one state object (see the module docstring). `quiet_limit`: seconds without a
    byte from X after which a connected stream no longer counts as moving (twice the stall
    timeout: the stall detector should have fired long before)."""

    quiet_limit: float
    changes: Changes = field(default_factory=Changes)
    phase: Phase = Phase.STARTING
    stream: StreamSide | None = None
    kafka: KafkaSide | None = None
    ha: HaSide | None = None  # ha.mode = "kafka" only
    # The start-up sync put the configured rules in place (or rules.mode is "off").
    rules_synced: bool = False
    # >0 while a rules sync runs: busy with or deliberately waiting on the rules endpoints.
    rules_busy: int = 0
    # What the current rules wait is for ("server_error, retry in 5 s"), for STATUS=.
    rules_waiting: str | None = None
    stop_at: float | None = None  # anyio clock: when the stop was asked for
    exit_code: ExitCode = ExitCode.OK

    # -- changes (each one is announced) ------------------------------------------------

    def enter(self, phase: Phase) -> None:
        self.phase = phase
        self.changes.notify()

    def begin_stop(self, now: float) -> bool:
        """Record that a stop was asked for at `now` (anyio clock). False if one was
        already: the first request starts the shutdown budget."""
        if self.stopping:
            return False
        self.stop_at = now
        self.enter(Phase.STOPPING)
        return True

    def rules_started(self) -> None:
        self.rules_busy += 1
        self.changes.notify()

    def rules_retrying(self, what: str) -> None:
        self.rules_waiting = what
        self.changes.notify()

    def rules_finished(self) -> None:
        self.rules_busy -= 1
        self.rules_waiting = None
        self.changes.notify()

    def rules_in_place(self) -> None:
        self.rules_synced = True
        self.changes.notify()

    # -- what operations read -----------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.phase in (Phase.STOPPING, Phase.STOPPED)

    def readiness(self) -> str | Mapping[str, str] | None:
        """/readyz: None when ready, else the reason (README "Metrics, health and alerts").
        A healthy standby (in the group, Kafka acknowledging) is ready too: STANDBY_READY."""
        stream, kafka = self.stream, self.kafka
        if stream is None or kafka is None:
            return "starting"
        ha = self.ha
        if ha is not None and ha.role != "leader":
            if not ha.in_group:
                return "not_in_group"
            if not kafka.available:
                return "kafka_unavailable"
            return STANDBY_READY
        if stream.usage_capped:
            return "usage_cap"
        if not stream.connected:
            return "stream_disconnected"
        if not kafka.available:
            return "kafka_unavailable"
        return None

    def ready_to_announce(self) -> bool:
        """READY=1 once tweets can flow or the daemon is deliberately waiting on X (rules
        synced, stream connected, a retry scheduled): a start-up that waits out an X
        outage must not fail the unit."""
        stream, ha = self.stream, self.ha
        return stream is not None and (
            stream.connected or self.rules_synced or stream.in_backoff
            or self.rules_waiting is not None
            # A standby waits on purpose for leadership (or for Kafka, to join).
            or (ha is not None and ha.role != "leader")
        )

    def status_line(self) -> str:
        """The one line `systemctl status` shows (STATUS=)."""
        stream, kafka = self.stream, self.kafka
        if stream is None or kafka is None:
            return "starting"
        counts = f"received {stream.received}, published {kafka.stats.published}"
        ha = self.ha
        if self.stopping:
            what = "stopping"
        elif ha is not None and ha.role != "leader":
            what = (f"standby in group {ha.group}" if ha.in_group else
                    f"standby, not in group {ha.group}: Kafka's group coordinator does not "
                    "answer")
        elif stream.connected:
            what = "streaming"
        elif self.rules_waiting is not None:
            what = f"waiting for the rules endpoint: {self.rules_waiting}"
        elif stream.usage_capped:
            what = "usage capped: waiting for X to lift the cap"
        elif stream.last_reason is not None:
            what = f"reconnecting after {stream.last_reason}"
        else:
            what = "connecting"
        return f"{what}; {counts}"

    def moving(self) -> bool:
        """For the systemd watchdog: bytes arrived recently (heartbeats count), or the
        daemon is deliberately waiting (a reconnect backoff, a full spool, the rules
        endpoints). A wedged loop or a hung read is neither."""
        stream = self.stream
        if stream is None:
            return False
        if self.ha is not None and self.ha.role != "leader":
            return True  # a standby reads nothing: it waits for leadership on purpose
        return stream.in_backoff or self.rules_busy > 0 or (
            time.monotonic() - stream.last_progress < self.quiet_limit
        )
