"""The publisher against a real broker: batching, keys, headers, DLQ, acks counted; records
too large for Kafka dead-lettered while their partition-mates are published; what a spool
holds (an older version's too) published with its rule tags."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from aiokafka.errors import MessageSizeTooLargeError
from rig import read_topic

from streamd.config import KafkaSettings
from streamd.dev.broker import LocalBroker
from streamd.flow import Changes
from streamd.kafka.oversize import DLQ_TRUNCATED_HEADER, fit_to_request, record_bytes
from streamd.kafka.packing import Batch
from streamd.kafka.publisher import KafkaPublisher, ShutdownOutcome
from streamd.kafka.spool import DB_NAME, Spool
from streamd.ops.logs import get_logger
from streamd.ops.metrics import Metrics
from streamd.records import OutRecord
from streamd.x.lines import interpret_line

pytestmark = pytest.mark.broker


def lines(n: int, start: int = 0) -> list[bytes]:
    return [
        orjson.dumps({"data": {"id": str(10**18 + i), "text": f"synthetic {i}"},
                      "matching_rules": [{"id": "1", "tag": "t"}]})
        for i in range(start, start + n)
    ]


def records_of(raw: list[bytes]) -> list[OutRecord]:
    out = [interpret_line(x, ce_source=b"s") for x in raw]
    return [r for r in out if isinstance(r, OutRecord)]


class Events:
    """A Logger that keeps the events (the publisher's logger is injectable)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    warning = error = info

    def named(self, name: str) -> list[dict[str, Any]]:
        return [kw for event, kw in self.events if event == name]


async def until_available(publisher: KafkaPublisher, changes: Changes) -> None:
    """Until the producer has started: records read before that go to the spool (the live
    path does not wait for a starting producer), and the drain is not what these test."""
    seen = 0
    with anyio.fail_after(20):
        while not publisher.available:
            seen = await changes.wait(seen)


async def until_drained(spool: Spool) -> None:
    for _ in range(400):  # 20 s
        if not spool.count:
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"the spool still holds {spool.count} records")


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool", max_bytes=1 << 30) as s:
        yield s


def test_publishes_every_record_in_batches_and_routes_dlq(
    broker: LocalBroker, topics: tuple[str, str], spool: Spool,
) -> None:
    topic, dlq = topics
    # Generous deadlines: this is about every record arriving, not how fast (a loaded CI
    # machine running other tests' brokers beside this one must not turn it red).
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap, topic=topic, dlq_topic=dlq,
                             enable_idempotence=False, ack_timeout=15, flush_timeout=30)
    metrics = Metrics()
    sent = lines(5000)
    bad = [b"{not json", b'{"data":{}}']

    async def main() -> KafkaPublisher:
        changes = Changes()
        publisher = KafkaPublisher(settings, metrics, get_logger("test"), spool=spool,
                                   changes=changes)
        send, receive = anyio.create_memory_object_stream[list[OutRecord]](16)
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher.run, receive)
            await until_available(publisher, changes)
            async with send:
                for i in range(0, len(sent), 100):
                    await send.send(records_of(sent[i:i + 100]))
                await send.send(records_of(bad))
            outcome = await publisher.shutdown(anyio.current_time() + 30)
        assert outcome == ShutdownOutcome(held=0, lost=0, error=None)
        return publisher

    publisher = anyio.run(main)
    assert publisher.stats.published == 5000
    assert publisher.stats.dlq_published == 2
    got = read_topic(broker.bootstrap, topic, expect=5000)
    assert sorted(r.value for r in got) == sorted(sent)
    assert all(r.key == orjson.loads(r.value)["data"]["id"].encode() for r in got)
    # the key partitioner spreads ids over the 3 partitions
    assert {r.partition for r in got} == {0, 1, 2}
    dlq_got = read_topic(broker.bootstrap, dlq, expect=2)
    assert sorted(r.value for r in dlq_got) == sorted(bad)
    assert metrics.tweets_published._value.get() == 5000


def tweet_line(i: int, text_bytes: int) -> bytes:
    return orjson.dumps({"data": {"id": str(2 * 10**18 + i), "text": "y" * text_bytes}})


