"""The gap a reconnect closes: the backfill it asks for and how it is reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from streamd.config import StreamSettings
from streamd.kafka.spool import Spool
from streamd.ops.metrics import Metrics
from streamd.x.gaps import Gap, GapLedger, GapRow, backfill_for_gap, created_at_of


@pytest.mark.parametrize(
    ("gap_s", "configured", "expected"),
    [
        (0.0, 5, 0),  # no gap, nothing to ask for
        (0.2, 5, 1),  # any gap asks for at least a minute
        (60.0, 5, 1),
        (60.001, 5, 2),  # rounded up: a second short would lose a second
        (119.0, 2, 2),
        (150.0, 2, 2),  # capped by the configuration
        (3600.0, 5, 5),  # X re-streams at most 5 minutes
        (30.0, 0, 0),  # backfill off
        (-3.0, 5, 0),  # a clock step back is not a gap
    ],
)
def test_backfill_is_the_gap_rounded_up_and_capped(gap_s: float, configured: int,
                                                  expected: int) -> None:
    assert backfill_for_gap(gap_s, configured) == expected


def test_a_gap_inside_the_backfill_window_is_covered() -> None:
    gap = Gap(start=1000.0, end=1090.0, backfill_minutes=2, configured_minutes=5)
    assert gap.seconds == 90.0
    assert gap.covered_by == "backfill"


def test_a_gap_beyond_the_window_is_not_covered_and_says_why() -> None:
    gap = Gap(start=1000.0, end=1000.0 + 600, backfill_minutes=5, configured_minutes=5)
    assert gap.covered_by == "none"
    assert "5-minute backfill window" in gap.detail


def test_without_backfill_nothing_is_covered() -> None:
    gap = Gap(start=1000.0, end=1001.0, backfill_minutes=0, configured_minutes=0)
    assert gap.covered_by == "none"
    assert "backfill_minutes = 0" in gap.detail


def test_the_last_read_time_survives_a_reopen(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20) as spool:
        assert spool.get_meta("last_read_at") is None
        spool.set_meta("last_read_at", "1700000000.25")
        spool.set_meta("last_read_at", "1700000001.5")
    with Spool(tmp_path, 1 << 20) as spool:
        assert spool.get_meta("last_read_at") == "1700000001.5"


# --- the ledger: redundant, backfill, recovery, none ----------------------------------------



class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Reader:
    def __init__(self, name: str | None, last_read_at: float | None) -> None:
        self.name = name
        self.connected = False
        self.connected_since: float | None = None
        self.last_read_at = last_read_at


class Log:
    def __init__(self) -> None:
        self.gaps: list[dict[str, Any]] = []

    def info(self, event: str, **kw: Any) -> None:
        if event == "stream.gap":
            self.gaps.append(kw)

    warning = error = info


class Store:
    def __init__(self) -> None:
        self.rows: dict[int, list[Any]] = {}

    async def add(self, row: GapRow) -> int:
        self.rows[len(self.rows) + 1] = [row.start, row.end, row.covered_by, row.detail]
        return len(self.rows)

    async def settle(self, gap_id: int, covered_by: str, detail: str) -> None:
        self.rows[gap_id][2:] = [covered_by, detail]


class Jobs:
    def __init__(self) -> None:
        self.windows: list[tuple[float, float, int | None]] = []

    def schedule(self, start: float, end: float, gap: GapRow, gap_id: int | None) -> None:
        self.windows.append((start, end, gap_id))


def ledger(**stream: Any) -> tuple[GapLedger, Log, Store, Jobs, Clock, Metrics]:
    log, store, jobs, clock, metrics = Log(), Store(), Jobs(), Clock(10_000.0), Metrics()
    gaps = GapLedger(StreamSettings(**stream), metrics, log, store=store, recovery=jobs,
                     clock=clock)
    return gaps, log, store, jobs, clock, metrics


def connect(gaps: GapLedger, reader: Reader, clock: Clock, backfill: int) -> None:
    anyio.run(gaps.connected, reader, backfill)
    reader.connected, reader.connected_since, reader.last_read_at = True, clock.now, clock.now


def test_a_drop_while_the_other_connection_reads_is_covered_by_it() -> None:
    gaps, log, store, _, clock, metrics = ledger(connections=2, backfill_minutes=5)
    one, two = Reader("live-1", None), Reader("live-2", None)
    gaps.attach([one, two])
    connect(gaps, one, clock, 0)
    connect(gaps, two, clock, 0)
    assert log.gaps == []  # a first start has no gap
    one.connected = False
    one.last_read_at = clock.now = 10_010.0
    clock.now = 10_013.0
    assert gaps.backfill_minutes(one) == 0  # live-2 reads: nothing to ask X for
    connect(gaps, one, clock, 0)
    (gap,) = log.gaps
    assert gap["covered_by"] == "redundant"
    assert gap["connection"] == "live-1"
    assert gap["seconds"] == 3.0
    assert "live-2" in gap["detail"]
    assert metrics.gap_seconds.labels(covered_by="redundant")._value.get() == 3.0
    assert next(iter(store.rows.values()))[2] == "redundant"


def test_a_gap_both_shared_is_recorded_once_then_as_redundant() -> None:
    gaps, log, _, _, clock, _ = ledger(connections=2, backfill_minutes=5)
    one, two = Reader("live-1", 9_000.0), Reader("live-2", 9_000.0)
    gaps.attach([one, two])
    assert gaps.backfill_minutes(one) == 5  # 1,000 s without either: at most 5 minutes
    clock.now = 9_100.0
    assert gaps.backfill_minutes(one) == 2
    connect(gaps, one, clock, 2)
    clock.now = 9_104.0
    connect(gaps, two, clock, 0)
    assert [(g["covered_by"], g["seconds"]) for g in log.gaps] == [
        ("backfill", 100.0), ("redundant", 4.0)]


def test_a_long_gap_gets_a_recovery_job_and_is_logged_when_it_ends() -> None:
    gaps, log, store, jobs, clock, _ = ledger(backfill_minutes=5, recovery="auto")
    reader = Reader(None, 10_000.0 - 3 * 3600)  # down for three hours
    gaps.attach([reader])
    connect(gaps, reader, clock, 5)
    assert jobs.windows == [(10_000.0 - 3 * 3600, 10_000.0, 1)]
    assert log.gaps == []  # not yet: the job decides how it is covered
    row = GapRow(10_000.0 - 3 * 3600, 10_000.0, "recovery", "scheduled")
    anyio.run(gaps.settle, row, 1, "recovery", "recovery job delivered the window")
    assert log.gaps[0]["covered_by"] == "recovery"
    assert log.gaps[0]["seconds"] == 3 * 3600
    assert store.rows[1][2] == "recovery"


def test_a_gap_older_than_the_recovery_limit_is_recovered_only_for_its_last_hours() -> None:
    gaps, _, _, jobs, clock, _ = ledger(recovery="auto", max_recovery_hours=24)
    reader = Reader(None, 10_000.0 - 30 * 3600)
    gaps.attach([reader])
    connect(gaps, reader, clock, 0)
    assert jobs.windows == [(10_000.0 - 24 * 3600, 10_000.0, 1)]


def test_without_recovery_a_long_gap_is_none_with_the_reason() -> None:
    gaps, log, _, jobs, clock, _ = ledger(backfill_minutes=5)
    reader = Reader(None, 10_000.0 - 600)
    gaps.attach([reader])
    connect(gaps, reader, clock, 5)
    assert jobs.windows == []
    (gap,) = log.gaps
    assert gap["covered_by"] == "none"
    assert "5-minute backfill window" in gap["detail"]
    assert 'recovery = "off"' in gap["detail"]


def test_a_tweet_ids_creation_time() -> None:
    # X's documentation example: id 1212092628029698048, created_at
    # "2019-12-31T19:26:16.000Z" (X shows whole seconds; the id has the milliseconds).
    created = created_at_of("1212092628029698048")
    assert created is not None
    assert int(created) == 1577820376
    assert created_at_of("20") is None
    assert created_at_of("x1") is None


def test_the_ledger_survives_a_reopen(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20) as spool:
        first = spool.add_gap(100.0, 160.0, "recovery", "scheduled", "live-1")
        spool.add_gap(200.0, 201.5, "redundant", "live-2 was reading", "live-1")
        spool.settle_gap(first, "none", "recovery job refused: forbidden")
    with Spool(tmp_path, 1 << 20) as spool:
        assert spool.gaps() == [
            (1, 100.0, 160.0, "none", "recovery job refused: forbidden", "live-1"),
            (2, 200.0, 201.5, "redundant", "live-2 was reading", "live-1"),
        ]
