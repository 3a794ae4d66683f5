from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd.dedup import Deduplicator
from streamd.kafka.partitioner import partition_for
from streamd.reasons import Reason
from streamd.records import OutRecord, rfc3339_ms
from streamd.x.lines import ErrorMessage, interpret_line

SOURCE = b"https://api.x.com/2/tweets/search/stream"


def tweet_line(**data_extra: object) -> bytes:
    payload = {
        "data": {"id": "1790000000000000001",
                 "text": "synthetic cat tweet \u0645\u0631\u062d\u0628\u0627 \U0001f431",
                 "edit_history_tweet_ids": ["1790000000000000001"], **data_extra},
        "matching_rules": [{"id": "1273026480692322304", "tag": "cats"},
                           {"id": "1273026480692322305"}],
    }
    return orjson.dumps(payload)


def interpret(line: bytes) -> OutRecord | ErrorMessage:
    return interpret_line(line, ce_source=SOURCE, read_ms=1_700_000_000_123, read_at=1.0)


def test_tweet_record_is_the_line_verbatim_with_cloudevents_headers() -> None:
    # Unusual spacing proves the value is never re-serialized.
    line = tweet_line(created_at="2024-01-15T10:35:00.000Z", author_id="42")
    line = line.replace(b":", b" : ", 1)
    rec = interpret(line)
    assert isinstance(rec, OutRecord)
    assert not rec.dlq
    assert rec.value is line
    assert rec.key == b"1790000000000000001"
    assert rec.timestamp_ms == 1_700_000_000_123
    assert dict(rec.headers) == {
        "ce_specversion": b"1.0",
        "ce_id": b"1790000000000000001",
        "ce_source": SOURCE,
        "ce_type": b"com.x.tweet",
        "ce_time": b"2024-01-15T10:35:00.000Z",
        "ce_subject": b"42",
        "content-type": b"application/json",
        "ce_ruleids": b"1273026480692322304,1273026480692322305",
        "ce_ruletags": b'["cats"]',
    }
    assert rec.tags == ("cats",)


def test_ce_time_falls_back_to_read_time_and_subject_is_optional() -> None:
    rec = interpret(tweet_line())
    assert isinstance(rec, OutRecord)
    headers = dict(rec.headers)
    assert headers["ce_time"] == b"2023-11-14T22:13:20.123Z"
    assert "ce_subject" not in headers
    assert rfc3339_ms(0) == "1970-01-01T00:00:00.000Z"


def test_numeric_rule_ids_and_null_tags_of_2021_payloads() -> None:
    line = b'{"data":{"id":"5","text":"x"},"matching_rules":[{"id":1356,"tag":null}]}'
    rec = interpret(line)
    assert isinstance(rec, OutRecord)
    headers = dict(rec.headers)
    assert headers["ce_ruleids"] == b"1356"
    assert "ce_ruletags" not in headers


def test_tweet_with_partial_errors_is_a_tweet() -> None:
    line = (b'{"data":{"id":"7","text":"x"},"errors":[{"title":"Not Found Error",'
            b'"type":"https://api.twitter.com/2/problems/resource-not-found"}]}')
    rec = interpret(line)
    assert isinstance(rec, OutRecord)
    assert not rec.dlq


def test_operational_disconnect_is_an_error_message_not_a_tweet() -> None:
    line = (b'{"errors":[{"title":"operational-disconnect",'
            b'"disconnect_type":"OperationalDisconnect",'
            b'"detail":"This stream has been disconnected for operational reasons.",'
            b'"type":"https://api.twitter.com/2/problems/operational-disconnect"}]}')
    msg = interpret(line)
    assert isinstance(msg, ErrorMessage)
    assert msg.classification is not None
    assert msg.classification.reason is Reason.OPERATIONAL_DISCONNECT
    assert msg.classification.disconnect_type == "OperationalDisconnect"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"data":{"id":"1","text":"trunc', b"decode"),
        (b"not json at all", b"decode"),
        (b'\xff\xfe{"data":{"id":"1"}}', b"decode"),
        (b"[1,2,3]", b"validate"),
        (b'{"data":{"text":"no id"}}', b"validate"),
        (b'{"foo_event":{"x":1}}', b"validate"),
        (b'{"data":{"id":true}}', b"validate"),
    ],
)
def test_bad_lines_go_to_the_dlq_with_their_reason(line: bytes, reason: bytes) -> None:
    rec = interpret(line)
    assert isinstance(rec, OutRecord)
    assert rec.dlq
    assert rec.value == line
    assert rec.key is None
    headers = dict(rec.headers)
    assert headers["streamd_dlq_reason"] == reason
    assert headers["streamd_dlq_error"]


