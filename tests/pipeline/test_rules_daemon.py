"""The daemon's side of rules as code: sync at start-up, on SIGHUP (stream stays up), and on
a 409 "no rules" answer; invalid rules at start-up per rules.on_error."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from rig import DaemonProcess, daemon_config, read_topic

from streamd.dev.broker import LocalBroker
from streamd.simulator import Fault, Simulator, SimulatorConfig

pytestmark = pytest.mark.broker

StartDaemon = Callable[..., DaemonProcess]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(port=0, tweets_per_second=300.0, heartbeat_interval=0.5,
                                   seed=5, rule_propagation_delay=0.0)) as s:
        yield s


def write_rules(path: Path, *rules: tuple[str, str]) -> Path:
    path.write_text("".join(f'[[rule]]\nvalue = "{v}"\ntag = "{t}"\n\n' for v, t in rules))
    return path


def test_sighup_resyncs_rules_while_the_stream_stays_connected(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    run_daemon: StartDaemon,
) -> None:
    sim.add_rules([("dog", "old")])  # the server starts with a rule the config does not have
    rules = write_rules(tmp_path / "rules.toml", ("cat", "cats"))
    d = run_daemon(daemon_config(sim.url, broker.bootstrap, *topics, tmp_path,
                                 rules={"mode": "sync", "file": str(rules)}))
    synced = d.wait_event("rules.synced")[0]
    assert (synced["added"], synced["deleted"]) == (1, 1)
    d.wait_event("stream.connected")
    assert [(r.value, r.tag) for r in sim.rules()] == [("cat", "cats")]
    assert sim.wait_sent(50, timeout=15)
    connects_before = len(sim.connects())

    write_rules(rules, ("coffee", "coffee"))
    d.signal(signal.SIGHUP)
    d.wait_event("rules.synced", lambda e: e.get("trigger") == "sighup")
    assert [(r.value, r.tag) for r in sim.rules()] == [("coffee", "coffee")]
    t_reload = time.time()
    time.sleep(2.0)  # tweets for the new rule arrive on the same connection
    sim.set_rate(0.0)
    time.sleep(0.5)
    assert len(sim.connects()) == connects_before  # one connection throughout
    assert sim.active_connections() == 1
    assert len(d.named("stream.connected")) == 1
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    got = read_topic(broker.bootstrap, topics[0], idle=3.0)
    tags = [orjson.loads(r.headers["ce_ruletags"]) for r in got if "ce_ruletags" in r.headers]
    assert ["coffee"] in tags
    late = [r for r in got if r.timestamp_ms / 1000 > t_reload + 0.5]
    assert late
    assert all(orjson.loads(r.headers["ce_ruletags"]) == ["coffee"] for r in late)


def test_no_rules_answer_triggers_a_sync_then_a_reconnect(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    run_daemon: StartDaemon,
) -> None:
    d = run_daemon(daemon_config(sim.url, broker.bootstrap, *topics, tmp_path, rules={
        "mode": "sync", "rule": [{"value": "cat", "tag": "cats"}]}))
    d.wait_event("stream.connected")
    # Someone deletes the rules behind streamd's back, then the stream drops.
    sim.delete_rules([r.id for r in sim.rules()])
    sim.inject(Fault.close())
    d.wait_event("stream.disconnected", lambda e: e["reason"] == "no_rules")
    d.wait_event("rules.synced", lambda e: e.get("trigger") == "no_rules")
    d.wait_event("stream.connected", count=2)
    assert [(r.value, r.tag) for r in sim.rules()] == [("cat", "cats")]
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


@pytest.mark.parametrize(("on_error", "exit_code"), [("fail", 78), ("continue", 0)])
def test_invalid_rule_at_start_up_follows_on_error(
    on_error: str, exit_code: int, sim: Simulator, broker: LocalBroker,
    topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    sim.add_rules([("dog", "kept")])
    d = run_daemon(daemon_config(sim.url, broker.bootstrap, *topics, tmp_path, rules={
        "mode": "sync", "on_error": on_error,
        "rule": [{"value": "cat", "tag": "ok"}, {"value": "lang:en", "tag": "bad"}]}))
    if exit_code:
        assert d.wait() == exit_code
        fatal = d.named("daemon.fatal")[0]
        assert "lang:en" in fatal["detail"]
    else:
        d.wait_event("stream.connected")
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
    # nothing was changed on the server either way
    assert [(r.value, r.tag) for r in sim.rules()] == [("dog", "kept")]
