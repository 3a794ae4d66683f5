"""Turning one stream line into what goes to Kafka (interface.md, "Kafka records").

Hot path: exactly one JSON parse per line; the value is the line's bytes as read, never
re-serialized. Everything a record needs downstream is computed here, once.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from streamd.classify import Classification, classify_stream_message

DLQ_DECODE: Final = "decode"
DLQ_VALIDATE: Final = "validate"
DLQ_OVERSIZE: Final = "oversize"

_CONTENT_TYPE: Final = ("content-type", b"application/json")
_SPECVERSION: Final = ("ce_specversion", b"1.0")
_CE_TYPE: Final = ("ce_type", b"com.x.tweet")

Header = tuple[str, bytes]


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
        # monotonic clock at read, for the receive-to-ack latency histogram
        self.read_at = read_at
        self.tweet_id = tweet_id
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


class ErrorMessage:
    """An error-only line (no `data`): logged, counted, classified; never published."""

    __slots__ = ("classification", "payload")

    def __init__(self, payload: dict[str, Any], classification: Classification | None) -> None:
        self.payload = payload
        self.classification = classification


def rfc3339_ms(epoch_ms: int) -> str:
    dt = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


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
            ("streamd_dlq_error", error.encode("utf-8", "replace")[:1024]),
        ],
        read_at=read_at,
    )


def interpret_line(
    line: bytes,
    *,
    ce_source: bytes,
    read_ms: int | None = None,
    read_at: float | None = None,
) -> OutRecord | ErrorMessage:
    """Classify one non-empty stream line: a tweet record, a DLQ record, or an error message."""
    if read_ms is None:
        read_ms = time.time_ns() // 1_000_000
    if read_at is None:
        read_at = time.monotonic()
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return dlq_record(line, DLQ_DECODE, str(exc), read_ms=read_ms, read_at=read_at)
    if type(obj) is not dict:
        return dlq_record(
            line, DLQ_VALIDATE, f"top-level JSON {type(obj).__name__}, not an object",
            read_ms=read_ms, read_at=read_at,
        )
    data = obj.get("data")
    tweet_id = data.get("id") if type(data) is dict else None
    if type(tweet_id) is str:  # X's ids are strings; the common case first
        if tweet_id:
            return _tweet_record(line, obj, data, tweet_id, ce_source, read_ms, read_at)  # type: ignore[arg-type]
    elif type(tweet_id) is int:
        return _tweet_record(line, obj, data, str(tweet_id), ce_source, read_ms, read_at)  # type: ignore[arg-type]
    if "errors" in obj and data is None:
        return ErrorMessage(obj, classify_stream_message(obj))
    problem = "data.id missing" if type(data) is dict else "no data.id and no errors"
    return dlq_record(line, DLQ_VALIDATE, problem, read_ms=read_ms, read_at=read_at)


# matching_rules repeat from tweet to tweet (a stream has at most 1,000 rules, and most
# tweets match one or two), so their headers are built once per distinct set.
_RuleHeaders = tuple[Header, Header | None, tuple[str, ...]]
_rule_headers: dict[tuple[tuple[str, ...], tuple[str, ...]], _RuleHeaders] = {}
_RULE_CACHE_MAX = 4096


def _rules_headers(rules: list[Any]) -> _RuleHeaders:
    ids: list[str] = []
    tags: list[str] = []
    for rule in rules:
        if type(rule) is dict:
            rule_id = rule.get("id")
            if rule_id is not None:
                ids.append(rule_id if type(rule_id) is str else str(rule_id))
            tag = rule.get("tag")
            if type(tag) is str:
                tags.append(tag)
    signature = (tuple(ids), tuple(tags))
    cached = _rule_headers.get(signature)
    if cached is None:
        if len(_rule_headers) >= _RULE_CACHE_MAX:
            _rule_headers.clear()
        cached = _rule_headers[signature] = (
            ("ce_ruleids", ",".join(ids).encode()),
            ("ce_ruletags", orjson.dumps(tags)) if tags else None,
            signature[1],
        )
    return cached


def _tweet_record(
    line: bytes,
    obj: dict[str, Any],
    data: dict[str, Any],
    tweet_id: str,
    ce_source: bytes,
    read_ms: int,
    read_at: float,
) -> OutRecord:
    key = tweet_id.encode()
    created_at = data.get("created_at")
    ce_time = (created_at if type(created_at) is str and created_at else rfc3339_ms(read_ms))
    headers: list[Header] = [
        _SPECVERSION,
        ("ce_id", key),
        ("ce_source", ce_source),
        _CE_TYPE,
        ("ce_time", ce_time.encode()),
    ]
    author_id = data.get("author_id")
    if type(author_id) is str:
        headers.append(("ce_subject", author_id.encode()))
    elif type(author_id) is int:
        headers.append(("ce_subject", str(author_id).encode()))
    headers.append(_CONTENT_TYPE)
    tags: tuple[str, ...] = ()
    rules = obj.get("matching_rules")
    if type(rules) is list and rules:
        ruleids, ruletags, tags = _rules_headers(rules)
        headers.append(ruleids)
        if ruletags is not None:
            headers.append(ruletags)
    return OutRecord(
        dlq=False,
        key=key,
        value=line,
        timestamp_ms=read_ms,
        headers=headers,
        read_at=read_at,
        tweet_id=tweet_id,
        tags=tags,
    )
