"""The publisher's bookkeeping (streamd.kafka.inflight), pure: where every record is, how it
moves, what a spool round writes, what a drain round deletes, what is left at shutdown.

The cancel-safety guarantee is checked as a property: whatever happens in between (acks,
failures, refusals, spool rounds, drains), at every point where the publisher could be
cancelled every record read is either acknowledged, in the spool, or in exactly one
registered place that the shutdown collects.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from aiokafka import errors
from aiokafka.producer.message_accumulator import BatchBuilder
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from streamd.kafka.failures import NoAck
from streamd.kafka.inflight import Answer, DrainRound, InFlight, Ledger
from streamd.kafka.oversize import Group, Resolution
from streamd.kafka.packing import Batch, Packer
from streamd.records import OutRecord

_ids = itertools.count()


def tweet(size: int = 20, tags: tuple[str, ...] = (), i: int | None = None) -> OutRecord:
    if i is None:
        i = next(_ids)
    return OutRecord(dlq=False, key=str(i).encode(), value=b"v" * size, timestamp_ms=i,
                     headers=[], read_at=0.0, tweet_id=str(i), tags=tags)


def tweets(n: int) -> list[OutRecord]:
    return [tweet() for _ in range(n)]


def packer() -> Packer:
    p = Packer("t", "t.dlq", 1 << 20)
    p.partitions = {"t": [0, 1, 2], "t.dlq": [0]}
    return p


def builder() -> Any:
    return BatchBuilder(4096, 0)


def ids(records: list[OutRecord]) -> set[int]:
    return {id(r) for r in records}


def one_batch(ledger: Ledger[str], records: list[OutRecord]) -> Batch:
    """`records` taken, packed into one batch (one partition) and left unsent."""
    batch = Batch(builder(), "t", 0)
    for r in records:
        batch.append(r, r)
    ledger.take(records)
    ledger.packed([batch])
    return batch


def submitted(ledger: Ledger[str], records: list[OutRecord], now: float = 0.0,
              ) -> InFlight[str]:
    batch = one_batch(ledger, records)
    inflight = ledger.submitted(batch, "future", now)
    ledger.round_done()
    return inflight


def held(ledger: Ledger[str]) -> dict[str, set[int]]:
    return {place: ids(records) for place, records in ledger.places().items() if records}


# -- the live path ---------------------------------------------------------------------------


def test_taken_records_are_registered_before_they_are_packed() -> None:
    ledger: Ledger[str] = Ledger()
    records = tweets(3)
    ledger.take(records)
    records.append(tweet())  # the live path coalesces into the same list, no await between
    assert held(ledger) == {"taken": ids(records)}
    ledger.spool_taken()
    assert held(ledger) == {"pending": ids(records)}


def test_a_round_moves_each_batch_once_submitted_or_pending() -> None:
    ledger: Ledger[str] = Ledger()
    records = tweets(300)
    ledger.take(records)
    packed = packer().pack(lambda: BatchBuilder(2048, 0), ledger.taken)
    assert len(packed.batches) > 3
    ledger.packed(packed.batches)
    assert held(ledger) == {"unsent": ids(records)}
    first, second, *rest = packed.batches
    inflight = ledger.submitted(first, "f1", 1.0)
    ledger.not_submitted(second)
    for batch in rest:
        ledger.not_submitted(batch)
    assert held(ledger) == {
        "in_flight": ids(first.records),
        "pending": ids(second.records) | {id(r) for b in rest for r in b.records},
    }
    assert (ledger.in_flight_records, ledger.in_flight_bytes) == (
        len(first.records), first.nbytes)
    assert inflight.handle == "f1"
    ledger.round_done()
    assert "unsent" not in held(ledger)


def test_in_flight_room_is_the_bytes_submitted_and_not_answered() -> None:
    ledger: Ledger[str] = Ledger()
    inflight = submitted(ledger, tweets(10))
    assert ledger.in_flight_full(inflight.nbytes)
    assert not ledger.in_flight_full(inflight.nbytes + 1)
    ledger.answered(inflight, None)
    assert (ledger.in_flight_records, ledger.in_flight_bytes) == (0, 0)
    assert not ledger.in_flight


# -- answers ---------------------------------------------------------------------------------


def test_an_ack_settles_the_records_exactly_once() -> None:
    ledger: Ledger[str] = Ledger()
    records = tweets(4)
    inflight = submitted(ledger, records)
    answer, settled = ledger.answered(inflight, None)
    assert answer is Answer.ACKED
    assert ids(settled) == ids(records)
    assert held(ledger) == {}
    # A late second answer (a cancelled future's callback) finds nothing to settle.
    assert ledger.answered(inflight, NoAck("cancelled")) == (Answer.SETTLED, [])


def test_a_failed_batch_waits_for_the_spool() -> None:
    ledger: Ledger[str] = Ledger()
    records = tweets(4)
    inflight = submitted(ledger, records)
    answer, _ = ledger.answered(inflight, errors.KafkaConnectionError())
    assert answer is Answer.FAILED
    assert held(ledger) == {"pending": ids(records)}


def test_a_batch_refused_as_too_large_waits_for_the_resolver_not_the_spool() -> None:
    ledger: Ledger[str] = Ledger()
    records = tweets(4)
    inflight = submitted(ledger, records)
    answer, _ = ledger.answered(inflight, errors.MessageSizeTooLargeError())
    assert answer is Answer.REFUSED
    assert held(ledger) == {"refused": ids(records)}
    refused = ledger.next_refused()
    assert refused is not None
    assert ids(refused[0]) == ids(records)
    # Resolved: two published, two left for a retry (Kafka went away meanwhile).
    ledger.refusal_resolved(refused[0], retry=records[2:])
    assert held(ledger) == {"pending": ids(records[2:])}
    assert ledger.next_refused() is None


def test_no_answer_in_time_keeps_the_records() -> None:
    ledger: Ledger[str] = Ledger()
    records = tweets(3)
    inflight = submitted(ledger, records)
    assert ledger.unanswered(inflight)  # back to pending: a failed publish
    assert held(ledger) == {"pending": ids(records)}
    assert not ledger.in_flight
    assert ledger.answered(inflight, NoAck("cancelled"))[0] is Answer.SETTLED


def test_settled_batches_leave_the_queue_in_order() -> None:
    ledger: Ledger[str] = Ledger()
    first, second = submitted(ledger, tweets(2)), submitted(ledger, tweets(2))
    ledger.answered(second, None)
    assert ledger.oldest() is first  # the second waits behind the first
    ledger.answered(first, None)
    assert ledger.oldest() is None


# -- the spool ---------------------------------------------------------------------------------


def test_a_spool_round_writes_batches_in_flight_for_an_interval_then_pending() -> None:
    ledger: Ledger[str] = Ledger()
    old = submitted(ledger, tweets(3), now=10.0)
    young = submitted(ledger, tweets(3), now=10.15)
    failed = tweets(2)
    ledger.keep(failed)
    write = ledger.spool_write(now=10.3, interval=0.2)
    assert [id(r) for r in write.records] == [id(r) for r in [*old.records, *failed]]
    late = tweet()
    ledger.keep([late])  # appended while the write runs
    ledger.spool_written(write, [101, 102, 103, 104, 105])
    assert old.seqs == [101, 102, 103]
    assert young.seqs is None
    assert ledger.shadow == {101, 102, 103}
    assert held(ledger) == {"shadowed": ids(old.records), "in_flight": ids(young.records),
                            "pending": {id(late)}}
    # The next round does not write the shadowed batch again.
    assert ids(ledger.spool_write(now=10.4, interval=0.2).records) == (
        ids(young.records) | {id(late)})


def test_a_shadowed_batch_acked_has_its_rows_deleted_and_one_failed_leaves_them() -> None:
    ledger: Ledger[str] = Ledger()
    acked = submitted(ledger, tweets(2))
    failed = submitted(ledger, tweets(2))
    write = ledger.spool_write(now=1.0, interval=0.2)
    ledger.spool_written(write, [1, 2, 3, 4])
    ledger.answered(acked, None)
    assert ledger.acked_rows == [1, 2]
    assert ledger.answered(failed, errors.KafkaConnectionError())[0] is Answer.FAILED
    # Rows 3, 4 stay in the spool, no longer shadowed: the drain publishes them.
    assert ledger.shadow == set()
    assert held(ledger) == {}
    rows = list(ledger.acked_rows)
    ledger.rows_deleted(len(rows))
    assert ledger.acked_rows == []


def test_a_shadowed_batch_refused_as_too_large_is_left_to_the_drain() -> None:
    ledger: Ledger[str] = Ledger()
    inflight = submitted(ledger, tweets(2))
    ledger.spool_written(ledger.spool_write(now=1.0, interval=0.2), [7, 8])
    assert ledger.answered(inflight, errors.MessageSizeTooLargeError())[0] is Answer.FAILED
    assert not ledger.refused
    assert held(ledger) == {}


def test_a_batch_settled_while_its_write_runs_has_exactly_its_rows_deleted() -> None:
    """The rows of a batch acknowledged during the spool write are deleted, and the
    batches after it are shadowed by their own rows, not their neighbour's."""
    ledger: Ledger[str] = Ledger()
    first = submitted(ledger, tweets(3))
    second = submitted(ledger, tweets(2))
    pending = tweets(1)
    ledger.keep(pending)
    write = ledger.spool_write(now=1.0, interval=0.2)
    ledger.answered(first, None)  # during the write
    ledger.spool_written(write, [11, 12, 13, 14, 15, 16])
    assert ledger.acked_rows == [11, 12, 13]
    assert second.seqs == [14, 15]
    assert ledger.shadow == {14, 15}


