"""Summarise a py-spy `--idle --format raw` (collapsed stacks) profile of the daemon.

Each line is `frame;frame;...;leaf COUNT` (root first). Samples whose leaf is a wait
(the event loop's epoll, a worker thread's condition wait, a sleep) are idle: their share
of the main thread's samples says how much of the window the event loop had nothing to do.
Self time counts the leaf frame of busy samples; inclusive time counts each distinct
function once per busy stack. Percentages are of all busy samples.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

_LINE = re.compile(r"^(.*) (\d+)$")
_LINENO = re.compile(r":\d+\)$")
_IDLE_LEAF = re.compile(
    r"^(\w+\.)?(select|poll|wait|sleep|get|join|_wait_for_tstate_lock|acquire) \("
)


def _site_short(frame: str) -> str:
    """`func (/venv/lib/python3.12/site-packages/aiokafka/x.py:12)` -> `func (aiokafka/x.py)`."""
    frame = _LINENO.sub(")", frame)
    frame = re.sub(r"\(.*?site-packages/", "(", frame)
    frame = re.sub(r"\(.*?/lib/python3\.\d+/", "(stdlib/", frame)
    return re.sub(r"\(.*?/(streamd|bench)/", r"(\1/", frame)


def summarise(path: Path, top: int = 15) -> dict[str, Any]:
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    main_samples = 0
    main_idle = 0
    for raw in path.read_text().splitlines():
        match = _LINE.match(raw.strip())
        if not match:
            continue
        count = int(match.group(2))
        frames = [_site_short(f) for f in match.group(1).split(";") if f]
        if not frames:
            continue
        is_main = not frames[0].startswith("Thread._bootstrap")
        idle = bool(_IDLE_LEAF.match(frames[-1]))
        if is_main:
            main_samples += count
            main_idle += count if idle else 0
        if idle:
            continue
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    def pct(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, 100.0 * c / total) for name, c in counter.most_common(top)] if total else []

    # Inclusive time of the entry points says nothing; keep frames below 90 %.
    inclusive_useful = collections.Counter(
        {k: v for k, v in inclusive.items() if total and v / total < 0.9}
    )
    return {"samples": total, "self": pct(self_counts), "inclusive": pct(inclusive_useful),
            "main_idle_pct": 100.0 * main_idle / main_samples if main_samples else float("nan")}
