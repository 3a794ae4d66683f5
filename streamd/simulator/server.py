"""Simulator: runs the ASGI app under uvicorn in a background thread with its own event loop,
and exposes thread-safe controls for tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Literal

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from streamd.simulator import control
from streamd.simulator.app import SimulatorApp
from streamd.simulator.config import SimulatorConfig
from streamd.simulator.connection import CONNECTION_KEY, TransportConnection
from streamd.simulator.faults import ConnectFault, Fault
from streamd.simulator.feed import Feed
from streamd.simulator.h2_server import H2Protocol
from streamd.simulator.records import (
    ConnectionRecord,
    ConnectionsRequestRecord,
    ConnectRecord,
    Rule,
    RulesRequestRecord,
    SentLine,
    SentTweet,
    TimelineTweet,
)
from streamd.simulator.rules_faults import RULES_METHODS, RulesFault
from streamd.simulator.scenario import load_scenario, run_scenario
from streamd.simulator.state import SimulatorState
from streamd.simulator.tls import server_context

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class _ConnectionExposingH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, plus connection control in the ASGI scope: the stream
    needs it to reset sockets (RST mid-line), to see when a slow reader stops taking data,
    and to notice at once that the client went away."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.control: TransportConnection | None = None
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})[CONNECTION_KEY] = self.control
            await inner(scope, receive, send)

        self.app = app

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.control = TransportConnection(transport)

    def eof_received(self) -> None:
        if self.control is not None:
            self.control.lost = True
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.control is not None:
            self.control.lost = True
        super().connection_lost(exc)


class _AlpnSwitch(asyncio.Protocol):
    """Takes a TLS connection and hands it to the protocol ALPN agreed on: our HTTP/2 front
    end for "h2", uvicorn's HTTP/1.1 otherwise. asyncio calls connection_made only after
    the handshake, so the choice is known here."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        protocol: asyncio.BaseProtocol
        if chosen == "h2":
            protocol = H2Protocol(**self._kwargs)
        else:
            protocol = _ConnectionExposingH11(**self._kwargs)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


