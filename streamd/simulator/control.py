"""Operations behind both the Python API (Simulator.*) and the /_simulator/ HTTP endpoints."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from streamd.simulator.config import (
    CONNECTIONS_API_MODES,
    TERMINATE_ENDINGS,
    TIERS,
    check_connection_limit,
    check_zombie_seconds,
)
from streamd.simulator.records import Rule
from streamd.simulator.rule_syntax import RuleSyntaxError, compile_rule
from streamd.simulator.state import SimulatorState

SETTABLE = (
    "tier", "tweets_per_second", "total_tweets", "heartbeat_interval", "connection_policy",
    "usage_cap", "match_all", "rule_propagation_delay", "backfill_tiers",
    "connection_limit", "zombie_seconds", "terminate_ending", "connections_api",
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
            settings.tweets_per_second = parse_rate(changes["tweets_per_second"])
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
        }


def terminate_connections(state: SimulatorState, ids: Iterable[str]) -> dict[str, Any]:
    """Terminate connections as DELETE /2/connections would, without its checks or window;
    returns the answer's `data` (successful_kills, failed_kills, results)."""
    with state.lock:
        ending = state.settings.terminate_ending
    return state.connections.kill(list(ids), ending)
