"""The fixed vocabulary of disconnect reasons and exit codes (README: "Disconnect reasons
and backoff", "Run")."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    USAGE = 64
    INTERNAL = 70
    CREDENTIALS = 77
    CONFIG = 78


class Reason(enum.StrEnum):
    """Why a stream connection ended or a connect failed. Exactly one per event."""

    OPERATIONAL_DISCONNECT = "operational_disconnect"
    NETWORK = "network"
    STALL = "stall"
    SERVER_ERROR = "server_error"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    USAGE_CAP = "usage_cap"
    NO_RULES = "no_rules"
    RULES_CAP = "rules_cap"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    INVALID_REQUEST = "invalid_request"
    # Not one of X's conditions: streamd itself closed the stream because the spool is full
    # or it is shutting down. Kept separate so X-side reasons stay honest.
    SPOOL_FULL = "spool_full"
    # Our connection was terminated through X's Connections API by another client of the
    # app (found in the connection history): waited out like too_many_connections, and
    # never evicted back within x.evict_min_interval.
    EVICTED = "evicted"
    # A recovery connection (start_time/end_time) ended cleanly: X delivered its window.
    RECOVERY_COMPLETE = "recovery_complete"
    # ha.mode = "kafka": this instance lost leadership of its group, or cannot prove it (no
    # heartbeat answered within ha.session_timeout / 2). No reconnect until elected again.
    NOT_LEADER = "not_leader"
    SHUTDOWN = "shutdown"


class RulesFailure(enum.StrEnum):
    """Why a rules sync failed (`RulesSyncError.reason`): a problem with the rules
    themselves, or a condition of the rules endpoints, named like the disconnect reason it
    shares a meaning with."""

    INVALID_RULES = "invalid_rules"  # X's syntax errors, duplicate values
    RULES_CAP = Reason.RULES_CAP.value
    INVALID_REQUEST = Reason.INVALID_REQUEST.value
    NETWORK = Reason.NETWORK.value
    SERVER_ERROR = Reason.SERVER_ERROR.value
    RATE_LIMITED = Reason.RATE_LIMITED.value
    USAGE_CAP = Reason.USAGE_CAP.value

    @property
    def transient(self) -> bool:
        """A condition of the endpoints that passes by itself: retried, exit 70 if not."""
        return self in _TRANSIENT_RULES_FAILURES


_TRANSIENT_RULES_FAILURES = frozenset({
    RulesFailure.NETWORK, RulesFailure.SERVER_ERROR, RulesFailure.RATE_LIMITED,
    RulesFailure.USAGE_CAP,
})