class _EmbeddedServer(uvicorn.Server):
    """No signal handling: the embedding thread or process owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn name
        return


class Simulator:
    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.state = SimulatorState(self.config)
        self._feed = Feed(self.state)
        self._app = SimulatorApp(self.state, self._feed)
        self._scenario = (
            load_scenario(self.config.scenario_file) if self.config.scenario_file else None
        )
        # Built now, so a bad certificate or key fails here (OSError / ssl.SSLError).
        self._ssl = (
            server_context(self.config.tls_certfile, self.config.tls_keyfile, self.config.http2)
            if self.config.tls_certfile is not None
            else None
        )
        self._thread: threading.Thread | None = None
        self._server: _EmbeddedServer | None = None
        self._sockets: list[socket.socket] = []
        self._error: BaseException | None = None
        self.port: int = 0

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Simulator:
        """Bind the listening socket(s) and serve in a background thread. A port that
        cannot be bound raises OSError here (errno EADDRINUSE when it is taken)."""
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        config = self.config
        self._sockets = bind_sockets(config.host, config.port)
        uv_config = uvicorn.Config(
            self._app,
            host=config.host,
            port=config.port,
            log_level="warning",
            lifespan="off",
            http=_AlpnSwitch if config.http2 else _ConnectionExposingH11,
            interface="asgi3",
            server_header=False,
            date_header=False,  # the app sends its own, on the simulated clock
            access_log=False,
            log_config=None,  # leave the host process's logging alone
        )
        if self._ssl is not None:
            # Our own context: uvicorn's sets no ALPN, and HTTP/2 is chosen by ALPN.
            uv_config.load()
            uv_config.ssl = self._ssl
        self._server = _EmbeddedServer(uv_config)
        self._thread = threading.Thread(target=self._run, name="streamd-simulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                for sock in self._sockets:
                    sock.close()
                raise RuntimeError(f"simulator failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("simulator did not start in time")
            time.sleep(0.005)
        self.port = int(self._sockets[0].getsockname()[1])
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self.state.stop_event = asyncio.Event()
        self.state.loop = loop
        self.state.started_at = time.monotonic()
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by start()/stop()
            self._error = exc
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        assert self._server is not None
        if self.config.timeline_start == "start":
            self._feed.start()
        tasks = [asyncio.ensure_future(self._tick())]
        if self._scenario is not None:
            tasks.append(asyncio.ensure_future(run_scenario(self.state, self._scenario)))
        try:
            await self._server.serve(sockets=self._sockets)
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _tick(self) -> None:
        """Tweets are created on time even while no stream reads (each with the rules in
        force then): the timeline catches up every 50 ms."""
        while True:
            await asyncio.sleep(0.05)
            self._feed.catch_up()

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is None or self._thread is None:
            return
        self.state.request_stop()
        # Streams end cleanly at their next step; one blocked on a reader that stopped
        # reading would wait for the slow-reader timeout, so abort it after a grace period.
        deadline = time.monotonic() + 1.0
        while self.active_connections() and time.monotonic() < deadline:
            time.sleep(0.01)
        loop = self.state.loop
        for session in self.state.sessions_holding_sockets():
            if session.conn is not None and loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(session.conn.abort)
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> Simulator:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """http://HOST:PORT; with TLS https://, and a loopback host is named "localhost",
        the name the test certificate is made for."""
        host = self.config.host
        if self.config.tls_certfile is not None:
            if host in _LOOPBACK:
                host = "localhost"
            return f"https://{_bracket(host)}:{self.port}"
        return f"http://{_bracket(host)}:{self.port}"

    # --- rules --------------------------------------------------------------------------

    def add_rules(
        self, items: Iterable[tuple[str, str | None] | str], *, immediate: bool = False
    ) -> list[str]:
        """Add rules server-side. They reach the stream after `rule_propagation_delay`
        (default 20 s), unless `immediate`: then the whole rule set is in force at once
        (rules the account already had)."""
        pairs = [(item, None) if isinstance(item, str) else item for item in items]
        return control.add_rules(self.state, pairs, immediate=immediate)

    def delete_rules(self, ids: Iterable[str]) -> None:
        control.delete_rules(self.state, ids)

    def rules(self) -> list[Rule]:
        return control.rules(self.state)

    # --- faults -------------------------------------------------------------------------

    def inject(self, fault: Fault) -> None:
        """Apply to every open stream; if none is open, to the next one that opens."""
        self.state.inject(fault)

    def inject_connect(self, fault: ConnectFault, count: int = 1) -> None:
        self.state.inject_connect(fault, count)

    def inject_rules_fault(
        self,
        fault: RulesFault,
        method: Literal["GET", "POST", "any"] = "any",
        count: int = 1,
    ) -> None:
        """The next `count` rules requests of `method` get `fault` (in injection order)."""
        if method not in RULES_METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {RULES_METHODS}")
        if count < 1:
            raise ValueError("count must be >= 1")
        self.state.inject_rules_fault(fault, method, count)

    # --- live settings ------------------------------------------------------------------

    def configure(self, **changes: Any) -> None:
        control.configure(self.state, changes)

    def set_tier(self, tier: str) -> None:
        self.configure(tier=tier)

    def set_rate(self, tweets_per_second: float) -> None:
        self.configure(tweets_per_second=tweets_per_second)

    def set_total(self, total_tweets: int | None) -> None:
        self.configure(total_tweets=total_tweets)

    def set_usage_cap(self, usage_cap: int | None) -> None:
        self.configure(usage_cap=usage_cap)

    def set_policy(self, connection_policy: str) -> None:
        self.configure(connection_policy=connection_policy)

    # --- the timeline and the simulated clock -------------------------------------------

    def now(self) -> float:
        """The simulated clock: epoch seconds (real time plus what `advance` added)."""
        return self.state.clock.now()

    def advance(self, seconds: float, keep_connections: bool = False,
                timeout: float = 2.0) -> dict[str, Any]:
        """Move the simulated clock `seconds` ahead at once, creating the tweets of that
        interval (the rate times `seconds`, at most 200,000, `created_at` spread over it).
        Unless `keep_connections`, every live stream is ended cleanly first (reason
        "clock_advanced"), so none receives them; with it, open streams read them as a
        burst. Returns {"from", "to" (the interval, (from, to]), "now", "created", "ended":
        [connection ids]} once the ended streams have ended (or after `timeout`)."""
        result, ending = control.advance(self.state, seconds, keep_connections)
        deadline = time.monotonic() + timeout
        while any(not s.closed.is_set() for s in ending) and time.monotonic() < deadline:
            time.sleep(0.005)
        return result

    def backdate(self, seconds: float) -> dict[str, Any]:
        """Claim that the last `seconds` passed with nobody reading: their tweets (the rate
        times `seconds`, at most 200,000) are created at once, `created_at` spread over
        [now - seconds, now); no live stream receives them, backfill and recovery windows
        hold them. The clock does not move (compare `advance`, which moves it and ends the
        live streams). Returns {"from", "to", "created"}."""
        return control.backdate(self.state, seconds)

    def reset_connection(self, connection_id: str, end: str = "reset") -> bool:
        """End one connection's open stream as a network failure would: a TCP reset by
        default (`end`: "reset", "no_final_chunk", "rst_stream" or "clean").
        disconnect_reason "server_disconnect". False when no open stream has that id."""
        return control.reset_connection(self.state, connection_id, end)

    def recovery_sent(self) -> int:
        """Tweets sent on recovery (start_time/end_time) streams so far."""
        return self.state.recovery_sent

    def timeline(
        self,
        start: float | None = None,
        end: float | None = None,
        *,
        endpoint: str | None = None,
        partition: int | None = None,
    ) -> list[TimelineTweet]:
        """Every tweet created in [start, end) (epoch seconds on the simulated clock; None:
        unbounded), oldest first, connected or not; with `endpoint` (a stream path, its
        Connections API name or short name: "filtered", "sample", "sample10", "firehose",
        "firehose_en", ...), only that endpoint's share: of `partition`, or of all its
        partitions."""
        return control.timeline(self.state, start, end, endpoint, partition)

    # --- records ------------------------------------------------------------------------

    def sent_tweets(self) -> list[SentTweet]:
        return self.state.sent_tweets()

    def sent_lines(self) -> list[SentLine]:
        with self.state.lock:
            return list(self.state.other_lines)

    def connects(self) -> list[ConnectRecord]:
        with self.state.lock:
            return list(self.state.connect_log)

    def rules_requests(self) -> list[RulesRequestRecord]:
        """Every GET/POST /2/tweets/search/stream/rules request, as answered."""
        with self.state.lock:
            return list(self.state.rules_log)

    def wait_connects(self, n: int, timeout: float) -> bool:
        """Block until at least `n` connect attempts are recorded (a hanging connect is
        recorded as soon as its request is in)."""
        with self.state.log_changed:
            return self.state.log_changed.wait_for(
                lambda: len(self.state.connect_log) >= n, timeout
            )

    def wait_rules_requests(self, n: int, timeout: float) -> bool:
        """Block until at least `n` rules requests are recorded (answered or reset)."""
        with self.state.log_changed:
            return self.state.log_changed.wait_for(
                lambda: len(self.state.rules_log) >= n, timeout
            )

    def active_connections(self) -> int:
        """Open streams (a zombie connection has none; see connection_records)."""
        return len(list(self.state.open_sessions()))

    # --- connections (X's Connections API; see connections.py) ----------------------------

    def connection_records(self) -> list[ConnectionRecord]:
        """Every connection since the start, newest first, with `active` and `zombie`."""
        return self.state.connections.snapshot()

    def connections_requests(self) -> list[ConnectionsRequestRecord]:
        """Every request to the Connections API, as answered."""
        with self.state.lock:
            return list(self.state.connections_log)

    def terminate_connections(self, ids: Iterable[str]) -> dict[str, Any]:
        """Terminate these connections as DELETE /2/connections would (without its auth,
        window or body checks); returns its `data`: successful_kills, failed_kills and
        results."""
        return control.terminate_connections(self.state, ids)

    def wait_connections_requests(self, n: int, timeout: float) -> bool:
        """Block until at least `n` Connections API requests are recorded."""
        with self.state.log_changed:
            return self.state.log_changed.wait_for(
                lambda: len(self.state.connections_log) >= n, timeout
            )

    def wait_active_records(self, n: int, timeout: float) -> bool:
        """Block until exactly `n` connections are active (open streams and zombies)."""
        deadline = time.monotonic() + timeout
        while len(self.state.connections.holders()) != n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def wait_sent(self, n: int, timeout: float) -> bool:
        with self.state.sent_changed:
            return self.state.sent_changed.wait_for(
                lambda: len(self.state.sent.ids) >= n, timeout
            )

    def wait_connections(self, n: int, timeout: float) -> bool:
        """Block until exactly `n` streams are open."""
        deadline = time.monotonic() + timeout
        while self.active_connections() != n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address of `host` (as asyncio's create_server binds
    them; with port 0 they share the port the first one got). OSError when one cannot be
    bound, e.g. EADDRINUSE for a port in use: raised here, not inside the server thread."""
    infos = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
