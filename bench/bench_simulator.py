"""Benchmark: tweets/s the simulator pushes to a reader that only splits lines.

The simulator runs (in its own thread) in this process; each reader runs in its own process
(multiprocessing) so the two do not share a GIL. Readers:

* httpx: `Client.stream(...).iter_raw()` + `bytes.split(b"\\r\\n")` (a realistic client);
* asyncio: a raw socket via `asyncio.open_connection` that skips the HTTP headers and splits
  lines (the ceiling: no HTTP client parsing at all; chunk-size lines count as lines too,
  so it counts only lines starting with `{"data"`).

Usage: python bench/bench_simulator.py [--total 300000] [--repeat 2] [--out FILE]
Writes bench/RESULTS-simulator.md by default.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from streamd.simulator import Simulator, SimulatorConfig

PATH = "/2/tweets/search/stream"
RICH = (
    "tweet.fields=created_at,lang,author_id,entities,public_metrics,conversation_id"
    "&expansions=author_id&user.fields=description,created_at,public_metrics"
)
TWEET_START = b'{"data"'


def httpx_reader(url: str, query: str, total: int, out: Any) -> None:
    import httpx

    count = 0
    size = 0
    rest = b""
    with httpx.Client(timeout=60.0) as client:
        start = time.perf_counter()
        with client.stream(
            "GET", f"{url}{PATH}?{query}", headers={"Authorization": "Bearer test-token"}
        ) as response:
            for chunk in response.iter_raw():
                size += len(chunk)
                *lines, rest = (rest + chunk).split(b"\r\n")
                count += sum(1 for line in lines if line)
                if count >= total:
                    break
        elapsed = time.perf_counter() - start
    out.put((count, size, elapsed))


def asyncio_reader(url: str, query: str, total: int, out: Any) -> None:
    host, port = url.removeprefix("http://").split(":")

    async def run() -> tuple[int, int, float]:
        reader, writer = await asyncio.open_connection(host, int(port))
        start = time.perf_counter()
        writer.write(
            f"GET {PATH}?{query} HTTP/1.1\r\nHost: {host}\r\n"
            "Authorization: Bearer test-token\r\n\r\n".encode()
        )
        await writer.drain()
        count = 0
        size = 0
        rest = b""
        while count < total:
            chunk = await reader.read(1 << 20)
            if not chunk:
                break
            size += len(chunk)
            *lines, rest = (rest + chunk).split(b"\r\n")
            count += sum(1 for line in lines if line.startswith(TWEET_START))
        elapsed = time.perf_counter() - start
        writer.close()
        return count, size, elapsed

    out.put(asyncio.run(run()))


READERS = {"httpx iter_raw + split": httpx_reader, "asyncio raw socket + split": asyncio_reader}


def run_once(reader_name: str, query: str, total: int) -> dict[str, float]:
    config = SimulatorConfig(
        tweets_per_second=float("inf"), total_tweets=total, match_all=True, seed=1,
        rule_propagation_delay=0.0,
    )
    with Simulator(config) as sim:
        sim.add_rules([("cat", "cats"), ("dog", None)])
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=READERS[reader_name], args=(sim.url, query, total, queue))
        proc.start()
        count, size, elapsed = queue.get(timeout=300)
        proc.join(30)
    return {
        "tweets": count,
        "seconds": elapsed,
        "tweets_per_s": count / elapsed,
        "mb_per_s": size / elapsed / 1e6,
        "avg_line_bytes": size / max(count, 1),
    }


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu})"


def versions() -> str:
    names = ("uvicorn", "h11", "httpx", "orjson", "anyio")
    parts = [f"Python {platform.python_version()}"]
    for name in names:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(parts)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "RESULTS-simulator.md")
    args = parser.parse_args(argv)
    rows = []
    for payload, query in (("default fields", ""), ("rich fields + author expansion", RICH)):
        for reader_name in READERS:
            runs = [run_once(reader_name, query, args.total) for _ in range(args.repeat)]
            best = max(runs, key=lambda r: r["tweets_per_s"])
            rows.append((payload, reader_name, best, runs))
            print(f"{payload:32} {reader_name:28} {best['tweets_per_s']:>10,.0f} tweets/s "
                  f"{best['mb_per_s']:6.1f} MB/s  {best['avg_line_bytes']:.0f} B/line", flush=True)
    lines = [
        "# Simulator benchmark",
        "",
        f"- Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine()} (shared with other users while measuring)",
        f"- Versions: {versions()}",
        f"- Command: `python bench/bench_simulator.py --total {args.total}"
        f" --repeat {args.repeat}`",
        f"- Setup: simulator at unlimited rate, total {args.total:,} tweets, match_all, one"
        " stream; reader in its own process; best of"
        f" {args.repeat} runs (all runs listed). Target: >= 100,000 tweets/s.",
        "",
        "| payload | reader | tweets/s (best) | MB/s | bytes/line | all runs (tweets/s) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for payload, reader_name, best, runs in rows:
        all_runs = ", ".join(f"{r['tweets_per_s']:,.0f}" for r in runs)
        lines.append(
            f"| {payload} | {reader_name} | {best['tweets_per_s']:,.0f} | "
            f"{best['mb_per_s']:.1f} | {best['avg_line_bytes']:.0f} | {all_runs} |"
        )
    lines.append("")
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
