"""The stream reader: one connection at a time, framed, classified, queued.

reader -> line framing -> classification -> bounded queue. The reader never publishes: it
hands lists of records (one list per network read) to the publisher through a bounded memory
stream, so a slow Kafka shows up as queue depth, not as a stalled socket read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import httpx
from anyio.streams.memory import MemoryObjectSendStream

from streamd import __version__
from streamd.config import Settings
from streamd.dedup import Deduplicator
from streamd.errors import FatalDisconnect
from streamd.flow import Changes, Gate
from streamd.ops.logs import Logger
from streamd.ops.metrics import Metrics
from streamd.reasons import ExitCode, Reason
from streamd.records import DLQ_DECODE, DLQ_OVERSIZE, OutRecord, dlq_record, rfc3339_ms
from streamd.x.body import Inflater, read_capped
from streamd.x.classify import (
    Classification,
    classify_answer,
    classify_eof,
    classify_transport_error,
)
from streamd.x.framing import LineFramer, Oversize
from streamd.x.gaps import Gap, GapLedger, backfill_for_gap  # noqa: F401 - re-exported
from streamd.x.lines import ErrorMessage, interpret_line
from streamd.x.ownership import SlotKeeper
from streamd.x.reconnect import (
    Decision,
    Delay,
    Exit,
    ReconnectPolicy,
    Resync,
    WaitForRoom,
)
from streamd.x.wire import RateLimit, parse_answer, rate_limit, stream_query

T = TypeVar("T")

STREAM_PATH = "/2/tweets/search/stream"
USER_AGENT = f"streamd/{__version__} (+filtered-stream to Kafka; httpx/{httpx.__version__})"
# An error body on a failed connect is small; never buffer more than this of it.
_MAX_ERROR_BODY = 64 * 1024
# Closing a connection is quick or the peer is gone: never let it hold up a reconnect.
_CLOSE_TIMEOUT = 2.0

# The reader hands records over in lists of at most this many; the queue holds
# stream.queue_size // QUEUE_BATCH lists, so it bounds lines, not network reads.
QUEUE_BATCH = 100
# After stop(), the network read in hand is still taken whole (its lines were read from X)
# unless it is still inflating this long after: only a hostile body (a gzip bomb of junk
# lines, 64 MiB a read) takes more than milliseconds.
STOP_GRACE = 1.0
# Lines interpreted between two turns of the event loop. A 64 KiB slice of inflated body
# can hold 32,768 one-byte lines: at a few microseconds each, that would keep SIGTERM, the
# ops endpoint and the publisher waiting for a tenth of a second.
FRAMES_PER_TURN = 1024


def queue_batches(queue_size: int) -> int:
    return max(4, queue_size // QUEUE_BATCH)


def make_client(settings: Settings, token: str) -> httpx.AsyncClient:
    """A client for X: HTTP/2 when the server offers it, gzip accepted, no read timeout
    (the stream's stall watchdog owns that; the rules calls set their own)."""
    return httpx.AsyncClient(
        base_url=settings.x.api_url,
        http2=True,
        headers={
            "Authorization": f"Bearer {token}",
            "User-Agent": USER_AGENT,
            "Accept-Encoding": "gzip",
        },
        timeout=httpx.Timeout(settings.x.connect_timeout, read=None),
        follow_redirects=False,
    )


@dataclass(frozen=True, slots=True)
class StreamState:
    """What the reader tells the rest of the daemon (readiness, STATUS=, the watchdog)."""

    connected: bool = False
    usage_capped: bool = False  # from a usage_cap end until the next successful connect
    in_backoff: bool = False  # waiting on purpose: a reconnect delay, a full spool
    last_reason: Reason | None = None  # why the last connection ended; None once connected


def _rfc3339(epoch_seconds: float) -> str:
    return rfc3339_ms(int(epoch_seconds * 1000))


def _no_headers(seconds: float) -> Classification:
    return Classification(Reason.STALL, detail=f"no response headers within {seconds:g} s")


class StreamReader:
    def __init__(
        self,
        settings: Settings,
        client_factory: Callable[[], httpx.AsyncClient],
        metrics: Metrics,
        log: Logger,
        policy: ReconnectPolicy,
        *,
        dedup: Deduplicator | None = None,
        on_no_rules: Callable[[], Awaitable[bool]] | None = None,
        room: Gate | None = None,
        changes: Changes | None = None,
        clock: Callable[[], float] = time.time,
        last_read_at: float | None = None,
        keeper: SlotKeeper | None = None,
        name: str | None = None,
        ledger: GapLedger | None = None,
    ) -> None:
        """`policy` decides every reconnect; `on_no_rules` re-syncs the rules after a 409
        (True: the server holds rules now); `room` is the spool's room (closed: the reader
        stays off X); `changes` hears of every change of `connected`, `usage_capped`,
        `in_backoff` and `last_reason`; `keeper` owns the app's connection slot through
        X's Connections API (ownership.py); `name` labels this connection's events and
        metrics when there are several (live-1, live-2); `ledger` records its gaps (gaps.py;
        shared by the live connections)."""
        self._settings = settings
        # A fresh client, hence a fresh connection, for every connect: after a stall, a
        # connect timeout or our own close mid-body the old socket may be half dead, and
        # over HTTP/2 httpx does not reset an abandoned stream, which would keep holding
        # X's only connection slot. Closing the client closes its sockets.
        self._client_factory = client_factory
        self._metrics = metrics
        self._log = log
        self._policy = policy
        self._dedup = dedup
        self._on_no_rules = on_no_rules
        self._room = room
        self._changes = changes
        self._clock = clock
        self._keeper = keeper
        self._established = False  # the current session's connect was answered 200
        self.name = name
        self._labels: dict[str, str] = {"connection": name} if name else {}
        endpoint = settings.stream.stream
        self._path = endpoint.path
        self._partition = settings.stream.partition
        self.connected_since: float | None = None  # wall clock of the current connect
        if ledger is None:
            ledger = GapLedger(settings.stream, metrics, log, clock=clock)
            ledger.attach([self])
        self._ledger = ledger
        self._by_connection = (
            metrics.tweets_received_by_connection.labels(
                connection="recovery" if name.startswith("recovery") else name)
            if name else None)
        self._ce_source = settings.ce_source.encode()
        self._stopping = False
        self._stop_by = math.inf  # monotonic: a read still inflating past this is dropped
        self._read_scope: anyio.CancelScope | None = None
        self._healthy_since_connect = False  # the policy has heard of this connection's data
        self._state = StreamState()
        self.received = 0
        self.duplicates = 0
        self.last_progress = time.monotonic()
        # Wall-clock time of the last read from X (tweets and heartbeats alike): the start
        # of the gap that the next connect closes. Persisted by the daemon across restarts.
        self.last_read_at = last_read_at

    def stop(self) -> None:
        """Stop reading: end the current connection or backoff wait; run() then returns."""
        if not self._stopping:
            self._stop_by = time.monotonic() + STOP_GRACE
        self._stopping = True
        if self._read_scope is not None:
            self._read_scope.cancel()

    def resume(self) -> None:
        """Undo stop() once run() has returned: the next run() reads again (a standby
        elected again re-enters it; streamd/ha)."""
        self._stopping = False
        self._stop_by = math.inf

    async def run(self, send: MemoryObjectSendStream[list[OutRecord]]) -> None:
        """Connect, read, classify, and do what the policy decides; until stop() or a
        decision to exit (raised as FatalDisconnect). Closes `send` on the way out so the
        publisher drains and ends."""
        async with send:
            if self._keeper is not None:
                # A connection the previous run left active would refuse this one.
                await self._interruptible(self._keeper.before_first_connect())
            while not self._stopping:
                await self._wait_for_room()  # e.g. a full spool left by a previous run
                if self._stopping:
                    return
                outcome = await self._session(send, self._policy.start_attempt())
                self._update(replace(self._state, connected=False))
                self.connected_since = None
                if self._stopping:
                    return
                freed = False
                if self._keeper is not None:
                    # Who holds the slot, was ours evicted, is ours still counted by X.
                    seen = await self._interruptible(
                        self._keeper.after_end(outcome, established=self._established))
                    if self._stopping or seen is None:
                        return
                    outcome, freed = seen
                self._note_disconnect(outcome)
                decision = (self._policy.after_eviction(outcome) if freed
                            else self._policy.decide(outcome))
                await self._obey(outcome, decision)

    async def _interruptible(self, work: Awaitable[T]) -> T | None:
        """Await `work` unless stop() comes first (then None)."""
        result: T | None = None
        with anyio.CancelScope() as scope:
            self._read_scope = scope
            if self._stopping:
                scope.cancel()
            try:
                result = await work
            finally:
                self._read_scope = None
        return result

    async def _obey(self, outcome: Classification, decision: Decision) -> None:
        """Carry out the policy's decision on `outcome`; returns when it is time to connect."""
        if isinstance(decision, Resync):
            synced = self._on_no_rules is not None and await self._on_no_rules()
            if self._stopping:
                return
            decision = self._policy.after_resync(outcome, synced=synced)
        if isinstance(decision, WaitForRoom):
            await self._wait_for_room()
        elif isinstance(decision, Delay):
            reason = str(decision.reason)
            self._log.info("stream.reconnect_scheduled", reason=reason, **self._labels,
                           attempt=decision.attempt, delay_s=round(decision.seconds, 3))
            self._metrics.reconnect_delay.labels(reason=reason).observe(decision.seconds)
            await self._wait_on_purpose(anyio.sleep(decision.seconds))
        elif isinstance(decision, Exit):
            if decision.code is not ExitCode.OK:
                raise FatalDisconnect(str(decision.reason), decision.code, decision.detail)
            self.stop()

    async def _wait_for_room(self) -> None:
        room = self._room
        if room is None or room.is_open():
            return
        self._log.warning("stream.paused", reason=str(Reason.SPOOL_FULL),
                          detail="spool full: not reading X until it has room")
        await self._wait_on_purpose(room.wait_open())

    async def _wait_on_purpose(self, waiting: Awaitable[Any]) -> None:
        """A deliberate wait (backoff, full spool): stop() ends it; the watchdog knows."""
        self._update(replace(self._state, in_backoff=True))
        try:
            with anyio.CancelScope() as scope:
                self._read_scope = scope
                if self._stopping:
                    scope.cancel()
                await waiting
        finally:
            self._read_scope = None
            self._update(replace(self._state, in_backoff=False))

    def _note_disconnect(self, c: Classification) -> None:
        fields: dict[str, Any] = {"reason": str(c.reason), **self._labels}
        if c.status is not None:
            fields["status"] = c.status
        if c.disconnect_type:
            fields["disconnect_type"] = c.disconnect_type
        if c.detail:
            fields["detail"] = c.detail
        self._log.warning("stream.disconnected", **fields)
        self._metrics.stream_disconnects.labels(reason=str(c.reason)).inc()
        # A usage cap is cleared by the next successful connect, not by any other failure.
        capped = self.usage_capped or c.reason is Reason.USAGE_CAP
        self._update(replace(self._state, last_reason=c.reason, usage_capped=capped))

    def _update(self, state: StreamState) -> None:
        """The one way the observable state changes: its gauges follow, `changes` hears."""
        if state == self._state:
            return
        self._state = state
        self._metrics.stream_connected.set(1 if state.connected else 0)
        self._metrics.usage_capped.set(1 if state.usage_capped else 0)
        if self._changes is not None:
            self._changes.notify()

    @property
    def connected(self) -> bool:
        return self._state.connected

    @property
    def usage_capped(self) -> bool:
        return self._state.usage_capped

    @property
    def in_backoff(self) -> bool:
        return self._state.in_backoff

    @property
    def last_reason(self) -> Reason | None:
        return self._state.last_reason

    def _note_rate_limit(self, limits: RateLimit) -> None:
        if limits.remaining is not None:
            self._metrics.x_rate_limit_remaining.labels(endpoint="stream").set(limits.remaining)

    def _backfill_minutes(self) -> int:
        return self._ledger.backfill_minutes(self)

    def _query(self, backfill_minutes: int) -> dict[str, str]:
        """The stream request's parameters (a recovery connection asks for its window)."""
        return stream_query(self._settings.x, backfill_minutes=backfill_minutes,
                            partition=self._partition)

    async def _on_connected(self, attempt: int, backfill_minutes: int) -> None:
        now = self._clock()
        self._policy.on_connected()
        # X let us in: the usage cap no longer holds.
        self._update(replace(self._state, connected=True, usage_capped=False, last_reason=None))
        self._log.info("stream.connected", attempt=attempt, **self._labels,
                       **({"backfill_minutes": backfill_minutes} if backfill_minutes else {}))
        await self._record_gap(backfill_minutes)
        self.connected_since = self.last_read_at = now

    def _ended(self, message: Classification | None) -> Classification:
        """The body ended cleanly (the last chunk, END_STREAM): why, by the last message."""
        return classify_eof(message)

    async def _record_gap(self, backfill_minutes: int) -> None:
        await self._ledger.connected(self, backfill_minutes)

    async def _session(
        self, send: MemoryObjectSendStream[list[OutRecord]], attempt: int
    ) -> Classification:
        """One connect and, if it succeeds, one connection's life. Returns why it ended."""
        self._healthy_since_connect = False
        self._established = False
        framer = LineFramer(self._settings.stream.max_line_bytes)
        outcome = Classification(Reason.SHUTDOWN, detail="stopping")
        client = self._client_factory()
        try:
            with anyio.CancelScope() as scope:
                self._read_scope = scope
                if self._stopping:
                    scope.cancel()
                outcome = await self._connect_and_read(client, framer, send, attempt)
        finally:
            self._read_scope = None
            # Whatever state the connection is in, it goes: never back into a pool.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
                await client.aclose()
        await self._flush_tail(framer, send)
        return outcome

    async def _connect_and_read(
        self,
        client: httpx.AsyncClient,
        framer: LineFramer,
        send: MemoryObjectSendStream[list[OutRecord]],
        attempt: int,
    ) -> Classification:
        stall_timeout = self._settings.stream.stall_timeout
        backfill = self._backfill_minutes()
        request = client.build_request("GET", self._path, params=self._query(backfill))
        try:
            # X may accept the request and never answer: the wait for the response headers
            # is bounded like any other silence on the stream.
            with anyio.move_on_after(stall_timeout) as waiting:
                resp = await client.send(request, stream=True)
            if waiting.cancelled_caught:
                return _no_headers(stall_timeout)
            try:
                if resp.status_code != 200:
                    body = await _read_bounded(resp, _MAX_ERROR_BODY, stall_timeout)
                    answer = parse_answer(resp.status_code, resp.headers, body)
                    self._note_rate_limit(answer.rate_limit)
                    return classify_answer(answer)
                self._note_rate_limit(rate_limit(resp.headers))
                # Before "connected": a body we cannot decode is a failed connect, a
                # protocol problem like any other (httpx.DecodingError, reason network).
                inflater = Inflater(resp.headers.get("content-encoding"))
                await self._on_connected(attempt, backfill)
                self._established = True
                if self._keeper is None:
                    return await self._read_body(resp, inflater, framer, send)
                async with anyio.create_task_group() as tg:
                    # Which of the app's connections this is: learnt beside the reading.
                    tg.start_soon(self._keeper.learn, self._clock())
                    try:
                        ended = await self._read_body(resp, inflater, framer, send)
                    finally:
                        tg.cancel_scope.cancel()
                return ended
            finally:
                await resp.aclose()
        except (httpx.HTTPError, OSError) as exc:
            return classify_transport_error(exc)

    async def _read_body(
        self,
        resp: httpx.Response,
        inflater: Inflater,
        framer: LineFramer,
        send: MemoryObjectSendStream[list[OutRecord]],
    ) -> Classification:
        """Read until the body ends, stalls, fails, or we stop; return why it ended.

        The body is read raw and inflated here in slices of at most 64 KiB (body.py): a
        gzip bomb costs CPU, never memory. Each network read is taken in whole, slice by
        slice, turning the event loop between slices (and every FRAMES_PER_TURN lines), so a
        signal, the ops endpoint and the publisher keep running. A stop() is heeded after
        the read in hand is done (its lines were read from X and must reach the queue),
        or STOP_GRACE after the stop if the read is still inflating then.

        An in-stream disconnect message (operational-disconnect, usage-capped, ...) names the
        end even when the transport then dies abruptly (TCP reset, a missing final chunk,
        HTTP/2 RST_STREAM): X said why; the abrupt end is only how."""
        stall_timeout = self._settings.stream.stall_timeout
        message: Classification | None = None
        chunks = resp.aiter_raw()
        try:
            while True:
                with anyio.move_on_after(stall_timeout) as stall_scope:
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        return self._ended(message)
                if stall_scope.cancelled_caught:
                    return Classification(Reason.STALL, status=200,
                                          detail=f"no data for {stall_timeout:g} s")
                self.last_progress = time.monotonic()
                self.last_read_at = self._clock()
                # Shielded: stop() cancels the read scope, and a read half taken would lose
                # the lines of its other half. The checkpoints inside still turn the loop.
                with anyio.CancelScope(shield=True):
                    found, broken = await self._take(chunk, inflater, framer, send)
                if found is not None:
                    message = found
                if broken is not None:
                    raise broken
                if self._stopping:
                    return message or classify_eof(None)
                if self._room is not None and not self._room.is_open():
                    return Classification(
                        Reason.SPOOL_FULL, status=200,
                        detail="spool full: closing the stream until it has room")
        except (httpx.HTTPError, OSError) as exc:
            return message if message is not None else classify_transport_error(exc)

    async def _take(
        self,
        chunk: bytes,
        inflater: Inflater,
        framer: LineFramer,
        send: MemoryObjectSendStream[list[OutRecord]],
    ) -> tuple[Classification | None, httpx.DecodingError | None]:
        """Inflate, frame, interpret and queue one network read. Returns the last
        disconnect message in it, and the error that stopped its decoding, if any (what
        came before the error is queued, and the message still names the end)."""
        message: Classification | None = None
        first = True
        try:
            for piece in inflater.feed(chunk):
                if not first:
                    # Another slice of the same read (it inflated past 64 KiB): let the loop
                    # turn first. A read of one slice, the usual case, costs no extra turn.
                    self.last_progress = time.monotonic()
                    await anyio.lowlevel.checkpoint()
                    if self._stopping and time.monotonic() >= self._stop_by:
                        self._cut_read(inflater)
                        break
                first = False
                beats = framer.blank_lines(piece)
                if beats is not None:
                    # A run of heartbeats (a gzip bomb of newlines: 64 MiB a read) is
                    # counted, not framed.
                    self._metrics.keepalives.inc(beats)
                    self._metrics.lines_keepalive.inc(beats)
                    continue
                frames = framer.feed(piece)
                if len(frames) > FRAMES_PER_TURN:
                    beats = frames.count(b"")
                    if beats:
                        # A flood of blank lines (a gzip bomb of newlines: 64 Ki a slice):
                        # counted and dropped at C speed, not looped over.
                        self._metrics.keepalives.inc(beats)
                        self._metrics.lines_keepalive.inc(beats)
                        frames = list(filter(None, frames))
                count = len(frames)
                for start in range(0, count, FRAMES_PER_TURN):
                    group = frames if count <= FRAMES_PER_TURN else frames[
                        start:start + FRAMES_PER_TURN]
                    records, found = self._process(group)
                    if found is not None:
                        message = found
                    for i in range(0, len(records), QUEUE_BATCH):
                        # send() turns the loop every time. While the publisher has not
                        # taken the previous hand-over (it is busy: the daemon is loaded),
                        # this one is queued without a turn, so it finds several reads
                        # queued and packs fewer, larger batches (bench/PERFORMANCE.md).
                        # Otherwise (it waits for records: low latency matters more) and
                        # when the queue is full, send() as ever. The loop still turns at
                        # every network read.
                        batch = records[i:i + QUEUE_BATCH]
                        if send.statistics().current_buffer_used:
                            try:
                                send.send_nowait(batch)
                                continue
                            except anyio.WouldBlock:
                                pass
                        await send.send(batch)
                    if start + FRAMES_PER_TURN < count:
                        await anyio.lowlevel.checkpoint()
        except httpx.DecodingError as exc:
            return message, exc
        return message, None

    def _cut_read(self, inflater: Inflater) -> None:
        self._log.warning(
            "stream.read_cut", inflated_bytes=inflater.inflated,
            detail=f"stopping: a network read still inflating {STOP_GRACE:g} s after the stop "
                   "request was dropped unread (a normal read takes milliseconds)",
        )

    def _process(
        self, frames: list[bytes | Oversize]
    ) -> tuple[list[OutRecord], Classification | None]:
        metrics = self._metrics
        records: list[OutRecord] = []
        tweets: list[OutRecord] = []
        message: Classification | None = None
        # Heartbeats are counted in one C-speed pass; a read of nothing else is done.
        heartbeats = frames.count(b"")
        if heartbeats:
            metrics.keepalives.inc(heartbeats)
            metrics.lines_keepalive.inc(heartbeats)
            if heartbeats == len(frames):
                return records, message
        # One read time for the whole group: its lines arrived together.
        read_ms = time.time_ns() // 1_000_000
        read_at = time.monotonic()
        ce_source = self._ce_source
        for frame in frames:
            if not frame:
                continue
            if type(frame) is Oversize:
                records.append(dlq_record(
                    frame.prefix, DLQ_OVERSIZE,
                    f"line longer than stream.max_line_bytes "
                    f"({self._settings.stream.max_line_bytes}); first bytes kept",
                    read_ms=read_ms, read_at=read_at,
                ))
                metrics.tweets_dlq.labels(reason=DLQ_OVERSIZE).inc()
                continue
            out = interpret_line(frame, ce_source=ce_source, read_ms=read_ms, read_at=read_at)  # type: ignore[arg-type]
            if type(out) is OutRecord:
                if out.dlq:
                    metrics.tweets_dlq.labels(reason=out.headers[0][1].decode()).inc()
                    records.append(out)
                else:
                    tweets.append(out)
            else:
                message = self._on_error_message(out) or message  # type: ignore[arg-type]
        if records:  # so far only this read's dead letters
            metrics.lines_invalid.inc(len(records))
        if tweets:
            self.received += len(tweets)
            metrics.tweets_received.inc(len(tweets))
            if self._by_connection is not None:
                self._by_connection.inc(len(tweets))
            metrics.lines_tweet.inc(len(tweets))
            if not self._healthy_since_connect:
                self._healthy_since_connect = True
                self._policy.on_data()
            if self._dedup is not None:
                repeats = self._dedup.seen_many([t.tweet_id or "" for t in tweets])
                if any(repeats):
                    tweets = [t for t, repeat in zip(tweets, repeats, strict=True) if not repeat]
                    dropped = sum(repeats)
                    metrics.duplicates_dropped.inc(dropped)
                    self.duplicates += dropped
            if records:  # DLQ records of this read first, then its tweets
                records.extend(tweets)
            else:
                records = tweets
        return records, message

    def _on_error_message(self, msg: ErrorMessage) -> Classification | None:
        c = msg.classification
        first = msg.answer.errors[0] if msg.answer.errors else None
        self._log.warning(
            "stream.error_message",
            reason=str(c.reason) if c else None,
            title=first.title if first else None,
            detail=first.detail if first else None,
            disconnect_type=c.disconnect_type if c else None,
        )
        self._metrics.lines_error.inc()
        return c

    async def _flush_tail(
        self, framer: LineFramer, send: MemoryObjectSendStream[list[OutRecord]]
    ) -> None:
        """A line cut off by the end of the connection goes to the DLQ, not to /dev/null."""
        tail = framer.finish()
        if not tail:
            return
        record = dlq_record(
            tail, DLQ_DECODE, "truncated: the connection ended in the middle of this line",
            read_ms=time.time_ns() // 1_000_000, read_at=time.monotonic(),
        )
        self._metrics.tweets_dlq.labels(reason=DLQ_DECODE).inc()
        self._metrics.lines_invalid.inc()
        with anyio.CancelScope(shield=True):
            await send.send([record])


async def _read_bounded(resp: httpx.Response, limit: int, seconds: float) -> bytes:
    """An error answer's body for its detail: decoded, cut at `limit`, what came within
    `seconds` (body.py: never more than `limit` inflated bytes in memory)."""
    try:
        return await read_capped(resp, limit, seconds=seconds, truncate=True)
    except httpx.DecodingError:
        return b""  # the status still classifies the answer
