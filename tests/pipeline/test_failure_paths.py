"""The failure paths a real X produces: fatal answers on any endpoint, waits on X that never
end, disconnect messages followed by an abrupt end, a usage cap that clears, rules
endpoints in trouble, a restart inside the backfill window, unlisted 4xx on connect.

Simulator (HTTP/1.1, and HTTP/2 over TLS where the transport matters) -> daemon (a real
child process) -> a real Tansu broker."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rig import (
    DaemonProcess,
    NotifySocket,
    daemon_config,
    metric,
    read_topic,
    simulator,
    wait_until,
)

from streamd.dev.broker import LocalBroker
from streamd.simulator import ConnectFault, Fault, RulesFault, Simulator
from streamd.simulator.tls import TestCertificates, make_test_certificates

pytestmark = pytest.mark.broker

StartDaemon = Callable[..., DaemonProcess]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with simulator(tweets_per_second=200.0, seed=7) as s:
        yield s


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
    return response.status_code, response.json()


def config(sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
           **overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return daemon_config(sim.url, broker.bootstrap, *topics, tmp_path, **overrides)


# --- item 4: the usage cap clears once X lets us in again ---------------------------------


def test_usage_cap_clears_when_a_connect_succeeds(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    run_daemon: StartDaemon, notify: NotifySocket,
) -> None:
    sim.inject_connect(ConnectFault.usage_capped(), count=1)
    d = run_daemon(config(sim, broker, topics, tmp_path,
                          backoff={"usage_cap_initial": 1.5, "usage_cap_max": 2.0}),
                   env=notify.env())
    port = d.port
    d.wait_event("stream.disconnected", lambda e: e["reason"] == "usage_cap")
    wait_until(lambda: metric(port, "streamd_usage_capped") == 1, 5, "usage cap reported")
    assert readyz(port) == (503, {"status": "not ready", "reason": "usage_cap"})
    notify.wait_for(lambda m: any(x.startswith("STATUS=usage capped") for x in m), 5,
                    "STATUS= says usage capped")
    d.wait_event("stream.connected", timeout=15)
    assert sim.wait_sent(20, timeout=10)
    wait_until(lambda: readyz(port)[0] == 200, 10, "/readyz back to 200")
    assert metric(port, "streamd_usage_capped") == 0
    notify.wait_for(lambda m: bool(m) and m[-1].startswith("STATUS=streaming"), 5,
                    "STATUS= says streaming")
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


# --- item 12: a 402 (credits exhausted) waits like the usage cap ---------------------------


def test_402_waits_like_the_usage_cap_and_does_not_exit(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    run_daemon: StartDaemon,
) -> None:
    sim.inject_connect(ConnectFault.status(402), count=1)
    d = run_daemon(config(sim, broker, topics, tmp_path,
                          backoff={"usage_cap_initial": 0.5, "usage_cap_max": 1.0}))
    ev = d.wait_event("stream.disconnected")[0]
    assert (ev["reason"], ev["status"]) == ("usage_cap", 402)
    sched = d.wait_event("stream.reconnect_scheduled")[0]
    assert sched["reason"] == "usage_cap"
    d.wait_event("stream.connected", timeout=15)
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


# --- item 11: a restart inside the backfill window is backfilled ---------------------------


def test_a_restart_inside_the_backfill_window_is_backfilled(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    with simulator(tier="enterprise", tweets_per_second=100.0, seed=9) as s:
        cfg = config(s, broker, topics, tmp_path, stream={"stall_timeout": 5,
                                                          "backfill_minutes": 2})
        first = run_daemon(cfg)
        first.wait_event("stream.connected")
        # A first start has no gap to fill: nothing was read before.
        assert "backfill_minutes" not in s.connects()[-1].query
        assert not first.named("stream.gap")
        assert s.wait_sent(100, timeout=15)
        first.signal(signal.SIGTERM)
        assert first.wait() == 0
        stopped = time.time()
        time.sleep(1.5)  # down for a moment: tweets created now are X's to re-send
        second = run_daemon(cfg, name="second.toml")
        second.wait_event("stream.connected")
        query = s.connects()[-1].query
        assert query.get("backfill_minutes") == "1"
        gap = second.wait_event("stream.gap")[0]
        assert gap["covered_by"] == "backfill"
        assert 1.5 <= gap["seconds"] < 60
        assert gap["from"] < gap["to"]
        assert second.named("stream.connected")[0]["backfill_minutes"] == 1
        port = second.port
        assert metric(port, "streamd_gap_seconds_total", covered_by="backfill") >= 1.5
        # X re-sends the last minute: what the first run already published is dropped as a
        # duplicate (the dedup window survives the restart), so each tweet is there once.
        wait_until(lambda: metric(port, "streamd_duplicates_dropped_total") > 0, 10,
                   "backfilled duplicates dropped")
        s.set_rate(0.0)
        time.sleep(1.0)
        second.signal(signal.SIGTERM)
        assert second.wait() == 0
        assert stopped - gap_start_epoch(gap) < 2.0
        sent = [t.id for t in s.sent_tweets()]
    got = read_topic(broker.bootstrap, topics[0], idle=3.0)
    keys = [r.key.decode() for r in got if r.key]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(sent)


def gap_start_epoch(gap: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(gap["from"]).replace("Z", "+00:00")).timestamp()


# --- item 1: 401/403 are fatal wherever they arrive ----------------------------------------


def _fatal_on_rules_get(sim: Simulator, status: int) -> None:
    fault = RulesFault.unauthorized() if status == 401 else RulesFault.forbidden()
    sim.inject_rules_fault(fault, method="GET", count=5)


def _fatal_on_rules_post(sim: Simulator, status: int) -> None:
    sim.delete_rules([r.id for r in sim.rules()])  # the sync must POST to add its rule
    fault = RulesFault.unauthorized() if status == 401 else RulesFault.forbidden()
    sim.inject_rules_fault(fault, method="POST", count=5)


WHERE = {
    "rules-get": _fatal_on_rules_get,
    "rules-post": _fatal_on_rules_post,
}


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("where", sorted(WHERE))
def test_credentials_refused_on_the_rules_endpoints_exit_77(
    where: str, status: int, sim: Simulator, broker: LocalBroker, topics: tuple[str, str],
    tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    WHERE[where](sim, status)
    d = run_daemon(config(sim, broker, topics, tmp_path,
                          rules={"mode": "sync", "rule": [{"value": "cat", "tag": "cats"}]}))
    assert d.wait() == 77
    fatal = d.named("daemon.fatal")
    assert [e["reason"] for e in fatal] == ["unauthorized" if status == 401 else "forbidden"]
    assert d.named("daemon.stopped")[0]["exit_code"] == 77
    assert not sim.connects(), "no stream connect after the credentials were refused"
    output = "\n".join(d.raw_stderr)
    assert "internal error" not in output
    assert "test-token" not in output


@pytest.mark.parametrize("status", [401, 403])
def test_credentials_refused_on_the_409_resync_exit_77(
    status: int, sim: Simulator, broker: LocalBroker, topics: tuple[str, str],
    tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    d = run_daemon(config(sim, broker, topics, tmp_path,
                          rules={"mode": "sync", "rule": [{"value": "cat", "tag": "cats"}]}))
    d.wait_event("stream.connected")
    # X forgets the rules behind our back: the next connect is answered 409 and the
    # re-sync it triggers is refused.
    sim.inject_connect(ConnectFault.no_rules(), count=1)
    fault = RulesFault.unauthorized() if status == 401 else RulesFault.forbidden()
    sim.inject_rules_fault(fault, method="GET", count=5)
    sim.inject(Fault.close())
    assert d.wait() == 77
    assert d.named("stream.disconnected")[-1]["reason"] == "no_rules"
    assert [e["exit_code"] for e in d.named("daemon.fatal")] == [77]
    assert d.named("daemon.stopped")[0]["exit_code"] == 77
    assert "test-token" not in "\n".join(d.raw_stderr)


# --- item 7: the rules endpoints are retried like the stream; SIGTERM ends the wait ---------


def test_rules_endpoint_trouble_at_start_up_is_waited_out(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    run_daemon: StartDaemon, notify: NotifySocket,
) -> None:
    # More failures than the old six tries, of every transient kind.
    sim.inject_rules_fault(RulesFault.server_error(503), method="GET", count=3)
    sim.inject_rules_fault(RulesFault.connection_reset(), method="GET", count=3)
    sim.inject_rules_fault(RulesFault.rate_limited(reset_in=1.0), method="GET", count=1)
    sim.inject_rules_fault(RulesFault.server_error(500), method="GET", count=2)
    d = run_daemon(config(sim, broker, topics, tmp_path,
                          stream={"stall_timeout": 1},
                          rules={"mode": "sync", "rule": [{"value": "cat", "tag": "cats"}]},
                          backoff={"http_initial": 0.2, "http_max": 0.8}),
                   env=notify.env(watchdog_s=1.0))
    d.wait_event("rules.synced", timeout=40)
    pings_while_waiting = len(notify.lines("WATCHDOG=1"))
    d.wait_event("stream.connected")
    retries = d.named("rules.retry_scheduled")
    assert len(retries) == 9
    assert {e["reason"] for e in retries} == {"server_error", "network", "rate_limited"}
    assert len([r for r in sim.rules_requests() if r.method == "GET"]) >= 10
    # Waiting on purpose is still life: the watchdog was fed throughout (pings every 0.5 s
    # over the ~10 s of waits, although no byte came from X for far more than
    # 2 x stall_timeout), and READY=1 came while waiting, so the start did not time out.
    assert pings_while_waiting >= 8
    assert notify.lines("READY=1")
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_sigterm_ends_a_rules_wait_at_once(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    run_daemon: StartDaemon,
) -> None:
    sim.inject_rules_fault(RulesFault.server_error(503), method="GET", count=50)
    d = run_daemon(config(sim, broker, topics, tmp_path,
                          rules={"mode": "sync", "rule": [{"value": "cat", "tag": "cats"}]},
                          backoff={"http_initial": 120.0, "http_max": 600.0}))
    d.wait_event("rules.retry_scheduled")
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    assert time.monotonic() - t0 < 5.0
    assert not sim.connects()


# --- item 3: a disconnect message beats the transport error after it -----------------------


@pytest.mark.parametrize("end", ["reset", "no_final_chunk"])
@pytest.mark.parametrize(
    ("fault", "reason", "disconnect_type"),
    [
        (lambda end: Fault.operational_disconnect("UpstreamUncleanDisconnect", end=end),
         "operational_disconnect", "UpstreamUncleanDisconnect"),
        (lambda end: Fault.usage_capped(end=end), "usage_cap", None),
    ],
    ids=["operational-disconnect", "usage-capped"],
)
def test_a_disconnect_message_names_an_abrupt_end(
    fault: Callable[[str], Fault], reason: str, disconnect_type: str | None, end: str,
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    run_daemon: StartDaemon,
) -> None:
    d = run_daemon(config(sim, broker, topics, tmp_path,
                          backoff={"usage_cap_initial": 0.3, "usage_cap_max": 0.5}))
    d.wait_event("stream.connected")
    assert sim.wait_sent(5, timeout=10)
    sim.inject(fault(end))
    ev = d.wait_event("stream.disconnected", timeout=10)[0]
    assert ev["reason"] == reason, ev
    assert ev.get("disconnect_type") == disconnect_type
    d.wait_event("stream.connected", count=2, timeout=15)
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


# --- item 2 (no wait on X is unbounded), and the stream path over HTTP/2 with TLS, as X
# serves it in production ---------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    return make_test_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=["http1.1", "http2"])
def any_sim(request: pytest.FixtureRequest, certs: TestCertificates) -> Iterator[Simulator]:
    """The simulator over plain HTTP/1.1, or over HTTP/2 with TLS and gzip (X's production
    transport); the daemon trusts the test CA through SSL_CERT_FILE."""
    tls: dict[str, Any] = {}
    if request.param == "http2":
        tls = {"tls_certfile": certs.certfile, "tls_keyfile": certs.keyfile, "http2": True,
               "gzip": True}
    with simulator(tweets_per_second=200.0, seed=7, connection_policy="reject_new",
                   **tls) as s:
        yield s


def test_over_http2_tweets_arrive_gzipped_and_verbatim(
    certs: TestCertificates, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    run_daemon: StartDaemon,
) -> None:
    with simulator(tweets_per_second=500.0, total_tweets=1000, seed=4, gzip=True,
                   tls_certfile=certs.certfile, tls_keyfile=certs.keyfile, http2=True) as s:
        assert s.url.startswith("https://")
        d = run_daemon(config(s, broker, topics, tmp_path),
                       env={"SSL_CERT_FILE": str(certs.ca_pem)})
        d.wait_event("stream.connected")
        assert s.wait_sent(1000, timeout=30)
        sent = {t.id: t.line for t in s.sent_tweets()}
        got = read_topic(broker.bootstrap, topics[0], expect=1000, timeout=60)
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
    assert {r.key.decode(): r.value for r in got if r.key} == sent


def test_a_stalled_stream_never_keeps_the_only_connection_slot(
    any_sim: Simulator, certs: TestCertificates, broker: LocalBroker,
    topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    """After a stall the daemon drops the whole HTTP connection. Over HTTP/2 an abandoned
    stream would otherwise stay open on a pooled connection and keep the app's one slot:
    the reconnect would get 429 TooManyConnections (the simulator, like X, refuses it)."""
    d = run_daemon(config(any_sim, broker, topics, tmp_path, stream={"stall_timeout": 1.5}),
                   env={"SSL_CERT_FILE": str(certs.ca_pem)})
    d.wait_event("stream.connected")
    assert any_sim.wait_sent(5, timeout=10)
    any_sim.inject(Fault.stall(30.0))
    d.wait_event("stream.disconnected", lambda e: e["reason"] == "stall", timeout=10)
    d.wait_event("stream.connected", count=2, timeout=10)
    reasons = [e["reason"] for e in d.named("stream.disconnected")]
    assert reasons == ["stall"], reasons
    assert [c.status for c in any_sim.connects()] == [200, 200]
    assert any_sim.active_connections() == 1
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_a_connect_never_answered_over_either_transport(
    any_sim: Simulator, certs: TestCertificates, broker: LocalBroker,
    topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    any_sim.inject_connect(ConnectFault.hang(), count=1)
    d = run_daemon(config(any_sim, broker, topics, tmp_path, stream={"stall_timeout": 1.5}),
                   env={"SSL_CERT_FILE": str(certs.ca_pem)})
    ev = d.wait_event("stream.disconnected", timeout=10)[0]
    assert ev["reason"] == "stall"
    d.wait_event("stream.connected", timeout=10)
    assert [c.status for c in any_sim.connects()] == [0, 200]
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


@pytest.mark.parametrize("end", ["rst_stream", "reset", "no_final_chunk"])
def test_over_http2_a_disconnect_message_names_the_abrupt_end(
    end: str, certs: TestCertificates, broker: LocalBroker, topics: tuple[str, str],
    tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    with simulator(tweets_per_second=200.0, seed=8, gzip=True,
                   tls_certfile=certs.certfile, tls_keyfile=certs.keyfile, http2=True) as s:
        d = run_daemon(config(s, broker, topics, tmp_path),
                       env={"SSL_CERT_FILE": str(certs.ca_pem)})
        d.wait_event("stream.connected")
        assert s.wait_sent(5, timeout=10)
        s.inject(Fault.operational_disconnect("ForceDisconnect", end=end))
        ev = d.wait_event("stream.disconnected", timeout=10)[0]
        assert (ev["reason"], ev.get("disconnect_type")) == (
            "operational_disconnect", "ForceDisconnect"), ev
        d.wait_event("stream.connected", count=2, timeout=15)
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
