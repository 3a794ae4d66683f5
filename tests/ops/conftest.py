"""Fixtures of the operators' tooling tests: one live /metrics scrape.

`live_metrics` runs a real `streamd run` (simulator -> daemon -> the session's Tansu broker)
once per test session (per xdist worker), until a tweet has been acknowledged, and keeps the
text of its /metrics: the alerts and the dashboard are checked against what the daemon
really exports, and `promtool check metrics` lints it.
"""

from __future__ import annotations

import os

import httpx
import pytest
from rig import DaemonProcess, daemon_config, metric, simulator, wait_until, write_toml

from streamd.dev.broker import LocalBroker


@pytest.fixture(scope="session")
def live_metrics(broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The /metrics text of a running daemon that is connected and has published."""
    tmp = tmp_path_factory.mktemp("live-metrics")
    topic = f"ops-metrics-{os.getpid()}"
    dlq = f"{topic}.dlq"
    broker.create_topic(topic, partitions=1)
    broker.create_topic(dlq, partitions=1)
    with simulator(tweets_per_second=50.0, seed=17) as sim:
        rules = tmp / "rules.toml"
        rules.write_text('[[rule]]\nvalue = "cat"\ntag = "cats"\n')
        # Rules synced (rules_active 1), so that no alert has cause to fire on this scrape.
        config = daemon_config(sim.url, broker.bootstrap, topic, dlq, tmp,
                               rules={"mode": "sync", "file": str(rules)})
        daemon = DaemonProcess(write_toml(tmp / "streamd.toml", config))
        try:
            port = daemon.port
            wait_until(lambda: metric(port, "streamd_tweets_published_total") > 0
                       and metric(port, "streamd_rules_active") > 0, 30,
                       "a published tweet and the rules synced")
            response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            response.raise_for_status()
            return response.text
        finally:
            daemon.terminate()
