"""The ASGI application: the stream endpoints (filtered, sample, sample10, firehose and the
language firehoses: endpoints.py), the rules endpoints and rule counts, X's Connections API
(connections.py), and the /_simulator/ control endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import math
import time
import zlib
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import orjson

from streamd.simulator import connections, control, fields, problems
from streamd.simulator.connection import CONNECTION_KEY, ConnectionControl
from streamd.simulator.endpoints import (
    FILTERED,
    STREAM_ENDPOINTS,
    Share,
    StreamEndpoint,
    partition_count,
    partition_error,
)
from streamd.simulator.faults import ConnectFault, Fault
from streamd.simulator.feed import Feed
from streamd.simulator.problems import ErrorAnswer
from streamd.simulator.ratelimit import FixedWindow, WindowState
from streamd.simulator.records import (
    ConnectionsRequestRecord,
    ConnectRecord,
    RulesRequestRecord,
)
from streamd.simulator.rules import decode_page_token
from streamd.simulator.rules_faults import RulesFault, oversized_body, parse_rules_fault_spec
from streamd.simulator.state import SimulatorState
from streamd.simulator.stream import StreamSession
from streamd.simulator.timefmt import iso_now

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

STREAM_PATH = "/2/tweets/search/stream"
RULES_PATH = "/2/tweets/search/stream/rules"
COUNTS_PATH = "/2/tweets/search/stream/rules/counts"
CONNECTIONS_PATH = "/2/connections"
CONTROL_PREFIX = "/_simulator/"
# How far in the future a recovery's end_time may be (the stream follows the timeline until
# the clock passes it); later is 400.
RECOVERY_END_LEEWAY = 60.0
JSON = "application/json; charset=utf-8"


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str = JSON,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    headers.extend(extra_headers or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def respond_error(send: Send, answer: ErrorAnswer, window: WindowState) -> None:
    # X sends no x-rate-limit-* headers with a 401: the request was never attributed to an
    # app, so no window was counted.
    headers = [] if answer.status == 401 else window.headers()
    await respond(send, answer.status, answer.body, answer.content_type, headers)


async def read_body(receive: Receive, limit: int = 5 * 1024 * 1024) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ValueError("request body too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def wait_disconnect(receive: Receive) -> None:
    """Until the client goes away (the request body, if any, is read and dropped)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def connection_of(scope: Scope) -> ConnectionControl | None:
    conn: ConnectionControl | None = scope.get("extensions", {}).get(CONNECTION_KEY)
    return conn


async def drop_unanswered(scope: Scope, receive: Receive, how: str) -> None:
    """End a request without an answer ("reset": TCP RST, "abort"), then wait until the
    server has seen the connection go, so it does not answer in our place (a 500)."""
    conn = connection_of(scope)
    if conn is None:
        return
    if how == "reset":
        conn.reset()
    else:
        conn.abort()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wait_disconnect(receive), 2.0)


@dataclasses.dataclass
class _StreamQuery:
    """A stream connect's query, parsed. `raw_*`: the values as sent (for messages);
    `now`: the simulated clock when it was checked."""

    selections: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    backfill: int = 0
    start_time: float | None = None
    end_time: float | None = None
    raw_start: str = ""
    raw_end: str = ""
    partition: int | None = None
    now: float = 0.0
    errors: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class _Gate(NamedTuple):
    """Outcome of the rules endpoints' checks: the error to send (if any), the window for
    the x-rate-limit-* headers, and the injected fault that decided it (if any)."""

    denied: ErrorAnswer | None
    window: WindowState
    fault: RulesFault | None = None


class _Exchange:
    """Records what one request was answered; wraps `send` to see it. The record is made
    before the answer's last bytes (or the reset) go out, so a client that then sends its
    next request always finds this one in the log first."""

    def __init__(self, state: SimulatorState, method: str, send: Send) -> None:
        self.state = state
        self.method = method
        self._send = send
        self.status = 0  # stays 0 when nothing is answered
        self._recorded = False

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        elif message["type"] == "http.response.body":
            self._body(message)
            if not message.get("more_body", False):
                self.record()
        await self._send(message)

    def _body(self, message: dict[str, Any]) -> None:
        """A body message of the answer, before it goes out."""

    def record(self) -> None:
        if not self._recorded:
            self._recorded = True
            self._record()

    def _record(self) -> None:
        raise NotImplementedError


