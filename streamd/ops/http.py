"""The operations endpoint: /metrics, /livez, /readyz.

A small HTTP/1.1 server (anyio for the sockets, h11 for the protocol) that answers one request
per connection with a small ASGI app (OpsApp). It replaces an embedded uvicorn, which has no
deadline for a request head and accepts connections until the process runs out of file
descriptors: a few hundred slow clients then locked out the kubelet's probes, and asyncio
logged "socket.accept() out of system resource" tens of thousands of times. The bounds
(OpsLimits) are what this module is for:

- At most `max_connections` sockets at once, well below RLIMIT_NOFILE. A connection beyond
  that makes room by closing the one that has waited longest without sending a complete
  request head. A probe sends its request at once, so slow clients only ever push out each
  other, never the probe (refusing the newcomer instead would lock the probe out).
- The request head must arrive within `head_timeout` (slowloris) and fit in `max_head_bytes`
  (else 431). A request with a body gets 413: nothing here takes one. The connection closes
  after its one response, so an idle keep-alive never holds a slot.
- The response must be taken by the client within `send_timeout`.
- accept() failing (EMFILE, ENFILE, ...) is retried after a short backoff, never in a loop,
  and logged (the log throttle keeps that to a line per interval).

OpsApp stays an ASGI app so that /metrics is prometheus_client's own ASGI app, with its
format negotiation (text or OpenMetrics) and gzip, unchanged; calling it for one request
without a body takes a few lines (_call_app).
"""

from __future__ import annotations

import contextlib
import http
import resource
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import h11
import orjson
from anyio.abc import SocketListener, SocketStream, TaskGroup, TaskStatus

from streamd.ops.logs import get_logger

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Returns None when ready, else a short machine-readable reason; a mapping is a ready answer
# of its own (200 with that JSON body: a standby's {"role": "standby"}).
ReadinessProbe = Callable[[], str | Mapping[str, str] | None]

_log = get_logger(__name__)

# The most sockets the endpoint holds by default: a kubelet and a Prometheus or two need a
# handful; the rest of the daemon (Kafka, X, the spool) needs the other descriptors.
_DEFAULT_MAX_CONNECTIONS = 64
# Pending connections wait in the kernel (no descriptor of ours): a long queue keeps a probe's
# SYN from being dropped (and retried a second later) while slow clients are being pushed out.
_BACKLOG = 1024
_ACCEPT_BACKOFF_MIN_S = 0.05
_ACCEPT_BACKOFF_MAX_S = 1.0


