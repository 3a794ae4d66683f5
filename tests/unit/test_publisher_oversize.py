"""Records too large for Kafka: the failure taxonomy, the client-side fit, and what happens
to a batch the broker refuses as too large (split down to single records, a single tweet
to the DLQ, a DLQ record cut until it fits). Pure code: the "broker" here is a size limit."""

from __future__ import annotations

import anyio
import orjson
import pytest
from aiokafka import errors

from streamd.kafka.failures import NoAck, failure_reason
from streamd.kafka.oversize import (
    BATCH_HEADER_BYTES,
    DLQ_TRUNCATED_HEADER,
    Group,
    after_refusal,
    fit_to_request,
    oversize_dlq,
    record_bytes,
    resolve_refused,
    truncated_dlq,
)
from streamd.records import PUBLISH_FAILURE_REASONS, OutRecord, dlq_record
from streamd.x.lines import interpret_line


def tweet(i: int, text_bytes: int = 50) -> OutRecord:
    line = orjson.dumps({"data": {"id": str(10**18 + i), "text": "x" * text_bytes},
                         "matching_rules": [{"id": "1", "tag": "t"}]})
    record = interpret_line(line, ce_source=b"https://api.x.com/2/tweets/search/stream")
    assert isinstance(record, OutRecord)
    assert not record.dlq
    return record


def headers(record: OutRecord) -> dict[str, bytes]:
    return dict(record.headers)


# -- the taxonomy ------------------------------------------------------------------------------


@pytest.mark.parametrize(("exc", "reason"), [
    (errors.MessageSizeTooLargeError(), "too_large"),
    (errors.RecordListTooLargeError(), "too_large"),
    (errors.KafkaTimeoutError(), "timeout"),
    (errors.RequestTimedOutError(), "timeout"),
    (TimeoutError("no ack"), "timeout"),
    (NoAck("no ack within kafka.ack_timeout"), "timeout"),
    (errors.KafkaConnectionError("refused"), "unavailable"),
    (errors.NodeNotReadyError(), "unavailable"),
    (errors.NoBrokersAvailable(), "unavailable"),
    (ConnectionResetError(), "unavailable"),
    (errors.NotLeaderForPartitionError(), "other"),
])
def test_failure_reason(exc: BaseException, reason: str) -> None:
    assert failure_reason(exc) == reason
    assert reason in PUBLISH_FAILURE_REASONS  # the metric's label set, pre-initialised


# -- client side: bigger than kafka.max_request_size ------------------------------------------


def test_a_record_that_fits_is_left_alone() -> None:
    record = tweet(1)
    assert fit_to_request(record, record_bytes(record)) is record


def test_a_tweet_too_large_becomes_an_oversize_dlq_record_when_that_fits() -> None:
    record = tweet(1, 5000)
    dead = oversize_dlq(record, "x" * 40)
    # Between the two: the tweet (more headers) does not fit, its DLQ record does.
    limit = record_bytes(record) - 1
    assert record_bytes(dead) < limit
    out = fit_to_request(record, limit)
    assert out is not None
    assert out.dlq
    assert out.key is None
    assert out.value == record.value
    assert headers(out)["streamd_dlq_reason"] == b"oversize"
    assert b"max_request_size" in headers(out)["streamd_dlq_error"]
    assert DLQ_TRUNCATED_HEADER not in headers(out)
    assert out.timestamp_ms == record.timestamp_ms


@pytest.mark.parametrize("limit", [1024, 3000, 4999, 20_000])
def test_a_dlq_record_too_large_is_cut_to_exactly_what_fits(limit: int) -> None:
    record = tweet(1, 30_000)
    out = fit_to_request(record, limit)
    assert out is not None
    assert record_bytes(out) <= limit
    # as much as fits: one byte more would not
    whole = OutRecord(dlq=True, key=None, value=record.value, timestamp_ms=out.timestamp_ms,
                      headers=out.headers, read_at=out.read_at)
    assert record_bytes(truncated_dlq(whole, len(out.value) + 1)) > limit
    assert record.value.startswith(out.value)
    assert headers(out)[DLQ_TRUNCATED_HEADER] == str(len(record.value)).encode()
    assert headers(out)["streamd_dlq_reason"] == b"oversize"


def test_a_cut_keeps_the_first_original_size() -> None:
    line = b"not json " * 1000
    record = dlq_record(line, "decode", "bad", read_ms=1, read_at=0.0)
    once = truncated_dlq(record, 5000)
    twice = truncated_dlq(once, 100)
    assert twice.value == line[:100]
    assert headers(twice)[DLQ_TRUNCATED_HEADER] == str(len(line)).encode()
    assert [n for n, _ in twice.headers].count(DLQ_TRUNCATED_HEADER) == 1
    assert headers(twice)["streamd_dlq_reason"] == b"decode"  # its own reason stays


# -- broker side: a refused batch ------------------------------------------------------------


