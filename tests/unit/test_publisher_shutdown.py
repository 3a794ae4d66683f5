"""KafkaPublisher.shutdown() against a broker that never answers (a real socket that accepts
connections and says nothing: the producer's start hangs) and a real spool: it returns by
its deadline, keeps every record it held (past spool.max_bytes), and when the disk refuses
the write, says exactly how many records were lost."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import orjson
import pytest

from streamd.config import KafkaSettings
from streamd.kafka.publisher import KafkaPublisher, ShutdownOutcome
from streamd.kafka.spool import Spool
from streamd.ops.logs import get_logger
from streamd.ops.metrics import Metrics
from streamd.records import OutRecord
from streamd.x.lines import interpret_line

# Longer than any test: a wait on Kafka that is not cut by the shutdown shows as a hang.
KAFKA_TIMEOUT = 60.0


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """Accepts TCP connections (the kernel does, from the backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def settings(bootstrap: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=bootstrap, topic="t", dlq_topic="t.dlq",
                         enable_idempotence=False, ack_timeout=KAFKA_TIMEOUT,
                         startup_timeout=KAFKA_TIMEOUT, request_timeout=KAFKA_TIMEOUT,
                         flush_timeout=2.0)


def tweets(n: int, start: int = 0) -> list[OutRecord]:
    out = []
    for i in range(start, start + n):
        line = orjson.dumps({"data": {"id": str(10**18 + i), "text": f"synthetic {i}"}})
        record = interpret_line(line, ce_source=b"s")
        assert isinstance(record, OutRecord)
        out.append(record)
    return out


def spooled_ids(spool: Spool) -> list[str]:
    return [r.tweet_id or "" for _, r in spool.peek(limit=1 << 30, max_bytes=1 << 40)]


async def run_then_shut_down(
    publisher: KafkaPublisher, batches: list[list[OutRecord]], *, budget: float,
    before_shutdown: float = 0.3, queued: list[list[OutRecord]] | None = None,
    pace: float = 0.0,
) -> tuple[ShutdownOutcome, float]:
    """Feed `batches` through run() (`pace` s apart), leave `queued` in the queue, close it,
    shut down."""
    send, receive = anyio.create_memory_object_stream[list[OutRecord]](1000)
    async with anyio.create_task_group() as tg:
        tg.start_soon(publisher.run, receive)
        for batch in batches:
            await send.send(batch)
            await anyio.sleep(pace)
        await anyio.sleep(before_shutdown)
        for batch in queued or []:
            send.send_nowait(batch)
        send.close()
        started = anyio.current_time()
        outcome = await publisher.shutdown(started + budget)
        took = anyio.current_time() - started
        # run() has ended by now: the task group has nothing left to wait for.
    return outcome, took


def test_everything_held_goes_to_the_spool_past_max_bytes_within_the_deadline(
    silent_broker: str, tmp_path: Path,
) -> None:
    """The spool fills (max_bytes), records wait in memory, the producer is mid-start (the
    warm-up and a drain round both wait on it): shutdown spools them all, by the deadline."""
    sent = tweets(1000)
    with Spool(tmp_path / "spool", max_bytes=60_000) as spool:
        publisher = KafkaPublisher(settings(silent_broker), Metrics(), get_logger("test"),
                                   spool=spool, spool_interval=0.05)
        batches = [sent[i:i + 50] for i in range(0, 1000, 50)]
        outcome, took = anyio.run(
            lambda: run_then_shut_down(publisher, batches, budget=2.0, pace=0.06))
        assert not publisher.spool_room.is_open()  # it was full: records waited in memory
        assert outcome == ShutdownOutcome(held=1000, lost=0, error=None)
        assert took < 2.0 + 0.5
        assert spool.count == 1000
        assert spool.bytes > spool.max_bytes
        assert sorted(spooled_ids(spool)) == sorted(r.tweet_id or "" for r in sent)


def test_records_taken_and_still_queued_are_all_kept_when_run_is_cut(
    silent_broker: str, tmp_path: Path,
) -> None:
    """The producer's start hangs and the spool refuses every round (full): run() holds
    records it took off the queue, more wait in the queue. Cutting run() at the deadline
    keeps every one of them."""
    with Spool(tmp_path / "spool", max_bytes=1) as spool:
        publisher = KafkaPublisher(settings(silent_broker), Metrics(), get_logger("test"),
                                   spool=spool, spool_interval=0.05)
        outcome, took = anyio.run(lambda: run_then_shut_down(
            publisher, [tweets(100)], budget=1.5, before_shutdown=0.2,
            queued=[tweets(50, 100), tweets(50, 150)]))
        assert outcome == ShutdownOutcome(held=200, lost=0, error=None)
        assert took < 1.5 + 0.5
        assert sorted(spooled_ids(spool)) == sorted(r.tweet_id or "" for r in tweets(200))


def test_a_disk_that_refuses_the_final_write_is_reported_with_the_exact_count(
    silent_broker: str, tmp_path: Path,
) -> None:
    sent = tweets(1000)
    with Spool(tmp_path / "spool", max_bytes=20_000) as spool:
        publisher = KafkaPublisher(settings(silent_broker), Metrics(), get_logger("test"),
                                   spool=spool, spool_interval=0.05)
        # The disk is full from the start: SQLite may not grow the file any more.
        (pages,) = spool._conn.execute("PRAGMA page_count").fetchone()
        spool._conn.execute(f"PRAGMA max_page_count = {pages}")
        before = spool.count
        batches = [sent[i:i + 100] for i in range(0, 1000, 100)]
        started = time.monotonic()
        outcome, _ = anyio.run(lambda: run_then_shut_down(publisher, batches, budget=2.0))
        assert time.monotonic() - started < 10
        kept = spool.count - before
        assert outcome.lost > 0
        assert outcome.lost + kept == 1000  # exact: every record is kept or counted
        assert outcome.held == spool.count
        assert outcome.error is not None
        assert "disk full" in outcome.error
        spool._conn.execute("PRAGMA max_page_count = 1073741823")
