"""Fixtures: the fake X rules endpoints, a fake clock, and RulesApi factories over them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from rules_fakes import FakeClock, FakeX

from streamd.x.rules import RulesApi


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake_x(clock: FakeClock) -> FakeX:
    return FakeX(clock)


@pytest.fixture
def make_api(fake_x: FakeX, clock: FakeClock) -> Callable[..., RulesApi]:
    """RulesApi factories over the fake; the caller owns nothing (MockTransport has no I/O)."""

    def make(**kwargs: Any) -> RulesApi:
        client = httpx.AsyncClient(
            base_url="https://api.x.test", transport=httpx.MockTransport(fake_x.handler)
        )
        return RulesApi(client, kwargs.pop("metrics", None), sleep=clock.sleep, clock=clock,
                        **kwargs)

    return make
