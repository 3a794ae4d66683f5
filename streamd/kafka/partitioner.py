"""Kafka's default key partitioner (murmur2, as in the Java client and librdkafka's
"murmur2_random"), so a tweet id lands on the same partition whatever client wrote it.

aiokafka's murmur2 indexes the key byte by byte in Python; this one reads 4-byte words with
struct.iter_unpack and is about twice as fast (bench/: 2.4 vs 4.4 us per 19-byte tweet id),
bit-identical (tests/unit/test_partitioner.py compares them).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_SEED = 0x9747B28C
_WORDS = struct.Struct("<I").iter_unpack


def murmur2(data: bytes) -> int:
    length = len(data)
    h = (_SEED ^ length) & _MASK
    n4 = length & ~3
    for (k,) in _WORDS(data[:n4]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[n4 + 2] << 16
    if rest >= 2:
        h ^= data[n4 + 1] << 8
    if rest >= 1:
        h ^= data[n4]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes | None, partitions: Sequence[int], fallback: int = 0) -> int:
    """The partition for `key` among `partitions` (sorted ids). No key (DLQ lines): the
    caller's round-robin `fallback` index."""
    if key is None:
        return partitions[fallback % len(partitions)]
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
