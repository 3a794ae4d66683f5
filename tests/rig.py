"""Test rig helpers shared by the pipeline tests. The config file, the daemon child process
and the /metrics scraper are streamd.dev.harness's (the benchmarks and the demo use the same
ones), re-exported here; the rest is for tests only: an independent consumer, a test config,
a stand-in for systemd's notify socket, a simulator for daemon tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamd.dev.harness import DaemonProcess, metric, write_toml
from streamd.simulator import Simulator, SimulatorConfig

__all__ = [
    "DaemonProcess", "NotifySocket", "Record", "daemon_config", "metric", "read_topic",
    "simulator", "wait_until", "write_toml",
]


@dataclass
class Record:
    topic: str
    partition: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    timestamp_ms: int


def read_topic(
    bootstrap: str, topic: str, *, expect: int | None = None, timeout: float = 30.0,
    idle: float = 2.0,
) -> list[Record]:
    """Everything on `topic`, read by confluent-kafka (an independent client) from offset 0.

    Stops at `expect` records, or after `idle` seconds without a new one, or at `timeout`.
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"verify-{time.monotonic_ns()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    try:
        meta = consumer.list_topics(topic, timeout=10)
        partitions = sorted(meta.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: list[Record] = []
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            if expect is not None and len(out) >= expect:
                break
            # "idle" counts from the first record: the first fetch after a broker pause or
            # restart can take a while, and an early exit would read as "nothing there".
            first_wait = 15.0 if not out else idle
            if expect is None and time.monotonic() - last_new > first_wait:
                break
            for msg in consumer.consume(5000, 0.5):
                if msg.error():
                    continue
                last_new = time.monotonic()
                out.append(Record(
                    topic=msg.topic(), partition=msg.partition(), key=msg.key(),
                    value=msg.value(), headers=dict(msg.headers() or []),
                    timestamp_ms=msg.timestamp()[1],
                ))
        return out
    finally:
        consumer.close()


def daemon_config(
    api_url: str, bootstrap: str, topic: str, dlq_topic: str, tmp_path: Path,
    **overrides: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """A config for tests: small delays, the simulator, the broker, no idempotence (Tansu)."""
    config: dict[str, dict[str, Any]] = {
        "x": {"api_url": api_url, "bearer_token": "test-token"},
        "stream": {"stall_timeout": 5},
        "rules": {"mode": "off"},
        "kafka": {
            "bootstrap_servers": bootstrap, "topic": topic, "dlq_topic": dlq_topic,
            "enable_idempotence": False, "request_timeout": 5.0, "ack_timeout": 5.0,
            "startup_timeout": 5.0, "flush_timeout": 10.0,
        },
        "spool": {"dir": str(tmp_path / "spool")},
        "http": {"listen": "127.0.0.1:0"},
        "backoff": {
            "network_step": 0.1, "network_max": 0.5, "http_initial": 0.2, "http_max": 1.0,
            "rate_limit_initial": 0.3, "rate_limit_max": 2.0,
            "usage_cap_initial": 0.4, "usage_cap_max": 2.0, "jitter": 0.0,
        },
        "log": {"level": "info", "format": "json"},
    }
    for section, values in overrides.items():
        config.setdefault(section, {}).update(values)
    return config


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out: {what}")


class NotifySocket:
    """A stand-in for systemd's $NOTIFY_SOCKET: an AF_UNIX datagram socket whose messages
    (READY=1, STATUS=..., WATCHDOG=1) are collected by a thread."""

    def __init__(self, path: Path) -> None:
        import socket

        self.path = path
        self.messages: list[str] = []
        self._cond = threading.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._open = True
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def env(self, watchdog_s: float | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": str(self.path)}
        if watchdog_s is not None:
            env["WATCHDOG_USEC"] = str(int(watchdog_s * 1_000_000))
        return env

    def _collect(self) -> None:
        while self._open:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.extend(data.decode(errors="replace").splitlines())
                self._cond.notify_all()

    def lines(self, prefix: str) -> list[str]:
        with self._cond:
            return [m[len(prefix):] for m in self.messages if m.startswith(prefix)]

    def wait_for(self, pred: Callable[[list[str]], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out: {what}; got {self.messages[-10:]}")
                self._cond.wait(min(left, 0.2))

    def close(self) -> None:
        self._open = False
        self._sock.close()
        self._thread.join(2)


@contextlib.contextmanager
def simulator(*, rules: tuple[tuple[str, str | None], ...] = (("cat", "cats"),),
              **config: Any) -> Iterator[Simulator]:
    """A running simulator for daemon tests: every tweet matches, heartbeats every 0.5 s,
    rules in force at once (X takes about 20 s), `rules` on the server; `config` overrides
    any SimulatorConfig field."""
    settings: dict[str, Any] = {"port": 0, "heartbeat_interval": 0.5, "match_all": True,
                                "rule_propagation_delay": 0.0}
    settings.update(config)
    with Simulator(SimulatorConfig(**settings)) as sim:
        if rules:
            sim.add_rules(list(rules))
        yield sim
