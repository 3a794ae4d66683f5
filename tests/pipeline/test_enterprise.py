"""Enterprise streams end to end (README "Enterprise streams"): two redundant connections,
a restart covered by backfill, a 3-hour gap filled by a recovery job that survives a kill,
a partitioned firehose read by four daemons, a tier without recovery. Every count exact.

Simulator (its timeline of every tweet created, connected or not) -> daemons (child
processes) -> a real Tansu broker.

Compressed time: a test claims that a gap of S seconds has passed on both sides. The
simulator back-dates S seconds of tweets into its timeline (created while nobody was
reading: no connection receives them), and the stopped daemon's spool is told its last read
was S seconds ago (the value it persists once a second). Both then agree on the gap, as
they would after a real outage."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rig import DaemonProcess, daemon_config, read_topic, simulator, wait_until

from streamd.dev.broker import LocalBroker
from streamd.simulator import Simulator

pytestmark = pytest.mark.broker

StartDaemon = Callable[..., DaemonProcess]


def config(sim: Simulator, broker: LocalBroker, topics: tuple[str, str], spool: Path,
           **overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return daemon_config(sim.url, broker.bootstrap, *topics, spool, **overrides)


def run_then_go_down(sim: Simulator, run_daemon: StartDaemon, cfg: dict[str, dict[str, Any]],
                     spool: Path, seconds: float, *, read: int = 0) -> float:
    """A first run that connects (and reads `read` tweets), stops, and is then down for
    `seconds` (compressed on both sides). Returns when the gap began."""
    first = run_daemon(cfg)
    first.wait_event("stream.connected")
    if read:
        assert sim.wait_sent(read, timeout=15)
    stop(first)
    down_from = claim_down_since(spool, seconds)
    sim.backdate(seconds)  # the tweets of those seconds, read by nobody
    return down_from


def claim_down_since(spool_dir: Path, seconds_ago: float) -> float:
    """Tell a stopped daemon's spool that its last read was `seconds_ago` ago."""
    when = time.time() - seconds_ago
    with sqlite3.connect(spool_dir / "spool.sqlite3") as db:
        db.execute("INSERT INTO meta (name, value) VALUES ('last_read_at', ?) ON CONFLICT "
                   "(name) DO UPDATE SET value = excluded.value", (repr(when),))
    return when


def gaps_in(spool_dir: Path) -> list[tuple[float, str, str]]:
    """(seconds, covered_by, detail) of every gap the daemon recorded."""
    with sqlite3.connect(spool_dir / "spool.sqlite3") as db:
        rows = db.execute("SELECT end - start, covered_by, detail FROM gaps ORDER BY id")
        return [(float(s), str(c), str(d)) for s, c, d in rows]


def keys_on(broker: LocalBroker, topic: str) -> Counter[str]:
    return Counter(r.key.decode() for r in read_topic(broker.bootstrap, topic, idle=3.0) if r.key)


def assert_once_on_topic(broker: LocalBroker, topic: str, ids: list[str], what: str) -> None:
    on_topic = keys_on(broker, topic)
    missing = [i for i in ids if i not in on_topic]
    assert not missing, f"{len(missing)} of {len(ids)} tweets {what} missing"
    assert [k for k, n in on_topic.items() if n > 1] == []


def stop(*daemons: DaemonProcess) -> None:
    for d in daemons:
        d.signal(signal.SIGTERM)
    for d in daemons:
        assert d.wait() == 0


# --- acceptance 1: two redundant connections, one killed again and again --------------------