def test_records_larger_than_a_request_go_to_the_dlq_and_the_rest_is_published(  # type: ignore[no-untyped-def]
    broker, topics, spool,
) -> None:
    """Item 8, client side: kafka.max_request_size is checked here (send_batch does not).
    A tweet over it goes to the DLQ as `oversize`, whole if its DLQ record fits, else cut
    with streamd_dlq_truncated; every other record is published, Kafka stays available."""
    topic, dlq = topics
    limit = 4096
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap, topic=topic, dlq_topic=dlq,
                             enable_idempotence=False, ack_timeout=5, flush_timeout=10,
                             max_request_size=limit)
    big = tweet_line(1, 50_000)
    # Too large as a tweet, small enough as a DLQ record (fewer headers): dead-lettered whole.
    medium = next(
        line for n in range(limit - 600, limit)
        if record_bytes(records_of([line := tweet_line(2, n)])[0]) > limit
        and DLQ_TRUNCATED_HEADER not in dict(fit_to_request(records_of([line])[0], limit)
                                             .headers)  # type: ignore[union-attr]
    )
    normal = lines(300)
    metrics = Metrics()
    log = Events()

    async def main() -> KafkaPublisher:
        changes = Changes()
        publisher = KafkaPublisher(settings, metrics, log, spool=spool, changes=changes)
        send, receive = anyio.create_memory_object_stream[list[OutRecord]](16)
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher.run, receive)
            await until_available(publisher, changes)
            async with send:
                await send.send(records_of([*normal[:150], big, *normal[150:200]]))
                await send.send(records_of([*normal[200:250], medium, *normal[250:]]))
            outcome = await publisher.shutdown(anyio.current_time() + 10)
        assert outcome == ShutdownOutcome(held=0, lost=0, error=None)
        return publisher

    publisher = anyio.run(main)
    got = read_topic(broker.bootstrap, topic, expect=300)
    assert sorted(r.value for r in got) == sorted(normal)  # partition-mates all published
    dead = {r.value[:40]: r for r in read_topic(broker.bootstrap, dlq, expect=2)}
    assert len(dead) == 2
    cut = dead[big[:40]]
    assert cut.headers["streamd_dlq_reason"] == b"oversize"
    assert b"max_request_size" in cut.headers["streamd_dlq_error"]
    assert cut.headers[DLQ_TRUNCATED_HEADER] == str(len(big)).encode()
    assert big.startswith(cut.value)
    assert len(cut.value) > limit - 500
    whole = dead[medium[:40]]
    assert whole.value == medium
    assert whole.headers["streamd_dlq_reason"] == b"oversize"
    assert DLQ_TRUNCATED_HEADER not in whole.headers
    assert publisher.stats.published == 300
    assert publisher.stats.dlq_published == 2
    assert metrics.tweets_dlq.labels(reason="oversize")._value.get() == 2
    assert metrics.publish_failures.labels(reason="too_large")._value.get() == 2
    # not unavailability: no flap
    assert not log.named("kafka.unavailable")
    assert metrics.kafka_available._value.get() == 1
    assert [e["action"] for e in log.named("kafka.record_too_large")] == ["truncated", "dlq"]


