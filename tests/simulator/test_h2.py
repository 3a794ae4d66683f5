"""HTTP/2 over TLS specifics, seen by a raw `h2` client where httpx cannot act (it never
sends RST_STREAM, and it always opens a 16 MB window): a client RST_STREAM frees the stream
slot, flow control reaches the slow-reader drop; plus ALPN fallback, the CLI, and a child
process trusting the test CA through SSL_CERT_FILE."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest
from sim_helpers import AUTH, RULES, STREAM

from streamd.simulator import Simulator, SimulatorConfig
from streamd.simulator.tls import TestCertificates


@pytest.fixture
def h2_sim(
    make_simulator: Callable[..., Simulator], test_certs: TestCertificates
) -> Simulator:
    sim = make_simulator(
        tls_certfile=test_certs.certfile, tls_keyfile=test_certs.keyfile, http2=True,
        match_all=True, tweets_per_second=200.0, slow_reader_seconds=1.0,
    )
    sim.add_rules([("cat", None)])
    return sim


class RawH2:
    """A blocking HTTP/2 client on one TLS socket; it acknowledges received data only when
    told to (`ack=True`), so a test can let the server's window run dry."""

    def __init__(self, sim: Simulator, certs: TestCertificates) -> None:
        context = certs.client_context()
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", sim.port), timeout=5.0)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        self._send()
        self.events: list[h2.events.Event] = []

    def _send(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def get(self, path: str) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, [
            (b":method", b"GET"), (b":path", path.encode()), (b":scheme", b"https"),
            (b":authority", b"localhost"), (b"authorization", AUTH["Authorization"].encode()),
        ], end_stream=True)
        self._send()
        return stream_id

    def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        self._send()

    def read_until(self, predicate: Callable[[RawH2], bool], ack: bool = True,
                   within: float = 5.0) -> bool:
        """Read frames until `predicate` holds (True) or the connection ends (False)."""
        self.sock.settimeout(within)
        self._send()  # e.g. a WINDOW_UPDATE the test queued
        while not predicate(self):
            try:
                data = self.sock.recv(65536)
            except (ConnectionError, ssl.SSLError, TimeoutError):
                return False
            if not data:
                return False
            for event in self.conn.receive_data(data):
                self.events.append(event)
                if ack and isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id)
            self._send()
        return True

    def status(self, stream_id: int) -> int | None:
        for event in self.events:
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                return int(dict(event.headers)[b":status"])
        return None

    def data(self, stream_id: int) -> bytes:
        return b"".join(e.data for e in self.events
                        if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id)


@contextmanager
def raw_h2(sim: Simulator, certs: TestCertificates) -> Iterator[RawH2]:
    client = RawH2(sim, certs)
    try:
        yield client
    finally:
        client.sock.close()


def test_a_client_rst_stream_frees_the_slot_on_the_same_connection(
    h2_sim: Simulator, test_certs: TestCertificates,
) -> None:
    with raw_h2(h2_sim, test_certs) as client:
        first = client.get(STREAM)
        assert client.read_until(lambda c: c.data(first).count(b"\r\n") >= 3)
        assert client.status(first) == 200
        client.reset(first)
        # At once, on the same connection: the pro tier's one slot is free again.
        second = client.get(STREAM)
        assert client.read_until(lambda c: c.status(second) is not None)
        assert client.status(second) == 200
    assert [r.status for r in h2_sim.connects()] == [200, 200]


def test_a_reader_that_stops_granting_window_is_dropped(
    h2_sim: Simulator, test_certs: TestCertificates,
) -> None:
    h2_sim.set_rate(float("inf"))
    with raw_h2(h2_sim, test_certs) as client:
        stream_id = client.get(STREAM)
        assert client.read_until(lambda c: c.status(stream_id) == 200)
        assert h2_sim.wait_connections(1, 2.0)
        started = time.monotonic()
        # No WINDOW_UPDATE: the server's 64 KB window runs dry, then its writes block for
        # slow_reader_seconds (1 s) and it drops the connection.
        assert not client.read_until(lambda c: False, ack=False, within=8.0)
        assert time.monotonic() - started < 6.0
        assert 60_000 <= len(client.data(stream_id)) <= 65_535
    assert h2_sim.wait_connections(0, 2.0)


def test_a_response_larger_than_the_window_waits_for_window_updates(
    h2_sim: Simulator, test_certs: TestCertificates,
) -> None:
    h2_sim.add_rules([(f"padding{i:04d} lorem ipsum dolor sit amet", None) for i in range(999)])
    with raw_h2(h2_sim, test_certs) as client:
        stream_id = client.get(RULES + "?max_results=1000")

        def ended(c: RawH2) -> bool:
            return any(isinstance(e, h2.events.StreamEnded) and e.stream_id == stream_id
                       for e in c.events)

        # Without WINDOW_UPDATE the server fills the 64 KB window, short of the end (more
        # would be a flow-control error in the client's h2).
        assert client.read_until(lambda c: len(c.data(stream_id)) >= 65_535, ack=False)
        assert len(client.data(stream_id)) == 65_535
        assert not ended(client)
        # Granting window lets the rest (sent after the app returned) and END_STREAM out.
        client.conn.acknowledge_received_data(65_535, stream_id)
        assert client.read_until(ended)
    body = json.loads(client.data(stream_id))
    assert body["meta"]["result_count"] == 1000


def test_an_http1_only_client_still_gets_http1_on_the_h2_port(
    h2_sim: Simulator, test_certs: TestCertificates,
) -> None:
    with httpx.Client(base_url=h2_sim.url, verify=test_certs.client_context(),
                      headers=AUTH) as c:
        response = c.get(RULES)
    assert (response.http_version, response.status_code) == ("HTTP/1.1", 200)


def test_url_and_tls_validation(test_certs: TestCertificates) -> None:
    config = SimulatorConfig(tls_certfile=test_certs.certfile, tls_keyfile=test_certs.keyfile)
    with Simulator(config) as sim:
        assert sim.url == f"https://localhost:{sim.port}"
    with pytest.raises(ValueError, match="http2 needs TLS"):
        SimulatorConfig(http2=True)
    with pytest.raises(ValueError, match="tls_keyfile needs tls_certfile"):
        SimulatorConfig(tls_keyfile=test_certs.keyfile)
    with pytest.raises(ssl.SSLError):  # fails at construction, not in the server thread
        Simulator(SimulatorConfig(tls_certfile=test_certs.ca_pem))  # no private key


def test_cli_serves_h2_to_a_child_that_trusts_the_ca_by_ssl_cert_file(
    test_certs: TestCertificates,
) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamd.simulator", "--port", "0", "--rule", "cat",
         "--match-all", "--tls-cert", str(test_certs.certfile),
         "--tls-key", str(test_certs.keyfile), "--http2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().split()[-1]
        assert url.startswith("https://localhost:")
        # As the daemon will: plain httpx, trusting the CA only through SSL_CERT_FILE.
        child = (
            "import httpx, sys\n"
            "with httpx.Client(http2=True, headers={'Authorization': 'Bearer test-token'}) as c:\n"
            f"    with c.stream('GET', '{url}{STREAM}') as r:\n"
            "        line = next(r.iter_lines())\n"
            "        print(r.http_version, r.status_code, line[:9])\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", child], capture_output=True, timeout=20,
            env={**os.environ, "SSL_CERT_FILE": str(test_certs.ca_pem)}, check=True,
        ).stdout.decode()
        assert out.split() == ["HTTP/2", "200", '{"data":{']
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
