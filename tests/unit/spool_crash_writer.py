"""Writer half of the spool crash test (run as a subprocess, then SIGKILLed).

Usage: spool_crash_writer.py DIRECTORY FIRST_BATCH SEED

Appends batches forever. After each append returns it prints `A <batch> <first> <last> <n>`;
every few batches it deletes the oldest batch: `d <batch>` before, `D <batch>` once that
returned. An `A`/`D` line therefore means "committed"; a `d` alone means "maybe".
Entries are derived from (batch, index, n) by `expected_entry`, so the parent can check
that nothing it reads back is torn.
"""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

from streamd.kafka.spool import Spool
from streamd.records import OutRecord

MAX_BATCH = 40


def expected_entry(batch: int, index: int, n: int) -> OutRecord:
    digest = hashlib.sha256(f"{batch}:{index}".encode()).digest()
    size = 64 + digest[0] * 12  # 64 .. 3124 bytes
    value = (f"{batch}:{index}:{n}:".encode() + digest * (size // 32 + 1))[:size]
    return OutRecord(
        dlq=index % 7 == 0,
        key=f"{batch}:{index}:{n}".encode(),
        value=value,
        timestamp_ms=1_700_000_000_000 + batch * 1000 + index,
        headers=[("batch", str(batch).encode()), ("bin", bytes(range(256))[digest[1] :])],
        tweet_id=None if index % 5 == 0 else str(batch * 1000 + index),
        tags=() if index % 3 else (f"tag{batch % 4}",),
        read_at=0.0,
    )


def parse_key(key: bytes) -> tuple[int, int, int]:
    batch, index, n = (int(part) for part in key.split(b":"))
    return batch, index, n


def main() -> None:
    directory, first_batch, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rand = random.Random(seed)
    spool = Spool(directory, max_bytes=1 << 30)
    print("ready", flush=True)
    batch = first_batch
    while True:
        n = rand.randint(1, MAX_BATCH)
        seqs = spool.append([expected_entry(batch, i, n) for i in range(n)])
        print(f"A {batch} {seqs[0]} {seqs[-1]} {n}", flush=True)
        batch += 1
        if batch % 4 == 0:
            # Batches are at most MAX_BATCH long, so the oldest one is wholly in this peek.
            oldest = spool.peek(limit=MAX_BATCH, max_bytes=1 << 30)
            assert oldest[0][1].key is not None
            victim = parse_key(oldest[0][1].key)[0]
            print(f"d {victim}", flush=True)
            spool.delete(
                [seq for seq, e in oldest if e.key is not None and parse_key(e.key)[0] == victim]
            )
            print(f"D {victim}", flush=True)


if __name__ == "__main__":
    main()
