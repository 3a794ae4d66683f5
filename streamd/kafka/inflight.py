"""Where every record the publisher holds is, and how it moves: pure bookkeeping, no I/O.

The publisher (`streamd.kafka.publisher`) does the awaiting; this module decides. A record
taken off the queue is in exactly one registered place until Kafka acknowledges it, it is
safe in the spool, or it is settled otherwise (dead-lettered, or dropped and logged):

- `taken`: taken off the queue by the live path, not packed yet;
- `unsent`: packed into this round's batches, not submitted yet (`Batch.placed` once a
  batch went on, to `in_flight` or `pending`);
- `in_flight`: submitted, waiting for the broker's answer; a batch submitted more than one
  spool interval ago is also *shadowed* in the spool (`InFlight.seqs`: its rows, written
  in case the process dies), and those rows are deleted again when the ack arrives;
- `refused`: live batches the broker refused as too large, each until it is resolved
  (split, dead-lettered);
- `pending`: Kafka did not take them (failed, unanswered, not submitted in time, or not
  available): waiting for the next spool round.

Every method here moves records between places without an await in between, and the
publisher awaits only between calls. So cancelling the publisher at any await loses
nothing: `leftovers()` returns everything still held (shadowed batches excepted: their rows
are in the spool already), for the final spool write at shutdown. A spool write is planned
(`spool_write`) while the records stay where they are, and registered (`spool_written`)
only once it committed: a cancelled write loses nothing, at worst a row is written twice.
(README, "Delivery guarantee".)
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from streamd.kafka.failures import NoAck, is_too_large
from streamd.kafka.oversize import Group, Resolution
from streamd.kafka.packing import Batch
from streamd.records import OutRecord

H = TypeVar("H")  # the I/O side's handle of a submitted batch (an asyncio future)


class InFlight(Generic[H]):
    """One submitted batch: its records until settled, and its spool rows if shadowed."""

    __slots__ = ("handle", "nbytes", "records", "seqs", "sources", "submitted")

    def __init__(self, batch: Batch, handle: H, submitted: float) -> None:
        self.records = batch.records
        self.sources = batch.sources
        self.nbytes = batch.nbytes
        self.handle = handle
        self.submitted = submitted
        self.seqs: list[int] | None = None  # spool rows shadowing this batch


class Answer(enum.Enum):
    """What became of a submitted batch's records when its answer came."""

    SETTLED = "settled"  # nothing left to settle: settled before (no answer in time, shutdown)
    ACKED = "acked"  # published: count them
    REFUSED = "refused"  # too large: queued for the resolver, Kafka is not the problem
    FAILED = "failed"  # Kafka did not take them: pending again, or (shadowed) left to the drain


@dataclass(slots=True)
class SpoolWrite(Generic[H]):
    """One spool round's write, planned while its records stay where they are."""

    records: list[OutRecord]  # to append, in this order:
    shadowed: list[tuple[InFlight[H], int]]  # in-flight batches, each with its record count,
    n_pending: int  # then the first n_pending pending records


