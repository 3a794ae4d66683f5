"""SIGTERM while Kafka does not answer: one bounded shutdown, and nothing held in memory is
dropped (in flight, waiting for the spool, still in the queue), even past spool.max_bytes.

What the first daemon read is known exactly: over one connection, the tweets it received are
the first `received` tweets the simulator sent, in order (a line cut off by the stop goes to
the DLQ and is not counted). Tweets the simulator wrote after the daemon closed the stream
were never read (X's own semantics: backfill covers them), so they are not counted.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rig import DaemonProcess, daemon_config, metric, read_topic, simulator, wait_until

from streamd.dev.broker import LocalBroker
from streamd.simulator import Simulator

pytestmark = pytest.mark.broker

StartDaemon = Callable[..., DaemonProcess]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with simulator(tweets_per_second=2000.0, seed=23) as s:
        yield s


def waits_on_kafka(seconds: float) -> dict[str, float]:
    """Every wait on Kafka at most `seconds`: a request, an ack, the producer's start."""
    return dict.fromkeys(("request_timeout", "ack_timeout", "startup_timeout"), seconds)


def config_for(sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
               *, kafka: dict[str, Any], spool: dict[str, Any] | None = None,
               ) -> dict[str, dict[str, Any]]:
    return daemon_config(sim.url, broker.bootstrap, *topics, tmp_path, kafka=kafka,
                         **({"spool": spool} if spool else {}))


def publish_what_was_left(
    run_daemon: StartDaemon, config: dict[str, dict[str, Any]], broker: LocalBroker,
) -> dict[str, Any]:
    """A second daemon (broker back, simulator silent) publishes the spool; returns the
    `spool.found` event."""
    d2 = run_daemon(config, name="again.toml")
    found = d2.wait_event("spool.found", timeout=30)[0]
    wait_until(lambda: metric(d2.port, "streamd_spool_messages") == 0, 90, "spool drained")
    d2.signal(signal.SIGTERM)
    assert d2.wait(30) == 0
    return found


def assert_every_read_tweet_is_on_the_topic(
    sim: Simulator, broker: LocalBroker, topic: str, received: int,
) -> None:
    read = [t.id for t in sim.sent_tweets()[:received]]
    assert len(read) == received
    got = read_topic(broker.bootstrap, topic, idle=3.0, timeout=120)
    on_topic = {r.key.decode() for r in got if r.key}
    missing = [i for i in read if i not in on_topic]
    assert not missing, f"{len(missing)} of {received} tweets read were lost"
    # Nothing else: the topic holds exactly the tweets read (duplicates aside).
    assert on_topic == set(read)


def test_sigterm_with_the_broker_stalled_exits_within_the_flush_budget_and_keeps_all(
    sim: Simulator, own_broker: LocalBroker, topics_on: tuple[str, str], tmp_path: Path,
    run_daemon: StartDaemon,
) -> None:
    """Item 6: from SIGTERM to exit takes at most kafka.flush_timeout + 2 s, with batches in
    flight to a broker that keeps its sockets open and never answers (SIGSTOP), the live
    path spooling, and tweets still arriving; and every tweet read is kept."""
    flush_timeout = 3.0
    # Kafka's waits longer than the whole budget: none may run to its own end.
    config = config_for(sim, own_broker, topics_on, tmp_path,
                        kafka={**waits_on_kafka(10.0), "flush_timeout": flush_timeout})
    d = run_daemon(config)
    d.wait_event("stream.connected")
    assert sim.wait_sent(3000, timeout=20)
    own_broker.pause()
    try:
        time.sleep(1.0)  # batches out, no answers; tweets keep streaming in
        started = time.monotonic()
        d.signal(signal.SIGTERM)
        code = d.wait(60)
        took = time.monotonic() - started
    finally:
        own_broker.resume()
    assert code == 0
    assert not d.named("daemon.lost")
    stopped = d.named("daemon.stopped")[0]
    assert took <= flush_timeout + 2.0, f"SIGTERM to exit took {took:.2f} s"
    assert len(sim.connects()) == 1  # one connection: what was read is a prefix of what was sent
    assert stopped["spooled"] > 0  # Kafka took nothing during the stall: it was all kept
    sim.set_rate(0.0)
    publish_what_was_left(run_daemon, config, own_broker)
    assert_every_read_tweet_is_on_the_topic(sim, own_broker, topics_on[0], stopped["received"])


def test_sigterm_while_the_producer_starts_against_a_stalled_broker_is_bounded_too(
    sim: Simulator, own_broker: LocalBroker, topics_on: tuple[str, str], tmp_path: Path,
    run_daemon: StartDaemon,
) -> None:
    """Item 6: the broker stalls before the daemon starts, so the producer's start (and the
    drain's, behind it) hangs for startup_timeout; SIGTERM still exits within
    flush_timeout + 2 s, and the tweets read meanwhile are all kept."""
    flush_timeout = 3.0
    config = config_for(sim, own_broker, topics_on, tmp_path,
                        kafka={**waits_on_kafka(20.0), "flush_timeout": flush_timeout})
    own_broker.pause()
    try:
        d = run_daemon(config)
        d.wait_event("stream.connected")
        wait_until(lambda: metric(d.port, "streamd_tweets_received_total") >= 2000, 20,
                   "tweets read")
        started = time.monotonic()
        d.signal(signal.SIGTERM)
        code = d.wait(60)
        took = time.monotonic() - started
    finally:
        own_broker.resume()
    assert code == 0
    stopped = d.named("daemon.stopped")[0]
    assert took <= flush_timeout + 2.0, f"SIGTERM to exit took {took:.2f} s"
    assert stopped["published"] == 0
    assert stopped["spooled"] == stopped["received"]
    assert len(sim.connects()) == 1
    sim.set_rate(0.0)
    publish_what_was_left(run_daemon, config, own_broker)
    assert_every_read_tweet_is_on_the_topic(sim, own_broker, topics_on[0], stopped["received"])


