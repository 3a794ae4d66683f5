"""`python -m bench [--quick] [--out FILE] [PART ...]`

PARTs: e2e, ceilings, peers, stages, latency, memory, profile (default: all, in that order; the
heavy phases run one after another). A full run writes bench/RESULTS.md; a quick or partial
run writes to a temporary file unless --out is given, so the committed results stay those
of a full run. The markdown is printed either way.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import env, report
from bench.latency import latency
from bench.memory import memory
from bench.profile import summarise
from bench.stages import capture as stage_capture
from bench.stages import measure as stage_split
from bench.throughput import ceilings as run_ceilings
from bench.throughput import e2e, py_spy_binary
from bench.throughput import peers as run_peers
from streamd.dev.broker import LocalBroker

PARTS = ("e2e", "ceilings", "peers", "stages", "latency", "memory", "profile")
RESULTS = Path(__file__).with_name("RESULTS.md")


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", metavar="PART",
                        help=f"one or more of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller N, short phases")
    parser.add_argument("-n", type=int, default=None,
                        help="tweets per throughput phase (default 200000; quick 20000)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the markdown")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    parts = list(args.parts) or list(PARTS)
    n = args.n or (20_000 if args.quick else 200_000)
    full = not args.quick and not args.parts and args.n is None
    out_path = args.out or (RESULTS if full else None)

    started = time.monotonic()
    environment = env.describe()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="streamd-bench-") as tmp:
        workdir = Path(tmp)
        with LocalBroker(log_path=workdir / "tansu.log") as broker:
            if "e2e" in parts:
                _log(f"e2e: {n:,} tweets, simulator -> streamd run -> Tansu")
                results["e2e"] = e2e(broker, n, workdir)
                _log(f"e2e: {results['e2e']['rate']:,.0f} tweets/s")
            if "ceilings" in parts:
                _log("ceilings: raw reader, confluent-kafka producer")
                results["ceilings"] = run_ceilings(broker, n, workdir)
            if "peers" in parts:
                _log("peers: tweepy, twarc2")
                results["peers"] = run_peers(broker, n, workdir)
            if "stages" in parts:
                _log("stages: the daemon's CPU split per stage, codecs")
                results["stages"] = stage_split(stage_capture(20_000, workdir))
            if "latency" in parts:
                _log("latency: 2,000 and 20,000 tweets/s")
                results["latency"] = latency(
                    broker, workdir, seconds=5 if args.quick else 20,
                    warmup=2 if args.quick else 3,
                )
            if "memory" in parts:
                _log("memory: burst and broker pause")
                results["memory"] = (
                    memory(broker, workdir, baseline=3, burst=4, settle=4, pause=8, recover=6)
                    if args.quick else memory(broker, workdir)
                )
            if "profile" in parts:
                if shutil.which("py-spy") or Path(py_spy_binary()).exists():
                    _log("profile: py-spy on the daemon at full speed")
                    raw = workdir / "daemon.pyspy.txt"
                    run = e2e(broker, n, workdir, profile_out=raw)
                    if raw.exists():
                        results["profile"] = {**summarise(raw), "rate": run["rate"]}
                else:
                    _log("profile: py-spy not installed (pip install py-spy); skipped")
    markdown = report.render(environment, results, quick=args.quick, parts=args.parts,
                             seconds=time.monotonic() - started)
    if out_path is None:
        out_path = Path(tempfile.gettempdir()) / "streamd-bench-RESULTS.md"
    out_path.write_text(markdown)
    print(markdown)
    _log(f"written to {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
