"""Benchmark 5: the daemon's RSS through a 10x burst and through a broker pause.

One daemon, simulator at 2k tweets/s; RSS sampled every 0.5 s. Burst: 2k -> 20k for
`burst` seconds -> 2k. Pause: Tansu SIGSTOPped for `pause` seconds (socket open, no
answers) while tweets keep arriving, then SIGCONT and `recover` seconds. At the end the
simulator stops generating and the daemon gets time to publish the rest; sent vs published
shows whether anything read during the pause was lost.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

from bench.rig import (
    DaemonProc,
    RssSampler,
    daemon_config,
    load_average,
    new_topic,
    simulator,
    topic_keys,
)
from streamd.dev.broker import LocalBroker

BASE_RATE = 2_000
BURST_RATE = 20_000


def _event_name(event: dict[str, Any]) -> str:
    """structlog events have short names; stdlib records routed through it (aiokafka,
    asyncio) carry their message as the event: keep its first line, shortened."""
    name = str(event.get("event", "?")).splitlines()[0]
    return name if len(name) <= 70 else name[:67] + "..."


def _window(sampler: RssSampler, start: float, end: float) -> dict[str, float]:
    values = sampler.between(start, end)
    if not values:
        return {}
    return {"start": values[0], "peak": max(values), "end": values[-1]}


def memory(broker: LocalBroker, workdir: Path, *, baseline: float = 5, burst: float = 10,
           settle: float = 10, pause: float = 60, recover: float = 15,
           drain_timeout: float = 60) -> dict[str, Any]:
    name = f"memory-{time.time_ns()}"
    topic = new_topic(broker, name)
    load_before = load_average()
    with simulator(rate=BASE_RATE, total=None, workdir=workdir, name=name) as sim:
        config = workdir / f"{name}.toml"
        config.write_text(daemon_config(sim.url, broker.bootstrap, topic, workdir))
        daemon = DaemonProc(config)
        try:
            daemon.wait_connected()
            sampler = RssSampler(daemon.ps, interval=0.5)
            t0 = time.monotonic()
            time.sleep(baseline)
            t_burst = time.monotonic()
            sim.configure(tweets_per_second=BURST_RATE)
            time.sleep(burst)
            sim.configure(tweets_per_second=BASE_RATE)
            t_burst_end = time.monotonic()
            time.sleep(settle)
            t_pause = time.monotonic()
            published_at_pause = daemon.published()
            events_before = len(daemon.events)
            spool_series: list[tuple[float, float]] = []
            broker.pause()
            try:
                until = time.monotonic() + pause
                while time.monotonic() < until:
                    spool_series.append(
                        (time.monotonic(), daemon.metrics().get("streamd_spool_messages", 0))
                    )
                    time.sleep(min(2.0, max(0.0, until - time.monotonic())))
            finally:
                broker.resume()
            t_resume = time.monotonic()
            pause_events = daemon.events[events_before:]
            time.sleep(recover)
            t_end = time.monotonic()
            sim.configure(tweets_per_second=0)
            time.sleep(0.5)
            sent = sim.sent()
            deadline = time.monotonic() + drain_timeout
            metrics = daemon.metrics()
            while (metrics.get("streamd_tweets_published_total", 0)
                   < metrics.get("streamd_tweets_received_total", 0)
                   and time.monotonic() < deadline):
                time.sleep(0.5)
                metrics = daemon.metrics()
            sampler.stop()
            disconnects = [
                {"at_s": round(e["_received_at"] - t0, 1),
                 **{k: v for k, v in e.items() if k in ("reason", "status", "detail")}}
                for e in daemon.events if e.get("event") == "stream.disconnected"
            ]
        finally:
            daemon.terminate()
    # What Kafka holds: every tweet read (less duplicates dropped) must be there, once or
    # (at least once) more.
    records, keys = topic_keys(broker.bootstrap, topic)
    series = [(round(at - t0, 1), round(mb, 1)) for at, mb in sampler.samples]
    return {
        "burst": {"before": _window(sampler, t0, t_burst),
                  "during": _window(sampler, t_burst, t_burst_end),
                  "after": _window(sampler, t_burst_end, t_pause)},
        "pause": {"before": _window(sampler, t_burst_end, t_pause),
                  "during": _window(sampler, t_pause, t_resume),
                  "after": _window(sampler, t_resume, t_end)},
        "timeline": {"burst_at": round(t_burst - t0, 1), "burst_end": round(t_burst_end - t0, 1),
                     "pause_at": round(t_pause - t0, 1), "resume_at": round(t_resume - t0, 1)},
        "series": series,
        "sent": sent,
        "received": int(metrics.get("streamd_tweets_received_total", 0)),
        "published": int(metrics.get("streamd_tweets_published_total", 0)),
        "duplicates": int(metrics.get("streamd_duplicates_dropped_total", 0)),
        "published_at_pause": published_at_pause,
        "topic_records": records,
        "topic_distinct": len(keys),
        "spool_peak": max((v for k, v in spool_series), default=0),
        "disconnects": disconnects,
        "events_in_pause": dict(collections.Counter(_event_name(e) for e in pause_events)),
        "settings": {"baseline": baseline, "burst": burst, "pause": pause, "recover": recover},
        "load": f"{load_before} -> {load_average()}",
    }