def test_unanswered_shadowed_batch_is_left_to_the_drain() -> None:
    ledger: Ledger[str] = Ledger()
    inflight = submitted(ledger, tweets(2))
    ledger.spool_written(ledger.spool_write(now=1.0, interval=0.2), [1, 2])
    assert not ledger.unanswered(inflight)
    assert ledger.shadow == set()
    assert held(ledger) == {}


def test_waiting_bytes_and_unshadowed_rows() -> None:
    ledger: Ledger[str] = Ledger()
    pending = tweets(3)
    ledger.keep(pending)
    assert ledger.waiting_bytes() == sum(r.size() for r in pending)
    submitted(ledger, tweets(2))
    ledger.spool_written(ledger.spool_write(now=1.0, interval=0.2), [1, 2, 3, 4, 5])
    assert not ledger.unshadowed_rows(2)  # two rows, both shadowing a batch in flight
    assert ledger.unshadowed_rows(3)


# -- shutdown ----------------------------------------------------------------------------------


def test_leftovers_are_every_place_but_the_shadowed_and_empty_the_ledger() -> None:
    ledger: Ledger[str] = Ledger()
    shadowed = submitted(ledger, tweets(2))
    ledger.spool_written(ledger.spool_write(now=1.0, interval=0.2), [1, 2])
    in_flight = submitted(ledger, tweets(2), now=1.0)
    refused = submitted(ledger, tweets(2), now=1.0)
    ledger.answered(refused, errors.RecordListTooLargeError())
    pending = tweets(2)
    ledger.keep(pending)
    placed, unsent = Batch(builder(), "t", 0), Batch(builder(), "t", 1)
    for r in tweets(2):
        placed.append(r, r)
    for r in tweets(2):
        unsent.append(r, r)
    ledger.take([*placed.records, *unsent.records])
    ledger.packed([placed, unsent])
    ledger.not_submitted(placed)  # now pending
    taken = tweets(2)
    ledger.take(taken)
    ledger.acked_rows.append(9)
    left = ledger.leftovers()
    assert ids(left) == (ids(in_flight.sources) | ids(refused.sources) | ids(pending)
                         | ids(placed.records) | ids(unsent.records) | ids(taken))
    assert len(left) == len(ids(left))  # each once
    assert not ids(shadowed.sources) & ids(left)
    assert held(ledger) == {}
    assert ledger.shadow == set()
    assert ledger.take_acked_rows() == [9]
    assert ledger.acked_rows == []