def test_two_connections_lose_nothing_while_one_is_killed_again_and_again(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    with simulator(tier="enterprise", tweets_per_second=100.0, seed=21) as s:
        spool = tmp_path / "spool"
        d = run_daemon(config(s, broker, topics, tmp_path, stream={
            "stall_timeout": 5, "connections": 2}))
        d.wait_event("stream.connected", count=2)
        started = s.now()
        kills = 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            time.sleep(1.5)
            live = [c for c in s.connection_records() if c.active]
            if len(live) == 2:
                s.reset_connection(live[kills % 2].id)  # its socket, reset: a network end
                kills += 1
        s.set_rate(0.0)
        time.sleep(1.0)
        timeline = [t.id for t in s.timeline(started, s.now() + 1)]
        stop(d)
    assert kills >= 6
    disconnects = d.named("stream.disconnected")
    assert {e["connection"] for e in disconnects} == {"live-1", "live-2"}
    on_topic = keys_on(broker, topics[0])
    missing = [i for i in timeline if i not in on_topic]
    assert not missing, f"{len(missing)} of {len(timeline)} tweets missing"
    twice = [k for k, n in on_topic.items() if n > 1]
    kafka_events = [e for e in d.events if e["event"].startswith(("kafka", "spool"))]
    assert twice == [], (twice, kafka_events[:20])
    gaps = gaps_in(spool)
    assert len(gaps) >= kills
    assert {covered for _, covered, _ in gaps} == {"redundant"}
    assert sum(seconds for seconds, covered, _ in gaps if covered != "redundant") == 0


# --- acceptance 2: down for 2 minutes, covered by backfill ---------------------------------


def test_a_two_minute_restart_is_covered_by_backfill(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    with simulator(tier="enterprise", tweets_per_second=50.0, seed=22) as s:
        spool = tmp_path / "spool"
        cfg = config(s, broker, topics, tmp_path, stream={"stall_timeout": 5,
                                                          "backfill_minutes": 5})
        down_from = run_then_go_down(s, run_daemon, cfg, spool, 120.0, read=100)
        second = run_daemon(cfg, name="second.toml")
        second.wait_event("stream.connected")
        gap = second.wait_event("stream.gap")[0]
        assert gap["covered_by"] == "backfill"
        assert 120 <= gap["seconds"] < 130
        assert second.named("stream.connected")[0]["backfill_minutes"] == 3
        time.sleep(2.0)
        s.set_rate(0.0)
        time.sleep(1.0)
        stop(second)
        while_down = [t.id for t in s.timeline(down_from, time.time())]
    assert len(while_down) >= 120 * 50
    assert_once_on_topic(broker, topics[0], while_down, "created while down")


# --- acceptance 3: a 3-hour gap, a recovery job, a kill in the middle ----------------------


def test_a_three_hour_gap_is_recovered_and_the_job_survives_a_restart(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    with simulator(tier="enterprise", tweets_per_second=1.0, seed=23) as s:
        spool = tmp_path / "spool"
        cfg = config(s, broker, topics, tmp_path, stream={
            "stall_timeout": 5, "backfill_minutes": 5, "recovery": "auto"})
        down_from = run_then_go_down(s, run_daemon, cfg, spool, 3 * 3600.0)
        # X re-streams the window slowly enough that the kill lands in the middle.
        s.configure(recovery_rate=1500.0)
        second = run_daemon(cfg, name="second.toml")
        second.wait_event("recovery.started")
        wait_until(lambda: s.recovery_sent() >= 6000, 20, "the job is under way")
        # Stopped in the middle of the job (a rolling update): it is resumed, not redone.
        stop(second)
        assert len(second.named("recovery.completed")) == 0
        third = run_daemon(cfg, name="third.toml")
        resumed = third.wait_event("recovery.started")[0]
        assert resumed.get("resumed") is True
        done = third.wait_event("recovery.completed", timeout=60)[0]
        assert done["outcome"] == "completed"
        gap = third.wait_event("stream.gap", lambda e: e["covered_by"] == "recovery")[0]
        assert gap["seconds"] >= 3 * 3600
        s.set_rate(0.0)
        time.sleep(1.0)
        stop(third)
        window = [t.id for t in s.timeline(down_from, time.time())]
    assert len(window) >= 3 * 3600
    assert_once_on_topic(broker, topics[0], window, "of the window")


# --- acceptance 4: a partitioned firehose, four daemons -------------------------------------


def test_four_partitions_are_the_whole_firehose_without_overlap(
    broker: LocalBroker, tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    partitions = 4
    with simulator(tier="enterprise", tweets_per_second=200.0, seed=24,
                   firehose_partitions=partitions) as s:
        started = s.now()
        daemons, topics = [], []
        for p in range(1, partitions + 1):
            topic = f"firehose-{p}-{time.monotonic_ns()}"
            broker.create_topic(topic, 1)
            broker.create_topic(f"{topic}.dlq", 1)
            topics.append(topic)
            daemons.append(run_daemon(config(
                s, broker, (topic, f"{topic}.dlq"), tmp_path / f"p{p}",
                stream={"stall_timeout": 5, "endpoint": "firehose", "partition": p},
                rules={"mode": "sync"}), name=f"p{p}.toml"))
        for d in daemons:
            d.wait_event("stream.connected")
        connected = s.now()
        time.sleep(3.0)
        s.set_rate(0.0)
        time.sleep(1.0)
        stop(*daemons)
        whole = [t.id for t in s.timeline(connected, s.now() + 1, endpoint="firehose")]
        assert started <= connected
    shares = [set(keys_on(broker, topic)) for topic in topics]
    assert len(whole) > 400
    union = set().union(*shares)
    missing = [i for i in whole if i not in union]
    assert not missing, f"{len(missing)} of {len(whole)} firehose tweets on no partition"
    for a in range(partitions):
        for b in range(a + 1, partitions):
            assert not shares[a] & shares[b], f"partitions {a + 1} and {b + 1} overlap"


# --- acceptance 5: a tier without recovery --------------------------------------------------


def test_without_recovery_on_the_tier_the_gap_is_none_with_the_reason_and_nothing_loops(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    with simulator(tier="pro", tweets_per_second=5.0, seed=25) as s:
        spool = tmp_path / "spool"
        cfg = config(s, broker, topics, tmp_path, stream={"stall_timeout": 5,
                                                          "recovery": "auto"})
        run_then_go_down(s, run_daemon, cfg, spool, 3600.0)
        second = run_daemon(cfg, name="second.toml")
        done = second.wait_event("recovery.completed")[0]
        assert done["outcome"] == "failed"
        gap = second.wait_event("stream.gap")[0]
        assert gap["covered_by"] == "none"
        assert "recovery job refused" in gap["detail"]
        time.sleep(3.0)  # nothing loops: one recovery request, no retry
        recovery_connects = [c for c in s.connects() if "start_time" in c.query]
        assert len(recovery_connects) == 1
        assert len(second.named("recovery.started")) == 1
        stop(second)
    (_seconds, covered, detail), *_ = [g for g in gaps_in(spool) if g[0] > 3000]
    assert covered == "none"
    assert "refused" in detail


# --- streamd recover: a one-off job ---------------------------------------------------------


def test_recover_command_publishes_a_lost_window_and_exits_0(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
) -> None:
    import json
    import subprocess
    import sys

    from rig import write_toml

    with simulator(tier="enterprise", tweets_per_second=5.0, seed=26,
                   timeline_start="start") as s:
        s.backdate(600.0)
        end = time.time()
        start = end - 300.0
        window = [t.id for t in s.timeline(start, end)]
        path = write_toml(tmp_path / "recover.toml",
                          config(s, broker, topics, tmp_path), mode=0o600)
        iso = [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) for t in (start, end + 1)]
        done = subprocess.run(
            [sys.executable, "-m", "streamd", "recover", "--start", iso[0], "--end", iso[1],
             "-c", str(path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        summary = done.stdout.strip().splitlines()[-1]
        assert summary.endswith("job completed"), summary
        events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
        assert [e["event"] for e in events if e["event"].startswith("recovery.")] == [
            "recovery.started", "recovery.completed"]
        bad = subprocess.run(
            [sys.executable, "-m", "streamd", "recover", "--start", iso[1], "--end", iso[0],
             "-c", str(path)], capture_output=True, text=True, timeout=30)
        assert bad.returncode == 78
        assert "--end must be after --start" in bad.stderr
    assert len(window) >= 1400
    on_topic = keys_on(broker, topics[0])
    missing = [i for i in window if i not in on_topic]
    assert not missing, f"{len(missing)} of {len(window)} tweets of the window missing"
