"""Connection ownership end to end (README "Connection ownership"): a SIGKILLed daemon's
zombie connection cleaned up at restart, two deployments of one app that never evict each
other, `x.evict = "endpoint"` without ping-pong, a Connections API the tier cannot use, and
the `streamd connections` commands.

Simulator (its Connections API, zombie connections) -> daemon (a real child process) -> a
real Tansu broker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rig import DaemonProcess, daemon_config, read_topic, simulator, wait_until, write_toml

from streamd.dev.broker import LocalBroker
from streamd.simulator import Simulator

pytestmark = pytest.mark.broker

StartDaemon = Callable[..., DaemonProcess]


def config(sim: Simulator, broker: LocalBroker, topics: tuple[str, str], spool: Path,
           **overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cfg = daemon_config(sim.url, broker.bootstrap, *topics, spool, **overrides)
    return cfg


def refused_connects(sim: Simulator, since: int = 0) -> int:
    return sum(1 for c in sim.connects()[since:] if c.status == 429)


def deletes(sim: Simulator) -> list[Any]:
    return [r for r in sim.connections_requests() if r.method == "DELETE"]


def active_ids(sim: Simulator) -> list[str]:
    return [c.id for c in sim.connection_records() if c.active]


# --- acceptance 1: SIGKILL, zombie, restart ------------------------------------------------


def test_a_sigkilled_daemon_restarts_through_its_own_zombie_within_seconds(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    # X keeps a vanished client's slot for a while (here: far longer than the test); the
    # slot limit is 1. Backfill (honoured on this simulated tier) re-sends what was in
    # flight when the process died.
    with simulator(tweets_per_second=100.0, seed=13, zombie_seconds=300.0, connection_limit=1,
                   backfill_tiers=("pro", "enterprise")) as s:
        cfg = config(s, broker, topics, tmp_path, stream={"stall_timeout": 5,
                                                          "backfill_minutes": 1})
        first = run_daemon(cfg)
        own = first.wait_event("connections.own")[0]["id"]
        assert s.wait_sent(300, timeout=20)
        first.proc.send_signal(signal.SIGKILL)
        first.wait()
        killed_with = len(s.sent_tweets())
        # The zombie: still active, still holding the only slot.
        wait_until(lambda: any(c.id == own and c.zombie for c in s.connection_records()), 5,
                   "the killed daemon's connection is a zombie")
        connects_before = len(s.connects())
        started = time.monotonic()
        second = run_daemon(cfg, name="second.toml")
        second.wait_event("stream.connected", timeout=10)
        took = time.monotonic() - started
        assert took < 10, f"streaming again after {took:.1f} s"
        (cleaned,) = second.named("connections.terminated")
        assert cleaned["ids"] == [own]
        assert cleaned["why"] == "own_stale"
        assert refused_connects(s, connects_before) <= 1
        record = next(c for c in s.connection_records() if c.id == own)
        assert not record.active
        assert record.disconnect_reason == "operator_disconnect"
        assert s.wait_sent(killed_with + 100, timeout=15)
        s.set_rate(0.0)
        time.sleep(1.0)
        second.signal(signal.SIGTERM)
        assert second.wait() == 0
        sent_before_kill = [t.id for t in s.sent_tweets()[:killed_with]]
    got = {r.key.decode() for r in read_topic(broker.bootstrap, topics[0], idle=3.0) if r.key}
    lost = [i for i in sent_before_kill if i not in got]
    assert not lost, f"{len(lost)} of {len(sent_before_kill)} tweets sent before the kill lost"


# --- acceptance 2: two deployments, evict = "own" ------------------------------------------


def test_a_second_deployment_names_the_holder_and_never_evicts_it(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    with simulator(tweets_per_second=50.0, seed=14) as s:
        first = run_daemon(config(s, broker, topics, tmp_path / "a"))
        own = first.wait_event("connections.own")[0]["id"]
        second = run_daemon(config(s, broker, topics, tmp_path / "b"), name="b.toml")
        holder = second.wait_event("connections.holder")[0]
        assert holder["id"] == own
        assert holder["own"] is False
        assert holder["client_ip"] == "127.0.0.1"
        assert holder["connected_at"].endswith("Z")
        # It backs off on the too_many_connections ladder (0.3 s doubling here) and keeps
        # naming the holder; it never terminates it.
        second.wait_event("stream.reconnect_scheduled",
                          lambda e: e["reason"] == "too_many_connections" and e["attempt"] >= 4,
                          timeout=15)
        assert not second.named("connections.terminated")
        assert not second.named("stream.connected")
        assert deletes(s) == []
        assert active_ids(s) == [own]
        assert not first.named("stream.disconnected")
        for d in (second, first):
            d.signal(signal.SIGTERM)
            assert d.wait() == 0


# --- acceptance 3: evict = "endpoint", no ping-pong ----------------------------------------


def test_evict_endpoint_takes_the_slot_and_the_evicted_side_never_evicts_back(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    with simulator(tweets_per_second=50.0, seed=15) as s:
        # Both sides are configured to evict: only the no-ping-pong rule keeps the evicted
        # one from taking the slot back. Its retries come fast (0.3 s doubling to 2 s), so
        # it asks many times within the test.
        evicting = {"x": {"evict": "endpoint"}}
        a = run_daemon(config(s, broker, topics, tmp_path / "a", **evicting))
        a_id = a.wait_event("connections.own")[0]["id"]
        b = run_daemon(config(s, broker, topics, tmp_path / "b", **evicting), name="b.toml")
        took = b.wait_event("connections.terminated")[0]
        assert took["ids"] == [a_id]
        assert took["why"] == "evict"
        b.wait_event("stream.connected", timeout=10)
        b_id = b.wait_event("connections.own")[0]["id"]
        ended = a.wait_event("stream.disconnected", lambda e: e["reason"] == "evicted")[0]
        assert "another client" in ended["detail"]
        a.wait_event("connections.evict_skipped", timeout=10)
        a.wait_event("stream.reconnect_scheduled",
                     lambda e: e["reason"] == "too_many_connections" and e["attempt"] >= 4,
                     timeout=20)
        assert next(e["detail"] for e in a.named("connections.evict_skipped")).startswith(
            "another client evicted us")
        assert not a.named("connections.terminated")
        assert len(deletes(s)) == 1
        assert active_ids(s) == [b_id]
        assert len(b.named("stream.connected")) == 1
        for d in (a, b):
            d.signal(signal.SIGTERM)
            assert d.wait() == 0


# --- acceptance 4: the tier has no Connections API -----------------------------------------


def test_without_the_connections_api_too_many_connections_is_waited_out_as_before(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    with simulator(tweets_per_second=50.0, seed=16, zombie_seconds=3.0) as s:
        cfg = config(s, broker, topics, tmp_path)
        first = run_daemon(cfg)
        first.wait_event("connections.own")
        s.configure(connections_api="forbidden")
        first.proc.send_signal(signal.SIGKILL)
        first.wait()
        second = run_daemon(cfg, name="second.toml")
        # Refused while the zombie holds the slot, then in once X lets it go (3 s).
        second.wait_event("stream.connected", timeout=15)
        refusals = [e for e in second.named("stream.disconnected")
                    if e["reason"] == "too_many_connections"]
        assert len(refusals) >= 2
        (unavailable,) = second.named("connections.unavailable")
        assert unavailable["status"] == 403
        assert not second.named("connections.holder")
        assert not second.named("connections.terminated")
        second.signal(signal.SIGTERM)
        assert second.wait() == 0


# --- acceptance 5: the command line ---------------------------------------------------------


def streamd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamd", *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_connections_list_and_terminate_against_the_simulator(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    with simulator(tweets_per_second=20.0, seed=17, zombie_seconds=300.0) as s:
        cfg = config(s, broker, topics, tmp_path)
        path = write_toml(tmp_path / "cli.toml", cfg)
        d = run_daemon(cfg)
        own = d.wait_event("connections.own")[0]["id"]

        listed = streamd("connections", "list", "-c", str(path))
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert lines[0].split()[:3] == ["OWN", "ID", "ENDPOINT"]
        mine = next(line for line in lines if own in line)
        assert mine.startswith("*")
        assert "filtered_stream" in mine
        assert "127.0.0.1" in mine
        assert lines[-1].startswith("1 connection")

        as_json = json.loads(streamd("connections", "list", "--json", "-c", str(path)).stdout)
        assert as_json["own_id"] == own
        assert as_json["own_held_by_a_running_streamd"] is True
        assert [(c["id"], c["own"], c["active"]) for c in as_json["connections"]] == [
            (own, True, True)]

        missing = streamd("connections", "terminate", "--uuid", "no-such-id", "--yes",
                          "-c", str(path))
        assert missing.returncode == 1
        assert "failed     no-such-id" in missing.stdout

        held = streamd("check", "-c", str(path))
        assert f"[ OK ] connections: {own} from 127.0.0.1" in held.stdout, held.stdout
        assert "held by the running daemon" in held.stdout

        d.proc.send_signal(signal.SIGKILL)
        d.wait()
        # The zombie: `check` flags it as stale, with the fix.
        stale = streamd("check", "-c", str(path))
        line = next(x for x in stale.stdout.splitlines() if x.startswith("[WARN] connections"))
        assert f"stale: {own}" in line
        assert "fix: streamd connections terminate --own" in line
        ended = streamd("connections", "terminate", "--own", "--yes", "-c", str(path))
        assert ended.returncode == 0, ended.stdout + ended.stderr
        assert f"terminated {own}" in ended.stdout
        assert ended.stdout.splitlines()[-1] == "1 terminated, 0 failed"

        history = streamd("connections", "list", "--all", "-c", str(path))
        row = next(line for line in history.stdout.splitlines() if own in line)
        assert "operator_disconnect" in row
        nothing = streamd("connections", "terminate", "--endpoint", "filtered_stream", "--yes",
                          "-c", str(path))
        assert nothing.returncode == 0
        assert "nothing done" in nothing.stdout
        bad = streamd("connections", "terminate", "--endpoint", "no_such_stream", "--yes",
                      "-c", str(path))
        assert bad.returncode == 64
