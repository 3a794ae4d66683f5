"""Turning one stream line into what goes to Kafka (interface.md, "Kafka records").

Hot path: exactly one JSON parse per line; the value is the line's bytes as read, never
re-serialized. Everything a record needs downstream is computed here, once.

This is the one place a line becomes a record, so it is where ids are validated. Code
downstream relies on a tweet record's `tweet_id` (the Kafka key and `ce_id`) being a
canonical X id: the deduplicator keys on int(tweet_id), and the key must fit 19 bytes.
Canonical is X's own TweetId/UserId pattern, `^[0-9]{1,19}$` in a JSON string, without
leading zeros: "0" passes, "01" does not. X's snowflakes never start with 0, and refusing
it keeps the id string and its int one-to-one, so a stray "01" can never make the
deduplicator drop the genuine tweet "1". Everything else goes to the DLQ as `validate`:
JSON numbers (they lose precision in many consumers, which is why X sends strings),
non-ASCII digits ("²" passes str.isdigit() and makes int() raise; "١٢٣" is read by int()
as 123), more than 19 digits (beyond 4,300, int() refuses them outright), "", " 1", "+1".
`data.author_id` (`ce_subject`) follows the same rule; absent or null means no
`ce_subject`, anything else invalid dead-letters the tweet like a bad `data.id`, rather
than publishing it with a header that is wrong, or missing for no visible reason.
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

ID_MAX_DIGITS: Final = 19
_ID_RULE: Final = f"must be a string of 1 to {ID_MAX_DIGITS} ASCII digits without a leading zero"
# An error header quotes at most this much of an offending value (the line itself is the
# DLQ record's value, so nothing is lost by cutting it short).
_PREVIEW_CHARS: Final = 24


def is_canonical_id(value: str) -> bool:
    """True for "0" and for 1 to 19 ASCII digits not starting with "0"."""
    # Length first: the digit scan below never runs over a long string. isascii() is O(1)
    # in CPython; together with isdigit() it admits exactly 0-9.
    return (
        0 < len(value) <= ID_MAX_DIGITS
        and value.isascii()
        and value.isdigit()
        and (value[0] != "0" or len(value) == 1)
    )


def _describe_value(value: object) -> str:
    """What a bad id is, quoting no more than _PREVIEW_CHARS of it (ascii() shows "²" as
    '\\xb2', so look-alike digits are visible in the header)."""
    if value is None:
        return "null"
    if type(value) is bool:
        return f"the JSON boolean {'true' if value else 'false'}"
    if type(value) is int:
        # orjson yields at most 64-bit ints; guard anyway, str() refuses > 4,300 digits.
        return f"the JSON number {value}" if value.bit_length() <= 64 else "a JSON number"
    if type(value) is float:
        return f"the JSON number {value!r}"
    if type(value) is list:
        return "a JSON array"
    if type(value) is dict:
        return "a JSON object"
    if type(value) is not str:
        return type(value).__name__
    if not value:
        return "an empty string"
    quoted = ascii(value[:_PREVIEW_CHARS])
    if len(value) > _PREVIEW_CHARS:
        return f"{quoted[:-1]}...{quoted[-1]} ({len(value)} characters)"
    if value.isdigit():
        if not value.isascii():
            return f"{quoted}, not ASCII digits"
        if len(value) > ID_MAX_DIGITS:
            return f"{quoted}, {len(value)} digits"
        if value[0] == "0":
            return f"{quoted}, a leading zero"
    return quoted


def id_problem(field: str, value: object) -> str:
    """The `streamd_dlq_error` for a `field` (data.id, data.author_id) that is not a
    canonical id; bounded whatever `value` is."""
    return f"{field} {_ID_RULE}; got {_describe_value(value)}"


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
    if type(data) is dict:
        tweet_id = data.get("id")
        if type(tweet_id) is not str or not is_canonical_id(tweet_id):
            problem = id_problem("data.id", tweet_id) if "id" in data else "data.id missing"
            return dlq_record(line, DLQ_VALIDATE, problem, read_ms=read_ms, read_at=read_at)
        author_id = data.get("author_id")
        if author_id is not None and (
            type(author_id) is not str or not is_canonical_id(author_id)
        ):
            return dlq_record(
                line, DLQ_VALIDATE, id_problem("data.author_id", author_id),
                read_ms=read_ms, read_at=read_at,
            )
        return _tweet_record(line, obj, data, tweet_id, author_id, ce_source, read_ms, read_at)
    if "errors" in obj and data is None:
        return ErrorMessage(obj, classify_stream_message(obj))
    problem = (
        "no data.id and no errors" if data is None
        else f"data is {_describe_value(data)}, not a JSON object"
    )
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
    author_id: str | None,
    ce_source: bytes,
    read_ms: int,
    read_at: float,
) -> OutRecord:
    """A tweet record; `tweet_id` and `author_id` are canonical (interpret_line checked)."""
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
    if author_id is not None:
        headers.append(("ce_subject", author_id.encode()))
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
