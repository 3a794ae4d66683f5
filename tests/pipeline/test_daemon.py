"""streamd run end to end: simulator -> daemon (a real child process) -> Tansu -> consumer."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from rig import DaemonProcess, daemon_config, metric, read_topic, simulator

from streamd.dev.broker import LocalBroker, free_port
from streamd.simulator import ConnectFault, Fault, Simulator, SimulatorConfig

pytestmark = pytest.mark.broker

StartDaemon = Callable[..., DaemonProcess]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with simulator(tweets_per_second=200.0, seed=3) as s:
        yield s


def test_10k_tweets_reach_the_topic_byte_identical(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    run_daemon: StartDaemon,
) -> None:
    topic, dlq = topics
    sim.set_rate(5000.0)
    sim.set_total(10_000)
    d = run_daemon(daemon_config(sim.url, broker.bootstrap, topic, dlq, tmp_path))
    assert sim.wait_sent(10_000, timeout=60)
    got = read_topic(broker.bootstrap, topic, expect=10_000, timeout=60)
    sent = {t.id: t.line for t in sim.sent_tweets()}
    assert len(sent) == 10_000
    assert len(got) == 10_000
    for rec in got:
        tweet_id = rec.key.decode() if rec.key else ""
        assert rec.value == sent[tweet_id]  # byte-identical, never re-serialized
        payload = orjson.loads(rec.value)
        h = rec.headers
        assert h["ce_specversion"] == b"1.0"
        assert h["ce_id"] == tweet_id.encode()
        assert h["ce_type"] == b"com.x.tweet"
        assert h["ce_source"] == b"https://api.x.com/2/tweets/search/stream"
        assert h["content-type"] == b"application/json"
        assert h["ce_time"] == payload["data"]["created_at"].encode()
        if "author_id" in payload["data"]:
            assert h["ce_subject"] == payload["data"]["author_id"].encode()
        assert h["ce_ruleids"] == ",".join(r["id"] for r in payload["matching_rules"]).encode()
        assert orjson.loads(h["ce_ruletags"]) == [r["tag"] for r in payload["matching_rules"]
                                                  if r.get("tag")]
    assert {r.key for r in got} == {k.encode() for k in sent}
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    stopped = d.wait_event("daemon.stopped")[0]
    assert stopped["exit_code"] == 0
    assert stopped["published"] == 10_000


def _connects_after(sim: Simulator, t0: float) -> list[Any]:
    return [c for c in sim.connects() if c.at >= t0]


# reason -> (how to provoke it, minimal delay before the next connect, config overrides)
ReasonCase = tuple[str, Callable[[Simulator], None], float]

CASES: list[ReasonCase] = [
    ("operational_disconnect",
     lambda s: s.inject(Fault.operational_disconnect("UpstreamOperationalDisconnect")), 0.0),
    ("network", lambda s: s.inject(Fault.reset_mid_line()), 0.0),
    ("stall", lambda s: s.inject(Fault.stall(seconds=4.0)), 0.0),
    ("server_error",
     lambda s: (s.inject_connect(ConnectFault.over_capacity(), count=1), s.inject(Fault.close())),
     0.2),
    ("rate_limited",
     lambda s: (s.inject_connect(ConnectFault.rate_limited(reset_in=1.0), count=1),
                s.inject(Fault.close())),
     0.3),
    ("too_many_connections",
     lambda s: (s.inject_connect(ConnectFault.too_many_connections(), count=1),
                s.inject(Fault.close())),
     0.3),
    ("usage_cap",
     lambda s: (s.inject_connect(ConnectFault.usage_capped(), count=1), s.inject(Fault.close())),
     0.4),
]


@pytest.mark.parametrize(("reason", "provoke", "min_delay"), CASES, ids=[c[0] for c in CASES])
def test_each_reason_is_classified_and_backs_off(
    reason: str, provoke: Callable[[Simulator], None], min_delay: float,
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    run_daemon: StartDaemon,
) -> None:
    topic, dlq = topics
    d = run_daemon(daemon_config(sim.url, broker.bootstrap, topic, dlq, tmp_path,
                                 stream={"stall_timeout": 1.5}))
    d.wait_event("stream.connected")
    assert sim.wait_sent(5, timeout=10)
    t0 = time.time()
    provoke(sim)
    ev = d.wait_event("stream.disconnected", lambda e: e["reason"] == reason, timeout=15)[0]
    # the delay scheduled for this reason, witnessed by the simulator's connect log
    sched = d.wait_event("stream.reconnect_scheduled", lambda e: e["reason"] == reason)[0]
    assert sched["delay_s"] >= min_delay
    d.wait_event("stream.connected", count=2, timeout=20)
    connects = _connects_after(sim, t0)
    assert connects[-1].status == 200
    if len(connects) >= 2:  # the refused connect, then the one after the backoff
        gap = connects[-1].at - connects[-2].at
        assert gap >= min_delay * 0.9, (gap, min_delay)
    port = d.port
    assert metric(port, "streamd_stream_disconnects_total", reason=reason) >= 1
    if ev.get("status") is not None and reason in ("server_error", "rate_limited"):
        assert ev["status"] in (503, 429)
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


@pytest.mark.parametrize(
    ("fault", "reason", "exit_code"),
    [
        (ConnectFault.unauthorized(), "unauthorized", 77),
        (ConnectFault.client_forbidden(), "forbidden", 77),
        (ConnectFault.unsupported_authentication(), "forbidden", 77),
        (ConnectFault.invalid_request(), "invalid_request", 78),
    ],
    ids=["401", "403-client-forbidden", "403-unsupported-auth", "400"],
)
def test_fatal_answers_exit_after_a_single_connect(
    fault: ConnectFault, reason: str, exit_code: int, sim: Simulator, broker: LocalBroker,
    topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    topic, dlq = topics
    t0 = time.time()
    sim.inject_connect(fault, count=5)
    d = run_daemon(daemon_config(sim.url, broker.bootstrap, topic, dlq, tmp_path))
    assert d.wait() == exit_code
    assert len(_connects_after(sim, t0)) == 1
    assert d.named("stream.disconnected")[0]["reason"] == reason
    assert d.named("daemon.stopped")[0]["exit_code"] == exit_code
    assert "test-token" not in "\n".join(d.raw_stderr)


def test_no_rules_without_configured_rules_exits_78(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    topic, dlq = topics
    with Simulator(SimulatorConfig(port=0, heartbeat_interval=0.5)) as empty:
        d = run_daemon(daemon_config(empty.url, broker.bootstrap, topic, dlq, tmp_path))
        assert d.wait() == 78
        assert d.named("stream.disconnected")[0]["reason"] == "no_rules"
        assert len(empty.connects()) == 1


def test_bad_lines_go_to_the_dlq_and_no_tweet_is_lost(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    run_daemon: StartDaemon,
) -> None:
    topic, dlq = topics
    d = run_daemon(daemon_config(sim.url, broker.bootstrap, topic, dlq, tmp_path))
    d.wait_event("stream.connected")
    for fault in (Fault.malformed(count=3), Fault.truncated(count=2), Fault.unknown_message(),
                  Fault.unknown_fields(), Fault.partial_errors(), Fault.split_line()):
        sim.inject(fault)
        time.sleep(0.1)
    sim.inject(Fault.reset_mid_line())  # a line cut by the connection's end: DLQ too
    d.wait_event("stream.connected", count=2)
    time.sleep(0.5)
    sim.set_rate(0.0)
    time.sleep(1.0)
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    sent = {t.id: t.line for t in sim.sent_tweets()}
    got = read_topic(broker.bootstrap, topic, expect=len(sent))
    assert {r.key.decode() for r in got if r.key} == set(sent)
    dlq_got = read_topic(broker.bootstrap, dlq, expect=1)
    reasons = [r.headers["streamd_dlq_reason"] for r in dlq_got]
    assert reasons.count(b"decode") >= 3 + 2
    assert reasons.count(b"validate") >= 1  # the unknown message type
    bad = {line.line for line in sim.sent_lines() if line.kind in ("malformed", "truncated")}
    assert bad <= {r.value for r in dlq_got}


def test_sigterm_during_a_busy_stream_flushes_everything_read(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    run_daemon: StartDaemon,
) -> None:
    topic, dlq = topics
    sim.set_rate(20_000.0)
    d = run_daemon(daemon_config(sim.url, broker.bootstrap, topic, dlq, tmp_path))
    d.wait_event("stream.connected")
    assert sim.wait_sent(20_000, timeout=30)
    d.signal(signal.SIGTERM)  # while tweets are still arriving
    assert d.wait() == 0
    stopped = d.named("daemon.stopped")[0]
    assert stopped["exit_code"] == 0
    # Everything the daemon read (less duplicates) was acknowledged before it exited ...
    assert stopped["received"] > 5_000
    assert stopped["published"] == stopped["received"] - stopped["duplicates"]
    assert stopped["spooled"] == 0
    # ... and is on the topic, each read tweet once.
    got = read_topic(broker.bootstrap, topic, expect=stopped["published"], timeout=60)
    assert len(got) == len({r.key for r in got}) == stopped["published"]
    sent = {t.id for t in sim.sent_tweets()}
    assert {r.key.decode() for r in got if r.key} <= sent


def test_readyz_on_an_idle_stream_and_when_kafka_is_unreachable(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    run_daemon: StartDaemon,
) -> None:
    sim.set_rate(0.0)  # rules that match nothing: only heartbeats
    d = run_daemon(daemon_config(sim.url, broker.bootstrap, *topics, tmp_path))
    d.wait_event("stream.connected")
    port = d.port
    deadline = time.monotonic() + 10
    while httpx.get(f"http://127.0.0.1:{port}/readyz").status_code != 200:
        assert time.monotonic() < deadline, httpx.get(f"http://127.0.0.1:{port}/readyz").text
        time.sleep(0.1)
    assert httpx.get(f"http://127.0.0.1:{port}/livez").status_code == 200
    d.signal(signal.SIGTERM)
    assert d.wait() == 0

    nobody = free_port()  # nothing listens there
    d2 = run_daemon(daemon_config(sim.url, f"127.0.0.1:{nobody}", *topics, tmp_path),
                    name="unreachable.toml")
    d2.wait_event("stream.connected")  # the stream does not wait for Kafka
    answer = httpx.get(f"http://127.0.0.1:{d2.port}/readyz")
    assert answer.status_code == 503
    assert answer.json()["reason"] == "kafka_unavailable"
    d2.signal(signal.SIGTERM)
    assert d2.wait() == 0


def test_a_second_daemon_on_the_same_spool_exits_78_and_leaves_the_first_alone(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    run_daemon: StartDaemon,
) -> None:
    topic, dlq = topics
    config = daemon_config(sim.url, broker.bootstrap, topic, dlq, tmp_path)
    first = run_daemon(config)
    first.wait_event("stream.connected")
    connects = len(sim.connects())
    second = run_daemon(config)
    assert second.wait() == 78
    err = "\n".join(second.raw_stderr)
    assert "spool.dir" in err
    assert f"in use by another streamd process (pid {first.proc.pid})" in err
    assert len(sim.connects()) == connects  # the second never reached X
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