class Ledger(Generic[H]):
    """The registered places of the records the publisher holds (see the module docstring)."""

    def __init__(self) -> None:
        self.taken: list[OutRecord] = []
        self.unsent: list[Batch] = []
        self.in_flight: collections.deque[InFlight[H]] = collections.deque()
        self.in_flight_records = 0
        self.in_flight_bytes = 0
        self.refused: collections.deque[tuple[list[OutRecord], BaseException]] = (
            collections.deque())
        # Only appended to, except by `spool_written` and `leftovers`, which take a prefix.
        self.pending: list[OutRecord] = []
        # Spool rows whose batch was acknowledged: deleted by the next spool round.
        self.acked_rows: list[int] = []
        # Spool rows shadowing batches still in flight: the drain skips them.
        self.shadow: set[int] = set()

    # -- the live path ----------------------------------------------------------------

    def take(self, records: list[OutRecord]) -> None:
        """Records just taken off the queue (the list may still grow, with no await)."""
        self.taken = records

    def spool_taken(self) -> None:
        """Kafka is down or behind: what was taken goes straight to the spool."""
        self.pending.extend(self.taken)
        self.taken = []

    def keep(self, records: list[OutRecord]) -> None:
        """Records to keep (left in the queue when run() ends): to the spool."""
        self.pending.extend(records)

    def packed(self, batches: list[Batch]) -> None:
        """`taken`, packed into `batches` (what packing dropped is settled: reported)."""
        self.unsent = batches
        self.taken = []

    def submitted(self, batch: Batch, handle: H, now: float) -> InFlight[H]:
        inflight = InFlight(batch, handle, now)
        batch.placed = True
        self.in_flight.append(inflight)
        self.in_flight_records += len(inflight.records)
        self.in_flight_bytes += inflight.nbytes
        return inflight

    def not_submitted(self, batch: Batch) -> None:
        """aiokafka did not take the batch in time: to the spool."""
        batch.placed = True
        self.pending.extend(batch.records)

    def round_done(self) -> None:
        self.unsent = []

    def in_flight_full(self, max_bytes: int) -> bool:
        return self.in_flight_bytes >= max_bytes

    # -- answers ----------------------------------------------------------------------

    def answered(self, inflight: InFlight[H], error: BaseException | None,
                 ) -> tuple[Answer, list[OutRecord]]:
        """The broker answered (`error` None: acknowledged). Returns what became of the
        records, and the records."""
        records = self._settle(inflight)
        self.prune()
        if not records:
            return Answer.SETTLED, records
        seqs = inflight.seqs
        if error is None:
            if seqs is not None:
                self.shadow.difference_update(seqs)
                self.acked_rows.extend(seqs)
            return Answer.ACKED, records
        if seqs is not None:
            # Safe in the spool already: the drain publishes (or splits) it later.
            self.shadow.difference_update(seqs)
            return Answer.FAILED, records
        if is_too_large(error):
            # Never back to the spool as it is: it would be refused again, forever.
            self.refused.append((records, error))
            return Answer.REFUSED, records
        self.pending.extend(records)
        return Answer.FAILED, records

    def unanswered(self, inflight: InFlight[H]) -> bool:
        """No answer within kafka.ack_timeout: the publisher keeps the records itself (a
        shadowed batch's rows are in the spool). True if they went back to `pending`, which
        counts as a failed publish."""
        records = self._settle(inflight)
        self.prune()
        if inflight.seqs is not None:
            self.shadow.difference_update(inflight.seqs)
            return False
        self.pending.extend(records)
        return True

    def oldest(self) -> InFlight[H] | None:
        return self.in_flight[0] if self.in_flight else None

    def prune(self) -> None:
        in_flight = self.in_flight
        while in_flight and not in_flight[0].records:
            in_flight.popleft()

    def _settle(self, inflight: InFlight[H]) -> list[OutRecord]:
        """Take the records out of an in-flight batch, exactly once."""
        records, inflight.records = inflight.records, []
        if records:
            self.in_flight_records -= len(records)
            self.in_flight_bytes -= inflight.nbytes
        return records

    # -- refusals ---------------------------------------------------------------------

    def next_refused(self) -> tuple[list[OutRecord], BaseException] | None:
        """The oldest refused batch; it stays registered until `refusal_resolved`."""
        return self.refused[0] if self.refused else None

    def refusal_resolved(self, records: list[OutRecord], retry: list[OutRecord]) -> None:
        """The refused batch `records` is resolved; `retry` (Kafka went away meanwhile)
        waits for the spool."""
        if self.refused and self.refused[0][0] is records:
            self.refused.popleft()
        self.pending.extend(retry)

    # -- the spool --------------------------------------------------------------------

    def spool_write(self, now: float, interval: float) -> SpoolWrite[H]:
        """What a spool round writes: every batch in flight for more than `interval` and
        not shadowed yet, then every pending record (a snapshot: more may be appended
        while the write runs)."""
        horizon = now - interval
        records: list[OutRecord] = []
        shadowed: list[tuple[InFlight[H], int]] = []
        for batch in self.in_flight:
            if batch.seqs is None and batch.records and batch.submitted < horizon:
                shadowed.append((batch, len(batch.records)))
                records.extend(batch.records)
        n_pending = len(self.pending)
        records.extend(self.pending)
        return SpoolWrite(records, shadowed, n_pending)

    def spool_written(self, write: SpoolWrite[H], seqs: Sequence[int]) -> None:
        """`write` committed as rows `seqs` (in its order)."""
        del self.pending[:write.n_pending]
        i = 0
        for batch, n in write.shadowed:
            rows = list(seqs[i:i + n])
            i += n
            if batch.records:
                batch.seqs = rows
                self.shadow.update(rows)
            else:
                # Settled while the write ran (acked, or failed and pending again): its
                # rows can go right away. (Counted when planned: its records are gone.)
                self.acked_rows.extend(rows)

    def rows_deleted(self, n: int) -> None:
        """The first `n` of `acked_rows` were deleted from the spool."""
        del self.acked_rows[:n]

    def waiting_bytes(self) -> int:
        """About how much the pending records take in the spool."""
        return sum(r.size() for r in self.pending)

    def unshadowed_rows(self, spool_count: int) -> bool:
        """Whether the spool holds rows the drain may publish."""
        return spool_count > len(self.shadow)

    # -- shutdown ---------------------------------------------------------------------

    def leftovers(self) -> list[OutRecord]:
        """Everything still held, out of every place, for the final spool write; shadowed
        batches are left out (their rows are in the spool)."""
        records: list[OutRecord] = []
        for batch in self.in_flight:
            settled = self._settle(batch)
            if batch.seqs is None:
                records.extend(settled)
            else:
                self.shadow.difference_update(batch.seqs)
        self.in_flight.clear()
        for refused, _ in self.refused:
            records.extend(refused)
        self.refused.clear()
        for unsent in self.unsent:
            if not unsent.placed:
                records.extend(unsent.records)
        self.unsent = []
        records.extend(self.taken)
        self.taken = []
        records.extend(self.pending)
        self.pending = []
        return records

    def take_acked_rows(self) -> list[int]:
        rows, self.acked_rows = self.acked_rows, []
        return rows

    # -- for tests and assertions -----------------------------------------------------

    def places(self) -> dict[str, list[OutRecord]]:
        """Every record held, by place (`shadowed`: in flight with its rows in the spool)."""
        in_flight = [r for b in self.in_flight if b.seqs is None for r in b.records]
        shadowed = [r for b in self.in_flight if b.seqs is not None for r in b.records]
        return {
            "taken": list(self.taken),
            "unsent": [r for b in self.unsent if not b.placed for r in b.records],
            "in_flight": in_flight,
            "shadowed": shadowed,
            "refused": [r for records, _ in self.refused for r in records],
            "pending": list(self.pending),
        }


