from __future__ import annotations

import orjson
import pytest

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
