"""Awaiting aiokafka with a deadline, without cancelling it.

aiokafka catches CancelledError in places (its fetcher's and coordinator's teardown among
them). A cancel scope that expires inside such a call can lose its cancellation there, and
a CancelledError then escapes into the daemon, which dies with exit 1 instead of shutting
down. So every aiokafka call of the election and of the leader records runs in a task of its
own, and the caller waits for it at most `within` seconds: past that, the call is left to
finish (or fail) by itself, its outcome retrieved and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

import anyio

__all__ = ["CancelledItself", "bounded", "settle"]

T = TypeVar("T")


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # marks it retrieved: no "exception was never retrieved" noise


class CancelledItself(Exception):
    """The aiokafka call ended with CancelledError nobody here asked for (its consumer's
    stop() does, when its fetcher is closed while it waits to retry)."""


async def bounded(call: Coroutine[Any, Any, T], within: float) -> T:
    """The outcome of `call` (its exception re-raised), or TimeoutError after `within`
    seconds. Cancelling the caller does not cancel `call` either."""
    task = asyncio.ensure_future(call)
    task.add_done_callback(_retrieve)
    with anyio.move_on_after(within):
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # the caller is cancelled (or the deadline passed): not the call
            # A cancellation of the caller's own, if any, is delivered again by anyio.
            raise CancelledItself(getattr(call, "__qualname__", "aiokafka call")) from None
    raise TimeoutError


async def settle(call: Coroutine[Any, Any, Any], within: float) -> None:
    """Run `call` (a teardown) for at most `within` seconds, whatever it raises, even while
    the caller is being cancelled."""
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        await bounded(call, within)
