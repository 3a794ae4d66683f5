"""Operations behind both the Python API (Simulator.*) and the /_simulator/ HTTP endpoints."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from streamd.simulator import connections
from streamd.simulator.config import (
    CONNECTIONS_API_MODES,
    TERMINATE_ENDINGS,
    TIERS,
    check_connection_limit,
    check_count,
    check_endpoint_tiers,
    check_lang_partitions,
    check_partitions,
    check_tiers,
    check_zombie_seconds,
)
from streamd.simulator.endpoints import ENDPOINT_NAMES, Share, partition_count
from streamd.simulator.faults import Fault
from streamd.simulator.records import Rule, TimelineTweet
from streamd.simulator.rule_syntax import RuleSyntaxError, compile_rule
from streamd.simulator.state import SimulatorState

if TYPE_CHECKING:
    from streamd.simulator.stream import StreamSession

SETTABLE = (
    "tier", "tweets_per_second", "total_tweets", "heartbeat_interval", "connection_policy",
    "usage_cap", "match_all", "rule_propagation_delay", "backfill_tiers",
    "connection_limit", "zombie_seconds", "terminate_ending", "connections_api",
    "firehose_partitions", "lang_firehose_partitions", "endpoint_tiers", "recovery_tiers",
    "recovery_jobs_limit", "recovery_max_hours", "recovery_rate",
)


def add_rules(
    state: SimulatorState, items: Iterable[tuple[str, str | None]], immediate: bool = False
) -> list[str]:
    """Server-side add that bypasses HTTP, tier limits and rate limits; returns the ids of the
    new rules in order (an existing identical value returns the existing id). `immediate`:
    the whole rule set reaches the stream at once instead of after the propagation delay."""
    pairs = list(items)
    for value, _ in pairs:
        try:
            compile_rule(value, 0)
        except RuleSyntaxError as exc:
            raise ValueError(f"invalid rule {value!r}: {exc.details}") from None
    with state.lock:
        # One add for the whole list: every add snapshots the rule set for the matcher.
        state.rules.add(
            pairs, host=state.config.problem_host, max_rules=10**9, max_length=0,
        )
        ids = [state.rules.id_for_value(value) for value, _ in pairs]
        if immediate:
            state.rules.take_effect_now()
    state.wake_all()
    return ids


def delete_rules(state: SimulatorState, ids: Iterable[str]) -> None:
    with state.lock:
        state.rules.delete(host=state.config.problem_host, ids=list(ids))
    state.wake_all()


def rules(state: SimulatorState) -> list[Rule]:
    with state.lock:
        return state.rules.all()


def parse_rate(value: Any) -> float:
    if value is None or (isinstance(value, str) and value.lower() in ("inf", "infinity")):
        return math.inf
    rate = float(value)
    if rate < 0:
        raise ValueError("tweets_per_second must be >= 0")
    return rate


def configure(state: SimulatorState, changes: dict[str, Any]) -> None:
    unknown = sorted(set(changes) - set(SETTABLE))
    if unknown:
        raise ValueError(f"cannot change {unknown}; settable: {list(SETTABLE)}")
    with state.lock:
        settings = state.settings
        if "tier" in changes:
            if changes["tier"] not in TIERS:
                raise ValueError(f"unknown tier {changes['tier']!r}")
            settings.tier = str(changes["tier"])
        if "tweets_per_second" in changes:
            rate = parse_rate(changes["tweets_per_second"])
            if state.feed is not None:
                state.feed.reschedule()  # the old rate up to now, the new one from now
            settings.tweets_per_second = rate
        if "total_tweets" in changes:
            total = changes["total_tweets"]
            settings.total_tweets = None if total is None else int(total)
        if "heartbeat_interval" in changes:
            interval = float(changes["heartbeat_interval"])
            if interval <= 0:
                raise ValueError("heartbeat_interval must be > 0")
            settings.heartbeat_interval = interval
        if "connection_policy" in changes:
            if changes["connection_policy"] not in ("reject_new", "kick_old"):
                raise ValueError(f"unknown connection_policy {changes['connection_policy']!r}")
            settings.connection_policy = str(changes["connection_policy"])
        if "usage_cap" in changes:
            cap = changes["usage_cap"]
            settings.usage_cap = None if cap is None else int(cap)
        if "match_all" in changes:
            settings.match_all = bool(changes["match_all"])
        if "rule_propagation_delay" in changes:
            delay = float(changes["rule_propagation_delay"])
            if delay < 0:
                raise ValueError("rule_propagation_delay must be >= 0")
            state.rules.propagation_delay = delay
        if "backfill_tiers" in changes:
            tiers = changes["backfill_tiers"]
            if isinstance(tiers, str) or not all(t in TIERS for t in tiers):
                raise ValueError(f"backfill_tiers must be a list of tiers of {sorted(TIERS)}")
            settings.backfill_tiers = tuple(str(t) for t in tiers)
        if "connection_limit" in changes:
            settings.connection_limit = check_connection_limit(changes["connection_limit"])
        if "zombie_seconds" in changes:
            # Applies to clients that go away from now on; a zombie keeps its expiry.
            state.connections.zombie_seconds = check_zombie_seconds(changes["zombie_seconds"])
        if "terminate_ending" in changes:
            if changes["terminate_ending"] not in TERMINATE_ENDINGS:
                raise ValueError(f"unknown terminate_ending {changes['terminate_ending']!r};"
                                 f" expected one of {TERMINATE_ENDINGS}")
            settings.terminate_ending = str(changes["terminate_ending"])
        if "connections_api" in changes:
            if changes["connections_api"] not in CONNECTIONS_API_MODES:
                raise ValueError(f"unknown connections_api {changes['connections_api']!r};"
                                 f" expected one of {CONNECTIONS_API_MODES}")
            settings.connections_api = str(changes["connections_api"])
        if "firehose_partitions" in changes:
            settings.firehose_partitions = check_partitions(changes["firehose_partitions"], 20)
        if "lang_firehose_partitions" in changes:
            settings.lang_firehose_partitions = check_lang_partitions(
                changes["lang_firehose_partitions"])
        if "endpoint_tiers" in changes:
            settings.endpoint_tiers = check_endpoint_tiers(changes["endpoint_tiers"])
        if "recovery_tiers" in changes:
            settings.recovery_tiers = check_tiers("recovery_tiers", changes["recovery_tiers"])
        if "recovery_jobs_limit" in changes:
            settings.recovery_jobs_limit = check_count("recovery_jobs_limit",
                                                       changes["recovery_jobs_limit"])
        if "recovery_max_hours" in changes:
            hours = changes["recovery_max_hours"]
            if isinstance(hours, bool) or not isinstance(hours, int | float) or not (
                0 < hours < math.inf
            ):
                raise ValueError(f"recovery_max_hours must be a number > 0, not {hours!r}")
            settings.recovery_max_hours = float(hours)
        if "recovery_rate" in changes:
            recovery_rate = parse_rate(changes["recovery_rate"])
            if recovery_rate <= 0:
                raise ValueError("recovery_rate must be > 0 (null or \"inf\": no limit)")
            settings.recovery_rate = recovery_rate
    state.wake_all()


def settings_json(state: SimulatorState) -> dict[str, Any]:
    with state.lock:
        s = state.settings
        rate = s.tweets_per_second
        return {
            "tier": s.tier,
            "tweets_per_second": None if math.isinf(rate) else rate,
            "total_tweets": s.total_tweets,
            "heartbeat_interval": s.heartbeat_interval,
            "connection_policy": s.connection_policy,
            "usage_cap": s.usage_cap,
            "match_all": s.match_all,
            "rule_propagation_delay": state.rules.propagation_delay,
            "backfill_tiers": list(s.backfill_tiers),
            "connection_limit": s.connection_limit,
            "zombie_seconds": state.connections.zombie_seconds,
            "terminate_ending": s.terminate_ending,
            "connections_api": s.connections_api,
            "firehose_partitions": s.firehose_partitions,
            "lang_firehose_partitions": dict(s.lang_firehose_partitions),
            "endpoint_tiers": {k: list(v) for k, v in s.endpoint_tiers.items()},
            "recovery_tiers": list(s.recovery_tiers),
            "recovery_jobs_limit": s.recovery_jobs_limit,
            "recovery_max_hours": s.recovery_max_hours,
            "recovery_rate": None if math.isinf(s.recovery_rate) else s.recovery_rate,
            "now": state.clock.now(),
        }


def terminate_connections(state: SimulatorState, ids: Iterable[str]) -> dict[str, Any]:
    """Terminate connections as DELETE /2/connections would, without its checks or window;
    returns the answer's `data` (successful_kills, failed_kills, results)."""
    with state.lock:
        ending = state.settings.terminate_ending
    return state.connections.kill(list(ids), ending)


