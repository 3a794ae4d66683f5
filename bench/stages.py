"""The daemon's CPU split per stage, and the compression trade, on the same simulator lines.

`python -m bench.stages [--lines FILE] [-n 20000] [--repeat 5]`

The lines are the simulator's at full speed with the benchmark's fields (captured once by
the raw reader worker, or read from FILE: the raw body bytes, CRLF-delimited). Each stage is
timed in this process with `time.process_time` over all the lines, best of `--repeat`, and
reported in microseconds a tweet. The stages are those of one tweet's way through the daemon,
called the way the daemon calls them (one network read = one 64 KiB slice):

* framing: `LineFramer.feed` per slice;
* read path: `StreamReader._process` per slice (parse, record, dedup, metrics: everything
  the reader does per read but the queue hand-over);
* of which parse + record: `interpret_line` per line, alone;
* of which dedup: `Deduplicator.seen_many` per slice, alone;
* partition: `partition_for` per key;
* pack: `Packer.pack` (partition + aiokafka `BatchBuilder.append`) per publisher cycle
  (`--cycle` records, default COALESCE: what a cycle takes off the queue at full speed);
* build + compress: `BatchBuilder` build per batch, for zstd, lz4 and none, with the bytes a
  tweet costs on the wire (the record batch, headers included);
* ack tally: `acks.tally` per batch (what an ack counts for).

Whatever the end-to-end CPU per tweet holds beyond these is the I/O: httpx/h11 reads,
the memory-stream hand-over, aiokafka's sender and protocol, asyncio/anyio.

With `STREAMD_BENCH_DAEMON_TREE` set to another source tree, that tree's streamd is measured
(the same way the end-to-end A/B runs the daemon from it): before/after splits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Before streamd is imported: measure another tree if asked (see the module docstring).
_OTHER = os.environ.get("STREAMD_BENCH_DAEMON_TREE")
if _OTHER:
    sys.path.insert(0, _OTHER)

CODECS = {"zstd": 4, "lz4": 3, "none": 0}
SLICE = 65_536
# Records a publish cycle takes off the queue at full speed: measured at about 160 on
# average (75 before the reader queued reads without a turn of the event loop while the
# publisher is busy; PERFORMANCE.md). Batches are per partition (3 here), so this sets the
# batch size the codecs see.
COALESCE = 160


def capture(n: int, workdir: Path) -> bytes:
    from bench.rig import simulator
    from bench.throughput import run_worker

    path = workdir / "stage-lines.bin"
    with simulator(rate=math.inf, total=n, workdir=workdir, name="stages") as sim:
        result = run_worker("raw", {"url": sim.url, "n": n, "save": str(path)})
    if result.get("error"):
        raise RuntimeError(result["error"])
    data = path.read_bytes()
    path.unlink()
    return data


def _best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def measure(data: bytes, repeat: int = 5, cycle: int = COALESCE) -> dict[str, Any]:
    import functools

    from aiokafka.producer.message_accumulator import BatchBuilder

    import streamd
    from streamd.config import Settings
    from streamd.dedup import Deduplicator
    from streamd.kafka.acks import tally
    from streamd.kafka.packing import Packer
    from streamd.kafka.partitioner import partition_for
    from streamd.ops.metrics import Metrics
    from streamd.records import OutRecord
    from streamd.x.framing import LineFramer
    from streamd.x.lines import interpret_line
    from streamd.x.reconnect import ReconnectPolicy
    from streamd.x.stream import StreamReader

    # Whole lines only, cut into the daemon's 64 KiB slices.
    end = data.rfind(b"\r\n") + 2
    data = data[:end]
    slices = [data[i:i + SLICE] for i in range(0, len(data), SLICE)]
    framer = LineFramer(1 << 20)
    groups = [framer.feed(s) for s in slices]
    lines = [f for g in groups for f in g if f]
    n = len(lines)

    def framing() -> None:
        f = LineFramer(1 << 20)
        for s in slices:
            f.feed(s)

    settings = Settings.model_validate({"x": {"bearer_token": "t"}})

    class _Log:
        def __getattr__(self, name: str) -> Callable[..., None]:
            return lambda *a, **k: None

    def read_path(keep: bool = False) -> list[OutRecord]:
        # Records are handed on per read, as the daemon does (kept only to pack them below:
        # holding 20,000 of them would bill the read path for the garbage collector's walks
        # over them).
        reader = StreamReader(settings, lambda: None, Metrics(), _Log(),  # type: ignore[arg-type]
                              ReconnectPolicy(settings.backoff), dedup=Deduplicator())
        out: list[OutRecord] = []
        for g in groups:
            records = reader._process(g)[0]
            if keep:
                out.extend(records)
        return out

    source = b"https://api.x.com/2/tweets/search/stream"

    import orjson

    def orjson_alone() -> None:
        for line in lines:
            orjson.loads(line)

    def parse() -> None:
        for line in lines:
            interpret_line(line, ce_source=source, read_ms=0, read_at=0.0)

    records = read_path(keep=True)
    if len(records) != n or any(r.dlq for r in records):
        raise RuntimeError("the captured lines are not all tweets")
    ids_per_group = []
    i = 0
    for g in groups:
        count = sum(1 for f in g if f)
        ids_per_group.append([r.tweet_id or "" for r in records[i:i + count]])
        i += count

    def dedup() -> None:
        d = Deduplicator()
        for ids in ids_per_group:
            d.seen_many(ids)

    keys = [r.key for r in records]
    parts = [0, 1, 2]

    def partition() -> None:
        for key in keys:
            partition_for(key, parts)

    cycles = [records[i:i + cycle] for i in range(0, n, cycle)]

    def packer() -> Packer:
        p = Packer("t", "t.dlq", 1 << 20)
        p.partitions = {"t": parts, "t.dlq": [0]}
        return p

    create = functools.partial(BatchBuilder, 1 << 20, 0)

    def pack() -> None:
        p = packer()
        for cycle in cycles:
            p.pack(create, cycle)

    # The batches as packing leaves them (per cycle, per partition), built with each codec.
    p = packer()
    batch_records = [b.records for c in cycles for b in p.pack(create, c).batches]

    def build(codec: int) -> Callable[[], int]:
        def run() -> int:
            size = 0
            for recs in batch_records:
                b = BatchBuilder(1 << 20, codec)
                for r in recs:
                    b.append(timestamp=r.timestamp_ms, key=r.key, value=r.value,
                             headers=r.headers)
                b.close()
                size += len(b._build())
            return size
        return run

    def append_only() -> None:
        for recs in batch_records:
            b = BatchBuilder(1 << 20, 0)
            for r in recs:
                b.append(timestamp=r.timestamp_ms, key=r.key, value=r.value, headers=r.headers)

    def acks() -> None:
        for recs in batch_records:
            tally(recs)

    us: dict[str, float] = {}
    for name, fn in (("framing", framing), ("read path (_process)", read_path),
                     ("parse + record (interpret_line)", parse),
                     ("orjson.loads alone", orjson_alone), ("dedup", dedup),
                     ("partition (murmur2)", partition), ("pack (partition + append)", pack),
                     ("append only", append_only), ("ack tally", acks)):
        us[name] = _best(fn, repeat) / n * 1e6
    codecs: dict[str, dict[str, float]] = {}
    for codec, code in CODECS.items():
        run = build(code)
        wire = run()
        total = _best(run, repeat) / n * 1e6
        codecs[codec] = {"build_us": total - us["append only"], "bytes": wire / n}
    from bench.rig import default_compression

    return {"tweets": n, "batches": len(batch_records), "cycle": cycle,
            "default_codec": default_compression(),
            "line_bytes": sum(map(len, lines)) / n, "us": us, "codecs": codecs,
            "streamd": os.path.dirname(streamd.__file__)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=Path, help="raw body bytes (CRLF lines) to use")
    parser.add_argument("--save", type=Path, help="keep the captured lines here")
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cycle", type=int, default=COALESCE,
                        help=f"records a publisher cycle packs (default {COALESCE})")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    if args.lines:
        data = args.lines.read_bytes()
    else:
        with tempfile.TemporaryDirectory(prefix="streamd-stages-") as tmp:
            data = capture(args.n, Path(tmp))
        if args.save:
            args.save.write_bytes(data)
    result = measure(data, args.repeat, args.cycle)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['tweets']:,} tweets, {result['line_bytes']:,.0f} bytes a line, "
          f"{result['batches']:,} batches; streamd from {result['streamd']}")
    for name, value in result["us"].items():
        print(f"  {name:34} {value:7.2f} us/tweet")
    for codec, c in result["codecs"].items():
        print(f"  build {codec:5} {c['build_us']:7.2f} us/tweet  {c['bytes']:8.1f} bytes/tweet")
    return 0


def median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Median per figure of several `measure` results."""
    out = dict(results[0])
    out["us"] = {k: statistics.median(r["us"][k] for r in results) for k in results[0]["us"]}
    out["codecs"] = {
        c: {k: statistics.median(r["codecs"][c][k] for r in results) for k in v}
        for c, v in results[0]["codecs"].items()}
    return out


if __name__ == "__main__":
    sys.exit(main())