# --- ids: the key, ce_id and ce_subject (issue item 10) ----------------------------------

# What X's ids look like and what streamd accepts, spelled out independently of the code:
# X's TweetId/UserId pattern ^[0-9]{1,19}$, minus leading zeros ("0" itself is canonical).
CANONICAL_ID = re.compile(r"0|[1-9][0-9]{0,18}")
RFC3339_SHAPE = re.compile(
    r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
    r"(\.\d{1,9})?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)", re.ASCII)
READ_TIME = b"2023-11-14T22:13:20.123Z"  # rfc3339_ms of interpret()'s read_ms
# What no header value may hold, in UTF-8: C0 controls (CR, LF, ...), DEL, C1 controls, the
# bidirectional controls (ALM, LRM, RLM, LRE..RLO, LRI..PDI), line and paragraph separators.
UNSAFE_HEADER_BYTES = re.compile(
    rb"[\x00-\x1f\x7f]|\xc2[\x80-\x9f]|\xd8\x9c|\xe2\x80[\x8e\x8f\xa8-\xae]|\xe2\x81[\xa6-\xa9]")


def header_safe(value: bytes) -> bool:
    return UNSAFE_HEADER_BYTES.search(value) is None

ODD_IDS: list[tuple[str, bytes, bytes]] = [
    # (name, the JSON text of data.id, what streamd_dlq_error must say about it)
    ("superscript-two", '"\u00b2"'.encode(), b"'\\xb2', not ASCII digits"),
    ("arabic-indic", '"\u0661\u0662\u0663"'.encode(), b"not ASCII digits"),
    ("fullwidth", '"\uff11\uff12"'.encode(), b"not ASCII digits"),
    ("5000-digits", b'"' + b"9" * 5000 + b'"', b"(5000 characters)"),
    ("20-digits", b'"12345678901234567890"', b"20 digits"),
    ("empty", b'""', b"an empty string"),
    ("leading-space", b'" 1"', b"got ' 1'"),
    ("trailing-newline", b'"1\\n"', b"got '1\\n'"),
    ("plus", b'"+1"', b"got '+1'"),
    ("minus", b'"-1"', b"got '-1'"),
    ("leading-zero", b'"01"', b"a leading zero"),
    ("hex", b'"0x1F"', b"got '0x1F'"),
    ("int", b"1790000000000000001", b"the JSON number 1790000000000000001"),
    ("u64", b"18446744073709551615", b"the JSON number"),
    ("float", b"1.5", b"the JSON number 1.5"),
    ("null", b"null", b"got null"),
    ("true", b"true", b"the JSON boolean true"),
    ("array", b'["1"]', b"a JSON array"),
    ("object", b'{"id":"1"}', b"a JSON object"),
]


def id_line(id_json: bytes, author_json: bytes | None = None) -> bytes:
    author = b"" if author_json is None else b',"author_id":' + author_json
    return b'{"data":{"id":' + id_json + author + b',"text":"x"}}'


def assert_dead_lettered(rec: OutRecord | ErrorMessage, field: str, says: bytes) -> None:
    assert isinstance(rec, OutRecord)
    assert rec.dlq
    assert rec.key is None
    assert rec.tweet_id is None
    headers = dict(rec.headers)
    assert headers["streamd_dlq_reason"] == b"validate"
    error = headers["streamd_dlq_error"]
    assert error.startswith(field.encode() + b" must be a string of 1 to 19 ASCII digits")
    assert says in error
    assert len(error) < 200  # bounded: the value is the record's value, not the header's


