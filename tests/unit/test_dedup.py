from __future__ import annotations

import inspect

from streamd.dedup import DEDUP_MAX_IDS, DEDUP_WINDOW_S, REMEMBERED_MAX_AGE_S, Deduplicator
from streamd.kafka.spool import Spool


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_repeat_within_the_window_is_a_duplicate() -> None:
    d = Deduplicator(10, 60, Clock())
    assert not d.seen("1790000000000000001")
    assert d.seen("1790000000000000001")
    assert not d.seen("1790000000000000002")
    assert len(d) == 2


def test_ids_expire_after_the_window_to_about_a_second() -> None:
    clock = Clock()
    d = Deduplicator(1000, 60, clock)
    d.seen("1")
    clock.now += 30
    d.seen("2")
    clock.now += 31  # "1" is 61 s old, "2" 31 s
    assert not d.seen("1")
    assert d.seen("2")
    clock.now += 62
    assert not d.seen("2")


def test_the_window_never_holds_more_than_max_ids() -> None:
    d = Deduplicator(3, 900, Clock())
    for i in range(5):
        d.seen(str(i))
    assert len(d) == 3
    assert not d.seen("0")  # pushed out by count
    assert d.seen("4")


def test_snapshot_and_preload_carry_the_window_across_a_restart() -> None:
    clock = Clock()
    d = Deduplicator(100, 900, clock)
    for i in range(5):
        d.seen(f"17{i}")
        clock.now += 2
    snap = d.snapshot(wall_clock=lambda: 50_000.0)
    assert [i for i, _ in snap] == [f"17{i}" for i in range(5)]
    times = [t for _, t in snap]
    assert times == sorted(times)
    assert times[-1] <= 50_000.0
    fresh = Deduplicator(100, 900, Clock())
    fresh.preload(i for i, _ in snap)
    assert all(fresh.seen(f"17{i}") for i in range(5))


def test_ids_that_are_not_numbers_still_work() -> None:
    d = Deduplicator(10, 60, Clock())
    assert not d.seen("abc")
    assert d.seen("abc")
    assert not d.seen("007")  # a str of digits is its int: "007" and "7" are one id
    assert d.seen("7")


def test_odd_digit_strings_never_crash_and_never_alias_real_ids() -> None:
    """str.isdigit() is true for "²" and Arabic-Indic digits; int() refuses the first and
    reads the second as 123. Such ids (e.g. remembered by an older version in the spool)
    are kept as strings: no crash at preload, no real tweet dropped as their duplicate."""
    d = Deduplicator(10, 60, Clock())
    d.preload(["²", "\u0661\u0662\u0663", "9" * 5000])
    assert not d.seen("123")
    assert d.seen("²")
    assert d.seen("9" * 5000)


def test_seen_many_agrees_with_seen_one_at_a_time() -> None:
    ids = ["5", "6", "5", "abc", "7", "6", "abc", "8"]
    clock = Clock()
    one_by_one = Deduplicator(4, 60, clock)
    expected = [one_by_one.seen(i) for i in ids]
    batched = Deduplicator(4, 60, clock)
    assert batched.seen_many(ids[:3]) + batched.seen_many(ids[3:]) == expected
    assert expected == [False, False, True, False, False, True, True, False]
    assert len(batched) == len(one_by_one) == 4
    clock.now += 61  # the whole window expires before the next batch
    assert batched.seen_many(["5", "8"]) == [False, False]


def test_the_default_window_is_15_minutes_and_200000_ids() -> None:
    clock = Clock()
    d = Deduplicator(clock=clock)
    d.seen("1")
    clock.now += DEDUP_WINDOW_S - 2
    assert d.seen("1")
    clock.now += 3
    assert not d.seen("1")
    assert (DEDUP_WINDOW_S, DEDUP_MAX_IDS) == (900.0, 200_000)
    d.preload(str(i) for i in range(2, DEDUP_MAX_IDS + 10))
    assert len(d) == DEDUP_MAX_IDS


def test_the_spool_keeps_ids_by_the_same_limits() -> None:
    defaults = inspect.signature(Spool).parameters
    assert defaults["max_remembered_ids"].default == DEDUP_MAX_IDS
    assert defaults["remembered_max_age_seconds"].default == REMEMBERED_MAX_AGE_S
    assert REMEMBERED_MAX_AGE_S >= DEDUP_WINDOW_S  # what is reloaded is still on disk
