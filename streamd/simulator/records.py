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
    """One connect attempt. `status` 0: accepted and never answered (ConnectFault.hang)."""

    at: float
    status: int
    problem_type: str | None
    detail: str | None
    query: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RulesRequestRecord:
    """One request to GET/POST /2/tweets/search/stream/rules, as answered. `status` 0: no
    answer (an injected connection reset); `fault` names the injected RulesFault, if any."""

    at: float
    method: str
    status: int
    problem_type: str | None = None
    fault: str | None = None
