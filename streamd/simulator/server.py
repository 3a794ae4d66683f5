"""Simulator: runs the ASGI app under uvicorn in a background thread with its own event loop,
and exposes thread-safe controls for tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from streamd.simulator import control
from streamd.simulator.app import TRANSPORT_KEY, SimulatorApp
from streamd.simulator.config import SimulatorConfig
from streamd.simulator.faults import ConnectFault, Fault
from streamd.simulator.feed import Feed
from streamd.simulator.records import ConnectRecord, Rule, SentLine, SentTweet
from streamd.simulator.scenario import load_scenario, run_scenario
from streamd.simulator.state import SimulatorState


class _TransportExposingH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, plus the transport in the ASGI scope: the stream needs
    it to reset sockets (RST mid-line) and to see when a slow reader stops taking data."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})[TRANSPORT_KEY] = self.transport
            await inner(scope, receive, send)

        self.app = app


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
        self._thread: threading.Thread | None = None
        self._server: _EmbeddedServer | None = None
        self._error: BaseException | None = None
        self.port: int = 0

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Simulator:
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        uv_config = uvicorn.Config(
            self._app,
            host=self.config.host,
            port=self.config.port,
            log_level="warning",
            lifespan="off",
            http=_TransportExposingH11,
            interface="asgi3",
            server_header=False,
            access_log=False,
            log_config=None,  # leave the host process's logging alone
        )
        self._server = _EmbeddedServer(uv_config)
        self._thread = threading.Thread(target=self._run, name="streamd-simulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"simulator failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("simulator did not start in time")
            time.sleep(0.005)
        sockets = self._server.servers[0].sockets
        self.port = int(sockets[0].getsockname()[1])
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
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
        scenario_task = (
            asyncio.ensure_future(run_scenario(self.state, self._scenario))
            if self._scenario is not None
            else None
        )
        try:
            await self._server.serve()
        finally:
            if scenario_task is not None:
                scenario_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scenario_task

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is None or self._thread is None:
            return
        self.state.stopping = True
        self.state.wake_all()
        # Streams end cleanly at their next step; one blocked on a reader that stopped
        # reading would wait for the slow-reader timeout, so abort it after a grace period.
        deadline = time.monotonic() + 1.0
        while self.active_connections() and time.monotonic() < deadline:
            time.sleep(0.01)
        loop = self.state.loop
        for session in self.state.open_sessions():
            if session.transport is not None and loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(session.transport.abort)
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
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    # --- rules --------------------------------------------------------------------------

    def add_rules(self, items: Iterable[tuple[str, str | None] | str]) -> list[str]:
        pairs = [(item, None) if isinstance(item, str) else item for item in items]
        return control.add_rules(self.state, pairs)

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

    # --- records ------------------------------------------------------------------------

    def sent_tweets(self) -> list[SentTweet]:
        return self.state.sent_tweets()

    def sent_lines(self) -> list[SentLine]:
        with self.state.lock:
            return list(self.state.other_lines)

    def connects(self) -> list[ConnectRecord]:
        with self.state.lock:
            return list(self.state.connect_log)

    def active_connections(self) -> int:
        return len(list(self.state.open_sessions()))

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
