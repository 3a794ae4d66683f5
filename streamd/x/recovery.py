"""Recovery jobs (README "Enterprise streams"): X re-streams a past window on the same
endpoint (`start_time`/`end_time`, at most 24 h back), then ends the connection.

A job is a `RecoveryReader`: a stream reader whose request carries the window and whose
clean end (the last chunk, HTTP/2 END_STREAM) means the window was delivered (reason
`recovery_complete`). Any other end resumes the job, after the usual backoff, from the
creation time of the newest tweet it delivered (read from the tweet id, a snowflake), so a
job X ends early is neither redone nor dropped. A refusal no retry can fix (403: the tier
has no recovery; 400: the window is out of range) fails the job; the gap is then closed as
`none` with X's reason. Tweets go to the same queue, through the same deduplication.

`RecoveryJobs` runs at most MAX_CONCURRENT jobs beside the live stream (X allows 2
recovery jobs at once on the filtered stream) and persists them (`JobStore`: the spool's
database), so a restart resumes a job rather than redoing or dropping it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import anyio
import orjson
from anyio.streams.memory import MemoryObjectSendStream

from streamd.errors import FatalDisconnect
from streamd.ops.logs import Logger
from streamd.ops.metrics import Metrics
from streamd.reasons import ExitCode, Reason
from streamd.records import OutRecord, rfc3339_ms
from streamd.x.classify import Classification
from streamd.x.gaps import GapLedger, GapRow, created_at_of
from streamd.x.ownership import LEARN_TOLERANCE_S
from streamd.x.reconnect import Decision, Exit
from streamd.x.stream import StreamReader
from streamd.x.wire import stream_query

__all__ = ["MAX_CONCURRENT", "Job", "JobStore", "RecoveryJobs", "RecoveryReader"]

MAX_CONCURRENT = 2
JOBS_KEY = "stream.recovery_jobs"
# A job starts this long after it was scheduled (or found at start-up): the live connect
# that found the gap is then told apart from the job's connection in X's connection list
# (ownership.py matches connect times within 5 s).
START_DELAY_S = LEARN_TOLERANCE_S + 1.0
# How often a running job's progress is written down.
CHECKPOINT_S = 1.0
# X's start_time is whole seconds: a resumed job starts a little before the newest tweet it
# had, and the duplicates this re-sends are dropped by the deduplication.
RESUME_MARGIN_S = 1.0


def _when(epoch: float) -> str:
    return rfc3339_ms(int(epoch * 1000))


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    start: float  # the window, epoch seconds
    end: float
    resume_from: float  # where the next connection starts (progress)
    gap: GapRow | None = None
    gap_id: int | None = None
    tweets: int = 0  # delivered so far (all connections of the job)

    def to_json(self) -> dict[str, Any]:
        gap = self.gap
        return {
            "id": self.id, "start": self.start, "end": self.end,
            "resume_from": self.resume_from, "gap_id": self.gap_id, "tweets": self.tweets,
            "gap": None if gap is None else [gap.start, gap.end, gap.covered_by, gap.detail,
                                             gap.connection],
        }

    @classmethod
    def from_json(cls, obj: Any) -> Job | None:
        try:
            gap = obj.get("gap")
            return cls(
                int(obj["id"]), float(obj["start"]), float(obj["end"]),
                float(obj["resume_from"]),
                GapRow(float(gap[0]), float(gap[1]), str(gap[2]), str(gap[3]),
                       None if gap[4] is None else str(gap[4])) if gap else None,
                None if obj.get("gap_id") is None else int(obj["gap_id"]),
                int(obj.get("tweets", 0)),
            )
        except (AttributeError, KeyError, IndexError, TypeError, ValueError):
            return None


class JobStore(Protocol):
    async def load(self) -> str | None: ...
    async def save(self, text: str) -> None: ...


class _Progress:
    """The job's queue end: passes every list on, noting the newest tweet's creation time."""

    def __init__(self, send: MemoryObjectSendStream[list[OutRecord]]) -> None:
        self._send = send
        self.newest: float | None = None
        self.tweets = 0

    def _note(self, records: list[OutRecord]) -> None:
        for record in records:
            if record.tweet_id is not None and not record.dlq:
                self.tweets += 1
                created = created_at_of(record.tweet_id)
                if created is not None and (self.newest is None or created > self.newest):
                    self.newest = created

    async def send(self, records: list[OutRecord]) -> None:
        await self._send.send(records)
        self._note(records)

    def send_nowait(self, records: list[OutRecord]) -> None:
        self._send.send_nowait(records)  # raises WouldBlock when full: nothing noted
        self._note(records)

    async def __aenter__(self) -> _Progress:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._send.aclose()

    def close(self) -> None:
        self._send.close()

    def __getattr__(self, name: str) -> Any:
        # Everything else of the memory stream (statistics(), ...), as it is.
        return getattr(self._send, name)


class RecoveryReader(StreamReader):
    """One connection of a recovery job: its window in the request, its clean end the
    job's completion, a refusal the job's failure (never the daemon's)."""

    def __init__(self, *args: Any, window: tuple[float, float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.window = window
        self.completed = False
        self.failure: str | None = None

    def _query(self, backfill_minutes: int) -> dict[str, str]:
        return stream_query(self._settings.x, partition=self._partition,
                            start_time=self.window[0], end_time=self.window[1])

    def _backfill_minutes(self) -> int:
        return 0

    async def _record_gap(self, backfill_minutes: int) -> None:
        return  # a recovery connection closes gaps; it has none of its own

    def _ended(self, message: Classification | None) -> Classification:
        if message is not None:
            return message
        return Classification(Reason.RECOVERY_COMPLETE, status=200,
                              detail="X delivered the window and ended the connection")

    async def _obey(self, outcome: Classification, decision: Decision) -> None:
        if outcome.reason is Reason.RECOVERY_COMPLETE:
            self.completed = True
            self.stop()
            return
        if isinstance(decision, Exit) and decision.code is not ExitCode.OK:
            self.failure = f"{outcome.reason}: {outcome.detail or 'refused'}"
            self.stop()
            return
        await super()._obey(outcome, decision)


ReaderFactory = Callable[[Job, str], RecoveryReader]


class RecoveryJobs:
    """The recovery jobs of this daemon: scheduled by the gap ledger (or `streamd recover`),
    run beside the live stream, persisted until they end."""

    def __init__(
        self,
        make_reader: ReaderFactory,
        ledger: GapLedger | None,
        metrics: Metrics,
        log: Logger,
        *,
        store: JobStore | None = None,
        clock: Callable[[], float] = time.time,
        start_delay: float = START_DELAY_S,
    ) -> None:
        self._make_reader = make_reader
        self._start_delay = start_delay
        self._not_before: dict[int, float] = {}  # job id -> anyio clock
        self._ledger = ledger
        self._metrics = metrics
        self._log = log
        self._store = store
        self._clock = clock
        self._jobs: dict[int, Job] = {}
        self._running: dict[int, RecoveryReader] = {}
        self._ids = itertools.count(1)
        self._wake = anyio.Event()
        self._all_done = anyio.Event()  # set when the last job ends
        self._stopping = False
        self._finished: list[tuple[Job, str]] = []  # (job, outcome), for `streamd recover`

    @property
    def pending(self) -> int:
        return len(self._jobs)

    @property
    def finished(self) -> list[tuple[Job, str]]:
        return list(self._finished)

    async def load(self) -> None:
        """The jobs a previous run left unfinished: resumed where they stopped."""
        if self._store is None:
            return
        text = await self._store.load()
        try:
            items = orjson.loads(text) if text else []
        except orjson.JSONDecodeError:
            items = []
        for item in items if isinstance(items, list) else []:
            job = Job.from_json(item)
            if job is not None:
                self._jobs[job.id] = job
                self._not_before[job.id] = anyio.current_time() + self._start_delay
        self._ids = itertools.count(max(self._jobs, default=0) + 1)
        if self._jobs:
            self._log.info("recovery.found", jobs=len(self._jobs),
                           detail="resuming the recovery jobs a previous run left")

    def schedule(self, start: float, end: float, gap: GapRow | None, gap_id: int | None) -> None:
        job = Job(next(self._ids), start, end, start, gap, gap_id)
        self._jobs[job.id] = job
        self._not_before[job.id] = anyio.current_time() + self._start_delay
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        for reader in list(self._running.values()):
            reader.stop()
        self._wake.set()

    def resume(self) -> None:
        """Undo stop() once run() has returned: unfinished jobs run again at the next run()
        (streamd/ha: only the leader reads X)."""
        self._stopping = False

    async def run(self, send: MemoryObjectSendStream[list[OutRecord]]) -> None:
        """Run jobs as they come, MAX_CONCURRENT at a time, until stop(). Closes `send`."""
        async with send, anyio.create_task_group() as tg:
            while not self._stopping:
                await self._save()
                now = anyio.current_time()
                later = math.inf  # the next delayed job's start
                for job in sorted(self._jobs.values(), key=lambda j: j.id):
                    if len(self._running) >= MAX_CONCURRENT:
                        break
                    if job.id in self._running:
                        continue
                    not_before = self._not_before.get(job.id, now)
                    if not_before > now:
                        later = min(later, not_before)
                        continue
                    reader = self._make_reader(job, f"recovery-{job.id}")
                    self._running[job.id] = reader
                    tg.start_soon(self._run_job, job, reader, send.clone())
                self._wake = anyio.Event()
                if self._stopping:  # a stop() during the awaits above set the old event
                    break
                with anyio.move_on_after(later - now):
                    await self._wake.wait()
        # After the jobs' tasks ended: their last progress is in.
        await self._save()

    async def run_until_done(self, send: MemoryObjectSendStream[list[OutRecord]]) -> None:
        """`streamd recover`: run what is scheduled, then stop."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.run, send)
            if self._jobs:
                await self._all_done.wait()
            self.stop()

    async def _run_job(
        self, job: Job, reader: RecoveryReader, send: MemoryObjectSendStream[list[OutRecord]]
    ) -> None:
        progress = _Progress(send)
        self._log.info("recovery.started", start_time=_when(job.resume_from),
                       end_time=_when(job.end), job=job.id,
                       **({"resumed": True} if job.resume_from > job.start else {}))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._checkpoints, job, progress)
                try:
                    await reader.run(progress)  # type: ignore[arg-type]
                finally:
                    tg.cancel_scope.cancel()
        except FatalDisconnect as exc:  # pragma: no cover - _obey turns exits into failures
            reader.failure = str(exc)
        finally:
            self._running.pop(job.id, None)
            job = self._progressed(job, progress)
            self._jobs[job.id] = job
        if reader.completed:
            await self._end(job, "completed", "recovery", "recovery job delivered the window")
        elif reader.failure is not None:
            await self._end(job, "failed", "none",
                            f"recovery job refused: {reader.failure}")
        self._wake.set()

    @staticmethod
    def _progressed(job: Job, progress: _Progress) -> Job:
        job = replace(job, tweets=job.tweets + progress.tweets)
        if progress.newest is not None:
            job = replace(job, resume_from=max(job.resume_from,
                                               progress.newest - RESUME_MARGIN_S))
        return job

    async def _checkpoints(self, job: Job, progress: _Progress) -> None:
        """While the job reads: its progress persisted every CHECKPOINT_S, so even a
        SIGKILL leaves at most that much to re-stream."""
        saved = job.resume_from
        while True:
            await anyio.sleep(CHECKPOINT_S)
            current = self._progressed(job, progress)
            if current.resume_from > saved and job.id in self._jobs:
                self._jobs[job.id] = replace(current, tweets=job.tweets)
                await self._save()
                saved = current.resume_from

    async def _end(self, job: Job, outcome: str, covered_by: str, detail: str) -> None:
        self._jobs.pop(job.id, None)
        if not self._jobs:
            self._all_done.set()
        self._finished.append((job, outcome))
        self._metrics.recovery_jobs.labels(outcome=outcome).inc()
        self._log.info("recovery.completed", start_time=_when(job.start),
                       end_time=_when(job.end), tweets=job.tweets, outcome=outcome,
                       job=job.id, detail=detail)
        if self._ledger is not None and job.gap is not None:
            await self._ledger.settle(job.gap, job.gap_id, covered_by, detail)
        await self._save()

    async def _save(self) -> None:
        if self._store is None:
            return
        text = orjson.dumps([j.to_json() for j in self._jobs.values()]).decode()
        with anyio.CancelScope(shield=True):
            await self._store.save(text)
