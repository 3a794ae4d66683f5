"""The operations endpoint: /metrics, /livez, /readyz (uvicorn, one small ASGI app)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable, Generator, MutableMapping
from typing import Any

import anyio
import orjson
import uvicorn
from anyio.abc import TaskStatus

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Returns None when ready, else a short machine-readable reason.
ReadinessProbe = Callable[[], str | None]


class OpsApp:
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


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the daemon owns SIGTERM/SIGINT/SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve_ops(
    app: ASGIApp, listen: str, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled. Reports the bound port through task_status (listen may say 0)."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    # log_config=None: uvicorn's default dictConfig would give its loggers their own
    # handlers and bypass streamd's JSON log lines.
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", access_log=False, http="h11",
        log_config=None,
    )
    server = _EmbeddedServer(config)
    task_status.started(int(sock.getsockname()[1]))
    try:
        await server.serve(sockets=[sock])
    finally:
        server.should_exit = True
        sock.close()
