"""Timestamps as X writes them: ISO-8601 UTC with milliseconds and a Z."""

from __future__ import annotations

import time
from collections.abc import Callable


def iso_from_ms(epoch_ms: int) -> str:
    seconds, millis = divmod(epoch_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def iso_now(clock: Callable[[], float] = time.time) -> str:
    return iso_from_ms(int(clock() * 1000))
