"""A faithful local X API v2 filtered-stream server for tests, demos and benchmarks."""

from streamd.simulator.config import SimulatorConfig
from streamd.simulator.faults import ConnectFault, Fault
from streamd.simulator.records import ConnectRecord, Rule, SentLine, SentTweet
from streamd.simulator.server import Simulator

__all__ = [
    "ConnectFault",
    "ConnectRecord",
    "Fault",
    "Rule",
    "SentLine",
    "SentTweet",
    "Simulator",
    "SimulatorConfig",
]
