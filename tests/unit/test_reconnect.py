"""The one reconnect decision, over every reason: schedules, caps, jitter, the rate-limit
reset rule, health resets, exits, re-sync and spool room. A fake clock and a fixed random
source: nothing sleeps."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from streamd.config import BackoffSettings
from streamd.reasons import ExitCode, Reason
from streamd.x.classify import Classification
from streamd.x.reconnect import (
    EVICTED_MIN_DELAY,
    EVICTION_DELAY,
    MAX_RESET_WAIT,
    NO_RULES_LEFT,
    Decision,
    Delay,
    Exit,
    ReconnectPolicy,
    Resync,
    WaitForRoom,
)

NOW = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(
    rand: float = 0.0, settings: BackoffSettings | None = None
) -> tuple[ReconnectPolicy, FakeClock]:
    clock = FakeClock()
    policy = ReconnectPolicy(settings or BackoffSettings(), clock=clock, rand=lambda: rand)
    return policy, clock


def failures(policy: ReconnectPolicy, c: Classification | Reason, count: int) -> list[Decision]:
    """`count` attempts in a row, each failing with `c`; the decision after each. A re-sync
    is taken as successful (rules in place), so no_rules shows its delay."""
    c = Classification(c) if isinstance(c, Reason) else c
    out: list[Decision] = []
    for _ in range(count):
        policy.start_attempt()
        decision = policy.decide(c)
        if isinstance(decision, Resync):
            decision = policy.after_resync(c, synced=True)
        out.append(decision)
    return out


def delay_decisions(
    policy: ReconnectPolicy, c: Classification | Reason, count: int
) -> list[Delay]:
    got = failures(policy, c, count)
    assert all(isinstance(d, Delay) for d in got), got
    return [d for d in got if isinstance(d, Delay)]


def delays(policy: ReconnectPolicy, c: Classification | Reason, count: int) -> list[float]:
    return [d.seconds for d in delay_decisions(policy, c, count)]


# --- the table: every reason ----------------------------------------------------------


@dataclass(frozen=True)
class Row:
    reason: Reason
    decision: type[Decision]  # what the first decide() says
    schedule: tuple[float, ...] = ()  # delays of failures in a row (defaults, no jitter)
    cap: float = 0.0  # where the schedule settles
    code: ExitCode | None = None


TABLE = [
    Row(Reason.OPERATIONAL_DISCONNECT, Delay, (0, 5, 10, 20, 40, 80, 160, 320), 320),
    Row(Reason.NETWORK, Delay, (0, 0.25, 0.5, 0.75, 1.0), 16),
    Row(Reason.STALL, Delay, (0, 0.25, 0.5, 0.75, 1.0), 16),
    Row(Reason.SERVER_ERROR, Delay, (5, 10, 20, 40, 80, 160, 320), 320),
    Row(Reason.RATE_LIMITED, Delay, (60, 120, 240, 480, 960), 960),
    Row(Reason.TOO_MANY_CONNECTIONS, Delay, (60, 120, 240, 480, 960), 960),
    Row(Reason.EVICTED, Delay, (60, 120, 240, 480, 960), 960),
    Row(Reason.USAGE_CAP, Delay, (900, 1800, 3600, 7200, 14400, 21600), 21600),
    Row(Reason.RULES_CAP, Delay, (5, 10, 20, 40, 80, 160, 320), 320),
    Row(Reason.NO_RULES, Resync, (5, 10, 20, 40, 80, 160, 320), 320),
    Row(Reason.SPOOL_FULL, WaitForRoom),
    Row(Reason.SHUTDOWN, Exit, code=ExitCode.OK),
    Row(Reason.RECOVERY_COMPLETE, Exit, code=ExitCode.OK),
    Row(Reason.NOT_LEADER, Exit, code=ExitCode.OK),
    Row(Reason.UNAUTHORIZED, Exit, code=ExitCode.CREDENTIALS),
    Row(Reason.FORBIDDEN, Exit, code=ExitCode.CREDENTIALS),
    Row(Reason.INVALID_REQUEST, Exit, code=ExitCode.CONFIG),
]
DELAYED = [r for r in TABLE if r.schedule]
EXITS = [r for r in TABLE if r.decision is Exit]


def ids(rows: list[Row]) -> list[str]:
    return [str(r.reason) for r in rows]


def test_the_table_covers_every_reason() -> None:
    assert sorted(r.reason for r in TABLE) == sorted(Reason)


@pytest.mark.parametrize("row", TABLE, ids=ids(TABLE))
def test_first_decision(row: Row) -> None:
    policy, _ = make()
    decision = policy.decide(Classification(row.reason, detail="what X said"))
    assert type(decision) is row.decision
    assert decision.reason is row.reason
    if isinstance(decision, Exit):
        assert decision.code is row.code
        assert decision.detail == "what X said"


@pytest.mark.parametrize("row", DELAYED, ids=ids(DELAYED))
def test_schedule_first_repeats_and_cap(row: Row) -> None:
    policy, _ = make()
    got = delay_decisions(policy, row.reason, len(row.schedule) + 80)
    assert [d.seconds for d in got[: len(row.schedule)]] == list(row.schedule)
    assert max(d.seconds for d in got) == row.cap
    assert got[-1].seconds == row.cap
    # Each delay names the attempt it leads to: the first retry is attempt 2.
    assert [d.attempt for d in got[:4]] == [2, 3, 4, 5]
    assert all(d.reason is row.reason for d in got)


@pytest.mark.parametrize("row", DELAYED, ids=ids(DELAYED))
@pytest.mark.parametrize("rand", [0.0, 0.25, 0.5, 0.999999])
def test_jitter_only_ever_adds_up_to_its_fraction(row: Row, rand: float) -> None:
    policy, _ = make(rand=rand)
    got = delays(policy, row.reason, len(row.schedule))
    for delay, base in zip(got, row.schedule, strict=True):
        assert delay == pytest.approx(base * (1 + rand * 0.1))
        assert base <= delay <= base * 1.1  # never earlier; a capped delay by 10 % at most


@pytest.mark.parametrize("row", DELAYED, ids=ids(DELAYED))
def test_health_resets_the_schedule_and_the_attempt(row: Row) -> None:
    policy, _ = make()
    failures(policy, row.reason, 5)
    assert policy.start_attempt() == 6
    policy.on_connected()
    policy.on_data()
    (after,) = failures(policy, row.reason, 1)
    assert isinstance(after, Delay)
    assert (after.seconds, after.attempt) == (row.schedule[0], 2)


@pytest.mark.parametrize("row", EXITS, ids=ids(EXITS))
def test_exits_are_never_counted(row: Row) -> None:
    policy, _ = make()
    assert delays(policy, Reason.SERVER_ERROR, 2) == [5, 10]
    policy.start_attempt()
    assert isinstance(policy.decide(Classification(row.reason)), Exit)
    assert delays(policy, Reason.SERVER_ERROR, 1) == [20]


@pytest.mark.parametrize("reason", [Reason.UNAUTHORIZED, Reason.FORBIDDEN,
                                    Reason.INVALID_REQUEST])
def test_fatal_reasons_exit_even_for_a_patient_caller(reason: Reason) -> None:
    policy = ReconnectPolicy.for_rules(BackoffSettings())
    decision = policy.decide(Classification(reason, status=401, detail="Unauthorized"))
    assert isinstance(decision, Exit)
    assert decision.code in (ExitCode.CREDENTIALS, ExitCode.CONFIG)
    assert (decision.reason, decision.detail) == (reason, "Unauthorized")


# --- no_rules and spool_full ------------------------------------------------------------


def test_no_rules_resyncs_then_backs_off_on_its_own_counter() -> None:
    policy, _ = make()
    c = Classification(Reason.NO_RULES)
    assert delays(policy, Reason.SERVER_ERROR, 2) == [5, 10]
    policy.start_attempt()
    assert policy.decide(c) == Resync(Reason.NO_RULES)
    assert policy.after_resync(c, synced=True) == Delay(5, Reason.NO_RULES, 4)


def test_no_rules_without_configured_rules_exits_78() -> None:
    policy, _ = make()
    c = Classification(Reason.NO_RULES, status=409)
    assert isinstance(policy.decide(c), Resync)
    assert policy.after_resync(c, synced=False) == Exit(ExitCode.CONFIG, Reason.NO_RULES,
                                                        NO_RULES_LEFT)


def test_spool_full_waits_for_room_and_counts_nothing() -> None:
    policy, _ = make()
    policy.start_attempt()
    policy.on_connected()
    policy.on_data()  # a full spool closes a stream that was delivering
    assert policy.decide(Classification(Reason.SPOOL_FULL)) == WaitForRoom(Reason.SPOOL_FULL)
    assert policy.start_attempt() == 1  # the reconnect is the first since a healthy stream
    assert delays(policy, Reason.NETWORK, 1) == [0]


# --- the x-rate-limit-reset rule ------------------------------------------------------


@pytest.mark.parametrize(
    ("reset_in", "failures_before", "expected"),
    [
        (600, 0, 600),  # the reset is later than the exponential part: it wins
        (10, 1, 120),  # the exponential part is later
        (-100, 2, 240),  # a reset in the past changes nothing
        (1500, 0, 1500),  # beyond rate_limit_max: X's reset is authoritative
        (10**9, 0, MAX_RESET_WAIT),  # not credible (skew, wrong units): clipped
    ],
)
def test_rate_limit_waits_for_the_reset(
    reset_in: float, failures_before: int, expected: float
) -> None:
    policy, clock = make()
    delays(policy, Reason.RATE_LIMITED, failures_before)
    c = Classification(Reason.RATE_LIMITED, reset_at=clock.now + reset_in)
    assert delays(policy, c, 1) == [expected]


@pytest.mark.parametrize("rand", [0.0, 0.5, 0.999999])
def test_jitter_never_makes_a_delay_earlier_than_the_reset(rand: float) -> None:
    policy, clock = make(rand=rand)
    (delay,) = delays(policy, Classification(Reason.RATE_LIMITED, reset_at=clock.now + 700), 1)
    assert 700 <= delay <= 700 * 1.1


def test_too_many_connections_ignores_the_reset() -> None:
    policy, clock = make()
    c = Classification(Reason.TOO_MANY_CONNECTIONS, reset_at=clock.now + 800)
    assert delays(policy, c, 6) == [60, 120, 240, 480, 960, 960]


# --- health and families ----------------------------------------------------------------


def test_network_and_stall_share_a_counter_other_families_do_not() -> None:
    policy, _ = make()
    assert delays(policy, Reason.NETWORK, 2) == [0, 0.25]
    assert delays(policy, Reason.STALL, 2) == [0.5, 0.75]
    assert delays(policy, Reason.SERVER_ERROR, 3) == [5, 10, 20]
    assert delays(policy, Reason.NETWORK, 1) == [1.0]
    (last,) = failures(policy, Reason.SERVER_ERROR, 1)
    assert last == Delay(40, Reason.SERVER_ERROR, 10)  # one attempt count for all


def test_connected_without_data_does_not_reset() -> None:
    policy, clock = make()
    delays(policy, Reason.NETWORK, 3)
    policy.start_attempt()
    policy.on_connected()
    clock.now += 29.9  # dropped before healthy_after
    assert policy.decide(Classification(Reason.NETWORK)) == Delay(0.75, Reason.NETWORK, 5)


def test_up_for_healthy_after_resets() -> None:
    policy, clock = make()
    delays(policy, Reason.SERVER_ERROR, 5)
    policy.start_attempt()
    policy.on_connected()
    clock.now += 30.0
    assert policy.decide(Classification(Reason.SERVER_ERROR)) == Delay(5, Reason.SERVER_ERROR, 1)
    # The connection is over: later time passing does not reset again.
    policy.start_attempt()
    clock.now += 1000
    assert policy.decide(Classification(Reason.SERVER_ERROR)) == Delay(10, Reason.SERVER_ERROR, 2)


def test_repeated_operational_disconnects_without_data_back_off() -> None:
    policy, clock = make()
    got = []
    for _ in range(4):
        policy.start_attempt()
        policy.on_connected()
        clock.now += 1
        decision = policy.decide(Classification(Reason.OPERATIONAL_DISCONNECT))
        assert isinstance(decision, Delay)
        got.append(decision.seconds)
    assert got == [0, 5, 10, 20]


def test_configured_settings_are_the_schedule() -> None:
    settings = BackoffSettings(network_step=1, network_max=3, http_initial=1, http_max=4,
                               jitter=0)
    policy, _ = make(rand=0.5, settings=settings)
    assert delays(policy, Reason.NETWORK, 5) == [0, 1, 2, 3, 3]
    assert delays(policy, Reason.SERVER_ERROR, 4) == [1, 2, 4, 4]


def test_defaults_are_the_readmes() -> None:
    s = BackoffSettings()
    assert (s.network_step, s.network_max) == (0.25, 16.0)
    assert (s.http_initial, s.http_max) == (5.0, 320.0)
    assert (s.rate_limit_initial, s.rate_limit_max) == (60.0, 960.0)
    assert (s.usage_cap_initial, s.usage_cap_max) == (900.0, 21600.0)
    assert (s.jitter, s.healthy_after) == (0.1, 30.0)


def test_a_long_outage_does_not_overflow() -> None:
    policy, _ = make()
    assert delays(policy, Reason.USAGE_CAP, 2000)[-1] == 21600


# --- the rules endpoints' profile -----------------------------------------------------


def rules_policy(
    max_attempts: int | None = None, max_wait: float = float("inf")
) -> tuple[ReconnectPolicy, FakeClock]:
    clock = FakeClock()
    return ReconnectPolicy.for_rules(BackoffSettings(), max_attempts=max_attempts,
                                     max_wait=max_wait, clock=clock), clock


def test_rules_endpoints_share_one_counter_on_the_server_error_schedule() -> None:
    policy, _ = rules_policy()
    reasons = [Reason.NETWORK, Reason.SERVER_ERROR, Reason.USAGE_CAP, Reason.RATE_LIMITED,
               Reason.NETWORK, Reason.SERVER_ERROR, Reason.NETWORK, Reason.NETWORK]
    got = [d for r in reasons for d in delay_decisions(policy, r, 1)]
    assert [d.seconds for d in got] == [5, 10, 20, 40, 80, 160, 320, 320]
    assert [d.attempt for d in got[:3]] == [2, 3, 4]


def test_rules_endpoints_carry_no_jitter() -> None:
    clock = FakeClock()
    policy = ReconnectPolicy(BackoffSettings(), clock=clock, rand=lambda: 0.99)
    rules = ReconnectPolicy.for_rules(BackoffSettings(), clock=clock)
    assert delays(policy, Reason.SERVER_ERROR, 1) != [5]
    assert delays(rules, Reason.SERVER_ERROR, 1) == [5]


@pytest.mark.parametrize(
    ("reset_in", "expected"),
    [
        (None, 5),  # no reset known: the schedule (at least one second)
        (30, 31),  # a second past the reset: the window may not have rolled yet
        (7200, 7201),  # however far off: the daemon waits it out
        (-100, 5),
    ],
)
def test_rules_rate_limit_waits_past_the_reset(reset_in: float | None, expected: float) -> None:
    policy, clock = rules_policy()
    reset_at = None if reset_in is None else clock.now + reset_in
    assert delays(policy, Classification(Reason.RATE_LIMITED, reset_at=reset_at), 1) == \
        [expected]


def test_a_command_gives_up_after_its_attempts() -> None:
    policy, _ = rules_policy(max_attempts=3)
    got = failures(policy, Classification(Reason.SERVER_ERROR, detail="rules_get answered 503"),
                   3)
    assert [type(d) for d in got] == [Delay, Delay, Exit]
    assert got[-1] == Exit(ExitCode.INTERNAL, Reason.SERVER_ERROR,
                           "gave up after 3 attempts: rules_get answered 503")


def test_a_command_does_not_wait_past_its_patience() -> None:
    policy, clock = rules_policy(max_attempts=6, max_wait=960)
    c = Classification(Reason.RATE_LIMITED, reset_at=clock.now + 7200,
                       detail="rules_get answered 429")
    (decision,) = failures(policy, c, 1)
    assert decision == Exit(ExitCode.INTERNAL, Reason.RATE_LIMITED,
                            "rules_get answered 429: the next request is allowed in 7201 s, "
                            "longer than the 960 s we wait")


def test_pacing_waits_for_an_exhausted_window_without_counting() -> None:
    policy, clock = rules_policy(max_wait=960)
    assert policy.until_reset(clock.now + 900, "w") == Delay(901, Reason.RATE_LIMITED, 1)
    assert policy.until_reset(clock.now - 5, "w") == Delay(0, Reason.RATE_LIMITED, 1)
    too_far = policy.until_reset(clock.now + 7200, "rules_get window exhausted")
    assert isinstance(too_far, Exit)
    assert too_far.detail.startswith("rules_get window exhausted: the next request is allowed")
    assert delays(policy, Reason.SERVER_ERROR, 1) == [5]  # nothing was counted


def test_a_good_answer_resets_the_rules_counter() -> None:
    policy, _ = rules_policy(max_attempts=3)
    failures(policy, Reason.NETWORK, 2)
    policy.on_data()
    assert [type(d) for d in failures(policy, Reason.NETWORK, 3)] == [Delay, Delay, Exit]


def test_evicted_shares_the_too_many_connections_counter() -> None:
    policy, _ = make()
    first = delay_decisions(policy, Reason.TOO_MANY_CONNECTIONS, 1)
    second = delay_decisions(policy, Reason.EVICTED, 1)
    assert [d.seconds for d in first + second] == [60, 120]


def test_an_evicted_side_leaves_the_slot_to_the_evictor_even_with_short_settings() -> None:
    quick = BackoffSettings(rate_limit_initial=0.3, rate_limit_max=2.0)
    policy, _ = make(settings=quick)
    waits = [d.seconds for d in delay_decisions(policy, Reason.EVICTED, 3)]
    assert waits == [EVICTED_MIN_DELAY] * 3
    assert EVICTED_MIN_DELAY > EVICTION_DELAY * 2


def test_after_an_eviction_the_delay_is_short_fixed_and_counts_nothing() -> None:
    policy, _ = make(rand=0.5)
    c = Classification(Reason.TOO_MANY_CONNECTIONS)
    for _ in range(3):
        policy.start_attempt()
        freed = policy.after_eviction(c)
        assert isinstance(freed, Delay)
        assert EVICTION_DELAY <= freed.seconds <= EVICTION_DELAY * 1.1
    # Nothing was counted: a refusal now starts the ladder at its first step.
    assert [d.seconds for d in delay_decisions(policy, c, 1)] == [60 * 1.05]
