"""Awaiting aiokafka with a deadline without cancelling it (streamd/ha/bounded.py)."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from streamd.ha.bounded import CancelledItself, bounded, settle

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_the_outcome_or_its_exception() -> None:
    async def answer() -> int:
        return 7

    async def fail() -> int:
        raise ValueError("no")

    assert await bounded(answer(), 1.0) == 7
    with pytest.raises(ValueError, match="no"):
        await bounded(fail(), 1.0)


async def test_past_the_deadline_the_call_goes_on_uncancelled() -> None:
    finished = anyio.Event()

    async def slow() -> None:
        await anyio.sleep(0.2)
        finished.set()

    with pytest.raises(TimeoutError):
        await bounded(slow(), 0.05)
    with anyio.fail_after(1):
        await finished.wait()


async def test_a_call_that_cancels_itself_is_an_error_not_a_cancellation() -> None:
    """aiokafka's consumer.stop() can end in CancelledError of its own: it must not escape
    into the daemon as if the daemon were being cancelled."""
    async def cancels_itself() -> None:
        raise asyncio.CancelledError

    with pytest.raises(CancelledItself):
        await bounded(cancels_itself(), 1.0)
    await settle(cancels_itself(), 1.0)  # a teardown: whatever it raises


async def test_the_callers_own_cancellation_still_wins() -> None:
    async def slow() -> None:
        await anyio.sleep(1)

    with anyio.move_on_after(0.05) as scope:
        await bounded(slow(), 5.0)
    assert scope.cancelled_caught
