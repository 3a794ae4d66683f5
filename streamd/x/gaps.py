"""The gap ledger (README "Enterprise streams"): every interval in which a live connection
was not reading, and how it was covered.

Each live connection has a gap from its last read (or, at start-up, the last read of the
previous run) to its next successful connect. At that connect the ledger decides:

* another live connection was reading -> `redundant` (it delivered the same tweets);
* no connection was reading -> the gap is X's to fill, and the part not recorded yet (a
  gap both connections shared is recorded once, by the first to reconnect) is:
  * `backfill` when the reconnect asked for `backfill_minutes` reaching back to its start;
  * `recovery` when `stream.recovery = "auto"` and it is no older than
    `stream.max_recovery_hours`: a recovery job is scheduled, and the gap is logged when
    the job ends (`recovery` if it delivered its window, else `none` with X's reason);
  * `none`, with the reason.

Every gap is persisted (the spool's database, `GapStore`), logged as `stream.gap` (`from`,
`to`, `seconds`, `covered_by`, `detail`, and `connection` when there are several) and
counted in `streamd_gap_seconds_total{covered_by}`. Pure bookkeeping: the clock is injected,
the store and the scheduler are protocols.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from streamd.config import StreamSettings
from streamd.ops.logs import Logger
from streamd.ops.metrics import Metrics
from streamd.records import rfc3339_ms

__all__ = [
    "Gap",
    "GapLedger",
    "GapRow",
    "GapStore",
    "ReaderView",
    "RecoveryScheduler",
    "backfill_for_gap",
    "created_at_of",
]

# X's tweet ids are snowflakes: milliseconds since this epoch in the bits above 22.
SNOWFLAKE_EPOCH_MS = 1288834974657


def created_at_of(tweet_id: str) -> float | None:
    """When a tweet was created, from its id (epoch seconds); None for an id that is not a
    snowflake (ids from before November 2010, or not numbers)."""
    if not tweet_id.isdigit() or len(tweet_id) > 20:
        return None
    ms = (int(tweet_id) >> 22) + SNOWFLAKE_EPOCH_MS
    return ms / 1000.0 if ms > SNOWFLAKE_EPOCH_MS else None


def backfill_for_gap(gap_seconds: float, configured_minutes: int) -> int:
    """The backfill to ask for after `gap_seconds` without reading: the gap in whole
    minutes, rounded up, at most `configured_minutes` (X allows 0..5)."""
    if configured_minutes <= 0 or gap_seconds <= 0:
        return 0
    return min(configured_minutes, max(1, math.ceil(gap_seconds / 60.0)))


@dataclass(frozen=True, slots=True)
class Gap:
    """A time in which no connection was reading, closed by a successful connect."""

    start: float  # epoch seconds: the last read before it
    end: float  # epoch seconds: the connect that ended it
    backfill_minutes: int  # asked for on that connect
    configured_minutes: int  # stream.backfill_minutes

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def covered_by(self) -> str:
        # X re-streams the last `backfill_minutes` before the connect: that covers the gap
        # if the window reaches back to its start.
        if self.backfill_minutes and self.seconds <= self.backfill_minutes * 60:
            return "backfill"
        return "none"

    @property
    def detail(self) -> str:
        if self.covered_by == "backfill":
            return f"backfill_minutes={self.backfill_minutes} re-streams the gap"
        if self.configured_minutes == 0:
            return "stream.backfill_minutes = 0: posts created in the gap are not re-sent"
        return (f"longer than the {self.configured_minutes}-minute backfill window: "
                "only its last minutes are re-sent")


@dataclass(frozen=True, slots=True)
class GapRow:
    """One gap as the ledger records it."""

    start: float
    end: float
    covered_by: str  # redundant | backfill | recovery | none
    detail: str
    connection: str | None = None

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


class GapStore(Protocol):
    """Where gaps are kept (the daemon: a table of the spool's database)."""

    async def add(self, row: GapRow) -> int: ...
    async def settle(self, gap_id: int, covered_by: str, detail: str) -> None: ...


class RecoveryScheduler(Protocol):
    """Runs recovery jobs (recovery.py): a window to re-stream, and its gap's id."""

    def schedule(self, start: float, end: float, gap: GapRow, gap_id: int | None) -> None: ...


class ReaderView(Protocol):
    """What the ledger reads of a live connection."""

    @property
    def name(self) -> str | None: ...
    @property
    def connected(self) -> bool: ...
    @property
    def connected_since(self) -> float | None: ...
    @property
    def last_read_at(self) -> float | None: ...


def _when(epoch: float) -> str:
    return rfc3339_ms(int(epoch * 1000))


class GapLedger:
    def __init__(
        self,
        stream: StreamSettings,
        metrics: Metrics,
        log: Logger,
        *,
        store: GapStore | None = None,
        recovery: RecoveryScheduler | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stream = stream
        self._metrics = metrics
        self._log = log
        self._store = store
        self._recovery = recovery
        self._clock = clock
        self._readers: list[ReaderView] = []
        # The end of the last gap recorded as "no connection was reading": a gap two
        # connections shared is recorded once.
        self._recorded_until: float | None = None

    def attach(self, readers: Sequence[ReaderView]) -> None:
        self._readers = list(readers)

    def set_recovery(self, recovery: RecoveryScheduler | None) -> None:
        self._recovery = recovery

    # --- asked by a reader before it connects ------------------------------------------

    def backfill_minutes(self, reader: ReaderView) -> int:
        """The backfill `reader` asks for: none while another connection reads, else the
        unrecorded gap rounded up to minutes, at most stream.backfill_minutes."""
        if self._reading_besides(reader) is not None:
            return 0
        start = self._unrecorded_start(reader)
        if start is None:
            return 0
        return backfill_for_gap(self._clock() - start, self._stream.backfill_minutes)

    # --- told by a reader once X let it in -----------------------------------------------

    async def connected(self, reader: ReaderView, backfill_minutes: int) -> None:
        """`reader` connected now, having asked for `backfill_minutes`: record its gap."""
        now = self._clock()
        start = self._unrecorded_start(reader)
        if start is None or now <= start:
            return  # never read before (a first start): there is no gap
        other = self._reading_besides(reader)
        if other is not None:
            row = GapRow(start, now, "redundant",
                         f"{other.name or 'another connection'} was reading throughout",
                         reader.name)
            await self._record(row)
            return
        self._recorded_until = now
        gap = Gap(start, now, backfill_minutes, self._stream.backfill_minutes)
        if gap.covered_by == "backfill":
            await self._record(GapRow(start, now, "backfill", gap.detail, reader.name))
            return
        if self._stream.recovery == "auto" and self._recovery is not None:
            earliest = now - self._stream.max_recovery_hours * 3600.0
            if now - 60.0 > earliest:
                window_start = max(start, earliest)
                detail = "recovery job scheduled"
                if start < earliest:
                    detail += (f"; only the last {self._stream.max_recovery_hours:g} h "
                               "(stream.max_recovery_hours) can be recovered")
                row = GapRow(start, now, "recovery", detail, reader.name)
                gap_id = await self._add(row)
                self._recovery.schedule(window_start, now, row, gap_id)
                return
        reason = gap.detail
        if self._stream.recovery == "off":
            reason += "; stream.recovery = \"off\": no recovery job"
        await self._record(GapRow(start, now, "none", reason, reader.name))

    async def settle(self, row: GapRow, gap_id: int | None, covered_by: str, detail: str) -> None:
        """A recovery job for `row` ended: its gap is closed as `covered_by`."""
        if self._store is not None and gap_id is not None:
            await self._store.settle(gap_id, covered_by, detail)
        self._log_gap(GapRow(row.start, row.end, covered_by, detail, row.connection))

    # --- internals ---------------------------------------------------------------------

    def _unrecorded_start(self, reader: ReaderView) -> float | None:
        start = reader.last_read_at
        if start is None:
            return None
        if self._recorded_until is not None:
            start = max(start, self._recorded_until)
        return start

    def _reading_besides(self, reader: ReaderView) -> ReaderView | None:
        return next((r for r in self._readers if r is not reader and r.connected), None)

    async def _add(self, row: GapRow) -> int | None:
        if self._store is None:
            return None
        return await self._store.add(row)

    async def _record(self, row: GapRow) -> None:
        await self._add(row)
        self._log_gap(row)

    def _log_gap(self, row: GapRow) -> None:
        fields: dict[str, Any] = {
            "from": _when(row.start), "to": _when(row.end), "seconds": round(row.seconds, 3),
            "covered_by": row.covered_by, "detail": row.detail,
        }
        if row.connection is not None:
            fields["connection"] = row.connection
        self._log.info("stream.gap", **fields)
        self._metrics.gap_seconds.labels(covered_by=row.covered_by).inc(row.seconds)
