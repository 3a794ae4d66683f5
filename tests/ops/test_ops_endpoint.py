"""The ops endpoint (/metrics, /livez, /readyz) under hostile clients, over real sockets.

Each test runs serve_ops in a child process whose RLIMIT_NOFILE is 256, as a daemon under a
tight `ulimit -n`, and reads its stderr (the JSON log lines) when it has stopped.
"""

from __future__ import annotations

import gzip
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
FD_LIMIT = 256

# The child: serve_ops exactly as the daemon calls it (no limits given), or with the limits
# in argv[1]. With argv[2] == "hog" it then takes every free descriptor, as a daemon whose
# Kafka and X connections used them up would, and gives them back on SIGUSR1. With argv[2] ==
# "broken" its readiness probe raises.
RUNNER = f"""
import functools, resource, signal, sys
import anyio, orjson
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_LIMIT}, hard))
from streamd.ops.http import OpsApp, serve_ops
from streamd.ops.logs import configure_logging
from streamd.ops.metrics import Metrics

configure_logging("info", "json")


def readiness():
    if sys.argv[2:] == ["broken"]:
        raise RuntimeError("probe bug")
    return "starting"


app = OpsApp(Metrics().asgi_app(), readiness)
limits = orjson.loads(sys.argv[1]) if len(sys.argv) > 1 else None


async def main() -> None:
    async with anyio.create_task_group() as tg:
        serve = serve_ops
        if limits is not None:
            from streamd.ops.http import OpsLimits
            serve = functools.partial(serve_ops, limits=OpsLimits(**limits))
        port = await tg.start(serve, app, "127.0.0.1", 0)
        if sys.argv[2:] == ["hog"]:
            with anyio.open_signal_receiver(signal.SIGUSR1) as signals:
                hog = []
                try:
                    while True:
                        hog.append(open("/dev/null"))
                except OSError:
                    pass
                print(port, flush=True)
                async for _ in signals:
                    for f in hog:
                        f.close()
                    print("released", flush=True)
                    break
        else:
            print(port, flush=True)


anyio.run(main)
"""

PARTIAL = b"GET /livez HTTP/1.1\r\nHost: ops\r\n"  # no blank line: the head never ends


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    port: int
    stderr_path: Path

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr_path.read_bytes().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                out.append({"event": None, "raw": line[:200]})
        return out


@contextmanager
def ops_server(tmp_path: Path, limits: dict[str, Any] | None = None,
               *extra: str) -> Iterator[Child]:
    stderr_path = tmp_path / "ops.stderr"
    args = [sys.executable, "-c", RUNNER]
    if limits is not None or extra:
        args.append(orjson.dumps(limits).decode())
    args.extend(extra)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"no port; stderr: {stderr_path.read_text()[-2000:]}"
        yield Child(proc, int(line), stderr_path)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def probe(port: int, path: str = "/livez", timeout: float = 1.0) -> tuple[int, float]:
    """(status, seconds) of one request on a fresh connection, as the kubelet sends it
    (1 s is the kubelet's default probe timeout); status 0 if it got no answer in time."""
    t0 = time.monotonic()
    try:
        status = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=timeout).status_code
    except httpx.HTTPError:
        status = 0
    return status, time.monotonic() - t0


