"""Plain records the simulator hands back to tests: rules, sent lines, connect attempts,
connections, Connections API requests and the timeline."""

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
    """One connect attempt. `status` 0: accepted and never answered (ConnectFault.hang).
    `connection_id`: the connection a 200 created (see ConnectionRecord); `path`: the
    stream endpoint it asked for. `at` is real time (time.time()), not the simulated
    clock."""

    at: float
    status: int
    problem_type: str | None
    detail: str | None
    query: dict[str, str] = field(default_factory=dict)
    connection_id: str | None = None
    path: str = "/2/tweets/search/stream"


@dataclass(frozen=True)
class RulesRequestRecord:
    """One request to GET/POST /2/tweets/search/stream/rules, as answered. `status` 0: no
    answer (an injected connection reset); `fault` names the injected RulesFault, if any."""

    at: float
    method: str
    status: int
    problem_type: str | None = None
    fault: str | None = None


@dataclass(frozen=True)
class ConnectionRecord:
    """One stream connection as X's Connections API knows it (a snapshot). The times are
    rendered as the API renders them (RFC 3339 UTC with milliseconds); the `*_epoch` fields
    hold the same instants as UNIX seconds. `active`: it holds a connection slot (its stream
    is open, or it is a zombie); `zombie`: active although its client has gone away."""

    id: str
    endpoint_name: str
    client_ip: str | None
    connected_at: str
    disconnected_at: str | None
    disconnect_reason: str | None
    active: bool
    zombie: bool
    connected_at_epoch: float
    disconnected_at_epoch: float | None
    partition: int | None = None  # the `partition` it connected with, if any
    recovery: bool = False  # a start_time/end_time recovery connection


@dataclass(frozen=True)
class ConnectionsRequestRecord:
    """One request to the Connections API (/2/connections...), as answered. `uuids`: the
    ids a DELETE /2/connections asked for (None when its body was not a list of strings,
    and for the other requests)."""

    at: float
    method: str
    path: str
    query: dict[str, str]
    status: int
    uuids: list[str] | None = None


@dataclass(frozen=True)
class TimelineTweet:
    """One tweet of the timeline (every tweet the simulated world created, connected or
    not). `created_at`: epoch seconds (ms precision, as its id encodes it); `partition`: its
    firehose partition (of `firehose_partitions`); `matching`: it matched a rule when it was
    created, so the filtered stream delivers it; `in_sample` / `sample10_partition`: its
    place in the 1% and 10% samples; `line`: as a stream without field parameters sends it
    (the filtered stream's form, with matching_rules, when `matching`)."""

    id: str
    created_at: float
    partition: int
    lang: str | None
    matching: bool
    in_sample: bool
    sample10_partition: int | None
    line: bytes
