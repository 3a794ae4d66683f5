"""The log throttle: an exact repeat of a recent line is counted, not written; distinct facts
and state changes always go out."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from streamd.ops.logs import THROTTLE_INTERVAL_S, LogThrottle, configure_logging, get_logger


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def out(clock: Clock) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("debug", "json", stream, throttle=LogThrottle(clock=clock))
    yield stream
    configure_logging("info", "json")


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_a_repeat_goes_out_once_per_interval_with_the_count_of_what_was_dropped(
    out: io.StringIO, clock: Clock,
) -> None:
    log = get_logger("streamd.kafka.publisher")
    for _ in range(20):  # twice a second for 10 s: Kafka down
        log.warning("kafka.start_failed", error="Unable to bootstrap")
        clock.now += 0.5
    log.warning("kafka.start_failed", error="Unable to bootstrap")
    got = lines(out)
    assert [e["event"] for e in got] == ["kafka.start_failed", "kafka.start_failed"]
    assert "suppressed" not in got[0]  # the first one always, as it is
    assert got[1]["suppressed"] == 19
    assert got[1]["error"] == "Unable to bootstrap"
    # the count restarts: the next repeat inside the interval is dropped again
    clock.now += THROTTLE_INTERVAL_S - 0.1
    log.warning("kafka.start_failed", error="Unable to bootstrap")
    clock.now += 0.1
    log.warning("kafka.start_failed", error="Unable to bootstrap")
    assert [e.get("suppressed") for e in lines(out)[2:]] == [1]


def test_lines_that_differ_in_any_field_level_or_logger_all_go_out(out: io.StringIO) -> None:
    a, b = get_logger("streamd.a"), get_logger("streamd.b")
    a.warning("x.failed", error="one")
    a.warning("x.failed", error="two")  # another fact
    a.warning("x.failed", error="one", attempt=2)
    a.error("x.failed", error="one")  # another level
    b.warning("x.failed", error="one")  # another logger
    a.info("x.failed", error="one", detail={"n": [1, 2]})
    a.info("x.failed", error="one", detail={"n": [1, 3]})
    assert len(lines(out)) == 7
    a.warning("x.failed", error="two")
    a.info("x.failed", detail={"n": [1, 3]}, error="one")  # keyword order is no difference
    assert len(lines(out)) == 7


def test_state_changes_and_lifecycle_events_are_never_throttled(out: io.StringIO) -> None:
    log = get_logger("streamd.test")
    events = ["kafka.unavailable", "kafka.recovered", "spool.full", "spool.room",
              "stream.disconnected", "stream.connected", "stream.gap", "rules.synced",
              "daemon.stopping", "daemon.lost", "config.reloaded", "ha.elected",
              "connections.terminated", "recovery.started"]
    for _ in range(3):
        for event in events:
            log.warning(event, spooled=0)
    assert [e["event"] for e in lines(out)] == events * 3
    assert not any("suppressed" in e for e in lines(out))


def test_stdlib_records_are_throttled_too(out: io.StringIO, clock: Clock) -> None:
    asyncio_log = logging.getLogger("asyncio")
    for _ in range(1000):  # asyncio's accept() loop when the descriptors are gone
        asyncio_log.error("socket.accept() out of system resource")
    clock.now += THROTTLE_INTERVAL_S
    asyncio_log.error("socket.accept() out of system resource")
    got = lines(out)
    assert [(e["event"], e["logger"], e.get("suppressed")) for e in got] == [
        ("socket.accept() out of system resource", "asyncio", None),
        ("socket.accept() out of system resource", "asyncio", 999),
    ]


def test_exceptions_are_part_of_the_line(out: io.StringIO) -> None:
    log = get_logger("streamd.test")
    for exc in (ValueError("a"), ValueError("a"), KeyError("b")):
        try:
            raise exc
        except Exception:
            log.exception("thing.failed")
    assert [e["exception"].splitlines()[-1] for e in lines(out)] == [
        "ValueError: a", "KeyError: 'b'"]


def test_memory_is_bounded_and_a_forgotten_line_goes_out_again(clock: Clock) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream, throttle=LogThrottle(clock=clock, max_keys=3))
    log = get_logger("streamd.test")
    for n in range(4):  # the first of these is forgotten
        log.warning("x.failed", n=n)
    log.warning("x.failed", n=3)  # still remembered: dropped
    log.warning("x.failed", n=0)  # forgotten: out again
    assert [e["n"] for e in lines(stream)] == [0, 1, 2, 3, 0]

