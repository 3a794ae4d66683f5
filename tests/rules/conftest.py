"""Fixtures: the fake X rules endpoints, a fake clock, and RulesApi factories over them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from rules_fakes import FakeClock, FakeX

from streamd.x.reconnect import ReconnectPolicy
from streamd.x.rules import RulesApi
from streamd.x.rules.api import TERMINAL_ATTEMPTS, TERMINAL_BACKOFF, TERMINAL_MAX_WAIT


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake_x(clock: FakeClock) -> FakeX:
    return FakeX(clock)


@pytest.fixture
def make_api(fake_x: FakeX, clock: FakeClock) -> Callable[..., RulesApi]:
    """RulesApi factories over the fake, with a command's policy on the fake clock unless
    told otherwise; the caller owns nothing (MockTransport has no I/O)."""

    def make(*, max_attempts: int | None = TERMINAL_ATTEMPTS,
             max_wait: float = TERMINAL_MAX_WAIT, **kwargs: Any) -> RulesApi:
        client = httpx.AsyncClient(
            base_url="https://api.x.test", transport=httpx.MockTransport(fake_x.handler)
        )
        policy = ReconnectPolicy.for_rules(TERMINAL_BACKOFF, max_attempts=max_attempts,
                                           max_wait=max_wait, clock=clock)
        return RulesApi(client, kwargs.pop("metrics", None), policy=policy, sleep=clock.sleep,
                        **kwargs)

    return make
