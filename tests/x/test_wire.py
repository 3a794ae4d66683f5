"""wire.py, the one reader of X's answers: problem documents, v1.1 codes, rate-limit
headers, and the stream's query parameters. Real bodies from tests/fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from streamd.config import Settings
from streamd.x.wire import (
    MAX_DETAIL,
    MAX_PROBLEM_BODY,
    RateLimit,
    parse_answer,
    parse_message,
    rate_limit,
    stream_query,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def fixture(name: str) -> bytes:
    return (FIXTURES / "x_errors" / f"{name}.json").read_bytes()


# --- problems ---------------------------------------------------------------------------


def test_a_v2_problem_is_read_whole() -> None:
    answer = parse_answer(403, {}, fixture("client_forbidden"))
    assert answer.status == 403
    (problem,) = answer.problems
    assert problem is answer.top
    assert problem.slug == "client-forbidden"
    assert problem.title == "Client Forbidden"
    assert problem.reason == "client-not-enrolled"
    assert problem.detail is not None
    assert problem.detail.startswith("When authenticating requests")
    assert answer.detail == problem.detail
    assert answer.codes == ()


def test_problems_wrapped_in_errors_keep_their_connection_fields() -> None:
    body = orjson.dumps({"errors": [
        {"title": "ConnectionException", "detail": "max", "type":
         "https://api.twitter.com/2/problems/streaming-connection",
         "connection_issue": "TooManyConnections"},
        {"title": "operational-disconnect", "disconnect_type": "ForceDisconnect",
         "type": "https://api.x.com/2/problems/operational-disconnect"},
    ]})
    answer = parse_answer(429, {}, body)
    assert answer.top is not None
    assert answer.top.slug is None  # the document itself is no problem
    assert [p.slug for p in answer.problems] == ["streaming-connection",
                                                 "operational-disconnect"]
    assert answer.problems[0].connection_issue == "TooManyConnections"
    assert answer.problems[1].disconnect_type == "ForceDisconnect"
    assert answer.detail == "max"


def test_v1_codes_in_order_and_only_integers() -> None:
    body = b'{"errors":[{"code":88,"message":"Rate limit exceeded"},{"code":true},' \
           b'{"code":"32"},{"code":130}]}'
    answer = parse_answer(429, {}, body)
    assert answer.codes == (88, 130)
    assert answer.problems == ()  # v1.1 entries have no `type`
    assert answer.detail == "Rate limit exceeded"


def test_per_rule_errors_of_a_rules_post() -> None:
    body = orjson.dumps({"errors": [
        {"value": "  cat  ", "id": 1273026480692322304, "title": "DuplicateRule",
         "type": "https://api.twitter.com/2/problems/duplicate-rules"},
        {"value": "bad:x", "details": ["Reference to invalid operator 'bad'.", 7, ""],
         "title": "UnprocessableEntity",
         "type": "https://api.twitter.com/2/problems/invalid-rules"},
    ], "meta": {"summary": {"created": 0}}})
    duplicate, invalid = parse_answer(201, {}, body).errors
    assert duplicate.value == "  cat  "  # compared with the configured value: kept whole
    assert duplicate.rule_id == "1273026480692322304"
    assert invalid.details == ("Reference to invalid operator 'bad'.",)
    assert invalid.headline() == "UnprocessableEntity"


def test_summary_joins_title_detail_and_nested_messages() -> None:
    body = orjson.dumps({"errors": [{"parameters": {"ids": ["x"]},
                                     "message": "'x' is not a valid Long"}],
                         "title": "Invalid Request", "detail": "One or more parameters.",
                         "type": "https://api.x.com/2/problems/invalid-request"})
    assert parse_answer(400, {}, body).summary() == (
        "Invalid Request: One or more parameters.: 'x' is not a valid Long")
    assert parse_answer(502, {}, b"<html>bad gateway</html>").summary() == "no detail"


@pytest.mark.parametrize("body", [
    b"", b"<html>nginx</html>", b"[1,2]", b"null", b'"x"', b"{" * 10000, b"\xff\xfe",
    b'{"errors":"not a list"}', b'{"errors":[1,"x",null]}', b'{"type":42,"title":["x"]}',
])
def test_garbage_reads_as_nothing_and_never_raises(body: bytes) -> None:
    answer = parse_answer(400, {}, body)
    assert answer.problems == ()
    assert answer.codes == ()
    assert answer.detail is None


def test_text_is_one_bounded_line() -> None:
    body = orjson.dumps({"title": "T\r\n\x1b[2J", "detail": "  a \n  b  " + "x" * 5000,
                         "type": "about:blank"})
    top = parse_answer(401, {}, body).top
    assert top is not None
    assert top.title == "T \x1b[2J"  # one line; escaping control characters is the UI's job
    assert top.detail is not None
    assert top.detail.startswith("a b x")
    assert len(top.detail) == MAX_DETAIL
    assert top.slug == "about:blank"


def test_error_documents_past_the_cap_are_not_parsed_but_pages_are() -> None:
    padding = "x" * MAX_PROBLEM_BODY
    big_problem = orjson.dumps({"title": "Unauthorized", "type": "about:blank",
                                "padding": padding})
    assert parse_answer(401, {}, big_problem).document is None
    page = orjson.dumps({"data": [{"id": "1", "value": padding}]})
    document = parse_answer(200, {}, page).document
    assert document is not None
    assert document["data"][0]["id"] == "1"


def test_every_fixture_body_reads_with_some_text() -> None:
    for line in (FIXTURES / "x_error_bodies.jsonl").read_text().splitlines():
        case: dict[str, Any] = json.loads(line)
        if case["where"] != "connect" or not case["body"].startswith("{"):
            continue
        answer = parse_answer(case["status"], case["headers"], case["body"].encode())
        assert answer.detail, case["name"]


def test_an_in_stream_message() -> None:
    answer = parse_message(orjson.loads(fixture("operational_disconnect")))
    assert answer.status is None
    assert answer.rate_limit == RateLimit()
    (problem,) = answer.errors
    assert problem.slug == "operational-disconnect"
    assert problem.disconnect_type is not None


# --- rate-limit headers -----------------------------------------------------------------


def test_rate_limit_headers() -> None:
    headers = httpx.Headers({"X-Rate-Limit-Limit": "450", "x-rate-limit-remaining": "449",
                             "x-rate-limit-reset": "1705420800"})
    assert rate_limit(headers) == RateLimit(450, 449, 1705420800.0)
    # Plain dicts in another casing, milliseconds from a proxy, a reset of 0 (no time).
    assert rate_limit({"X-RATE-LIMIT-RESET": "1705420800000"}).reset == 1705420800.0
    assert rate_limit({"x-rate-limit-reset": "0", "x-rate-limit-remaining": "0"}) == \
        RateLimit(None, 0, None)
    assert rate_limit({}) == RateLimit()
    assert parse_answer(429, headers, b"").rate_limit.remaining == 449


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("49", 49),
        (" 49 ", 49),
        ("49.9", 49),
        ("1705420800000", 1705420800000),  # milliseconds from a proxy: still a number
        ("\u00b2", None),  # str.isdigit() is true for it; int() is not
        ("\u0661\u0662", None),  # float() reads Arabic-Indic digits; a header never has them
        ("inf", None),
        ("nan", None),
        ("-1", None),
        ("1e400", None),
        ("9" * 400, None),
        ("1e14", None),
        ("", None),
        ("twelve", None),
    ],
)
def test_hostile_rate_limit_headers_are_refused(raw: str, expected: int | None) -> None:
    """A hostile x-rate-limit-* header never reaches int() or a gauge as inf, nan or a
    Unicode digit (each crashed a reader before)."""
    assert rate_limit({"x-rate-limit-remaining": raw}).remaining == expected
    assert rate_limit({"x-rate-limit-limit": raw}).limit == expected


# --- what streamd asks for --------------------------------------------------------------


def test_stream_query_names_each_field_list_and_leaves_empty_ones_out() -> None:
    x = Settings.model_validate({"x": {
        "tweet_fields": ["created_at", "author_id"], "expansions": [], "user_fields": [],
        "media_fields": ["url"], "poll_fields": [], "place_fields": [],
    }}).x
    assert stream_query(x) == {"tweet.fields": "created_at,author_id", "media.fields": "url"}
    assert stream_query(x, backfill_minutes=3)["backfill_minutes"] == "3"
    assert "backfill_minutes" not in stream_query(x, backfill_minutes=0)
