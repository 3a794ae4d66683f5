"""Records too large for Kafka: pure decisions, no I/O.

Client side: a record bigger than `kafka.max_request_size` (checked by streamd, since
aiokafka's `send_batch` does not) becomes its DLQ record (`streamd_dlq_reason=oversize`), cut
to what fits if the DLQ would refuse it too (`streamd_dlq_truncated` = the original size).
Broker side: a batch refused as too large is split in halves down to single records; a
single refused tweet goes to the DLQ the same way; a single refused DLQ record is cut in
half until it fits or is empty. None of this says anything about Kafka's availability
(README, "Kafka records").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from aiokafka.producer.message_accumulator import BatchBuilder

from streamd.kafka.failures import is_too_large
from streamd.records import DLQ_OVERSIZE, OutRecord, dlq_record

# A Kafka record batch (v2) header: what a batch adds to the records in it.
BATCH_HEADER_BYTES: Final = 61
DLQ_TRUNCATED_HEADER: Final = "streamd_dlq_truncated"


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

