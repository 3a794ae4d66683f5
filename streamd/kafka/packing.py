"""Records into per-partition batches: pure, no I/O (a `BatchBuilder` only encodes).

Each record goes to its topic's partition by key (murmur2, like every Kafka client, so a
tweet id always lands on one partition), in order. A record that would make a request
larger than `kafka.max_request_size` is placed alone, or replaced by its DLQ record cut to
fit (`streamd.kafka.oversize`); what is replaced or dropped is reported in `Packed.notes`
for the caller to log and count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from streamd.kafka.oversize import BATCH_HEADER_BYTES, fit_to_request
from streamd.kafka.partitioner import partition_for
from streamd.records import OutRecord


class Builder(Protocol):
    """What packing needs of aiokafka's BatchBuilder."""

    def append(self, *, timestamp: int | None, key: bytes | None, value: bytes | None,
               headers: Sequence[tuple[str, bytes]] = ...) -> Any: ...

    def close(self) -> None: ...


CreateBatch = Callable[[], Builder]


class Batch:
    """A BatchBuilder plus the records in it (to retry or spool them if the batch fails)
    and the source record each stands for (the record as read: a tweet published as its
    DLQ record still settles that tweet)."""

    __slots__ = ("builder", "nbytes", "partition", "placed", "records", "sources", "topic")

    def __init__(self, builder: Builder, topic: str, partition: int) -> None:
        self.builder = builder
        self.topic = topic
        self.partition = partition
        self.records: list[OutRecord] = []
        self.sources: list[OutRecord] = []
        self.nbytes = 0
        self.placed = False  # submitted (in flight) or handed to the pending records

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

    def without_last(self, create_batch: CreateBatch) -> Batch:
        """This batch without its last record (a BatchBuilder cannot take one back)."""
        batch = Batch(create_batch(), self.topic, self.partition)
        for record, source in zip(self.records[:-1], self.sources[:-1], strict=True):
            batch.append(record, source)
        return batch


@dataclass(frozen=True, slots=True)
class Oversize:
    """A record that did not fit a request: `replacement` went out in its place (its DLQ
    record, maybe cut), or nothing could (None: dropped)."""

    source: OutRecord
    replacement: OutRecord | None


@dataclass(slots=True)
class Packed:
    batches: list[Batch]
    notes: list[Oversize] = field(default_factory=list)  # in the order they happened

    @property
    def dropped(self) -> list[OutRecord]:
        """Sources nothing can be sent for: settled (reported), never to be retried."""
        return [n.source for n in self.notes if n.replacement is None]


class Packer:
    """Packs records for one producer's topics. `partitions` is filled once the producer
    has fetched metadata."""

    def __init__(self, topic: str, dlq_topic: str, max_request_size: int) -> None:
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.limit = max_request_size
        self.partitions: dict[str, list[int]] = {}
        self._round_robin = 0

    def pack(
        self, create_batch: CreateBatch, records: Sequence[OutRecord],
        sources: Sequence[OutRecord] | None = None,
    ) -> Packed:
        """Records into per-partition batches, in order."""
        limit = self.limit
        topic, dlq_topic, partitions = self.topic, self.dlq_topic, self.partitions
        builders: dict[tuple[str, int], Batch] = {}
        out = Packed([])
        self._round_robin += 1  # spreads keyless (DLQ) records over rounds
        round_robin = self._round_robin
        for record, source in zip(records, records if sources is None else sources,
                                  strict=True):
            # Inline (this loop runs per record): what _slot() computes.
            name = dlq_topic if record.dlq else topic
            slot = (name, partition_for(record.key, partitions[name], round_robin))
            batch = builders.get(slot)
            if batch is None:
                batch = builders[slot] = Batch(create_batch(), *slot)
            size = batch.append(record, source)
            if not size:  # full: it goes out as it is
                out.batches.append(batch)
                batch = builders[slot] = Batch(create_batch(), *slot)
                size = batch.append(record, source)
            if size and BATCH_HEADER_BYTES + size <= limit:
                continue
            if size:  # it must not go out like this: take it back out of its batch
                builders[slot] = batch.without_last(create_batch)
            self._place_oversize(record, source, builders, out, create_batch)
        out.batches.extend(b for b in builders.values() if b.records)
        return out

    def _slot(self, record: OutRecord) -> tuple[str, int]:
        name = self.dlq_topic if record.dlq else self.topic
        return name, partition_for(record.key, self.partitions[name], self._round_robin)

    def _place_oversize(
        self, record: OutRecord, source: OutRecord, builders: dict[tuple[str, int], Batch],
        out: Packed, create_batch: CreateBatch,
    ) -> None:
        """Place a record that did not fit a request beside others: alone if it fits
        alone (a few bytes of offset and time deltas can make the difference), else its
        DLQ record, cut to fit; else note it dropped."""
        limit = self.limit
        for _ in range(3):  # the record alone; its replacement; that alone
            fitted = fit_to_request(record, limit)
            if fitted is None:
                break
            if fitted is not record:
                out.notes.append(Oversize(source, fitted))
                record = fitted
            slot = self._slot(record)
            batch = builders.get(slot)
            if batch is not None and batch.records:
                out.batches.append(batch)
            batch = builders[slot] = Batch(create_batch(), *slot)
            size = batch.append(record, source)
            if size and BATCH_HEADER_BYTES + size <= limit:
                return
            builders[slot] = batch.without_last(create_batch)
        out.notes.append(Oversize(source, None))
