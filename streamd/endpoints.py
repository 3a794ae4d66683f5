"""X's streaming endpoints streamd can read (README "Enterprise streams"): where each is, how
the Connections API names it, whether it takes rules and partitions. Pure data, below every
layer: the configuration validates against it, the X side builds requests from it.

Paths and partition ranges from X's OpenAPI (v2.166): `partition` is required on
/2/tweets/sample10/stream (1-2), the firehose (1-20) and the language firehoses (English
1-8, Japanese, Korean, Portuguese 1-2), absent elsewhere."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ENDPOINTS", "Endpoint", "partition_from_hostname"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # stream.endpoint
    path: str
    connections_name: str  # the Connections API's endpoint_name / endpoint_id
    partitions: int  # 0: no partition parameter; else partitions 1..N
    rules: bool  # the filtered stream only: rules decide what it carries

    def source(self, partition: int) -> str:
        """The CloudEvents `ce_source` naming this endpoint (and partition)."""
        url = f"https://api.x.com{self.path}"
        return f"{url}?partition={partition}" if self.partitions and partition else url


ENDPOINTS: dict[str, Endpoint] = {e.name: e for e in (
    Endpoint("filtered", "/2/tweets/search/stream", "filtered_stream", 0, True),
    Endpoint("sample", "/2/tweets/sample/stream", "sample_stream", 0, False),
    Endpoint("sample10", "/2/tweets/sample10/stream", "sample10_stream", 2, False),
    Endpoint("firehose", "/2/tweets/firehose/stream", "firehose_stream", 20, False),
    # The language firehoses have fewer partitions: English 8, the others 2 (OpenAPI).
    *(Endpoint(f"firehose_{lang}", f"/2/tweets/firehose/stream/lang/{lang}",
               f"firehose_stream_lang_{lang}", partitions, False)
      for lang, partitions in (("en", 8), ("ja", 2), ("ko", 2), ("pt", 2))),
)}

_ORDINAL = re.compile(r"-(\d{1,6})$")


def partition_from_hostname(hostname: str) -> int | None:
    """A StatefulSet pod's partition: its ordinal + 1 (`streamd-0` -> 1); None when the
    name does not end in `-<number>`."""
    match = _ORDINAL.search(hostname.strip().split(".")[0])
    return int(match.group(1)) + 1 if match else None