def default_max_connections() -> int:
    """A quarter of the soft RLIMIT_NOFILE, at most 64 and at least 4."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _DEFAULT_MAX_CONNECTIONS
    return max(4, min(_DEFAULT_MAX_CONNECTIONS, soft // 4))


@dataclass(frozen=True, slots=True)
class OpsLimits:
    max_connections: int = field(default_factory=default_max_connections)
    head_timeout: float = 5.0  # seconds from accept to a complete request head
    max_head_bytes: int = 8192  # request line and headers; more -> 431
    send_timeout: float = 5.0  # seconds for the client to take the response


class OpsApp:
    """/metrics (the given ASGI app), /livez (200 while the loop turns), /readyz (200, or 503
    with the readiness probe's reason)."""

    def __init__(self, metrics_app: ASGIApp, readiness: ReadinessProbe) -> None:
        self._metrics_app = metrics_app
        self._readiness = readiness

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/metrics":
            await self._metrics_app(scope, receive, send)
        elif path == "/livez":
            await _respond(send, 200, b'{"status":"ok"}')
        elif path == "/readyz":
            reason = self._readiness()
            if reason is None:
                await _respond(send, 200, b'{"status":"ready"}')
            elif not isinstance(reason, str):
                await _respond(send, 200, orjson.dumps(dict(reason)))
            else:
                await _respond(send, 503, orjson.dumps({"status": "not ready", "reason": reason}))
        else:
            await _respond(send, 404, b'{"error":"not found"}')


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


async def serve_ops(
    app: ASGIApp, host: str, port: int, *, limits: OpsLimits | None = None,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled on `host` (an IPv4 or IPv6 address, without brackets) and
    `port`, as `HttpSettings.host`/`.port` give them. Reports the bound port through
    task_status (port may be 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)
        bound = int(sock.getsockname()[1])
    except BaseException:
        sock.close()
        raise
    listener = await SocketListener.from_socket(sock)
    server = _OpsServer(app, OpsLimits() if limits is None else limits)
    async with listener, anyio.create_task_group() as tg:
        task_status.started(bound)
        await server.accept_loop(listener, tg)


@dataclass(eq=False, slots=True)
class _Client:
    """One accepted connection. Cancelling its scope closes it."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


class _Reject(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _OpsServer:
    def __init__(self, app: ASGIApp, limits: OpsLimits) -> None:
        self._app = app
        self._limits = limits
        self._open = 0  # sockets accepted and not yet closed
        # Connections that have not sent a complete request head, oldest first: whom to close
        # when a newcomer needs room.
        self._waiting: dict[_Client, None] = {}
        self._closed = anyio.Event()  # set (and replaced) whenever a connection closes

    async def accept_loop(self, listener: SocketListener, tg: TaskGroup) -> None:
        backoff = _ACCEPT_BACKOFF_MIN_S
        while True:
            # An evicted connection frees its descriptor when its task has run: wait for that
            # before accepting again, so the count of sockets never creeps past the cap + 1.
            while self._open > self._limits.max_connections:
                await self._closed.wait()
            try:
                stream = await listener.accept()
            except OSError as exc:
                # EMFILE/ENFILE (descriptors taken elsewhere in the daemon), ENOBUFS, or a
                # connection aborted before it was taken. The pending connection stays queued:
                # retrying at once would fail at once, in a loop. Retry when one of ours
                # closes, or after a short backoff.
                _log.warning("http.accept_failed", error=exc.strerror or type(exc).__name__)
                with anyio.move_on_after(backoff):
                    await self._closed.wait()
                backoff = min(backoff * 2, _ACCEPT_BACKOFF_MAX_S)
                continue
            backoff = _ACCEPT_BACKOFF_MIN_S
            client = _Client()
            self._open += 1
            self._waiting[client] = None
            if self._open > self._limits.max_connections:
                # The oldest incomplete one: a slow client, or this newcomer when every other
                # connection is busy answering a complete request.
                oldest = next(iter(self._waiting))
                del self._waiting[oldest]
                oldest.scope.cancel()
                _log.warning("http.client_dropped", reason="evicted")
            tg.start_soon(self._serve_client, stream, client)

    async def _serve_client(self, stream: SocketStream, client: _Client) -> None:
        try:
            with client.scope:
                await self._exchange(stream, client)
        finally:
            self._waiting.pop(client, None)
            await anyio.aclose_forcefully(stream)
            self._open -= 1
            self._closed.set()
            self._closed = anyio.Event()

    async def _exchange(self, stream: SocketStream, client: _Client) -> None:
        limits = self._limits
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
        request: h11.Request | None = None
        status = 0
        with anyio.move_on_after(limits.head_timeout) as head_deadline:
            try:
                request = await _read_request(stream, conn, limits.max_head_bytes)
            except _Reject as exc:
                status = exc.status
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return  # gone before a complete request: nobody to answer
        if head_deadline.cancelled_caught:
            _log.warning("http.client_dropped", reason="head_timeout")
            return
        # A complete request (or one to refuse): never pushed out from here on.
        self._waiting.pop(client, None)
        if request is None:
            # No text from the client in the line: repeats are identical, so the log throttle
            # keeps a stream of them to one line per interval.
            _log.warning("http.bad_request", status=status)
            answer = _error_answer(status)
        else:
            try:
                answer = await _call_app(self._app, request, stream)
            except Exception:  # a failing probe or collector: answer 500, keep serving
                # The path only, no query: only the app's own paths can fail, so the field
                # takes few values and the throttle still holds repeats to a line per interval.
                path = request.target.partition(b"?")[0].decode("ascii", "replace")
                _log.exception("http.app_failed", path=path)
                answer = _error_answer(500)
        with anyio.move_on_after(limits.send_timeout), contextlib.suppress(
            anyio.BrokenResourceError, anyio.ClosedResourceError,
            h11.LocalProtocolError,  # a refused HEAD request's error body: nothing is sent
        ):
            await stream.send(_response_bytes(conn, request, *answer))


async def _read_request(
    stream: SocketStream, conn: h11.Connection, max_head_bytes: int
) -> h11.Request:
    """The request head; _Reject if it is malformed, too large or followed by a body."""
    request: h11.Request | None = None
    received = 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise _Reject(exc.error_status_hint) from None
        if event is h11.NEED_DATA:
            if request is not None:
                raise _Reject(413)  # the head announced a body (Content-Length, chunked)
            if received >= max_head_bytes:
                raise _Reject(431)
            # Never more than the limit is read (h11's own limit only applies to a head that
            # arrives in pieces, and lets a whole one of any size through).
            data = await stream.receive(max_head_bytes - received)
            received += len(data)
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage) and request is not None:
            return request
        elif isinstance(event, h11.Data):
            raise _Reject(413)
        else:  # ConnectionClosed (EOF) before a complete head
            raise anyio.EndOfStream


async def _call_app(
    app: ASGIApp, request: h11.Request, stream: SocketStream
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run the ASGI app for one bodiless request; (status, headers, body)."""
    raw_path, _, query = request.target.partition(b"?")
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.http_version.decode("ascii"),
        "method": request.method.decode("ascii"),
        "scheme": "http",
        "path": urllib.parse.unquote(raw_path.decode("ascii", "replace")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": list(request.headers),
        "client": _address(stream.extra(anyio.abc.SocketAttribute.remote_address)),
        "server": _address(stream.extra(anyio.abc.SocketAttribute.local_address)),
    }
    start: Message | None = None
    chunks: list[bytes] = []
    requested = False

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))

    await app(scope, receive, send)
    if start is None:
        return _error_answer(500)
    headers = [(bytes(k), bytes(v)) for k, v in start.get("headers", [])]
    return int(start["status"]), headers, b"".join(chunks)


def _address(address: Any) -> tuple[str, int] | None:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


# Framing is ours: the whole body is known, and the connection closes after it.
_FRAMING = {b"content-length", b"transfer-encoding", b"connection"}


def _error_answer(status: int) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = orjson.dumps({"error": http.HTTPStatus(status).phrase.lower()})
    return status, [(b"content-type", b"application/json")], body


def _response_bytes(
    conn: h11.Connection, request: h11.Request | None, status: int,
    headers: list[tuple[bytes, bytes]], body: bytes,
) -> bytes:
    """The whole response. `request` is None for a request h11 could not parse: h11 lets a
    server answer one (its own state is still IDLE)."""
    headers = [(k, v) for k, v in headers if k.lower() not in _FRAMING]
    headers += [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    try:
        reason = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    out = conn.send(h11.Response(status_code=status, headers=headers, reason=reason)) or b""
    if body and (request is None or request.method != b"HEAD"):  # HEAD: the headers only
        out += conn.send(h11.Data(data=body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    return out