# -- drain rounds ----------------------------------------------------------------------------


def test_a_drain_round_deletes_only_rows_that_were_acknowledged_or_settled() -> None:
    records = tweets(6)
    drain = DrainRound([(100 + i, r) for i, r in enumerate(records)])
    assert drain.records == records
    drain.settled([records[0]])  # nothing fits a request: reported, not to be retried
    assert drain.answered(Group(records[1:3], records[1:3]), None) is None
    refused = errors.MessageSizeTooLargeError()
    assert drain.answered(Group(records[3:4], records[3:4]), refused) is None
    failure = errors.KafkaConnectionError()
    assert drain.answered(Group(records[4:5], records[4:5]), failure) is failure
    assert drain.answered(Group(records[5:], records[5:]), NoAck("no ack")) is None
    assert drain.refused == [(Group(records[3:4], records[3:4]), refused)]
    drain.resolved(Resolution(published=[records[3]]))
    assert drain.rows_done() == [100, 101, 102, 103]
    assert drain.unavailable
    assert not drain.kafka_down()  # something was acknowledged: Kafka is there, if slow


def test_a_drain_round_with_nothing_taken_says_kafka_is_down() -> None:
    records = tweets(2)
    drain = DrainRound([(1, records[0]), (2, records[1])])
    timeout = TimeoutError()
    assert drain.answered(Group(records, records), timeout, submitted=False) is None
    assert drain.kafka_down()
    assert drain.rows_done() == []


