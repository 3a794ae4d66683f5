"""Reconnect schedules with a fake clock and a fixed random source."""

from __future__ import annotations

import pytest

from streamd.errors import FatalDisconnect
from streamd.reasons import ExitCode, Reason
from streamd.x.classify import Classification
from streamd.x.reconnect import MAX_RESET_WAIT, BackoffSettings, ReconnectPolicy


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(
    rand: float = 0.0, settings: BackoffSettings | None = None
) -> tuple[ReconnectPolicy, FakeClock]:
    clock = FakeClock()
    policy = ReconnectPolicy(settings or BackoffSettings(), clock=clock, rand=lambda: rand)
    return policy, clock


def delays(policy: ReconnectPolicy, reason: Reason, count: int) -> list[float]:
    return [policy.next_delay(Classification(reason=reason)) for _ in range(count)]


def test_defaults_match_interface() -> None:
    s = BackoffSettings()
    assert (s.network_step, s.network_max) == (0.25, 16.0)
    assert (s.http_initial, s.http_max) == (5.0, 320.0)
    assert (s.rate_limit_initial, s.rate_limit_max) == (60.0, 960.0)
    assert (s.usage_cap_initial, s.usage_cap_max) == (900.0, 21600.0)
    assert s.healthy_after == 30.0


@pytest.mark.parametrize("reason", [Reason.NETWORK, Reason.STALL])
def test_network_linear(reason: Reason) -> None:
    policy, _ = make()
    got = delays(policy, reason, 70)
    assert got[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert got[64] == 16.0
    assert max(got) == 16.0
    assert got[-1] == 16.0


def test_network_and_stall_share_a_counter() -> None:
    policy, _ = make()
    assert delays(policy, Reason.NETWORK, 2) == [0.0, 0.25]
    assert delays(policy, Reason.STALL, 2) == [0.5, 0.75]


def test_server_error_exponential() -> None:
    policy, _ = make()
    assert delays(policy, Reason.SERVER_ERROR, 9) == [5, 10, 20, 40, 80, 160, 320, 320, 320]


def test_operational_disconnect_immediate_then_http() -> None:
    policy, _ = make()
    assert delays(policy, Reason.OPERATIONAL_DISCONNECT, 9) == [0, 5, 10, 20, 40, 80, 160, 320, 320]
    policy.on_connected()
    policy.on_data()
    assert delays(policy, Reason.OPERATIONAL_DISCONNECT, 2) == [0, 5]


def test_rate_limited_exponential_capped() -> None:
    policy, _ = make()
    assert delays(policy, Reason.RATE_LIMITED, 7) == [60, 120, 240, 480, 960, 960, 960]


def test_rate_limit_reset_header_honoured() -> None:
    policy, clock = make()
    late = Classification(reason=Reason.RATE_LIMITED, retry_after=clock.now + 600)
    assert policy.next_delay(late) == 600  # reset later than the exponential part
    early = Classification(reason=Reason.RATE_LIMITED, retry_after=clock.now + 10)
    assert policy.next_delay(early) == 120  # exponential part later than the reset
    past = Classification(reason=Reason.RATE_LIMITED, retry_after=clock.now - 100)
    assert policy.next_delay(past) == 240


def test_rate_limit_reset_beyond_cap_is_authoritative() -> None:
    policy, clock = make()
    c = Classification(reason=Reason.RATE_LIMITED, retry_after=clock.now + 1500)
    assert policy.next_delay(c) == 1500  # beyond rate_limit_max (960): the reset wins
    absurd = Classification(reason=Reason.RATE_LIMITED, retry_after=clock.now + 10**9)
    assert policy.next_delay(absurd) == MAX_RESET_WAIT


@pytest.mark.parametrize("rand", [0.0, 0.5, 0.999999])
def test_jitter_never_earlier_than_reset(rand: float) -> None:
    policy, clock = make(rand=rand)
    c = Classification(reason=Reason.RATE_LIMITED, retry_after=clock.now + 700)
    delay = policy.next_delay(c)
    assert 700 <= delay <= 700 * 1.1


def test_too_many_connections_exponential_ignores_reset() -> None:
    policy, clock = make()
    c = Classification(reason=Reason.TOO_MANY_CONNECTIONS, retry_after=clock.now + 800)
    got = [policy.next_delay(c) for _ in range(6)]
    assert got == [60, 120, 240, 480, 960, 960]


def test_usage_cap_exponential() -> None:
    policy, _ = make()
    got = delays(policy, Reason.USAGE_CAP, 7)
    assert got == [900, 1800, 3600, 7200, 14400, 21600, 21600]


def test_no_rules_and_rules_cap_http_schedule() -> None:
    policy, _ = make()
    assert delays(policy, Reason.NO_RULES, 3) == [5, 10, 20]
    assert delays(policy, Reason.RULES_CAP, 3) == [5, 10, 20]


@pytest.mark.parametrize("reason", [Reason.SPOOL_FULL, Reason.SHUTDOWN])
def test_local_reasons_zero(reason: Reason) -> None:
    policy, _ = make(rand=0.9)
    assert delays(policy, reason, 3) == [0, 0, 0]


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (Reason.UNAUTHORIZED, ExitCode.CREDENTIALS),
        (Reason.FORBIDDEN, ExitCode.CREDENTIALS),
        (Reason.INVALID_REQUEST, ExitCode.CONFIG),
    ],
)
def test_fatal_reasons_raise(reason: Reason, code: ExitCode) -> None:
    policy, _ = make()
    with pytest.raises(FatalDisconnect) as info:
        policy.next_delay(Classification(reason=reason, status=401, detail="Unauthorized"))
    assert info.value.exit_code == code
    assert info.value.reason == reason.value
    assert info.value.detail == "Unauthorized"
    assert policy.attempt() == 0


