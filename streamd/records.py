"""The record both sides share: what the X side hands to the Kafka side, and what the spool
keeps until Kafka acknowledges it.

`OutRecord` is a tweet for `kafka.topic` or a line for `kafka.dlq_topic`, with everything
Kafka needs computed once (key, value verbatim, timestamp, headers) and the tags of the rules
it matched; `dlq_record` builds the dead-letter form with its `streamd_dlq_reason` and a
bounded, escaped `streamd_dlq_error`. How a stream line becomes one of these is
`streamd.x.lines`; how the spool stores one (tags included) is `streamd.kafka.spool`.

The label sets both sides count with (DLQ reasons, publish failure reasons) are defined here
once; `streamd.ops.metrics` pre-initialises its series from them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

# Why a line went to the DLQ: the `streamd_dlq_reason` header values, and the label set of
# streamd_tweets_dlq_total{reason}.
DLQ_DECODE: Final = "decode"
DLQ_VALIDATE: Final = "validate"
DLQ_OVERSIZE: Final = "oversize"
DLQ_REASONS: Final = (DLQ_DECODE, DLQ_VALIDATE, DLQ_OVERSIZE)

# Why a publish attempt failed, the label set of streamd_publish_failures_total{reason}: no
# ack in time, the broker not reachable, the record refused for its size, any other broker
# error. Which exception is which: `streamd.kafka.failures.failure_reason`.
FAILED_TIMEOUT: Final = "timeout"
FAILED_UNAVAILABLE: Final = "unavailable"
FAILED_TOO_LARGE: Final = "too_large"
FAILED_OTHER: Final = "other"
PUBLISH_FAILURE_REASONS: Final = (
    FAILED_TIMEOUT, FAILED_UNAVAILABLE, FAILED_TOO_LARGE, FAILED_OTHER)

Header = tuple[str, bytes]

_DLQ_ERROR_MAX_BYTES: Final = 1024

# Characters that make a tag unusable as a header value: C0, DEL, C1, the bidirectional
# controls (ALM, LRM, RLM, LRE..RLO, LRI..PDI) and the line and paragraph separators.
UNSAFE_TEXT: Final = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


class OutRecord:
    """A record bound for Kafka: a tweet for `kafka.topic` or a line for `kafka.dlq_topic`."""

    __slots__ = ("dlq", "headers", "key", "read_at", "tags", "timestamp_ms", "tweet_id", "value")

    def __init__(
        self,
        *,
        dlq: bool,
        key: bytes | None,
        value: bytes,
        timestamp_ms: int,
        headers: list[Header],
        read_at: float,
        tweet_id: str | None = None,
        tags: tuple[str, ...] = (),
    ) -> None:
        self.dlq = dlq
        self.key = key
        self.value = value
        self.timestamp_ms = timestamp_ms
        self.headers = headers
        # monotonic clock at read, for the receive-to-ack latency histogram (derived from
        # the timestamp for a record restored from the spool)
        self.read_at = read_at
        self.tweet_id = tweet_id
        # the matched rules' tags, for streamd_tweets_published_by_rule_total
        self.tags = tags

    def size(self) -> int:
        """Approximate wire size (value, key, headers), for batching and bounds."""
        n = len(self.value) + (len(self.key) if self.key else 0) + 64
        for name, value in self.headers:
            n += len(name) + len(value) + 2
        return n

    def __repr__(self) -> str:
        kind = "dlq" if self.dlq else "tweet"
        return f"OutRecord({kind}, key={self.key!r}, {len(self.value)} bytes)"


def rfc3339_ms(epoch_ms: int) -> str:
    dt = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def _escape_unsafe(match: re.Match[str]) -> str:
    return ascii(match.group())[1:-1]


def error_header(error: str) -> bytes:
    """`streamd_dlq_error`: control characters escaped (the last guard), at most
    _DLQ_ERROR_MAX_BYTES of UTF-8, never cut inside a character."""
    text = UNSAFE_TEXT.sub(_escape_unsafe, error[:_DLQ_ERROR_MAX_BYTES])
    raw = text.encode("utf-8", "replace")
    if len(raw) > _DLQ_ERROR_MAX_BYTES:
        raw = raw[:_DLQ_ERROR_MAX_BYTES].decode("utf-8", "ignore").encode()
    return raw


def dlq_record(
    line: bytes, reason: str, error: str, *, read_ms: int, read_at: float
) -> OutRecord:
    return OutRecord(
        dlq=True,
        key=None,
        value=line,
        timestamp_ms=read_ms,
        headers=[
            ("streamd_dlq_reason", reason.encode()),
            ("streamd_dlq_error", error_header(error)),
        ],
        read_at=read_at,
    )
