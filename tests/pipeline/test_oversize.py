"""A tweet larger than Kafka takes, in a live stream: it goes to the DLQ (as much of it as
fits, with its original size), every other tweet is published, and Kafka is never reported
unavailable for it. Tansu has no maximum message size (a 60 MB record is accepted), so the
limit here is kafka.max_request_size, which streamd enforces itself (aiokafka's send_batch
does not); a broker's own refusal is covered in test_publisher.py and the unit tests."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from rig import DaemonProcess, daemon_config, metric, read_topic, wait_until

from streamd.dev.broker import LocalBroker
from streamd.simulator import Fault, Simulator, SimulatorConfig

pytestmark = pytest.mark.broker


def test_a_tweet_too_large_for_kafka_is_dead_lettered_without_a_flap(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    run_daemon: Callable[..., DaemonProcess],
) -> None:
    limit = 4096  # simulator tweets are under 1 KB
    big = orjson.dumps({"data": {"id": "1999999999999999999", "text": "z" * 100_000,
                                 "author_id": "42"},
                        "matching_rules": [{"id": "1", "tag": "cats"}]})
    with Simulator(SimulatorConfig(port=0, tweets_per_second=500.0, heartbeat_interval=0.5,
                                   match_all=True, seed=5,
                                   rule_propagation_delay=0.0)) as sim:
        sim.add_rules([("cat", "cats")])
        d = run_daemon(daemon_config(sim.url, broker.bootstrap, *topics, tmp_path,
                                     kafka={"max_request_size": limit}))
        d.wait_event("stream.connected")
        port = d.port
        wait_until(lambda: metric(port, "streamd_kafka_available") == 1, 20, "Kafka available")
        assert sim.wait_sent(200, timeout=20)
        sim.inject(Fault.raw([big]))
        samples = []
        for _ in range(15):  # the record's way through the publisher, and then some
            time.sleep(0.2)
            samples.append(metric(port, "streamd_kafka_available"))
        sim.set_rate(0.0)
        time.sleep(1.0)
        dlq_count = metric(port, "streamd_tweets_dlq_total", reason="oversize")
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
        sent = {t.id for t in sim.sent_tweets()}
    assert samples == [1.0] * len(samples), f"streamd_kafka_available flapped: {samples}"
    assert not d.named("kafka.unavailable")
    assert dlq_count == 1
    [dead] = read_topic(broker.bootstrap, topics[1], expect=1)
    assert dead.headers["streamd_dlq_reason"] == b"oversize"
    assert b"max_request_size" in dead.headers["streamd_dlq_error"]
    assert dead.headers["streamd_dlq_truncated"] == str(len(big)).encode()
    assert big.startswith(dead.value)
    assert limit - 500 < len(dead.value) < limit
    got = read_topic(broker.bootstrap, topics[0], idle=3.0, timeout=60)
    keys = {r.key.decode() for r in got if r.key}
    assert "1999999999999999999" not in keys
    assert keys == sent - {"1999999999999999999"}  # every other tweet published
    assert d.named("daemon.stopped")[0]["spooled"] == 0
