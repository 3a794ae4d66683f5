"""The processes a benchmark drives: the simulator, the daemon (streamd.dev.harness's, plus
CPU and timing), RSS/CPU sampling, /metrics."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]

from streamd.dev.broker import LocalBroker
from streamd.dev.harness import DaemonProcess, scrape, toml_text

TOKEN = "test-token"
# Tagged: tweepy's StreamResponse parsing raises KeyError('tag') on untagged matching_rules.
RULE = "bench tweets:bench"

# The stream parameters every client asks for, so all of them read the same 1-4 KB tweets
# (about 1.7 KB on average with these fields, up to ~3 KB).
TWEET_FIELDS = [
    "created_at", "author_id", "lang", "entities", "public_metrics", "conversation_id",
    "context_annotations", "referenced_tweets", "attachments", "possibly_sensitive",
    "reply_settings", "source", "edit_history_tweet_ids",
]
EXPANSIONS = ["author_id", "attachments.media_keys", "referenced_tweets.id",
              "entities.mentions.username"]
USER_FIELDS = ["username", "name", "verified", "description", "public_metrics", "created_at",
               "profile_image_url", "location", "url"]
MEDIA_FIELDS = ["type", "url", "width", "height", "alt_text"]


def stream_params() -> dict[str, str]:
    return {
        "tweet.fields": ",".join(TWEET_FIELDS),
        "expansions": ",".join(EXPANSIONS),
        "user.fields": ",".join(USER_FIELDS),
        "media.fields": ",".join(MEDIA_FIELDS),
    }


def stream_url(base: str) -> str:
    return f"{base}/2/tweets/search/stream"


# --- the simulator -----------------------------------------------------------------------


class SimulatorProc:
    """`python -m streamd.simulator` in its own process (its own GIL), match_all, one rule."""

    def __init__(self, *, rate: float, total: int | None, workdir: Path, name: str) -> None:
        cmd = [
            sys.executable, "-m", "streamd.simulator", "--port", "0",
            "--rate", "inf" if math.isinf(rate) else str(rate),
            "--match-all", "--rule", RULE, "--heartbeat", "5",
        ]
        if total is not None:
            cmd += ["--total", str(total)]
        self._log = open(workdir / f"{name}.simulator.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self.url = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError(f"simulator exited: see {self._log.name}")
            match = re.search(r"listening on (\S+)", line)
            if match:
                self.url = match.group(1)
                break
        if not self.url:
            raise RuntimeError("simulator did not start")

    def configure(self, **settings: Any) -> None:
        resp = httpx.post(f"{self.url}/_simulator/config", json=settings, timeout=10)
        resp.raise_for_status()

    def sent(self) -> int:
        resp = httpx.get(f"{self.url}/_simulator/state", timeout=10)
        return int(resp.json()["sent_tweets"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@contextmanager
def simulator(*, rate: float, total: int | None, workdir: Path,
              name: str) -> Iterator[SimulatorProc]:
    sim = SimulatorProc(rate=rate, total=total, workdir=workdir, name=name)
    try:
        yield sim
    finally:
        sim.stop()


# --- the daemon --------------------------------------------------------------------------


def default_compression() -> str:
    """The daemon's kafka.compression default (what `streamd run` uses unless told)."""
    from streamd.config import Settings

    return str(Settings.model_validate({"x": {"bearer_token": TOKEN}}).kafka.compression)


def daemon_config(api_url: str, bootstrap: str, topic: str, workdir: Path, *,
                  compression: str | None = None) -> str:
    """The production defaults (kafka.compression, linger 5 ms, acks=all, queue 10k),
    pointed at the simulator and Tansu (no idempotence: Tansu's memory store lacks it).
    `compression` overrides the default (A/B runs)."""
    config: dict[str, dict[str, Any]] = {
        "x": {"api_url": api_url, "bearer_token": TOKEN, "tweet_fields": TWEET_FIELDS,
              "expansions": EXPANSIONS, "user_fields": USER_FIELDS,
              "media_fields": MEDIA_FIELDS},
        "rules": {"mode": "off"},
        "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "dlq_topic": f"{topic}.dlq",
                  "enable_idempotence": False, "linger_ms": 5, "acks": "all"},
        "spool": {"dir": str(workdir / f"{topic}.spool")},
        "http": {"listen": "127.0.0.1:0"},
        "log": {"level": "info", "format": "json"},
    }
    if compression is not None:
        config["kafka"]["compression"] = compression
    return toml_text(config)