class _RulesExchange(_Exchange):
    """A rules request: its status, problem type and the injected fault that decided it."""

    def __init__(self, state: SimulatorState, method: str, send: Send) -> None:
        super().__init__(state, method, send)
        self.problem_type: str | None = None
        self.fault: str | None = None
        self._first_body = True

    def _body(self, message: dict[str, Any]) -> None:
        if self._first_body and self.status >= 400:
            # Our error bodies are whole in their first message.
            with contextlib.suppress(orjson.JSONDecodeError):
                body = orjson.loads(message.get("body", b""))
                if isinstance(body, dict) and isinstance(body.get("type"), str):
                    self.problem_type = body["type"]
        self._first_body = False

    def _record(self) -> None:
        self.state.record_rules_request(RulesRequestRecord(
            at=time.time(), method=self.method, status=self.status,
            problem_type=self.problem_type, fault=self.fault,
        ))


class _ConnectionsExchange(_Exchange):
    """A Connections API request: its path, query, status and the ids it named."""

    def __init__(
        self, state: SimulatorState, method: str, path: str, query: dict[str, str], send: Send
    ) -> None:
        super().__init__(state, method, send)
        self.path = path
        self.query = query
        self.uuids: list[str] | None = None

    def _record(self) -> None:
        self.state.record_connections_request(ConnectionsRequestRecord(
            at=time.time(), method=self.method, path=self.path, query=self.query,
            status=self.status, uuids=self.uuids,
        ))


def _connections_route(path: str, method: str) -> str | None:
    """The Connections API operation a request is: "list", "kill" (by uuids), "kill_all",
    "kill_endpoint"; None when it is none of them (a 404 like any unknown path)."""
    if path == CONNECTIONS_PATH:
        return {"GET": "list", "DELETE": "kill"}.get(method)
    prefix = CONNECTIONS_PATH + "/"
    if path.startswith(prefix) and method == "DELETE":
        rest = path[len(prefix):]
        if rest == "all":
            return "kill_all"
        if rest and "/" not in rest:
            return "kill_endpoint"
    return None


