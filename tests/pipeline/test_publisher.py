"""The publisher against a real broker: batching, keys, headers, DLQ, acks counted."""

from __future__ import annotations

import anyio
import orjson
import pytest
from rig import read_topic

from streamd.config import KafkaSettings
from streamd.logs import get_logger
from streamd.metrics import Metrics
from streamd.publisher import KafkaPublisher
from streamd.records import OutRecord, interpret_line

pytestmark = pytest.mark.broker


def lines(n: int) -> list[bytes]:
    return [
        orjson.dumps({"data": {"id": str(10**18 + i), "text": f"synthetic {i}"},
                      "matching_rules": [{"id": "1", "tag": "t"}]})
        for i in range(n)
    ]


def test_publishes_every_record_in_batches_and_routes_dlq(broker, topics) -> None:  # type: ignore[no-untyped-def]
    topic, dlq = topics
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap, topic=topic, dlq_topic=dlq,
                             enable_idempotence=False, publish_timeout=5, flush_timeout=10)
    metrics = Metrics()
    sent = lines(5000)
    bad = [b"{not json", b'{"data":{}}']

    async def main() -> KafkaPublisher:
        publisher = KafkaPublisher(settings, metrics, get_logger("test"))
        send, receive = anyio.create_memory_object_stream[list[OutRecord]](16)
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher.run, receive)
            async with send:
                for i in range(0, len(sent), 100):
                    batch = [interpret_line(x, ce_source=b"s") for x in sent[i:i + 100]]
                    await send.send([r for r in batch if isinstance(r, OutRecord)])
                await send.send([r for r in (interpret_line(x, ce_source=b"s") for x in bad)
                                 if isinstance(r, OutRecord)])
        assert await publisher.close(10) == 0
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
