from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as reference
from hypothesis import given
from hypothesis import strategies as st

from streamd.kafka.partitioner import murmur2, partition_for


@given(st.binary(max_size=64))
def test_murmur2_is_bit_identical_to_the_java_client_port(data: bytes) -> None:
    assert murmur2(data) == reference(data)


@given(st.integers(10**17, 10**19 - 1), st.integers(1, 64))
def test_tweet_ids_land_where_every_kafka_client_puts_them(tweet_id: int, n: int) -> None:
    key = str(tweet_id).encode()
    partitions = list(range(n))
    assert partition_for(key, partitions) == DefaultPartitioner()(key, partitions, partitions)


def test_keyless_records_use_the_fallback_index() -> None:
    assert partition_for(None, [0, 1, 2], 4) == 1


# Kafka's own vectors (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java,
# testMurmur2), as Java's signed ints.
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_murmur2_matches_kafkas_own_test_vectors() -> None:
    for data, signed in KAFKA_VECTORS.items():
        assert murmur2(data) == signed & 0xFFFFFFFF, data
