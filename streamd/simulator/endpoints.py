"""The stream endpoints the simulator serves, after X's OpenAPI 2.166: the filtered stream,
the 1% and 10% samples, the firehose and the language firehoses; and which share of the
timeline each one delivers.

Shares are decided by the tweet id alone, so they are deterministic and every endpoint
agrees on them (our choice; X documents none of this):

* `h = splitmix64(id)` (the 64-bit finaliser of SplitMix64, over the id as an integer);
* firehose partition (of P): `h % P + 1`, so the P partitions are disjoint and their union
  is the whole timeline; a language firehose partitions its language's tweets the same way,
  with its own P;
* sample bucket: `(h >> 32) % 100`; the 1% sample is bucket 0, the 10% sample buckets 0-9,
  its partition `bucket % 2 + 1` (two disjoint halves). So the 1% sample is inside
  partition 1 of the 10% sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamd.simulator import problems
from streamd.simulator.fields import LIST_PARAMETERS

FILTERED = "filtered"
SAMPLE = "sample"
SAMPLE10 = "sample10"
FIREHOSE = "firehose"
# Families whose access `endpoint_tiers` decides (the filtered stream follows the tier).
FAMILIES: tuple[str, ...] = (SAMPLE, SAMPLE10, FIREHOSE)
LANGS: tuple[str, ...] = ("en", "ja", "ko", "pt")

_FIELDS = tuple(sorted(LIST_PARAMETERS))
_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class StreamEndpoint:
    """One stream path. `max_partition`: the OpenAPI maximum of its required `partition`
    (None: it has no such parameter); `recovery`: it takes start_time/end_time."""

    path: str
    name: str  # endpoint_name in the Connections API
    family: str
    lang: str | None = None
    max_partition: int | None = None
    recovery: bool = True

    @property
    def parameters(self) -> tuple[str, ...]:
        """Its query parameters, sorted (as the unknown-parameter error lists them)."""
        names = ["backfill_minutes", *_FIELDS]
        if self.recovery:
            names += ["end_time", "start_time"]
        if self.max_partition is not None:
            names.append("partition")
        return tuple(sorted(names))


STREAM_ENDPOINTS: dict[str, StreamEndpoint] = {
    e.path: e
    for e in (
        StreamEndpoint("/2/tweets/search/stream", "filtered_stream", FILTERED),
        # The 1% sample has no partition and no recovery ("use the Search endpoint
        # instead", X's recovery-and-redundancy page); backfill_minutes it has.
        StreamEndpoint("/2/tweets/sample/stream", "sample_stream", SAMPLE, recovery=False),
        StreamEndpoint("/2/tweets/sample10/stream", "sample10_stream", SAMPLE10,
                       max_partition=2),
        StreamEndpoint("/2/tweets/firehose/stream", "firehose_stream", FIREHOSE,
                       max_partition=20),
        # Partition ranges of the language firehoses in the OpenAPI: en 1-8, the others 1-2.
        *(
            StreamEndpoint(f"/2/tweets/firehose/stream/lang/{lang}",
                           f"firehose_stream_lang_{lang}", FIREHOSE, lang=lang,
                           max_partition=8 if lang == "en" else 2)
            for lang in LANGS
        ),
    )
}
FILTERED_PATH = "/2/tweets/search/stream"


def _names(endpoint: StreamEndpoint) -> tuple[str, ...]:
    short = endpoint.family if endpoint.lang is None else f"firehose_{endpoint.lang}"
    return endpoint.path, endpoint.name, short


# A stream endpoint by its path, its Connections API name (`firehose_stream_lang_en`) or its
# short name (`filtered`, `sample`, `sample10`, `firehose`, `firehose_en`, ...).
ENDPOINT_NAMES: dict[str, StreamEndpoint] = {
    name: e for e in STREAM_ENDPOINTS.values() for name in _names(e)
}


def splitmix64(value: int) -> int:
    z = (value + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def firehose_partition(tweet_id: int | str, partitions: int) -> int:
    """The firehose partition (1..partitions) of a tweet."""
    return splitmix64(int(tweet_id)) % partitions + 1


def sample_bucket(tweet_id: int | str) -> int:
    """0..99: the 1% sample is bucket 0, the 10% sample buckets 0-9."""
    return (splitmix64(int(tweet_id)) >> 32) % 100


def in_sample(tweet_id: int | str) -> bool:
    return sample_bucket(tweet_id) == 0


def sample10_partition(tweet_id: int | str) -> int | None:
    """1 or 2 for a tweet of the 10% sample, else None."""
    bucket = sample_bucket(tweet_id)
    return None if bucket >= 10 else bucket % 2 + 1


@dataclass(frozen=True)
class Share:
    """What one connection delivers: its endpoint, its partition (None without one) and the
    number of partitions its endpoint is split into."""

    endpoint: StreamEndpoint
    partition: int | None = None  # None on a partitioned endpoint: all its partitions
    partitions: int = 1

    @property
    def filtered(self) -> bool:
        return self.endpoint.family == FILTERED

    def takes(self, tweet_id: str, lang: str | None) -> bool:
        """Whether a (non-filtered) tweet belongs to this share."""
        family = self.endpoint.family
        if family == SAMPLE:
            return in_sample(tweet_id)
        if family == SAMPLE10:
            half = sample10_partition(tweet_id)
            return half is not None and self.partition in (None, half)
        if self.endpoint.lang is not None and lang != self.endpoint.lang:
            return False
        return self.partition is None or (
            firehose_partition(tweet_id, self.partitions) == self.partition)


def partition_count(endpoint: StreamEndpoint, firehose: int, lang: dict[str, int]) -> int:
    """How many partitions the simulator splits `endpoint` into."""
    if endpoint.family == SAMPLE10:
        return 2
    if endpoint.family != FIREHOSE:
        return 1
    if endpoint.lang is not None:
        return lang[endpoint.lang]
    return firehose


def partition_error(value: str | None, endpoint: StreamEndpoint, count: int) -> dict[
    str, Any
] | None:
    """The invalid-request item for a missing or bad `partition`, else None. The range is the
    OpenAPI's, narrowed to `count` when the simulator splits the endpoint into fewer."""
    assert endpoint.max_partition is not None
    if value is None or value == "":
        return {"parameters": {"partition": [] if value is None else [value]},
                "message": "The `partition` query parameter can not be empty"}
    top = min(endpoint.max_partition, count)
    if not value.isdigit() or not 1 <= int(value) <= top:
        return problems.param_error(
            "partition", value,
            f"The `partition` query parameter value [{value}] is not between 1 and {top}",
        )
    return None