def test_every_reason_has_a_decision() -> None:
    for reason in Reason:
        policy, _ = make()
        c = Classification(reason=reason)
        if reason.fatal_exit_code is None:
            assert policy.next_delay(c) >= 0
        else:
            with pytest.raises(FatalDisconnect):
                policy.next_delay(c)


def test_families_keep_their_own_counters() -> None:
    policy, _ = make()
    assert delays(policy, Reason.SERVER_ERROR, 3) == [5, 10, 20]
    assert delays(policy, Reason.NETWORK, 2) == [0, 0.25]
    assert delays(policy, Reason.SERVER_ERROR, 1) == [40]
    assert policy.attempt() == 6


def test_on_data_resets_everything() -> None:
    policy, _ = make()
    delays(policy, Reason.SERVER_ERROR, 4)
    delays(policy, Reason.NETWORK, 4)
    delays(policy, Reason.OPERATIONAL_DISCONNECT, 2)
    assert policy.attempt() == 10
    policy.on_connected()
    policy.on_data()
    assert policy.attempt() == 0
    assert delays(policy, Reason.NETWORK, 1) == [0]  # established stream dropped: at once
    assert delays(policy, Reason.SERVER_ERROR, 1) == [5]
    assert delays(policy, Reason.OPERATIONAL_DISCONNECT, 1) == [0]


def test_connected_without_data_does_not_reset() -> None:
    policy, clock = make()
    delays(policy, Reason.NETWORK, 3)
    policy.on_connected()
    clock.now += 29.9  # dropped before healthy_after
    assert policy.next_delay(Classification(reason=Reason.NETWORK)) == 0.75
    assert policy.attempt() == 4


def test_up_for_healthy_after_resets() -> None:
    policy, clock = make()
    delays(policy, Reason.SERVER_ERROR, 5)
    policy.on_connected()
    clock.now += 30.0
    assert policy.attempt() == 0  # healthy while still connected
    assert policy.next_delay(Classification(reason=Reason.SERVER_ERROR)) == 5
    # The connection is over: later time passing does not reset again.
    clock.now += 1000
    assert policy.next_delay(Classification(reason=Reason.SERVER_ERROR)) == 10


def test_repeated_operational_disconnects_without_data_back_off() -> None:
    policy, clock = make()
    got = []
    for _ in range(4):
        policy.on_connected()
        clock.now += 1
        got.append(policy.next_delay(Classification(reason=Reason.OPERATIONAL_DISCONNECT)))
    assert got == [0, 5, 10, 20]


def test_jitter_bounds() -> None:
    for rand in (0.0, 0.25, 0.5, 0.75, 0.999999):
        policy, _ = make(rand=rand)
        got = delays(policy, Reason.SERVER_ERROR, 8)
        base = [5, 10, 20, 40, 80, 160, 320, 320]
        for delay, b in zip(got, base, strict=True):
            assert b <= delay <= b * 1.1
            assert delay == pytest.approx(b * (1 + rand * 0.1))
    policy, _ = make(rand=0.999999)
    assert delays(policy, Reason.NETWORK, 2)[0] == 0  # "at once" stays at once


def test_custom_settings() -> None:
    settings = BackoffSettings(network_step=1, network_max=3, http_initial=1, http_max=4, jitter=0)
    policy, _ = make(rand=0.5, settings=settings)
    assert delays(policy, Reason.NETWORK, 5) == [0, 1, 2, 3, 3]
    assert delays(policy, Reason.SERVER_ERROR, 4) == [1, 2, 4, 4]


def test_long_outage_does_not_overflow() -> None:
    policy, _ = make()
    got = delays(policy, Reason.USAGE_CAP, 2000)
    assert got[-1] == 21600
