"""`python -m bench.latency_shim run -c CONFIG`: the unmodified daemon, plus an exact record
of every publish latency it observes.

The daemon already measures line read -> broker ack per tweet and feeds it to the
streamd_publish_latency_seconds histogram; this wraps that histogram's `observe` (without
editing streamd/) to also keep each value and the monotonic time it was taken (the clock is
system-wide on Linux, so the driver can window the samples). On exit the samples are written
to $BENCH_LATENCY_OUT as float64 pairs. Cost: two array appends per tweet.
"""

from __future__ import annotations

import array
import atexit
import os
import sys
import time
from typing import Any

from streamd.ops import metrics as streamd_metrics

_values = array.array("d")
_times = array.array("d")


def _install() -> None:
    original_init = streamd_metrics.Metrics.__init__

    def init(self: streamd_metrics.Metrics, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        histogram = self.publish_latency
        observe = histogram.observe
        values_append, times_append, now = _values.append, _times.append, time.monotonic

        def recording_observe(amount: float, count: int = 1) -> None:
            at = now()
            for _ in range(count):  # one observation can stand for a run of tweets
                values_append(amount)
                times_append(at)
            observe(amount, count)

        histogram.observe = recording_observe  # type: ignore[method-assign]

    streamd_metrics.Metrics.__init__ = init  # type: ignore[method-assign]


def _dump() -> None:
    out = os.environ.get("BENCH_LATENCY_OUT")
    if not out:
        return
    with open(out, "wb") as fh:
        _times.tofile(fh)
        _values.tofile(fh)


def read_samples(path: str) -> tuple[array.array[float], array.array[float]]:
    """(monotonic times, latencies in seconds) written by a shimmed daemon."""
    data = array.array("d")
    with open(path, "rb") as fh:
        data.frombytes(fh.read())
    half = len(data) // 2
    return data[:half], data[half:]


def main() -> int:
    _install()
    atexit.register(_dump)
    from streamd.cli import main as streamd_main

    return streamd_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
