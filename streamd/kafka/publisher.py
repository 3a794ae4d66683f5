"""The publisher: bounded queue -> batched produce -> Kafka acks, with the Spool beside it.

This module is the I/O shell: the aiokafka producer (start, `send_batch`, the batch futures,
stop), the spool's calls (in a worker thread) and the loops. What it decides is pure code
beside it: where every record is and how it moves (`inflight`), packing records into
per-partition batches (`packing`), what to do with a record too large for Kafka
(`oversize`), which exception means what (`failures`), what an ack counts for (`acks`).
The delivery guarantee is described in the README, "Delivery guarantee".

Records arrive from the reader in small lists. They are packed into per-partition batches
with the key partitioner and submitted with `send_batch`: one future per batch, not one per
tweet. Every future is checked.

Durability ("spool-ahead"): every `spool.batch_interval` the spool writer stores, in one
transaction, every record that is not acknowledged yet but was submitted more than one
interval ago, plus every record Kafka could not take (a failed batch, a broker that does not
answer, or a producer that cannot start). Records spooled while still in flight are deleted
again when their ack arrives. In normal operation acks take milliseconds, so nothing is
written; yet a SIGKILL at any instant loses at most what was read in the last batch interval.
While Kafka is unavailable, live records go straight to the spool; a drain task publishes
the spool oldest-first as soon as Kafka acknowledges again, while live records flow.

Every record the publisher holds is in exactly one registered place of its `Ledger` at any
await, and moves between places happen without an await in between, so cancelling `run()`
at any point loses nothing. `shutdown(deadline)` is the one way to stop, with one budget: it
waits for acks until just before the deadline, cancels `run()`, collects every place (and
what is still queued) and writes it to the spool, past `spool.max_bytes` if need be, then
closes the producer by the deadline. Only a disk that refuses that write loses records, and
they are counted.

Too large: a record bigger than `kafka.max_request_size` becomes its DLQ record (cut to fit);
a batch the broker refuses as too large is split down to single records, and a single
refused tweet goes to the DLQ the same way. None of this marks Kafka unavailable, and
nothing goes back to the spool to be refused again.

aiokafka has no aggregate buffer limit and can hang in start/send/flush/stop while the
cluster is down, so every await on it carries a deadline (`kafka.startup_timeout`,
`kafka.ack_timeout`), in-flight records are capped, and a producer whose start failed is
thrown away and recreated.

State others watch: `available` (Kafka acknowledges) and `spool_room` (a `Gate`, closed
while the spool is full); a change of either is announced on the optional `Changes`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.lowlevel
from aiokafka import AIOKafkaProducer, errors
from anyio.streams.memory import MemoryObjectReceiveStream

from streamd.config import KafkaSettings
from streamd.errors import SpoolFull, StreamdError
from streamd.flow import Changes, Gate
from streamd.kafka.acks import tally
from streamd.kafka.failures import NoAck, failure_reason, is_too_large
from streamd.kafka.inflight import Answer, DrainRound, InFlight, Ledger
from streamd.kafka.oversize import DLQ_TRUNCATED_HEADER, Group, Resolution, resolve_refused
from streamd.kafka.packing import Batch, Packed, Packer
from streamd.kafka.producer import producer_kwargs, stop_producer
from streamd.kafka.spool import Spool
from streamd.ops.logs import Logger
from streamd.ops.metrics import Metrics
from streamd.records import DLQ_OVERSIZE, FAILED_TOO_LARGE, FAILED_UNAVAILABLE, OutRecord

# producer_kwargs: `streamd check` builds its probe producer with the daemon's settings.
__all__ = ["KafkaPublisher", "PublishStats", "ShutdownOutcome", "producer_kwargs"]

# How many records one publish cycle takes from the queue before submitting: big enough to
# fill batches at full speed, small enough to keep latency low at 2k tweets/s.
_COALESCE: Final = 5_000
# How many spooled records one drain round publishes, and at most how many bytes of them:
# a round's records stay in memory until acked, so this bounds the drain's footprint.
_DRAIN_BATCH: Final = 2_000
_DRAIN_BYTES: Final = 1 << 20
# While Kafka is unavailable a drain round is a probe: a few records, not a full round held
# in memory for ack_timeout.
_DRAIN_PROBE: Final = 50
# The live path never waits longer than this for aiokafka to take a batch: when the
# accumulator is full (a stalled broker), waiting would stop the reader, and X drops a reader
# that stops reading. Past this the records go to the spool instead.
_LIVE_SUBMIT_DEADLINE: Final = 0.25
# The shutdown stops waiting for acks this long before its deadline: stopping run(), the
# final spool write and closing the producer come after.
_CLOSE_RESERVE: Final = 0.5
# A producer with nothing left to flush stops in milliseconds; one that takes longer is
# waiting on a broker that does not answer, and what it holds is already in the spool.
_STOP_GRACE: Final = 1.0
# At most this long to stop a producer whose start failed (outside a shutdown).
_DISCARD_S: Final = 2.0
# When one transaction for everything left at shutdown is refused, what the disk still
# takes is written in transactions of this many records.
_LAST_WRITE_CHUNK: Final = 256

Future = asyncio.Future[Any]


@dataclass(frozen=True, slots=True)
class ShutdownOutcome:
    held: int  # records in the spool afterwards (all of it, not only this shutdown's)
    lost: int  # records that could not be kept: the disk refused them
    error: str | None  # why they were lost


@dataclass
class PublishStats:
    published: int = 0
    dlq_published: int = 0


@dataclass(frozen=True, slots=True)
class _Sent:
    """A batch of a drain round or a resolution, and how it ended."""

    group: Group
    error: BaseException | None  # None: acknowledged
    submitted: bool = True  # False: aiokafka did not take it (`error` says why)


class KafkaPublisher:
    """Owns the producer and the spool's traffic. `run()` publishes until the queue is
    closed; `shutdown(deadline)` then flushes by an absolute deadline and keeps the rest."""

    def __init__(
        self,
        kafka: KafkaSettings,
        metrics: Metrics,
        log: Logger,
        *,
        spool: Spool,
        spool_interval: float = 0.2,
        sasl_password: str | None = None,
        changes: Changes | None = None,
    ) -> None:
        self._kafka = kafka
        self._metrics = metrics
        self._log = log
        self._spool = spool
        self._spool_interval = spool_interval
        self._changes = changes
        self._spool_lock = anyio.Lock()
        self._producer_lock = anyio.Lock()
        self._sasl_password = sasl_password
        self._max_in_flight_bytes = kafka.max_in_flight_bytes
        self._producer: AIOKafkaProducer | None = None
        self._packer = Packer(kafka.topic, kafka.dlq_topic, kafka.max_request_size)
        self._ledger: Ledger[Future] = Ledger()
        # The resolver of too-large refusals: woken by one, done when none is left.
        self._refused_wake = anyio.Event()
        self._refused_empty = anyio.Event()
        self._refused_empty.set()
        self._available = False
        self._announced: bool | None = None
        # Set when live records could not be handed to Kafka in time; cleared by an ack.
        self._backpressured = False
        # run() and shutdown(): who is running, what can be cancelled, by when.
        self._receive: MemoryObjectReceiveStream[list[OutRecord]] | None = None
        self._running = False
        self._run_scope: anyio.CancelScope | None = None
        self._run_exited = anyio.Event()
        self._consumed = anyio.Event()
        self._drain_scope: anyio.CancelScope | None = None
        # Set when Kafka becomes available: ends the drain loop's wait early.
        self._drain_wake = anyio.Event()
        self._stopping = False
        self._teardown_by: float | None = None  # anyio clock
        # Open while the spool has room; closed when it fills up, which tells the reader to
        # stop reading X until the drain makes room. One Gate for the publisher's life.
        self.spool_room = Gate()
        self.stats = PublishStats()

    # -- state for readiness and the reader ----------------------------------------------

    @property
    def available(self) -> bool:
        """True while Kafka acknowledges (for /readyz)."""
        return self._available

    def _set_available(self, available: bool) -> None:
        if available != self._available:  # called on every ack: only a change costs more
            if available:
                self._drain_wake.set()  # what was spooled meanwhile can go now, not in 1 s
            self._available = available
            self._metrics.kafka_available.set(1 if available else 0)
            self._notify()
        if available == self._announced:
            return
        previous, self._announced = self._announced, available
        spooled = self._spool.count
        if available:
            # Only after a kafka.unavailable: Kafka answering for the first time at start-up
            # is no recovery, and a "recovered" line at every start hides the real ones.
            if previous is False:
                self._log.info("kafka.recovered", spooled=spooled)
        else:
            self._log.warning("kafka.unavailable",
                              spooled=spooled + self._ledger.in_flight_records)

    def _notify(self) -> None:
        if self._changes is not None:
            self._changes.notify()

    # -- producer lifecycle ------------------------------------------------------------

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._producer_lock:  # the warm-up, the consumer and the drain share it
            if self._producer is None:
                self._producer = await self._start_producer()
                # Metadata for both topics came back: Kafka is reachable (for /readyz),
                # even before the first tweet is acknowledged.
                self._set_available(True)
            return self._producer

    async def _warm_up(self) -> None:
        """Start the producer at once, so readiness reflects Kafka before the first tweet."""
        await self._producer_or_none(count_failure=False)  # not reachable yet: retried later

    async def _producer_or_none(self, *, count_failure: bool = True) -> AIOKafkaProducer | None:
        """The producer, started if need be; None (Kafka is not available) if it cannot
        start."""
        try:
            return await self._ensure_producer()
        except Exception as exc:  # any start failure: Kafka is not available
            self._log.warning("kafka.start_failed", error=str(exc) or type(exc).__name__)
            if count_failure:
                self._metrics.publish_failures.labels(reason=FAILED_UNAVAILABLE).inc()
            self._set_available(False)
            return None

    async def _start_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(**producer_kwargs(self._kafka, self._sasl_password))
        try:
            with anyio.fail_after(self._kafka.startup_timeout):
                await producer.start()
                for topic in (self._kafka.topic, self._kafka.dlq_topic):
                    parts = await producer.partitions_for(topic)
                    self._packer.partitions[topic] = sorted(parts)
        except BaseException:
            # A producer whose start failed is unusable: stop it, make a new one next time.
            # During a shutdown this must not outlast its deadline.
            await stop_producer(producer, self._discard_budget())
            raise
        return producer

    def _discard_budget(self) -> float:
        if self._teardown_by is None:
            return _DISCARD_S
        return max(0.0, min(_DISCARD_S, self._teardown_by - anyio.current_time()))

    # -- the loops ---------------------------------------------------------------------

    async def run(self, receive: MemoryObjectReceiveStream[list[OutRecord]]) -> None:
        """Publish until the queue is closed and drained. The spool writer, the drain and
        the resolver of too-large batches run beside it; they end with the queue, or, once
        shutdown() has begun, when shutdown() ends them."""
        self._receive = receive
        self._running = True
        try:
            with anyio.CancelScope() as scope:
                self._run_scope = scope
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._warm_up)
                    tg.start_soon(self._refusal_loop)
                    tg.start_soon(self._spool_loop)
                    tg.start_soon(self._drain_loop)
                    await self._consume(receive)
                    self._consumed.set()
                    if self._stopping:
                        # In-flight batches still need the spool writer and the resolver.
                        await anyio.sleep_forever()
                    tg.cancel_scope.cancel()
        finally:
            # Cancelled or not, what is still queued is ours to keep (shutdown spools it).
            self._ledger.keep(_take_queued(receive))
            receive.close()
            self._running = False
            self._run_exited.set()

    async def _consume(self, receive: MemoryObjectReceiveStream[list[OutRecord]]) -> None:
        ledger = self._ledger
        while await self._take(receive):
            if not ledger.taken:
                continue
            if await self._spool_live():
                # Kafka is down or not keeping up: straight to the spool; the drain
                # publishes it when Kafka acknowledges again.
                ledger.spool_taken()
                continue
            await self._publish_taken()

    async def _take(self, receive: MemoryObjectReceiveStream[list[OutRecord]]) -> bool:
        """Take the next records off the queue into the ledger. False once it is closed
        and empty.

        Never a timeout around receive(): anyio can hand an item to a receive() whose
        cancellation is already on its way, and that item would be lost.
        """
        try:
            records = await receive.receive()
        except anyio.EndOfStream:
            return False
        self._ledger.take(records)  # registered before anything else can happen
        while len(records) < _COALESCE:
            try:
                records.extend(receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
        return True

    async def _spool_live(self) -> bool:
        """Whether live records should go to the spool instead of to Kafka now.

        Once Kafka has not taken live records in time, they go straight to the spool until
        the next ack: waiting again for every read would throttle the reader (the queue
        holds few records when reads are small), and X drops a reader that falls behind.
        """
        if (not self._available and self._announced is False) or self._backpressured:
            return True
        if self._producer is None:
            # Starting (warm-up, drain): do not hold up the reader for it.
            return True
        ledger, limit = self._ledger, self._max_in_flight_bytes
        if ledger.in_flight_full(limit):
            # Kafka acknowledges but is behind: give it a moment, once, before spooling.
            with anyio.move_on_after(_LIVE_SUBMIT_DEADLINE):
                while ledger.in_flight_full(limit):
                    await self._wait_oldest()
            if ledger.in_flight_full(limit):
                self._backpressured = True
                return True
        return False

    async def _publish_taken(self) -> None:
        """Publish the records taken off the queue (the live path)."""
        ledger = self._ledger
        producer = self._producer
        if producer is None:
            ledger.spool_taken()
            return
        # Hand-over without an await: from here on the records are in `unsent`.
        packed = self._packer.pack(producer.create_batch, ledger.taken)
        ledger.packed(packed.batches)
        self._report_oversize(packed)
        failed = False
        for batch in packed.batches:
            if failed:
                # An earlier batch of this round could not be submitted: do not wait again.
                ledger.not_submitted(batch)
                continue
            outcome = await self._submit(producer, batch, deadline=_LIVE_SUBMIT_DEADLINE)
            if not isinstance(outcome, BaseException):
                self._track(ledger.submitted(batch, outcome, time.monotonic()))
                continue
            failed = True
            ledger.not_submitted(batch)
            if isinstance(outcome, TimeoutError):
                # Backpressure (the partition's previous batch is not sent yet) or a stalled
                # broker: either way, spool these rather than wait; only failed or
                # unanswered batches mark Kafka unavailable.
                self._backpressured = True
            else:
                self._failed(outcome)
        ledger.round_done()

    async def _spool_loop(self) -> None:
        while True:
            await anyio.sleep(self._spool_interval)
            await self.spool_round()

    async def spool_round(self) -> None:
        """Write what needs durability, delete what was acked: one transaction each.

        Records stay registered where they are until their write has committed, so a
        cancelled round loses nothing (at worst a record is written twice).
        """
        spool, ledger = self._spool, self._ledger
        async with self._spool_lock:
            rows = list(ledger.acked_rows)
            if rows:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(spool.delete, rows)
                ledger.rows_deleted(len(rows))
            write = ledger.spool_write(time.monotonic(), self._spool_interval)
            if not write.records:
                self._update_spool_metrics()
                return
            try:
                with anyio.CancelScope(shield=True):
                    seqs = await anyio.to_thread.run_sync(spool.append, write.records)
            except SpoolFull:
                if self.spool_room.is_open():
                    self._log.error("spool.full", spooled=spool.count, bytes=spool.bytes,
                                    waiting=len(write.records))
                    self.spool_room.close()
                    self._notify()
                return
            ledger.spool_written(write, seqs)
            self._update_spool_metrics()

    def _update_spool_metrics(self) -> None:
        self._metrics.spool_messages.set(self._spool.count)
        self._metrics.spool_bytes.set(self._spool.bytes)

    async def _drain_loop(self) -> None:
        """Publish spooled records oldest-first whenever Kafka takes them."""
        spool = self._spool
        with anyio.CancelScope() as scope:
            # At shutdown the spool is safe where it is; Kafka's time goes to memory.
            self._drain_scope = scope
            if self._stopping:
                scope.cancel()
            while True:
                drained = 0
                if self._ledger.unshadowed_rows(spool.count):
                    drained = await self._drain_once(spool)
                if not self.spool_room.is_open() and self._spool_has_room_again(spool):
                    self._log.info("spool.room", spooled=spool.count, bytes=spool.bytes)
                    self.spool_room.open()
                    self._notify()
                if drained:
                    await anyio.lowlevel.checkpoint()
                    continue
                with anyio.move_on_after(0.2 if self._available else 1.0):
                    await self._drain_wake.wait()
                self._drain_wake = anyio.Event()

    def _spool_has_room_again(self, spool: Spool) -> bool:
        """Hysteresis: resume reading X only when half the spool is free and what is still
        waiting in memory fits, so a full spool does not turn into a reconnect storm."""
        return spool.free_fraction() >= 0.5 and spool.has_room(self._ledger.waiting_bytes())

    async def _drain_once(self, spool: Spool) -> int:
        limit = _DRAIN_BATCH if self._available else _DRAIN_PROBE
        async with self._spool_lock:
            rows = await anyio.to_thread.run_sync(
                spool.peek, limit, _DRAIN_BYTES, frozenset(self._ledger.shadow)
            )
        if not rows:
            return 0
        producer = await self._producer_or_none()
        if producer is None:
            return 0
        drain = DrainRound(rows)
        packed = self._packer.pack(producer.create_batch, drain.records)
        self._report_oversize(packed)
        drain.settled(packed.dropped)
        # The first batch aiokafka does not take ends the round: the rest stays spooled.
        for sent in await self._send(producer, packed.batches, stop_at_failure=True):
            if sent.error is None:
                self._acked(sent.group.records)
            failure = drain.answered(sent.group, sent.error, submitted=sent.submitted)
            if failure is not None:
                self._failed(failure)
        for group, error in drain.refused:
            drain.resolved(await self._resolve(group, error))
        if drain.kafka_down():
            self._set_available(False)
        done = drain.rows_done()
        if not done:
            return 0
        async with self._spool_lock:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(spool.delete, done)
        self._update_spool_metrics()
        return len(done)

    # -- submitting and answers -------------------------------------------------------

    async def _submit(
        self, producer: AIOKafkaProducer, batch: Batch, *, deadline: float
    ) -> Future | BaseException:
        """Hand one batch to aiokafka within `deadline` s: its future, or why not (a
        TimeoutError when the deadline passed)."""
        batch.builder.close()
        try:
            with anyio.fail_after(min(deadline, self._kafka.ack_timeout)):
                future: Future = await producer.send_batch(
                    batch.builder, batch.topic, partition=batch.partition)
        except Exception as exc:  # TimeoutError, KafkaError: not now
            return exc
        future.add_done_callback(_read_outcome)
        return future

    async def _send(
        self, producer: AIOKafkaProducer, batches: list[Batch], *, stop_at_failure: bool,
    ) -> list[_Sent]:
        """Submit `batches` and wait for their answers (at most ack_timeout); not tracked
        in the ledger (a drain's records are in the spool, a resolution's are registered
        as refused). Batches aiokafka did not take come first, then the others in order."""
        out: list[_Sent] = []
        submitted: list[tuple[Batch, Future]] = []
        for batch in batches:
            outcome = await self._submit(producer, batch, deadline=self._kafka.ack_timeout)
            if isinstance(outcome, BaseException):
                out.append(_Sent(Group(batch.records, batch.sources), outcome, submitted=False))
                if stop_at_failure:
                    break
                continue
            submitted.append((batch, outcome))
        if submitted:
            with anyio.move_on_after(self._kafka.ack_timeout):
                await asyncio.wait([future for _, future in submitted])
        out.extend(_Sent(Group(batch.records, batch.sources), _answer(future))
                   for batch, future in submitted)
        return out

    def _track(self, inflight: InFlight[Future]) -> None:
        inflight.handle.add_done_callback(functools.partial(self._on_done, inflight))

    def _on_done(self, inflight: InFlight[Future], future: Future) -> None:
        # Runs in the event loop when the broker answers (or the send fails or is
        # cancelled). A cancelled batch (no answer in time, shut down) is settled already.
        error = NoAck("cancelled") if future.cancelled() else future.exception()
        answer, records = self._ledger.answered(inflight, error)
        if answer is Answer.ACKED:
            self._acked(records)
        elif answer is Answer.REFUSED:
            self._refused_wake.set()
            if self._refused_empty.is_set():
                self._refused_empty = anyio.Event()
        elif answer is Answer.FAILED:
            assert error is not None
            self._failed(error)

    async def _wait_oldest(self) -> None:
        inflight = self._ledger.oldest()
        if inflight is None:
            return
        with anyio.move_on_after(self._kafka.ack_timeout):
            await asyncio.wait([inflight.handle])
        if not inflight.handle.done():
            # No answer within the deadline: resend (or spool) the records ourselves.
            if self._ledger.unanswered(inflight):
                self._failed(NoAck("no ack within kafka.ack_timeout"))
            inflight.handle.cancel()
        self._ledger.prune()

    def _acked(self, records: list[OutRecord]) -> None:
        now = time.monotonic()
        counted = tally(records)
        observe = self._metrics.publish_latency.observe
        for read_at, n in counted.runs:
            observe(now - read_at, n)
        self.stats.dlq_published += counted.dlq
        if counted.tweets:
            self.stats.published += counted.tweets
            self._metrics.tweets_published.inc(counted.tweets)
            # Tags come from the stream: the label set is bounded (configured + other).
            for tag, count in counted.by_tag.items():
                self._metrics.rule_tags.inc(tag, count)
        self._backpressured = False
        self._set_available(True)

    def _failed(self, exc: BaseException) -> None:
        self._metrics.publish_failures.labels(reason=failure_reason(exc)).inc()
        if not is_too_large(exc):  # a record too large says nothing about Kafka
            self._set_available(False)

    # -- too-large records -------------------------------------------------------------

    async def _refusal_loop(self) -> None:
        """Resolve live batches the broker refused as too large (their callback cannot)."""
        ledger = self._ledger
        while True:
            await self._refused_wake.wait()
            self._refused_wake = anyio.Event()
            while (refused := ledger.next_refused()) is not None:
                records, exc = refused  # stays registered until resolved
                resolution = await self._resolve(Group(records, records), exc)
                ledger.refusal_resolved(records, resolution.retry)
                if resolution.retry:
                    assert resolution.error is not None
                    self._failed(resolution.error)
            self._refused_empty.set()

    async def _resolve(self, group: Group, exc: BaseException) -> Resolution:
        resolution = await resolve_refused(group, exc, self._send_group)
        self._metrics.publish_failures.labels(reason=FAILED_TOO_LARGE).inc(resolution.refusals)
        for source, record in resolution.replaced:
            # A tweet counts once as dead-lettered: when it becomes a DLQ record, not at
            # each later cut of that record.
            self._note_oversize(source, record, "broker",
                                count=not source.dlq and record.value is source.value)
        for source in resolution.dropped:
            self._log.error("kafka.record_too_large", size=len(source.value),
                            tweet_id=source.tweet_id, action="dropped",
                            detail="refused by Kafka even with an empty value")
        return resolution

    async def _send_group(self, group: Group) -> list[tuple[Group, BaseException | None]]:
        """Publish one group (usually one batch) and wait for its outcome."""
        producer = self._producer
        if producer is None:
            return [(group, errors.KafkaConnectionError("the producer is not started"))]
        packed = self._packer.pack(producer.create_batch, group.records, group.sources)
        self._report_oversize(packed)
        # Nothing can be sent for these (reported): settled, not to be tried again.
        dropped = packed.dropped
        out: list[tuple[Group, BaseException | None]] = [(Group(dropped, dropped), None)]
        for sent in await self._send(producer, packed.batches, stop_at_failure=False):
            if sent.error is None:
                self._acked(sent.group.records)
            out.append((sent.group, sent.error))
        return out

    def _report_oversize(self, packed: Packed) -> None:
        """Log and count what packing replaced or dropped for kafka.max_request_size."""
        for note in packed.notes:
            self._metrics.publish_failures.labels(reason=FAILED_TOO_LARGE).inc()
            source = note.source
            if note.replacement is not None:
                self._note_oversize(source, note.replacement, "max_request_size",
                                    count=not source.dlq)
            else:
                self._log.error(
                    "kafka.record_too_large", size=len(source.value),
                    tweet_id=source.tweet_id, action="dropped",
                    detail=f"no record for it fits kafka.max_request_size ({self._packer.limit})")

    def _note_oversize(
        self, source: OutRecord, record: OutRecord, by: str, *, count: bool
    ) -> None:
        cut = any(name == DLQ_TRUNCATED_HEADER for name, _ in record.headers)
        self._log.error(
            "kafka.record_too_large", size=len(source.value), tweet_id=source.tweet_id,
            refused_by=by, action="truncated" if cut else "dlq", kept=len(record.value),
        )
        if count:
            self._metrics.tweets_dlq.labels(reason=DLQ_OVERSIZE).inc()

    # -- shutdown --------------------------------------------------------------------

    async def shutdown(self, deadline: float) -> ShutdownOutcome:
        """Flush, then keep everything not acknowledged; return by `deadline` (anyio clock,
        absolute) plus the time of the final spool write.

        Call it once the queue's send side is closed (tweets the reader still hands over
        before that are taken too). Safe whatever run() is doing: in-flight batches are
        waited for until shortly before the deadline, then run() is cancelled, and every
        record it held (taken off the queue, packed, in flight, refused, pending, still
        queued) goes to the spool in one forced transaction, past spool.max_bytes. Only
        records the disk refuses are lost, and counted.
        """
        outcome = ShutdownOutcome(0, 0, None)
        with anyio.CancelScope(shield=True):
            self._stopping = True
            self._teardown_by = deadline
            if self._drain_scope is not None:
                self._drain_scope.cancel()
            flushed = await self._flush(deadline - _CLOSE_RESERVE)
            await self._stop_run(deadline)
            outcome = await self._keep_the_rest()
            producer, self._producer = self._producer, None
            if producer is not None:
                now = anyio.current_time()
                # Cut short or unavailable: Kafka is not answering, and all it holds is in
                # the spool already.
                grace = min(_STOP_GRACE, deadline - now) if flushed and self._available else 0.0
                await stop_producer(producer, max(0.0, grace))
        return outcome

    async def _flush(self, by: float) -> bool:
        """Until `by`: let run() take the rest of the queue, wait for in-flight batches and
        refusals. True if all that finished."""
        with anyio.CancelScope(deadline=by):
            if self._running:
                await self._consumed.wait()
            while self._ledger.in_flight:
                await self._wait_oldest()
            if self._running:
                await self._refused_empty.wait()
            return True
        return False

    async def _stop_run(self, deadline: float) -> None:
        if not self._running or self._run_scope is None:
            return
        self._run_scope.cancel()
        # Cancel-safe: run() only finishes a spool transaction or a failed start's cleanup.
        with anyio.move_on_after(max(0.5, deadline - anyio.current_time())):
            await self._run_exited.wait()

    async def _keep_the_rest(self) -> ShutdownOutcome:
        """Every record still in memory to the spool, in one forced transaction."""
        spool = self._spool
        async with self._spool_lock:  # no spool round may be half-way through
            records = self._ledger.leftovers()
            if self._receive is not None:
                records.extend(_take_queued(self._receive))
            rows = self._ledger.take_acked_rows()
            if rows:
                try:
                    await anyio.to_thread.run_sync(spool.delete, rows)
                except StreamdError as exc:  # only a duplicate later, not a loss
                    self._log.warning("spool.delete_failed", error=str(exc))
            lost, error = await _write_all(spool, records)
            self._update_spool_metrics()
            return ShutdownOutcome(spool.count, lost, error)


def _read_outcome(future: Future) -> None:
    # A batch future nobody waits for any more (timed out, shut down) is still read, so
    # asyncio does not log "Future exception was never retrieved".
    if not future.cancelled():
        future.exception()


def _answer(future: Future) -> BaseException | None:
    """A batch's outcome once its wait is over: None if acknowledged. No answer yet: the
    batch is given up (cancelled) and counts as unanswered."""
    if not future.done():
        future.cancel()
        return NoAck("no ack within kafka.ack_timeout")
    if future.cancelled():
        return NoAck("cancelled")
    return future.exception()


def _take_queued(receive: MemoryObjectReceiveStream[list[OutRecord]]) -> list[OutRecord]:
    """Everything still in the queue, without waiting (including what a blocked sender is
    handing over)."""
    out: list[OutRecord] = []
    while True:
        try:
            out.extend(receive.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return out


async def _write_all(spool: Spool, records: list[OutRecord]) -> tuple[int, str | None]:
    """Write everything past max_bytes; if the disk refuses the one transaction, save what
    it still takes in smaller ones. Returns (records lost, why)."""
    if not records:
        return 0, None
    try:
        await anyio.to_thread.run_sync(functools.partial(spool.append, records, force=True))
        return 0, None
    except StreamdError as exc:
        error = str(exc)
    lost = 0
    for start in range(0, len(records), _LAST_WRITE_CHUNK):
        chunk = records[start:start + _LAST_WRITE_CHUNK]
        try:
            await anyio.to_thread.run_sync(functools.partial(spool.append, chunk, force=True))
        except StreamdError as exc:
            lost += len(chunk)
            error = str(exc)
    return lost, (error if lost else None)