def advance(
    state: SimulatorState, seconds: Any, keep_connections: bool = False
) -> tuple[dict[str, Any], list[StreamSession]]:
    """Move the simulated clock `seconds` ahead, creating the tweets of that interval at
    once (Feed.advance). Unless `keep_connections`, every live stream is ended first
    (cleanly, disconnect_reason "clock_advanced", its connection inactive at once): it
    sends what was created before and none of the interval's tweets. Recovery streams go on
    (their window is in the past). Returns {"from", "to" (the interval, (from, to]), "now",
    "created", "ended": [connection ids]} and the sessions that will end."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not (
        0 <= seconds < math.inf
    ):
        raise ValueError(f"seconds must be a finite number >= 0, not {seconds!r}")
    feed = state.feed
    assert feed is not None
    ending: list[StreamSession] = []
    ended: list[str] = []
    with state.lock:
        feed.catch_up()
        if not keep_connections:
            position = feed.position()
            for session in state.sessions:
                if session.finished or session.recovery is not None:
                    continue
                session.stop_at(position, connections.CLOCK_ADVANCED)
                ending.append(session)
                if session.connection is not None:
                    state.connections.server_ended(session.connection,
                                                   connections.CLOCK_ADVANCED)
                    ended.append(session.connection.id)
        began, created = feed.advance(float(seconds))
        now = state.clock.now()
    state.wake_all()
    return {"from": began, "to": began + float(seconds), "now": now, "created": created,
            "ended": ended}, ending


def share_for(state: SimulatorState, name: str | None, partition: int | None) -> Share | None:
    """The share of a stream endpoint (its path, Connections API name or short name:
    endpoints.ENDPOINT_NAMES) and partition (None: all its partitions), for timeline
    queries; None for the whole timeline."""
    if name is None:
        if partition is not None:
            raise ValueError("partition needs an endpoint")
        return None
    endpoint = ENDPOINT_NAMES.get(name)
    if endpoint is None:
        raise ValueError(f"unknown stream endpoint {name!r}; expected a path or one of"
                         f" {sorted(n for n in ENDPOINT_NAMES if not n.startswith('/'))}")
    with state.lock:
        count = partition_count(endpoint, state.settings.firehose_partitions,
                                state.settings.lang_firehose_partitions)
    if endpoint.max_partition is None:
        if partition is not None:
            raise ValueError(f"{name} has no partitions")
        return Share(endpoint)
    if partition is not None and not 1 <= partition <= count:
        raise ValueError(f"{name} has partitions 1 to {count}, not {partition}")
    return Share(endpoint, partition, count)


def backdate(state: SimulatorState, seconds: Any) -> dict[str, Any]:
    """The tweets of the last `seconds`, read by nobody, created at once (Feed.backdate);
    the clock stays. Returns {"from", "to", "created"}: the interval is [from, to)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not (
        0 <= seconds < math.inf
    ):
        raise ValueError(f"seconds must be a finite number >= 0, not {seconds!r}")
    feed = state.feed
    assert feed is not None
    began, ended, created = feed.backdate(float(seconds))
    return {"from": began, "to": ended, "created": created}