@pytest.mark.parametrize(("name", "id_json", "says"), ODD_IDS, ids=[n for n, _, _ in ODD_IDS])
def test_odd_ids_go_to_the_dlq_as_validate(name: str, id_json: bytes, says: bytes) -> None:
    line = id_line(id_json)
    rec = interpret(line)
    assert_dead_lettered(rec, "data.id", says)
    assert isinstance(rec, OutRecord)
    assert rec.value is line  # nothing lost: the DLQ keeps the line as read


@pytest.mark.parametrize(("name", "id_json", "says"), ODD_IDS, ids=[n for n, _, _ in ODD_IDS])
def test_odd_author_ids_publish_the_tweet_without_ce_subject(
    name: str, id_json: bytes, says: bytes
) -> None:
    """The author is metadata: a tweet is not wrong for an odd author_id, so it is published
    and only the header that would be wrong (ce_subject) is left out."""
    line = id_line(b'"5"', id_json)
    rec = interpret(line)
    assert isinstance(rec, OutRecord)
    assert not rec.dlq
    assert rec.key == b"5"
    assert rec.value is line
    assert "ce_subject" not in dict(rec.headers)


@pytest.mark.parametrize("tweet_id", ["0", "7", "1999999999999999999", "9999999999999999999"])
def test_canonical_ids_are_tweets(tweet_id: str) -> None:
    rec = interpret(id_line(orjson.dumps(tweet_id), b'"1234567890123456789"'))
    assert isinstance(rec, OutRecord)
    assert not rec.dlq
    assert rec.key == tweet_id.encode()
    assert dict(rec.headers)["ce_subject"] == b"1234567890123456789"


def test_a_number_json_cannot_hold_is_a_decode_error() -> None:
    # orjson refuses numbers past a double's range: the whole line fails to parse.
    rec = interpret(id_line(b"1" + b"0" * 400))
    assert isinstance(rec, OutRecord)
    assert rec.dlq
    assert dict(rec.headers)["streamd_dlq_reason"] == b"decode"


def test_null_author_id_is_no_subject() -> None:
    rec = interpret(id_line(b'"5"', b"null"))
    assert isinstance(rec, OutRecord)
    assert not rec.dlq
    assert "ce_subject" not in dict(rec.headers)


def test_data_that_is_not_an_object_says_so() -> None:
    rec = interpret(b'{"data":["1"],"errors":[{"title":"x"}]}')
    assert isinstance(rec, OutRecord)
    assert rec.dlq
    assert dict(rec.headers)["streamd_dlq_error"] == b"data is a JSON array, not a JSON object"


@pytest.mark.parametrize(("name", "id_json", "says"), ODD_IDS, ids=[n for n, _, _ in ODD_IDS])
def test_no_tweet_record_can_break_dedup_or_the_key_bound(
    name: str, id_json: bytes, says: bytes
) -> None:
    """What crashed before: "²" and 5,000 digits reached Deduplicator.seen_many, whose
    int(tweet_id) raised and took the stream reader (and the daemon) down; "١٢٣" and "01"
    became the dedup key 123 and 1, so the genuine tweets "123" and "1" were dropped as
    duplicates; a 20-digit JSON number became a 20-byte Kafka key."""
    assert_downstream_safe(interpret(id_line(id_json)))


def assert_downstream_safe(rec: OutRecord | ErrorMessage) -> None:
    if not isinstance(rec, OutRecord) or rec.dlq:
        return
    assert rec.tweet_id is not None
    assert rec.key == rec.tweet_id.encode()
    assert len(rec.key) <= 19
    assert str(int(rec.tweet_id)) == rec.tweet_id  # id <-> dedup key, one-to-one
    dedup = Deduplicator()
    assert dedup.seen_many([rec.tweet_id]) == [False]
    assert dedup.seen(rec.tweet_id)
    assert 0 <= partition_for(rec.key, list(range(12))) < 12


