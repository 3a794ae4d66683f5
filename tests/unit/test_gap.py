"""The gap a reconnect closes: the backfill it asks for and how it is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamd.kafka.spool import Spool
from streamd.x.stream import Gap, backfill_for_gap


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
