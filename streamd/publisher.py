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

aiokafka has no aggregate buffer limit and can hang in start/send/flush/stop while the
cluster is down, so every await on it carries a deadline, in-flight records are capped, and
a producer whose start failed is thrown away and recreated.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from aiokafka import AIOKafkaProducer
from anyio.streams.memory import MemoryObjectReceiveStream

from streamd.config import KafkaSettings
from streamd.metrics import Metrics
from streamd.partitioner import partition_for
from streamd.records import OutRecord
from streamd.spool import Spool, SpoolEntry, SpoolFull


class Logger(Protocol):
    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...
    def error(self, event: str, **kw: Any) -> Any: ...


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
    """Map a produce failure onto the fixed label set of publish_failures{reason}."""
    name = type(exc).__name__
    if isinstance(exc, TimeoutError) or "Timeout" in name:
        return "timeout"
    if "TooLarge" in name:
        return "too_large"
    if "Connection" in name or "NotReady" in name or "NoBrokers" in name or isinstance(
        exc, OSError
    ):
        return "unavailable"
    return "other"


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


class _InFlight:
    """One submitted batch: its records until settled, and its spool rows if spooled."""

    __slots__ = ("future", "nbytes", "records", "seqs", "submitted")

    def __init__(self, records: list[OutRecord], future: asyncio.Future[Any], nbytes: int) -> None:
        self.records = records
        self.future = future
        self.nbytes = nbytes
        self.submitted = time.monotonic()
        self.seqs: list[int] | None = None  # spool rows shadowing this batch


@dataclass
class PublishStats:
    published: int = 0
    dlq_published: int = 0


