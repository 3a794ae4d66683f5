"""The daemon's lifecycle in named phases, like uvicorn's `Server`: startup, the main loop,
shutdown (README "Run" and "Delivery guarantee").

* **Startup.** First the resources, before anything runs (`_acquire`): the secrets, the
  spool (one daemon per spool directory), the duplicate window it remembers, the parts (the
  publisher and the stream reader). An error here is reported by the command line with its
  exit code: nothing was read, there is nothing to flush. Then, in one task group
  (`_startup`): the operations endpoint (`http.listening`), the signal watcher, the
  publisher, the systemd status task, the last-read keeper, and the start-up rules sync.
* **Main loop** (`_main_loop`): the reader reads X until a stop is asked for or a fatal
  error ends it.
* **Shutdown** (`_shutdown`, then `_release`): one budget, counted from the stop request
  (`ShutdownBudget`). The publisher flushes to Kafka until `kafka.flush_timeout` after it and
  spools the rest; the state saves (the last read time, the duplicate window) and closing
  the spool fit in SHUTDOWN_MARGIN_S more. Then `daemon.stopped`.

SIGTERM/SIGINT ask for a stop (`request_stop`): the reader ends its connection or its wait,
and a rules wait ends at once. SIGHUP re-reads the config file and re-syncs the rules while
the stream stays connected. Rules syncs never interleave (start-up, SIGHUP, the 409 path).

Every error that ends the daemon ends it the same way: `daemon.fatal` with the reason, the
shutdown above, `daemon.stopped`, and the error's own exit code (77 credentials, 78
configuration or rules, 70 anything else). That holds wherever the error arises: the
start-up rules sync, the stream, a re-sync after 409 or SIGHUP, or a task of the group.

What /readyz, STATUS=, the watchdog and the shutdown read is one object, `self.state`
(`streamd.ops.health.DaemonState`); the parts announce their changes on `state.changes`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass

import anyio
import httpx
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from streamd.config import Settings, load_settings
from streamd.dedup import DEDUP_MAX_IDS, DEDUP_WINDOW_S, Deduplicator
from streamd.errors import ConfigError, CredentialsError, RulesError, StreamdError
from streamd.ha.election import Election, client_settings  # high availability
from streamd.ha.leadership import RECORD_TIMEOUT_S, Leadership
from streamd.ha.records import RecordLog
from streamd.kafka.publisher import KafkaPublisher
from streamd.kafka.spool import Spool
from streamd.ops import sdnotify
from streamd.ops.health import DaemonState, Phase
from streamd.ops.http import OpsApp, serve_ops
from streamd.ops.logs import get_logger
from streamd.ops.metrics import Metrics
from streamd.ops.status import report_to_systemd
from streamd.reasons import ExitCode
from streamd.records import OutRecord
from streamd.x.connections import ConnectionsApi
from streamd.x.gaps import GapLedger, GapRow
from streamd.x.ownership import OWN_CONNECTION_KEY, SlotKeeper
from streamd.x.reconnect import ReconnectPolicy
from streamd.x.recovery import JOBS_KEY, START_DELAY_S, Job, RecoveryJobs, RecoveryReader
from streamd.x.rules import RulesApi, sync_configured_rules
from streamd.x.stream import StreamReader, make_client, queue_batches
from streamd.x.streams import Streams

# The spool's meta key for the wall-clock time of the last read from X (epoch seconds):
# after a restart, the gap since then sizes the backfill and is logged as stream.gap.
LAST_READ_KEY = "last_read_at"
# How often that time is written down: a crash loses at most this much of its precision,
# and the backfill is rounded up to whole minutes anyway.
LAST_READ_EVERY_S = 1.0
# Past flush_timeout, the final spool writes, the state saves and closing the spool get this
# much; the README, the unit's TimeoutStopSec and the pod's grace period allow for it.
SHUTDOWN_MARGIN_S = 2.0


@dataclass(frozen=True, slots=True)
class ShutdownBudget:
    """The one budget of a shutdown, counted from the stop request (anyio clock)."""

    stop_at: float
    flush_timeout: float

    @property
    def flush_by(self) -> float:
        """Kafka gets until then; whatever it has not acknowledged goes to the spool."""
        return self.stop_at + self.flush_timeout

    @property
    def done_by(self) -> float:
        """The state saves and closing the spool fit before this."""
        return self.flush_by + SHUTDOWN_MARGIN_S


@dataclass(eq=False, slots=True)
class _Parts:
    """What startup acquires and the shutdown releases."""

    spool: Spool
    dedup: Deduplicator
    publisher: KafkaPublisher
    reader: Streams
    token: str
    # The queue between them: the reader sends lists of records, the publisher takes them.
    send: MemoryObjectSendStream[list[OutRecord]]
    receive: MemoryObjectReceiveStream[list[OutRecord]]


class Daemon:
    def __init__(
        self, settings: Settings, *, environ: Mapping[str, str] | None = None,
        recover: tuple[float, float] | None = None,
    ) -> None:
        """`recover`: instead of the live stream, one recovery job for that window (epoch
        seconds), then a clean stop (`streamd recover`)."""
        self.settings = settings
        self.recover = recover
        self._environ = dict(os.environ if environ is None else environ)
        self.metrics = Metrics()
        self.log = get_logger("streamd")
        self.state = DaemonState(quiet_limit=settings.stream.stall_timeout * 2)
        self._parts: _Parts | None = None
        self._rules_client: httpx.AsyncClient | None = None
        # One sync at a time: start-up, SIGHUP and the 409 path never interleave.
        self._rules_lock = anyio.Lock()
        self._rules_scopes: set[anyio.CancelScope] = set()

    @property
    def parts(self) -> _Parts | None:
        """What startup acquired (None before): for `streamd recover`'s summary."""
        return self._parts

    # -- the lifecycle -----------------------------------------------------------------

    async def run(self) -> int:
        """Startup, main loop, shutdown; returns the exit code."""
        started = time.monotonic()
        parts = self._parts = await self._acquire()
        try:
            async with make_client(self.settings, parts.token) as rules_client:
                self._rules_client = rules_client
                await self._serve(parts)
        except Exception as exc:  # a task of the group failed: an ExceptionGroup
            self._fatal(exc)
        finally:
            with anyio.CancelScope(shield=True):
                await self._release(parts)
        self.state.enter(Phase.STOPPED)
        self.log.info(
            "daemon.stopped", exit_code=int(self.state.exit_code),
            published=parts.publisher.stats.published, spooled=parts.spool.count,
            received=parts.reader.received, duplicates=parts.reader.duplicates,
            uptime_s=round(time.monotonic() - started, 3),
        )
        return int(self.state.exit_code)

    async def _serve(self, parts: _Parts) -> None:
        """Startup, main loop and shutdown inside one task group. A failing task cancels
        the main loop, and the shutdown still runs."""
        async with anyio.create_task_group() as tg:
            try:
                await self._startup(tg, parts)
                if not self.state.stopping:
                    self.state.enter(Phase.RUNNING)
                    await self._main_loop(parts)
            except StreamdError as exc:
                self._fatal(exc)
            finally:
                parts.send.close()  # the reader may not have started: end the queue here
                await self._shutdown(parts)
                tg.cancel_scope.cancel()

    async def _acquire(self) -> _Parts:
        """Startup, first part: the resources, before anything runs."""
        settings = self.settings
        token = settings.x.resolve_bearer_token(self._environ)
        sasl_password = settings.kafka.resolve_sasl_password(self._environ)
        spool = await self._open_spool()
        try:
            dedup = Deduplicator()  # DEDUP_WINDOW_S, DEDUP_MAX_IDS
            dedup.preload(await anyio.to_thread.run_sync(
                spool.recent_ids, DEDUP_WINDOW_S, DEDUP_MAX_IDS))
            last_read_at = await anyio.to_thread.run_sync(_last_read_at, spool)
            count = 0 if self.recover is not None else settings.stream.connections
            names = [f"live-{i + 1}" for i in range(count)] if count > 1 else [None][:count]
            keepers = [self._slot_keeper(token, spool, i) for i in range(count)]
            for keeper in keepers:
                await keeper.load()
        except BaseException:
            await anyio.to_thread.run_sync(spool.close)
            raise
        self.metrics.spool_messages.set(spool.count)
        self.metrics.spool_bytes.set(spool.bytes)
        if spool.count:
            self.log.info("spool.found", spooled=spool.count, bytes=spool.bytes,
                          detail="publishing what a previous run left")
        self.metrics.rule_tags.configure(configured_tags(settings))
        self._ha_setup(token, sasl_password)  # high availability: see below
        changes = self.state.changes
        publisher = KafkaPublisher(
            settings.kafka, self.metrics, self.log, spool=spool,
            spool_interval=settings.spool.batch_interval, sasl_password=sasl_password,
            changes=changes,
        )
        client_factory = functools.partial(make_client, settings, token)
        resync = functools.partial(self.sync_rules, reason="no_rules")
        ledger = GapLedger(settings.stream, self.metrics, self.log, store=_SpoolGaps(spool))
        live = [
            StreamReader(
                settings, client_factory, self.metrics, self.log,
                ReconnectPolicy(settings.backoff),  # one per connection
                dedup=dedup,  # one for all: a tweet is published once, whoever read it first
                on_no_rules=resync,
                room=publisher.spool_room,  # closed while the spool is full: off X
                changes=changes,
                last_read_at=last_read_at,
                keeper=keeper if settings.x.connections_api else None,
                name=name,
                ledger=ledger,
            )
            for name, keeper in zip(names, keepers, strict=True)
        ]

        def recovery_reader(job: Job, name: str) -> RecoveryReader:
            return RecoveryReader(
                settings, client_factory, self.metrics, self.log,
                ReconnectPolicy(settings.backoff), dedup=dedup, on_no_rules=resync,
                room=publisher.spool_room, name=name, ledger=ledger,
                window=(job.resume_from, job.end))

        recovery = RecoveryJobs(recovery_reader, ledger, self.metrics, self.log,
                                store=_SpoolMeta(spool, JOBS_KEY),
                                # no live connection to tell apart from a one-off job
                                start_delay=0.0 if self.recover else START_DELAY_S)
        if self.recover is None:
            await recovery.load()
        else:
            recovery.schedule(*self.recover, None, None)
        reader = Streams(live, ledger, recovery, until_done=self.recover is not None)
        self.state.stream, self.state.kafka = reader, publisher
        send, receive = anyio.create_memory_object_stream[list[OutRecord]](
            max_buffer_size=queue_batches(settings.stream.queue_size)
        )
        return _Parts(spool, dedup, publisher, reader, token, send, receive)

    async def _startup(self, tg: TaskGroup, parts: _Parts) -> None:
        """Startup, second part: everything beside the reader runs; the rules are synced."""
        http = self.settings.http
        port = await tg.start(
            serve_ops, OpsApp(self.metrics.asgi_app(), self.state.readiness),
            http.host, http.port,
        )
        self.log.info("http.listening", port=port, listen=http.listen)
        tg.start_soon(self._watch_signals, tg)
        tg.start_soon(parts.publisher.run, parts.receive)
        tg.start_soon(report_to_systemd, self.state)
        tg.start_soon(self._remember_last_read, parts)
        if self._leadership is not None:  # high availability: see below
            tg.start_soon(self._leadership.run)
        if await self.sync_rules(reason="startup"):
            self.state.rules_in_place()

    async def _main_loop(self, parts: _Parts) -> None:
        """Read X until a stop is asked for; a fatal disconnect raises."""
        if self._leadership is not None:  # high availability: see below
            await self._leadership.lead(parts.reader, parts.send)
            return
        await parts.reader.run(parts.send)

    def _budget(self) -> ShutdownBudget:
        stop_at = self.state.stop_at
        return ShutdownBudget(
            anyio.current_time() if stop_at is None else stop_at,
            self.settings.kafka.flush_timeout,
        )

    async def _shutdown(self, parts: _Parts) -> None:
        """Reading has stopped. One budget for everything the publisher holds: flush to
        Kafka until flush_timeout after the stop was asked for, then spool the rest (past
        spool.max_bytes if need be). Exit 0 keeps its meaning: nothing was dropped."""
        sdnotify.stopping()
        self.request_stop()
        with anyio.CancelScope(shield=True):
            outcome = await parts.publisher.shutdown(self._budget().flush_by)
        if outcome.lost:
            # Only the disk refusing the final write gets here.
            self.log.error("daemon.lost", count=outcome.lost, error=outcome.error)
            if self.state.exit_code == ExitCode.OK:
                self.state.exit_code = ExitCode.INTERNAL

    async def _release(self, parts: _Parts) -> None:
        """The end of the shutdown: save when X was last read and the duplicate window, by
        the end of the budget, then close the spool. Best effort: a disk that refuses them
        (it may just have refused records) costs a precise backfill and some duplicates
        after the restart, never the exit code."""
        with anyio.CancelScope(deadline=self._budget().done_by) as budget:
            try:
                await anyio.to_thread.run_sync(
                    _save_last_read, parts.spool, parts.reader.last_read_at)
                await anyio.to_thread.run_sync(parts.spool.remember_ids, parts.dedup.snapshot())
            except StreamdError as exc:
                self.log.warning("spool.state_not_saved", error=str(exc))
        if budget.cancelled_caught:
            self.log.warning("spool.state_not_saved", error="the shutdown budget ran out")
        parts.receive.close()  # the publisher's, unless it never ran
        await anyio.to_thread.run_sync(parts.spool.close)

    def request_stop(self, signum: int | None = None) -> None:
        """Begin stopping, as SIGTERM and SIGINT do (`signum` None: the daemon stops by
        itself, after a fatal error): the reader ends its connection or wait, rules waits
        end. The first request starts the shutdown budget."""
        if not self.state.begin_stop(anyio.current_time()):
            return
        if signum is not None:
            self.log.info("daemon.stopping", signal=signal.Signals(signum).name)
        if self._parts is not None:
            self._parts.reader.stop()
        for scope in list(self._rules_scopes):
            scope.cancel()

    def _fatal(self, exc: BaseException) -> None:
        """Record why the daemon ends: the first StreamdError of `exc` (an ExceptionGroup
        when a task failed) picks the exit code; anything else is an internal error."""
        errors = list(_leaves(exc))
        known = [e for e in errors if isinstance(e, StreamdError)]
        if known:
            error: BaseException = known[0]
            self.state.exit_code = known[0].exit_code
        else:
            error = errors[0] if errors else exc
            self.state.exit_code = ExitCode.INTERNAL
        reason = getattr(error, "reason", None) or _kind(error)
        self.log.error("daemon.fatal", reason=str(reason), detail=_detail(error),
                       exit_code=int(self.state.exit_code))
        self.request_stop()

    async def _open_spool(self) -> Spool:
        directory = self.settings.spool.dir
        try:
            return await anyio.to_thread.run_sync(
                Spool, directory, self.settings.spool.max_bytes
            )
        except StreamdError as exc:
            raise ConfigError("spool.dir", f"cannot use {str(directory)!r}: {exc}") from None

    async def _watch_signals(self, tg: TaskGroup) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    if not self.state.stopping:
                        tg.start_soon(self._reload)
                    continue
                self.request_stop(signum)

    async def _remember_last_read(self, parts: _Parts) -> None:
        """Write down when X was last read, so a restart knows the gap it must fill."""
        reader, spool = parts.reader, parts.spool
        saved = reader.last_read_at
        while True:
            await anyio.sleep(LAST_READ_EVERY_S)
            current = reader.last_read_at
            if current is None or current == saved:
                continue
            try:
                await anyio.to_thread.run_sync(_save_last_read, spool, current)
            except StreamdError as exc:  # e.g. disk full: the spool path reports it
                self.log.warning("spool.meta_failed", error=str(exc))
            saved = current

    # -- high availability (ha.mode = "kafka"; streamd/ha, README "High availability") ---
    # The daemon's only contacts with it, each marked "high availability": _acquire builds
    # it, _startup starts the group membership, _main_loop leads through it (the reader
    # runs only while this instance is elected), and every SlotKeeper reports the id of
    # its connection to it. The publisher does not know of it: whatever the role, it drains
    # the spool.

    _leadership: Leadership | None = None

    def _ha_setup(self, token: str, sasl_password: str | None) -> None:
        settings = self.settings
        if settings.ha.mode == "off":
            self.metrics.leader.set(1)  # the one instance reads X
            return
        self.metrics.leader.set(0)  # until elected
        election = Election(settings, self.log, self.metrics, sasl_password=sasl_password,
                            changes=self.state.changes)
        records = RecordLog(client_settings(settings, sasl_password), settings.ha.topic,
                            settings.ha.group, self.log, timeout=RECORD_TIMEOUT_S)

        @contextlib.asynccontextmanager
        async def connections_api() -> AsyncIterator[ConnectionsApi]:
            async with make_client(settings, token) as client:
                yield ConnectionsApi(client, metrics=self.metrics)

        self._leadership = Leadership(
            settings, election, records, self.state, self.log, self.metrics,
            connections=connections_api if settings.x.connections_api else None)
        self.state.ha = self._leadership

    async def _on_own_connection(self, connection_id: str, connected_at: float) -> None:
        if self._leadership is not None:
            await self._leadership.on_own(connection_id, connected_at)

    # -- rules -----------------------------------------------------------------------

    def _slot_keeper(self, token: str, spool: Spool, index: int = 0) -> SlotKeeper:
        """The slot keeper of live connection `index` (each records its own connection)."""
        settings = self.settings
        key = OWN_CONNECTION_KEY if index == 0 else f"{OWN_CONNECTION_KEY}.live-{index + 1}"

        @contextlib.asynccontextmanager
        async def connections_api() -> AsyncIterator[ConnectionsApi]:
            async with make_client(settings, token) as client:
                yield ConnectionsApi(client, metrics=self.metrics)

        return SlotKeeper(settings.x, connections_api, self.log, self.metrics,
                          store=_SpoolMeta(spool, key),
                          endpoint=settings.stream.stream.connections_name,
                          on_own=self._on_own_connection)  # high availability: see below

    def _rules_api(self) -> RulesApi:
        """The daemon's rules client: transient failures (network, 5xx, 429 however far its
        reset) are retried on the server_error schedule for as long as it takes; every wait
        is cancelled by a stop."""
        assert self._rules_client is not None
        return RulesApi(
            self._rules_client, self.metrics,
            policy=ReconnectPolicy.for_rules(self.settings.backoff),
            on_retry=self._on_rules_retry,
        )

    def _on_rules_retry(self, reason: str, attempt: int, delay: float, failure: str) -> None:
        self.state.rules_retrying(f"{reason}, retry in {delay:.0f} s")
        self.log.warning("rules.retry_scheduled", reason=reason, attempt=attempt + 1,
                         delay_s=round(delay, 3), detail=failure)

    async def sync_rules(self, *, reason: str) -> bool:
        """Make the server's rules match the configuration. True if rules are in place.
        Returns False at once when the daemon is stopping (the caller checks)."""
        if self.settings.rules.mode == "off" or not self.settings.stream.stream.rules:
            return False  # not managed, or a stream rules do not apply to (sample, firehose)
        async with self._rules_lock:
            with anyio.CancelScope() as scope:
                self._rules_scopes.add(scope)
                if self.state.stopping:
                    scope.cancel()
                self.state.rules_started()
                try:
                    assert self._rules_client is not None
                    result = await sync_configured_rules(
                        self._rules_client, self.settings, self.log, self.metrics,
                        trigger=reason, api=self._rules_api(),
                    )
                    return bool(result)
                except RulesError as exc:
                    if self.settings.rules.on_error == "continue":
                        self.log.error("rules.sync_failed", error=str(exc),
                                       action="keeping server rules")
                        return True
                    raise
                finally:
                    self.state.rules_finished()
                    self._rules_scopes.discard(scope)
        return False  # cancelled: the daemon is stopping

    async def _reload(self) -> None:
        """SIGHUP: re-read the config file, re-sync rules; the stream stays connected."""
        sdnotify.reloading()
        try:
            await self._reload_rules()
        except CredentialsError as exc:
            # As fatal here as at start-up: the next connect would be refused anyway.
            self._fatal(exc)
        finally:
            sdnotify.ready(self.state.status_line())

    async def _reload_rules(self) -> None:
        path = self.settings.source_path
        try:
            fresh = load_settings(path, self._environ)
        except StreamdError as exc:
            self.log.error("config.reload_failed", error=str(exc))
            return
        self.settings = self.settings.model_copy(update={"rules": fresh.rules})
        self.metrics.rule_tags.configure(configured_tags(self.settings))
        self.log.info("config.reloaded", path=str(path))
        try:
            await self.sync_rules(reason="sighup")
        except CredentialsError:
            raise
        except StreamdError as exc:
            self.log.error("rules.sync_failed", error=str(exc), action="keeping server rules")