# Arbitrary JSON-ish values for data.id: unicode digits and look-alikes, digit strings of
# every length (incl. past int()'s 4,300-digit limit), numbers, and nested values.
_digits = st.sampled_from("0123456789")
_lookalikes = st.sampled_from("\u00b2\u00b9\u0661\u06f1\u0967\uff11\u2460\U0001d7ce \t+-_.e")
id_text = st.one_of(
    st.text(max_size=30),
    st.text(st.one_of(_digits, _lookalikes), max_size=25),
    st.text(_digits, min_size=1, max_size=25),
    st.integers(1, 6000).map(lambda n: "1" * n),
    st.from_regex(CANONICAL_ID, fullmatch=True),
)
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), id_text,
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6,
)
# Numbers orjson cannot even produce (beyond 64 bits, 5,000 digits), as raw JSON text.
raw_number = st.integers(1, 5000).map(lambda n: ("9" * n).encode())
id_json_text = st.one_of(json_value.map(orjson.dumps), raw_number)
# The other fields that become headers: anything at all must neither crash nor leak.
header_field = st.one_of(st.just(None), json_value)


@settings(max_examples=500, deadline=None)
@given(tweet_id=id_json_text, author_id=st.one_of(st.none(), id_json_text),
       created_at=header_field, matching_rules=header_field)
def test_fuzz_any_data_id_is_a_valid_tweet_or_a_validate_dlq_record(
    tweet_id: bytes, author_id: bytes | None, created_at: object, matching_rules: object
) -> None:
    extra = b""
    if created_at is not None:
        extra += b',"created_at":' + orjson.dumps(created_at)
    line = (id_line(tweet_id, author_id)[:-2] + extra + b'},"matching_rules":'
            + orjson.dumps(matching_rules) + b"}")
    rec = interpret(line)  # never raises
    assert isinstance(rec, OutRecord)
    assert rec.value is line
    headers = dict(rec.headers)
    try:
        data = orjson.loads(line)["data"]
    except orjson.JSONDecodeError:  # e.g. a number past a double's range
        assert rec.dlq
        assert headers["streamd_dlq_reason"] == b"decode"
        return
    assert all(type(name) is str and type(value) is bytes and header_safe(value)
               for name, value in rec.headers)
    if is_canonical(data["id"]):
        assert not rec.dlq
        assert rec.tweet_id == data["id"]
        assert_downstream_safe(rec)
        author = data.get("author_id")
        assert headers.get("ce_subject") == (author.encode() if is_canonical(author) else None)
        stamp = data.get("created_at")
        assert headers["ce_time"] == (stamp.encode() if is_rfc3339(stamp) else READ_TIME)
    else:
        assert rec.dlq
        assert headers["streamd_dlq_reason"] == b"validate"
        assert len(headers["streamd_dlq_error"]) < 200
        assert headers["streamd_dlq_error"].startswith(b"data.id must be")


def is_canonical(value: object) -> bool:
    return type(value) is str and CANONICAL_ID.fullmatch(value) is not None


def is_rfc3339(value: object) -> bool:
    """RFC 3339 section 5.6 date-time, spelt out independently of records.py."""
    return type(value) is str and RFC3339_SHAPE.fullmatch(value) is not None


# --- stream fields validated before they become headers (security issue, item 3) ----------


@pytest.mark.parametrize("stamp", [
    "2024-01-15T10:35:00.000Z",  # X's form
    "2024-01-15T10:35:00Z",
    "2024-01-15T10:35:00.123456789Z",
    "2024-01-15T10:35:00+05:30",
    "2024-01-15t10:35:00.5-08:00",
    "2016-12-31T23:59:60Z",  # a leap second
])
def test_ce_time_is_created_at_when_it_is_rfc3339(stamp: str) -> None:
    rec = interpret(tweet_line(created_at=stamp))
    assert isinstance(rec, OutRecord)
    assert dict(rec.headers)["ce_time"] == stamp.encode()


@pytest.mark.parametrize("stamp", [
    "Thu Aug 12 10:35:00 +0000 2021",  # v1.1's form
    "2024-01-15 10:35:00Z",
    "2024-13-01T10:35:00Z",
    "2024-01-15T24:00:00Z",
    "2024-01-15T10:35:00",  # no offset: not a point in time
    "2024-01-15T10:35:00.1234567890Z",
    "2024-01-15T10:35:00.000Z\r\nX-Injected: yes",
    "2024-01-15T10:35:00.000Z\u202e",
    "\uff12024-01-15T10:35:00Z",
    "2024-01-15T10:35:00.000Z" + "0" * 1_000_000,
    "",
    1705314900,
    None,
    ["2024-01-15T10:35:00.000Z"],
])
def test_ce_time_falls_back_to_the_read_time_when_created_at_is_not_rfc3339(
    stamp: object,
) -> None:
    rec = interpret(tweet_line(created_at=stamp))
    assert isinstance(rec, OutRecord)
    assert not rec.dlq  # a bad timestamp is not a bad tweet
    assert dict(rec.headers)["ce_time"] == READ_TIME


