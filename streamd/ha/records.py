"""The leader record on `ha.topic` (README "High availability").

The leader writes one record, key = `ha.group`, value = JSON:

* `connected`: each time it learns the id of a new X connection of its own (the SlotKeeper
  learns it through X's Connections API right after the connect);
* `reading`: every `ha.session_timeout` seconds while it leads, with the time it last read
  from X: a successor of a leader that died without a word sizes its backfill from it;
* `released`: when it stops leading (lost, fenced, SIGTERM), with the exact time of its last
  read.

A newly elected leader reads the last record of its group (`RecordLog.last`), terminates the
connections it names if X still counts them (`connections.terminated` why=handover), and
sizes the backfill from `last_read_at` (the start of the hand-over gap).

Records are small and rare (one every session timeout while leading); the topic may be
compacted (`cleanup.policy=compact`: the key is the group) or get a short retention.
Everything read back is checked: a record that is not what `to_bytes` wrote reads as none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamd.ha.bounded import bounded, settle
from streamd.ops.logs import Logger

__all__ = ["KINDS", "LeaderRecord", "RecordLog"]

KINDS: Final = ("connected", "reading", "released")
RECORD_VERSION: Final = 1
# Most bytes a record may have (a few hundred in practice): anything larger is not ours.
MAX_RECORD_BYTES: Final = 16 * 1024
# How far back the last record of our group is looked for (other groups may share the topic).
LOOKBACK: Final = 200
# The most connection ids a record carries (stream.connections is 1 or 2).
MAX_IDS: Final = 8
_MAX_TEXT: Final = 256


@dataclass(frozen=True, slots=True)
class LeaderRecord:
    group: str
    member: str  # the writer's member id in the group
    instance: str  # which streamd (host and spool directory): streamd.ha.election.instance_id
    host: str
    kind: str  # one of KINDS
    connection_ids: tuple[str, ...] = ()  # its X connections (Connections API ids)
    connected_at: float | None = None  # epoch seconds of its latest connect
    last_read_at: float | None = None  # epoch seconds of its last read from X
    written_at: float = 0.0

    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "v": RECORD_VERSION, "group": self.group, "member": self.member,
            "instance": self.instance, "host": self.host, "kind": self.kind,
            "connection_ids": list(self.connection_ids), "connected_at": self.connected_at,
            "last_read_at": self.last_read_at, "written_at": self.written_at,
        })

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> LeaderRecord | None:
        """Tolerant: anything but a record `to_bytes` wrote reads as None."""
        if not raw or len(raw) > MAX_RECORD_BYTES:
            return None
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(obj, dict) or obj.get("v") != RECORD_VERSION:
            return None
        group, member, instance = _text(obj, "group"), _text(obj, "member"), _text(obj, "instance")
        kind = obj.get("kind")
        if group is None or member is None or instance is None or kind not in KINDS:
            return None
        ids = obj.get("connection_ids")
        connection_ids = tuple(
            i for i in (ids if isinstance(ids, list) else [])[:MAX_IDS]
            if isinstance(i, str) and 0 < len(i) <= 128 and i.isprintable())
        return cls(
            group=group, member=member, instance=instance, host=_text(obj, "host") or "",
            kind=str(kind), connection_ids=connection_ids,
            connected_at=_number(obj, "connected_at"), last_read_at=_number(obj, "last_read_at"),
            written_at=_number(obj, "written_at") or 0.0,
        )


def _text(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if isinstance(value, str) and value.isprintable() and len(value) <= _MAX_TEXT:
        return value
    return None


def _number(obj: Mapping[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


class RecordLog:
    """Writes this instance's records to partition 0 of `topic` and reads the group's last
    one. Every call is bounded by `timeout` seconds and never raises but cancellation: a
    failure is logged (`ha.record_failed`) and reported as False / None."""

    def __init__(
        self, client: Mapping[str, Any], topic: str, group: str, log: Logger, *,
        timeout: float,
    ) -> None:
        """`client`: aiokafka's connection settings (bootstrap, client id, security)."""
        self._client = dict(client)
        self._topic = topic
        self._group = group
        self._key = group.encode()
        self._log = log
        self._timeout = timeout
        self._producer: AIOKafkaProducer | None = None
        self._lock = anyio.Lock()

    async def start(self) -> bool:
        """Start the producer (the election calls this as it joins: a leader's first record
        must not wait for a producer's start). False if it could not start yet."""
        async with self._lock:
            return await self._ensure_producer() is not None

    async def _ensure_producer(self) -> AIOKafkaProducer | None:
        if self._producer is not None:
            return self._producer
        producer = AIOKafkaProducer(
            **self._client, acks="all", enable_idempotence=False, linger_ms=0,
            request_timeout_ms=int(self._timeout * 1000))
        try:
            await bounded(producer.start(), self._timeout)
        except Exception as exc:  # aiokafka raises its own and OSError kinds alike
            await settle(producer.stop(), 2.0)
            self._failed("start the record producer", exc)
            return None
        self._producer = producer
        return producer

    async def write(self, record: LeaderRecord, *, within: float | None = None) -> bool:
        """`within`: shorter than the log's own timeout (a daemon that stops has little
        time)."""
        if within is None or within > self._timeout:
            within = self._timeout
        with anyio.move_on_after(within) as scope:
            async with self._lock:
                return await self._write(record, within)
        if scope.cancelled_caught:
            self._failed(f"write a {record.kind} record", TimeoutError())
        return False

    async def _write(self, record: LeaderRecord, within: float) -> bool:
        producer = await self._ensure_producer()
        if producer is None:
            return False
        try:
            await bounded(producer.send_and_wait(
                self._topic, record.to_bytes(), key=self._key, partition=0), within)
        except Exception as exc:
            self._failed(f"write a {record.kind} record", exc)
            return False
        return True

    async def last(self) -> LeaderRecord | None:
        """The newest record of this group on the topic, or None (none yet, or unreadable)."""
        try:
            return await bounded(self._read_last(), self._timeout)
        except Exception as exc:
            self._failed("read the last record", exc)
            return None

    async def _read_last(self) -> LeaderRecord | None:
        consumer = AIOKafkaConsumer(
            **self._client, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", request_timeout_ms=int(self._timeout * 1000))
        tp = TopicPartition(self._topic, 0)
        newest: LeaderRecord | None = None
        try:
            await consumer.start()
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            if end <= 0:
                return None
            consumer.seek(tp, max(0, end - LOOKBACK))
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=500)
                for message in batch.get(tp, []):
                    if message.key != self._key:
                        continue
                    record = LeaderRecord.from_bytes(message.value)
                    if record is not None and record.group == self._group:
                        newest = record
        finally:
            await settle(consumer.stop(), 2.0)
        return newest

    async def close(self, within: float = 2.0) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await settle(producer.stop(), within)

    def _failed(self, what: str, exc: BaseException) -> None:
        error = (f"no answer within {self._timeout:g} s" if isinstance(exc, TimeoutError)
                 else f"{type(exc).__name__}: {exc}")
        self._log.warning("ha.record_failed", topic=self._topic, detail=f"{what}: {error}")

