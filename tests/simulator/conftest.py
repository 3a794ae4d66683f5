"""Fixtures for the simulator tests. `simulator` is a started Simulator with fast settings;
`serve` starts one reached over each wire (HTTP/1.1 and HTTP/2)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sim_async import Served

from streamd.simulator import Simulator, SimulatorConfig
from streamd.simulator.tls import TestCertificates, make_test_certificates


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    sim = Simulator(SimulatorConfig(
        heartbeat_interval=0.5, tweets_per_second=100.0, rule_propagation_delay=0.0,
    ))
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def make_simulator() -> Iterator[Callable[..., Simulator]]:
    """Build and start a Simulator with custom settings (fast heartbeat and rules in force
    at once by default)."""
    started: list[Simulator] = []

    def make(**settings: Any) -> Simulator:
        settings.setdefault("heartbeat_interval", 0.5)
        settings.setdefault("rule_propagation_delay", 0.0)
        sim = Simulator(SimulatorConfig(**settings)).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def test_certs(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    """A CA made for this test run, and a server certificate for localhost."""
    return make_test_certificates(tmp_path_factory.mktemp("tls"))


# Cleartext HTTP/1.1, HTTP/1.1 over TLS, HTTP/2 over TLS (as X serves the stream).
WIRES = ["http/1.1", "https/1.1", "h2"]


@pytest.fixture(params=WIRES)
def wire(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def serve(
    wire: str, make_simulator: Callable[..., Simulator], test_certs: TestCertificates
) -> Callable[..., Served]:
    """Start a Simulator (settings as `make_simulator`) reached over `wire`."""

    def make(**settings: Any) -> Served:
        if wire == "http/1.1":
            return Served(make_simulator(**settings), wire)
        settings.update(tls_certfile=test_certs.certfile, tls_keyfile=test_certs.keyfile,
                        http2=wire == "h2")
        return Served(make_simulator(**settings), wire, test_certs.client_context())

    return make
