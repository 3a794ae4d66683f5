"""Interleaved A/B runs of the daemon end to end: `python -m bench.ab VARIANT... [-n N]
[--rounds R]`.

A VARIANT is `NAME=TREE[:COMPRESSION]`: the daemon from the source tree TREE (a directory
holding a `streamd/` package; `.` is this checkout) with kafka.compression COMPRESSION (the
tree's default if left out). Each round runs every variant once, the order reversed every
other round (ABBA...), each against a fresh simulator and topic on one Tansu. Reported per
variant: the median over rounds of CPU microseconds a tweet (the daemon's user+system CPU
from stream.connected to published == N, /N; it drifts less than tweets/s when other load
comes and goes), of tweets/s, and of peak RSS, with every run's figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.rig import DAEMON_TREE_ENV
from bench.throughput import e2e
from streamd.dev.broker import LocalBroker


def parse_variant(text: str) -> tuple[str, str, str | None]:
    name, _, rest = text.partition("=")
    tree, _, compression = rest.partition(":")
    if not name or not tree:
        raise argparse.ArgumentTypeError(f"{text!r}: want NAME=TREE[:COMPRESSION]")
    return name, str(Path(tree).resolve()), compression or None


def run(variants: list[tuple[str, str, str | None]], n: int, rounds: int,
        log: Any = print) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
    with tempfile.TemporaryDirectory(prefix="streamd-ab-") as tmp:
        workdir = Path(tmp)
        with LocalBroker(log_path=workdir / "tansu.log") as broker:
            for r in range(rounds):
                order = variants if r % 2 == 0 else list(reversed(variants))
                for name, tree, compression in order:
                    result = e2e(broker, n, workdir, compression=compression,
                                 env={DAEMON_TREE_ENV: tree})
                    runs[name].append(result)
                    log(f"[ab] round {r + 1} {name}: {result['cpu_us']:.2f} us/tweet "
                        f"({result['system_us']:.2f} system), "
                        f"{result['rate']:,.0f} tweets/s, {result['peak_rss_mb']:.1f} MB, "
                        f"tweets {result['tweets']:,}")
    summary: dict[str, Any] = {}
    for name, results in runs.items():
        summary[name] = {
            "cpu_us": statistics.median(x["cpu_us"] for x in results),
            "system_us": statistics.median(x["system_us"] for x in results),
            "rate": statistics.median(x["rate"] for x in results),
            "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in results),
            "runs_cpu_us": [round(x["cpu_us"], 2) for x in results],
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", type=parse_variant, metavar="NAME=TREE[:COMP]")
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    started = time.monotonic()
    summary = run(args.variants, args.n, args.rounds,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    base = args.variants[0][0]
    for name, s in summary.items():
        ratio = s["cpu_us"] / summary[base]["cpu_us"]
        print(f"{name:12} {s['cpu_us']:6.2f} us/tweet ({ratio:.3f} x {base})  "
              f"{s['rate']:8,.0f} tweets/s  {s['peak_rss_mb']:5.1f} MB  runs {s['runs_cpu_us']}")
    print(json.dumps(summary))
    print(f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
