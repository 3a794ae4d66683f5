"""X's Connections API (https://docs.x.com/x-api/connections/introduction), the client.

* `GET /2/connections`: the app's streaming connections, active and past, paginated;
* `DELETE /2/connections` (body `{"uuids": [...]}`, 1 to 100 ids), `DELETE
  /2/connections/{endpoint_id}`, `DELETE /2/connections/all`: terminate them.

Each operation is one request per page or batch, never retried here: the daemon asks
again at its next disconnect, a command reports the failure. A window that X said is
exhausted (`x-rate-limit-remaining: 0`) is not asked again before its reset. Every answer
is read with a cap (body.py) and through wire.py; everything in it is checked before use:
ids and tokens have a bounded printable form, times are RFC 3339, pages are bounded.

Errors: 401 -> CredentialsError; 403/404 -> ConnectionsUnavailable (the tier has no access,
or the API does not exist where `x.api_url` points); anything else -> ConnectionsApiError.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from streamd.errors import (
    AnswerTooLarge,
    ConnectionsApiError,
    ConnectionsUnavailable,
    CredentialsError,
)
from streamd.ops.metrics import Metrics
from streamd.reasons import Reason
from streamd.x.body import read_answer
from streamd.x.wire import Answer, one_line, parse_answer

__all__ = [
    "CONNECTIONS_PATH",
    "ENDPOINT_IDS",
    "FILTERED_STREAM",
    "TERMINATED_BY_API",
    "ConnectionsApi",
    "Kill",
    "KillReport",
    "XConnection",
]

CONNECTIONS_PATH = "/2/connections"
# The stream streamd reads, as the Connections API names it.
FILTERED_STREAM = "filtered_stream"
# `endpoint_id` values X accepts (OpenAPI v2.166, DELETE /2/connections/{endpoint_id}).
ENDPOINT_IDS: tuple[str, ...] = (
    "filtered_stream", "sample_stream", "sample10_stream", "firehose_stream",
    "tweets_compliance_stream", "users_compliance_stream", "tweet_label_stream",
    "firehose_stream_lang_en", "firehose_stream_lang_ja", "firehose_stream_lang_ko",
    "firehose_stream_lang_pt", "likes_firehose_stream", "likes_sample10_stream",
    "likes_compliance_stream",
)
# The `disconnect_reason` of a connection terminated through this API. X documents one
# value, the schema's example "operator_disconnect"; no capture of a terminated
# connection's history exists, so this is our reading of it (README "Connection ownership").
TERMINATED_BY_API = "operator_disconnect"
# Every field there is; X returns only endpoint_name and connected_at unless asked.
CONNECTION_FIELDS = "client_ip,connected_at,disconnect_reason,disconnected_at,endpoint_name,id"
PAGE_SIZE = 100  # max_results upper bound
MAX_PAGES = 20  # 2,000 connections: far more than any app's history that matters here
UUIDS_PER_REQUEST = 100  # DELETE /2/connections accepts 1 to 100
REQUEST_TIMEOUT = 15.0
# A page of 100 connections is about 25 KB: an answer past this is not one X sends.
ANSWER_MAX_BYTES = 1024 * 1024
_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{1,256}")
_MAX_TEXT = 128


@dataclass(frozen=True, slots=True)
class XConnection:
    """One streaming connection of the app, as the Connections API lists it. Times are epoch
    seconds (None when absent or not RFC 3339); texts are bounded single lines."""

    id: str | None
    endpoint: str | None
    client_ip: str | None
    connected_at: float | None
    disconnected_at: float | None = None
    disconnect_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.disconnected_at is None and self.disconnect_reason is None

    @property
    def terminated_by_api(self) -> bool:
        return self.disconnect_reason == TERMINATED_BY_API


@dataclass(frozen=True, slots=True)
class Kill:
    """One id's result of a terminate request."""

    uuid: str
    success: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class KillReport:
    results: tuple[Kill, ...]

    @property
    def succeeded(self) -> tuple[str, ...]:
        return tuple(k.uuid for k in self.results if k.success)

    @property
    def failed(self) -> tuple[Kill, ...]:
        return tuple(k for k in self.results if not k.success)


