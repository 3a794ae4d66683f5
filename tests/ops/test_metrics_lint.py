"""`promtool check metrics` on a live /metrics: what a scraper sees is clean (naming, units,
HELP text, counter suffixes)."""

from __future__ import annotations

import pytest
from opstools import run_promtool


@pytest.mark.broker
def test_live_metrics_pass_promtool_lint(live_metrics: str) -> None:
    assert "streamd_tweets_published_total" in live_metrics
    result = run_promtool(["check", "metrics"], stdin=live_metrics)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_lint_is_not_vacuous() -> None:
    bad = "# TYPE streamd_lines counter\nstreamd_lines 1\n"
    result = run_promtool(["check", "metrics"], stdin=bad)
    assert result.returncode != 0
    assert 'should have "_total" suffix' in result.stderr
    assert "no help text" in result.stderr
