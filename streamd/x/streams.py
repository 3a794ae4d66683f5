"""The X side as the daemon sees it (README "Enterprise streams"): the live connections
(`stream.connections`: 1, or 2 redundant ones), the gap ledger they share, and the recovery
jobs, all feeding one queue through one deduplication.

One connection dropping never stops another: each has its own reader, reconnect policy and
events (`connection`: live-1, live-2 when there are two). A fatal answer (401, 403, a 400 on
connect) still ends them all: no retry can fix it on either.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from streamd.reasons import Reason
from streamd.records import OutRecord
from streamd.x.gaps import GapLedger
from streamd.x.recovery import RecoveryJobs
from streamd.x.stream import StreamReader

__all__ = ["Streams"]


class Streams:
    def __init__(
        self,
        live: Sequence[StreamReader],
        ledger: GapLedger,
        recovery: RecoveryJobs | None = None,
        *,
        until_done: bool = False,
    ) -> None:
        """`until_done` (`streamd recover`, no live connection): run the scheduled
        recovery jobs, then end."""
        assert live or (until_done and recovery is not None), "nothing to read"
        self.live = list(live)
        self._until_done = until_done
        self.ledger = ledger
        self.recovery = recovery
        ledger.attach(self.live)
        ledger.set_recovery(recovery)

    async def run(self, send: MemoryObjectSendStream[list[OutRecord]]) -> None:
        """Every live connection and the recovery jobs, until stop() or a fatal answer
        (raised). Closes `send`, so the publisher drains and ends."""
        async with send, anyio.create_task_group() as tg:
            for reader in self.live:
                tg.start_soon(reader.run, send.clone())
            if self.recovery is not None:
                run = self.recovery.run_until_done if self._until_done else self.recovery.run
                tg.start_soon(run, send.clone())

    def stop(self) -> None:
        for reader in self.live:
            reader.stop()
        if self.recovery is not None:
            self.recovery.stop()

    def resume(self) -> None:
        """Undo stop() once run() has returned (high availability: run() again when elected
        again; streamd/ha)."""
        for reader in self.live:
            reader.resume()
        if self.recovery is not None:
            self.recovery.resume()

    # --- what the daemon's state reads (ops/health.py StreamSide) -----------------------

    @property
    def connected(self) -> bool:
        if self._until_done:
            return True  # a recovery run has no live stream to wait for
        return any(r.connected for r in self.live)

    @property
    def usage_capped(self) -> bool:
        return any(r.usage_capped for r in self.live) and not self.connected

    @property
    def in_backoff(self) -> bool:
        return not self.connected and all(r.in_backoff for r in self.live)

    @property
    def last_reason(self) -> Reason | None:
        if self.connected:
            return None
        return next((r.last_reason for r in self.live if r.last_reason is not None), None)

    @property
    def received(self) -> int:
        return sum(r.received for r in self.live)

    @property
    def duplicates(self) -> int:
        return sum(r.duplicates for r in self.live)

    @property
    def last_progress(self) -> float:
        return max((r.last_progress for r in self.live), default=time.monotonic())

    @property
    def last_read_at(self) -> float | None:
        times = [r.last_read_at for r in self.live if r.last_read_at is not None]
        return max(times) if times else None
