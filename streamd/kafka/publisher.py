"""The publisher: bounded queue -> batched produce -> Kafka acks, with the spool beside it.

Records arrive from the reader in small lists. They are packed into per-partition
`BatchBuilder`s with the key partitioner (murmur2, like every Kafka client, so a tweet id
always lands on one partition) and submitted with `send_batch`: one future per batch, not
one per tweet. Every future is checked.

Durability ("spool-ahead"): every `spool.batch_interval` the spool writer stores, in one
transaction, every record that is not acknowledged yet but was submitted more than one
interval ago, plus every record Kafka could not take (a failed batch, a broker that does not
answer, or a producer that cannot start). Records spooled while still in flight are deleted
again when their ack arrives. In normal operation acks take milliseconds, so nothing is
written; yet a SIGKILL at any instant loses at most what was read in the last batch interval.
While Kafka is unavailable, live records go straight to the spool; a drain task publishes
the spool oldest-first as soon as Kafka acknowledges again, while live records flow.

Every record the publisher holds is in exactly one registered place at any await: taken off
the queue (`_taken`), packed but not submitted (`_unsent`), in flight, refused as too large
and being resolved (`_refused`), or waiting for the spool (`_pending`). Moves between them
happen without an await in between, so cancelling `run()` at any point loses nothing.
`shutdown(deadline)` is the one way to stop, with one budget: it waits for acks until just
before the deadline, cancels `run()`, collects every place (and what is still queued) and
writes it to the spool, past `spool.max_bytes` if need be, then closes the producer by the
deadline. Only a disk that refuses that write loses records, and they are counted.

Too large: a record bigger than `kafka.max_request_size` (checked here, since `send_batch`
does not) becomes a DLQ record (`streamd_dlq_reason=oversize`), cut to what fits if the DLQ
would refuse it too (`streamd_dlq_truncated` = original size). A batch the broker refuses as
too large is split in halves down to single records; a single refused tweet goes to the DLQ
the same way. None of this marks Kafka unavailable, and nothing goes back to the spool to
be refused again.

aiokafka has no aggregate buffer limit and can hang in start/send/flush/stop while the
cluster is down, so every await on it carries a deadline, in-flight records are capped, and
a producer whose start failed is thrown away and recreated.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
from aiokafka import AIOKafkaProducer, errors
from aiokafka.producer.message_accumulator import BatchBuilder
from anyio.streams.memory import MemoryObjectReceiveStream

from streamd.config import KafkaSettings
from streamd.errors import SpoolFull, StreamdError
from streamd.kafka.partitioner import partition_for
from streamd.kafka.spool import Spool, SpoolEntry
from streamd.ops.logs import Logger
from streamd.ops.metrics import Metrics
from streamd.records import DLQ_OVERSIZE, OutRecord, dlq_record

# How many records one publish cycle takes from the queue before submitting: big enough to
# fill batches at full speed, small enough to keep latency low at 2k tweets/s.
_COALESCE = 5_000
# How many spooled records one drain round publishes, and at most how many bytes of them:
# a round's records stay in memory until acked, so this bounds the drain's footprint.
_DRAIN_BATCH = 2_000
_DRAIN_BYTES = 1 << 20
# While Kafka is unavailable a drain round is a probe: a few records, not a full round held
# in memory for publish_timeout.
_DRAIN_PROBE = 50
# The live path never waits longer than this for aiokafka to take a batch: when the
# accumulator is full (a stalled broker), waiting would stop the reader, and X drops a reader
# that stops reading. Past this the records go to the spool instead.
_LIVE_SUBMIT_DEADLINE = 0.25
# Without a spool, records Kafka could not take are retried this often.
_RETRY_INTERVAL = 0.5
# The shutdown stops waiting for acks this long before its deadline: stopping run(), the
# final spool write and closing the producer come after.
_CLOSE_RESERVE = 0.5
# A producer with nothing left to flush stops in milliseconds; one that takes longer is
# waiting on a broker that does not answer, and what it holds is already in the spool.
_STOP_GRACE = 1.0
# Tearing down a producer that would not stop: stopping its sender and closing its sockets
# takes no network round trip, so this is plenty.
_ABANDON_S = 0.5
# At most this long to stop a producer whose start failed (outside a shutdown).
_DISCARD_S = 2.0
# When one transaction for everything left at shutdown is refused, what the disk still
# takes is written in transactions of this many records.
_LAST_WRITE_CHUNK = 256

# A Kafka record batch (v2) header: what a batch adds to the records in it.
BATCH_HEADER_BYTES = 61
DLQ_TRUNCATED_HEADER = "streamd_dlq_truncated"


def _error_classes(*names: str) -> tuple[type[BaseException], ...]:
    # Looked up by name: an aiokafka without one of them simply has fewer to match.
    found = (getattr(errors, name, None) for name in names)
    return tuple(cls for cls in found if isinstance(cls, type))


_TOO_LARGE = _error_classes("MessageSizeTooLargeError", "RecordListTooLargeError")
_TIMEOUT: tuple[type[BaseException], ...] = (
    TimeoutError, *_error_classes("KafkaTimeoutError", "RequestTimedOutError"))
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError, *_error_classes("KafkaConnectionError", "NodeNotReadyError", "NoBrokersAvailable"))


def producer_kwargs(kafka: KafkaSettings, sasl_password: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "acks": kafka.acks,
        "enable_idempotence": kafka.enable_idempotence,
        "compression_type": None if kafka.compression == "none" else kafka.compression,
        "linger_ms": kafka.linger_ms,
        "max_batch_size": kafka.max_batch_bytes,
        "max_request_size": kafka.max_request_size,
        "request_timeout_ms": int(kafka.publish_timeout * 1000),
        "security_protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = sasl_password
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        kwargs["ssl_context"] = create_ssl_context(
            cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile
        )
    return kwargs


def failure_reason(exc: BaseException) -> str:
    """The one failure taxonomy, also the label set of publish_failures{reason}.

    `too_large`: Kafka will never take this batch as it is (split it, dead-letter the
    record); it says nothing about Kafka's availability. Everything else means "not now":
    keep the records and retry.
    """
    if isinstance(exc, _TOO_LARGE):
        return "too_large"
    if isinstance(exc, _TIMEOUT):
        return "timeout"
    if isinstance(exc, _UNAVAILABLE):
        return "unavailable"
    return "other"


def is_too_large(exc: BaseException) -> bool:
    return failure_reason(exc) == "too_large"


def to_entry(record: OutRecord) -> SpoolEntry:
    return SpoolEntry(
        dlq=record.dlq, key=record.key, value=record.value, timestamp_ms=record.timestamp_ms,
        headers=list(record.headers), tweet_id=record.tweet_id,
    )


def from_entry(entry: SpoolEntry) -> OutRecord:
    # The monotonic read time is gone after a restart; derive it from the record timestamp
    # so the latency histogram still measures read -> ack.
    age = max(0.0, time.time() - entry.timestamp_ms / 1000)
    return OutRecord(
        dlq=entry.dlq, key=entry.key, value=entry.value, timestamp_ms=entry.timestamp_ms,
        headers=list(entry.headers), read_at=time.monotonic() - age, tweet_id=entry.tweet_id,
    )


# -- records too large for Kafka: pure decisions ----------------------------------------------


def record_bytes(record: OutRecord) -> int:
    """Bytes of a batch (uncompressed) holding only this record: what max_request_size and
    the broker's maximum message size are compared with."""
    builder = BatchBuilder(1 << 30, 0)
    meta = builder.append(
        timestamp=record.timestamp_ms, key=record.key, value=record.value,
        headers=record.headers,
    )
    return BATCH_HEADER_BYTES + int(meta.size)