def test_sigterm_with_the_spool_full_keeps_every_record_held_in_memory(
    sim: Simulator, own_broker: LocalBroker, topics_on: tuple[str, str], tmp_path: Path,
    run_daemon: StartDaemon,
) -> None:
    """Item 5: the spool is at max_bytes, records wait in memory (refused by the spool, in
    flight, in the queue). SIGTERM writes them all to the spool, past max_bytes, exit 0."""
    max_bytes = 1_000_000
    config = config_for(sim, own_broker, topics_on, tmp_path,
                        kafka={**waits_on_kafka(2.0), "flush_timeout": 3.0},
                        spool={"max_bytes": max_bytes, "batch_interval": 0.1})
    d = run_daemon(config)
    d.wait_event("stream.connected")
    own_broker.pause()
    try:
        d.wait_event("spool.full", timeout=30)
        d.wait_event("stream.paused", timeout=30)  # the reader is off X: spool full
        time.sleep(0.5)
        d.signal(signal.SIGTERM)
        code = d.wait(60)
    finally:
        own_broker.resume()
    assert code == 0
    assert not d.named("daemon.lost")
    stopped = d.named("daemon.stopped")[0]
    assert len(sim.connects()) == 1
    sim.set_rate(0.0)
    found = publish_what_was_left(run_daemon, config, own_broker)
    assert found["spooled"] == stopped["spooled"]
    # What the spool refused while running was written at shutdown: past max_bytes.
    assert found["bytes"] > max_bytes
    assert_every_read_tweet_is_on_the_topic(sim, own_broker, topics_on[0], stopped["received"])


# Loaded by the daemon child through PYTHONPATH: SIGUSR1 makes its disk "full" from then on
# (no spool file may grow: RLIMIT_FSIZE at their current size; writes past it fail with
# EFBIG instead of killing the process), which is what a full disk does to SQLite.
_DISK_FULL_SITE = textwrap.dedent("""
    import os, resource, signal

    def _disk_full(signum, frame):
        spool = os.environ["STREAMD_TEST_SPOOL_DIR"]
        largest = max(os.path.getsize(os.path.join(spool, n)) for n in os.listdir(spool))
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (largest, hard))

    if os.environ.get("STREAMD_TEST_SPOOL_DIR"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, _disk_full)
""")


def test_sigterm_when_the_disk_refuses_exits_70_and_counts_the_lost(
    sim: Simulator, own_broker: LocalBroker, topics_on: tuple[str, str], tmp_path: Path,
    run_daemon: StartDaemon,
) -> None:
    """Item 5: only a disk that refuses the final write loses records; then the daemon logs
    daemon.lost with the exact count and the error, and exits 70 (exit 0 means everything
    was flushed or spooled). Exact: after a restart, the tweets read and not on the topic
    are exactly `count`."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_DISK_FULL_SITE)
    config = config_for(sim, own_broker, topics_on, tmp_path,
                        kafka={**waits_on_kafka(2.0), "flush_timeout": 3.0},
                        spool={"max_bytes": 1_000_000, "batch_interval": 0.1})
    pythonpath = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    d = run_daemon(config, env={"PYTHONPATH": pythonpath,
                                "STREAMD_TEST_SPOOL_DIR": str(tmp_path / "spool")})
    d.wait_event("stream.connected")
    own_broker.pause()
    try:
        d.wait_event("spool.full", timeout=30)
        d.wait_event("stream.paused", timeout=30)  # records wait in memory
        d.signal(signal.SIGUSR1)  # the disk is full from now on
        time.sleep(0.5)
        d.signal(signal.SIGTERM)
        code = d.wait(60)
    finally:
        own_broker.resume()
    lost = d.wait_event("daemon.lost", timeout=1)[0]
    assert code == 70
    assert lost["count"] > 0
    assert lost["error"]
    stopped = d.named("daemon.stopped")[0]
    assert stopped["exit_code"] == 70
    assert len(sim.connects()) == 1
    sim.set_rate(0.0)
    publish_what_was_left(run_daemon, config, own_broker)
    read = [t.id for t in sim.sent_tweets()[:stopped["received"]]]
    got = read_topic(own_broker.bootstrap, topics_on[0], idle=3.0, timeout=120)
    on_topic = {r.key.decode() for r in got if r.key}
    missing = [i for i in read if i not in on_topic]
    assert len(missing) == lost["count"]  # every tweet read is on the topic or counted lost
