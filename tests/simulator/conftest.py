"""Fixtures for the simulator tests. `simulator` is a started Simulator with fast settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from streamd.simulator import Simulator, SimulatorConfig


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    sim = Simulator(SimulatorConfig(heartbeat_interval=0.5, tweets_per_second=100.0))
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def make_simulator() -> Iterator[Callable[..., Simulator]]:
    """Build and start a Simulator with custom settings (fast heartbeat by default)."""
    started: list[Simulator] = []

    def make(**settings: Any) -> Simulator:
        settings.setdefault("heartbeat_interval", 0.5)
        sim = Simulator(SimulatorConfig(**settings)).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()