@dataclass(frozen=True, slots=True)
class _SpoolMeta:
    """One meta key of the spool's database, as the X side's OwnRecordStore."""

    spool: Spool
    key: str

    async def load(self) -> str | None:
        return await anyio.to_thread.run_sync(self.spool.get_meta, self.key)

    async def save(self, text: str) -> None:
        await anyio.to_thread.run_sync(self.spool.set_meta, self.key, text)


@dataclass(frozen=True, slots=True)
class _SpoolGaps:
    """The spool's gaps table, as the X side's GapStore."""

    spool: Spool

    async def add(self, row: GapRow) -> int:
        return await anyio.to_thread.run_sync(
            self.spool.add_gap, row.start, row.end, row.covered_by, row.detail, row.connection)

    async def settle(self, gap_id: int, covered_by: str, detail: str) -> None:
        await anyio.to_thread.run_sync(self.spool.settle_gap, gap_id, covered_by, detail)


def _last_read_at(spool: Spool) -> float | None:
    raw = spool.get_meta(LAST_READ_KEY)
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None  # unreadable: treat as unknown, no backfill guess
    return value if value is not None and math.isfinite(value) else None


def _save_last_read(spool: Spool, value: float | None) -> None:
    if value is not None:
        spool.set_meta(LAST_READ_KEY, repr(value))


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _kind(exc: BaseException) -> str:
    if isinstance(exc, ConfigError):
        return "config"
    if isinstance(exc, StreamdError):
        return "error"
    return "internal"


def _detail(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, StreamdError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_daemon(settings: Settings) -> int:
    # uvloop, when installed (`pip install streamd[fast]`), makes socket writes and the loop
    # itself cheaper; set STREAMD_UVLOOP=0 to opt out.
    use_uvloop = os.environ.get("STREAMD_UVLOOP", "1") != "0" and _has_uvloop()
    return anyio.run(Daemon(settings).run, backend="asyncio",
                     backend_options={"use_uvloop": use_uvloop})


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def configured_tags(settings: Settings) -> frozenset[str] | None:
    """The label set of streamd_tweets_published_by_rule_total: the configured rule tags,
    or None with rules.mode = "off" (the rules on X are someone else's: first come, first
    served, up to a cap). Rules that cannot be read count as none: the sync reports that."""
    if settings.rules.mode == "off":
        return None
    try:
        return frozenset(r.tag for r in settings.resolved_rules() if r.tag)
    except (StreamdError, OSError):
        return frozenset()
