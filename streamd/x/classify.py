"""Classify every end of a stream connection into exactly one `Reason` (interface.md).

Pure functions, no I/O. Three inputs can end a connection:

* a non-200 answer to the connect request (`classify_connect_response`),
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

import math
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import anyio
import httpx
import orjson

from streamd.reasons import Reason

__all__ = [
    "Classification",
    "classify_connect_response",
    "classify_eof",
    "classify_stream_message",
    "classify_transport_error",
    "header_number",
    "problem_slug",
]


@dataclass(frozen=True, slots=True)
class Classification:
    reason: Reason
    status: int | None = None
    problem_type: str | None = None
    disconnect_type: str | None = None
    connection_issue: str | None = None
    detail: str | None = None
    retry_after: float | None = None


# --- problem types ---------------------------------------------------------------------

ABOUT_BLANK = "about:blank"
_PROBLEM_PATH = re.compile(r"/2/problems/([^/?#\s]+)", re.IGNORECASE)


def problem_slug(type_uri: str) -> str:
    """The `<slug>` of a `.../2/problems/<slug>` URI, lower case, whatever scheme/host/case.

    `about:blank` is returned as is. Anything else that is not a problem URI is returned
    stripped and lower-cased, so it still shows up in logs but matches no table entry.
    """
    text = type_uri.strip()
    match = _PROBLEM_PATH.search(text)
    if match is not None:
        return match.group(1).lower()
    return text.lower()


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

# Bodies above this are not error documents; do not spend time parsing them.
_MAX_BODY_PARSE = 256 * 1024
_MAX_DETAIL = 300


# --- body parsing (never raises) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Problem:
    slug: str
    issue: str | None
    disconnect_type: str | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class _Body:
    problems: tuple[_Problem, ...]
    codes: tuple[int, ...]
    detail: str | None


_EMPTY_BODY = _Body((), (), None)


def _text(value: object) -> str | None:
    """A trimmed, single-line, bounded string, or None for non-strings and blanks."""
    if not isinstance(value, str):
        return None
    text = " ".join(value.split())
    if not text:
        return None
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def _detail_of(obj: Mapping[str, object]) -> str | None:
    return _text(obj.get("detail")) or _text(obj.get("message")) or _text(obj.get("title"))


def _problem_of(obj: Mapping[str, object]) -> _Problem | None:
    type_uri = obj.get("type")
    if not isinstance(type_uri, str):
        return None
    issue = _text(obj.get("connection_issue"))
    return _Problem(
        slug=problem_slug(type_uri),
        issue=issue,
        disconnect_type=_text(obj.get("disconnect_type")),
        detail=_detail_of(obj),
    )


def _parse_mapping(obj: Mapping[str, object]) -> _Body:
    problems: list[_Problem] = []
    codes: list[int] = []
    top = _problem_of(obj)
    if top is not None:
        problems.append(top)
    detail = _detail_of(obj)
    errors = obj.get("errors")
    if isinstance(errors, list):
        for entry in errors:
            if not isinstance(entry, dict):
                continue
            problem = _problem_of(entry)
            if problem is not None:
                problems.append(problem)
            code = entry.get("code")
            # bool is an int subclass; `true` is not an error code.
            if isinstance(code, int) and not isinstance(code, bool):
                codes.append(code)
            if detail is None:
                detail = _detail_of(entry)
    return _Body(tuple(problems), tuple(codes), detail)


def _parse_body(body: bytes) -> _Body:
    if not body or len(body) > _MAX_BODY_PARSE:
        return _EMPTY_BODY
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _EMPTY_BODY
    if not isinstance(obj, dict):
        return _EMPTY_BODY
    return _parse_mapping(obj)


def _lookup(table: Mapping[tuple[str, str | None], Reason], problem: _Problem) -> Reason | None:
    if problem.issue is not None:
        reason = table.get((problem.slug, problem.issue.lower()))
        if reason is not None:
            return reason
    return table.get((problem.slug, None))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # A plain dict may not be case-insensitive like httpx.Headers.
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


def _reset_epoch(headers: Mapping[str, str]) -> float | None:
    raw = _header(headers, "x-rate-limit-reset")
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    # X sends epoch seconds; tolerate a proxy or fake server sending milliseconds.
    return value / 1000.0 if value > 1e11 else value


# Rate-limit headers are counts and epoch seconds (or milliseconds from a proxy): anything
# beyond this is not a number X sent.
_MAX_HEADER_NUMBER = 1e14


def header_number(headers: Mapping[str, str], name: str) -> float | None:
    """A rate-limit header as a number, or None when absent or not a plausible one: "inf",
    "nan", "²", negative or absurdly large values never reach int() or a gauge."""
    raw = headers.get(name)
    if raw is None:
        return None
    text = raw.strip()
    if not text.isascii() or len(text) > 32:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or not 0 <= value < _MAX_HEADER_NUMBER:
        return None
    return value


# --- public classifiers ----------------------------------------------------------------


def classify_connect_response(
    status: int, headers: Mapping[str, str], body: bytes
) -> Classification:
    """Classify a non-200 answer to `GET /2/tweets/search/stream` (see module doc)."""
    parsed = _parse_body(body)
    first = parsed.problems[0] if parsed.problems else None
    reason: Reason | None = None
    chosen = first

    if status == 420:
        reason = Reason.RATE_LIMITED
    elif status >= 500:
        reason = Reason.SERVER_ERROR
    if reason is None:
        for problem in parsed.problems:
            reason = _lookup(_CONNECT_PROBLEMS, problem)
            if reason is not None:
                chosen = problem
                break
    if reason is None:
        reason = next((_V1_CODES[c] for c in parsed.codes if c in _V1_CODES), None)
    if reason is None:
        reason = _status_reason(status)

    return Classification(
        reason=reason,
        status=status,
        problem_type=chosen.slug if chosen else None,
        disconnect_type=chosen.disconnect_type if chosen else None,
        connection_issue=chosen.issue if chosen else None,
        detail=(chosen.detail if chosen and chosen.detail else parsed.detail),
        retry_after=_reset_epoch(headers),
    )


def _status_reason(status: int) -> Reason:
    reason = _STATUS.get(status)
    if reason is not None:
        return reason
    if 400 <= status < 500:
        return Reason.INVALID_REQUEST
    if 300 <= status < 400:
        return Reason.INVALID_REQUEST
    return Reason.SERVER_ERROR


def classify_stream_message(obj: Mapping[str, object]) -> Classification | None:
    """Classify an in-stream JSON object; None unless it announces the end of the stream.

    Objects with `data` are tweets (possibly with partial `errors[]`): None. Error-only
    objects whose problems are not in `_STREAM_PROBLEMS` are logged and counted by the
    caller: None.
    """
    if "data" in obj:
        return None
    errors = obj.get("errors")
    if not isinstance(errors, list):
        return None
    found: dict[Reason, _Problem] = {}
    for entry in errors:
        if not isinstance(entry, dict):
            continue
        problem = _problem_of(entry)
        if problem is None:
            continue
        reason = _lookup(_STREAM_PROBLEMS, problem)
        if reason is not None and reason not in found:
            found[reason] = problem
    for reason in _STREAM_PRIORITY:
        problem = found.get(reason)
        if problem is not None:
            return Classification(
                reason=reason,
                problem_type=problem.slug,
                disconnect_type=problem.disconnect_type,
                connection_issue=problem.issue,
                detail=problem.detail,
            )
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
    message = _text(str(exc))
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
