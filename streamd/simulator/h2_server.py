"""A small HTTP/2 front end (on the `h2` package) that runs the simulator's ASGI app inside
uvicorn's server, next to its HTTP/1.1 protocol.

Why our own rather than hypercorn: the simulator must end streams the ways X's do (RST_STREAM
on one stream, FIN without END_STREAM, TCP RST after a drain) and see slow readers, and
hypercorn gives the app no handle on any of that (it drops a stream that ends mid-body
without a RST_STREAM). Here each stream is its own `ConnectionControl`.

One `H2Protocol` per TCP connection: it feeds received bytes to h2, starts one ASGI task
per request, and writes what h2 has to send. Flow control: request bodies are acknowledged
as they arrive (they are small). Response data goes out as far as the client's window
allows; the rest waits in the stream's buffer for WINDOW_UPDATE. As with uvicorn's
HTTP/1.1, a send never blocks midway: the *next* send waits until the buffer is empty and
the socket takes data (pause_writing / resume_writing), and `backlogged()` tells the stream
session beforehand, so a slow reader meets the same timeout over both protocols."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from streamd.simulator.connection import (
    CONNECTION_KEY,
    buffered_bytes,
    tcp_reset,
    wait_flushed,
)

_log = logging.getLogger("streamd.simulator.h2")

# Connection-specific headers HTTP/2 forbids (RFC 9113 §8.2.2).
_HOP_BY_HOP = frozenset(
    {b"connection", b"transfer-encoding", b"keep-alive", b"proxy-connection", b"upgrade"}
)
_MAX_STREAMS = 100


class H2Stream:
    """One request/response: its ASGI receive/send, and its ConnectionControl."""

    protocol = "h2"

    def __init__(self, owner: H2Protocol, stream_id: int) -> None:
        self.owner = owner
        self.stream_id = stream_id
        self.body: collections.deque[bytes] = collections.deque()
        self.body_complete = False
        self.final_request_sent = False
        self.response_started = False
        self.response_complete = False
        # True once the stream can carry nothing more: reset (by either side), or the
        # connection is gone.
        self.closed = False
        self.changed = asyncio.Event()  # request data, end of body, or close
        # Response bytes waiting for flow-control window, and whether END_STREAM follows.
        self.pending = bytearray()
        self.end_pending = False
        self.room = asyncio.Event()  # set while `pending` is empty
        self.room.set()
        self.app_done = False  # the ASGI task has returned

    # --- events from the connection ------------------------------------------------------

    def mark_closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.pending.clear()
        self.end_pending = False
        self.changed.set()
        self.room.set()
        self.owner.forget_if_done(self)

    @property
    def settled(self) -> bool:
        """Nothing more will be sent on it: closed, or all sent including END_STREAM."""
        return self.closed or not (self.pending or self.end_pending)

    def push(self) -> None:
        """Send what the window allows of `pending`, then END_STREAM if it is due."""
        if self.closed:
            return
        h2conn = self.owner.h2
        try:
            while self.pending:
                window = h2conn.local_flow_control_window(self.stream_id)
                if window <= 0:
                    return
                size = min(window, h2conn.max_outbound_frame_size, len(self.pending))
                h2conn.send_data(self.stream_id, bytes(self.pending[:size]))
                del self.pending[:size]
            if self.end_pending:
                self.end_pending = False
                h2conn.end_stream(self.stream_id)
        except h2.exceptions.StreamClosedError:
            self.mark_closed()
        finally:
            self.owner.flush()
            if not self.pending:
                self.room.set()
            self.owner.forget_if_done(self)

    # --- ASGI ---------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        while True:
            if self.body:
                chunk = self.body.popleft()
                last = self.body_complete and not self.body
                self.final_request_sent = self.final_request_sent or last
                return {"type": "http.request", "body": chunk, "more_body": not last}
            if self.body_complete and not self.final_request_sent:
                self.final_request_sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if self.closed or self.response_complete:
                return {"type": "http.disconnect"}
            self.changed.clear()
            await self.changed.wait()

    async def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            raise ConnectionResetError("HTTP/2 stream closed")
        kind = message["type"]
        owner = self.owner
        if kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("response already started")
            self.response_started = True
            headers = [(b":status", str(message["status"]).encode())]
            for name, value in message.get("headers", []):
                name = bytes(name).lower()
                if name not in _HOP_BY_HOP:
                    headers.append((name, bytes(value)))
            owner.h2.send_headers(self.stream_id, headers)
            owner.flush()
        elif kind == "http.response.body":
            if not self.response_started or self.response_complete:
                raise RuntimeError("response body outside a response")
            await self.room.wait()
            await owner.writable()
            if self.closed:
                raise ConnectionResetError("HTTP/2 stream closed")
            self.pending += message.get("body", b"")
            if self.pending:
                self.room.clear()
            if not message.get("more_body", False):
                self.response_complete = True
                self.end_pending = True
                self.changed.set()
            self.push()

    # --- ConnectionControl --------------------------------------------------------------

    def backlogged(self) -> bool:
        if self.closed:
            return False
        transport = self.owner.transport
        return bool(self.pending) or (transport is not None and buffered_bytes(transport) > 0)

    def gone(self) -> bool:
        return self.closed

    async def flushed(self, limit: float) -> bool:
        deadline = asyncio.get_running_loop().time() + limit
        try:
            await asyncio.wait_for(self.room.wait(), limit)  # the window took it all
        except TimeoutError:
            return False
        transport = self.owner.transport
        left = deadline - asyncio.get_running_loop().time()
        return transport is None or await wait_flushed(transport, max(left, 0.0))

    def release(self) -> None:
        """The response ended with END_STREAM; the connection stays for other streams."""

    def close(self) -> None:
        self.owner.close_transport()

    def abort(self) -> None:
        self.owner.abort_transport()

    def reset(self) -> None:
        transport = self.owner.transport
        if transport is not None:
            tcp_reset(transport)
        self.owner.lose_streams()

    def reset_stream(self, code: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        # NO_ERROR by default: X was seen resetting streams that way ("stream was reset:
        # NO_ERROR" in an okhttp trace).
        if not self.closed:
            with contextlib.suppress(h2.exceptions.H2Error):
                self.owner.h2.reset_stream(self.stream_id, code)
                self.owner.flush()
        self.mark_closed()


class H2Protocol(asyncio.Protocol):
    """uvicorn's protocol-class interface (config, server_state, app_state, _loop), so the
    uvicorn server can hand it connections and shut it down."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app = config.loaded_app
        self.root_path: str = config.root_path
        self.app_state = app_state
        self.server_state = server_state
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.transport: asyncio.WriteTransport | None = None
        self.streams: dict[int, H2Stream] = {}
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None
        self.shutting_down = False
        self.lost = False
        self._writable = asyncio.Event()
        self._writable.set()

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport
        self.server_state.connections.add(self)
        self.server = _address(transport.get_extra_info("sockname"))
        self.client = _address(transport.get_extra_info("peername"))
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: _MAX_STREAMS},
        )
        self.h2.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()  # h2 queued a GOAWAY
            self.close_transport()
            return
        for event in events:
            self._handle(event)
        self.flush()

    def eof_received(self) -> bool | None:
        # The client is gone: its streams are, at once (before connection_lost).
        self.lose_streams()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server_state.connections.discard(self)
        self.lose_streams()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: GOAWAY now, close once the open streams end."""
        self.shutting_down = True
        with contextlib.suppress(h2.exceptions.H2Error):
            self.h2.close_connection()
            self.flush()
        if not self.streams:
            self.close_transport()

    # --- h2 events ----------------------------------------------------------------------

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._start(event)
        elif isinstance(event, h2.events.DataReceived):
            if event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream = self.streams.get(event.stream_id)
            if stream is not None and event.data:
                stream.body.append(event.data)
                stream.changed.set()
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.body_complete = True
                stream.changed.set()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.mark_closed()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            for waiting in list(self.streams.values()):
                waiting.push()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.lose_streams()
            self.close_transport()

    def _start(self, event: h2.events.RequestReceived) -> None:
        assert event.stream_id is not None
        assert event.headers is not None
        stream = H2Stream(self, event.stream_id)
        if event.stream_ended is not None:
            stream.body_complete = True
        self.streams[event.stream_id] = stream
        scope = self._scope(event.headers, stream)
        task = asyncio.get_running_loop().create_task(self._run(scope, stream))
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)

    def _scope(self, raw_headers: Any, stream: H2Stream) -> dict[str, Any]:
        pseudo: dict[bytes, bytes] = {}
        headers: list[tuple[bytes, bytes]] = []
        for name, value in raw_headers:
            if name.startswith(b":"):
                pseudo[name] = value
            else:
                headers.append((name, value))
        if b":authority" in pseudo:
            headers.insert(0, (b"host", pseudo[b":authority"]))
        raw_path, _, query = pseudo.get(b":path", b"/").partition(b"?")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "2",
            "scheme": pseudo.get(b":scheme", b"https").decode("ascii"),
            "method": pseudo.get(b":method", b"GET").decode("ascii"),
            "path": unquote(raw_path.decode("ascii")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": self.root_path,
            "headers": headers,
            "server": self.server,
            "client": self.client,
            "state": dict(self.app_state),
            "extensions": {CONNECTION_KEY: stream},
        }

    async def _run(self, scope: dict[str, Any], stream: H2Stream) -> None:
        try:
            await self.app(scope, stream.receive, stream.send)
        except BaseException:
            _log.exception("exception in the ASGI app (HTTP/2 stream %d)", stream.stream_id)
            self._abandon(stream)
        else:
            if not stream.response_complete:
                # The app returned without ending its response: do not leave the client
                # waiting on a stream nobody will finish.
                self._abandon(stream)
        finally:
            stream.app_done = True
            self.forget_if_done(stream)

    def _abandon(self, stream: H2Stream) -> None:
        if stream.closed or self.lost:
            return
        if not stream.response_started:
            with contextlib.suppress(h2.exceptions.H2Error):
                self.h2.send_headers(stream.stream_id, [(b":status", b"500")], end_stream=True)
                self.flush()
            stream.mark_closed()
            return
        stream.reset_stream(h2.errors.ErrorCodes.INTERNAL_ERROR)

    def forget_if_done(self, stream: H2Stream) -> None:
        """Drop a stream once its app returned and its last bytes are out (a response's
        tail may still wait for window after the app is done)."""
        if not (stream.app_done and stream.settled):
            return
        self.streams.pop(stream.stream_id, None)
        if self.shutting_down and not self.streams:
            self.close_transport()

    # --- writing and connection control -------------------------------------------------

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def writable(self) -> None:
        await self._writable.wait()

    def lose_streams(self) -> None:
        for stream in list(self.streams.values()):
            stream.mark_closed()
        self._writable.set()

    def close_transport(self) -> None:
        """FIN after what is buffered, with no GOAWAY and no END_STREAM on open streams."""
        if self.transport is not None:
            self.transport.close()
        self.lose_streams()

    def abort_transport(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.lose_streams()


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None
