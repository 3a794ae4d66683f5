"""Packing records into per-partition batches (streamd.kafka.packing), pure: partitions by
key, order kept, full batches go out, records too large for a request replaced or dropped
and reported."""

from __future__ import annotations

from typing import Any

from aiokafka.producer.message_accumulator import BatchBuilder

from streamd.kafka.oversize import DLQ_TRUNCATED_HEADER, record_bytes
from streamd.kafka.packing import Packer
from streamd.kafka.partitioner import partition_for
from streamd.records import OutRecord, dlq_record


def tweet(i: int, size: int = 20, headers: list[tuple[str, bytes]] | None = None) -> OutRecord:
    return OutRecord(dlq=False, key=str(10**18 + i).encode(), value=b"x" * size,
                     timestamp_ms=1_700_000_000_000 + i, headers=headers or [],
                     read_at=0.0, tweet_id=str(10**18 + i))


def packer(limit: int = 1 << 20) -> Packer:
    p = Packer("t", "t.dlq", limit)
    p.partitions = {"t": [0, 1, 2], "t.dlq": [0]}
    return p


def builders(size: int = 1 << 20) -> Any:
    return lambda: BatchBuilder(size, 0)


def test_records_go_to_their_key_partition_in_order() -> None:
    records = [tweet(i) for i in range(100)]
    packed = packer().pack(builders(), records)
    assert not packed.notes
    assert sum(len(b.records) for b in packed.batches) == 100
    for batch in packed.batches:
        assert batch.topic == "t"
        assert all(partition_for(r.key, [0, 1, 2]) == batch.partition for r in batch.records)
        assert [r.timestamp_ms for r in batch.records] == sorted(
            r.timestamp_ms for r in batch.records)
        assert batch.sources == batch.records
        assert batch.nbytes > 0
    assert {b.partition for b in packed.batches} == {0, 1, 2}


def test_dlq_records_go_to_the_dlq_topic() -> None:
    line = dlq_record(b"{not json", "decode", "bad", read_ms=1, read_at=0.0)
    packed = packer().pack(builders(), [tweet(1), line])
    assert {(b.topic, len(b.records)) for b in packed.batches} == {("t", 1), ("t.dlq", 1)}


def test_a_full_batch_goes_out_and_the_next_one_starts() -> None:
    records = [tweet(3 * i, size=200) for i in range(40)]  # several per partition
    packed = packer().pack(builders(1024), records)
    assert len(packed.batches) > 3
    assert sorted(id(r) for b in packed.batches for r in b.records) == sorted(map(id, records))


def test_a_record_too_large_for_a_request_is_replaced_by_its_dlq_record() -> None:
    limit = 2048
    big = tweet(7, size=5000)
    mates = [tweet(i) for i in range(10)]
    packed = packer(limit).pack(builders(), [*mates[:5], big, *mates[5:]])
    [note] = packed.notes
    assert note.source is big
    assert note.replacement is not None
    assert note.replacement.dlq
    assert dict(note.replacement.headers)[DLQ_TRUNCATED_HEADER] == b"5000"
    assert record_bytes(note.replacement) <= limit
    sent = [r for b in packed.batches for r in b.records]
    assert note.replacement in sent
    assert big not in sent
    assert all(r in sent for r in mates)
    [dlq_batch] = [b for b in packed.batches if b.topic == "t.dlq"]
    assert dlq_batch.sources == [big]  # the DLQ record settles the tweet
    assert packed.dropped == []


def test_a_record_nothing_can_be_sent_for_is_dropped_and_reported() -> None:
    # A DLQ record keeps its headers when cut: these alone are too large.
    hopeless = OutRecord(dlq=True, key=None, value=b"line", timestamp_ms=1, read_at=0.0,
                         headers=[("streamd_dlq_reason", b"decode"), ("h", b"y" * 3000)])
    packed = packer(1024).pack(builders(), [hopeless, tweet(2)])
    assert packed.dropped == [hopeless]
    assert [r.tweet_id for b in packed.batches for r in b.records] == [tweet(2).tweet_id]


def test_keyless_records_spread_over_rounds() -> None:
    p = packer()
    p.partitions["t.dlq"] = [0, 1, 2, 3]
    line = dlq_record(b"x", "decode", "bad", read_ms=1, read_at=0.0)
    seen = {p.pack(builders(), [line]).batches[0].partition for _ in range(8)}
    assert len(seen) > 1
