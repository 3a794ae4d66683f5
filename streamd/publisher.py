"""The publisher: bounded queue -> batched produce -> Kafka acks.

Records arrive from the reader in small lists (one per network read). They are packed into
per-partition `BatchBuilder`s with the key partitioner (murmur2, like every Kafka client, so
a tweet id always lands on one partition) and submitted with `send_batch`: one future per
batch, not one per tweet. Every future is checked; a failed batch is retried, never dropped.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from anyio.streams.memory import MemoryObjectReceiveStream

from streamd.config import KafkaSettings
from streamd.metrics import Metrics
from streamd.records import OutRecord


class Logger(Protocol):
    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...
    def error(self, event: str, **kw: Any) -> Any: ...


_partitioner = DefaultPartitioner()

# How many records one publish cycle takes from the queue before submitting: big enough to
# fill batches at full speed, small enough to keep latency low at 2k tweets/s.
_COALESCE = 5_000


def producer_kwargs(kafka: KafkaSettings, bearer_free_password: str | None) -> dict[str, Any]:
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
        kwargs["sasl_plain_password"] = bearer_free_password
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        kwargs["ssl_context"] = create_ssl_context(
            cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile
        )
    return kwargs


@dataclass
class _InFlight:
    records: list[OutRecord]
    future: asyncio.Future[Any]


@dataclass
class PublishStats:
    published: int = 0
    dlq_published: int = 0
    failed_batches: int = 0
    in_flight: int = 0
    undelivered: list[OutRecord] = field(default_factory=list)


class KafkaPublisher:
    """Owns the producer. `run()` drains the queue until it is closed, then flushes."""

    def __init__(
        self,
        kafka: KafkaSettings,
        metrics: Metrics,
        log: Logger,
        *,
        sasl_password: str | None = None,
        max_in_flight_records: int = 100_000,
        on_ack: Callable[[int], None] | None = None,
    ) -> None:
        self._kafka = kafka
        self._metrics = metrics
        self._log = log
        self._sasl_password = sasl_password
        self._max_in_flight = max_in_flight_records
        self._on_ack = on_ack
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[str, list[int]] = {}
        self._in_flight: collections.deque[_InFlight] = collections.deque()
        self._in_flight_records = 0
        self._retry: list[OutRecord] = []
        self._available = False
        self.stats = PublishStats()

    @property
    def available(self) -> bool:
        """True while Kafka acknowledges (for /readyz)."""
        return self._available

    # -- producer lifecycle ------------------------------------------------------------

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        producer = AIOKafkaProducer(**producer_kwargs(self._kafka, self._sasl_password))
        try:
            # aiokafka can hang in start() while the cluster is down: bound it.
            with anyio.fail_after(self._kafka.publish_timeout):
                await producer.start()
                for topic in (self._kafka.topic, self._kafka.dlq_topic):
                    parts = await producer.partitions_for(topic)
                    self._partitions[topic] = sorted(parts)
        except BaseException:
            # A producer whose start failed is unusable: stop it and make a new one next time.
            with anyio.move_on_after(2, shield=True):
                await producer.stop()
            raise
        self._producer = producer
        self._set_available(True)
        return producer

    async def aclose(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with anyio.move_on_after(self._kafka.flush_timeout, shield=True):
                await producer.stop()

    def _set_available(self, available: bool) -> None:
        if available == self._available:
            return
        self._available = available
        self._metrics.kafka_available.set(1 if available else 0)
        if available:
            self._log.info("kafka.recovered", spooled=len(self._retry))
        else:
            held = len(self._retry) + self._in_flight_records
            self._log.warning("kafka.unavailable", spooled=held)

    # -- the loop ----------------------------------------------------------------------

    async def run(self, receive: MemoryObjectReceiveStream[list[OutRecord]]) -> None:
        """Publish until the queue is closed and drained; then wait for the last acks."""
        async with receive:
            while True:
                records: list[OutRecord] | None = None
                # Wake up periodically even when idle, to retry failed batches.
                with anyio.move_on_after(0.5 if self._retry else 5.0):
                    try:
                        records = await receive.receive()
                    except anyio.EndOfStream:
                        break
                if self._retry:
                    await self._resend_failed()
                if records is None:
                    continue
                while len(records) < _COALESCE:
                    try:
                        records.extend(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                await self._publish(records)

    async def flush(self, deadline: float) -> list[OutRecord]:
        """Wait (up to `deadline` seconds) until every submitted record is acked or failed; retry
        failures while time remains. Returns what is still not delivered."""
        with anyio.move_on_after(deadline, shield=True):
            while self._in_flight or self._retry:
                if self._in_flight:
                    await self._wait_oldest()
                    self._prune()
                elif self._retry:
                    await self._resend_failed()
                    if self._retry:
                        await anyio.sleep(0.2)
        leftover = list(self._retry)
        for inflight in self._in_flight:
            leftover.extend(inflight.records)
        return leftover

    async def _publish(self, records: list[OutRecord]) -> None:
        try:
            producer = await self._ensure_producer()
        except Exception as exc:  # any start failure means "not available"
            self._log.warning("kafka.start_failed", error=str(exc) or type(exc).__name__)
            self._set_available(False)
            self._retry.extend(records)
            return
        builders: dict[tuple[str, int], Any] = {}
        for record in records:
            topic = self._kafka.dlq_topic if record.dlq else self._kafka.topic
            partitions = self._partitions[topic]
            partition = _partitioner(record.key, partitions, partitions)
            slot = (topic, partition)
            builder = builders.get(slot)
            if builder is None:
                builder = builders[slot] = _Batch(producer.create_batch())
            if not builder.append(record):
                await self._submit(producer, topic, partition, builder)
                builder = builders[slot] = _Batch(producer.create_batch())
                if not builder.append(record):
                    # Larger than an empty batch can hold: the broker would refuse it.
                    self._oversize(record)
        for (topic, partition), builder in builders.items():
            if builder.records:
                await self._submit(producer, topic, partition, builder)

    def _oversize(self, record: OutRecord) -> None:
        self._log.error("kafka.record_too_large", size=len(record.value), tweet_id=record.tweet_id)
        self._metrics.tweets_dlq.labels(reason="oversize").inc()

    async def _submit(self, producer: AIOKafkaProducer, topic: str, partition: int,
                      batch: _Batch) -> None:
        while self._in_flight_records >= self._max_in_flight and self._in_flight:
            await self._wait_oldest()
        batch.builder.close()
        try:
            with anyio.fail_after(self._kafka.publish_timeout):
                future = await producer.send_batch(batch.builder, topic, partition=partition)
        except Exception as exc:  # KafkaError, timeout: all mean "retry later"
            self._batch_failed(batch.records, exc)
            return
        inflight = _InFlight(batch.records, future)
        self._in_flight.append(inflight)
        self._in_flight_records += len(batch.records)
        future.add_done_callback(lambda f, i=inflight: self._on_done(i))

    def _on_done(self, inflight: _InFlight) -> None:
        # Runs in the event loop when the broker answers (or the send times out).
        records = self._settle(inflight)
        if not records:
            return  # already settled (given up on after publish_timeout)
        exc = None if inflight.future.cancelled() else inflight.future.exception()
        if exc is not None:
            self._batch_failed(records, exc)
        else:
            self._acked(records)
        self._prune()

    def _settle(self, inflight: _InFlight) -> list[OutRecord]:
        """Take the records out of an in-flight batch, exactly once."""
        records, inflight.records = inflight.records, []
        self._in_flight_records -= len(records)
        return records

    async def _wait_oldest(self) -> None:
        inflight = self._in_flight[0]
        with anyio.move_on_after(self._kafka.publish_timeout):
            await asyncio.wait([inflight.future])
        if not inflight.future.done():
            # No answer within the deadline: resend the records ourselves (at least once,
            # possibly twice if the late ack still arrives).
            self._batch_failed(self._settle(inflight), TimeoutError("no ack in publish_timeout"))
            inflight.future.cancel()
        self._prune()

    def _prune(self) -> None:
        while self._in_flight and self._in_flight[0].future.done():
            self._in_flight.popleft()

    def _acked(self, records: list[OutRecord]) -> None:
        now = time.monotonic()
        tweets = 0
        tags: collections.Counter[str] = collections.Counter()
        latency = self._metrics.publish_latency
        for record in records:
            if record.dlq:
                self.stats.dlq_published += 1
                continue
            tweets += 1
            latency.observe(now - record.read_at)
            if record.tags:
                tags.update(record.tags)
        if tweets:
            self.stats.published += tweets
            self._metrics.tweets_published.inc(tweets)
            for tag, count in tags.items():
                self._metrics.tweets_published_by_rule.labels(rule_tag=tag).inc(count)
        self._set_available(True)
        if self._on_ack is not None:
            self._on_ack(tweets)

    def _batch_failed(self, records: list[OutRecord], exc: BaseException) -> None:
        self.stats.failed_batches += 1
        self._metrics.publish_failures.labels(reason=failure_reason(exc)).inc()
        self._retry.extend(records)
        self._set_available(False)

    async def _resend_failed(self) -> None:
        retry, self._retry = self._retry, []
        await self._publish(retry)


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


class _Batch:
    """A BatchBuilder plus the records in it (to retry them if the batch fails)."""

    __slots__ = ("builder", "records")

    def __init__(self, builder: Any) -> None:
        self.builder = builder
        self.records: list[OutRecord] = []

    def append(self, record: OutRecord) -> bool:
        meta = self.builder.append(
            timestamp=record.timestamp_ms, key=record.key, value=record.value,
            headers=record.headers,
        )
        if meta is None:
            return False
        self.records.append(record)
        return True


def records_total(batches: Iterable[list[OutRecord]]) -> int:
    return sum(len(b) for b in batches)
