"""Scriptable faults: Fault acts on open streams, ConnectFault answers connect attempts.

Hostile bodies (`Fault.gzip_bomb`): on a gzip stream, a few hundred KB on the wire that
inflate to hundreds of MB, as X never sends but anything between us and X could: blank
lines (each a heartbeat to the client) or one giant line. The inflated form is made and
compressed in 1 MiB pieces, never held whole.

How a stream ends (`end`, for the faults that end it: close, operational_disconnect,
usage_capped):

* "clean": the body ends properly (terminating chunk / END_STREAM);
* "reset": TCP RST (SO_LINGER 0 + abort) once what was sent has reached the client;
* "no_final_chunk": TCP FIN without ending the body (no terminating chunk over HTTP/1.1, no
  END_STREAM over HTTP/2);
* "rst_stream": HTTP/2 RST_STREAM (NO_ERROR, as X was seen doing) on that stream, the
  connection stays up. HTTP/1.1 has no per-request reset: there it is a TCP RST, as "reset".
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from streamd.simulator import problems

StreamEnd = Literal["clean", "reset", "no_final_chunk", "rst_stream"]
STREAM_ENDS: tuple[str, ...] = ("clean", "reset", "no_final_chunk", "rst_stream")
# Faults that end the stream, and so take `end`.
ENDING_FAULTS = ("close", "operational_disconnect", "usage_capped", "recovery_cut")

STREAM_FAULT_KINDS = (
    "operational_disconnect",
    "close",
    "reset_mid_line",
    "stall",
    "split_line",
    "malformed",
    "truncated",
    "duplicate",
    "out_of_order",
    "unknown_message",
    "unknown_fields",
    "partial_errors",
    "slow_reader_drop",
    "usage_capped",
    "raw",
    "gzip_bomb",
    "recovery_cut",
)
# What a gzip bomb inflates to: blank lines ("\r\n", heartbeats to a client), one line, or
# lines of junk ("x", each one for the client's dead-letter topic).
BOMB_SHAPES: tuple[str, ...] = ("heartbeats", "line", "junk_lines")


@dataclass(frozen=True)
class Fault:
    """One in-stream fault. `count` repeats line faults; `seconds` is for stalls; `end` says
    how an ending fault ends the stream (module docstring)."""

    kind: str
    disconnect_type: str = "OperationalDisconnect"
    seconds: float = 0.0
    count: int = 1
    lines: tuple[bytes, ...] = ()
    end: str = "clean"
    inflated_mb: int = 0  # gzip_bomb: inflated size, MiB
    shape: str = "heartbeats"  # gzip_bomb: BOMB_SHAPES
    detail: str | None = None  # operational_disconnect: instead of the type's usual text
    after: int = 0  # recovery_cut: tweets sent before the cut
    notice: bool = False  # recovery_cut: an operational-disconnect line before the end

    def __post_init__(self) -> None:
        if self.kind not in STREAM_FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; expected one of {STREAM_FAULT_KINDS}")
        if self.kind == "operational_disconnect" and (
            self.disconnect_type not in problems.DISCONNECT_TYPES
        ):
            raise ValueError(f"unknown disconnect_type {self.disconnect_type!r}")
        if self.count < 1:
            raise ValueError("count must be >= 1")
        if self.end not in STREAM_ENDS:
            raise ValueError(f"unknown end {self.end!r}; expected one of {STREAM_ENDS}")
        if self.end != "clean" and self.kind not in ENDING_FAULTS:
            raise ValueError(f"`end` applies only to {ENDING_FAULTS}, not {self.kind!r}")
        if self.kind == "raw":
            if not self.lines:
                raise ValueError("a raw fault needs `lines`")
            if any(b"\n" in line for line in self.lines):
                raise ValueError("a raw line must not contain a newline")
        if self.kind == "gzip_bomb":
            if self.shape not in BOMB_SHAPES:
                raise ValueError(f"unknown shape {self.shape!r}; expected one of {BOMB_SHAPES}")
            if not 1 <= self.inflated_mb <= 4096:
                raise ValueError("inflated_mb must be 1..4096")
        if self.after < 0:
            raise ValueError("after must be >= 0")

    @classmethod
    def operational_disconnect(
        cls, disconnect_type: str = "OperationalDisconnect", end: StreamEnd = "clean"
    ) -> Fault:
        """The `{"errors":[operational-disconnect]}` line, then the end of the stream."""
        return cls("operational_disconnect", disconnect_type=disconnect_type, end=end)

    @classmethod
    def usage_capped(cls, end: StreamEnd = "clean") -> Fault:
        """The `{"errors":[usage-capped]}` line, then the end of the stream. It does not
        refuse later connects: `usage_cap` or a ConnectFault does that."""
        return cls("usage_capped", end=end)

    @classmethod
    def close(cls, end: StreamEnd = "clean") -> Fault:
        """End the stream with no message; `end="rst_stream"` is a bare RST_STREAM."""
        return cls("close", end=end)

    @classmethod
    def reset_mid_line(cls) -> Fault:
        return cls("reset_mid_line")

    @classmethod
    def stall(cls, seconds: float) -> Fault:
        return cls("stall", seconds=seconds)

    @classmethod
    def split_line(cls) -> Fault:
        return cls("split_line")

    @classmethod
    def raw(cls, lines: Sequence[bytes]) -> Fault:
        """Send these exact lines (each gets its "\\r\\n"), e.g. fuzzed garbage. A line
        must not contain "\\n": the client would frame it as two lines."""
        return cls("raw", lines=tuple(lines))

    @classmethod
    def gzip_bomb(cls, inflated_mb: int = 200, shape: str = "heartbeats") -> Fault:
        """`inflated_mb` MiB of blank lines (`shape="heartbeats"`), of one line (`"line"`:
        a tweet whose text runs on, then its end and "\r\n") or of junk lines
        (`"junk_lines"`: "x\r\n" over and over), in the stream's gzip: about 1 KB on the
        wire per MiB inflated. On a stream without gzip (the client did not
        accept it, or SimulatorConfig.gzip is off) the same bytes go out as they are."""
        return cls("gzip_bomb", inflated_mb=inflated_mb, shape=shape)

    @classmethod
    def recovery_cut(cls, after: int, end: StreamEnd = "reset", notice: bool = False) -> Fault:
        """A recovery stream (start_time/end_time) ends early, after `after` tweets of its
        window: as `end` says (default a TCP reset, so the client cannot take it for a
        finished recovery, which ends cleanly), after an operational-disconnect line if
        `notice`. It acts on the recovery streams open when injected, else on the next one
        (live streams ignore it); the connection's disconnect_reason is
        "server_disconnect"."""
        return cls("recovery_cut", after=after, end=end, notice=notice)

    @classmethod
    def malformed(cls, count: int = 1) -> Fault:
        return cls("malformed", count=count)

    @classmethod
    def truncated(cls, count: int = 1) -> Fault:
        return cls("truncated", count=count)

    @classmethod
    def duplicate(cls, count: int = 1) -> Fault:
        return cls("duplicate", count=count)

    @classmethod
    def out_of_order(cls) -> Fault:
        """The next two tweets are sent in swapped order (ids not increasing)."""
        return cls("out_of_order")

    @classmethod
    def unknown_message(cls) -> Fault:
        return cls("unknown_message")

    @classmethod
    def unknown_fields(cls) -> Fault:
        return cls("unknown_fields")

    @classmethod
    def partial_errors(cls) -> Fault:
        return cls("partial_errors")

    @classmethod
    def slow_reader_drop(cls) -> Fault:
        return cls("slow_reader_drop")

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Fault:
        """From the control API / scenario form: {"fault": kind, ...parameters}. `lines`
        (raw) is a list of strings, sent UTF-8 encoded."""
        kind = str(spec.get("fault", spec.get("kind", "")))
        unknown = sorted(set(spec) - _SPEC_KEYS)
        if unknown:
            raise ValueError(f"unknown fault parameters {unknown}; expected some of"
                             f" {sorted(_SPEC_KEYS)}")
        detail = spec.get("detail")
        return cls(
            kind,
            disconnect_type=str(spec.get("disconnect_type", "OperationalDisconnect")),
            seconds=float(spec.get("seconds", 0.0)),
            count=int(spec.get("count", 1)),
            lines=_spec_lines(spec.get("lines", [])),
            end=str(spec.get("end", "reset" if kind == "recovery_cut" else "clean")),
            inflated_mb=int(spec.get("inflated_mb", 200 if kind == "gzip_bomb" else 0)),
            shape=str(spec.get("shape", "heartbeats")),
            detail=None if detail is None else str(detail),
            after=int(spec.get("after", 0)),
            notice=bool(spec.get("notice", False)),
        )


# Keys of the control API / scenario form of a Fault ("at" is the scenario's time).
_SPEC_KEYS = frozenset({
    "fault", "kind", "disconnect_type", "seconds", "count", "lines", "end", "inflated_mb",
    "shape", "detail", "after", "notice", "at",
})


def _spec_lines(value: Any) -> tuple[bytes, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError("`lines` must be a list of strings")
    if not all(isinstance(line, str) for line in value):
        raise ValueError("`lines` must be a list of strings")
    return tuple(line.encode("utf-8") for line in value)


_V1_OVER_CAPACITY = (130, "Twitter is over capacity.")


@dataclass(frozen=True)
class ConnectFault:
    """An answer given to a connect attempt instead of the 200 stream.

    `problem` names a builder in problems.py; `v1` holds (code, message) for legacy bodies;
    `reset_in` sets x-rate-limit-remaining to 0 and the reset `reset_in` seconds ahead.
    `problem="hang"` (status 0) is no answer at all: see `hang`.
    """

    http_status: int
    problem: str = "generic"
    v1: tuple[int, str] | None = None
    reset_in: float | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def status(cls, status: int, body: str | None = None) -> ConnectFault:
        """`body`: None/"about:blank" for a generic problem, "v1_over_capacity" for the
        v1.1 code-130 body, or a problem name (see `answer`)."""
        if body == "v1_over_capacity":
            return cls(status, problem="v1", v1=_V1_OVER_CAPACITY)
        if body in (None, "about:blank", "generic"):
            return cls(status)
        return cls(status, problem=body)

    @classmethod
    def server_error(cls, status: int = 503) -> ConnectFault:
        return cls(status)

    @classmethod
    def hang(cls) -> ConnectFault:
        """Accept the request and never send the response headers, until the client goes
        away or the simulator stops. Recorded in the connect log with status 0; it holds
        no stream slot."""
        return cls(0, problem="hang")

    @property
    def hangs(self) -> bool:
        return self.problem == "hang"

    @classmethod
    def over_capacity(cls) -> ConnectFault:
        return cls(503, problem="v1", v1=_V1_OVER_CAPACITY)

    @classmethod
    def rate_limited(cls, reset_in: float = 60.0) -> ConnectFault:
        return cls(429, problem="rate_limited", reset_in=reset_in)

    @classmethod
    def enhance_your_calm(cls) -> ConnectFault:
        return cls(420, problem="v1", v1=(420, "Enhance Your Calm"))

    @classmethod
    def usage_capped(cls) -> ConnectFault:
        return cls(429, problem="usage_capped")

    @classmethod
    def too_many_connections(cls) -> ConnectFault:
        return cls(429, problem="too_many_connections")

    @classmethod
    def no_rules(cls) -> ConnectFault:
        return cls(409, problem="no_rules")

    @classmethod
    def unauthorized(cls) -> ConnectFault:
        return cls(401, problem="unauthorized")

    @classmethod
    def client_forbidden(cls) -> ConnectFault:
        return cls(403, problem="client_forbidden")

    @classmethod
    def unsupported_authentication(cls) -> ConnectFault:
        return cls(403, problem="unsupported_authentication")

    @classmethod
    def invalid_request(cls, message: str = "Invalid request.") -> ConnectFault:
        return cls(400, problem="invalid_request", extra={"message": message})

    @classmethod
    def v1_error(cls, status: int, code: int, message: str) -> ConnectFault:
        return cls(status, problem="v1", v1=(code, message))

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> ConnectFault:
        """Control API / scenario form, e.g. {"kind": "rate_limited", "reset_in": 2},
        {"kind": "status", "status": 503, "body": "v1_over_capacity"},
        {"kind": "v1", "status": 403, "code": 453, "message": "..."}."""
        kind = str(spec.get("kind", "status"))
        if kind == "status":
            body = spec.get("body")
            return cls.status(int(spec["status"]), None if body is None else str(body))
        if kind == "v1":
            return cls.v1_error(int(spec["status"]), int(spec["code"]), str(spec["message"]))
        if kind == "rate_limited":
            return cls.rate_limited(float(spec.get("reset_in", 60.0)))
        if kind == "server_error":
            return cls.server_error(int(spec.get("status", 503)))
        if kind == "invalid_request":
            return cls.invalid_request(str(spec.get("message", "Invalid request.")))
        named = {
            "over_capacity": cls.over_capacity,
            "enhance_your_calm": cls.enhance_your_calm,
            "usage_capped": cls.usage_capped,
            "too_many_connections": cls.too_many_connections,
            "no_rules": cls.no_rules,
            "unauthorized": cls.unauthorized,
            "client_forbidden": cls.client_forbidden,
            "unsupported_authentication": cls.unsupported_authentication,
            "hang": cls.hang,
        }
        if kind not in named:
            raise ValueError(f"unknown connect fault kind {kind!r}")
        return named[kind]()

    def answer(self, host: str, product_name: str) -> problems.ErrorAnswer:
        if self.problem == "v1" and self.v1 is not None:
            return problems.v1_error(self.http_status, self.v1[0], self.v1[1])
        if self.problem == "rate_limited":
            return problems.rate_limited()
        if self.problem == "usage_capped":
            return problems.usage_capped(host, product_name)
        if self.problem == "too_many_connections":
            return problems.too_many_connections(host)
        if self.problem == "no_rules":
            return problems.no_rules(host)
        if self.problem == "unauthorized":
            return problems.unauthorized()
        if self.problem == "client_forbidden":
            return problems.client_forbidden(host)
        if self.problem == "unsupported_authentication":
            return problems.unsupported_authentication(host)
        if self.problem == "invalid_request":
            message = self.extra.get("message", "Invalid request.")
            return problems.invalid_request(host, [{"parameters": {}, "message": message}])
        return problems.generic(self.http_status)

    def reset_at(self) -> int | None:
        return None if self.reset_in is None else int(time.time() + self.reset_in)
