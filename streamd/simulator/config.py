"""SimulatorConfig: every knob of the fake X filtered-stream server, and the tier table."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Tier = Literal["free", "basic", "pro", "enterprise"]
ConnectionPolicy = Literal["reject_new", "kick_old"]
# How a stream terminated through the Connections API ends (connections.py).
TerminateEnding = Literal["operational_disconnect", "close", "reset"]
TERMINATE_ENDINGS: tuple[str, ...] = ("operational_disconnect", "close", "reset")
# The Connections API: served, refused with 403 client-forbidden, or absent (404).
ConnectionsApiMode = Literal["on", "forbidden", "absent"]
CONNECTIONS_API_MODES: tuple[str, ...] = ("on", "forbidden", "absent")
# When the timeline begins: at the first stream connect answered 200 (or the first advance),
# or when the simulator starts.
TimelineStart = Literal["first_connect", "start"]
TIMELINE_STARTS: tuple[str, ...] = ("first_connect", "start")
# Most tweets one advance creates (the rest of the interval stays empty).
ADVANCE_MAX_TWEETS = 200_000
# The OpenAPI's partition ranges of the language firehoses.
LANG_PARTITIONS_MAX: dict[str, int] = {"en": 8, "ja": 2, "ko": 2, "pt": 2}
# Which tiers may connect to the sample, sample10 and firehose endpoints (the language
# firehoses are "firehose"); the filtered stream follows the tier's own access.
DEFAULT_ENDPOINT_TIERS: dict[str, tuple[str, ...]] = {
    "sample": ("pro", "enterprise"),
    "sample10": ("enterprise",),
    "firehose": ("enterprise",),
}


@dataclass(frozen=True)
class TierLimits:
    """What an access tier allows on the filtered stream, after X's documentation
    (https://docs.x.com/x-api/posts/filtered-stream/introduction)."""

    stream_access: bool
    connections: int
    max_rules: int
    rule_length: int


TIERS: dict[str, TierLimits] = {
    # Free and Basic never had the filtered stream: connects and rule calls get 403.
    "free": TierLimits(stream_access=False, connections=0, max_rules=0, rule_length=0),
    "basic": TierLimits(stream_access=False, connections=0, max_rules=0, rule_length=0),
    "pro": TierLimits(stream_access=True, connections=1, max_rules=1000, rule_length=1024),
    "enterprise": TierLimits(stream_access=True, connections=2, max_rules=25000, rule_length=2048),
}


@dataclass
class SimulatorConfig:
    """Start-up settings. Fields that can change live go through Simulator.set_* methods.

    `rule_propagation_delay` defaults to 20 s, as X ("Most rule additions take effect about
    20 seconds or less"): a test that needs rules in force at once sets it to 0.

    `backfill_tiers`: the tiers on which `backfill_minutes` is honoured. X documents it as
    Enterprise-only; elsewhere it is accepted (still range-checked) and ignored, our
    assumption as no refusal was ever captured.

    Connections (connections.py): a stream holds one of the tier's `connections` slots, or
    `connection_limit` when set. A client that goes away without the server ending its
    stream leaves a zombie that keeps the slot for `zombie_seconds` (0: frees it at once).
    `terminate_ending` is how a stream terminated through the Connections API ends;
    `connections_api` serves that API ("on"), refuses it ("forbidden": 403) or hides it
    ("absent": 404). The `connections_*_limit` fields are its request windows.

    The timeline (feed.py, README "Timeline, recovery and partitions"): tweets are created
    at `tweets_per_second` on a simulated clock whether or not a client is connected, from
    the first stream connect or advance (`timeline_start` "first_connect") or from the start
    ("start"). `firehose_partitions` (1-20) and `lang_firehose_partitions` split the
    firehoses; `endpoint_tiers` says which tiers reach the sample, sample10 and firehose
    endpoints; recovery (start_time/end_time) is served on `recovery_tiers`, at most
    `recovery_max_hours` back, `recovery_jobs_limit` jobs at once per endpoint and
    partition, sent at `recovery_rate` tweets/s.

    TLS: with `tls_certfile` (and `tls_keyfile` unless the key is in the same PEM) it serves
    HTTPS; `http2=True` then offers HTTP/2 by ALPN ("h2"), HTTP/1.1 stays available on the
    same port for clients that do not offer h2. HTTP/2 needs TLS (X serves h2 only over
    TLS; there is no cleartext h2c here).
    """

    host: str = "127.0.0.1"
    port: int = 0
    tokens: tuple[str, ...] = ("test-token",)
    user_context_tokens: tuple[str, ...] = ("user-token",)
    tier: Tier = "pro"
    tweets_per_second: float = 50.0
    total_tweets: int | None = None
    heartbeat_interval: float = 20.0
    connection_policy: ConnectionPolicy = "reject_new"
    connect_window_limit: int = 50
    connect_window_seconds: float = 900.0
    usage_cap: int | None = None
    rule_propagation_delay: float = 20.0
    problem_host: str = "api.twitter.com"
    gzip: bool = False
    replay_file: str | Path | None = None
    scenario_file: str | Path | None = None
    seed: int = 0
    match_all: bool = False
    # Not in the original contract; safe defaults. A stream whose socket has refused data
    # for this long is dropped, as X drops slow readers.
    slow_reader_seconds: float = 5.0
    # Rules endpoints' request windows (https://docs.x.com/x-api/fundamentals/rate-limits).
    rules_get_limit: int = 450
    rules_post_limit: int = 100
    rules_window_seconds: float = 900.0
    backfill_tiers: tuple[str, ...] = ("enterprise",)
    tls_certfile: str | Path | None = None
    tls_keyfile: str | Path | None = None
    http2: bool = False
    # Connections API and zombie connections (live: Simulator.configure).
    connection_limit: int | None = None
    zombie_seconds: float = 0.0
    terminate_ending: TerminateEnding = "operational_disconnect"
    connections_api: ConnectionsApiMode = "on"
    # Request windows of the Connections API. X documents only DELETE /2/connections/all
    # (25 per 15 min); the others are our assumption.
    connections_get_limit: int = 300
    connections_delete_limit: int = 50  # DELETE /2/connections (by uuids)
    connections_delete_endpoint_limit: int = 50  # DELETE /2/connections/{endpoint_id}
    connections_delete_all_limit: int = 25  # DELETE /2/connections/all
    connections_window_seconds: float = 900.0
    # The timeline, time compression, backfill, recovery and the volume endpoints (README,
    # "Timeline, recovery and partitions"). Live: Simulator.configure.
    timeline_start: TimelineStart = "first_connect"
    firehose_partitions: int = 20
    lang_firehose_partitions: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict(LANG_PARTITIONS_MAX))
    endpoint_tiers: dict[str, tuple[str, ...]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_ENDPOINT_TIERS))
    recovery_tiers: tuple[str, ...] = ("enterprise",)
    # Concurrent recovery connections per app and stream (X: "Filtered Stream allows 2
    # concurrent recovery jobs"); they hold no live connection slot.
    recovery_jobs_limit: int = 2
    recovery_max_hours: float = 24.0
    # Tweets per second a recovery stream sends its window at (inf: as fast as the client
    # reads). A finite rate keeps a job open long enough to be interrupted.
    recovery_rate: float = float("inf")

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise ValueError(f"unknown tier {self.tier!r}; expected one of {sorted(TIERS)}")
        if self.connection_policy not in ("reject_new", "kick_old"):
            raise ValueError(f"unknown connection_policy {self.connection_policy!r}")
        if self.tweets_per_second < 0:
            raise ValueError("tweets_per_second must be >= 0")
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be > 0")
        if self.rule_propagation_delay < 0:
            raise ValueError("rule_propagation_delay must be >= 0")
        self.backfill_tiers = tuple(self.backfill_tiers)
        unknown = sorted(set(self.backfill_tiers) - set(TIERS))
        if unknown:
            raise ValueError(f"unknown backfill_tiers {unknown}; expected tiers of {sorted(TIERS)}")
        if self.tls_keyfile is not None and self.tls_certfile is None:
            raise ValueError("tls_keyfile needs tls_certfile")
        if self.http2 and self.tls_certfile is None:
            raise ValueError("http2 needs TLS (tls_certfile): X serves HTTP/2 only over TLS")
        check_connection_limit(self.connection_limit)
        check_zombie_seconds(self.zombie_seconds)
        if self.terminate_ending not in TERMINATE_ENDINGS:
            raise ValueError(f"unknown terminate_ending {self.terminate_ending!r}; expected"
                             f" one of {TERMINATE_ENDINGS}")
        if self.connections_api not in CONNECTIONS_API_MODES:
            raise ValueError(f"unknown connections_api {self.connections_api!r}; expected"
                             f" one of {CONNECTIONS_API_MODES}")
        if self.timeline_start not in TIMELINE_STARTS:
            raise ValueError(f"unknown timeline_start {self.timeline_start!r}; expected one of"
                             f" {TIMELINE_STARTS}")
        self.firehose_partitions = check_partitions(self.firehose_partitions, 20)
        self.lang_firehose_partitions = check_lang_partitions(self.lang_firehose_partitions)
        self.endpoint_tiers = check_endpoint_tiers(self.endpoint_tiers)
        self.recovery_tiers = check_tiers("recovery_tiers", self.recovery_tiers)
        self.recovery_jobs_limit = check_count("recovery_jobs_limit", self.recovery_jobs_limit)
        if not 0 < self.recovery_max_hours < float("inf"):
            raise ValueError("recovery_max_hours must be a number > 0")
        if not self.recovery_rate > 0:
            raise ValueError("recovery_rate must be > 0 (inf: as fast as the client reads)")
        self.tokens = tuple(self.tokens)
        self.user_context_tokens = tuple(self.user_context_tokens)

    def replace(self, **changes: object) -> SimulatorConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def check_connection_limit(value: object) -> int | None:
    """None (the tier's slots) or a whole number >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"connection_limit must be null or an integer >= 0, not {value!r}")
    return value


def check_zombie_seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"zombie_seconds must be a number >= 0, not {value!r}")
    seconds = float(value)
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"zombie_seconds must be a finite number >= 0, not {value!r}")
    return seconds


def check_tiers(name: str, value: object) -> tuple[str, ...]:
    """A list of tier names."""
    if isinstance(value, str) or not isinstance(value, list | tuple) or not all(
        isinstance(t, str) and t in TIERS for t in value
    ):
        raise ValueError(f"{name} must be a list of tiers of {sorted(TIERS)}, not {value!r}")
    return tuple(value)


def check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, not {value!r}")
    return value


def check_partitions(value: object, top: int, name: str = "firehose_partitions") -> int:
    """A partition count: 1..`top` (the OpenAPI's range of `partition`)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise ValueError(f"{name} must be an integer from 1 to {top}, not {value!r}")
    return value


def check_lang_partitions(value: object) -> dict[str, int]:
    """{lang: partitions} for some of en, ja, ko, pt; the others keep the OpenAPI's."""
    if not isinstance(value, dict) or not set(value) <= set(LANG_PARTITIONS_MAX):
        raise ValueError("lang_firehose_partitions must map some of"
                         f" {sorted(LANG_PARTITIONS_MAX)} to partition counts, not {value!r}")
    merged = dict(LANG_PARTITIONS_MAX)
    for lang, count in value.items():
        merged[lang] = check_partitions(count, LANG_PARTITIONS_MAX[lang],
                                        f"lang_firehose_partitions[{lang!r}]")
    return merged


def check_endpoint_tiers(value: object) -> dict[str, tuple[str, ...]]:
    """{family: tiers} for some of sample, sample10, firehose; the others keep their
    defaults."""
    if not isinstance(value, dict) or not set(value) <= set(DEFAULT_ENDPOINT_TIERS):
        raise ValueError("endpoint_tiers must map some of"
                         f" {sorted(DEFAULT_ENDPOINT_TIERS)} to lists of tiers, not {value!r}")
    merged = dict(DEFAULT_ENDPOINT_TIERS)
    for family, tiers in value.items():
        merged[family] = check_tiers(f"endpoint_tiers[{family!r}]", tiers)
    return merged