def test_a_failure_that_is_not_too_large_keeps_the_records_for_later() -> None:
    records = [tweet(i) for i in range(4)]
    decision = after_refusal(Group(records, records), errors.KafkaConnectionError())
    assert decision.retry == records
    assert not decision.resend
    assert not decision.dropped


def test_a_refused_batch_is_split_in_halves_in_order() -> None:
    records = [tweet(i) for i in range(5)]
    sources = [tweet(100 + i) for i in range(5)]
    decision = after_refusal(Group(records, sources), errors.MessageSizeTooLargeError())
    assert [g.records for g in decision.resend] == [records[:2], records[2:]]
    assert [g.sources for g in decision.resend] == [sources[:2], sources[2:]]
    assert not decision.retry


def test_a_single_refused_tweet_goes_to_the_dlq_as_oversize() -> None:
    record = tweet(1, 2000)
    decision = after_refusal(Group([record], [record]), errors.RecordListTooLargeError())
    [group] = decision.resend
    [dead] = group.records
    assert group.sources == [record]
    assert dead.dlq
    assert dead.value == record.value
    assert headers(dead)["streamd_dlq_reason"] == b"oversize"
    assert b"RecordListTooLargeError" in headers(dead)["streamd_dlq_error"]
    assert decision.replaced == [(record, dead)]


def test_a_single_refused_dlq_record_is_cut_in_half_then_dropped_when_empty() -> None:
    record = oversize_dlq(tweet(1, 2000), "why")
    decision = after_refusal(Group([record], [record]), errors.MessageSizeTooLargeError())
    [cut] = decision.resend[0].records
    assert cut.value == record.value[:len(record.value) // 2]
    assert headers(cut)[DLQ_TRUNCATED_HEADER] == str(len(record.value)).encode()
    empty = truncated_dlq(record, 0)
    assert after_refusal(Group([empty], [empty]),
                         errors.MessageSizeTooLargeError()).dropped == [empty]


class Broker:
    """Takes a batch if it is at most `limit` bytes; or is down."""

    def __init__(self, limit: int, down: bool = False) -> None:
        self.limit = limit
        self.down = down
        self.topic: list[tuple[OutRecord, OutRecord]] = []  # (sent, source)
        self.calls = 0

    async def send(self, group: Group) -> list[tuple[Group, BaseException | None]]:
        self.calls += 1
        if self.down:
            return [(group, errors.KafkaConnectionError("down"))]
        size = BATCH_HEADER_BYTES + sum(record_bytes(r) - BATCH_HEADER_BYTES
                                        for r in group.records)
        if size > self.limit:
            return [(group, errors.MessageSizeTooLargeError())]
        self.topic.extend(zip(group.records, group.sources, strict=True))
        return [(group, None)]


def test_partition_mates_are_published_and_the_big_tweet_is_dead_lettered_cut() -> None:
    mates = [tweet(i) for i in range(40)]
    big = tweet(99, 100_000)
    batch = [*mates[:17], big, *mates[17:]]
    broker = Broker(limit=8_000)
    resolution = anyio.run(resolve_refused, Group(batch, batch),
                           errors.MessageSizeTooLargeError(), broker.send)
    assert sorted(map(id, resolution.published)) == sorted(map(id, batch))
    assert not resolution.retry
    assert not resolution.dropped
    published = [sent for sent, _ in broker.topic]
    assert [r for r in published if not r.dlq] == mates  # in order, each once
    [dead] = [r for r in published if r.dlq]
    assert headers(dead)["streamd_dlq_reason"] == b"oversize"
    assert headers(dead)[DLQ_TRUNCATED_HEADER] == str(len(big.value)).encode()
    assert big.value.startswith(dead.value)
    # at least half of what would fit is kept (the broker's limit is not known)
    assert record_bytes(dead) > broker.limit // 2
    assert resolution.refusals < 40  # halving: a few refusals per level, never a loop


def test_a_broker_that_refuses_everything_ends_with_drops_not_a_loop() -> None:
    records = [tweet(i, 500) for i in range(8)]
    broker = Broker(limit=0)
    resolution = anyio.run(resolve_refused, Group(records, records),
                           errors.MessageSizeTooLargeError(), broker.send)
    assert sorted(map(id, resolution.dropped)) == sorted(map(id, records))
    assert not broker.topic
    assert broker.calls < 8 * 20


def test_kafka_going_away_during_a_split_leaves_the_rest_for_a_retry() -> None:
    records = [tweet(i) for i in range(6)]
    broker = Broker(limit=10**9, down=True)
    resolution = anyio.run(resolve_refused, Group(records, records),
                           errors.MessageSizeTooLargeError(), broker.send)
    assert sorted(map(id, resolution.retry)) == sorted(map(id, records))
    assert isinstance(resolution.error, errors.KafkaConnectionError)
    assert not resolution.published
