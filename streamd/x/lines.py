"""Turning one stream line into what goes to Kafka (README, "Kafka records").

Hot path: exactly one JSON parse per line; the value is the line's bytes as read, never
re-serialized. Everything a record needs downstream is computed here, once.

This is the one place a line becomes a record, so it is where stream fields are validated
before they become a key or a header. Everything in a line is hostile until checked here.

Ids. Code downstream relies on a tweet record's `tweet_id` (the Kafka key and `ce_id`)
being a canonical X id: the deduplicator keys on int(tweet_id), and the key must fit 19
bytes. Canonical is X's own TweetId/UserId pattern, `^[0-9]{1,19}$` in a JSON string,
without leading zeros: "0" passes, "01" does not. X's snowflakes never start with 0, and
refusing it keeps the id string and its int one-to-one, so a stray "01" can never make the
deduplicator drop the genuine tweet "1". Everything else goes to the DLQ as `validate`:
JSON numbers (they lose precision in many consumers, which is why X sends strings),
non-ASCII digits ("²" passes str.isdigit() and makes int() raise; "١٢٣" is read by int()
as 123), more than 19 digits (beyond 4,300, int() refuses them outright), "", " 1", "+1".
A line in which a JSON object holds the key "id" twice goes to the DLQ as `validate` too:
in `data`, orjson keeps the last and other parsers the first, so the key would disagree with
what consumers read; the check (duplicate_ids) does not tell `data` from the objects nested
in the line, and X never sends a duplicate key anywhere.

Headers. Each is validated, or left out, never passed through:

* `ce_subject` is `data.author_id` when that is a canonical id (the rule above); when it is
  absent, null or anything else, the header is left out and the tweet is still published
  (the author is metadata; the tweet is not wrong for it);
* `ce_time` is `data.created_at` when it is an RFC 3339 date-time (X's form is
  `2024-01-15T10:35:00.000Z`), else the read time;
* `ce_ruleids` holds the `matching_rules[].id` that are 1 to 19 ASCII digits (or, as in
  2021 payloads, JSON integers of at most 19 digits); others are left out;
* `ce_ruletags` holds the tags that are strings free of control characters (C0, DEL, C1),
  bidirectional controls and line separators: JSON escaping covers C0 only, and a tag that
  reorders or breaks what a log viewer shows is not a tag to pass on. Such a tag is left
  out (its rule id stays in `ce_ruleids`), never rewritten: an escaped tag would no longer
  equal the rule's tag on X. Both lists stop at RULES_HEADER_MAX entries, and
  `ce_ruletags` at RULETAGS_MAX_BYTES;
* the last guard: `ce_id`, `ce_subject` and `ce_time` pass only through whitelists (ASCII
  digits; the RFC 3339 grammar's [0-9TtZz:.+-]), and every other header value built from
  stream data goes through `header_safe` (no CR, LF or other control character): a rule
  header that fails it is left out, a DLQ error has such characters escaped.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any, Final

import orjson

from streamd.records import (
    DLQ_DECODE,
    DLQ_VALIDATE,
    UNSAFE_TEXT,
    Header,
    OutRecord,
    dlq_record,
    rfc3339_ms,
)
from streamd.x.classify import Classification, classify_stream_message
from streamd.x.wire import Answer, parse_message

_CONTENT_TYPE: Final = ("content-type", b"application/json")
_SPECVERSION: Final = ("ce_specversion", b"1.0")
_CE_TYPE: Final = ("ce_type", b"com.x.tweet")


ID_MAX_DIGITS: Final = 19
_ID_RULE: Final = f"must be a string of 1 to {ID_MAX_DIGITS} ASCII digits without a leading zero"
# An error header quotes at most this much of an offending value (the line itself is the
# DLQ record's value, so nothing is lost by cutting it short).
_PREVIEW_CHARS: Final = 24

# RFC 3339 date-time (section 5.6): X sends 2024-01-15T10:35:00.000Z; an offset, a lower-case
# t/z, a leap second and 1 to 9 fraction digits are RFC 3339 too. At most 35 characters.
CREATED_AT_MAX_CHARS: Final = 35
_RFC3339: Final = re.compile(
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])[Tt]"
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]{1,9})?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_is_rfc3339: Final = _RFC3339.fullmatch

# matching_rules: a tweet matches a handful of rules; a line claiming more is not worth a
# header of unbounded size. Past these bounds the lists are cut (whole entries only).
RULES_HEADER_MAX: Final = 100
RULETAGS_MAX_BYTES: Final = 4096
_RULE_ID_LIMIT: Final = 10**ID_MAX_DIGITS  # JSON integer rule ids (2021 payloads) below this

# The same set in UTF-8, for the last guard on header bytes.
_UNSAFE_BYTES: Final = re.compile(
    rb"[\x00-\x1f\x7f]|\xc2[\x80-\x9f]|\xd8\x9c|\xe2\x80[\x8e\x8f\xa8-\xae]"
    rb"|\xe2\x81[\xa6-\xa9]"
)
# A key spelt with escapes ("\u0069d") or a quote spelt as \u0022 defeats counting `"id"`
# in the raw bytes: such lines are checked for duplicate ids by a full parse.
_ESCAPED_ID_OR_QUOTE: Final = re.compile(rb"\\u00(?:22|69|64)")
_ID_KEY: Final = b'"id"'
# Past this many objects in one `includes` list, counting their ids in Python costs more
# than orjson's re-serialization of the whole line: that list is left to it.
_WALK_MAX_INCLUDED: Final = 32


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


class ErrorMessage:
    """An error-only line (no `data`): logged, counted, classified; never published.
    `classification` is None unless it announces the end of the stream."""

    __slots__ = ("answer", "classification")

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.classification: Classification | None = classify_stream_message(answer)


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
        if type(author_id) is not str or not is_canonical_id(author_id):
            author_id = None  # no ce_subject; the tweet itself is fine
        return _tweet_record(line, obj, data, tweet_id, author_id, ce_source, read_ms, read_at)
    if "errors" in obj and data is None:
        return ErrorMessage(parse_message(obj))
    problem = (
        "no data.id and no errors" if data is None
        else f"data is {_describe_value(data)}, not a JSON object"
    )
    return dlq_record(line, DLQ_VALIDATE, problem, read_ms=read_ms, read_at=read_at)


# matching_rules repeat from tweet to tweet (a stream has at most 1,000 rules, and most
# tweets match one or two), so their headers are built once per distinct set. Only small
# sets are kept: the cache must not become a way to pin megabytes of hostile tags.
_RuleHeaders = tuple[Header | None, Header | None, tuple[str, ...]]
_rule_headers: dict[tuple[object, ...], _RuleHeaders] = {}
_RULE_CACHE_MAX = 4096
_RULE_CACHE_ENTRY_MAX_CHARS = 1024
_ABSENT: Final = object()


def _rule_id_text(rule_id: object) -> str | None:
    """A rule id fit for ce_ruleids: 1 to 19 ASCII digits, or a JSON integer of at most
    19 digits (2021 payloads); else None."""
    if type(rule_id) is str:
        if 0 < len(rule_id) <= ID_MAX_DIGITS and rule_id.isascii() and rule_id.isdigit():
            return rule_id
        return None
    if type(rule_id) is int and 0 <= rule_id < _RULE_ID_LIMIT:
        return str(rule_id)
    return None


def header_safe(value: bytes) -> bool:
    """The last guard: no control byte (C0, DEL), no C1, bidi control or line separator."""
    return _UNSAFE_BYTES.search(value) is None


def _build_rule_headers(signature: tuple[object, ...]) -> _RuleHeaders:
    """Validated, bounded ce_ruleids and ce_ruletags from (id, tag, id, tag, ...)."""
    ids: list[str] = []
    tags: list[str] = []
    tags_size = 2  # the brackets of the JSON array
    for i in range(0, len(signature), 2):
        rule_id = _rule_id_text(signature[i])
        if rule_id is not None and len(ids) < RULES_HEADER_MAX:
            ids.append(rule_id)
        tag = signature[i + 1]
        if type(tag) is str and len(tags) < RULES_HEADER_MAX and not UNSAFE_TEXT.search(tag):
            size = len(orjson.dumps(tag)) + 1  # and its comma
            if tags_size + size <= RULETAGS_MAX_BYTES + 1:
                tags.append(tag)
                tags_size += size
    ruleids = ",".join(ids).encode()
    ruletags = orjson.dumps(tags)
    return (
        ("ce_ruleids", ruleids) if ids and header_safe(ruleids) else None,
        ("ce_ruletags", ruletags) if tags and header_safe(ruletags) else None,
        tuple(tags),
    )


def _rules_headers(rules: list[Any]) -> tuple[_RuleHeaders, int]:
    """The rule headers of a tweet, and how many of its rules hold the key "id"."""
    flat: list[object] = []
    with_id = 0
    chars = 0
    for rule in rules:
        if type(rule) is dict:
            rule_id = rule.get("id")
            if rule_id is not None:
                with_id += 1
                kind = type(rule_id)
                if kind is str:
                    chars += len(rule_id)
                elif kind is not int:
                    rule_id = None  # unusable (and maybe unhashable): never in a header
            elif "id" in rule:
                with_id += 1  # "id": null is a key all the same
            tag = rule.get("tag")
            if type(tag) is str:
                chars += len(tag)
            else:
                tag = None
            flat.append(rule_id)
            flat.append(tag)
    signature = tuple(flat)
    cached = _rule_headers.get(signature)
    if cached is None:
        cached = _build_rule_headers(signature)
        if chars <= _RULE_CACHE_ENTRY_MAX_CHARS and len(rules) <= RULES_HEADER_MAX:
            if len(_rule_headers) >= _RULE_CACHE_MAX:
                _rule_headers.clear()
            _rule_headers[signature] = cached
    return cached, with_id


def _ids_in(items: object) -> int:
    """How many objects in the list `items` hold the key "id"."""
    count = 0
    if type(items) is list:
        for item in items:
            if type(item) is dict and "id" in item:
                count += 1
    return count


def _nested_ids(tweet: dict[str, Any]) -> int:
    """The "id" keys X nests in a tweet object: referenced tweets, mentions, and the domain
    and entity of context annotations."""
    count = _ids_in(tweet.get("referenced_tweets"))
    entities = tweet.get("entities")
    if type(entities) is dict:
        count += _ids_in(entities.get("mentions"))
    annotations = tweet.get("context_annotations")
    if type(annotations) is list:
        for annotation in annotations:
            if type(annotation) is dict:
                domain = annotation.get("domain")
                if type(domain) is dict and "id" in domain:
                    count += 1
                entity = annotation.get("entity")
                if type(entity) is dict and "id" in entity:
                    count += 1
    return count


DUPLICATE_ID: Final = (
    'a JSON object holds the key "id" more than once (parsers disagree on which one counts)'
)
UNVERIFIABLE_IDS: Final = 'too deeply nested to check for a duplicate "id" key'


class _DuplicateId(Exception):
    pass


def _included(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The objects of the line's `includes` (expansions), in lists of at most
    _WALK_MAX_INCLUDED: a longer list is not walked (the re-serialization count decides)."""
    includes = obj.get("includes")
    if type(includes) is not dict:
        return
    for items in includes.values():
        if type(items) is list and len(items) <= _WALK_MAX_INCLUDED:
            yield from (item for item in items if type(item) is dict)