def raw_exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send `data`, read until the server closes (b"" if it reset the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def open_slow(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.sendall(PARTIAL)
    return s


def closed_by_peer(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


class SlowFlood:
    """Keeps `n` slowloris connections open (each sends part of a request head and holds
    it), opening a new one for every one the server closes, as an attacker would."""

    def __init__(self, port: int, n: int) -> None:
        self.port = port
        self.n = n
        self.opened = 0
        self.closed_by_server = 0
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowFlood:
        self._thread.start()
        assert self.ready.wait(30), f"only {self.opened} slow clients connected"
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        live = 0
        try:
            while not self._stop.is_set():
                while live < self.n and not self._stop.is_set():
                    try:
                        s = open_slow(self.port)
                    except OSError:
                        continue  # the server's queue is full: try again
                    s.setblocking(False)
                    sel.register(s, selectors.EVENT_READ)
                    live += 1
                    self.opened += 1
                self.ready.set()
                for key, _ in sel.select(timeout=0.05):
                    s = key.fileobj
                    assert isinstance(s, socket.socket)
                    try:
                        gone = s.recv(1024) == b""
                    except BlockingIOError:
                        gone = False
                    except OSError:
                        gone = True
                    if gone:
                        sel.unregister(s)
                        s.close()
                        live -= 1
                        self.closed_by_server += 1
        finally:
            for key in list(sel.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            sel.close()


def test_livez_keeps_answering_through_a_slowloris_flood_under_ulimit_256(
    tmp_path: Path,
) -> None:
    with ops_server(tmp_path) as child:  # the daemon's call: default limits
        idle_fds = child.fds()
        samples: list[tuple[int, float, int]] = []
        with SlowFlood(child.port, 300) as flood:
            for _ in range(8):  # ~4 s of flood, every half second like a busy kubelet
                status, took = probe(child.port)
                samples.append((status, took, child.fds()))
                time.sleep(0.5)  # the time between two probes is the point here
        assert flood.opened >= 300
    # every probe answered within the kubelet's default timeout (1 s, probe()'s timeout); the
    # wait is the queue of flood connections ahead of the probe, each accepted and pushed out
    assert all(status == 200 for status, _, _ in samples), samples
    # 64 client sockets at most (a quarter of the limit), whatever the flood
    assert max(fds for _, _, fds in samples) <= idle_fds + 64 + 2, (idle_fds, samples)
    lines = child.log_lines()
    assert len(lines) <= 5, lines[:20]
    assert {e["event"] for e in lines} <= {"http.client_dropped"}, lines[:20]


def test_connections_beyond_the_cap_push_out_the_oldest_waiting_one(tmp_path: Path) -> None:
    with ops_server(tmp_path, {"max_connections": 8, "head_timeout": 30}) as child:
        idle_fds = child.fds()
        clients = [open_slow(child.port) for _ in range(40)]
        try:
            # Each newcomer beyond 8 closed the oldest waiting one: the first 32 are closed,
            # the newest 8 are still held, and the server never held more than 8 (+1).
            assert all(closed_by_peer(s, 3) for s in clients[:32])
            assert not any(closed_by_peer(s, 0.1) for s in clients[32:])
            assert child.fds() <= idle_fds + 8
            # A probe sends its request at once: it pushes out a slow client, never the reverse.
            assert probe(child.port)[0] == 200
            assert closed_by_peer(clients[32], 3)
        finally:
            for s in clients:
                s.close()


def test_a_slow_request_head_is_dropped_at_the_deadline(tmp_path: Path) -> None:
    with ops_server(tmp_path, {"head_timeout": 0.5}) as child:
        s = open_slow(child.port)
        t0 = time.monotonic()
        try:
            assert closed_by_peer(s, 5)
        finally:
            s.close()
        assert 0.4 < time.monotonic() - t0 < 2.0
    assert [e["event"] for e in child.log_lines()] == ["http.client_dropped"]
    assert child.log_lines()[0]["reason"] == "head_timeout"


def test_an_oversized_request_head_gets_431(tmp_path: Path) -> None:
    with ops_server(tmp_path) as child:
        head = b"GET /livez HTTP/1.1\r\nHost: ops\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
        answer = raw_exchange(child.port, head)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert answer.endswith(b'{"error":"request header fields too large"}')
        assert probe(child.port)[0] == 200


def test_a_request_body_is_refused(tmp_path: Path) -> None:
    with ops_server(tmp_path) as child:
        answer = raw_exchange(
            child.port, b"POST /livez HTTP/1.1\r\nHost: ops\r\nContent-Length: 5\r\n\r\nhello")
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        chunked = raw_exchange(
            child.port,
            b"POST /livez HTTP/1.1\r\nHost: ops\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert chunked.startswith(b"HTTP/1.1 413 "), chunked[:200]


def test_malformed_requests_are_answered_400_and_logged_once(tmp_path: Path) -> None:
    with ops_server(tmp_path) as child:
        for _ in range(20):
            answer = raw_exchange(child.port, b"\x16\x03\x01 not http at all\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        assert probe(child.port)[0] == 200
    lines = child.log_lines()
    assert [(e["event"], e.get("status")) for e in lines] == [("http.bad_request", 400)], lines


def test_accept_failing_for_want_of_descriptors_backs_off_and_logs_once(
    tmp_path: Path,
) -> None:
    with ops_server(tmp_path, {}, "hog") as child:
        # Every descriptor is taken: each accept() fails with EMFILE while these wait.
        waiting = [socket.create_connection(("127.0.0.1", child.port), timeout=2)
                   for _ in range(5)]
        time.sleep(2.0)  # a tight accept loop would write thousands of lines meanwhile
        try:
            os.kill(child.proc.pid, signal.SIGUSR1)  # the descriptors come back
            assert child.proc.stdout is not None
            assert child.proc.stdout.readline().strip() == b"released"
            assert probe(child.port, timeout=3.0)[0] == 200
        finally:
            for s in waiting:
                s.close()
    lines = child.log_lines()
    assert 1 <= len(lines) <= 3, lines[:20]
    assert {e["event"] for e in lines} == {"http.accept_failed"}, lines[:20]


def test_a_failing_probe_gets_500_and_the_server_keeps_serving(tmp_path: Path) -> None:
    with ops_server(tmp_path, {}, "broken") as child:
        for _ in range(3):
            assert probe(child.port, "/readyz")[0] == 500
        assert probe(child.port)[0] == 200
    lines = child.log_lines()
    assert [(e["event"], e["path"]) for e in lines] == [("http.app_failed", "/readyz")]
    assert "RuntimeError: probe bug" in lines[0]["exception"]


def test_answers_are_those_of_the_ops_app(tmp_path: Path) -> None:
    with ops_server(tmp_path) as child:
        base = f"http://127.0.0.1:{child.port}"
        livez = httpx.get(f"{base}/livez")
        assert (livez.status_code, livez.content) == (200, b'{"status":"ok"}')
        assert livez.headers["content-type"] == "application/json"
        readyz = httpx.get(f"{base}/readyz")
        assert readyz.status_code == 503
        assert readyz.json() == {"status": "not ready", "reason": "starting"}
        assert readyz.headers["content-type"] == "application/json"
        nope = httpx.get(f"{base}/nope")
        assert (nope.status_code, nope.json()) == (404, {"error": "not found"})
        metrics = httpx.get(f"{base}/metrics", headers={"accept-encoding": "identity"})
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert b"streamd_build_info{" in metrics.content
        # prometheus_client's negotiation: OpenMetrics when asked, gzip when accepted
        om = httpx.get(f"{base}/metrics", headers={
            "accept": "application/openmetrics-text; version=1.0.0", "accept-encoding": "gzip"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.content.rstrip().endswith(b"# EOF")
        raw = raw_exchange(child.port, b"GET /metrics HTTP/1.1\r\nHost: ops\r\n"
                                       b"Accept-Encoding: gzip\r\n\r\n")
        assert b"content-encoding: gzip" in raw.lower()
        assert b"streamd_build_info" in gzip.decompress(raw.split(b"\r\n\r\n", 1)[1])
        head = raw_exchange(child.port, b"HEAD /livez HTTP/1.1\r\nHost: ops\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert head.endswith(b"\r\n\r\n")  # the headers only
    assert child.log_lines() == []


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:0"])
def test_listen_addresses(tmp_path: Path, listen: str) -> None:
    code = (
        "import anyio\n"
        "from streamd.config import HttpSettings\n"
        "from streamd.ops.http import OpsApp, serve_ops\n"
        "from streamd.ops.metrics import Metrics\n"
        f"http = HttpSettings(listen={listen!r})\n"
        "async def main():\n"
        "    async with anyio.create_task_group() as tg:\n"
        "        port = await tg.start(serve_ops, OpsApp(Metrics().asgi_app(), lambda: None),"
        " http.host, http.port)\n"
        "        print(port, flush=True)\n"
        "anyio.run(main)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        host = "[::1]" if listen.startswith("[") else "127.0.0.1"
        answer = httpx.get(f"http://{host}:{port}/readyz", timeout=3)
        assert (answer.status_code, answer.json()) == (200, {"status": "ready"})
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
