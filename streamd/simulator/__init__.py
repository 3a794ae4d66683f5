"""A faithful local X API v2 filtered-stream server for tests, demos and benchmarks."""

from streamd.simulator.config import SimulatorConfig
from streamd.simulator.faults import ConnectFault, Fault
from streamd.simulator.records import (
    ConnectionRecord,
    ConnectionsRequestRecord,
    ConnectRecord,
    Rule,
    RulesRequestRecord,
    SentLine,
    SentTweet,
    TimelineTweet,
)
from streamd.simulator.rules_faults import RulesFault
from streamd.simulator.server import Simulator

__all__ = [
    "ConnectFault",
    "ConnectRecord",
    "ConnectionRecord",
    "ConnectionsRequestRecord",
    "Fault",
    "Rule",
    "RulesFault",
    "RulesRequestRecord",
    "SentLine",
    "SentTweet",
    "Simulator",
    "SimulatorConfig",
    "TimelineTweet",
]
