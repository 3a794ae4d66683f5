"""What streamd says to X and how it reads what X answers: the one place that knows the
shape of X's error documents, its rate-limit headers and the stream's query parameters.

Every answer (a connect refused, a rules page, a rules POST with per-rule errors, an
in-stream error message, the Connections API to come) is read here into one `Answer`:

* `problems`: the RFC 7807 problem objects, the document's own first, then those of its
  `errors[]` (`type`, `title`, `detail`, `connection_issue`, `disconnect_type`, ...);
  problem `type` URIs are matched on their `/2/problems/<slug>` path, whatever the host
  (README "Disconnect reasons and backoff");
* `codes`: the legacy v1.1 `errors[].code` numbers;
* `rate_limit`: the `x-rate-limit-limit/remaining/reset` headers
  (https://docs.x.com/x-api/fundamentals/rate-limits);
* `document`: the JSON object itself, for the callers that read a successful answer.

X's documents are described at https://docs.x.com/x-api/fundamentals/response-codes-and-errors.

Everything here is pure and never raises on what X (or a proxy pretending to be X) sends:
text is cut to one bounded line, numbers are checked before they reach int() or a gauge,
and error documents past MAX_PROBLEM_BODY are not parsed at all. The byte caps on reading
a body are body.py's.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from streamd.config import XSettings

__all__ = [
    "ABOUT_BLANK",
    "MAX_DETAIL",
    "MAX_PROBLEM_BODY",
    "Answer",
    "Problem",
    "RateLimit",
    "one_line",
    "parse_answer",
    "parse_message",
    "problem_slug",
    "rate_limit",
    "rfc3339_seconds",
    "stream_query",
]

ABOUT_BLANK = "about:blank"
# An error document above this is not one X sends (theirs are a few hundred bytes; a 400
# listing a thousand refused rule ids is about 120 KB): not worth the time to parse.
MAX_PROBLEM_BODY = 256 * 1024
# Text from X ends up in log lines, exception messages and `check` output: one line, and
# never more than this many characters.
MAX_DETAIL = 300
# Rate-limit headers are counts and epoch seconds (or milliseconds from a proxy): anything
# beyond this is not a number X sent.
_MAX_HEADER_NUMBER = 1e14
_MAX_HEADER_CHARS = 32
# Past this an epoch is in milliseconds (1e11 s is the year 5138).
_EPOCH_MS = 1e11
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


def one_line(value: object) -> str | None:
    """A trimmed, single-line, bounded string, or None for non-strings and blanks."""
    if not isinstance(value, str):
        return None
    text = " ".join(value.split())
    if not text:
        return None
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


# --- problems ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One error object from X: a v2 problem (with `type`), or a v1.1 `{"code", "message"}`
    entry of `errors[]` (slug None). Every text is one bounded line, or None."""

    slug: str | None  # problem_slug(type); None when the object has no string `type`
    title: str | None = None
    detail: str | None = None
    message: str | None = None  # v1.1 entries and nested `errors[]` of a 400
    connection_issue: str | None = None  # streaming-connection: TooManyConnections, ...
    disconnect_type: str | None = None  # operational-disconnect: ForceDisconnect, ...
    reason: str | None = None  # client-forbidden: client-not-enrolled, ...
    code: int | None = None  # v1.1 error code
    value: str | None = None  # a rules POST's per-rule error: the rule's value ...
    rule_id: str | None = None  # ... and, for a duplicate, the rule that holds it
    details: tuple[str, ...] = ()  # ... and X's reasons (invalid-rules)

    @property
    def text(self) -> str | None:
        """The most specific human text: detail, else message, else title."""
        return self.detail or self.message or self.title

    def headline(self) -> str:
        """`title: detail`, either alone, or "" when it has neither."""
        return ": ".join(t for t in (self.title, self.detail) if t)


def _int(value: object) -> int | None:
    # bool is an int subclass; `true` is not an error code or an id.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _problem(obj: Mapping[str, Any]) -> Problem:
    type_uri, value, raw_id, details = (obj.get(k) for k in ("type", "value", "id", "details"))
    number_id = _int(raw_id)
    return Problem(
        slug=problem_slug(type_uri) if isinstance(type_uri, str) else None,
        title=one_line(obj.get("title")),
        detail=one_line(obj.get("detail")),
        message=one_line(obj.get("message")),
        connection_issue=one_line(obj.get("connection_issue")),
        disconnect_type=one_line(obj.get("disconnect_type")),
        reason=one_line(obj.get("reason")),
        code=_int(obj.get("code")),
        # A rule value is compared with the configured one: kept whole, not shortened.
        value=value if isinstance(value, str) else None,
        rule_id=one_line(raw_id) if number_id is None else str(number_id),
        details=tuple(filter(None, map(one_line, details))) if isinstance(details, list)
        else (),
    )


