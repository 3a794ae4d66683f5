"""The metrics tell the truth: each count equals what happened, with the real daemon, the
simulator and the broker. streamd_stream_lines_total counts every kind it declares, and
tweets published from the spool count in streamd_tweets_published_by_rule_total as
those published at once do."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from rig import DaemonProcess, daemon_config, simulator, wait_until

from streamd.dev.broker import LocalBroker, free_port
from streamd.dev.harness import metric_key, scrape
from streamd.ops.metrics import STREAM_LINE_KINDS
from streamd.simulator import Fault

pytestmark = pytest.mark.broker

StartDaemon = Callable[..., DaemonProcess]

LINES = "streamd_stream_lines_total"
NOT_JSON = b"this is not JSON"
NO_CANONICAL_ID = b'{"data":{"id":"01","text":"a leading zero"}}'
ERROR_ONLY = (b'{"errors":[{"title":"Not Found Error","detail":"gone","type":'
              b'"https://api.twitter.com/2/problems/resource-not-found"}]}')


def lines(values: dict[str, float], kind: str) -> float:
    return values.get(metric_key(LINES, kind=kind), -1.0)


def test_stream_lines_total_counts_every_kind_it_declares(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    with simulator(tweets_per_second=100.0, heartbeat_interval=0.2) as sim:
        d = run_daemon(daemon_config(sim.url, broker.bootstrap, *topics, tmp_path))
        port = d.port
        d.wait_event("stream.connected")
        sim.inject(Fault.raw((NOT_JSON, NO_CANONICAL_ID, ERROR_ONLY)))
        assert sim.wait_sent(50, timeout=20)
        sim.set_rate(0.0)  # from here on only heartbeats: the counts can settle

        def settled() -> bool:
            values = scrape(port)
            return (lines(values, "tweet") == len(sim.sent_tweets())
                    and lines(values, "invalid") == 2 and lines(values, "error") == 1
                    and lines(values, "keepalive") > 0)

        wait_until(settled, 20, "every line counted")
        values = scrape(port)
        d.signal()
        assert d.wait() == 0
    counted = {kind: lines(values, kind) for kind in STREAM_LINE_KINDS}
    assert set(counted) == {"tweet", "keepalive", "invalid", "error"}
    # Each kind agrees with the counter that counts it on its own (a keepalive may arrive
    # between the two reads of one scrape: none does, one scrape is one moment).
    assert counted["tweet"] == values["streamd_tweets_received_total"] >= 50
    assert counted["keepalive"] == values["streamd_keepalives_total"] > 0
    dead_letters = sum(values[metric_key("streamd_tweets_dlq_total", reason=r)]
                       for r in ("decode", "validate", "oversize"))
    assert counted["invalid"] == dead_letters == 2
    assert counted["error"] == 1
    assert d.named("stream.error_message")[0]["title"] == "Not Found Error"


@pytest.mark.parametrize("restart", [False, True], ids=["same-run", "next-run"])
def test_tweets_published_from_the_spool_count_by_rule(
    tmp_path: Path, run_daemon: StartDaemon, restart: bool,
) -> None:
    """Kafka is down at start: every tweet is spooled, then drained once the broker comes
    up, by the same daemon or by the next one (the spool keeps each tweet's rule tags).
    Each matches the one configured rule, so by rule == published == sent."""
    port = free_port()
    total = 200
    with simulator(tweets_per_second=400.0, total_tweets=total) as sim:
        config = daemon_config(sim.url, f"127.0.0.1:{port}", "t", "t.dlq", tmp_path)
        config["rules"] = {"mode": "sync", "rule": [{"value": "cat", "tag": "cats"}]}
        d = run_daemon(config)
        ops = d.port
        assert sim.wait_sent(total, timeout=30)
        wait_until(lambda: scrape(ops)["streamd_spool_messages"] == total, 20,
                   "every tweet spooled")
        assert scrape(ops)["streamd_tweets_published_total"] == 0
        if restart:
            d.signal()
            assert d.wait() == 0
            assert d.wait_event("daemon.stopped")[0]["spooled"] == total
        with LocalBroker(port=port, log_path=tmp_path / "tansu.log") as late:
            late.create_topic("t", partitions=3)
            late.create_topic("t.dlq", partitions=1)
            if restart:
                d = run_daemon(config)
                ops = d.port
            wait_until(lambda: scrape(ops)["streamd_tweets_published_total"] == total, 60,
                       "the spool drained")
            values = scrape(ops)
            d.signal()
            assert d.wait() == 0
    assert values["streamd_spool_messages"] == 0
    by_rule = {key: value for key, value in values.items()
               if key.startswith("streamd_tweets_published_by_rule_total{")}
    assert by_rule == {
        metric_key("streamd_tweets_published_by_rule_total", rule_tag="cats"): total,
        metric_key("streamd_tweets_published_by_rule_total", rule_tag="other"): 0,
    }
