"""Leadership: what the daemon's main loop runs with `ha.mode = "kafka"` (README "High
availability").

    while not stopping:
        term = await election.wait_elected()
        take over: the last record on ha.topic names the previous leader's X connections
                   (terminated through the Connections API if X still counts them,
                   `connections.terminated` why=handover) and its last read (the start of
                   the hand-over gap, which sizes the backfill of the first connect)
        run the reader until the term ends (lost, fenced) or the daemon stops
        on loss: `stream.disconnected` reason=not_leader, a "released" record

While it leads it records its X connection ids on every connect (SlotKeeper's `on_own`) and
its last read every ha.session_timeout ("reading"), so that a successor of a leader that
died without a word still knows what to terminate and how far back to ask.

A standby holds no X connection. The publisher is not touched: it drains whatever the spool
holds whatever the role (publishing needs no leadership).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Final, Protocol

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from streamd.config import Settings
from streamd.errors import ConnectionsApiError, ConnectionsUnavailable, CredentialsError
from streamd.ha.election import Election, Role, Term
from streamd.ha.records import LeaderRecord, RecordLog
from streamd.ops.health import DaemonState
from streamd.ops.logs import Logger
from streamd.ops.metrics import Metrics
from streamd.reasons import Reason
from streamd.records import OutRecord, rfc3339_ms
from streamd.x.connections import ConnectionsApi

__all__ = ["LeaderReader", "Leadership"]

# One Connections API operation of the hand-over never holds up the connect longer.
HANDOVER_API_TIMEOUT_S: Final = 10.0
# The records are small: a write or the read of the last one gets this long at most.
RECORD_TIMEOUT_S: Final = 5.0
# While the daemon stops, each step of leaving (the last record, LeaveGroup) gets this long:
# milliseconds when Kafka answers, and the shutdown budget (kafka.flush_timeout + 2 s) must
# hold when it does not.
STOPPING_STEP_S: Final = 1.0


class LiveReader(Protocol):
    """One live connection's reader: the start of its next gap is its last read."""

    last_read_at: float | None


class LeaderReader(Protocol):
    """What leadership drives (streamd.x.streams.Streams): run() until stop(), and again
    after resume()."""

    @property
    def live(self) -> Sequence[LiveReader]: ...
    @property
    def connected(self) -> bool: ...
    @property
    def last_read_at(self) -> float | None: ...
    async def run(self, send: MemoryObjectSendStream[list[OutRecord]]) -> None: ...
    def stop(self) -> None: ...
    def resume(self) -> None: ...


ConnectionsFactory = Callable[[], AbstractAsyncContextManager[ConnectionsApi]]


def _when(epoch: float | None) -> str | None:
    return None if epoch is None else rfc3339_ms(int(epoch * 1000))