@dataclass(slots=True)
class DrainRound:
    """One drain round: rows read from the spool and published oldest-first. Only rows
    whose own records Kafka acknowledged (or that can never be sent, and were reported)
    leave the spool; anything else stays for a later round: at least once, never
    "probably"."""

    rows: list[tuple[int, OutRecord]]
    done: list[OutRecord] = field(default_factory=list)  # sources settled: rows to delete
    refused: list[tuple[Group, BaseException]] = field(default_factory=list)
    acked: bool = False
    unavailable: bool = False

    @property
    def records(self) -> list[OutRecord]:
        return [record for _, record in self.rows]

    def settled(self, sources: Sequence[OutRecord]) -> None:
        """Nothing can be sent for these (reported): their rows go, never to be retried."""
        self.done.extend(sources)

    def answered(self, group: Group, error: BaseException | None, *, submitted: bool = True,
                 ) -> BaseException | None:
        """One batch's outcome. Returns the failure to count, if any (not having been
        taken or answered in time is Kafka's unavailability, not a failed publish)."""
        if error is None:
            self.done.extend(group.sources)
            self.acked = True
            return None
        if submitted and is_too_large(error):
            self.refused.append((group, error))
            return None
        self.unavailable = True
        if not submitted or isinstance(error, NoAck):
            return None
        return error

    def resolved(self, resolution: Resolution) -> None:
        """A refused batch, resolved (split, dead-lettered, or left for a retry)."""
        self.done.extend(resolution.published)
        self.done.extend(resolution.dropped)  # reported and counted: not to be retried
        self.acked = self.acked or bool(resolution.published)
        if resolution.retry:
            self.unavailable = True

    def kafka_down(self) -> bool:
        """Nothing acknowledged and something not taken: Kafka is not available. (Any ack
        this round: Kafka is there, if slow.)"""
        return self.unavailable and not self.acked

    def rows_done(self) -> list[int]:
        seq_of = {id(record): seq for seq, record in self.rows}
        return [seq_of[id(record)] for record in self.done]