def _refuse_duplicate_ids(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen = False
    for key, _ in pairs:
        if key == "id":
            if seen:
                raise _DuplicateId
            seen = True
    return dict(pairs)


def duplicate_ids(
    line: bytes, obj: dict[str, Any], data: dict[str, Any], seen: int, known: int
) -> str | None:
    """Why `line` cannot be trusted for its ids (some JSON object in it holds the key "id"
    twice, or that cannot be checked), or None.

    orjson keeps the last of duplicate keys and cannot report them. `seen` is how often
    `"id"` occurs in the raw bytes (keys, duplicates included, and any string "id"), `known`
    how many distinct "id" keys the caller found in `obj` (a lower bound: each is a key of
    a distinct object of the tree). Each key "id" in
    the tree is at least one occurrence, so `seen == known` proves there is no duplicate;
    counting the places where X puts ids settles nearly every other line the same way
    (each counted key exists once in the tree, so `known` stays a lower bound).
    What is left is compared with the count in orjson's re-serialization (which holds each
    key once and writes strings with the same `\\"` escapes). A line that spells "id" or a
    quote with \\u escapes defeats raw counting: the standard library parses it once more,
    and it can see duplicates."""
    if b"\\" in line and _ESCAPED_ID_OR_QUOTE.search(line):
        try:
            json.loads(line, object_pairs_hook=_refuse_duplicate_ids)
        except _DuplicateId:
            return DUPLICATE_ID
        except (ValueError, RecursionError):
            return UNVERIFIABLE_IDS  # orjson read it, the standard library cannot
        return None
    if seen == known:
        return None
    # The ids X nests: in the tweet and in included tweets (mentions, context annotations,
    # referenced tweets). The caller counted the included objects' own ids.
    known += _nested_ids(data)
    if seen == known:
        return None
    known += sum(_nested_ids(item) for item in _included(obj) if "text" in item)
    if seen == known:
        return None
    try:
        written = orjson.dumps(obj).count(_ID_KEY)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (254): not X's
        return UNVERIFIABLE_IDS
    return DUPLICATE_ID if seen > written else None


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
    """A tweet record, or a `validate` DLQ record for duplicate ids; `tweet_id` is
    canonical, `author_id` canonical or None (interpret_line checked)."""
    known = 1  # data.id
    tags: tuple[str, ...] = ()
    rules = obj.get("matching_rules")
    rule_headers: _RuleHeaders | None = None
    if type(rules) is list and rules:
        rule_headers, with_id = _rules_headers(rules)
        known += with_id
    # Duplicate "id" keys (duplicate_ids): one C-speed count of `"id"` per line, against
    # the ids found where X puts them on nearly every line: data.id, matching_rules[].id and
    # the objects of `includes` (expansions). A backslash (memchr) or a mismatch sends the
    # line to the full check.
    seen = line.count(b'"id"')
    if seen != known:
        known += sum(1 for item in _included(obj) if "id" in item)
    if seen != known or b"\\" in line:
        problem = duplicate_ids(line, obj, data, seen, known)
        if problem is not None:
            return dlq_record(line, DLQ_VALIDATE, problem, read_ms=read_ms, read_at=read_at)
    key = tweet_id.encode()
    created_at = data.get("created_at")
    # The grammar itself bounds the length (CREATED_AT_MAX_CHARS): fullmatch gives up on a
    # long string as soon as the date-time is over, whatever follows.
    if type(created_at) is str and _is_rfc3339(created_at):
        ce_time = created_at.encode()
    else:
        ce_time = rfc3339_ms(read_ms).encode()
    headers: list[Header] = [
        _SPECVERSION,
        ("ce_id", key),
        ("ce_source", ce_source),
        _CE_TYPE,
        ("ce_time", ce_time),
    ]
    if author_id is not None:
        headers.append(("ce_subject", author_id.encode()))
    headers.append(_CONTENT_TYPE)
    if rule_headers is not None:
        ruleids, ruletags, tags = rule_headers
        if ruleids is not None:
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
