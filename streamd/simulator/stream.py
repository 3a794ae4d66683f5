"""One open `GET /2/tweets/search/stream` response: sends matching tweets, heartbeats and
injected faults as chunked `\\r\\n`-terminated lines, until a fault, a kick, a termination
through the Connections API, the usage cap, a slow reader or the client ends it. How it
ended sets its connection's `disconnect_reason` (connections.py)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson

from streamd.simulator import connections, problems
from streamd.simulator.connection import ConnectionControl
from streamd.simulator.connections import Connection
from streamd.simulator.endpoints import FILTERED_PATH, STREAM_ENDPOINTS, Share
from streamd.simulator.faults import Fault
from streamd.simulator.feed import Cursor, Event, Feed
from streamd.simulator.state import SimulatorState
from streamd.simulator.tweets import FieldSelection

ASGISend = Callable[[dict[str, Any]], Awaitable[None]]
ASGIReceive = Callable[[], Awaitable[dict[str, Any]]]

_CHUNK_TARGET = 64 * 1024
_MALFORMED_LINES = (
    b'{"data":{"id":"1","text":"not closed"',
    b"<html><body>502 Bad Gateway</body></html>",
    b'{"data": nope}',
    b"\x00\xff garbage \xfe",
)


# A fault's `end` -> how _finish ends the stream.
_ENDS = {"clean": "end", "reset": "reset", "no_final_chunk": "drop", "rst_stream": "rst_stream"}

# terminate_ending -> what a stream terminated through the Connections API is sent.
_OPERATOR_ENDS = {
    "operational_disconnect": Fault(
        "operational_disconnect", disconnect_type=connections.OPERATOR_DISCONNECT_TYPE,
        detail=connections.OPERATOR_DETAIL,
    ),
    "close": Fault.close(),
    "reset": Fault.close(end="reset"),
}


class _StreamEnded(Exception):
    """Raised inside the loop to stop sending; `how` says how the stream ends: "end" (clean
    end of body), "drop" (FIN, body not ended), "reset" (TCP RST after a drain),
    "rst_stream" (HTTP/2 RST_STREAM after a drain), "abort" (discard buffer), "gone".
    `reason`: the connection's disconnect_reason when the server ends it; None when the
    client went away."""

    def __init__(self, how: str, reason: str | None = None) -> None:
        super().__init__(how)
        self.how = how
        self.reason = reason


class StreamSession:
    def __init__(
        self,
        state: SimulatorState,
        feed: Feed,
        selection: FieldSelection,
        send: ASGISend,
        conn: ConnectionControl | None,
        use_gzip: bool,
        backfill_minutes: int = 0,
        recovery: tuple[float, float] | None = None,
        share: Share | None = None,
    ) -> None:
        self.state = state
        self.share = share if share is not None else Share(STREAM_ENDPOINTS[FILTERED_PATH])
        self.feed = feed
        self.selection = selection
        self.host = state.config.problem_host
        self._send = send
        self.conn = conn
        self.faults: collections.deque[Fault] = collections.deque()
        self.wake = asyncio.Event()
        self.finished = False
        self.closed = asyncio.Event()  # set once the end has been sent (or dropped)
        self.kicked = False
        # The connection this stream is (set when its 200 is decided), and how to end it
        # once it is terminated through the Connections API (a terminate_ending).
        self.connection: Connection | None = None
        self._operator_end: str | None = None
        self.client_gone = asyncio.Event()
        self.backfill_minutes = backfill_minutes
        self.recovery = recovery
        # Set when the clock is advanced: the stream sends what was created before (up to
        # this timeline position), then ends with this reason.
        self._stop_at: int | None = None
        self._stop_reason = connections.CLOCK_ADVANCED
        self._window_sent = 0  # tweets of the backfill/recovery window sent so far
        self._cursor: Cursor | None = None  # set by admit
        self._admitted_at = 0.0
        self._window_began: float | None = None  # monotonic, for recovery_rate
        self._window: list[Event] = []
        self._compressor = zlib.compressobj(6, zlib.DEFLATED, 31) if use_gzip else None
        self._heads = feed.heads_for(selection, self.host)
        self._last_write = time.monotonic()
        self._stall_until = 0.0
        self._last_tweet: tuple[str, bytes] | None = None
        self._split_next = 0
        self._unknown_fields_next = 0
        self._partial_errors_next = 0
        self._swap_next = 0
        self._batch = 128

    # --- connections.StreamHandle -------------------------------------------------------

    def client_went_away(self) -> bool:
        """The client has closed or reset the connection, noticed or not."""
        return self.client_gone.is_set() or (self.conn is not None and self.conn.gone())

    def kick(self) -> None:
        self.kicked = True
        self.state.call_in_loop(self.wake.set)

    def end_by_operator(self, ending: str) -> None:
        if ending not in _OPERATOR_ENDS:
            raise ValueError(f"unknown terminate_ending {ending!r}")
        self._operator_end = ending
        self.state.call_in_loop(self.wake.set)

    def admit(self, now: float) -> None:
        """The connect is answered 200 at `now` (simulated clock): what exists by then is
        the backfill or recovery window, what is created after is live. Under the state's
        lock, with the connection record opened at the same `now`."""
        with self.state.lock:
            feed = self.feed
            self._admitted_at = now
            self._cursor = feed.open_cursor(now)
            if self.recovery is not None:
                self._window = feed.window(*self.recovery, self.share,
                                           upto=self._cursor.position)
            elif self.backfill_minutes:
                self._window = feed.window(now - self.backfill_minutes * 60, now, self.share,
                                           upto=self._cursor.position)

    def stop_at(self, position: int, reason: str) -> None:
        """End once everything before timeline `position` is sent (cleanly, as `reason`);
        under the state's lock, from any thread: what is created later is never read."""
        self._stop_at = position
        self._stop_reason = reason
        self.state.call_in_loop(self.wake.set)

    # --- writing ------------------------------------------------------------------------

    def _encode(self, data: bytes) -> bytes:
        if self._compressor is None:
            return data
        # Sync-flush per chunk so each line reaches the client promptly.
        return self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)

    async def _write(self, data: bytes, *, encoded: bool = False) -> None:
        """Send `data`, gzip-encoded (and flushed) unless `encoded` says it already is."""
        if self.client_gone.is_set():
            raise _StreamEnded("gone")
        body = data if encoded else self._encode(data)
        message = {"type": "http.response.body", "body": body, "more_body": True}
        conn = self.conn
        if conn is not None and conn.backlogged():
            try:
                await asyncio.wait_for(self._send(message), self.state.config.slow_reader_seconds)
            except TimeoutError:
                raise _StreamEnded("abort", connections.SLOW_READER) from None
        else:
            await self._send(message)
        self._last_write = time.monotonic()

    async def _send_tweets(self, ids: list[str], lines: list[bytes]) -> None:
        if not lines:
            return
        self.state.record_tweets(ids, lines)
        await self._write(b"\r\n".join(lines) + b"\r\n")
        self._last_tweet = (ids[-1], lines[-1])

    async def _send_other(self, kind: str, line: bytes) -> None:
        self.state.record_line(kind, line)
        await self._write(line + b"\r\n")

    # --- main loop ----------------------------------------------------------------------

    async def run(self, receive: ASGIReceive) -> None:
        watcher = asyncio.ensure_future(self._watch_disconnect(receive))
        how = "end"
        reason: str | None = connections.SERVER_DISCONNECT
        state = self.state
        if self._cursor is None:
            self.admit(state.clock.now())
        cursor, window = self._cursor, self._window
        assert cursor is not None
        self._window = []
        try:
            for fault in state.take_pending_faults(recovery=self.recovery is not None):
                self.faults.append(fault)
            await self._send_window(window)
            if self.recovery is not None:
                await self._recovery_tail(cursor)
                raise _StreamEnded("end", connections.RECOVERY_COMPLETE)
            while True:
                await self._step(cursor)
        except _StreamEnded as ended:
            how, reason = ended.how, ended.reason
        except (ConnectionError, OSError):
            how, reason = "gone", None
        finally:
            self.finished = True
            with state.lock:
                if self in state.sessions:
                    state.sessions.remove(self)
                # Before the client can see the end: one that reconnects at once finds the
                # slot free (unless its connection stays a zombie).
                if self.connection is not None:
                    state.connections.stream_ended(self.connection, reason)
                # Still holding a socket until _finish returns: the simulator's stop aborts
                # it if it takes long (a final send to a reader that stopped reading).
                state.closing.add(self)
            try:
                await self._finish(how)
            finally:
                with state.lock:
                    state.closing.discard(self)
                self.closed.set()
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    async def _watch_disconnect(self, receive: ASGIReceive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.client_gone.set()
                self.wake.set()
                return

    async def _finish(self, how: str) -> None:
        conn = self.conn
        if how == "end":
            tail = self._compressor.flush(zlib.Z_FINISH) if self._compressor else b""
            # A reader that stopped reading would hold the final send (and the simulator's
            # stop, which no longer sees this session) forever: bounded like any write.
            try:
                await asyncio.wait_for(
                    self._send({"type": "http.response.body", "body": tail,
                                "more_body": False}),
                    self.state.config.slow_reader_seconds,
                )
            except TimeoutError:
                if conn is not None:
                    conn.abort()
                return
            except Exception:  # the client is gone: nothing to end
                pass
            if conn is not None:
                conn.release()
            return
        if how == "gone" or conn is None:
            return
        if how in ("reset", "rst_stream"):
            # What was sent (the disconnect message, half a line) must reach the client
            # before the reset, or its kernel would discard it.
            await conn.flushed(2.0)
            if how == "reset":
                conn.reset()
            else:
                conn.reset_stream()
        elif how == "abort":
            conn.abort()
        else:  # "drop": FIN mid-body (no terminating chunk / END_STREAM)
            conn.close()
        # Let the server see the stream go before the app returns.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.client_gone.wait(), 2.0)
        if not self.client_gone.is_set():
            conn.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.client_gone.wait(), 1.0)

    async def _send_bomb(self, fault: Fault) -> None:
        """Fault.gzip_bomb, as an attacker would shape it: the pieces go into the stream's
        deflate without a flush in between, and the compressed bytes out in writes of
        64 KiB, so a client's every network read inflates to tens of MB at once (1 MiB
        compresses to about 1 KB). One sync flush at the end, then the stream goes on as
        before. Recorded as one summary line, not as what it inflates to."""
        tweet_id = self.feed.next_id()
        compressor = self._compressor
        gzipped = " gzip" if compressor is not None else " (no gzip: sent as is)"
        summary = f"{fault.inflated_mb} MiB of {fault.shape}{gzipped}"
        self.state.record_line("gzip_bomb", summary.encode())
        if compressor is None:
            for piece in _bomb_pieces(fault, tweet_id):
                await self._write(piece)
            return
        pending = bytearray()
        for piece in _bomb_pieces(fault, tweet_id):
            pending += compressor.compress(piece)
            if len(pending) >= _BOMB_WRITE:
                await self._write(bytes(pending), encoded=True)
                pending.clear()
        pending += compressor.flush(zlib.Z_SYNC_FLUSH)
        await self._write(bytes(pending), encoded=True)

    async def _drain(self, limit: float) -> None:
        """Up to `limit` seconds for the client to receive what we wrote, then a moment for
        it to read that: the pieces of a split line must reach it as separate reads."""
        if self.conn is not None:
            await self.conn.flushed(limit)
        await asyncio.sleep(0.02)

    async def _send_window(self, window: list[Event]) -> None:
        """The backfill or recovery window, oldest first, in batches (a recovery at
        `recovery_rate`); between batches the injected faults act (a recovery_cut after its
        count of tweets)."""
        position = 0
        if self._window_began is None:
            self._window_began = time.monotonic()
        began = self._window_began
        while position < len(window):
            await self._check_open()
            cut: Fault | None = None
            deferred: list[Fault] = []
            while self.faults:
                fault = self.faults.popleft()
                if fault.kind == "recovery_cut":
                    deferred.append(fault)
                    if cut is None:
                        cut = fault
                    continue
                await self._apply(fault)
            self.faults.extend(deferred)
            size = min(256, len(window) - position)
            if cut is not None:
                if self._window_sent >= cut.after:
                    self.faults.remove(cut)
                    await self._cut(cut)
                size = min(size, cut.after - self._window_sent)
            rate = self.state.settings.recovery_rate
            if self.recovery is not None and not math.isinf(rate):
                size = min(size, max(1, int(rate / 20)))
                if await self._pace(began + self._window_sent / rate):
                    continue  # waited: faults and the client first
            await self._send_events(window[position : position + size])
            position += size
            self._window_sent += size
            if self.recovery is not None:
                self.state.recovery_sent += size

    async def _recovery_tail(self, cursor: Cursor) -> None:
        """A recovery whose end_time was still ahead when it connected: wait (with
        heartbeats) until the clock passes it, then send what of the window was created
        meanwhile."""
        assert self.recovery is not None
        start, end = self.recovery
        clock = self.state.clock
        if end <= self._admitted_at:
            return  # the whole window existed at the connect
        while (left := end - clock.now()) > 0:
            await self._check_open()
            heartbeat = self.state.settings.heartbeat_interval
            idle = time.monotonic() - self._last_write
            if idle >= heartbeat:
                await self._write(b"\r\n")
                idle = 0.0
            await self._sleep(min(left, heartbeat - idle))
        await self._send_window(self.feed.window(start, end, self.share,
                                                 after=cursor.position))

    async def _check_open(self) -> None:
        """Raise _StreamEnded if the client went away, the simulator stops or the
        connection was terminated."""
        if self.client_gone.is_set():
            raise _StreamEnded("gone")
        if self.state.stopping:
            raise _StreamEnded("end", connections.SERVER_SHUTDOWN)
        if self._operator_end is not None:
            await self._apply(_OPERATOR_ENDS[self._operator_end])
        if self.kicked:
            raise _StreamEnded("end", connections.DUPLICATE_CONNECTION)

    async def _pace(self, due: float) -> bool:
        """Wait until `due` (monotonic), with heartbeats; True if it waited."""
        now = time.monotonic()
        if now >= due:
            return False
        heartbeat = self.state.settings.heartbeat_interval
        idle = now - self._last_write
        if idle >= heartbeat:
            await self._write(b"\r\n")
            idle = 0.0
        await self._sleep(min(due - now, heartbeat - idle))
        return True

    async def _cut(self, fault: Fault) -> None:
        """recovery_cut: the recovery stream ends before its window is sent."""
        if fault.notice:
            problem = problems.operational_disconnect(self.host, "OperationalDisconnect")
            await self._send_other("operational_disconnect", orjson.dumps({"errors": [problem]}))
        raise _StreamEnded(_ENDS[fault.end], connections.SERVER_DISCONNECT)

    async def _step(self, cursor: Cursor) -> None:
        if self.client_gone.is_set():
            raise _StreamEnded("gone")
        stop_at = self._stop_at
        if stop_at is not None:
            self._stall_until = 0.0  # an advance ends a stalled stream too, at once
            if self.feed.at_end(cursor, stop_at):
                raise _StreamEnded("end", self._stop_reason)
        if self._operator_end is not None:
            # Terminated: its connection is already inactive (operator_disconnect).
            await self._apply(_OPERATOR_ENDS[self._operator_end])
        if self.kicked:
            raise _StreamEnded("end", connections.DUPLICATE_CONNECTION)
        if self.state.stopping:
            raise _StreamEnded("end", connections.SERVER_SHUTDOWN)
        deferred: list[Fault] = []
        while self.faults:
            fault = self.faults.popleft()
            if fault.kind == "duplicate" and self._last_tweet is None:
                deferred.append(fault)  # nothing to duplicate yet: retry after a tweet
                continue
            await self._apply(fault)
        self.faults.extend(deferred)
        now = time.monotonic()
        if now < self._stall_until:
            await self._sleep(self._stall_until - now)
            return
        settings = self.state.settings
        limit = None
        if settings.usage_cap is not None:
            limit = settings.usage_cap - self.state.sent_count()
            if limit <= 0:
                raise _StreamEnded("end", connections.USAGE_CAPPED)
        modifiers = self._split_next or self._unknown_fields_next or self._partial_errors_next or (
            self._swap_next
        )
        wanted = 2 if self._swap_next else 1 if modifiers else self._batch
        events = self.feed.pull(cursor, wanted, limit, self.share, upto=stop_at)
        if events:
            if modifiers:
                await self._send_modified(events)
            else:
                await self._send_events(events)
            if math.isinf(settings.tweets_per_second):
                await asyncio.sleep(0)  # let other connections and control calls run
            return
        heartbeat = settings.heartbeat_interval
        idle = now - self._last_write
        if idle >= heartbeat:
            await self._write(b"\r\n")
            idle = 0.0
        wait = heartbeat - idle
        if stop_at is not None:
            return  # what is left before the stop position is not of this share
        if not self.feed.at_end(cursor, None):
            await asyncio.sleep(0)  # a sparse share: more of the timeline to look through
            return
        token_in = self.feed.seconds_to_next_tweet()
        if token_in is not None:
            wait = min(wait, max(token_in, 0.002))
        with self.state.lock:
            rules_in = self.state.rules.next_change_in()
        if rules_in is not None:
            wait = min(wait, rules_in + 0.001)
        await self._sleep(wait)

    async def _sleep(self, seconds: float) -> None:
        if self.wake.is_set():
            self.wake.clear()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), max(seconds, 0.0))
        self.wake.clear()

    def _render(self, event: Event) -> bytes:
        return self.feed.render(event, self._heads, self.selection, self.host,
                                filtered=self.share.filtered)

    async def _send_events(self, events: list[Event]) -> None:
        ids: list[str] = []
        lines: list[bytes] = []
        render = self._render
        for event in events:
            line = render(event)
            if event[1] is None:
                await self._send_tweets(ids, lines)
                ids, lines = [], []
                await self._send_other("replay", line)
                continue
            ids.append(event[1])
            lines.append(line)
        await self._send_tweets(ids, lines)
        if lines:
            average = max(64, sum(map(len, lines)) // len(lines))
            self._batch = max(1, min(4096, _CHUNK_TARGET // average))

    async def _send_modified(self, events: list[Event]) -> None:
        if self._swap_next and len(events) == 2:
            self._swap_next = 0
            await self._send_events([events[1], events[0]])
            return
        if self._swap_next:
            # Only one tweet was available: put it back in spirit by sending as is.
            await self._send_events(events)
            return
        event = events[0]
        if event[1] is None:
            await self._send_events(events)
            return
        line = self._render(event)
        tweet_id = event[1]
        if self._unknown_fields_next:
            self._unknown_fields_next -= 1
            line = _with_unknown_fields(line)
        if self._partial_errors_next:
            self._partial_errors_next -= 1
            line = _with_partial_errors(line, self.host, tweet_id)
        if self._split_next:
            self._split_next -= 1
            self.state.record_tweets([tweet_id], [line])
            full = line + b"\r\n"
            cuts = sorted({max(1, len(full) // 3), max(2, 2 * len(full) // 3)})
            pieces = [full[: cuts[0]], full[cuts[0] : cuts[-1]], full[cuts[-1] :]]
            for piece in pieces:
                if piece:
                    await self._write(piece)
                    await self._drain(0.5)
            self._last_tweet = (tweet_id, line)
            return
        await self._send_tweets([tweet_id], [line])

    # --- faults -------------------------------------------------------------------------

    async def _apply(self, fault: Fault) -> None:
        kind = fault.kind
        if kind == "operational_disconnect":
            problem = problems.operational_disconnect(
                self.host, fault.disconnect_type, fault.detail
            )
            await self._send_other("operational_disconnect", orjson.dumps({"errors": [problem]}))
            raise _StreamEnded(_ENDS[fault.end], connections.SERVER_DISCONNECT)
        if kind == "usage_capped":
            product = self.state.settings.product_name
            body = {"errors": [problems.usage_capped_problem(self.host, product)]}
            await self._send_other("usage_capped", orjson.dumps(body))
            raise _StreamEnded(_ENDS[fault.end], connections.USAGE_CAPPED)
        if kind == "close":
            raise _StreamEnded(_ENDS[fault.end], connections.SERVER_DISCONNECT)
        if kind == "slow_reader_drop":
            raise _StreamEnded("drop", connections.SLOW_READER)
        if kind == "reset_mid_line":
            fresh = self.feed.fresh_line(self.selection, self.host)
            line = fresh[1] if fresh else b'{"data":{"id":"1","text":"reset mid line"}}'
            half = line[: max(1, len(line) // 2)]
            self.state.record_line("reset_partial", half)
            await self._write(half)
            raise _StreamEnded("reset", connections.SERVER_DISCONNECT)
        if kind == "stall":
            self._stall_until = time.monotonic() + fault.seconds
            return
        if kind == "split_line":
            self._split_next += 1
            return
        if kind == "out_of_order":
            self._swap_next = 1
            return
        if kind == "unknown_fields":
            self._unknown_fields_next += 1
            return
        if kind == "partial_errors":
            self._partial_errors_next += 1
            return
        if kind == "raw":
            for line in fault.lines:
                await self._send_other("raw", line)
            return
        if kind == "gzip_bomb":
            await self._send_bomb(fault)
            return
        if kind == "recovery_cut":
            return  # for recovery streams only (_send_window)
        if kind == "malformed":
            for number in range(fault.count):
                line = _MALFORMED_LINES[number % len(_MALFORMED_LINES)]
                await self._send_other("malformed", line)
            return
        if kind == "truncated":
            for _ in range(fault.count):
                fresh = self.feed.fresh_line(self.selection, self.host)
                line = fresh[1] if fresh else b'{"data":{"id":"1","text":"truncated line"}}'
                await self._send_other("truncated", line[: max(1, len(line) * 2 // 3)])
            return
        if kind == "duplicate":
            assert self._last_tweet is not None
            tweet_id, line = self._last_tweet
            await self._send_tweets([tweet_id] * fault.count, [line] * fault.count)
            return
        if kind == "unknown_message":
            message = {"foo_event": {"id": self.feed.next_id(), "kind": "preview",
                                     "note": "a message type this client has never seen"}}
            await self._send_other("unknown_message", orjson.dumps(message))
            return
        raise ValueError(f"unhandled fault {kind!r}")


_BOMB_PIECE = 1 << 20
_BOMB_WRITE = 64 * 1024  # compressed bytes per write: ~64 MiB inflated


def _bomb_pieces(fault: Fault, tweet_id: str) -> Iterator[bytes]:
    """The inflated bytes of a gzip bomb, 1 MiB at a time (never all at once)."""
    total = fault.inflated_mb * _BOMB_PIECE
    if fault.shape == "heartbeats":
        for _ in range(fault.inflated_mb):
            yield b"\r\n" * (_BOMB_PIECE // 2)
        return
    if fault.shape == "junk_lines":
        for _ in range(fault.inflated_mb):
            yield b"x\r\n" * (_BOMB_PIECE // 3)
        return
    head = b'{"data":{"id":"' + tweet_id.encode() + b'","text":"'
    tail = b'"},"matching_rules":[]}\r\n'
    yield head
    body = total - len(head) - len(tail)
    while body > 0:
        size = min(body, _BOMB_PIECE)
        yield b"x" * size
        body -= size
    yield tail


def _with_unknown_fields(line: bytes) -> bytes:
    """Adds fields X may introduce one day: inside data and at the top level."""
    line = line.replace(b'{"data":{', b'{"data":{"future_field":{"added":"2031-01-01"},', 1)
    return line[:-1] + b',"future_top_level":[1,2,3]}'


def _with_partial_errors(line: bytes, host: str, tweet_id: str) -> bytes:
    error = problems.resource_not_found(host, str(int(tweet_id) - 1))
    return line[:-1] + b',"errors":' + orjson.dumps([error]) + b"}"
