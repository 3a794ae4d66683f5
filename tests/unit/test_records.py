from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd.dedup import Deduplicator
from streamd.partitioner import partition_for
from streamd.reasons import Reason
from streamd.records import ErrorMessage, OutRecord, interpret_line, rfc3339_ms

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
def test_odd_author_ids_go_to_the_dlq_as_validate(name: str, id_json: bytes, says: bytes) -> None:
    if id_json == b"null":  # a null author_id is an absent one (below)
        return
    assert_dead_lettered(interpret(id_line(b'"5"', id_json)), "data.author_id", says)


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
    good_id = is_canonical(data["id"])
    good_author = data.get("author_id") is None or is_canonical(data["author_id"])
    if good_id and good_author:
        assert not rec.dlq
        assert rec.tweet_id == data["id"]
        assert all(type(name) is str and type(value) is bytes for name, value in rec.headers)
        assert_downstream_safe(rec)
    else:
        assert rec.dlq
        assert headers["streamd_dlq_reason"] == b"validate"
        assert len(headers["streamd_dlq_error"]) < 200
        field = b"data.id" if not good_id else b"data.author_id"
        assert headers["streamd_dlq_error"].startswith(field + b" must be")


def is_canonical(value: object) -> bool:
    return type(value) is str and CANONICAL_ID.fullmatch(value) is not None
