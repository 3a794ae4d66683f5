"""streamd: X API v2 filtered stream -> Kafka, at least once.

The public API is what the commands are built from; the daemon itself is
`streamd.daemon.Daemon` (imported on demand: it pulls in aiokafka and httpx), the simulator
`streamd.simulator.Simulator`.
"""

from streamd.errors import (
    ConfigError,
    CredentialsError,
    FatalDisconnect,
    RulesError,
    StreamdError,
)
from streamd.reasons import ExitCode, Reason

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CredentialsError",
    "ExitCode",
    "FatalDisconnect",
    "Reason",
    "RulesError",
    "StreamdError",
    "__version__",
]
