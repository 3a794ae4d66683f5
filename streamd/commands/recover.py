"""`streamd recover --start RFC3339 --end RFC3339`: a one-off recovery job (README
"Enterprise streams"). X re-streams that window (at most `stream.max_recovery_hours`, 24 h,
back) on the configured stream; its tweets go to `kafka.topic` like the live stream's, at
least once, deduplicated within the job. For a window an operator knows was lost (a
downstream Kafka incident, a daemon that was down on a tier without backfill).

It runs beside a running daemon: its own spool (`<spool.dir>/recover`), its operations
endpoint on a free port, no rules sync. Exit 0 when X delivered the whole window; 70 when
the job was refused (the tier has no recovery, the window is out of range) or stopped
before it ended; 78 for a window that cannot be asked for; 64 for an unreadable time.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from typing import TextIO

import anyio

from streamd.config import Settings
from streamd.daemon import Daemon
from streamd.reasons import ExitCode

RECOVER_SPOOL = "recover"


def parse_time(text: str) -> float:
    """An RFC 3339 time (a zone is required; `Z` or an offset) as epoch seconds."""
    parsed = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: write it as 2026-12-01T10:00:00Z")
    return parsed.timestamp()


def window_problem(start: float, end: float, now: float, max_hours: float) -> str | None:
    if end <= start:
        return "--end must be after --start"
    if end > now + 1:
        return "--end is in the future: X recovers only what was already posted"
    if start < now - max_hours * 3600:
        return (f"--start is more than {max_hours:g} h ago: X recovers at most 24 h back "
                "(stream.max_recovery_hours)")
    return None


def recover_command(settings: Settings, start_text: str, end_text: str, *,
                    out: TextIO | None = None, err: TextIO | None = None) -> int:
    stdout = sys.stdout if out is None else out
    stderr = sys.stderr if err is None else err
    try:
        start, end = parse_time(start_text), parse_time(end_text)
    except ValueError as exc:
        stderr.write(f"streamd recover: {exc}\n")
        return ExitCode.USAGE
    problem = window_problem(start, end, time.time(), settings.stream.max_recovery_hours)
    if problem is not None:
        stderr.write(f"streamd recover: {problem}\n")
        return ExitCode.CONFIG
    one_off = settings.model_copy(update={
        "spool": settings.spool.model_copy(update={"dir": settings.spool.dir / RECOVER_SPOOL}),
        "http": settings.http.model_copy(update={"listen": "127.0.0.1:0"}),
        "rules": settings.rules.model_copy(update={"mode": "off"}),
    })
    daemon = Daemon(one_off, recover=(start, end))
    code = anyio.run(daemon.run, backend="asyncio")
    parts = daemon.parts
    finished = parts.reader.recovery.finished if parts and parts.reader.recovery else []
    published = parts.publisher.stats.published if parts else 0
    spooled = parts.spool.count if parts else 0
    outcome = finished[0][1] if finished else "stopped"
    tweets = finished[0][0].tweets if finished else 0
    stdout.write(
        f"window {start_text} .. {end_text}: X sent {tweets} tweets; published {published}"
        f"{f', spooled {spooled}' if spooled else ''}; job {outcome}\n")
    if code != ExitCode.OK:
        return code
    return ExitCode.OK if outcome == "completed" else ExitCode.INTERNAL