# --- rate-limit headers ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateLimit:
    """An endpoint's `x-rate-limit-*` headers; each None when absent or not a plausible
    number. `reset` is in epoch seconds (a proxy's milliseconds are converted)."""

    limit: int | None = None
    remaining: int | None = None
    reset: float | None = None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # A plain dict may not be case-insensitive like httpx.Headers.
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


def _header_number(headers: Mapping[str, str], name: str) -> float | None:
    """A header as a number, or None: "inf", "nan", "²", negative or absurdly large values
    never reach int() or a gauge."""
    raw = _header(headers, name)
    if raw is None:
        return None
    text = raw.strip()
    if not text.isascii() or len(text) > _MAX_HEADER_CHARS:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or not 0 <= value < _MAX_HEADER_NUMBER:
        return None
    return value


def rate_limit(headers: Mapping[str, str]) -> RateLimit:
    limit = _header_number(headers, "x-rate-limit-limit")
    remaining = _header_number(headers, "x-rate-limit-remaining")
    reset = _header_number(headers, "x-rate-limit-reset")
    if reset is not None and reset > _EPOCH_MS:
        reset /= 1000.0
    return RateLimit(
        limit=None if limit is None else int(limit),
        remaining=None if remaining is None else int(remaining),
        # 0 is no time at all: as good as no header.
        reset=reset or None,
    )


# --- answers -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """What X answered, read once. `status` is None for an in-stream message."""

    status: int | None
    rate_limit: RateLimit
    document: Mapping[str, Any] | None  # the body, when it is a JSON object
    top: Problem | None  # the document itself read as a problem object
    errors: tuple[Problem, ...]  # every object in its `errors[]`, in order

    @property
    def problems(self) -> tuple[Problem, ...]:
        """The problems with a `type`: the document's own first, then `errors[]`'s."""
        own = (self.top,) if self.top is not None and self.top.slug is not None else ()
        return own + tuple(e for e in self.errors if e.slug is not None)

    @property
    def codes(self) -> tuple[int, ...]:
        """The v1.1 `errors[].code` numbers, in order."""
        return tuple(e.code for e in self.errors if e.code is not None)

    @property
    def detail(self) -> str | None:
        """The first human text: the document's own, else that of an `errors[]` entry."""
        if self.top is not None and self.top.text:
            return self.top.text
        return next((e.text for e in self.errors if e.text), None)

    def summary(self) -> str:
        """One line for an error message: title, detail and every nested message."""
        parts = [self.top.headline()] if self.top is not None else []
        parts += [e.message for e in self.errors if e.message]
        return ": ".join(p for p in parts if p) or "no detail"


def _answer(
    status: int | None, headers: Mapping[str, str], document: Mapping[str, Any] | None
) -> Answer:
    errors: tuple[Problem, ...] = ()
    if document is not None:
        entries = document.get("errors")
        if isinstance(entries, list):
            errors = tuple(_problem(e) for e in entries if isinstance(e, dict))
    return Answer(
        status=status,
        rate_limit=rate_limit(headers),
        document=document,
        top=None if document is None else _problem(document),
        errors=errors,
    )


def _document(status: int, body: bytes) -> dict[str, Any] | None:
    if not body or (not 200 <= status < 300 and len(body) > MAX_PROBLEM_BODY):
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def parse_answer(status: int, headers: Mapping[str, str], body: bytes) -> Answer:
    """An HTTP answer: its status, headers and (already bounded, decoded) body."""
    return _answer(status, headers, _document(status, body))


def parse_message(obj: Mapping[str, Any]) -> Answer:
    """An in-stream JSON object (already parsed by the line reader)."""
    return _answer(None, {}, obj)


# --- what streamd asks for ---------------------------------------------------------------

def rfc3339_seconds(epoch: float) -> str:
    """`start_time`/`end_time` as X takes them: RFC 3339, UTC, whole seconds."""
    return dt.datetime.fromtimestamp(int(epoch), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stream_query(
    x: XSettings, *, backfill_minutes: int = 0, partition: int = 0,
    start_time: float | None = None, end_time: float | None = None,
) -> dict[str, str]:
    """The query string of a stream request: each [x] field list under its parameter name,
    empty lists left out (https://docs.x.com/x-api/fundamentals/fields,
    https://docs.x.com/x-api/fundamentals/expansions), the backfill asked for, the
    partition (sample10, firehoses) and a recovery window (`start_time` whole seconds down,
    `end_time` up, so the window asked for always holds the one wanted)."""
    lists = {
        "tweet.fields": x.tweet_fields,
        "expansions": x.expansions,
        "user.fields": x.user_fields,
        "media.fields": x.media_fields,
        "poll.fields": x.poll_fields,
        "place.fields": x.place_fields,
    }
    params = {name: ",".join(values) for name, values in lists.items() if values}
    if backfill_minutes > 0:
        params["backfill_minutes"] = str(backfill_minutes)
    if partition:
        params["partition"] = str(partition)
    if start_time is not None:
        params["start_time"] = rfc3339_seconds(math.floor(start_time))
    if end_time is not None:
        params["end_time"] = rfc3339_seconds(math.ceil(end_time))
    return params