def reset_connection(state: SimulatorState, connection_id: str, end: str = "reset") -> bool:
    """End the open stream of a connection as the network would (`end`: a StreamEnd, by
    default a TCP reset; Fault.close): its disconnect_reason is "server_disconnect". False
    when no open stream has that connection id."""
    fault = Fault.close(end=end)  # type: ignore[arg-type]  # checked by Fault
    with state.lock:
        for session in state.sessions:
            if (not session.finished and session.connection is not None
                    and session.connection.id == connection_id):
                session.faults.append(fault)
                break
        else:
            return False
    state.wake_all()
    return True


def timeline(
    state: SimulatorState,
    start: float | None = None,
    end: float | None = None,
    endpoint: str | None = None,
    partition: int | None = None,
) -> list[TimelineTweet]:
    feed = state.feed
    assert feed is not None
    return feed.timeline(start, end, share_for(state, endpoint, partition))


def timeline_json(tweet: TimelineTweet) -> dict[str, Any]:
    return {
        "id": tweet.id, "created_at": tweet.created_at, "partition": tweet.partition,
        "lang": tweet.lang, "matching": tweet.matching, "in_sample": tweet.in_sample,
        "sample10_partition": tweet.sample10_partition,
        "line": tweet.line.decode("utf-8", "replace"),
    }
