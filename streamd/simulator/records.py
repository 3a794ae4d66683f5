"""Plain records the simulator hands back to tests: rules, sent lines, connect attempts."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rule:
    id: str
    value: str
    tag: str | None = None


@dataclass(frozen=True)
class SentTweet:
    """A tweet line as sent on the wire, without the trailing CRLF."""

    id: str
    line: bytes


@dataclass(frozen=True)
class SentLine:
    """A non-tweet line (malformed, truncated, unknown message, disconnect notice, ...)."""

    kind: str
    line: bytes


@dataclass(frozen=True)
class ConnectRecord:
    at: float
    status: int
    problem_type: str | None
    detail: str | None
    query: dict[str, str] = field(default_factory=dict)