def topic_keys(bootstrap: str, topic: str, timeout: float = 120.0) -> tuple[int, set[bytes]]:
    """(records, distinct keys) on `topic`, read to its high watermarks by confluent-kafka
    (an independent client): the loss check counts what Kafka holds, not what the daemon
    says it published."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"bench-verify-{time.monotonic_ns()}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
    })
    try:
        meta = consumer.list_topics(topic, timeout=10)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in meta.topics[topic].partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        want = sum(ends.values())
        records = 0
        keys: set[bytes] = set()
        deadline = time.monotonic() + timeout
        while records < want and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.5):
                if msg.error():
                    continue
                records += 1
                keys.add(msg.key())
        return records, keys
    finally:
        consumer.close()


def new_topic(broker: LocalBroker, name: str) -> str:
    broker.create_topic(name, partitions=3)
    broker.create_topic(f"{name}.dlq", partitions=1)
    return name


# Set to a source tree's root to run the daemon from it (see DaemonProc).
DAEMON_TREE_ENV = "STREAMD_BENCH_DAEMON_TREE"


class DaemonProc(DaemonProcess):
    """The daemon (or the exact-latency shim, `module`) as the harness runs it, plus what a
    benchmark measures: CPU time and run-queue wait at `stream.connected`, and when each
    event arrived (`_received_at`, monotonic, in the event itself)."""

    def __init__(self, config_path: Path, *, module: str = "streamd",
                 env: dict[str, str] | None = None) -> None:
        env = dict(env or {})
        # A/B runs: the daemon (only the daemon; the bench, simulator and broker stay this
        # checkout's) from another source tree, e.g. a `git worktree` of an older commit.
        other = env.pop(DAEMON_TREE_ENV, None) or os.environ.get(DAEMON_TREE_ENV)
        if other:
            # The other tree first (its streamd), then this checkout (bench, for the
            # latency shim).
            here = str(Path(__file__).resolve().parent.parent)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (other, here, os.environ.get("PYTHONPATH")) if p)
            # `python -m` puts the working directory first on sys.path, ahead of
            # PYTHONPATH: without this, this checkout's streamd would shadow the other.
            env["PYTHONSAFEPATH"] = "1"
        self.connected_at: float | None = None
        self.cpu_at_connect: float | None = None
        self.system_at_connect = 0.0
        self.wait_at_connect = 0.0
        self._connected = threading.Event()
        self._ps: psutil.Process | None = None
        super().__init__(config_path, env, module=module, stdout=subprocess.DEVNULL)
        self.ps = self._ps = psutil.Process(self.proc.pid)

    def on_event(self, event: dict[str, Any], received_at: float) -> None:
        event["_received_at"] = received_at
        if event.get("event") == "stream.connected" and self.connected_at is None:
            self.connected_at = received_at
            ps = self._ps or psutil.Process(self.proc.pid)
            self.cpu_at_connect = cpu_seconds(ps)
            self.system_at_connect = system_seconds(ps)
            self.wait_at_connect = runqueue_wait_seconds(self.proc.pid)
            self._connected.set()

    def wait_connected(self, timeout: float = 30) -> None:
        if not self._connected.wait(timeout):
            raise RuntimeError(f"daemon did not connect: {self.events[-5:]}")

    def metrics(self) -> dict[str, float]:
        return scrape(self.port)

    def published(self) -> int:
        return int(self.metrics().get("streamd_tweets_published_total", 0))


def cpu_seconds(ps: psutil.Process) -> float:
    times = ps.cpu_times()
    return float(times.user + times.system)


def system_seconds(ps: psutil.Process) -> float:
    """The kernel's share (socket reads and writes: on loopback the receiver's TCP work is
    done in the sender's time)."""
    return float(ps.cpu_times().system)


def runqueue_wait_seconds(pid: int) -> float:
    """Time the process's threads spent runnable but waiting for a CPU (schedstat field 2,
    summed over threads): on a shared machine this is the contention a run suffered."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the kernel's high-water mark of resident memory since the process started."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def rss_mb(ps: psutil.Process) -> float:
    return float(ps.memory_info().rss) / (1 << 20)


def latency_buckets(metrics: dict[str, float]) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs of streamd_publish_latency_seconds."""
    out: list[tuple[float, float]] = []
    for key, value in metrics.items():
        match = re.match(r'streamd_publish_latency_seconds_bucket\{le="([^"]+)"\}', key)
        if match:
            out.append((float(match.group(1)), value))
    return sorted(out)


class RssSampler:
    """RSS of one process every `interval` seconds, in a background thread."""

    def __init__(self, ps: psutil.Process, interval: float = 0.5) -> None:
        self.ps = ps
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (monotonic, MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), rss_mb(self.ps)))
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def between(self, start: float, end: float) -> list[float]:
        return [mb for at, mb in self.samples if start <= at <= end]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"