def rules_line(rules: object) -> bytes:
    return orjson.dumps({"data": {"id": "5", "text": "x"}, "matching_rules": rules})


def test_rule_ids_that_are_not_digit_strings_are_left_out_of_ce_ruleids() -> None:
    ids: list[object] = ["1", 1356, "abc", "1\r\n2", True, 1.5, -1, 10**19, 10**19 - 1,
                         "12345678901234567890", "\u0661", {"x": 1}, [1], None, ""]
    rec = interpret(rules_line([{"id": i, "tag": "t"} for i in ids]))
    assert isinstance(rec, OutRecord)
    assert not rec.dlq
    assert dict(rec.headers)["ce_ruleids"] == b"1,1356," + str(10**19 - 1).encode()


def test_no_usable_rule_id_means_no_ce_ruleids() -> None:
    rec = interpret(rules_line([{"id": "x1", "tag": "t"}, {"tag": "u"}]))
    assert isinstance(rec, OutRecord)
    headers = dict(rec.headers)
    assert "ce_ruleids" not in headers
    assert headers["ce_ruletags"] == b'["t","u"]'


UNSAFE_TAGS = ["a\x00b", "a\rb", "a\nb", "a\tb", "a\x1bb", "a\x7fb", "a\x85b", "a\x9fb",
               "a\u061cb", "a\u200eb", "a\u200fb", "a\u202eb", "a\u2066b", "a\u2069b",
               "a\u2028b", "a\u2029b"]


@pytest.mark.parametrize("bad", UNSAFE_TAGS)
def test_tags_with_control_or_bidi_characters_are_left_out(bad: str) -> None:
    good = ["cats", "猫 🐱", "a b", "cafe\u0301", "👨\u200d👩\u200d👧"]
    rules = [{"id": "1", "tag": good[0]}, {"id": "2", "tag": bad}]
    rules += [{"id": str(i), "tag": tag} for i, tag in enumerate(good[1:], 3)]
    rec = interpret(rules_line(rules))
    assert isinstance(rec, OutRecord)
    assert not rec.dlq
    headers = dict(rec.headers)
    assert orjson.loads(headers["ce_ruletags"]) == good
    assert rec.tags == tuple(good)
    # the rule itself is still named: its id stays in ce_ruleids
    assert headers["ce_ruleids"] == b"1,2,3,4,5,6"
    assert header_safe(headers["ce_ruletags"])


def test_rule_headers_are_bounded() -> None:
    rules = [{"id": str(10**18 + i), "tag": f"tag-{i:05d}-" + "x" * 40} for i in range(5000)]
    rules.insert(3, {"id": "7", "tag": "y" * 10_000})  # never fits: left out, not cut
    rec = interpret(rules_line(rules))
    assert isinstance(rec, OutRecord)
    headers = dict(rec.headers)
    ids = headers["ce_ruleids"].split(b",")
    assert len(ids) == 100
    assert len(headers["ce_ruleids"]) <= 100 * 20
    tags = orjson.loads(headers["ce_ruletags"])
    assert 0 < len(tags) <= 100
    assert len(headers["ce_ruletags"]) <= 4096
    assert all(tag.startswith("tag-") for tag in tags)
    assert rec.tags == tuple(tags)
    assert rec.size() < 12_000 + len(rec.value)


def test_large_rule_sets_are_not_cached() -> None:
    """The rule-header cache keeps 4,096 sets: it must not pin megabytes of hostile tags."""
    from streamd.x import lines as records

    records._rule_headers.clear()
    interpret(rules_line([{"id": "1", "tag": "cats-small"}]))
    assert len(records._rule_headers) == 1
    for n in range(20):
        interpret(rules_line([{"id": str(i), "tag": "z" * 900 + f"{n}-{i}"} for i in range(3)]))
    assert len(records._rule_headers) == 1


