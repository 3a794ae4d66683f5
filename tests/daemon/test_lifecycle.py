"""The daemon's lifecycle in the test's own event loop: `Daemon(settings).run()` against the
simulator (a real socket) and the session's Tansu broker, its log captured from structlog.

The phases show in the log, in order: startup (`http.listening`), the main loop
(`stream.connected`), the stop request (`daemon.stopping`, what SIGTERM logs), and the end of
the shutdown (`daemon.stopped`); a fatal answer goes `daemon.fatal` -> `daemon.stopped`.
"""

from __future__ import annotations

import io
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from rig import daemon_config, read_topic, simulator, write_toml

from streamd.config import load_settings
from streamd.daemon import Daemon
from streamd.dev.broker import LocalBroker
from streamd.ops.health import Phase
from streamd.ops.logs import configure_logging
from streamd.simulator import ConnectFault

pytestmark = pytest.mark.broker


class Captured:
    """The daemon's log lines, as the JSON objects it writes."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        configure_logging("info", "json", self.stream)

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.stream.getvalue().splitlines()]

    def names(self) -> list[str]:
        return [e["event"] for e in self.events()]

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event"] == name]


def make_daemon(config: dict[str, dict[str, Any]], tmp_path: Path) -> Daemon:
    settings = load_settings(write_toml(tmp_path / "streamd.toml", config), environ={})
    return Daemon(settings, environ={})


def run_until(daemon: Daemon, then: Callable[[], Awaitable[None]]) -> int:
    """Run the daemon; beside it, `then()`. Returns the daemon's exit code."""

    async def main() -> int:
        code = -1

        async def run() -> None:
            nonlocal code
            code = await daemon.run()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await then()
        return code

    return anyio.run(main)


async def until(condition: Callable[[], bool]) -> None:
    """Polled: the tweet counts change with every tweet and are not announced on
    state.changes (run_until's deadline bounds the wait)."""
    while True:
        if condition():
            return
        await anyio.sleep(0.02)


def test_start_stream_stop(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
) -> None:
    log = Captured()
    topic, dlq = topics
    with simulator(tweets_per_second=300.0, seed=5) as sim:
        daemon = make_daemon(daemon_config(sim.url, broker.bootstrap, topic, dlq, tmp_path),
                             tmp_path)
        state = daemon.state
        seen: dict[str, Any] = {}

        async def stream_some_then_stop() -> None:
            await until(lambda: state.kafka is not None and state.kafka.stats.published >= 100)
            seen["phase"], seen["ready"] = state.phase, state.readiness()
            seen["status"] = state.status_line()
            daemon.request_stop(signal.SIGTERM)  # what the SIGTERM handler calls
            seen["stopping"] = state.phase

        code = run_until(daemon, stream_some_then_stop)
        sent = {t.id for t in sim.sent_tweets()}

    assert code == 0
    assert seen["phase"] is Phase.RUNNING
    assert seen["ready"] is None
    assert seen["status"].startswith("streaming; received ")
    assert seen["stopping"] is Phase.STOPPING
    assert state.phase is Phase.STOPPED
    names = log.names()
    phases = ["http.listening", "stream.connected", "daemon.stopping", "daemon.stopped"]
    assert [n for n in names if n in phases] == phases
    assert "daemon.fatal" not in names
    assert log.named("daemon.stopping")[0]["signal"] == "SIGTERM"
    stopped = log.named("daemon.stopped")[0]
    assert stopped["exit_code"] == 0
    assert stopped["spooled"] == 0
    assert stopped["published"] == stopped["received"] >= 100
    # Every tweet read is on the topic, and it came from the simulator.
    records = read_topic(broker.bootstrap, topic, expect=stopped["published"])
    keys = {r.key.decode() for r in records if r.key is not None}
    assert len(keys) == stopped["published"]
    assert keys <= sent


def test_a_401_on_connect_is_fatal_and_still_ends_in_order(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
) -> None:
    log = Captured()
    topic, dlq = topics
    with simulator(tweets_per_second=50.0) as sim:
        sim.inject_connect(ConnectFault.unauthorized(), count=5)
        daemon = make_daemon(daemon_config(sim.url, broker.bootstrap, topic, dlq, tmp_path),
                             tmp_path)

        async def nothing() -> None:
            pass

        code = run_until(daemon, nothing)
        connects = len(sim.connects())

    assert code == 77
    assert connects == 1
    assert daemon.state.phase is Phase.STOPPED
    names = log.names()
    order = ["http.listening", "stream.disconnected", "daemon.fatal", "daemon.stopped"]
    assert [n for n in names if n in order] == order
    assert "daemon.stopping" not in names  # no signal: the daemon stopped by itself
    fatal = log.named("daemon.fatal")[0]
    assert (fatal["reason"], fatal["exit_code"]) == ("unauthorized", 77)
    assert log.named("daemon.stopped")[0]["exit_code"] == 77