def test_a_batch_the_broker_refuses_as_too_large_is_split_and_its_tweet_dead_lettered(  # type: ignore[no-untyped-def]
    broker, topics, spool,
) -> None:
    """Item 8, broker side, through the real producer: Tansu has no message size limit, so
    the refusal itself is the outcome of a batch future (what aiokafka reports when Kafka
    answers MESSAGE_TOO_LARGE); everything after it (the resolver splitting the batch and
    publishing the halves, a single refused tweet going to the DLQ) runs against the
    broker. The records never go back to the spool path, and Kafka stays available."""
    topic, dlq = topics
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap, topic=topic, dlq_topic=dlq,
                             enable_idempotence=False, ack_timeout=5, flush_timeout=10)
    batch = records_of(lines(40, 500))
    alone = records_of([tweet_line(3, 2000)])
    metrics = Metrics()
    log = Events()

    async def main() -> KafkaPublisher:
        publisher = KafkaPublisher(settings, metrics, log, spool=spool)
        send, receive = anyio.create_memory_object_stream[list[OutRecord]](16)
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher.run, receive)
            with anyio.fail_after(10):
                # the refusal comes from a started producer
                producer = await publisher._ensure_producer()
            for records in (batch, alone):
                refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                submitted = Batch(producer.create_batch(), topic, 0)
                for record in records:
                    submitted.append(record, record)
                publisher._track(
                    publisher._ledger.submitted(submitted, refused, time.monotonic()))
                refused.set_exception(MessageSizeTooLargeError())
            send.close()
            outcome = await publisher.shutdown(anyio.current_time() + 10)
        assert outcome == ShutdownOutcome(held=0, lost=0, error=None)
        return publisher

    publisher = anyio.run(main)
    got = read_topic(broker.bootstrap, topic, expect=40)
    assert sorted(r.value for r in got) == sorted(r.value for r in batch)
    [dead] = read_topic(broker.bootstrap, dlq, expect=1)
    assert dead.value == alone[0].value
    assert dead.headers["streamd_dlq_reason"] == b"oversize"
    assert b"MessageSizeTooLargeError" in dead.headers["streamd_dlq_error"]
    assert publisher.stats.published == 40
    assert publisher.stats.dlq_published == 1
    assert metrics.tweets_dlq.labels(reason="oversize")._value.get() == 1
    assert not log.named("kafka.unavailable")
    assert metrics.kafka_available._value.get() == 1


def test_what_the_spool_holds_is_published_with_its_rule_tags(  # type: ignore[no-untyped-def]
    broker, topics, spool,
) -> None:
    """Tweets a previous run left in the spool are drained to Kafka and count per rule (the
    spool keeps their tags); Kafka's availability is announced on `changes`."""
    topic, dlq = topics
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap, topic=topic, dlq_topic=dlq,
                             enable_idempotence=False, ack_timeout=5, flush_timeout=10)
    left = records_of(lines(50, 7000))
    assert all(r.tags == ("t",) for r in left)
    spool.append(left)
    metrics = Metrics()
    changes = Changes()

    async def main() -> KafkaPublisher:
        publisher = KafkaPublisher(settings, metrics, get_logger("test"), spool=spool,
                                   changes=changes)
        send, receive = anyio.create_memory_object_stream[list[OutRecord]](16)
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher.run, receive)
            await until_available(publisher, changes)
            await until_drained(spool)
            send.close()
            await publisher.shutdown(anyio.current_time() + 10)
        return publisher

    publisher = anyio.run(main)
    assert publisher.stats.published == 50
    got = read_topic(broker.bootstrap, topic, expect=50)
    assert sorted(r.value for r in got) == sorted(r.value for r in left)
    by_rule = metrics.registry.get_sample_value(
        "streamd_tweets_published_by_rule_total", {"rule_tag": "t"})
    assert by_rule == 50


def test_a_spool_an_older_version_left_is_published(  # type: ignore[no-untyped-def]
    broker, topics, tmp_path,
) -> None:
    """A version-1 spool database (no tags column) opens, is migrated, and its rows are
    published."""
    topic, dlq = topics
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap, topic=topic, dlq_topic=dlq,
                             enable_idempotence=False, ack_timeout=5, flush_timeout=10)
    left = records_of(lines(30, 8000))
    with Spool(tmp_path / "old", max_bytes=1 << 30) as old:
        old.append(left)
    # Back to version 1's layout: no tags column.
    conn = sqlite3.connect(tmp_path / "old" / DB_NAME, isolation_level=None)
    conn.execute("ALTER TABLE entries DROP COLUMN tags")
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    metrics = Metrics()

    async def main(spool: Spool) -> KafkaPublisher:
        publisher = KafkaPublisher(settings, metrics, get_logger("test"), spool=spool)
        send, receive = anyio.create_memory_object_stream[list[OutRecord]](16)
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher.run, receive)
            await until_drained(spool)
            send.close()
            await publisher.shutdown(anyio.current_time() + 10)
        return publisher

    with Spool(tmp_path / "old", max_bytes=1 << 30) as spool:
        assert spool.count == 30
        publisher = anyio.run(main, spool)
    assert publisher.stats.published == 30
    got = read_topic(broker.bootstrap, topic, expect=30)
    assert sorted(r.value for r in got) == sorted(r.value for r in left)
    assert {r.key for r in got} == {r.key for r in left}