def _client_ip(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class SimulatorApp:
    def __init__(self, state: SimulatorState, feed: Feed) -> None:
        self.state = state
        self.feed = feed
        self.host = state.config.problem_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        send = self._dated(send)
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            if path in STREAM_ENDPOINTS and method == "GET":
                await self.stream(STREAM_ENDPOINTS[path], scope, receive, send)
            elif path == RULES_PATH and method in ("GET", "POST"):
                await self.rules(method, scope, receive, send)
            elif path == COUNTS_PATH and method == "GET":
                await self.rule_counts(scope, send)
            elif _connections_route(path, method) is not None:
                await self.connections_api(scope, receive, send)
            elif path.startswith(CONTROL_PREFIX):
                await self.control(path[len(CONTROL_PREFIX) :], method, scope, receive, send)
            else:
                await respond(send, 404, problems.not_found().body)
        except ConnectionError:
            return

    def _dated(self, send: Send) -> Send:
        """Every answer carries a `date` header on the simulated clock (uvicorn's own is
        off), so a client can tell how much simulated time has passed."""
        clock = self.state.clock

        async def dated(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                date = formatdate(clock.now(), usegmt=True).encode()
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"date", date)]}
            await send(message)

        return dated

    # --- shared checks ------------------------------------------------------------------

    def _auth(self, scope: Scope) -> ErrorAnswer | None:
        header = _header(scope, b"authorization") or ""
        scheme, _, credential = header.partition(" ")
        if scheme == "OAuth":
            return problems.unsupported_authentication(self.host, "OAuth 1.0a User Context")
        if scheme.lower() != "bearer":
            return problems.unauthorized()
        credential = credential.strip()
        if credential in self.state.config.user_context_tokens:
            return problems.unsupported_authentication(self.host)
        if credential not in self.state.config.tokens:
            return problems.unauthorized()
        return None

    def _tier(self) -> ErrorAnswer | None:
        if not self.state.settings.limits.stream_access:
            return problems.client_forbidden(self.host)
        return None

    def _gate(self, scope: Scope, window: FixedWindow, method: str | None = None) -> _Gate:
        """Auth, injected fault (for `method`), tier and request window, in that order
        (rules endpoints)."""
        with self.state.lock:
            denied = self._auth(scope)
            if denied is not None:
                return _Gate(denied, window.peek())
            state = window.hit()
            fault = None if method is None else self.state.next_rules_fault(method)
            if fault is not None:
                reset = fault.reset_at()
                if reset is not None:
                    state = WindowState(False, state.limit, 0, reset)
                return _Gate(fault.answer(self.host), state, fault)
            denied = self._tier()
            if denied is None and not state.allowed:
                denied = problems.rate_limited()
            return _Gate(denied, state)

    # --- stream -------------------------------------------------------------------------

    def _record(
        self,
        status: int,
        answer: ErrorAnswer | None,
        query: dict[str, str],
        connection_id: str | None = None,
        path: str = STREAM_PATH,
    ) -> None:
        self.state.record_connect(
            ConnectRecord(
                at=time.time(),
                status=status,
                problem_type=answer.problem_type if answer else None,
                detail=answer.detail if answer else None,
                query=query,
                connection_id=connection_id,
                path=path,
            )
        )

    def _parse_stream_query(
        self, endpoint: StreamEndpoint, pairs: list[tuple[str, str]]
    ) -> _StreamQuery:
        """The query of a connect to `endpoint`, with X's invalid-request items for what is
        wrong in it (syntax and ranges; the recovery window is checked apart)."""
        settings = self.state.settings
        query = _StreamQuery()
        has_partition = False
        for name, value in pairs:
            if name in fields.LIST_PARAMETERS:
                chosen, problems_found = fields.validate_list(name, value)
                query.selections[name] = chosen
                query.errors.extend(problems_found)
            elif name == "backfill_minutes":
                try:
                    query.backfill = int(value)
                except ValueError:
                    query.backfill = -1
                if not 0 <= query.backfill <= 5:
                    query.errors.append(
                        problems.param_error(
                            name, value,
                            f"The `backfill_minutes` query parameter value [{value}] is not"
                            " between 0 and 5",
                        )
                    )
            elif name in ("start_time", "end_time") and endpoint.recovery:
                parsed = _parse_time(value)
                if parsed is None:
                    query.errors.append(
                        problems.param_error(
                            name, value,
                            f"Invalid '{name}':'{value}'. '{name}' must be a valid RFC 3339"
                            " timestamp like YYYY-MM-DDTHH:mm:ssZ.",
                        )
                    )
                elif name == "start_time":
                    query.start_time, query.raw_start = parsed, value
                else:
                    query.end_time, query.raw_end = parsed, value
            elif name == "partition" and endpoint.max_partition is not None:
                has_partition = True
                count = partition_count(endpoint, settings.firehose_partitions,
                                        settings.lang_firehose_partitions)
                error = partition_error(value, endpoint, count)
                if error is not None:
                    query.errors.append(error)
                else:
                    query.partition = int(value)
            else:
                query.errors.append(
                    fields.unknown_parameter_error(name, value, endpoint.parameters)
                )
        if endpoint.max_partition is not None and not has_partition:
            count = partition_count(endpoint, settings.firehose_partitions,
                                    settings.lang_firehose_partitions)
            missing = partition_error(None, endpoint, count)
            assert missing is not None
            query.errors.append(missing)
        return query

    def _recovery_errors(self, query: _StreamQuery, now: float) -> list[dict[str, Any]]:
        """The recovery window's rules (README, "Recovery"): start_time no older than
        `recovery_max_hours`, end_time after start_time and at most RECOVERY_END_LEEWAY
        after now (a client's rounding up, clock skew: the stream then waits for it), no
        end_time without a start_time."""
        errors: list[dict[str, Any]] = []
        start, end = query.start_time, query.end_time
        if start is None:
            if end is not None:
                errors.append(problems.param_error(
                    "end_time", query.raw_end,
                    f"Invalid 'end_time':'{query.raw_end}'. 'end_time' requires 'start_time'.",
                ))
            return errors
        oldest = now - self.state.settings.recovery_max_hours * 3600
        if start < oldest:
            errors.append(problems.param_error(
                "start_time", query.raw_start,
                f"Invalid 'start_time':'{query.raw_start}'. 'start_time' must be on or after"
                f" {_minute(oldest, up=True)}",
            ))
        if end is not None and end > now + RECOVERY_END_LEEWAY:
            errors.append(problems.param_error(
                "end_time", query.raw_end,
                f"Invalid 'end_time':'{query.raw_end}'. 'end_time' must be on or before"
                f" {_minute(now + RECOVERY_END_LEEWAY, up=False)}",
            ))
        elif (end if end is not None else now) <= start:
            value = query.raw_end if end is not None else query.raw_start
            name = "end_time" if end is not None else "start_time"
            message = (
                f"Invalid 'end_time':'{query.raw_end}'. 'end_time' must be after"
                f" 'start_time':'{query.raw_start}'."
                if end is not None
                else f"Invalid 'start_time':'{query.raw_start}'. 'start_time' must be before"
                     f" {_minute(now, up=False)}"
            )
            errors.append(problems.param_error(name, value, message))
        return errors

    async def stream(
        self, endpoint: StreamEndpoint, scope: Scope, receive: Receive, send: Send
    ) -> None:
        state = self.state
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        query = dict(pairs)
        path = endpoint.path
        hang = False
        parsed = _StreamQuery()
        with state.lock:
            denied = self._auth(scope)
            if denied is not None:
                window = state.stream_window.peek()
                self._record(denied.status, denied, query, path=path)
            else:
                window = state.stream_window.hit()
                fault = state.next_connect_fault()
                if fault is not None and fault.hangs:
                    hang = True
                    self._record(0, None, query, path=path)
                else:
                    denied, window, parsed = self._connect_check(endpoint, pairs, window, fault)
                    if denied is not None:
                        self._record(denied.status, denied, query, path=path)
        if hang:
            await self._hang(scope, receive)
            return
        if denied is not None:
            await respond_error(send, denied, window)
            return
        backfill = parsed.backfill
        if state.settings.tier not in state.settings.backfill_tiers:
            backfill = 0  # Enterprise-only at X: accepted and ignored elsewhere (config.py)
        recovery = None
        if parsed.start_time is not None:
            recovery = (parsed.start_time,
                        parsed.end_time if parsed.end_time is not None else parsed.now)
            backfill = 0  # a recovery sends its window, nothing else
        accepts_gzip = "gzip" in (_header(scope, b"accept-encoding") or "").lower()
        use_gzip = state.config.gzip and accepts_gzip
        share = Share(endpoint, parsed.partition, partition_count(
            endpoint, state.settings.firehose_partitions,
            state.settings.lang_firehose_partitions))
        session = StreamSession(
            state, self.feed, fields.selection_from(parsed.selections), send,
            connection_of(scope), use_gzip, backfill_minutes=backfill, recovery=recovery,
            share=share,
        )
        with state.lock:
            # Re-check the slot under the lock: another connect may have won meanwhile.
            slot_denied = self._take_slot(session, _client_ip(scope), endpoint,
                                          parsed.partition, recovery is not None)
            connection_id = session.connection.id if session.connection is not None else None
            self._record(slot_denied.status if slot_denied else 200, slot_denied, query,
                         connection_id, path=path)
        if slot_denied is not None:
            await respond_error(send, slot_denied, window)
            return
        headers = [(b"content-type", JSON.encode())]
        if use_gzip:
            headers.append((b"content-encoding", b"gzip"))
        headers.extend(window.headers())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
        except Exception:
            with state.lock:
                if session in state.sessions:
                    state.sessions.remove(session)
                if session.connection is not None:  # the client went away meanwhile
                    state.connections.client_gone(session.connection)
            raise
        await session.run(receive)

    async def _hang(self, scope: Scope, receive: Receive) -> None:
        """ConnectFault.hang: no answer until the client goes away or the simulator stops
        (then the connection is dropped unanswered). No stream slot is taken."""
        stop = self.state.stop_event
        if stop is not None and stop.is_set():
            await drop_unanswered(scope, receive, "abort")
            return
        gone = asyncio.ensure_future(wait_disconnect(receive))
        waiters: set[asyncio.Future[Any]] = {gone}
        if stop is not None:
            waiters.add(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        if gone.cancelled():  # the simulator stops; the client is still waiting
            await drop_unanswered(scope, receive, "abort")

    def _connect_check(
        self,
        endpoint: StreamEndpoint,
        pairs: list[tuple[str, str]],
        window: WindowState,
        fault: ConnectFault | None,
    ) -> tuple[ErrorAnswer | None, WindowState, _StreamQuery]:
        """Checks after auth, in X's order; returns the answer, the rate-limit state for
        its headers (an injected rate-limit fault brings its own) and the parsed query.
        Caller holds the lock."""
        state = self.state
        if fault is not None:
            reset = fault.reset_at()
            if reset is not None:
                window = WindowState(False, window.limit, 0, reset)
            return fault.answer(self.host, state.settings.product_name), window, _StreamQuery()
        denied, parsed = self._regular_check(endpoint, pairs, window)
        return denied, window, parsed

    def _regular_check(
        self, endpoint: StreamEndpoint, pairs: list[tuple[str, str]], window: WindowState
    ) -> tuple[ErrorAnswer | None, _StreamQuery]:
        """The tier (403), the endpoint's tiers (403), the parameters (400), recovery on
        this tier (403) and its window (400), the request window (429), the usage cap
        (429), rules (409, filtered stream only)."""
        state = self.state
        settings = state.settings
        parsed = _StreamQuery()
        denied = self._tier()
        if denied is not None:
            return denied, parsed
        if endpoint.family != FILTERED and (
            settings.tier not in settings.endpoint_tiers[endpoint.family]
        ):
            return problems.client_forbidden(self.host), parsed
        parsed = self._parse_stream_query(endpoint, pairs)
        if parsed.errors:
            return problems.invalid_request(self.host, parsed.errors), parsed
        parsed.now = state.clock.now()
        if parsed.start_time is not None or parsed.end_time is not None:
            if settings.tier not in settings.recovery_tiers:
                return problems.client_forbidden(self.host), parsed
            errors = self._recovery_errors(parsed, parsed.now)
            if errors:
                return problems.invalid_request(self.host, errors), parsed
        if not window.allowed:
            return problems.rate_limited(), parsed
        if state.usage_exhausted():
            return problems.usage_capped(self.host, settings.product_name), parsed
        if endpoint.family == FILTERED and len(state.rules) == 0:
            return problems.no_rules(self.host), parsed
        return None, parsed

    def _take_slot(
        self,
        session: StreamSession,
        client_ip: str | None,
        endpoint: StreamEndpoint,
        partition: int | None,
        recovery: bool,
    ) -> ErrorAnswer | None:
        """Admit `session` if a slot of its endpoint and partition is free (or, with
        kick_old, free one), and open its connection record. A recovery connection takes no
        slot: it is one of the endpoint's recovery jobs (at most `recovery_jobs_limit`;
        refused as TooManyConnections). Caller holds the lock."""
        state = self.state
        registry = state.connections
        # The active connections: open streams and zombies. A stream whose client has
        # already closed or reset it is settled first, even before its session has
        # noticed: with zombie_seconds 0, a client that reconnects at once is not refused.
        holders = registry.group(endpoint.name, partition, recovery)
        if recovery:
            if len(holders) >= state.settings.recovery_jobs_limit:
                return problems.too_many_connections(self.host)
        else:
            limit = state.settings.slot_limit
            if len(holders) >= limit:
                if state.settings.connection_policy == "reject_new" or limit == 0:
                    return problems.too_many_connections(self.host)
                for old in holders[: len(holders) - limit + 1]:
                    stream = registry.replace(old)
                    if stream is not None:
                        stream.kick()
        now = state.clock.now()
        self.feed.start(now)  # the timeline begins with the first stream, if not yet
        session.admit(now)
        state.sessions.append(session)
        session.connection = registry.open(endpoint.name, client_ip, session,
                                           partition=partition, recovery=recovery, at=now)
        return None

    # --- rules --------------------------------------------------------------------------

    async def rules(self, method: str, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = _RulesExchange(self.state, method, send)
        try:
            if method == "GET":
                await self.rules_get(scope, receive, exchange)
            else:
                await self.rules_post(scope, receive, exchange)
        finally:
            exchange.record()

    async def _refused(
        self,
        scope: Scope,
        receive: Receive,
        exchange: _RulesExchange,
        denied: ErrorAnswer | None,
        window: WindowState,
        fault: RulesFault | None,
    ) -> bool:
        """Answer a rules request that a fault or the gate refuses; False to go on."""
        if fault is not None:
            exchange.fault = fault.kind
            if fault.kind == "connection_reset":  # no answer at all
                exchange.record()
                await drop_unanswered(scope, receive, "reset")
                return True
            if fault.kind == "oversized":
                await self._oversized(scope, exchange, window, fault)
                return True
        if denied is not None:
            await respond_error(exchange.send, denied, window)
            return True
        return False

    async def _oversized(
        self, scope: Scope, exchange: _RulesExchange, window: WindowState, fault: RulesFault
    ) -> None:
        """RulesFault.oversized: a 200 that goes on for `megabytes` MiB, gzip-encoded when
        the client accepts it, made while it is sent; it stops when the client hangs up."""
        use_gzip = "gzip" in (_header(scope, b"accept-encoding") or "").lower()
        headers = [(b"content-type", JSON.encode())]
        if use_gzip:
            headers.append((b"content-encoding", b"gzip"))
        headers.extend(window.headers())
        await exchange.send({"type": "http.response.start", "status": 200, "headers": headers})
        conn = connection_of(scope)
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31) if use_gzip else None
        for piece in oversized_body(fault.megabytes):
            if conn is not None and conn.gone():
                return
            data = compressor.compress(piece) if compressor is not None else piece
            if data:
                await exchange.send({"type": "http.response.body", "body": data,
                                     "more_body": True})
            await asyncio.sleep(0)  # let the server see a client that went away
        tail = compressor.flush() if compressor is not None else b""
        await exchange.send({"type": "http.response.body", "body": tail, "more_body": False})

    async def rules_get(self, scope: Scope, receive: Receive, exchange: _RulesExchange) -> None:
        state = self.state
        send = exchange.send
        denied, window, fault = self._gate(scope, state.rules_get_window, "GET")
        if await self._refused(scope, receive, exchange, denied, window, fault):
            return
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        errors: list[dict[str, Any]] = []
        ids: list[str] | None = None
        max_results = 1000
        offset = 0
        for name, value in pairs:
            if name == "ids":
                ids = value.split(",")
                for rule_id in ids:
                    if not (rule_id.isdigit() and 1 <= len(rule_id) <= 19):
                        errors.append(problems.param_error(
                            name, rule_id,
                            f"The `ids` query parameter value [{rule_id}] does not match"
                            " ^[0-9]{1,19}$",
                        ))
            elif name == "max_results":
                if not value.isdigit() or not 1 <= int(value) <= 1000:
                    errors.append(problems.param_error(
                        name, value,
                        f"The `max_results` query parameter value [{value}] is not between"
                        " 1 and 1000",
                    ))
                else:
                    max_results = int(value)
            elif name == "pagination_token":
                decoded = decode_page_token(value)
                if decoded is None:
                    errors.append(problems.param_error(
                        name, value,
                        f"The `pagination_token` query parameter value [{value}] is not valid",
                    ))
                else:
                    offset = decoded
            else:
                errors.append(fields.unknown_parameter_error(
                    name, value, ("ids", "max_results", "pagination_token")
                ))
        if errors:
            await respond_error(send, problems.invalid_request(self.host, errors), window)
            return
        with state.lock:
            body = state.rules.lookup(ids=ids, max_results=max_results, offset=offset)
        await respond(send, 200, orjson.dumps(body), JSON, window.headers())

    async def rules_post(
        self, scope: Scope, receive: Receive, exchange: _RulesExchange
    ) -> None:
        state = self.state
        send = exchange.send
        denied, window, fault = self._gate(scope, state.rules_post_window, "POST")
        raw = await read_body(receive)
        if await self._refused(scope, receive, exchange, denied, window, fault):
            return
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        flags = {"dry_run": False, "delete_all": False}
        errors: list[dict[str, Any]] = []
        for name, value in pairs:
            if name in flags and value.lower() in ("true", "false"):
                flags[name] = value.lower() == "true"
            elif name in flags:
                errors.append(problems.param_error(
                    name, value, f"The `{name}` query parameter value [{value}] is not one of"
                    " [true,false]"))
            else:
                errors.append(fields.unknown_parameter_error(
                    name, value, ("delete_all", "dry_run")))
        request, body_errors = _parse_rules_body(raw, flags["delete_all"])
        errors.extend(body_errors)
        if errors or request is None:
            await respond_error(send, problems.invalid_request(self.host, errors), window)
            return
        limits = state.settings.limits
        with state.lock:
            if flags["delete_all"]:
                answer = state.rules.delete_all(dry_run=flags["dry_run"])
            elif "add" in request:
                answer = state.rules.add(
                    request["add"], host=self.host, max_rules=limits.max_rules,
                    max_length=limits.rule_length, dry_run=flags["dry_run"],
                )
            else:
                answer = state.rules.delete(
                    host=self.host, ids=request["delete"].get("ids", []),
                    values=request["delete"].get("values", []), dry_run=flags["dry_run"],
                )
        state.wake_all()
        await respond(send, answer.status, orjson.dumps(answer.body), JSON, window.headers())

    async def rule_counts(self, scope: Scope, send: Send) -> None:
        state = self.state
        denied, window, _ = self._gate(scope, state.rules_get_window)
        if denied is not None:
            await respond_error(send, denied, window)
            return
        with state.lock:
            count = len(state.rules)
        cap = state.settings.limits.max_rules
        body = {
            "data": {
                "cap_per_client_app": cap,
                "cap_per_project": cap,
                "client_app_rules_count": {"client_app_id": "27347717", "rule_count": count},
                "project_rules_count": count,
            },
            "meta": {"sent": iso_now()},
        }
        await respond(send, 200, orjson.dumps(body), JSON, window.headers())

    # --- Connections API ----------------------------------------------------------------

    def _connections_window(self, operation: str) -> FixedWindow:
        state = self.state
        return {
            "list": state.connections_get_window,
            "kill": state.connections_delete_window,
            "kill_endpoint": state.connections_delete_endpoint_window,
            "kill_all": state.connections_delete_all_window,
        }[operation]

    async def connections_api(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        operation = _connections_route(path, method)
        assert operation is not None
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        exchange = _ConnectionsExchange(self.state, method, path, dict(pairs), send)
        try:
            await self._connections_answer(operation, path, pairs, scope, receive, exchange)
        finally:
            exchange.record()

    async def _connections_answer(
        self,
        operation: str,
        path: str,
        pairs: list[tuple[str, str]],
        scope: Scope,
        receive: Receive,
        exchange: _ConnectionsExchange,
    ) -> None:
        """Mode "absent" (404), then auth (401), the request window, mode "forbidden" and
        the tier (403), the window's limit (429), the request's validity (400)."""
        state = self.state
        send = exchange.send
        registry = state.connections
        with state.lock:
            mode = state.settings.connections_api
            ending = state.settings.terminate_ending
        if mode == "absent":  # as any unknown path
            await respond(send, 404, problems.not_found().body)
            return
        with state.lock:
            denied = self._auth(scope)
            window_of = self._connections_window(operation)
            if denied is not None:
                window = window_of.peek()
            else:
                window = window_of.hit()
                if mode == "forbidden":
                    denied = problems.client_forbidden(self.host)
                else:
                    denied = self._tier()
                if denied is None and not window.allowed:
                    denied = problems.rate_limited()
        raw = b""
        if operation == "kill":
            try:
                raw = await read_body(receive)
            except ValueError:
                raw = b"\x00"  # too large: answered as a body that is not JSON
            exchange.uuids = connections.parse_kill_body(raw)[0]  # logged even if refused
        if denied is not None:
            await respond_error(send, denied, window)
            return
        errors: list[dict[str, Any]] = []
        body: dict[str, Any] = {}
        if operation == "list":
            query, errors = connections.parse_list_query(pairs, registry)
            if not errors:
                body = registry.lookup(query)
        else:
            errors = [fields.unknown_parameter_error(name, value, ()) for name, value in pairs]
            ids: list[str] = []
            if operation == "kill":
                uuids, body_errors = connections.parse_kill_body(raw)
                errors.extend(body_errors)
                ids = uuids or []
            elif operation == "kill_endpoint":
                endpoint = path[len(CONNECTIONS_PATH) + 1 :]
                error = connections.endpoint_error(endpoint)
                if error is not None:
                    errors.append(error)
            if not errors:
                with state.lock:  # the active ids and their termination as one step
                    if operation == "kill_endpoint":
                        ids = registry.active_ids(path[len(CONNECTIONS_PATH) + 1 :])
                    elif operation == "kill_all":
                        ids = registry.active_ids()
                    body = {"data": registry.kill(ids, ending)}
        if errors:
            await respond_error(send, problems.invalid_request(self.host, errors), window)
            return
        await respond(send, 200, orjson.dumps(body), JSON, window.headers())

    # --- control ------------------------------------------------------------------------

    async def control(
        self, name: str, method: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        try:
            payload: Any = {}
            if method == "POST":
                raw = await read_body(receive)
                payload = orjson.loads(raw) if raw.strip() else {}
                if not isinstance(payload, dict):
                    raise ValueError("body must be a JSON object")
            if name == "advance" and method == "POST":
                result = await self._advance(payload)
            else:
                result = self._control(name, method, scope, payload)
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            await respond(send, 400, orjson.dumps({"error": str(exc)}))
            return
        if result is None:
            await respond(send, 404, orjson.dumps({"error": f"no control endpoint {name!r}"}))
            return
        await respond(send, 200, orjson.dumps(result))

    async def _advance(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST /_simulator/advance {"seconds": S, "keep_connections": false}: answered once
        the streams it ends have ended (or after 2 s)."""
        unknown = sorted(set(payload) - {"seconds", "keep_connections"})
        if unknown:
            raise ValueError(f"unknown advance parameters {unknown}; expected some of"
                             " ['keep_connections', 'seconds']")
        keep = payload.get("keep_connections", False)
        if not isinstance(keep, bool):
            raise ValueError("keep_connections must be true or false")
        result, ending = control.advance(self.state, payload.get("seconds"), keep)
        if ending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(s.closed.wait() for s in ending)), 2.0)
        return result

    def _control(self, name: str, method: str, scope: Scope, payload: dict[str, Any]) -> Any:
        state = self.state
        query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        if name == "sent" and method == "GET":
            since = int(query.get("since", "0"))
            with state.lock:
                tweets = [
                    {"id": i, "line": line.decode("utf-8", "replace")}
                    for i, line in zip(state.sent.ids[since:], state.sent.lines[since:],
                                       strict=True)
                ]
                lines = [
                    {"kind": s.kind, "line": s.line.decode("utf-8", "replace")}
                    for s in state.other_lines
                ]
                return {"count": len(state.sent.ids), "tweets": tweets, "lines": lines}
        if name == "connects" and method == "GET":
            with state.lock:
                return [dataclasses.asdict(r) for r in state.connect_log]
        if name == "clock" and method == "GET":
            return {"now": state.clock.now(), "offset": state.clock.offset}
        if name == "backdate" and method == "POST":
            unknown = sorted(set(payload) - {"seconds"})
            if unknown:
                raise ValueError(f"unknown backdate parameters {unknown}; expected ['seconds']")
            return control.backdate(state, payload.get("seconds"))
        if name == "reset-connection" and method == "POST":
            unknown = sorted(set(payload) - {"id", "end"})
            if unknown:
                raise ValueError(f"unknown reset-connection parameters {unknown}; expected"
                                 " some of ['end', 'id']")
            if not isinstance(payload.get("id"), str):
                raise ValueError("`id` must be a connection id (a string)")
            found = control.reset_connection(state, payload["id"],
                                             str(payload.get("end", "reset")))
            return {"reset": found}
        if name == "timeline" and method == "GET":
            made = control.timeline(
                state, _float_or_none(query.get("start")), _float_or_none(query.get("end")),
                query.get("endpoint"),
                int(query["partition"]) if "partition" in query else None,
            )
            return {"count": len(made), "tweets": [control.timeline_json(t) for t in made]}
        if name == "state" and method == "GET":
            with state.lock:
                active = len([s for s in state.sessions if not s.finished])
                sent = len(state.sent.ids)
            return {"active_connections": active, "sent_tweets": sent,
                    "recovery_sent": state.recovery_sent,
                    "settings": control.settings_json(state)}
        if name == "faults" and method == "POST":
            state.inject(Fault.from_dict(payload))
            return {"ok": True}
        if name == "connect-faults" and method == "POST":
            count = int(payload.pop("count", 1))
            state.inject_connect(ConnectFault.from_dict(payload), count)
            return {"ok": True}
        if name == "rules-faults" and method == "POST":
            state.inject_rules_fault(*parse_rules_fault_spec(payload))
            return {"ok": True}
        if name == "rules-requests" and method == "GET":
            with state.lock:
                return [dataclasses.asdict(r) for r in state.rules_log]
        if name == "connections" and method == "GET":
            return [dataclasses.asdict(r) for r in state.connections.snapshot()]
        if name == "connections-requests" and method == "GET":
            with state.lock:
                return [dataclasses.asdict(r) for r in state.connections_log]
        if name == "terminate-connections" and method == "POST":
            return control.terminate_connections(state, _string_list(payload.get("uuids")))
        if name == "config" and method == "POST":
            control.configure(state, payload)
            return control.settings_json(state)
        if name == "rules" and method == "GET":
            return [{"id": r.id, "value": r.value, "tag": r.tag} for r in control.rules(state)]
        if name == "rules" and method == "POST":
            items = [(str(item["value"]), item.get("tag")) for item in payload.get("add", [])]
            ids = control.add_rules(state, items)
            if payload.get("delete"):
                control.delete_rules(state, [str(i) for i in payload["delete"]])
            return {"ids": ids}
        return None


def _float_or_none(value: str | None) -> float | None:
    return None if value is None or value == "" else float(value)


def _string_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("`uuids` must be a list of strings")
    return list(value)


def _minute(epoch: float, up: bool) -> str:
    """An instant as X writes a bound in its time errors: YYYY-MM-DDTHH:mmZ, rounded up
    (a lower bound) or down (an upper bound) to the minute."""
    seconds = math.ceil(epoch / 60) * 60 if up else math.floor(epoch / 60) * 60
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(seconds))


def _parse_time(value: str) -> float | None:
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def _parse_rules_body(
    raw: bytes, delete_all: bool
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Validates the POST rules body; returns (request, errors)."""

    def bad(message: str) -> tuple[None, list[dict[str, Any]]]:
        return None, [{"parameters": {}, "message": message}]

    if delete_all:
        return {}, []
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return bad("Request body is not valid JSON.")
    if not isinstance(body, dict):
        return bad("Request body must be a JSON object.")
    extra = sorted(set(body) - {"add", "delete"})
    if extra:
        return bad(f"Unrecognized fields in request body: {extra}")
    if ("add" in body) == ("delete" in body):
        return bad("Exactly one of `add` or `delete` must be specified.")
    if "add" in body:
        items = body["add"]
        if not isinstance(items, list) or not items:
            return bad("`add` must be a non-empty array of rules.")
        parsed: list[tuple[str, str | None]] = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("value"), str):
                return bad("Each rule in `add` must be an object with a string `value`.")
            if set(item) - {"value", "tag"}:
                return bad(f"Unrecognized fields in rule: {sorted(set(item) - {'value', 'tag'})}")
            tag = item.get("tag")
            if tag is not None and not isinstance(tag, str):
                return bad("A rule `tag` must be a string.")
            parsed.append((item["value"], tag))
        return {"add": parsed}, []
    delete = body["delete"]
    if not isinstance(delete, dict) or not (set(delete) <= {"ids", "values"}) or not delete:
        return bad("`delete` must be an object with `ids` and/or `values`.")
    ids = delete.get("ids", [])
    values = delete.get("values", [])
    if not isinstance(ids, list) or not isinstance(values, list):
        return bad("`delete.ids` and `delete.values` must be arrays.")
    errors = [
        {"parameters": {"ids": [str(i)]}, "message": f"'{i}' is not a valid Long"}
        for i in ids
        if not (isinstance(i, str) and i.isdigit() and len(i) <= 19)
    ]
    if errors:
        return None, errors
    if not all(isinstance(v, str) for v in values):
        return bad("`delete.values` must be strings.")
    return {"delete": {"ids": ids, "values": values}}, []

