"""Benchmarks 1-3: the daemon end to end, the HTTP and Kafka ceilings, the peer clients.

Each consumer gets a fresh simulator process at full speed (`total` tweets, then only
heartbeats) so every one of them reads the same generated stream from its first tweet.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.rig import (
    DaemonProc,
    RssSampler,
    cpu_seconds,
    daemon_config,
    default_compression,
    load_average,
    new_topic,
    peak_rss_mb,
    runqueue_wait_seconds,
    simulator,
    system_seconds,
)
from streamd.dev.broker import LocalBroker


def py_spy_binary() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))


def run_worker(kind: str, args: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.workers", kind, json.dumps(args)],
        capture_output=True, timeout=timeout, check=False,
    )
    lines = proc.stdout.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": proc.stderr.decode(errors="replace")[-800:], "tweets": 0,
                "seconds": math.nan}
    result: dict[str, Any] = json.loads(lines[-1])
    result["rate"] = result["tweets"] / result["seconds"] if result["seconds"] > 0 else math.nan
    if result.get("cpu") is not None and result["tweets"]:
        result["cpu_us"] = result["cpu"] / result["tweets"] * 1e6
    return result


def e2e(broker: LocalBroker, n: int, workdir: Path, *, profile_out: Path | None = None,
        timeout: float = 240, compression: str | None = None,
        env: dict[str, str] | None = None) -> dict[str, Any]:
    """Simulator at full speed -> `streamd run` -> Tansu, until N tweets are acked.

    The clock starts when the daemon logs stream.connected (read from its stderr as it is
    written) and stops at the first /metrics poll (every 50 ms near the end) showing
    published == N.
    With `profile_out`, py-spy samples the daemon over the same window (a separate run: the
    sampler costs the daemon time, so that run's rate is not reported as the throughput).
    `compression` overrides the daemon's default; `env` is the daemon's extra environment
    (A/B: STREAMD_BENCH_DAEMON_TREE runs another source tree's daemon).
    """
    name = f"e2e{'-profiled' if profile_out else ''}-{time.time_ns()}"
    topic = new_topic(broker, name)
    load_before = load_average()
    with simulator(rate=math.inf, total=n, workdir=workdir, name=name) as sim:
        config = workdir / f"{name}.toml"
        config.write_text(daemon_config(sim.url, broker.bootstrap, topic, workdir,
                                        compression=compression))
        daemon = DaemonProc(config, env=env)
        spy: subprocess.Popen[bytes] | None = None
        try:
            daemon.wait_connected()
            if profile_out is not None:
                spy = subprocess.Popen(
                    [py_spy_binary(), "record", "--pid", str(daemon.proc.pid), "--rate", "200",
                     "--idle", "--format", "raw", "--function", "--output", str(profile_out)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            sampler = RssSampler(daemon.ps)
            assert daemon.connected_at is not None
            assert daemon.cpu_at_connect is not None
            published = 0
            while time.monotonic() - daemon.connected_at < timeout:
                published = daemon.published()
                if published >= n:
                    break
                # A scrape costs the daemon a few milliseconds of CPU (Prometheus scrapes
                # every 15-30 s; this clock wants 50 ms): poll finely only near the end.
                time.sleep(0.05 if published >= 0.8 * n else 0.5)
            end = time.monotonic()
            cpu = cpu_seconds(daemon.ps) - daemon.cpu_at_connect
            system = system_seconds(daemon.ps) - daemon.system_at_connect
            waited = runqueue_wait_seconds(daemon.proc.pid) - daemon.wait_at_connect
            peak = peak_rss_mb(daemon.proc.pid)
            sampler.stop()
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
                spy.wait(60)
        finally:
            if spy is not None and spy.poll() is None:
                spy.kill()
            daemon.terminate()
    seconds = end - daemon.connected_at
    return {
        "tweets": published, "target": n, "seconds": seconds,
        "rate": published / seconds if seconds > 0 else math.nan,
        "cpu_seconds": cpu, "cpu_per_10k": cpu / max(published, 1) * 10_000,
        "cpu": cpu, "cpu_us": cpu / max(published, 1) * 1e6,
        "system_us": system / max(published, 1) * 1e6,
        "cpu_util": cpu / seconds if seconds > 0 else math.nan,
        "runqueue_wait": waited,
        "peak_rss_mb": peak,
        "rss_samples_mb": [round(mb, 1) for _, mb in sampler.samples],
        "load": f"{load_before} -> {load_average()}",
    }


def ceilings(broker: LocalBroker, n: int, workdir: Path) -> dict[str, Any]:
    """(a) raw httpx reader (keeps the bytes), (b) confluent-kafka producing those lines
    (with the daemon's default compression)."""
    lines = workdir / "lines.bin"
    load_before = load_average()
    with simulator(rate=math.inf, total=n, workdir=workdir, name="raw") as sim:
        raw = run_worker("raw", {"url": sim.url, "n": n, "save": str(lines)})
    topic = new_topic(broker, f"confluent-{time.time_ns()}")
    confluent = run_worker(
        "confluent", {"bootstrap": broker.bootstrap, "topic": topic, "lines": str(lines), "n": n,
                      "compression": default_compression()}
    )
    lines.unlink(missing_ok=True)
    return {"raw": raw, "confluent": confluent, "load": f"{load_before} -> {load_average()}"}


CONSUMERS = ("twarc", "tweepy", "tweepy-objects")
PIPELINES = ("tweepy-aiokafka", "twarc-confluent")


def peers(broker: LocalBroker, n: int, workdir: Path) -> dict[str, Any]:
    """The consume-only peers, then the peer pipelines (acked end to end, to their own
    3-partition topic on the same Tansu, with the daemon's default compression)."""
    out: dict[str, Any] = {}
    load_before = load_average()
    compression = default_compression()
    for kind in CONSUMERS + PIPELINES:
        args: dict[str, Any] = {"n": n}
        if kind in PIPELINES:
            args.update(bootstrap=broker.bootstrap, compression=compression,
                        topic=new_topic(broker, f"{kind}-{time.time_ns()}"))
        with simulator(rate=math.inf, total=n, workdir=workdir, name=kind) as sim:
            out[kind] = run_worker(kind, {"url": sim.url, **args})
    out["compression"] = compression
    out["load"] = f"{load_before} -> {load_average()}"
    return out