def oversize_dlq(record: OutRecord, error: str) -> OutRecord:
    """The DLQ record standing for a tweet Kafka will not take: the line as read."""
    return dlq_record(record.value, DLQ_OVERSIZE, error, read_ms=record.timestamp_ms,
                      read_at=record.read_at)


def truncated_dlq(record: OutRecord, keep: int) -> OutRecord:
    """A DLQ record cut to its first `keep` bytes, with `streamd_dlq_truncated` saying how
    long the value was before any cut (an earlier cut's figure is kept)."""
    original = str(len(record.value)).encode()
    headers: list[tuple[str, bytes]] = []
    for name, value in record.headers:
        if name == DLQ_TRUNCATED_HEADER:
            original = value
        else:
            headers.append((name, value))
    headers.append((DLQ_TRUNCATED_HEADER, original))
    return OutRecord(
        dlq=True, key=record.key, value=record.value[:max(0, keep)],
        timestamp_ms=record.timestamp_ms, headers=headers, read_at=record.read_at,
    )


def fit_to_request(record: OutRecord, limit: int) -> OutRecord | None:
    """`record` if a batch holding it alone is at most `limit` bytes; else the DLQ record
    for it (a tweet becomes `oversize`), cut to as much of the value as fits. None if not
    even an empty value fits (headers alone too big)."""
    size = record_bytes(record)
    if size <= limit:
        return record
    if not record.dlq:
        record = oversize_dlq(record, (
            f"{size} bytes as a Kafka record; kafka.max_request_size is {limit}"))
        size = record_bytes(record)
        if size <= limit:
            return record
    spare = limit - record_bytes(truncated_dlq(record, 0))
    if spare < 0:
        # Not even the headers fit: the error text is only a description, shorten it.
        record = _shorter_error(record, spare)
        spare = limit - record_bytes(truncated_dlq(record, 0))
        if spare < 0:
            return None
    # The size grows with the value byte for byte, give or take a varint byte or two.
    keep = min(len(record.value), spare)
    candidate = truncated_dlq(record, keep)
    size = record_bytes(candidate)
    while size > limit:
        keep -= size - limit
        if keep < 0:
            return None
        candidate = truncated_dlq(record, keep)
        size = record_bytes(candidate)
    while keep < len(record.value):  # as much as fits, to the byte
        bigger = truncated_dlq(record, keep + 1)
        if record_bytes(bigger) > limit:
            break
        keep, candidate = keep + 1, bigger
    return candidate


def _shorter_error(record: OutRecord, excess: int) -> OutRecord:
    headers = [
        (name, value[:max(0, len(value) + excess)] if name == "streamd_dlq_error" else value)
        for name, value in record.headers
    ]
    return OutRecord(dlq=record.dlq, key=record.key, value=record.value,
                     timestamp_ms=record.timestamp_ms, headers=headers, read_at=record.read_at)


@dataclass(slots=True)
class Group:
    """Records to publish together; each stands for the source record at the same index
    (the record as read: a tweet published as a DLQ record still settles that tweet)."""

    records: list[OutRecord]
    sources: list[OutRecord]


