"""RulesFault: the answer given to one `GET`/`POST /2/tweets/search/stream/rules` request
instead of the real one. Injected faults queue up and are consumed in order, one per
matching request (`method` "GET", "POST" or "any"). The counts endpoint is not affected.

The fault replaces the answer after the auth check (a bad token still gets its 401) and
counts against the endpoint's request window, as a real request does. A POST's body is
read first and the change is never applied."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from streamd.simulator import problems

RulesMethod = Literal["GET", "POST", "any"]
RULES_METHODS: tuple[str, ...] = ("GET", "POST", "any")
RULES_FAULT_KINDS = (
    "server_error", "unauthorized", "forbidden", "rate_limited", "connection_reset",
)


@dataclass(frozen=True)
class RulesFault:
    kind: str
    status: int = 503
    reset_in: float = 60.0

    def __post_init__(self) -> None:
        if self.kind not in RULES_FAULT_KINDS:
            raise ValueError(
                f"unknown rules fault {self.kind!r}; expected one of {RULES_FAULT_KINDS}"
            )
        if self.kind == "server_error" and not 400 <= self.status <= 599:
            raise ValueError("server_error status must be an HTTP error status")

    @classmethod
    def server_error(cls, status: int = 503) -> RulesFault:
        """A generic `about:blank` problem with this status."""
        return cls("server_error", status=status)

    @classmethod
    def unauthorized(cls) -> RulesFault:
        """401 `about:blank`, without x-rate-limit-* headers, as X answers a bad token."""
        return cls("unauthorized", status=401)

    @classmethod
    def forbidden(cls) -> RulesFault:
        """403 client-forbidden (reason client-not-enrolled)."""
        return cls("forbidden", status=403)

    @classmethod
    def rate_limited(cls, reset_in: float = 60.0) -> RulesFault:
        """429 `about:blank`, x-rate-limit-remaining 0, reset `reset_in` seconds ahead."""
        return cls("rate_limited", status=429, reset_in=reset_in)

    @classmethod
    def connection_reset(cls) -> RulesFault:
        """No answer: the TCP connection is reset (RST)."""
        return cls("connection_reset", status=0)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> RulesFault:
        """Control API / scenario form: {"kind": "server_error", "status": 502},
        {"kind": "rate_limited", "reset_in": 5}, {"kind": "connection_reset"}, ..."""
        kind = str(spec.get("kind", ""))
        if kind == "server_error":
            return cls.server_error(int(spec.get("status", 503)))
        if kind == "rate_limited":
            return cls.rate_limited(float(spec.get("reset_in", 60.0)))
        named = {
            "unauthorized": cls.unauthorized,
            "forbidden": cls.forbidden,
            "connection_reset": cls.connection_reset,
        }
        if kind not in named:
            raise ValueError(
                f"unknown rules fault {kind!r}; expected one of {RULES_FAULT_KINDS}"
            )
        return named[kind]()

    def answer(self, host: str) -> problems.ErrorAnswer | None:
        """The error to send; None for `connection_reset` (nothing is sent)."""
        if self.kind == "connection_reset":
            return None
        if self.kind == "unauthorized":
            return problems.unauthorized()
        if self.kind == "forbidden":
            return problems.client_forbidden(host)
        if self.kind == "rate_limited":
            return problems.rate_limited()
        return problems.generic(self.status)

    def reset_at(self) -> int | None:
        return int(time.time() + self.reset_in) if self.kind == "rate_limited" else None


def parse_rules_fault_spec(spec: dict[str, Any]) -> tuple[RulesFault, str, int]:
    """{"kind": ..., "method": ..., "count": ..., ...fault parameters} -> the parts."""
    method = str(spec.get("method", "any"))
    if method not in RULES_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {RULES_METHODS}")
    count = int(spec.get("count", 1))
    if count < 1:
        raise ValueError("count must be >= 1")
    return RulesFault.from_dict(spec), method, count
