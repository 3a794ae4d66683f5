"""What the publisher writes to the log about Kafka's availability, through the real logging
set-up: no `kafka.recovered` at start-up, and one `kafka.start_failed` per throttle interval
while Kafka is down (not one per attempt)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from streamd.config import KafkaSettings
from streamd.dev.broker import LocalBroker, free_port
from streamd.flow import Changes
from streamd.kafka.publisher import KafkaPublisher
from streamd.kafka.spool import Spool
from streamd.ops.logs import configure_logging, get_logger
from streamd.ops.metrics import Metrics
from streamd.records import OutRecord
from streamd.x.lines import interpret_line


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    yield stream
    configure_logging("info", "json")


def events(out: io.StringIO, name: str) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    return [e for e in lines if e["event"] == name]


def batch(i: int) -> list[OutRecord]:
    line = orjson.dumps({"data": {"id": str(10**18 + i), "text": "t"}})
    record = interpret_line(line, ce_source=b"s")
    assert isinstance(record, OutRecord)
    return [record]


class Attempts:
    """The publisher's logger, passing every call on to the real (throttled) one and
    signalling each failed producer start, logged or not."""

    def __init__(self) -> None:
        self._log = get_logger("streamd.kafka.publisher")
        self.failed = 0
        self.changed = anyio.Event()

    def info(self, event: str, **kw: Any) -> None:
        self._log.info(event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._log.error(event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        if event == "kafka.start_failed":
            self.failed += 1
            self.changed.set()
            self.changed = anyio.Event()
        self._log.warning(event, **kw)


def test_kafka_down_logs_start_failed_once_per_interval(
    out: io.StringIO, tmp_path: Path,
) -> None:
    nobody = free_port()  # connection refused: every producer start fails at once
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{nobody}", topic="t",
                             dlq_topic="t.dlq", startup_timeout=2, flush_timeout=2)
    metrics = Metrics()

    attempts = Attempts()

    async def main() -> None:
        publisher = KafkaPublisher(settings, metrics, attempts, spool=spool)
        send, receive = anyio.create_memory_object_stream[list[OutRecord]](16)
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher.run, receive)
            with anyio.fail_after(10):
                for i in range(6):  # each batch tries to start the producer again
                    await send.send(batch(i))
                    while attempts.failed < i + 1:
                        await attempts.changed.wait()
            send.close()
            await publisher.shutdown(anyio.current_time() + 2)

    with Spool(tmp_path / "spool", 1 << 20) as spool:
        anyio.run(main)
    assert attempts.failed >= 6
    assert len(events(out, "kafka.start_failed")) == 1
    assert len(events(out, "kafka.unavailable")) == 1  # a state change: never throttled
    assert events(out, "kafka.recovered") == []


@pytest.mark.broker
def test_kafka_answering_at_start_up_is_not_a_recovery(
    out: io.StringIO, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
) -> None:
    topic, dlq = topics
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap, topic=topic, dlq_topic=dlq,
                             enable_idempotence=False, ack_timeout=5, flush_timeout=10)
    metrics = Metrics()

    async def main() -> KafkaPublisher:
        changes = Changes()
        publisher = KafkaPublisher(settings, metrics, get_logger("streamd.kafka.publisher"),
                                   spool=spool, changes=changes)
        send, receive = anyio.create_memory_object_stream[list[OutRecord]](16)
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher.run, receive)
            # Records read before the producer started would be spooled (and stay there:
            # the shutdown does not drain): wait for Kafka first.
            with anyio.fail_after(10):
                await changes.wait(0)
            async with send:
                await send.send(batch(0))
            await publisher.shutdown(anyio.current_time() + 10)
        return publisher

    with Spool(tmp_path / "spool", 1 << 20) as spool:
        publisher = anyio.run(main)
    assert publisher.stats.published == 1
    assert metrics.registry.get_sample_value("streamd_kafka_available") == 1
    assert events(out, "kafka.recovered") == []
    assert events(out, "kafka.unavailable") == []