def test_a_400_kb_id_is_a_dlq_record_with_a_bounded_error_not_a_400_kb_key() -> None:
    line = id_line(b'"' + b"9" * 400_000 + b'"', b'"' + b"8" * 400_000 + b'"')
    rec = interpret(line)
    assert isinstance(rec, OutRecord)
    assert rec.dlq
    assert rec.key is None
    assert rec.value is line
    headers = dict(rec.headers)
    assert headers["streamd_dlq_reason"] == b"validate"
    assert headers["streamd_dlq_error"].endswith(b"(400000 characters)")
    assert len(headers["streamd_dlq_error"]) < 200
    assert rec.size() < len(line) + 400


DUPLICATES = {
    "adjacent": b'{"data":{"id":"1","id":"2","text":"x"}}',
    "apart": b'{"data":{"id":"1","text":"x","lang":"en","id":"2"}}',
    "same-value": b'{"data":{"id":"1","id":"1","text":"x"}}',
    "whitespace": b'{"data":{"id":"1", "id" :\t"2"}}',
    "escaped-key": b'{"data":{"id":"1","\\u0069d":"2"}}',
    "escaped-d": b'{"data":{"i\\u0064":"1","id":"2"}}',
    # a string "\u0022id" written by orjson as \"id": it would offset the raw count
    "offset-by-escaped-quote": b'{"data":{"id":"1","id":"2","t":"\\u0022id"}}',
    "with-rules": (b'{"data":{"author_id":"3","id":"1","id":"2"},'
                   b'"matching_rules":[{"id":"9","tag":"t"}]}'),
    "in-a-user": (b'{"data":{"id":"1","text":"x"},'
                  b'"includes":{"users":[{"id":"3","name":"a","id":"4"}]}}'),
    "in-a-rule": b'{"data":{"id":"1"},"matching_rules":[{"id":"9","id":"8","tag":"t"}]}',
    "data-twice": b'{"data":{"id":"1","text":"x"},"data":{"id":"2","text":"y"}}',
}


@pytest.mark.parametrize("line", DUPLICATES.values(), ids=DUPLICATES.keys())
def test_duplicate_id_keys_go_to_the_dlq_as_validate(line: bytes) -> None:
    rec = interpret(line)
    assert isinstance(rec, OutRecord)
    assert rec.dlq, rec.headers
    assert rec.key is None
    headers = dict(rec.headers)
    assert headers["streamd_dlq_reason"] == b"validate"
    assert b'the key "id" more than once' in headers["streamd_dlq_error"]


RICH_TWEET = orjson.dumps({
    "data": {
        "author_id": "2244994945", "conversation_id": "1460323737035677698",
        "context_annotations": [
            {"domain": {"id": "46", "name": "Brand Category"},
             "entity": {"id": "781974596752842752", "name": "Services"}},
            {"domain": {"id": "47", "name": "Brand"},
             "entity": {"id": "10045225402", "name": "Twitter"}},
        ],
        "created_at": "2021-11-18T19:50:09.000Z",
        "entities": {"mentions": [{"start": 0, "end": 8, "username": "TwitterDev",
                                   "id": "2244994945"}]},
        "id": "1460323737035677698",
        "referenced_tweets": [{"type": "quoted", "id": "1460323737035677000"}],
        "text": "say \"id\": it is \"id\" \\u0064 \u00e9 \u2014 id",
    },
    "includes": {
        "users": [{"id": "2244994945", "name": "Twitter Dev", "username": "TwitterDev"}],
        "tweets": [{"id": "1460323737035677000", "text": "quoted \"id",
                    "entities": {"mentions": [{"id": "1", "username": "a"}]}}],
        "places": [{"id": "01a9a39529b27f36", "full_name": "Manhattan, NY"}],
    },
    "matching_rules": [{"id": "1", "tag": "id"}, {"id": "2", "tag": "\"id\""}],
})

