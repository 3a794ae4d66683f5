"""High availability end to end (README "High availability"): two `streamd run` child
processes with `ha.mode = "kafka"`, the simulator with a one-connection limit, a real Tansu
broker. The election runs over Tansu's group coordinator (JoinGroup, SyncGroup, Heartbeat,
LeaveGroup), as it would over Kafka's.

Timing: Tansu completes a rebalance about 3 s after it begins (its coordinator pauses a
rejoining follower for 3 s), and it evicts a silent member at the first request of another
member after ha.session_timeout. SESSION is 8 s, not 6: a leader keeps its connection
through a rebalance only while its fence (session / 2) holds, and with 6 s Tansu's 3 s pause
would use up all of it (the leader would be fenced and reconnect on every standby restart).

Cutting one daemon off from Kafka (acceptance 3): Kafka clients connect to the broker's
*advertised* address after bootstrapping, so a proxy in front of the bootstrap address alone
would be bypassed. The broker of that test advertises `localhost:P`; the cut-off daemon gets
a `sitecustomize` (test-only, through PYTHONPATH) that resolves `localhost:P` to the proxy,
and the test closes the proxy.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from rig import DaemonProcess, daemon_config, metric, read_topic, simulator, wait_until

from streamd.dev.broker import LocalBroker, free_port
from streamd.simulator import Simulator

pytestmark = pytest.mark.broker

StartDaemon = Callable[..., DaemonProcess]
SESSION = 6.0
_ids = itertools.count()


def ha_names(broker: LocalBroker) -> tuple[str, str]:
    """A fresh (group, leader topic) on `broker`."""
    n = f"{os.getpid()}-{next(_ids)}"
    group, topic = f"ha-{n}", f"leader-{n}"
    broker.create_topic(topic, partitions=1)
    return group, topic


def ha_config(sim: Simulator, bootstrap: str, topics: tuple[str, str], spool_dir: Path,
              names: tuple[str, str], **overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cfg = daemon_config(sim.url, bootstrap, *topics, spool_dir, **overrides)
    group, topic = names
    cfg["ha"] = {"mode": "kafka", "group": group, "topic": topic, "session_timeout": SESSION}
    return cfg


def leading(d: DaemonProcess) -> bool:
    """Elected and not lost since, by its events."""
    return len(d.named("ha.elected")) > len(d.named("ha.lost"))


def wait_leader(daemons: Sequence[DaemonProcess], timeout: float) -> DaemonProcess:
    found: list[DaemonProcess] = []

    def one() -> bool:
        found[:] = [d for d in daemons if d.proc.poll() is None and leading(d)]
        return len(found) == 1

    wait_until(one, timeout, "exactly one leader")
    return found[0]


def overlaps(sim: Simulator) -> list[tuple[str, str, float]]:
    """Pairs of connections that were active (holding X's slot) at the same time, with how
    long; the eviction itself (the older one terminated through the Connections API within
    a second of the newer one's connect) is not counted."""
    now = sim.now()
    spans = [(c.id, c.connected_at_epoch, c.disconnected_at_epoch or now, c.disconnect_reason)
             for c in sim.connection_records() if not c.recovery]
    found = []
    ordered = sorted(spans, key=lambda s: s[1])
    for (a, a0, a1, why), (b, b0, b1, _) in itertools.combinations(ordered, 2):
        overlap = min(a1, b1) - max(a0, b0)
        if overlap <= 0:
            continue
        if why == "operator_disconnect" and a1 - b0 < 1.0:
            continue
        found.append((a, b, round(overlap, 3)))
    return found


def refused(sim: Simulator, since: int = 0) -> int:
    return sum(1 for c in sim.connects()[since:] if c.status == 429)


# --- acceptance 1: SIGKILL the leader -------------------------------------------------------


def test_sigkill_the_leader_the_standby_streams_within_the_session_timeout(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    names = ha_names(broker)
    # X keeps the killed leader's connection as a zombie far longer than the test.
    with simulator(tweets_per_second=50.0, seed=21, connection_limit=1,
                   zombie_seconds=300.0) as s:
        a = run_daemon(ha_config(s, broker.bootstrap, topics, tmp_path / "a", names),
                       name="a.toml")
        b = run_daemon(ha_config(s, broker.bootstrap, topics, tmp_path / "b", names),
                       name="b.toml")
        leader = wait_leader([a, b], 20)
        standby = b if leader is a else a
        old_id = leader.wait_event("connections.own")[0]["id"]
        standby.wait_event("ha.joined", lambda e: e["role"] == "standby")
        assert not standby.named("stream.connected")
        assert metric(standby.port, "streamd_leader") == 0
        assert metric(leader.port, "streamd_leader") == 1
        assert s.wait_sent(100, timeout=10)
        connects_before = len(s.connects())
        leader.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        leader.wait()
        standby.wait_event("stream.connected", timeout=SESSION + 8)
        took = time.monotonic() - killed
        assert took <= SESSION + 5, f"the standby streams {took:.1f} s after the kill"
        # The old connection, still counted by X (a zombie), was terminated on the way.
        (terminated,) = standby.named("connections.terminated")
        assert terminated["why"] == "handover"
        assert terminated["ids"] == [old_id]
        record = next(c for c in s.connection_records() if c.id == old_id)
        assert not record.active
        assert record.disconnect_reason == "operator_disconnect"
        assert refused(s, connects_before) <= 1
        (elected,) = standby.named("ha.elected")
        assert elected["group"] == names[0]
        assert elected["member"]
        assert overlaps(s) == []
        standby.signal(signal.SIGTERM)
        assert standby.wait() == 0


# --- acceptance 2: SIGTERM the leader (a rolling update) --------------------------------------


def test_sigterm_the_leader_the_standby_streams_within_5_s_and_backfill_loses_nothing(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    names = ha_names(broker)
    with simulator(tweets_per_second=100.0, seed=22, connection_limit=1,
                   backfill_tiers=("pro", "enterprise")) as s:
        backfill = {"stream": {"stall_timeout": 5, "backfill_minutes": 1}}
        a = run_daemon(ha_config(s, broker.bootstrap, topics, tmp_path / "a", names,
                                 **backfill), name="a.toml")
        b = run_daemon(ha_config(s, broker.bootstrap, topics, tmp_path / "b", names,
                                 **backfill), name="b.toml")
        leader = wait_leader([a, b], 20)
        standby = b if leader is a else a
        leader.wait_event("connections.own")
        standby.wait_event("ha.joined")
        assert s.wait_sent(300, timeout=10)
        leader.signal(signal.SIGTERM)
        stopped = time.monotonic()
        standby.wait_event("stream.connected", timeout=10)
        took = time.monotonic() - stopped
        assert leader.wait() == 0
        assert took <= 5.0, f"the standby streams {took:.1f} s after the SIGTERM"
        (lost,) = leader.named("ha.lost")
        assert lost["reason"] == "stopping"
        (gap,) = standby.wait_event("stream.gap")
        assert gap["covered_by"] == "backfill"
        assert gap["seconds"] < 10
        assert s.wait_sent(len(s.sent_tweets()) + 200, timeout=10)
        s.set_rate(0.0)
        time.sleep(1.0)
        standby.signal(signal.SIGTERM)
        assert standby.wait() == 0
        timeline = [t.id for t in s.timeline() if t.matching]
    got = {r.key.decode() for r in read_topic(broker.bootstrap, topics[0], idle=3.0) if r.key}
    missing = [i for i in timeline if i not in got]
    assert not missing, f"{len(missing)} of {len(timeline)} tweets of the timeline missing"


# --- acceptance 3: the leader cut off from Kafka ------------------------------------------------

SITECUSTOMIZE = '''\
"""Test only (tests/pipeline/test_ha.py): resolve STREAMD_TEST_REDIRECT's host:port to
another address, so that this process reaches the broker through the test's proxy."""
import os
import socket

_rule = os.environ.get("STREAMD_TEST_REDIRECT")
if _rule:
    _src, _dst = _rule.split("=")
    _src_host, _src_port = _src.rsplit(":", 1)
    _dst_host, _dst_port = _dst.rsplit(":", 1)
    _getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host == _src_host and str(port) == _src_port:
            host, port = _dst_host, int(_dst_port)
        return _getaddrinfo(host, port, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
'''


class TcpProxy:
    """127.0.0.1:port -> 127.0.0.1:target, until close(): then every connection through it
    is closed and new ones are refused."""

    def __init__(self, target: int) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self._open:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if not self._open:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._open = False
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@contextlib.contextmanager
def broker_advertising_localhost(tmp_path: Path) -> Iterator[LocalBroker]:
    """A Tansu broker listening on 127.0.0.1:P that tells clients to connect to localhost:P
    (LocalBroker advertises 127.0.0.1, which the redirect cannot catch: asyncio does not
    resolve a numeric address)."""
    broker = LocalBroker(port=free_port())
    with open(tmp_path / "tansu.log", "ab") as log:
        proc = subprocess.Popen(
            [broker.binary, "broker", "--listener-url", broker.url,
             "--advertised-listener-url", f"tcp://localhost:{broker.port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", broker.port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "tansu did not listen"
                time.sleep(0.05)
        yield broker
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_a_leader_cut_off_from_kafka_stops_within_half_a_session_and_the_other_takes_over(
    tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    # No zombies here: a connection is active exactly while its client streams, so the
    # simulator's records show when each one streamed.
    with broker_advertising_localhost(tmp_path) as broker, simulator(
        tweets_per_second=50.0, seed=23, connection_limit=1, zombie_seconds=0.0,
    ) as s:
        broker.create_topic("t", partitions=3)
        broker.create_topic("t.dlq", partitions=1)
        names = ha_names(broker)
        bootstrap = f"localhost:{broker.port}"
        proxy = TcpProxy(broker.port)
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        cut_env = {"PYTHONPATH": str(site),
                   "STREAMD_TEST_REDIRECT": f"localhost:{broker.port}=127.0.0.1:{proxy.port}",
                   # uvloop resolves names in C, past the sitecustomize: plain asyncio here.
                   "STREAMD_UVLOOP": "0"}
        # The one to be cut off starts first: the oldest member leads.
        a = run_daemon(ha_config(s, bootstrap, ("t", "t.dlq"), tmp_path / "a", names),
                       env=cut_env, name="a.toml")
        a.wait_event("ha.elected", timeout=20)
        a_id = a.wait_event("connections.own")[0]["id"]
        b = run_daemon(ha_config(s, bootstrap, ("t", "t.dlq"), tmp_path / "b", names),
                       name="b.toml")
        b.wait_event("ha.joined", lambda e: e["role"] == "standby", timeout=20)
        time.sleep(1.0)
        # The standby's join rebalanced the group: the leader kept its connection through it.
        assert leading(a)
        assert not leading(b)
        assert not a.named("ha.lost")
        assert len(a.named("stream.connected")) == 1
        cut_at = s.now()
        proxy.close()
        (lost,) = a.wait_event("ha.lost", timeout=SESSION)
        assert lost["reason"].startswith("fenced: ")
        a.wait_event("stream.disconnected", lambda e: e["reason"] == "not_leader")
        wait_until(lambda: not next(c for c in s.connection_records() if c.id == a_id).active,
                   5, "the cut-off leader's connection closed")
        a_record = next(c for c in s.connection_records() if c.id == a_id)
        assert a_record.disconnected_at_epoch is not None
        stopped_after = a_record.disconnected_at_epoch - cut_at
        assert stopped_after <= SESSION / 2 + 0.5, f"streamed {stopped_after:.1f} s after the cut"
        b.wait_event("stream.connected", timeout=SESSION + 10)
        wait_until(lambda: leading(b), 5, "b leads")
        assert not leading(a)
        assert overlaps(s) == [], s.connection_records()
        # The cut-off one stays off X: it cannot be assigned again without Kafka.
        time.sleep(1.0)
        assert len(a.named("stream.connected")) == 1
        for d in (a, b):
            d.signal(signal.SIGTERM)
        stopping = time.monotonic()
        assert b.wait() == 0
        # Cut off, its last record and its LeaveGroup fail fast: the shutdown budget holds.
        code = a.wait(30)
        assert code == 0, "\n".join(a.raw_stderr[-60:])
        flush_timeout = ha_config(s, bootstrap, ("t", "t.dlq"), tmp_path, names)["kafka"][
            "flush_timeout"]
        assert time.monotonic() - stopping < flush_timeout + 2 + 1.0


# --- acceptance 4: leadership flaps ------------------------------------------------------------

FLAPS = 10


def test_leadership_flapping_loses_no_tweet_and_stays_within_the_connect_window(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    """10 hand-overs (SIGTERM the leader, start it again as the new standby) in about a
    minute: every tweet of the timeline reaches the topic (the hand-over gap is backfilled),
    and the connects stay far inside X's 50 per 15 minutes."""
    names = ha_names(broker)
    with simulator(tweets_per_second=50.0, seed=24, connection_limit=1,
                   backfill_tiers=("pro", "enterprise")) as s:
        backfill = {"stream": {"stall_timeout": 5, "backfill_minutes": 1}}
        configs = {n: ha_config(s, broker.bootstrap, topics, tmp_path / n, names, **backfill)
                   for n in ("a", "b")}
        running = {n: run_daemon(configs[n], name=f"{n}.toml") for n in ("a", "b")}
        leader = wait_leader(list(running.values()), 20)
        started = time.monotonic()
        for _ in range(FLAPS):
            name = next(n for n, d in running.items() if d is leader)
            other = next(d for d in running.values() if d is not leader)
            other.wait_event("ha.joined", timeout=15)
            connected = len(other.named("stream.connected"))
            leader.signal(signal.SIGTERM)
            assert leader.wait() == 0
            running[name] = run_daemon(configs[name], name=f"{name}.toml")
            other.wait_event("stream.connected", count=connected + 1, timeout=15)
            leader = other
        took = time.monotonic() - started
        running[next(n for n, d in running.items() if d is not leader)].wait_event("ha.joined")
        s.set_rate(0.0)
        time.sleep(1.0)
        for d in running.values():
            d.signal(signal.SIGTERM)
        for d in running.values():
            assert d.wait() == 0
        connects = s.connects()
        timeline = [t.id for t in s.timeline() if t.matching]
    assert took < 90, f"{FLAPS} hand-overs took {took:.0f} s"
    assert len(connects) <= 50 - 10, f"{len(connects)} connects"
    assert all(c.status == 200 for c in connects), [c.status for c in connects]
    got = {r.key.decode() for r in read_topic(broker.bootstrap, topics[0], idle=3.0) if r.key}
    missing = [i for i in timeline if i not in got]
    assert not missing, f"{len(missing)} of {len(timeline)} tweets of the timeline missing"


# --- acceptance 5: kill both, start both --------------------------------------------------------


def ha_check_line(config: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "streamd", "check", "-c", str(config)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    return next(line for line in done.stdout.splitlines() if line.startswith("[") and
                "] ha: " in line)


def test_kill_both_then_start_both_exactly_one_leads(
    broker: LocalBroker, topics: tuple[str, str], tmp_path: Path, run_daemon: StartDaemon,
) -> None:
    names = ha_names(broker)
    with simulator(tweets_per_second=50.0, seed=25, connection_limit=1,
                   zombie_seconds=300.0) as s:
        configs = {n: ha_config(s, broker.bootstrap, topics, tmp_path / n, names)
                   for n in ("a", "b")}
        first = [run_daemon(configs[n], name=f"{n}.toml") for n in ("a", "b")]
        wait_leader(first, 20).wait_event("connections.own")
        assert s.wait_sent(100, timeout=10)  # its leader record (its connection id) is written
        for d in first:
            d.proc.send_signal(signal.SIGKILL)
        for d in first:
            d.wait()
        second = [run_daemon(configs[n], name=f"{n}.toml") for n in ("a", "b")]
        # The killed members stay in the group until their session times out; then one of
        # the new ones is elected and terminates the zombie connection.
        leader = wait_leader(second, SESSION + 15)
        leader.wait_event("stream.connected", timeout=10)
        standby = next(d for d in second if d is not leader)
        standby.wait_event("ha.joined", timeout=10)
        time.sleep(2.0)
        assert [leading(d) for d in second].count(True) == 1
        assert not standby.named("stream.connected")
        assert [metric(d.port, "streamd_leader") for d in (leader, standby)] == [1, 0]
        assert sum(1 for c in s.connection_records() if c.active) == 1
        assert overlaps(s) == []
        # `streamd check` on each instance's config: the group, the leader, its own role.
        lines = {d: ha_check_line(d.config_path) for d in (leader, standby)}
        leader_instance = lines[leader].split("this instance (")[1].split(")")[0]
        for d, role in ((leader, "leader"), (standby, "standby")):
            assert lines[d].startswith(f"[ OK ] ha: group '{names[0]}' (Stable): 2 member(s)")
            assert f"; leader {leader_instance} (" in lines[d]
            assert lines[d].endswith(f"): {role}")
        for d in second:
            d.signal(signal.SIGTERM)
        for d in second:
            assert d.wait() == 0