class KafkaPublisher:
    """Owns the producer and the spool. `run()` drains the queue until it is closed;
    `close()` then flushes within a deadline and spools the rest."""

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
        # Records Kafka could not take, waiting for the spool writer (or, with no spool,
        # for a retry).
        self._pending: list[OutRecord] = []
        # Spool rows whose batch was acked: deleted by the next spool round.
        self._acked_seqs: list[int] = []
        # Spool rows that are shadows of batches still in flight: the drain skips them.
        self._shadow: set[int] = set()
        self._available = False
        self._announced: bool | None = None
        self._submit_failed = False
        # Set when live records could not be handed to Kafka in time; cleared by an ack.
        self._backpressured = False
        self._round_robin = 0
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
        self._available = available
        self._metrics.kafka_available.set(1 if available else 0)
        if available == self._announced:
            return
        self._announced = available
        spooled = self._spool.count if self._spool is not None else len(self._pending)
        if available:
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
        try:
            await self._ensure_producer()
        except Exception as exc:  # not reachable yet: the publish path retries
            self._log.warning("kafka.start_failed", error=str(exc) or type(exc).__name__)
            self._set_available(False)

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
            with anyio.move_on_after(2, shield=True):
                await producer.stop()
            raise
        return producer

    async def aclose(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with anyio.move_on_after(self._kafka.flush_timeout, shield=True):
                await producer.stop()

    # -- the loops ---------------------------------------------------------------------

    async def run(self, receive: MemoryObjectReceiveStream[list[OutRecord]]) -> None:
        """Publish until the queue is closed and drained. The spool writer and the drain
        run beside it and are stopped when the queue ends."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._warm_up)
            if self._spool is not None:
                tg.start_soon(self._spool_loop)
                tg.start_soon(self._drain_loop)
            await self._consume(receive)
            tg.cancel_scope.cancel()

    async def _consume(self, receive: MemoryObjectReceiveStream[list[OutRecord]]) -> None:
        async with receive:
            while True:
                records: list[OutRecord] | None = None
                with anyio.move_on_after(0.5 if self._pending and self._spool is None else 5):
                    try:
                        records = await receive.receive()
                    except anyio.EndOfStream:
                        break
                if self._spool is None and self._pending:
                    await self._retry_pending()
                if records is None:
                    continue
                while len(records) < _COALESCE:
                    try:
                        records.extend(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                if self._spool is not None and await self._spool_live():
                    # Kafka is down or not keeping up: straight to the spool; the drain
                    # publishes it when Kafka acknowledges again.
                    self._pending.extend(records)
                    continue
                await self._publish(records)

    async def _spool_live(self) -> bool:
        """Whether live records should go to the spool instead of to Kafka now.

        Once Kafka has not taken live records in time, they go straight to the spool until
        the next ack: waiting again for every read would throttle the reader (the queue
        holds few records when reads are small), and X drops a reader that falls behind.
        """
        if (not self._available and self._announced is False) or self._backpressured:
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
        retry, self._pending = self._pending, []
        await self._publish(retry)

    async def _spool_loop(self) -> None:
        while True:
            await anyio.sleep(self._spool_interval)
            await self.spool_round()

    async def spool_round(self) -> None:
        """Write what needs durability, delete what was acked: one transaction each."""
        spool = self._spool
        if spool is None:
            return
        async with self._spool_lock:
            if self._acked_seqs:
                seqs, self._acked_seqs = self._acked_seqs, []
                await anyio.to_thread.run_sync(spool.delete, seqs)
            horizon = time.monotonic() - self._spool_interval
            shadowed = [b for b in self._in_flight
                        if b.seqs is None and b.records and b.submitted < horizon]
            # Take the pending records out now: more may be appended while we write.
            pending, self._pending = self._pending, []
            entries = [to_entry(r) for b in shadowed for r in b.records]
            entries.extend(to_entry(r) for r in pending)
            if not entries:
                self._update_spool_metrics()
                return
            try:
                seqs = await anyio.to_thread.run_sync(spool.append, entries)
            except SpoolFull:
                self._pending[:0] = pending  # still ours, oldest first
                if self.spool_room.is_set():
                    self._log.error("spool.full", spooled=spool.count, bytes=spool.bytes,
                                    waiting=len(entries))
                    self.spool_room = anyio.Event()
                return
            i = 0
            for batch in shadowed:
                n = len(batch.records)
                if batch.records:
                    batch.seqs = seqs[i:i + n]
                    self._shadow.update(batch.seqs)
                else:
                    # Acked while we were writing: its rows can go right away.
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
        while True:
            drained = 0
            if spool.count > len(self._shadow):
                drained = await self._drain_once(spool)
            if not self.spool_room.is_set() and self._spool_has_room_again(spool):
                self._log.info("spool.room", spooled=spool.count, bytes=spool.bytes)
                self.spool_room.set()
            await anyio.sleep(0 if drained else (0.2 if self._available else 1.0))

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
        batches = await self._publish(records, track=False)
        if batches:
            with anyio.move_on_after(self._kafka.publish_timeout):
                await asyncio.wait([b.future for b in batches])
        # Only rows whose own batch was acknowledged leave the spool; anything else (a
        # batch that could not be submitted, failed, or got no answer) stays for the next
        # round: at least once, never "probably".
        acked: list[OutRecord] = []
        for batch in batches:
            future = batch.future
            if future.done() and not future.cancelled() and future.exception() is None:
                acked.extend(batch.records)
            elif not future.done():
                future.cancel()
        if len(acked) < len(records):
            self._set_available(False)
        if not acked:
            return 0
        self._acked(acked)
        async with self._spool_lock:
            await anyio.to_thread.run_sync(spool.delete, [seq_of[id(r)] for r in acked])
        self._update_spool_metrics()
        return len(acked)

    # -- shutdown --------------------------------------------------------------------

    async def close(self, deadline: float) -> int:
        """Wait up to `deadline` s for every in-flight batch; spool whatever is left.
        Returns how many records are held in the spool (or, with no spool, undelivered)."""
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(deadline):
                while self._in_flight:
                    await self._wait_oldest()
                if self._spool is None:
                    while self._pending:
                        await self._retry_pending()
                        if self._pending:
                            await anyio.sleep(0.2)
            # Whatever is still unacknowledged goes to the spool, acked shadows leave it.
            for batch in self._in_flight:
                records = self._settle(batch)
                if batch.seqs is None:
                    self._pending.extend(records)
            self._in_flight.clear()
            if self._spool is not None:
                await self.spool_round()
                held = self._spool.count
            else:
                held = len(self._pending)
            await self.aclose()
        return held

    # -- publishing ------------------------------------------------------------------

    async def _publish(self, records: list[OutRecord], *, track: bool = True) -> list[_InFlight]:
        try:
            producer = await self._ensure_producer()
        except Exception as exc:  # any start failure: Kafka is not available
            self._log.warning("kafka.start_failed", error=str(exc) or type(exc).__name__)
            self._metrics.publish_failures.labels(reason="unavailable").inc()
            if track:
                self._pending.extend(records)
            self._set_available(False)
            return []
        builders: dict[tuple[str, int], _Batch] = {}
        submitted: list[_InFlight] = []
        self._submit_failed = False
        self._round_robin += 1  # spreads keyless (DLQ) records over rounds
        for record in records:
            topic = self._kafka.dlq_topic if record.dlq else self._kafka.topic
            partitions = self._partitions[topic]
            partition = partition_for(record.key, partitions, self._round_robin)
            slot = (topic, partition)
            builder = builders.get(slot)
            if builder is None:
                builder = builders[slot] = _Batch(producer.create_batch())
            if not builder.append(record):
                submitted += await self._submit(producer, topic, partition, builder, track)
                builder = builders[slot] = _Batch(producer.create_batch())
                if not builder.append(record):
                    self._oversize(record)  # larger than an empty batch: the broker refuses it
        for (topic, partition), builder in builders.items():
            if builder.records:
                submitted += await self._submit(producer, topic, partition, builder, track)
        return submitted

    def _oversize(self, record: OutRecord) -> None:
        self._log.error("kafka.record_too_large", size=len(record.value), tweet_id=record.tweet_id)
        self._metrics.tweets_dlq.labels(reason="oversize").inc()
        self._metrics.publish_failures.labels(reason="too_large").inc()

    async def _submit(
        self, producer: AIOKafkaProducer, topic: str, partition: int, batch: _Batch, track: bool
    ) -> list[_InFlight]:
        if track and self._spool is None:
            # Without a spool, memory is the only buffer: wait for acks to bound it.
            while self._in_flight_full() and self._in_flight:
                await self._wait_oldest()
        batch.builder.close()
        if self._submit_failed:
            # An earlier batch of this round could not be submitted: do not wait again.
            if track:
                self._pending.extend(batch.records)
            return []
        deadline = _LIVE_SUBMIT_DEADLINE if track and self._spool is not None else (
            self._kafka.publish_timeout)
        try:
            with anyio.fail_after(min(deadline, self._kafka.publish_timeout)):
                future = await producer.send_batch(batch.builder, topic, partition=partition)
        except TimeoutError:
            # Backpressure (the partition's previous batch is not sent yet) or a stalled
            # broker: either way, spool these rather than wait; only failed or unanswered
            # batches mark Kafka unavailable.
            self._submit_failed = True
            if track:
                self._backpressured = True
                self._pending.extend(batch.records)
            else:
                self._set_available(False)
            return []
        except Exception as exc:  # KafkaError: not now
            self._submit_failed = True
            if track:
                self._batch_failed(batch.records, exc)
            else:
                self._set_available(False)
            return []
        inflight = _InFlight(batch.records, future, batch.nbytes)
        if track:
            self._in_flight.append(inflight)
            self._in_flight_records += len(batch.records)
            self._in_flight_bytes += batch.nbytes
            future.add_done_callback(lambda f, i=inflight: self._on_done(i))
        return [inflight]

    def _on_done(self, inflight: _InFlight) -> None:
        # Runs in the event loop when the broker answers (or the send fails). The outcome is
        # read even when the records were settled elsewhere (timed out, shut down), so asyncio
        # does not log "Future exception was never retrieved".
        exc = None if inflight.future.cancelled() else inflight.future.exception()
        records = self._settle(inflight)
        if records:
            if exc is not None:
                if inflight.seqs is None:
                    self._batch_failed(records, exc)
                else:  # already safe in the spool: the drain publishes it later
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
                for tag, count in per_tag.items():
                    self._metrics.tweets_published_by_rule.labels(rule_tag=tag).inc(count)
        self._backpressured = False
        self._set_available(True)
        if self._on_ack is not None:
            self._on_ack(tweets)

    def _batch_failed(self, records: list[OutRecord], exc: BaseException) -> None:
        self._failed(exc)
        self._pending.extend(records)

    def _failed(self, exc: BaseException) -> None:
        self._metrics.publish_failures.labels(reason=failure_reason(exc)).inc()
        self._set_available(False)


class _Batch:
    """A BatchBuilder plus the records in it (to retry or spool them if the batch fails)."""

    __slots__ = ("builder", "nbytes", "records")

    def __init__(self, builder: Any) -> None:
        self.builder = builder
        self.records: list[OutRecord] = []
        self.nbytes = 0

    def append(self, record: OutRecord) -> bool:
        meta = self.builder.append(
            timestamp=record.timestamp_ms, key=record.key, value=record.value,
            headers=record.headers,
        )
        if meta is None:
            return False
        self.records.append(record)
        self.nbytes += meta.size
        return True