@dataclass(slots=True)
class Refusal:
    """What to do with a batch Kafka did not take."""

    resend: list[Group] = field(default_factory=list)  # each group as its own batch
    retry: list[OutRecord] = field(default_factory=list)  # sources: keep, retry later
    dropped: list[OutRecord] = field(default_factory=list)  # sources: nothing fits
    replaced: list[tuple[OutRecord, OutRecord]] = field(default_factory=list)  # source, new


def after_refusal(group: Group, exc: BaseException) -> Refusal:
    """The decision for a failed batch. Not too large: Kafka is not available, keep the
    records. Too large: split the batch in halves; a single tweet goes to the DLQ; a single
    DLQ record is cut in half (the broker's limit is not known, so at least half of what
    would fit is kept); an empty one that is still refused is dropped. Every step makes the
    batch smaller, so this ends."""
    if not is_too_large(exc):
        return Refusal(retry=list(group.sources))
    if len(group.records) > 1:
        mid = len(group.records) // 2
        return Refusal(resend=[
            Group(group.records[:mid], group.sources[:mid]),
            Group(group.records[mid:], group.sources[mid:]),
        ])
    if not group.records:
        return Refusal()
    record, source = group.records[0], group.sources[0]
    if not record.dlq:
        why = f"Kafka refused the record as too large ({type(exc).__name__})"
        dead = oversize_dlq(record, why)
    elif record.value:
        dead = truncated_dlq(record, len(record.value) // 2)
    else:
        return Refusal(dropped=[source])
    return Refusal(resend=[Group([dead], [source])], replaced=[(source, dead)])


SendGroup = Callable[[Group], Awaitable[list[tuple[Group, BaseException | None]]]]


@dataclass(slots=True)
class Resolution:
    published: list[OutRecord] = field(default_factory=list)  # sources settled on Kafka
    replaced: list[tuple[OutRecord, OutRecord]] = field(default_factory=list)  # each step
    dropped: list[OutRecord] = field(default_factory=list)
    retry: list[OutRecord] = field(default_factory=list)  # Kafka unavailable meanwhile
    error: BaseException | None = None  # why `retry` was not published
    refusals: int = 0  # too-large refusals met on the way


async def resolve_refused(group: Group, exc: BaseException, send: SendGroup) -> Resolution:
    """Publish what is left of a batch Kafka refused, following `after_refusal` until every
    source is published (as it is, or as a DLQ record), dropped, or to be retried.
    `send` publishes one group and reports each batch it became with its outcome (None:
    acknowledged, or settled otherwise, such as a record dropped because nothing fits)."""
    out = Resolution()

    async def settle(failed: Group, error: BaseException) -> None:
        # Depth first: the first half is settled before the second is sent, so the
        # records keep their order. Depth: log2(batch size) splits plus at most one cut
        # per bit of the value's length.
        if is_too_large(error):
            out.refusals += 1
        decision = after_refusal(failed, error)
        if decision.retry:
            out.retry.extend(decision.retry)
            out.error = error
        out.dropped.extend(decision.dropped)
        out.replaced.extend(decision.replaced)
        for part in decision.resend:
            for done, outcome in await send(part):
                if outcome is None:
                    out.published.extend(done.sources)
                else:
                    await settle(done, outcome)

    await settle(group, exc)
    return out


# -- the publisher -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShutdownOutcome:
    held: int  # records in the spool afterwards (all of it, not only this shutdown's)
    lost: int  # records that could not be kept: the disk refused them (or there is no spool)
    error: str | None  # why they were lost


class _InFlight:
    """One submitted batch: its records until settled, and its spool rows if spooled."""

    __slots__ = ("future", "nbytes", "records", "seqs", "sources", "submitted")

    def __init__(
        self, records: list[OutRecord], sources: list[OutRecord], future: asyncio.Future[Any],
        nbytes: int,
    ) -> None:
        self.records = records
        self.sources = sources
        self.future = future
        self.nbytes = nbytes
        self.submitted = time.monotonic()
        self.seqs: list[int] | None = None  # spool rows shadowing this batch


@dataclass
class PublishStats:
    published: int = 0
    dlq_published: int = 0


def _read_outcome(future: asyncio.Future[Any]) -> None:
    # A batch future nobody waits for any more (timed out, shut down) is still read, so
    # asyncio does not log "Future exception was never retrieved".
    if not future.cancelled():
        future.exception()


class KafkaPublisher:
    """Owns the producer and the spool. `run()` publishes until the queue is closed;
    `shutdown(deadline)` then flushes by an absolute deadline and keeps the rest."""

    def __init__(
        self,
        kafka: KafkaSettings,
        metrics: Metrics,
        log: Logger,
        *,
        spool: Spool | None = None,
        spool_interval: float = 0.2,
        sasl_password: str | None = None,
        on_ack: Callable[[int], None] | None = None,
    ) -> None:
        self._kafka = kafka
        self._metrics = metrics
        self._log = log
        self._spool = spool
        self._spool_interval = spool_interval
        self._spool_lock = anyio.Lock()
        self._producer_lock = anyio.Lock()
        self._sasl_password = sasl_password
        self._max_in_flight_bytes = kafka.max_in_flight_bytes
        self._on_ack = on_ack
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[str, list[int]] = {}
        self._in_flight: collections.deque[_InFlight] = collections.deque()
        self._in_flight_records = 0
        self._in_flight_bytes = 0
        # Records taken off the queue by the consume path and not yet anywhere else.
        self._taken: list[OutRecord] = []
        # The consume path's packed batches of this round; `placed` once submitted or pending.
        self._unsent: list[_Batch] = []
        # Live batches refused as too large, each until resolved (split, dead-lettered).
        self._refused: collections.deque[tuple[list[OutRecord], BaseException]] = (
            collections.deque())
        self._refused_wake = anyio.Event()
        self._refused_empty = anyio.Event()
        self._refused_empty.set()
        # Records Kafka could not take, waiting for the spool writer (or, with no spool,
        # for a retry). Only appended to, except where it is written or retried as a whole.
        self._pending: list[OutRecord] = []
        # Spool rows whose batch was acked: deleted by the next spool round.
        self._acked_seqs: list[int] = []
        # Spool rows that are shadows of batches still in flight: the drain skips them.
        self._shadow: set[int] = set()
        self._available = False
        self._announced: bool | None = None
        # Set when live records could not be handed to Kafka in time; cleared by an ack.
        self._backpressured = False
        self._round_robin = 0
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
        # Set while the spool has room; replaced by a fresh (unset) event when it fills up,
        # which tells the reader to stop reading X until the drain makes room.
        self.spool_room = anyio.Event()
        self.spool_room.set()
        self.stats = PublishStats()

    # -- state for readiness and the reader ----------------------------------------------

    @property
    def available(self) -> bool:
        """True while Kafka acknowledges (for /readyz)."""
        return self._available

    def _set_available(self, available: bool) -> None:
        if available and not self._available:
            self._drain_wake.set()  # what was spooled meanwhile can go now, not in a second
        self._available = available
        self._metrics.kafka_available.set(1 if available else 0)
        if available == self._announced:
            return
        previous, self._announced = self._announced, available
        spooled = self._spool.count if self._spool is not None else len(self._pending)
        if available:
            # Only after a kafka.unavailable: Kafka answering for the first time at start-up
            # is no recovery, and a "recovered" line at every start hides the real ones.
            if previous is False:
                self._log.info("kafka.recovered", spooled=spooled)
        else:
            self._log.warning("kafka.unavailable", spooled=spooled + self._in_flight_records)

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
                self._metrics.publish_failures.labels(reason="unavailable").inc()
            self._set_available(False)
            return None

    async def _start_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(**producer_kwargs(self._kafka, self._sasl_password))
        try:
            with anyio.fail_after(self._kafka.publish_timeout):
                await producer.start()
                for topic in (self._kafka.topic, self._kafka.dlq_topic):
                    parts = await producer.partitions_for(topic)
                    self._partitions[topic] = sorted(parts)
        except BaseException:
            # A producer whose start failed is unusable: stop it, make a new one next time.
            # During a shutdown this must not outlast its deadline.
            await _stop_producer(producer, self._discard_budget())
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
                    if self._spool is not None:
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
            self._pending.extend(_take_queued(receive))
            receive.close()
            self._running = False
            self._run_exited.set()

    async def _consume(self, receive: MemoryObjectReceiveStream[list[OutRecord]]) -> None:
        while True:
            if self._spool is None and self._pending:
                await self._retry_pending()
            if not await self._take(receive):
                return
            if not self._taken:  # only time to retry
                continue
            if self._spool is not None and await self._spool_live():
                # Kafka is down or not keeping up: straight to the spool; the drain
                # publishes it when Kafka acknowledges again.
                self._pending.extend(self._taken)
                self._taken = []
                continue
            await self._publish_taken()

    async def _take(self, receive: MemoryObjectReceiveStream[list[OutRecord]]) -> bool:
        """Take the next records off the queue into `_taken`. False once it is closed and
        empty.

        Never a timeout around receive(): anyio can hand an item to a receive() whose
        cancellation is already on its way, and that item would be lost.
        """
        try:
            if self._spool is None and self._pending:
                # Retry what Kafka did not take at least every _RETRY_INTERVAL: poll.
                until = anyio.current_time() + _RETRY_INTERVAL
                while True:
                    try:
                        records = receive.receive_nowait()
                        break
                    except anyio.WouldBlock:
                        if anyio.current_time() >= until:
                            return True
                        await anyio.sleep(0.05)
            else:
                records = await receive.receive()
        except anyio.EndOfStream:
            return False
        self._taken = records  # registered before anything else can happen
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
        if self._in_flight_full():
            # Kafka acknowledges but is behind: give it a moment, once, before spooling.
            with anyio.move_on_after(_LIVE_SUBMIT_DEADLINE):
                while self._in_flight_full():
                    await self._wait_oldest()
            if self._in_flight_full():
                self._backpressured = True
                return True
        return False

    def _in_flight_full(self) -> bool:
        return self._in_flight_bytes >= self._max_in_flight_bytes

    async def _retry_pending(self) -> None:
        self._taken, self._pending = self._pending, []
        await self._publish_taken()

    async def _spool_loop(self) -> None:
        while True:
            await anyio.sleep(self._spool_interval)
            await self.spool_round()

    async def spool_round(self) -> None:
        """Write what needs durability, delete what was acked: one transaction each.

        Records stay registered where they are until their write has committed, so a
        cancelled round loses nothing (at worst a record is written twice).
        """
        spool = self._spool
        if spool is None:
            return
        async with self._spool_lock:
            if self._acked_seqs:
                seqs = list(self._acked_seqs)
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(spool.delete, seqs)
                del self._acked_seqs[:len(seqs)]
            horizon = time.monotonic() - self._spool_interval
            shadowed = [b for b in self._in_flight
                        if b.seqs is None and b.records and b.submitted < horizon]
            # A snapshot of the pending records: more may be appended while we write.
            n_pending = len(self._pending)
            entries = [to_entry(r) for b in shadowed for r in b.records]
            entries.extend(to_entry(r) for r in self._pending[:n_pending])
            if not entries:
                self._update_spool_metrics()
                return
            try:
                with anyio.CancelScope(shield=True):
                    seqs = await anyio.to_thread.run_sync(spool.append, entries)
            except SpoolFull:
                if self.spool_room.is_set():
                    self._log.error("spool.full", spooled=spool.count, bytes=spool.bytes,
                                    waiting=len(entries))
                    self.spool_room = anyio.Event()
                return
            del self._pending[:n_pending]
            i = 0
            for batch in shadowed:
                n = len(batch.records)
                if batch.records:
                    batch.seqs = seqs[i:i + n]
                    self._shadow.update(batch.seqs)
                else:
                    # Settled while we were writing (acked, or failed and pending again):
                    # its rows can go right away.
                    self._acked_seqs.extend(seqs[i:i + n])
                i += n
            self._update_spool_metrics()

    def _update_spool_metrics(self) -> None:
        if self._spool is not None:
            self._metrics.spool_messages.set(self._spool.count)
            self._metrics.spool_bytes.set(self._spool.bytes)

    async def _drain_loop(self) -> None:
        """Publish spooled records oldest-first whenever Kafka takes them."""
        spool = self._spool
        assert spool is not None
        with anyio.CancelScope() as scope:
            # At shutdown the spool is safe where it is; Kafka's time goes to memory.
            self._drain_scope = scope
            if self._stopping:
                scope.cancel()
            while True:
                drained = 0
                if spool.count > len(self._shadow):
                    drained = await self._drain_once(spool)
                if not self.spool_room.is_set() and self._spool_has_room_again(spool):
                    self._log.info("spool.room", spooled=spool.count, bytes=spool.bytes)
                    self.spool_room.set()
                if drained:
                    await anyio.lowlevel.checkpoint()
                    continue
                with anyio.move_on_after(0.2 if self._available else 1.0):
                    await self._drain_wake.wait()
                self._drain_wake = anyio.Event()

    def _spool_has_room_again(self, spool: Spool) -> bool:
        """Hysteresis: resume reading X only when half the spool is free and what is still
        waiting in memory fits, so a full spool does not turn into a reconnect storm."""
        waiting = sum(r.size() for r in self._pending)
        return spool.free_fraction() >= 0.5 and spool.has_room(waiting)

    async def _drain_once(self, spool: Spool) -> int:
        limit = _DRAIN_BATCH if self._available else _DRAIN_PROBE
        async with self._spool_lock:
            rows = await anyio.to_thread.run_sync(
                spool.peek, limit, _DRAIN_BYTES, frozenset(self._shadow)
            )
        if not rows:
            return 0
        records = [from_entry(e) for _, e in rows]
        seq_of = {id(record): seq for record, (seq, _) in zip(records, rows, strict=True)}
        producer = await self._producer_or_none()
        if producer is None:
            return 0
        batches, dropped = self._pack(producer.create_batch, records)
        submitted: list[_InFlight] = []
        unavailable = False
        for batch in batches:
            outcome = await self._submit(producer, batch, deadline=self._kafka.publish_timeout)
            if not isinstance(outcome, _InFlight):
                unavailable = True  # the rest of the round stays in the spool
                break
            submitted.append(outcome)
        if submitted:
            with anyio.move_on_after(self._kafka.publish_timeout):
                await asyncio.wait([b.future for b in submitted])
        # Only rows whose own records were acknowledged leave the spool; anything else (a
        # batch that could not be submitted, failed, or got no answer) stays for the next
        # round: at least once, never "probably".
        published = dropped  # logged; retrying them could never succeed
        refused: list[tuple[_InFlight, BaseException]] = []
        acked = False
        for handle in submitted:
            future = handle.future
            if not future.done():
                future.cancel()
                unavailable = True
            elif future.cancelled():
                unavailable = True
            elif (error := future.exception()) is None:
                published.extend(handle.sources)
                self._acked(handle.records)
                acked = True
            elif is_too_large(error):
                refused.append((handle, error))
            else:
                self._failed(error)
                unavailable = True
        for handle, error in refused:
            resolution = await self._resolve(Group(handle.records, handle.sources), error)
            published.extend(resolution.published)
            published.extend(resolution.dropped)  # logged and counted: not to be retried
            acked = acked or bool(resolution.published)
            if resolution.retry:
                unavailable = True
        if unavailable and not acked:  # any ack this round: Kafka is there, if slow
            self._set_available(False)
        if not published:
            return 0
        async with self._spool_lock:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(spool.delete, [seq_of[id(r)] for r in published])
        self._update_spool_metrics()
        return len(published)

    # -- too-large refusals ------------------------------------------------------------

    async def _refusal_loop(self) -> None:
        """Resolve live batches the broker refused as too large (their callback cannot)."""
        while True:
            await self._refused_wake.wait()
            self._refused_wake = anyio.Event()
            while self._refused:
                records, exc = self._refused[0]  # stays registered until resolved
                resolution = await self._resolve(Group(records, records), exc)
                if self._refused and self._refused[0][0] is records:
                    self._refused.popleft()
                if resolution.retry:
                    assert resolution.error is not None
                    self._batch_failed(resolution.retry, resolution.error)
            self._refused_empty.set()

    async def _resolve(self, group: Group, exc: BaseException) -> Resolution:
        resolution = await resolve_refused(group, exc, self._send_group)
        self._metrics.publish_failures.labels(reason="too_large").inc(resolution.refusals)
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
        batches, dropped = self._pack(producer.create_batch, group.records, group.sources)
        # Nothing can be sent for these (logged): settled, not to be tried again.
        out: list[tuple[Group, BaseException | None]] = [(Group(dropped, dropped), None)]
        submitted: list[_InFlight] = []
        for batch in batches:
            outcome = await self._submit(producer, batch, deadline=self._kafka.publish_timeout)
            if isinstance(outcome, _InFlight):
                submitted.append(outcome)
            else:
                out.append((Group(batch.records, batch.sources), outcome))
        if submitted:
            with anyio.move_on_after(self._kafka.publish_timeout):
                await asyncio.wait([b.future for b in submitted])
        for handle in submitted:
            future = handle.future
            result: BaseException | None
            if not future.done():
                future.cancel()
                result = TimeoutError("no ack within publish_timeout")
            elif future.cancelled():
                result = TimeoutError("cancelled")
            else:
                result = future.exception()
                if result is None:
                    self._acked(handle.records)
            out.append((Group(handle.records, handle.sources), result))
        return out

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
                await _stop_producer(producer, max(0.0, grace))
        return outcome

    async def _flush(self, by: float) -> bool:
        """Until `by`: let run() take the rest of the queue, wait for in-flight batches and
        refusals; without a spool, retry what failed. True if all that finished."""
        with anyio.CancelScope(deadline=by):
            if self._running:
                await self._consumed.wait()
            while self._in_flight:
                await self._wait_oldest()
            if self._running:
                await self._refused_empty.wait()
            if self._spool is None:
                while self._pending:
                    await self._retry_pending()
                    if self._pending:
                        await anyio.sleep(0.2)
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
        async with self._spool_lock:  # no spool round may be half-way through
            records: list[OutRecord] = []
            for batch in self._in_flight:
                settled = self._settle(batch)
                if batch.seqs is None:
                    records.extend(settled)
                else:  # its rows are in the spool already
                    self._shadow.difference_update(batch.seqs)
            self._in_flight.clear()
            for refused, _ in self._refused:
                records.extend(refused)
            self._refused.clear()
            for unsent in self._unsent:
                if not unsent.placed:
                    records.extend(unsent.records)
            self._unsent = []
            records.extend(self._taken)
            self._taken = []
            records.extend(self._pending)
            self._pending = []
            if self._receive is not None:
                records.extend(_take_queued(self._receive))
            spool = self._spool
            if spool is None:
                why = "no spool: records Kafka did not acknowledge cannot be kept"
                return ShutdownOutcome(0, len(records), why if records else None)
            if self._acked_seqs:
                seqs, self._acked_seqs = self._acked_seqs, []
                try:
                    await anyio.to_thread.run_sync(spool.delete, seqs)
                except StreamdError as exc:  # only a duplicate later, not a loss
                    self._log.warning("spool.delete_failed", error=str(exc))
            lost, error = await _write_all(spool, [to_entry(r) for r in records])
            self._update_spool_metrics()
            return ShutdownOutcome(spool.count, lost, error)

    # -- publishing ------------------------------------------------------------------

    async def _publish_taken(self) -> None:
        """Publish the records in `_taken` (the live path)."""
        if self._spool is not None:
            producer = self._producer
        else:
            producer = await self._producer_or_none()
        if producer is None:
            self._pending.extend(self._taken)
            self._taken = []
            return
        # Hand-over without an await: from here on the records are in `_unsent`.
        self._unsent, _ = self._pack(producer.create_batch, self._taken)  # dropped: logged
        self._taken = []
        failed = False
        deadline = _LIVE_SUBMIT_DEADLINE if self._spool is not None else (
            self._kafka.publish_timeout)
        for batch in self._unsent:
            if failed:
                # An earlier batch of this round could not be submitted: do not wait again.
                self._pending.extend(batch.records)
                batch.placed = True
                continue
            if self._spool is None:
                # Without a spool, memory is the only buffer: wait for acks to bound it.
                while self._in_flight_full() and self._in_flight:
                    await self._wait_oldest()
            outcome = await self._submit(producer, batch, deadline=deadline)
            batch.placed = True
            if isinstance(outcome, _InFlight):
                self._track(outcome)
                continue
            failed = True
            if isinstance(outcome, TimeoutError):
                # Backpressure (the partition's previous batch is not sent yet) or a stalled
                # broker: either way, spool these rather than wait; only failed or
                # unanswered batches mark Kafka unavailable.
                self._backpressured = True
                self._pending.extend(batch.records)
            else:
                self._batch_failed(batch.records, outcome)
        self._unsent = []

    def _pack(
        self, create_batch: Callable[[], Any], records: Sequence[OutRecord],
        sources: Sequence[OutRecord] | None = None,
    ) -> tuple[list[_Batch], list[OutRecord]]:
        """Records into per-partition batches, in order; no await. A record larger than a
        request may be is replaced by its DLQ record (cut to fit if need be). Returns the
        batches, and the sources of records that cannot be sent at all (logged)."""
        limit = self._kafka.max_request_size
        topic, dlq_topic = self._kafka.topic, self._kafka.dlq_topic
        partitions = self._partitions
        builders: dict[tuple[str, int], _Batch] = {}
        out: list[_Batch] = []
        dropped: list[OutRecord] = []
        self._round_robin += 1  # spreads keyless (DLQ) records over rounds
        round_robin = self._round_robin
        for record, source in zip(records, records if sources is None else sources,
                                  strict=True):
            name = dlq_topic if record.dlq else topic
            partition = partition_for(record.key, partitions[name], round_robin)
            slot = (name, partition)
            batch = builders.get(slot)
            if batch is None:
                batch = builders[slot] = _Batch(create_batch(), name, partition)
            size = batch.append(record, source)
            if not size:  # full: it goes out as it is
                out.append(batch)
                batch = builders[slot] = _Batch(create_batch(), name, partition)
                size = batch.append(record, source)
            if size and BATCH_HEADER_BYTES + size <= limit:
                continue
            if size:  # it must not go out like this: take it back out of its batch
                builders[slot] = batch.without_last(create_batch)
            if not self._place_oversize(record, source, builders, out, create_batch,
                                        round_robin):
                dropped.append(source)
        out.extend(b for b in builders.values() if b.records)
        return out, dropped

    def _place_oversize(
        self, record: OutRecord, source: OutRecord, builders: dict[tuple[str, int], _Batch],
        out: list[_Batch], create_batch: Callable[[], Any], round_robin: int,
    ) -> bool:
        """Place a record that did not fit a request beside others: alone if it fits
        alone (a few bytes of offset and time deltas can make the difference), else its
        DLQ record, cut to fit. False if nothing can be sent for it."""
        limit = self._kafka.max_request_size
        for _ in range(3):  # the record alone; its replacement; that alone
            fitted = fit_to_request(record, limit)
            if fitted is None:
                break
            if fitted is not record:
                self._metrics.publish_failures.labels(reason="too_large").inc()
                self._note_oversize(source, fitted, "max_request_size", count=not source.dlq)
                record = fitted
            name = self._kafka.dlq_topic if record.dlq else self._kafka.topic
            partition = partition_for(record.key, self._partitions[name], round_robin)
            slot = (name, partition)
            batch = builders.get(slot)
            if batch is not None and batch.records:
                out.append(batch)
            batch = builders[slot] = _Batch(create_batch(), name, partition)
            size = batch.append(record, source)
            if size and BATCH_HEADER_BYTES + size <= limit:
                return True
            builders[slot] = batch.without_last(create_batch)
        self._log.error("kafka.record_too_large", size=len(source.value),
                        tweet_id=source.tweet_id, action="dropped",
                        detail=f"no record for it fits kafka.max_request_size ({limit})")
        self._metrics.publish_failures.labels(reason="too_large").inc()
        return False

    async def _submit(
        self, producer: AIOKafkaProducer, batch: _Batch, *, deadline: float
    ) -> _InFlight | BaseException:
        """Hand one batch to aiokafka within `deadline` s: its handle, or why not (a
        TimeoutError when the deadline passed)."""
        batch.builder.close()
        try:
            with anyio.fail_after(min(deadline, self._kafka.publish_timeout)):
                future = await producer.send_batch(
                    batch.builder, batch.topic, partition=batch.partition)
        except Exception as exc:  # TimeoutError, KafkaError: not now
            return exc
        future.add_done_callback(_read_outcome)
        return _InFlight(batch.records, batch.sources, future, batch.nbytes)

    def _track(self, inflight: _InFlight) -> None:
        self._in_flight.append(inflight)
        self._in_flight_records += len(inflight.records)
        self._in_flight_bytes += inflight.nbytes
        inflight.future.add_done_callback(functools.partial(self._on_done_future, inflight))

    def _on_done_future(self, inflight: _InFlight, future: asyncio.Future[Any]) -> None:
        self._on_done(inflight)

    def _on_done(self, inflight: _InFlight) -> None:
        # Runs in the event loop when the broker answers (or the send fails). The outcome is
        # read even when the records were settled elsewhere (timed out, shut down), so asyncio
        # does not log "Future exception was never retrieved".
        exc = None if inflight.future.cancelled() else inflight.future.exception()
        records = self._settle(inflight)
        if records:
            if exc is not None and is_too_large(exc) and inflight.seqs is None:
                # Never back to the spool as it is: it would be refused again, forever.
                self._refused.append((records, exc))
                self._refused_wake.set()
                if self._refused_empty.is_set():
                    self._refused_empty = anyio.Event()
            elif exc is not None:
                if inflight.seqs is None:
                    self._batch_failed(records, exc)
                else:  # already safe in the spool: the drain publishes (or splits) it later
                    self._shadow.difference_update(inflight.seqs)
                    self._failed(exc)
            else:
                self._acked(records)
                if inflight.seqs is not None:
                    self._shadow.difference_update(inflight.seqs)
                    self._acked_seqs.extend(inflight.seqs)
        self._prune()

    def _settle(self, inflight: _InFlight) -> list[OutRecord]:
        """Take the records out of an in-flight batch, exactly once."""
        records, inflight.records = inflight.records, []
        if records:
            self._in_flight_records -= len(records)
            self._in_flight_bytes -= inflight.nbytes
        return records

    async def _wait_oldest(self) -> None:
        inflight = self._in_flight[0]
        with anyio.move_on_after(self._kafka.publish_timeout):
            await asyncio.wait([inflight.future])
        if not inflight.future.done():
            # No answer within the deadline: resend (or spool) the records ourselves.
            records = self._settle(inflight)
            if inflight.seqs is None:
                self._batch_failed(records, TimeoutError("no ack within publish_timeout"))
            else:
                self._shadow.difference_update(inflight.seqs)
            inflight.future.cancel()
        self._prune()

    def _prune(self) -> None:
        while self._in_flight and not self._in_flight[0].records:
            self._in_flight.popleft()

    def _acked(self, records: Sequence[OutRecord]) -> None:
        now = time.monotonic()
        tweets = 0
        observe = self._metrics.publish_latency.observe
        # Tweets of one network read share their read time (and usually their rules'
        # tags tuple): one latency observation and one tag count per run of them.
        read_at = 0.0
        run = 0
        by_tags: dict[tuple[str, ...], int] = {}
        for record in records:
            if record.dlq:
                self.stats.dlq_published += 1
                continue
            tweets += 1
            if record.read_at == read_at:
                run += 1
            else:
                if run:
                    observe(now - read_at, run)
                read_at = record.read_at
                run = 1
            if record.tags:
                by_tags[record.tags] = by_tags.get(record.tags, 0) + 1
        if run:
            observe(now - read_at, run)
        if tweets:
            self.stats.published += tweets
            self._metrics.tweets_published.inc(tweets)
            if by_tags:
                per_tag: collections.Counter[str] = collections.Counter()
                for tags, count in by_tags.items():
                    for tag in tags:
                        per_tag[tag] += count
                # Tags come from the stream: the label set is bounded (configured + other).
                for tag, count in per_tag.items():
                    self._metrics.rule_tags.inc(tag, count)
        self._backpressured = False
        self._set_available(True)
        if self._on_ack is not None:
            self._on_ack(tweets)

    def _batch_failed(self, records: list[OutRecord], exc: BaseException) -> None:
        self._failed(exc)
        self._pending.extend(records)

    def _failed(self, exc: BaseException) -> None:
        self._metrics.publish_failures.labels(reason=failure_reason(exc)).inc()
        if not is_too_large(exc):  # a record too large says nothing about Kafka
            self._set_available(False)


class _Batch:
    """A BatchBuilder plus the records in it (to retry or spool them if the batch fails)
    and the source record each stands for."""

    __slots__ = ("builder", "nbytes", "partition", "placed", "records", "sources", "topic")

    def __init__(self, builder: Any, topic: str, partition: int) -> None:
        self.builder = builder
        self.topic = topic
        self.partition = partition
        self.records: list[OutRecord] = []
        self.sources: list[OutRecord] = []
        self.nbytes = 0
        self.placed = False  # submitted (in flight) or handed to `_pending`

    def append(self, record: OutRecord, source: OutRecord) -> int:
        """The record's size in the batch, or 0 if the batch is full."""
        meta = self.builder.append(
            timestamp=record.timestamp_ms, key=record.key, value=record.value,
            headers=record.headers,
        )
        if meta is None:
            return 0
        self.records.append(record)
        self.sources.append(source)
        size = int(meta.size)
        self.nbytes += size
        return size

    def without_last(self, create_batch: Callable[[], Any]) -> _Batch:
        """This batch without its last record (a BatchBuilder cannot take one back)."""
        batch = _Batch(create_batch(), self.topic, self.partition)
        for record, source in zip(self.records[:-1], self.sources[:-1], strict=True):
            batch.append(record, source)
        return batch


def _take_queued(receive: MemoryObjectReceiveStream[list[OutRecord]]) -> list[OutRecord]:
    """Everything still in the queue, without waiting (including what a blocked sender is
    handing over)."""
    out: list[OutRecord] = []
    while True:
        try:
            out.extend(receive.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return out


async def _write_all(spool: Spool, entries: list[SpoolEntry]) -> tuple[int, str | None]:
    """Write everything past max_bytes; if the disk refuses the one transaction, save what
    it still takes in smaller ones. Returns (records lost, why)."""
    if not entries:
        return 0, None
    try:
        await anyio.to_thread.run_sync(functools.partial(spool.append, entries, force=True))
        return 0, None
    except StreamdError as exc:
        error = str(exc)
    lost = 0
    for start in range(0, len(entries), _LAST_WRITE_CHUNK):
        chunk = entries[start:start + _LAST_WRITE_CHUNK]
        try:
            await anyio.to_thread.run_sync(functools.partial(spool.append, chunk, force=True))
        except StreamdError as exc:
            lost += len(chunk)
            error = str(exc)
    return lost, (error if lost else None)


async def _stop_producer(producer: AIOKafkaProducer, within: float) -> None:
    """Stop a producer within `within` s; past that, tear it down without a flush (its
    sender stops, its sockets close), so nothing keeps waiting on a broker that does not
    answer. Its unsent batches are simply dropped: their records are in the spool."""
    with anyio.CancelScope(shield=True):
        # stop() marks the producer closed before its first await, even when cut at once.
        with anyio.move_on_after(within) as scope:
            await producer.stop()
        if not scope.cancelled_caught:
            return
        with anyio.move_on_after(_ABANDON_S):
            await _abandon(producer)


async def _abandon(producer: AIOKafkaProducer) -> None:
    # aiokafka has no "close now" (stop() flushes first), so this reaches into its parts;
    # each is looked up defensively, and what cannot be closed is left to the loop's end.
    # Its batches are not failed: a failed batch nobody waits for makes asyncio log
    # "exception was never retrieved"; a pending one is just collected.
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        await sender.close()
    client = getattr(producer, "client", None)
    if client is not None:
        await client.close()