def test_a_drain_round_whose_refusal_cannot_finish_keeps_those_rows() -> None:
    records = tweets(2)
    drain = DrainRound([(1, records[0]), (2, records[1])])
    drain.answered(Group(records, records), errors.MessageSizeTooLargeError())
    drain.resolved(Resolution(published=[records[0]], retry=[records[1]],
                              error=errors.KafkaConnectionError()))
    assert drain.rows_done() == [1]
    assert drain.unavailable
    assert not drain.kafka_down()


# -- cancel safety, as a property --------------------------------------------------------------


class PublisherSteps(RuleBasedStateMachine):
    """Random interleavings of what the publisher's tasks do between their awaits. After
    every step (a possible cancellation point) nothing read is lost."""

    inflights = Bundle("inflights")

    def __init__(self) -> None:
        super().__init__()
        self.ledger: Ledger[int] = Ledger()
        self.packer = packer()
        self.read: dict[int, OutRecord] = {}
        self.published: set[int] = set()
        self.spool: dict[int, OutRecord] = {}
        self.seqs = itertools.count(1)
        self.keys = itertools.count()
        self.write: Any = None  # a spool write under way
        self.clock = 0.0
        self.round: list[Batch] = []  # this round's batches not yet placed

    def _new(self, n: int) -> list[OutRecord]:
        # Keys from the machine's own count: a rerun must pack the same batches.
        records = [tweet(size=50, i=next(self.keys)) for _ in range(n)]
        self.read.update((id(r), r) for r in records)
        return records

    # the live path: one round at a time, like the consume task

    @precondition(lambda self: not self.ledger.taken and not self.round)
    @rule(n=st.integers(1, 40))
    def take(self, n: int) -> None:
        self.ledger.take(self._new(n))

    @precondition(lambda self: bool(self.ledger.taken))
    @rule()
    def spool_taken(self) -> None:
        self.ledger.spool_taken()

    @precondition(lambda self: bool(self.ledger.taken))
    @rule()
    def pack(self) -> None:
        packed = self.packer.pack(lambda: BatchBuilder(600, 0), self.ledger.taken)
        self.ledger.packed(packed.batches)
        self.round = list(packed.batches)

    @precondition(lambda self: bool(self.round))
    @rule(target=inflights)
    def submit(self) -> InFlight[int]:
        self.clock += 0.1
        inflight = self.ledger.submitted(self.round.pop(0), 0, self.clock)
        if not self.round:
            self.ledger.round_done()
        return inflight

    @precondition(lambda self: bool(self.round))
    @rule()
    def not_submitted(self) -> None:
        self.ledger.not_submitted(self.round.pop(0))
        if not self.round:
            self.ledger.round_done()

    # answers, in any order, any number of times

    @rule(inflight=inflights, kind=st.sampled_from(["ack", "fail", "too_large", "cancel"]))
    def answer(self, inflight: InFlight[int], kind: str) -> None:
        error: BaseException | None = {
            "ack": None, "fail": errors.KafkaConnectionError(),
            "too_large": errors.MessageSizeTooLargeError(), "cancel": NoAck("cancelled"),
        }[kind]
        answer, records = self.ledger.answered(inflight, error)
        if answer is Answer.ACKED:
            self.published.update(ids(records))

    @rule(inflight=inflights)
    def no_answer_in_time(self, inflight: InFlight[int]) -> None:
        if inflight.records:  # the shell only gives up on a batch it waits for
            self.ledger.unanswered(inflight)

    @precondition(lambda self: bool(self.ledger.refused))
    @rule(data=st.data())
    def resolve_a_refusal(self, data: st.DataObject) -> None:
        refused = self.ledger.next_refused()
        assert refused is not None
        records = refused[0]
        k = data.draw(st.integers(0, len(records)))
        self.published.update(ids(records[:k]))
        self.ledger.refusal_resolved(records, retry=records[k:])

    # the spool writer: plan, then commit or fail (full), with anything in between

    @precondition(lambda self: self.write is None)
    @rule(later=st.sampled_from([0.05, 0.3]))
    def plan_spool_write(self, later: float) -> None:
        self.clock += later  # 0.3: every batch in flight is older than the interval
        self.write = self.ledger.spool_write(self.clock, 0.2)

    @precondition(lambda self: self.write is not None)
    @rule(full=st.booleans())
    def finish_spool_write(self, full: bool) -> None:
        write, self.write = self.write, None
        if full:
            return  # SpoolFull: nothing written, the records stay where they are
        seqs = [next(self.seqs) for _ in write.records]
        self.spool.update(zip(seqs, write.records, strict=True))
        self.ledger.spool_written(write, seqs)

    @rule()
    def delete_acked_rows(self) -> None:
        rows = list(self.ledger.acked_rows)
        for seq in rows:
            self.spool.pop(seq, None)
        self.ledger.rows_deleted(len(rows))

    @rule(data=st.data())
    def drain_publishes_a_row(self, data: st.DataObject) -> None:
        rows = sorted(set(self.spool) - self.ledger.shadow)
        if rows:
            seq = data.draw(st.sampled_from(rows))
            self.published.add(id(self.spool.pop(seq)))

    # at every step: nothing is lost, nothing is in two places

    @invariant()
    def each_record_is_in_one_place_at_most(self) -> None:
        everywhere = [id(r) for records in self.ledger.places().values() for r in records]
        assert len(everywhere) == len(set(everywhere))

    @invariant()
    def nothing_read_is_lost_if_cancelled_now(self) -> None:
        places = self.ledger.places()
        in_spool = {id(r) for r in self.spool.values()}
        # Shadowed records are in the spool: the shutdown does not write them again.
        assert ids(places.pop("shadowed")) <= in_spool
        collected = {id(r) for records in places.values() for r in records}
        lost = self.read.keys() - self.published - in_spool - collected
        assert not lost

    @invariant()
    def shadowing_rows_hold_their_batch(self) -> None:
        # Rows of a batch in flight are never deleted (the drain skips them): they must
        # be its own, or its ack would delete another batch's rows.
        for batch in self.ledger.in_flight:
            if batch.seqs is not None and batch.records:
                assert [id(self.spool[seq]) for seq in batch.seqs] == [
                    id(r) for r in batch.records]

    @invariant()
    def the_in_flight_counters_match(self) -> None:
        ledger = self.ledger
        assert ledger.in_flight_records == sum(len(b.records) for b in ledger.in_flight)
        assert ledger.in_flight_bytes == sum(b.nbytes for b in ledger.in_flight if b.records)

    def teardown(self) -> None:
        # The shutdown: collect everything (the spool write that was under way finished
        # first: shutdown takes the spool lock) and check that it is all there.
        if self.write is not None:
            self.finish_spool_write(full=False)
        left = self.ledger.leftovers()
        assert len(left) == len(ids(left))
        in_spool = {id(r) for r in self.spool.values()}
        assert not self.read.keys() - self.published - in_spool - ids(left)
        assert all(not records for records in self.ledger.places().values())


PublisherSteps.TestCase.settings = settings(max_examples=300, stateful_step_count=60,
                                            deadline=None)
test_no_interleaving_loses_a_record = PublisherSteps.TestCase


@pytest.mark.parametrize("n", [0, 1, 5])
def test_spool_write_of_nothing_is_empty(n: int) -> None:
    ledger: Ledger[str] = Ledger()
    for _ in range(n):
        submitted(ledger, tweets(1), now=5.0)
    assert ledger.spool_write(now=5.1, interval=0.2).records == []