class Leadership:
    def __init__(
        self,
        settings: Settings,
        election: Election,
        records: RecordLog,
        state: DaemonState,
        log: Logger,
        metrics: Metrics,
        *,
        connections: ConnectionsFactory | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`state`: the daemon's (its stop request ends lead()); `connections`: opens the
        Connections API for one operation (None: x.connections_api = false, nothing is
        terminated on a hand-over and X's connection limit is the only fence)."""
        self._settings = settings
        self._election = election
        self._records = records
        self._state = state
        self._log = log
        self._metrics = metrics
        self._connections = connections
        self._clock = clock
        self._endpoint = settings.stream.stream.connections_name
        self._record_every = settings.ha.session_timeout
        # Our X connections of the current term, newest last (stream.connections at most).
        self._own_ids: list[str] = []
        self._connected_at: float | None = None
        self._done = False  # the reader ended by itself: the main loop ends, as without HA

    # --- what health reads (ops/health.py HaSide) -----------------------------------------

    @property
    def role(self) -> str:
        return str(self._election.role)

    @property
    def in_group(self) -> bool:
        return self._election.in_group

    @property
    def group(self) -> str:
        return self._election.group

    # --- the daemon's calls ------------------------------------------------------------

    async def run(self) -> None:
        """The membership: a task of the daemon's group from start-up on (a standby is a
        member before the main loop begins). Starts the record producer beside it."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._records.start)
            await self._election.run()

    async def lead(self, reader: LeaderReader, send: MemoryObjectSendStream[list[OutRecord]]
                   ) -> None:
        """The main loop: lead when elected, until the daemon stops. Leaves the group on the
        way out, so that a successor is elected at once."""
        try:
            while not self._done:
                term = await self._until_elected()
                if term is None:
                    return
                await self._serve(term, reader, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._election.close(STOPPING_STEP_S if self._state.stopping else None)
                await self._records.close(STOPPING_STEP_S)

    async def on_own(self, connection_id: str, connected_at: float) -> None:
        """SlotKeeper's hook: the id of our new connection is known. Never raises."""
        if self._election.role is not Role.LEADER:
            return
        if connection_id not in self._own_ids:
            self._own_ids.append(connection_id)
        del self._own_ids[:-self._settings.stream.connections]
        self._connected_at = connected_at
        await self._write("connected", connected_at)

    # --- one term ------------------------------------------------------------------------

    async def _until_elected(self) -> Term | None:
        """The next term, or None once the daemon stops."""
        state = self._state
        elected: Term | None = None
        async with anyio.create_task_group() as tg:

            async def election() -> None:
                nonlocal elected
                elected = await self._election.wait_elected()
                tg.cancel_scope.cancel()

            async def stop_request() -> None:
                seen = state.changes.version()
                while not state.stopping:
                    seen = await state.changes.wait(seen)
                tg.cancel_scope.cancel()

            tg.start_soon(election)
            tg.start_soon(stop_request)
        return None if state.stopping else elected

    async def _serve(self, term: Term, reader: LeaderReader,
                     send: MemoryObjectSendStream[list[OutRecord]]) -> None:
        # No await before resume(): a stop request is seen here or stops the reader later.
        if self._state.stopping:
            return
        reader.resume()
        self._own_ids, self._connected_at = [], None
        ended = ""
        ran = False
        try:
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    nonlocal ended
                    ended = await self._election.wait_lost(term)
                    reader.stop()  # at once: it cannot prove it leads any more

                tg.start_soon(watch)
                await self._take_over(reader)
                if self._election.term == term and not self._state.stopping:
                    tg.start_soon(self._keep_recording, reader)
                    ran = True
                    await reader.run(send.clone())
                tg.cancel_scope.cancel()
        except ExceptionGroup as group:
            # The reader's fatal answer (FatalDisconnect) reaches the daemon as it would
            # without leadership, not wrapped in this task group's ExceptionGroup.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        if ran and not ended and not self._state.stopping:
            self._done = True  # not stopped: it decided to end (as the main loop would)
        if ended and ran:
            self._log.warning("stream.disconnected", reason=str(Reason.NOT_LEADER),
                              detail=ended)
            self._metrics.stream_disconnects.labels(reason=str(Reason.NOT_LEADER)).inc()
        if ran or ended:
            # Where this leader stopped reading: the start of its successor's gap.
            await self._write("released", self._connected_at, reader.last_read_at,
                              within=STOPPING_STEP_S if self._state.stopping else None)
        self._own_ids = []

    async def _keep_recording(self, reader: LeaderReader) -> None:
        while True:
            await anyio.sleep(self._record_every)
            await self._write("reading", self._connected_at, reader.last_read_at)

    async def _take_over(self, reader: LeaderReader) -> None:
        """Before the first connect of a term: end the previous leader's connections that X
        still counts, and start the gap where it stopped reading. Bounded: past its time the
        reader connects anyway (X's connection limit is then the fence)."""
        with anyio.move_on_after(RECORD_TIMEOUT_S + 2 * HANDOVER_API_TIMEOUT_S + 1) as scope:
            await self._hand_over(reader)
        if scope.cancelled_caught:
            self._log.warning("ha.handover", group=self._election.group,
                              detail="the hand-over took too long: connecting anyway")

    async def _hand_over(self, reader: LeaderReader) -> None:
        previous = await self._records.last()
        if previous is None:
            self._log.info("ha.handover", group=self._election.group,
                           detail=f"no leader record on {self._election.topic} yet")
            return
        own = previous.instance == self._election.instance
        terminated: list[str] = []
        if not own and previous.connection_ids:
            terminated = await self._terminate(previous)
        gap_from = previous.last_read_at
        if gap_from is not None:
            for live in reader.live:
                if live.last_read_at is None or live.last_read_at < gap_from:
                    live.last_read_at = gap_from
        self._log.info(
            "ha.handover", group=self._election.group, previous=previous.member,
            previous_instance=previous.instance, previous_host=previous.host,
            record=previous.kind, connection_ids=list(previous.connection_ids),
            terminated=terminated, gap_from=_when(gap_from), own=own)

    async def _terminate(self, previous: LeaderRecord) -> list[str]:
        """Terminate the connections `previous` names that X still counts."""
        if self._connections is None:
            return []
        wanted = set(previous.connection_ids)
        try:
            with anyio.fail_after(HANDOVER_API_TIMEOUT_S):
                async with self._connections() as api:
                    active = await api.list(status="active", endpoint=self._endpoint)
            stale = [c.id for c in active if c.id is not None and c.id in wanted]
            if not stale:
                return []
            with anyio.fail_after(HANDOVER_API_TIMEOUT_S):
                async with self._connections() as api:
                    report = await api.terminate(stale)
        except (ConnectionsApiError, ConnectionsUnavailable, CredentialsError,
                TimeoutError) as exc:
            error = (f"no answer within {HANDOVER_API_TIMEOUT_S:g} s"
                     if isinstance(exc, TimeoutError) else str(exc))
            self._log.warning("connections.failed", error=error, why="handover")
            return []
        done = list(report.succeeded)
        if done:
            self._log.info(
                "connections.terminated", ids=done, why="handover",
                detail=f"the previous leader of group {self._election.group} "
                       f"({previous.member}) still held them")
            self._metrics.connections_terminated.labels(why="handover").inc(len(done))
        for kill in report.failed:
            self._log.warning("connections.terminate_failed", id=kill.uuid, why="handover",
                              error=kill.error)
        return done

    async def _write(self, kind: str, connected_at: float | None,
                     last_read_at: float | None = None, *, within: float | None = None
                     ) -> None:
        record = LeaderRecord(
            group=self._election.group, member=self._election.member,
            instance=self._election.instance, host=self._election.host, kind=kind,
            connection_ids=tuple(self._own_ids), connected_at=connected_at,
            last_read_at=last_read_at if last_read_at is not None else connected_at,
            written_at=self._clock())
        try:
            await self._records.write(record, within=within)
        except Exception as exc:  # pragma: no cover - RecordLog reports its own failures
            self._log.warning("ha.record_failed", detail=f"{type(exc).__name__}: {exc}")

