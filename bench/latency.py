"""Benchmark 4: line read -> broker ack latency at steady, rate-limited load.

One daemon (under bench.latency_shim, which records every latency the daemon itself
measures) reads a simulator rate-limited to each rate in turn; after a warm-up, a window of
`seconds` is measured twice: exactly (the shim's samples) and from two /metrics scrapes of
streamd_publish_latency_seconds (interpolated within buckets, as a dashboard would).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from bench.latency_shim import read_samples
from bench.rig import DaemonProc, daemon_config, latency_buckets, load_average, new_topic, simulator
from bench.stats import bucket_diff, exact_percentile, histogram_percentile
from streamd.dev.broker import LocalBroker
from streamd.ops.metrics import PUBLISH_LATENCY_BUCKETS

QUANTILES = (0.5, 0.99, 0.999)


def latency(broker: LocalBroker, workdir: Path, *, rates: tuple[float, ...] = (2_000, 20_000),
            seconds: float = 20, warmup: float = 3,
            env: dict[str, str] | None = None) -> dict[str, Any]:
    name = f"latency-{time.time_ns()}"
    topic = new_topic(broker, name)
    samples_path = workdir / f"{name}.samples"
    windows: list[dict[str, Any]] = []
    load_before = load_average()
    with simulator(rate=rates[0], total=None, workdir=workdir, name=name) as sim:
        config = workdir / f"{name}.toml"
        config.write_text(daemon_config(sim.url, broker.bootstrap, topic, workdir))
        daemon = DaemonProc(config, module="bench.latency_shim",
                            env={"BENCH_LATENCY_OUT": str(samples_path), **(env or {})})
        try:
            daemon.wait_connected()
            for rate in rates:
                sim.configure(tweets_per_second=rate)
                time.sleep(warmup)
                before = daemon.metrics()
                start = time.monotonic()
                time.sleep(seconds)
                end = time.monotonic()
                after = daemon.metrics()
                windows.append({"rate": rate, "start": start, "end": end,
                                "before": before, "after": after})
            sim.configure(tweets_per_second=0)
        finally:
            daemon.terminate()
    times, values = read_samples(str(samples_path))
    os.unlink(samples_path)
    results = []
    for w in windows:
        in_window = sorted(v for t, v in zip(times, values, strict=True)
                           if w["start"] <= t <= w["end"])
        buckets = bucket_diff(latency_buckets(w["before"]), latency_buckets(w["after"]))
        published = (w["after"].get("streamd_tweets_published_total", 0)
                     - w["before"].get("streamd_tweets_published_total", 0))
        results.append({
            "rate": w["rate"],
            "achieved": published / (w["end"] - w["start"]),
            "samples": len(in_window),
            "exact_ms": {q: exact_percentile(in_window, q) * 1000 for q in QUANTILES},
            "max_ms": in_window[-1] * 1000 if in_window else math.nan,
            "histogram_ms": {q: histogram_percentile(buckets, q) * 1000 for q in QUANTILES},
        })
    return {"windows": results, "seconds": seconds, "warmup": warmup,
            "buckets": list(PUBLISH_LATENCY_BUCKETS),
            "load": f"{load_before} -> {load_average()}"}