NOT_DUPLICATES = {
    "text-is-id": b'{"data":{"id":"1","text":"id"}}',
    "quoted-id-in-text": b'{"data":{"id":"1","text":"say \\"id\\" now"}}',
    "text-ends-in-quoted-id": b'{"data":{"id":"1","text":"x \\"id"}}',
    "escaped-d-in-text": b'{"data":{"id":"1","text":"\\u0064one"}}',
    "escaped-latin": b'{"data":{"id":"1","text":"caf\\u00e9"}}',
    "nested-ids": b'{"data":{"id":"1","x":{"id":"2","y":[{"id":"3"},{"id":"4"}]}}}',
    "rich": RICH_TWEET,
    "spaced": b'{ "data" : { "id" : "1" , "text" : "x" } , "matching_rules" : [ ] }',
}


@pytest.mark.parametrize("line", NOT_DUPLICATES.values(), ids=NOT_DUPLICATES.keys())
def test_lines_without_duplicate_ids_are_tweets(line: bytes) -> None:
    rec = interpret(line)
    assert isinstance(rec, OutRecord)
    assert not rec.dlq, rec.headers


def test_nesting_too_deep_to_check_is_refused_with_its_reason() -> None:
    deep = b'{"x":' * 300 + b'{"id":"2"}' + b"}" * 300
    line = b'{"data":{"id":"1","deep":' + deep + b"}}"
    rec = interpret(line)
    assert isinstance(rec, OutRecord)
    assert rec.dlq
    assert dict(rec.headers)["streamd_dlq_error"] == (
        b'too deeply nested to check for a duplicate "id" key')


def test_dlq_error_header_is_escaped_and_cut_inside_no_character() -> None:
    from streamd.records import dlq_record

    rec = dlq_record(b"x", "decode", "bad\r\nX-Injected: 1\x00\u202e" + "\u00e9" * 2000,
                     read_ms=0, read_at=0.0)
    error = dict(rec.headers)["streamd_dlq_error"]
    assert error.startswith(b"bad\\r\\nX-Injected: 1\\x00\\u202e\xc3\xa9")
    assert len(error) <= 1024
    error.decode("utf-8")  # whole characters only
    assert header_safe(error)


# Tags and timestamps for the fuzz below: near misses of the valid forms, and hostile text.
_stamps = st.one_of(st.from_regex(RFC3339_SHAPE, fullmatch=True), st.text(max_size=40),
                    st.from_regex(RFC3339_SHAPE, fullmatch=True).map(lambda s: s + "\n"))
_tags = st.one_of(st.none(), st.text(max_size=20), st.integers(-(2**63), 2**63 - 1),
                 st.sampled_from(UNSAFE_TAGS))
_rule_ids = st.one_of(st.none(), st.booleans(), st.integers(-5, 2**64 - 1), st.floats(),
                      st.text(max_size=21), st.from_regex(r"[0-9]{1,19}", fullmatch=True))


@settings(max_examples=300, deadline=None)
@given(stamp=_stamps, rules=st.lists(st.fixed_dictionaries({"id": _rule_ids, "tag": _tags}),
                                     max_size=8))
def test_fuzz_every_header_from_stream_data_is_safe(stamp: str, rules: list[object]) -> None:
    line = orjson.dumps({"data": {"id": "5", "created_at": stamp, "text": "x"},
                         "matching_rules": rules})
    rec = interpret(line)
    assert isinstance(rec, OutRecord)
    assert not rec.dlq
    headers = dict(rec.headers)
    for value in headers.values():
        assert header_safe(value)
        value.decode("utf-8")
    assert headers["ce_time"] == (stamp.encode() if is_rfc3339(stamp) else READ_TIME)
    want_ids = [str(r["id"]) for r in rules  # type: ignore[index]
                if (type(r["id"]) is int and 0 <= r["id"] < 10**19)  # type: ignore[index]
                or (type(r["id"]) is str and re.fullmatch(r"[0-9]{1,19}", r["id"]))]  # type: ignore[index]
    assert headers.get("ce_ruleids") == (",".join(want_ids).encode() if want_ids else None)
    for tag in rec.tags:
        assert not re.search("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                             "\u202a-\u202e\u2066-\u2069]", tag)
