"""Shared test fixtures: a real Tansu broker, fresh topics, daemon child processes."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streamd.dev.broker import LocalBroker
from streamd.dev.harness import DaemonProcess, write_toml

_topic_ids = itertools.count()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with LocalBroker(log_path=log) as b:
        yield b


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker for one test, which may pause, kill or restart it."""
    with LocalBroker(log_path=tmp_path / "tansu.log") as b:
        yield b


@pytest.fixture
def topics_on(own_broker: LocalBroker) -> tuple[str, str]:
    """(topic, dlq_topic) on the test's own broker."""
    own_broker.create_topic("t", partitions=3)
    own_broker.create_topic("t.dlq", partitions=1)
    return "t", "t.dlq"


@pytest.fixture
def topics(broker: LocalBroker) -> tuple[str, str]:
    """A fresh (topic, dlq_topic) pair on the session broker."""
    n = next(_topic_ids)
    topic, dlq = f"tweets-{os.getpid()}-{n}", f"tweets-{os.getpid()}-{n}.dlq"
    broker.create_topic(topic, partitions=3)
    broker.create_topic(dlq, partitions=1)
    return topic, dlq


@pytest.fixture
def run_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    procs: list[DaemonProcess] = []

    def start(config: dict[str, dict[str, Any]], env: dict[str, str] | None = None,
              name: str = "streamd.toml") -> DaemonProcess:
        path = write_toml(tmp_path / name, config)
        proc = DaemonProcess(path, env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()




@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Logging is process-global: a test that points it at a captured stream must not leave
    later tests writing to that (then closed) stream."""
    yield
    from streamd.ops.logs import configure_logging

    configure_logging("info", "json")
