"""Classify every end of a stream connection into exactly one `Reason` (README "Disconnect
reasons and backoff"; https://docs.x.com/x-api/posts/filtered-stream/integrate/handling-disconnections).

Pure functions, no I/O; X's documents are read by wire.py. Three inputs can end a connection:

* a non-200 answer to the connect request (`classify_answer`, or
  `classify_connect_response` from the raw status, headers and body),
* an in-stream error-only JSON object, usually followed by the server closing the body
  (`classify_stream_message`, then `classify_eof`),
* an exception from the transport, or streamd's own stall watchdog
  (`classify_transport_error`).

Decision order for a connect response (first match wins):

1. HTTP 420 -> rate_limited (v1.1 "Enhance Your Calm").
2. HTTP 5xx -> server_error, whatever the body says.
3. A recognised problem `type` (slug, refined by `connection_issue`) in the bare Problem or
   in any `errors[]` entry: it is the most specific statement X makes.
4. A recognised v1.1 `errors[].code`: these decide over the 4xx status because X pairs them
   with statuses that do not match their meaning (code 215 "Bad Authentication data" comes
   with HTTP 400, code 88 with 429 or 420).
5. The HTTP status alone (the `_STATUS` table below, then other 4xx, 3xx).

Choices where the spec was silent (documented here because callers rely on them):

* 409 `RulesInvalidIssue`, `noncompliant-rules` (at connect or in-stream) -> no_rules: the
  remedy is the same as for an empty rule set (re-sync the configured rules, else exit 78).
* 429/other `ProvisioningSubscription` -> server_error: X is still provisioning the stream,
  a transient server-side condition that fits the http backoff.
* v1.1 code 226 ("this request looks like it might be automated") -> rate_limited: it is an
  anti-spam throttle that clears by itself, so it must not be fatal, but it also must not be
  retried quickly; the rate-limit schedule (60 s doubling to 960 s) fits.
* 3xx -> invalid_request: a redirect means `x.api_url` points at the wrong place.
* 402 and the `credits-depleted` problem -> usage_cap: pay-per-use accounts get "402
  Payment Required" once their credits are used up (observed body: `{"title":"Payment
  Required","detail":"credits depleted","type":".../2/problems/credits-depleted"}`). Like
  the monthly cap it ends when someone tops up or the period rolls over, not by a restart,
  so the daemon waits on the usage-cap schedule with /readyz failing, and never exits.
* Other non-200 statuses below 400 (1xx, 2xx) -> server_error.
* Unknown exception types in `classify_transport_error` -> network (the detail names the
  type), so one surprise exception never kills the daemon.

Bare 4xx statuses X does not document for the stream. The rule: exit 78 only when the
answer is a deterministic verdict on the request streamd builds from its configuration
(every retry gets the same answer, only an edit helps); wait on the `server_error`
schedule when a human cannot fix it in the config or when X's own trouble is the likelier
cause. What a wrong choice costs decides the close calls: a needless exit stops ingestion
until someone restarts it (tweets past the backfill window are lost for good), a needless
retry costs one `stream.disconnected` line per attempt, settling at one every
`backoff.http_max` (320 s), while /readyz fails and the disconnect alerts fire.

* 404 -> server_error. A wrong `x.api_url` also breaks the rules endpoint on the same base
  URL, and the start-up rules sync (rules.mode "sync" or "add", on_error "fail") stops on
  that with exit 78 before the stream is ever requested, as does `streamd check`; so a 404
  on the stream itself is more likely one X route failing during an incident.
* 406 -> server_error: streamd sends no content negotiation a config could change, so the
  answer is X's (or a proxy's) fault and 78 would send the operator to the wrong place.
* 408, 421, 425 -> server_error: HTTP defines them as "try again" (timeout, misdirected
  connection, too early).
* 410 -> invalid_request: "Gone" is X's explicit statement that the endpoint is retired;
  retrying cannot bring it back, a new `x.api_url` or a newer streamd can.
* 413, 414, 431 -> invalid_request: the request (query string from the `x.*_fields`
  lists, the bearer token header) is too large; the same request is refused every time.
* 422 -> invalid_request: the parameters are well-formed but rejected, which is 400's
  meaning with another number.
* Any other 4xx (405, 407, 411, 415, 451, ...) -> invalid_request, the default.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import anyio
import httpx

from streamd.reasons import Reason
from streamd.x.wire import Answer, Problem, one_line, parse_answer

__all__ = [
    "Classification",
    "classify_answer",
    "classify_connect_response",
    "classify_eof",
    "classify_stream_message",
    "classify_transport_error",
]


@dataclass(frozen=True, slots=True)
class Classification:
    """Why a connection ended (or a connect or request failed), with what X said about it."""

    reason: Reason
    status: int | None = None
    problem_type: str | None = None  # the deciding problem's slug
    disconnect_type: str | None = None
    connection_issue: str | None = None
    detail: str | None = None
    reset_at: float | None = None  # x-rate-limit-reset, epoch seconds
    codes: tuple[int, ...] = ()  # X's v1.1 error codes, in order


# (slug, connection_issue) -> reason; connection_issue None is the slug's default.
_CONNECT_PROBLEMS: dict[tuple[str, str | None], Reason] = {
    ("streaming-connection", "toomanyconnections"): Reason.TOO_MANY_CONNECTIONS,
    ("streaming-connection", "ruleconfigurationissue"): Reason.NO_RULES,
    ("streaming-connection", "rulesinvalidissue"): Reason.NO_RULES,
    ("streaming-connection", "provisioningsubscription"): Reason.SERVER_ERROR,
    ("usage-capped", None): Reason.USAGE_CAP,
    ("credits-depleted", None): Reason.USAGE_CAP,  # pay-per-use, with HTTP 402
    ("rate-limit-exceeded", None): Reason.RATE_LIMITED,
    ("client-forbidden", None): Reason.FORBIDDEN,
    ("unsupported-authentication", None): Reason.FORBIDDEN,
    ("invalid-request", None): Reason.INVALID_REQUEST,
    ("rule-cap", None): Reason.RULES_CAP,
    ("noncompliant-rules", None): Reason.NO_RULES,
}

# Problems inside `errors[]` of an in-stream object that end the connection. Anything else
# (partial errors such as resource-not-found) is logged and counted by the caller.
_STREAM_PROBLEMS: dict[tuple[str, str | None], Reason] = {
    ("operational-disconnect", None): Reason.OPERATIONAL_DISCONNECT,
    ("usage-capped", None): Reason.USAGE_CAP,
    ("credits-depleted", None): Reason.USAGE_CAP,
    ("noncompliant-rules", None): Reason.NO_RULES,
    ("streaming-connection", "toomanyconnections"): Reason.TOO_MANY_CONNECTIONS,
    ("streaming-connection", "ruleconfigurationissue"): Reason.NO_RULES,
    ("streaming-connection", "rulesinvalidissue"): Reason.NO_RULES,
}
# When one in-stream object carries several of the above, the most telling one wins.
_STREAM_PRIORITY: tuple[Reason, ...] = (
    Reason.OPERATIONAL_DISCONNECT,
    Reason.USAGE_CAP,
    Reason.TOO_MANY_CONNECTIONS,
    Reason.NO_RULES,
)

# Legacy v1.1 `{"errors":[{"code":N,"message":...}]}` codes.
_V1_CODES: dict[int, Reason] = {
    32: Reason.UNAUTHORIZED,  # Could not authenticate you
    89: Reason.UNAUTHORIZED,  # Invalid or expired token
    135: Reason.UNAUTHORIZED,  # Timestamp out of bounds
    215: Reason.UNAUTHORIZED,  # Bad authentication data (sent with HTTP 400)
    64: Reason.FORBIDDEN,  # Account suspended
    87: Reason.FORBIDDEN,  # Client is not permitted to perform this action
    220: Reason.FORBIDDEN,  # Credentials do not allow access to this resource
    261: Reason.FORBIDDEN,  # Application cannot perform write actions
    326: Reason.FORBIDDEN,  # Account temporarily locked
    453: Reason.FORBIDDEN,  # Access to a subset of endpoints only (tier)
    88: Reason.RATE_LIMITED,  # Rate limit exceeded
    226: Reason.RATE_LIMITED,  # Looks automated: transient anti-spam throttle, see module doc
    130: Reason.SERVER_ERROR,  # Over capacity
    131: Reason.SERVER_ERROR,  # Internal error
}

# Bare statuses; the choices for the undocumented ones are argued in the module doc.
_STATUS: dict[int, Reason] = {
    400: Reason.INVALID_REQUEST,
    401: Reason.UNAUTHORIZED,
    402: Reason.USAGE_CAP,
    403: Reason.FORBIDDEN,
    404: Reason.SERVER_ERROR,
    406: Reason.SERVER_ERROR,
    408: Reason.SERVER_ERROR,
    409: Reason.NO_RULES,
    410: Reason.INVALID_REQUEST,
    413: Reason.INVALID_REQUEST,
    414: Reason.INVALID_REQUEST,
    420: Reason.RATE_LIMITED,
    421: Reason.SERVER_ERROR,
    422: Reason.INVALID_REQUEST,
    425: Reason.SERVER_ERROR,
    429: Reason.RATE_LIMITED,
    431: Reason.INVALID_REQUEST,
}


def _lookup(table: Mapping[tuple[str, str | None], Reason], problem: Problem) -> Reason | None:
    assert problem.slug is not None  # Answer.problems holds typed problems only
    if problem.connection_issue is not None:
        reason = table.get((problem.slug, problem.connection_issue.lower()))
        if reason is not None:
            return reason
    return table.get((problem.slug, None))


def _classification(
    reason: Reason, problem: Problem | None, answer: Answer, detail: str | None
) -> Classification:
    return Classification(
        reason=reason,
        status=answer.status,
        problem_type=problem.slug if problem else None,
        disconnect_type=problem.disconnect_type if problem else None,
        connection_issue=problem.connection_issue if problem else None,
        detail=detail,
        reset_at=answer.rate_limit.reset,
        codes=answer.codes,
    )


# --- public classifiers ----------------------------------------------------------------


def classify_answer(answer: Answer) -> Classification:
    """Classify a non-200 answer to `GET /2/tweets/search/stream` (see module doc)."""
    status = answer.status
    assert status is not None, "an in-stream message is classified by classify_stream_message"
    problems = answer.problems
    chosen = problems[0] if problems else None
    reason: Reason | None = None

    if status == 420:
        reason = Reason.RATE_LIMITED
    elif status >= 500:
        reason = Reason.SERVER_ERROR
    if reason is None:
        for problem in problems:
            reason = _lookup(_CONNECT_PROBLEMS, problem)
            if reason is not None:
                chosen = problem
                break
    if reason is None:
        reason = next((_V1_CODES[c] for c in answer.codes if c in _V1_CODES), None)
    if reason is None:
        reason = _status_reason(status)
    detail = chosen.text if chosen and chosen.text else answer.detail
    return _classification(reason, chosen, answer, detail)


def classify_connect_response(
    status: int, headers: Mapping[str, str], body: bytes
) -> Classification:
    """`classify_answer` of the raw answer (its body already bounded and decoded)."""
    return classify_answer(parse_answer(status, headers, body))


def _status_reason(status: int) -> Reason:
    reason = _STATUS.get(status)
    if reason is not None:
        return reason
    if 400 <= status < 500:
        return Reason.INVALID_REQUEST
    if 300 <= status < 400:
        return Reason.INVALID_REQUEST
    return Reason.SERVER_ERROR


def classify_stream_message(message: Answer) -> Classification | None:
    """Classify an in-stream JSON object; None unless it announces the end of the stream.

    Objects with `data` are tweets (possibly with partial `errors[]`): None. Error-only
    objects whose problems are not in `_STREAM_PROBLEMS` are logged and counted by the
    caller: None.
    """
    if message.document is None or "data" in message.document:
        return None
    found: dict[Reason, Problem] = {}
    for problem in message.errors:
        reason = _lookup(_STREAM_PROBLEMS, problem) if problem.slug is not None else None
        if reason is not None and reason not in found:
            found[reason] = problem
    for reason in _STREAM_PRIORITY:
        if reason in found:
            return _classification(reason, found[reason], message, found[reason].text)
    return None


# Exception type -> reason, checked in order (subclasses before their bases).
_TRANSPORT: tuple[tuple[type[BaseException], Reason], ...] = (
    # A bad URL scheme or URL is configuration, not weather.
    (httpx.UnsupportedProtocol, Reason.INVALID_REQUEST),
    (httpx.InvalidURL, Reason.INVALID_REQUEST),
    (httpx.TransportError, Reason.NETWORK),  # connect/read/write/protocol/proxy/timeouts
    (httpx.DecodingError, Reason.NETWORK),  # gzip stream cut mid-block
    (httpx.StreamError, Reason.NETWORK),
    (ssl.SSLError, Reason.NETWORK),
    (anyio.EndOfStream, Reason.NETWORK),
    (anyio.BrokenResourceError, Reason.NETWORK),
    (anyio.ClosedResourceError, Reason.NETWORK),
    (TimeoutError, Reason.NETWORK),
    (OSError, Reason.NETWORK),
    (EOFError, Reason.NETWORK),
)


def _exception_detail(exc: BaseException) -> str:
    message = one_line(str(exc))
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def classify_transport_error(exc: BaseException) -> Classification:
    """Classify an exception raised while connecting or reading the stream."""
    for exc_type, reason in _TRANSPORT:
        if isinstance(exc, exc_type):
            return Classification(reason=reason, detail=_exception_detail(exc))
    return Classification(
        reason=Reason.NETWORK, detail="unexpected " + _exception_detail(exc)
    )


def classify_eof(after_message: Classification | None) -> Classification:
    """The body ended cleanly: the preceding disconnect message explains it, else network."""
    if after_message is not None:
        return after_message
    return Classification(reason=Reason.NETWORK, detail="EOF without message")
