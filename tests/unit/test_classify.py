"""Disconnect classification against real and documented X error bodies."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from streamd.config import BackoffSettings
from streamd.reasons import Reason
from streamd.x.classify import (
    Classification,
    classify_connect_response,
    classify_eof,
    classify_stream_message,
    classify_transport_error,
)
from streamd.x.reconnect import Exit, ReconnectPolicy
from streamd.x.wire import parse_message, problem_slug

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "x_error_bodies.jsonl"
CASES: list[dict[str, Any]] = [
    json.loads(line) for line in FIXTURES.read_text(encoding="utf-8").splitlines() if line
]
CONNECT = [c for c in CASES if c["where"] == "connect"]
STREAM = [c for c in CASES if c["where"] == "stream"]


def in_stream(obj: dict[str, Any]) -> Classification | None:
    return classify_stream_message(parse_message(obj))


def policy_exit_code(reason: Reason) -> int | None:
    """What the reconnect policy makes of `reason`: its exit code, or None (retried)."""
    decision = ReconnectPolicy(BackoffSettings()).decide(Classification(reason))
    return int(decision.code) if isinstance(decision, Exit) else None


@pytest.mark.parametrize("case", CONNECT, ids=[c["name"] for c in CONNECT])
def test_connect_fixture(case: dict[str, Any]) -> None:
    got = classify_connect_response(case["status"], case["headers"], case["body"].encode())
    assert got.reason == Reason(case["expected_reason"])
    assert got.status == case["status"]
    if case["problem_type"] is not None:
        assert got.problem_type == case["problem_type"]
    assert got.connection_issue == case["connection_issue"]
    if case["body"].startswith("{"):
        assert got.detail  # every JSON body carries some human text


@pytest.mark.parametrize("case", STREAM, ids=[c["name"] for c in STREAM])
def test_stream_fixture(case: dict[str, Any]) -> None:
    got = in_stream(orjson.loads(case["body"]))
    if case["expected_reason"] is None:
        assert got is None
        return
    assert got is not None
    assert got.reason == Reason(case["expected_reason"])
    assert got.problem_type == case["problem_type"]
    assert got.disconnect_type == case["disconnect_type"]
    assert got.status is None
    assert got.detail


def test_fixture_covers_the_table() -> None:
    """Every X-side connect/stream reason appears in the fixtures at least once."""
    seen = {c["expected_reason"] for c in CASES}
    expected = {
        r.value for r in Reason if r not in (Reason.STALL, Reason.NETWORK, Reason.RULES_CAP)
    } - {Reason.SPOOL_FULL.value, Reason.SHUTDOWN.value,
         # Not in any answer: found in X's connection history (x/ownership.py), the
         # clean end of a recovery connection (x/recovery.py), and a lost election (ha/).
         Reason.EVICTED.value, Reason.RECOVERY_COMPLETE.value, Reason.NOT_LEADER.value}
    assert expected <= seen


def test_reset_at_from_reset_header() -> None:
    body = b'{"title":"Too Many Requests","type":"about:blank","status":429}'
    got = classify_connect_response(429, {"x-rate-limit-reset": "1705420800"}, body)
    assert got.reason is Reason.RATE_LIMITED
    assert got.reset_at == 1705420800.0
    # Plain dicts with other casing, millisecond values, garbage.
    mixed = classify_connect_response(429, {"X-Rate-Limit-Reset": "1705420800000"}, body)
    assert mixed.reset_at == 1705420800.0
    bad = classify_connect_response(429, {"x-rate-limit-reset": "soon"}, body)
    assert bad.reset_at is None
    assert classify_connect_response(429, {"x-rate-limit-reset": "nan"}, body).reset_at is None
    httpx_headers = httpx.Headers({"X-RATE-LIMIT-RESET": "17"})
    assert classify_connect_response(429, httpx_headers, body).reset_at == 17.0


def test_v1_codes_are_carried() -> None:
    body = (b'{"errors":[{"code":453,"message":"You currently have access to a subset"},'
            b'{"code":88},{"code":true},{"message":"no code"}]}')
    got = classify_connect_response(403, {}, body)
    assert got.reason is Reason.FORBIDDEN
    assert got.codes == (453, 88)
    assert got.detail == "You currently have access to a subset"


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (420, Reason.RATE_LIMITED),
        (400, Reason.INVALID_REQUEST),
        (401, Reason.UNAUTHORIZED),
        (403, Reason.FORBIDDEN),
        (402, Reason.USAGE_CAP),
        (404, Reason.SERVER_ERROR),
        (405, Reason.INVALID_REQUEST),
        (406, Reason.SERVER_ERROR),
        (409, Reason.NO_RULES),
        (410, Reason.INVALID_REQUEST),
        (422, Reason.INVALID_REQUEST),
        (429, Reason.RATE_LIMITED),
        (500, Reason.SERVER_ERROR),
        (501, Reason.SERVER_ERROR),
        (502, Reason.SERVER_ERROR),
        (503, Reason.SERVER_ERROR),
        (504, Reason.SERVER_ERROR),
        (599, Reason.SERVER_ERROR),
        (301, Reason.INVALID_REQUEST),
        (204, Reason.SERVER_ERROR),
    ],
)
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html><body><h1>502 Bad Gateway</h1></body></html>",
        b"\x00\xff\xfe garbage",
        b"[1,2,3]",
        b"null",
        b'"just a string"',
        b'{"errors":"not a list"}',
        b'{"errors":[1,"x",null,{"code":true},{"type":42}]}',
        b'{"type":null,"title":["x"]}',
        b"{" * 10000,
    ],
    ids=lambda b: repr(b[:12]),
)
def test_status_decides_for_garbage_bodies(status: int, reason: Reason, body: bytes) -> None:
    got = classify_connect_response(status, {}, body)
    assert got.reason is reason
    assert got.status == status


# Every bare 4xx the module doc decides, with the operator-facing consequence spelled out:
# the exit code for fatal ones, else the backoff schedule the reason picks.
UNLISTED_4XX: list[tuple[int, Reason, int | None]] = [
    (402, Reason.USAGE_CAP, None),  # credits used up: wait like the usage cap
    (404, Reason.SERVER_ERROR, None),  # one X route failing; a wrong api_url fails earlier
    (405, Reason.INVALID_REQUEST, 78),
    (406, Reason.SERVER_ERROR, None),  # nothing in the config negotiates content
    (407, Reason.INVALID_REQUEST, 78),
    (408, Reason.SERVER_ERROR, None),
    (410, Reason.INVALID_REQUEST, 78),  # the endpoint is retired
    (411, Reason.INVALID_REQUEST, 78),
    (413, Reason.INVALID_REQUEST, 78),
    (414, Reason.INVALID_REQUEST, 78),  # query string from the x.*_fields lists
    (415, Reason.INVALID_REQUEST, 78),
    (418, Reason.INVALID_REQUEST, 78),
    (421, Reason.SERVER_ERROR, None),
    (422, Reason.INVALID_REQUEST, 78),
    (425, Reason.SERVER_ERROR, None),
    (431, Reason.INVALID_REQUEST, 78),  # e.g. field lists too long for the query string
    (451, Reason.INVALID_REQUEST, 78),
    (499, Reason.INVALID_REQUEST, 78),
]


@pytest.mark.parametrize(("status", "reason", "exit_code"), UNLISTED_4XX,
                         ids=[str(s) for s, _, _ in UNLISTED_4XX])
@pytest.mark.parametrize("body", [
    b"",
    b'{"title":"Whatever","detail":"d","type":"about:blank"}',
    b"<html>nginx</html>",
])
def test_undocumented_4xx_statuses(
    status: int, reason: Reason, exit_code: int | None, body: bytes
) -> None:
    got = classify_connect_response(status, {}, body)
    assert (got.reason, got.status) == (reason, status)
    assert policy_exit_code(got.reason) == exit_code


def test_402_payment_required_waits_like_the_usage_cap() -> None:
    # The body X's pay-per-use answers with once the credits are used up.
    body = (b'{"title":"Payment Required","detail":"credits depleted",'
            b'"type":"https://api.x.com/2/problems/credits-depleted"}')
    got = classify_connect_response(402, {}, body)
    assert got.reason is Reason.USAGE_CAP
    assert policy_exit_code(got.reason) is None
    assert got.problem_type == "credits-depleted"
    assert got.detail == "credits depleted"
    # The problem type decides whatever status carries it (decision order: type first).
    assert classify_connect_response(403, {}, body).reason is Reason.USAGE_CAP
    # And an in-stream notice of it ends the connection the same way.
    notice = in_stream(orjson.loads(body.replace(b"{", b'{"errors":[{', 1) + b"]}"))
    assert notice is not None
    assert notice.reason is Reason.USAGE_CAP


def test_problem_types_and_v1_codes_still_decide_over_the_new_statuses() -> None:
    forbidden = b'{"title":"t","type":"https://api.x.com/2/problems/client-forbidden"}'
    assert classify_connect_response(402, {}, forbidden).reason is Reason.FORBIDDEN
    assert classify_connect_response(404, {}, forbidden).reason is Reason.FORBIDDEN
    v1_auth = b'{"errors":[{"code":215,"message":"Bad Authentication data."}]}'
    assert classify_connect_response(404, {}, v1_auth).reason is Reason.UNAUTHORIZED
    invalid = b'{"title":"t","type":"https://api.x.com/2/problems/invalid-request"}'
    assert classify_connect_response(406, {}, invalid).reason is Reason.INVALID_REQUEST


def test_5xx_wins_over_any_body() -> None:
    body = b'{"title":"x","type":"https://api.twitter.com/2/problems/client-forbidden"}'
    assert classify_connect_response(503, {}, body).reason is Reason.SERVER_ERROR
    v1 = b'{"errors":[{"code":32,"message":"Could not authenticate you."}]}'
    assert classify_connect_response(500, {}, v1).reason is Reason.SERVER_ERROR


def test_problem_wins_over_status_and_codes() -> None:
    capped = (
        b'{"title":"UsageCapExceeded","detail":"Usage cap exceeded: Monthly product cap",'
        b'"type":"https://api.twitter.com/2/problems/usage-capped","errors":[{"code":88}]}'
    )
    assert classify_connect_response(429, {}, capped).reason is Reason.USAGE_CAP


def test_problems_wrapped_in_errors_array() -> None:
    body = (
        b'{"errors":[{"title":"ConnectionException","detail":"max",'
        b'"connection_issue":"TooManyConnections",'
        b'"type":"https://api.twitter.com/2/problems/streaming-connection"}]}'
    )
    got = classify_connect_response(429, {}, body)
    assert got.reason is Reason.TOO_MANY_CONNECTIONS
    assert got.connection_issue == "TooManyConnections"
    assert got.detail == "max"


@pytest.mark.parametrize(
    ("status", "slug", "issue", "reason"),
    [
        (409, "streaming-connection", "RulesInvalidIssue", Reason.NO_RULES),
        (409, "streaming-connection", "ProvisioningSubscription", Reason.SERVER_ERROR),
        (409, "streaming-connection", "SomethingNew", Reason.NO_RULES),  # status decides
        (429, "streaming-connection", "SomethingNew", Reason.RATE_LIMITED),
        (429, "rate-limit-exceeded", None, Reason.RATE_LIMITED),
        (403, "rule-cap", None, Reason.RULES_CAP),
        (409, "noncompliant-rules", None, Reason.NO_RULES),
        (400, "unknown-future-problem", None, Reason.INVALID_REQUEST),
    ],
)
def test_problem_table(status: int, slug: str, issue: str | None, reason: Reason) -> None:
    problem: dict[str, str] = {
        "title": "t",
        "detail": "d",
        "type": f"https://api.x.com/2/problems/{slug}",
    }
    if issue:
        problem["connection_issue"] = issue
    got = classify_connect_response(status, {}, orjson.dumps(problem))
    assert got.reason is reason
    assert got.problem_type == slug


def test_detail_is_trimmed_and_bounded() -> None:
    body = orjson.dumps({"title": "T", "detail": "  a \n  b  " + "x" * 1000, "type": "about:blank"})
    detail = classify_connect_response(401, {}, body).detail
    assert detail is not None
    assert detail.startswith("a b x")
    assert len(detail) <= 300


@pytest.mark.parametrize(
    "uri",
    [
        "https://api.twitter.com/2/problems/operational-disconnect",
        "https://api.x.com/2/problems/operational-disconnect",
        "https://api.X.com/2/problems/operational-disconnect",
        "HTTPS://API.TWITTER.COM/2/PROBLEMS/OPERATIONAL-DISCONNECT",
        "http://localhost:8080/2/problems/operational-disconnect",
        "/2/problems/operational-disconnect",
        " https://api.x.com/2/problems/operational-disconnect?x=1 ",
    ],
)
def test_problem_slug_host_variants(uri: str) -> None:
    assert problem_slug(uri) == "operational-disconnect"
    msg = {"errors": [{"title": "t", "disconnect_type": "ForceDisconnect", "type": uri}]}
    got = in_stream(msg)
    assert got is not None
    assert got.reason is Reason.OPERATIONAL_DISCONNECT
    assert got.disconnect_type == "ForceDisconnect"


def test_problem_slug_other_forms() -> None:
    assert problem_slug("about:blank") == "about:blank"
    assert problem_slug("About:Blank") == "about:blank"
    assert problem_slug("https://example.com/other") == "https://example.com/other"
    assert problem_slug("") == ""


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"data": {"id": "1"}},
        {"data": {"id": "1"}, "errors": [{"type": "/2/problems/operational-disconnect"}]},
        {"errors": []},
        {"errors": None},
        {"errors": "operational-disconnect"},
        {"errors": [None, 3, "x", {"type": 5}, {"code": 130, "message": "Over capacity"}]},
        {"errors": [{"title": "Not Found Error", "detail": "Could not find"}]},
        {"new_message_type": {"x": 1}},
    ],
)
def test_stream_messages_that_are_not_disconnects(obj: dict[str, object]) -> None:
    assert in_stream(obj) is None


def test_stream_message_priority() -> None:
    obj = {
        "errors": [
            {"title": "x", "type": "https://api.twitter.com/2/problems/usage-capped"},
            {
                "title": "operational-disconnect",
                "disconnect_type": "OperationalDisconnect",
                "type": "https://api.twitter.com/2/problems/operational-disconnect",
            },
        ]
    }
    got = in_stream(obj)
    assert got is not None
    assert got.reason is Reason.OPERATIONAL_DISCONNECT


def _request() -> httpx.Request:
    return httpx.Request("GET", "https://api.x.com/2/tweets/search/stream")


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("[Errno 111] Connection refused", request=_request()),
        httpx.ReadError("[Errno 104] Connection reset by peer", request=_request()),
        httpx.WriteError("broken pipe", request=_request()),
        httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body "
            "(incomplete chunked read)",
            request=_request(),
        ),
        httpx.ReadTimeout("timed out", request=_request()),
        httpx.ConnectTimeout("timed out", request=_request()),
        httpx.PoolTimeout("timed out", request=_request()),
        httpx.ProxyError("proxy said no", request=_request()),
        httpx.DecodingError("Error -3 while decompressing data", request=_request()),
        httpx.StreamClosed(),
        ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
        ssl.SSLCertVerificationError(1, "certificate verify failed"),
        ConnectionResetError(104, "Connection reset by peer"),
        ConnectionRefusedError(111, "Connection refused"),
        OSError(113, "No route to host"),
        TimeoutError(),
        EOFError(),
        anyio.EndOfStream(),
        anyio.BrokenResourceError(),
        anyio.ClosedResourceError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_transport_errors_are_network(exc: BaseException) -> None:
    got = classify_transport_error(exc)
    assert got.reason is Reason.NETWORK
    assert got.status is None
    assert got.detail is not None
    assert got.detail.startswith(type(exc).__name__)


def test_config_errors() -> None:
    bad_scheme = httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'")
    assert classify_transport_error(bad_scheme).reason is Reason.INVALID_REQUEST
    assert classify_transport_error(httpx.InvalidURL("bad")).reason is Reason.INVALID_REQUEST


def test_unknown_exception_is_network_with_its_type() -> None:
    got = classify_transport_error(KeyError("boom"))
    assert got.reason is Reason.NETWORK
    assert got.detail == "unexpected KeyError: 'boom'"


def test_real_httpx_failures() -> None:
    """Exceptions raised by httpx itself, not constructed by hand."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    mock = httpx.MockTransport(refuse)
    with httpx.Client(transport=mock) as client, pytest.raises(httpx.HTTPError) as info:
        client.get("https://api.x.com/2/tweets/search/stream")
    assert classify_transport_error(info.value).reason is Reason.NETWORK

    # A real refused TCP connect: bind a port, close it, connect to it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with httpx.Client(timeout=2) as client, pytest.raises(httpx.HTTPError) as refused:
        client.get(f"http://127.0.0.1:{port}/2/tweets/search/stream")
    assert isinstance(refused.value, httpx.ConnectError)
    assert classify_transport_error(refused.value).reason is Reason.NETWORK

    with httpx.Client() as client, pytest.raises(httpx.HTTPError) as info2:
        client.get("ftp://api.x.com/2/tweets/search/stream")
    assert classify_transport_error(info2.value).reason is Reason.INVALID_REQUEST


def test_eof() -> None:
    plain = classify_eof(None)
    assert plain.reason is Reason.NETWORK
    assert plain.detail == "EOF without message"
    msg = in_stream(
        {
            "errors": [
                {
                    "title": "operational-disconnect",
                    "disconnect_type": "SlowReader",
                    "type": "https://api.twitter.com/2/problems/operational-disconnect",
                }
            ]
        }
    )
    assert msg is not None
    assert classify_eof(msg) is msg


def test_classification_is_frozen() -> None:
    c = Classification(reason=Reason.NETWORK)
    with pytest.raises(AttributeError):
        c.reason = Reason.STALL  # type: ignore[misc]