def parse_time(value: object) -> float | None:
    """An RFC 3339 time from X as epoch seconds, or None."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def _bounded(value: object, pattern: re.Pattern[str] | None = None) -> str | None:
    if not isinstance(value, str):
        return None
    if pattern is not None:
        return value if pattern.fullmatch(value) else None
    text = one_line(value)
    return text[:_MAX_TEXT] if text is not None else None


def _connection(obj: Mapping[str, Any]) -> XConnection:
    return XConnection(
        id=_bounded(obj.get("id"), _ID),
        endpoint=_bounded(obj.get("endpoint_name")),
        client_ip=_bounded(obj.get("client_ip")),
        connected_at=parse_time(obj.get("connected_at")),
        disconnected_at=parse_time(obj.get("disconnected_at")),
        disconnect_reason=_bounded(obj.get("disconnect_reason")),
    )


def _kills(document: Mapping[str, Any]) -> KillReport:
    data = document.get("data")
    if not isinstance(data, dict):
        raise ConnectionsApiError("terminate: the answer has no data object")
    results = data.get("results")
    kills: list[Kill] = []
    if isinstance(results, list):
        for item in results[:UUIDS_PER_REQUEST * 10]:
            if not isinstance(item, dict):
                continue
            uuid = _bounded(item.get("uuid"), _ID)
            if uuid is None:
                continue
            kills.append(Kill(uuid, item.get("success") is True,
                              _bounded(item.get("error_message"))))
    return KillReport(tuple(kills))


class ConnectionsApi:
    """The Connections API over `client` (its base URL is `x.api_url`, its headers carry
    the bearer token). `clock` is injectable for the rate-limit bookkeeping."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._clock = clock
        # endpoint -> epoch seconds before which its window is known to be exhausted
        self._exhausted_until: dict[str, float] = {}
        self.requests = 0

    async def list(
        self, *, status: str = "active", endpoint: str | None = FILTERED_STREAM,
        max_pages: int = MAX_PAGES,
    ) -> list[XConnection]:
        """The app's connections with `status` (active, inactive, all), on `endpoint` (None:
        every endpoint), newest first as X orders them, following pagination."""
        params: dict[str, str] = {
            "status": status, "max_results": str(PAGE_SIZE),
            "connection.fields": CONNECTION_FIELDS,
        }
        if endpoint is not None:
            params["endpoints"] = endpoint
        found: list[XConnection] = []
        for _ in range(max_pages):
            answer = await self._request("GET", CONNECTIONS_PATH, "connections_get",
                                         params=params)
            document = answer.document or {}
            data = document.get("data")
            if isinstance(data, list):
                found.extend(_connection(item) for item in data[:PAGE_SIZE * 2]
                             if isinstance(item, dict))
            meta = document.get("meta")
            token = _bounded(meta.get("next_token"), _TOKEN) if isinstance(meta, dict) else None
            if token is None:
                break
            params["pagination_token"] = token
        return found

    async def terminate(self, uuids: Iterable[str]) -> KillReport:
        """Terminate these connections (`DELETE /2/connections`, 100 ids a request)."""
        ids = list(dict.fromkeys(uuids))
        kills: list[Kill] = []
        for start in range(0, len(ids), UUIDS_PER_REQUEST):
            batch = ids[start:start + UUIDS_PER_REQUEST]
            answer = await self._request(
                "DELETE", CONNECTIONS_PATH, "connections_delete",
                content=orjson.dumps({"uuids": batch}),
                headers={"Content-Type": "application/json"},
            )
            kills.extend(_kills(answer.document or {}).results)
        return KillReport(tuple(kills))

    async def terminate_endpoint(self, endpoint: str) -> KillReport:
        """Terminate every connection on `endpoint` (one of ENDPOINT_IDS)."""
        if endpoint not in ENDPOINT_IDS:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {ENDPOINT_IDS}")
        answer = await self._request("DELETE", f"{CONNECTIONS_PATH}/{endpoint}",
                                     "connections_delete_endpoint")
        return _kills(answer.document or {})

    async def terminate_all(self) -> KillReport:
        """Terminate every connection of the app (X allows 25 of these per 15 minutes)."""
        answer = await self._request("DELETE", f"{CONNECTIONS_PATH}/all",
                                     "connections_delete_all")
        return _kills(answer.document or {})

    # --- internals ---------------------------------------------------------------------

    async def _request(self, method: str, path: str, window: str, **kwargs: Any) -> Answer:
        until = self._exhausted_until.get(window, 0.0)
        now = self._clock()
        if now < until:
            raise ConnectionsApiError(
                f"{method} {path}: rate-limited for {until - now:.0f} s more "
                "(x-rate-limit-remaining was 0)")
        request = self._client.build_request(method, path, timeout=REQUEST_TIMEOUT, **kwargs)
        self.requests += 1
        try:
            response = await read_answer(self._client, request, seconds=REQUEST_TIMEOUT,
                                         limit=ANSWER_MAX_BYTES)
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise ConnectionsApiError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        except AnswerTooLarge as exc:
            raise ConnectionsApiError(f"{method} {path}: {exc}") from None
        answer = parse_answer(response.status_code, response.headers, response.content)
        self._note_window(window, answer)
        status = response.status_code
        if status == 200:
            if answer.document is None:
                raise ConnectionsApiError(f"{method} {path}: the answer is not a JSON object")
            return answer
        if status == 401:
            raise CredentialsError(
                f"X refused the credentials on the Connections API (HTTP 401): "
                f"{answer.summary()}", Reason.UNAUTHORIZED)
        if status in (403, 404):
            raise ConnectionsUnavailable(status, answer.summary())
        raise ConnectionsApiError(f"{method} {path} answered {status}: {answer.summary()}")

    def _note_window(self, window: str, answer: Answer) -> None:
        limits = answer.rate_limit
        if limits.remaining is not None and self._metrics is not None:
            # One gauge per method (a bounded label set); the windows are tracked apart.
            label = "connections_get" if window == "connections_get" else "connections_delete"
            self._metrics.x_rate_limit_remaining.labels(endpoint=label).set(limits.remaining)
        exhausted = limits.remaining == 0 or answer.status == 429
        if exhausted and limits.reset is not None:
            self._exhausted_until[window] = limits.reset
        elif not exhausted:
            self._exhausted_until.pop(window, None)


def own_candidates(
    connections: Sequence[XConnection], connected_at: float, tolerance: float
) -> list[XConnection]:
    """The active connections whose `connected_at` is within `tolerance` seconds of ours:
    exactly one means it is ours."""
    return [
        c for c in connections
        if c.active and c.id is not None and c.connected_at is not None
        and abs(c.connected_at - connected_at) <= tolerance
    ]
