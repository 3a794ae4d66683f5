"""Percentiles: exact from samples, and interpolated within Prometheus histogram buckets."""

from __future__ import annotations

import math
from collections.abc import Sequence


def exact_percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default 'linear' method)."""
    if not sorted_values:
        return math.nan
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bucket_diff(
    before: Sequence[tuple[float, float]], after: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    """Cumulative bucket counts observed between two scrapes."""
    old = dict(before)
    return [(le, count - old.get(le, 0.0)) for le, count in after]


def histogram_percentile(buckets: Sequence[tuple[float, float]], q: float) -> float:
    """Like PromQL histogram_quantile: linear within the bucket holding rank q*total (lower
    bound of the first bucket is 0). A rank in the +Inf bucket returns the last finite
    bound (the true value is larger)."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            width = count - prev_count
            fraction = (rank - prev_count) / width if width > 0 else 1.0
            return prev_le + (le - prev_le) * fraction
        prev_le, prev_count = le, count
    return prev_le
