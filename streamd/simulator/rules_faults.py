"""RulesFault: the answer given to one `GET`/`POST /2/tweets/search/stream/rules` request
instead of the real one. Injected faults queue up and are consumed in order, one per
matching request (`method` "GET", "POST" or "any"). The counts endpoint is not affected.

The fault replaces the answer after the auth check (a bad token still gets its 401) and
counts against the endpoint's request window, as a real request does. A POST's body is
read first and the change is never applied.

`oversized` is a hostile answer: a 200 whose JSON body of rules runs to `megabytes` MiB
(gzip-encoded when the client accepts gzip, about 1 KB on the wire per MiB). It is made
while it is sent, 1 MiB at a time, and stops as soon as the client hangs up, so a client
that refuses it early costs the simulator next to nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from streamd.simulator import problems

RulesMethod = Literal["GET", "POST", "any"]
RULES_METHODS: tuple[str, ...] = ("GET", "POST", "any")
RULES_FAULT_KINDS = (
    "server_error", "unauthorized", "forbidden", "rate_limited", "connection_reset",
    "oversized",
)


@dataclass(frozen=True)
class RulesFault:
    kind: str
    status: int = 503
    reset_in: float = 60.0
    megabytes: int = 0  # oversized: the body's size, MiB

    def __post_init__(self) -> None:
        if self.kind not in RULES_FAULT_KINDS:
            raise ValueError(
                f"unknown rules fault {self.kind!r}; expected one of {RULES_FAULT_KINDS}"
            )
        if self.kind == "server_error" and not 400 <= self.status <= 599:
            raise ValueError("server_error status must be an HTTP error status")
        if self.kind == "oversized" and not 1 <= self.megabytes <= 4096:
            raise ValueError("oversized megabytes must be 1..4096")

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
    def oversized(cls, megabytes: int = 300) -> RulesFault:
        """200 with a body of rules `megabytes` MiB long (valid JSON, made as it is sent)."""
        return cls("oversized", status=200, megabytes=megabytes)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> RulesFault:
        """Control API / scenario form: {"kind": "server_error", "status": 502},
        {"kind": "rate_limited", "reset_in": 5}, {"kind": "connection_reset"}, ..."""
        kind = str(spec.get("kind", ""))
        if kind == "server_error":
            return cls.server_error(int(spec.get("status", 503)))
        if kind == "rate_limited":
            return cls.rate_limited(float(spec.get("reset_in", 60.0)))
        if kind == "oversized":
            return cls.oversized(int(spec.get("megabytes", 300)))
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
        """The error to send; None for `connection_reset` (nothing is sent) and
        `oversized` (a 200, see `oversized_body`)."""
        if self.kind in ("connection_reset", "oversized"):
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


_PIECE = 1 << 20


def oversized_body(megabytes: int) -> Iterator[bytes]:
    """A GET rules answer `megabytes` MiB long, 1 MiB at a time: `{"data":[` rules of about
    1 KB each `],"meta":{...}}`. The same 1 MiB of rules repeats (ids included): a client
    that reads it all would hold every copy."""
    value = b"(cat OR kitten) has:images lang:en -is:retweet " + b"x" * 900
    entries: list[bytes] = []
    size = 0
    number = 0
    while size < _PIECE:
        entry = (b'{"id":"%d","value":"%s %d","tag":"t%d"},'
                 % (1_600_000_000_000_000_000 + number, value, number, number))
        entries.append(entry)
        size += len(entry)
        number += 1
    block = b"".join(entries)
    yield b'{"data":['
    for _ in range(megabytes):
        yield block
    yield (b'{"id":"1","value":"last","tag":"t"}],"meta":{"sent":"2024-01-15T10:30:00.000Z",'
           b'"result_count":%d}}' % (megabytes * number + 1))
