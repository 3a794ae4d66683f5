"""The daemon's lifecycle: one task group holding the reader, the publisher and the
operations endpoint; signals; a shielded, deadline-bounded shutdown.

SIGTERM/SIGINT: stop reading X (or stop waiting on it), let the publisher drain the queue,
wait for the last acks; everything is done within kafka.flush_timeout of the signal, plus a
moment for the final spool writes. SIGHUP: re-read the config file and re-sync rules while
the stream stays connected.

Every error that ends the daemon ends it the same way: `daemon.fatal` with the reason, the
shutdown above, `daemon.stopped`, and the error's own exit code (77 credentials, 78
configuration or rules, 70 anything else). That holds wherever the error arises: the
start-up rules sync, the stream, a re-sync after 409 or SIGHUP, or a task of the group.
"""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import time
from collections.abc import Iterator, Mapping

import anyio
import httpx
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from streamd.config import Settings, load_settings
from streamd.dedup import Deduplicator
from streamd.errors import ConfigError, CredentialsError, RulesError, StreamdError
from streamd.kafka.publisher import KafkaPublisher
from streamd.kafka.spool import Spool
from streamd.ops import sdnotify
from streamd.ops.http import OpsApp, serve_ops
from streamd.ops.logs import get_logger
from streamd.ops.metrics import Metrics
from streamd.reasons import ExitCode
from streamd.records import OutRecord
from streamd.x.reconnect import BackoffSettings, ReconnectPolicy
from streamd.x.rules import RulesApi, sync_configured_rules
from streamd.x.stream import StreamReader, make_client, queue_batches

# The duplicate window: reconnect overlaps and backfill (at most 5 minutes) fall inside it.
DEDUP_WINDOW_S = 900.0
DEDUP_MAX_IDS = 200_000
# The spool's meta key for the wall-clock time of the last read from X (epoch seconds):
# after a restart, the gap since then sizes the backfill and is logged as stream.gap.
LAST_READ_KEY = "last_read_at"
# How often that time is written down: a crash loses at most this much of its precision,
# and the backfill is rounded up to whole minutes anyway.
LAST_READ_EVERY_S = 1.0
# Past flush_timeout, the final spool writes, the dedup save and closing the spool get this
# much; the README, the unit's TimeoutStopSec and the pod's grace period allow for it.
SHUTDOWN_MARGIN_S = 2.0


class Daemon:
    def __init__(self, settings: Settings, *, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self._environ = dict(os.environ if environ is None else environ)
        self.metrics = Metrics()
        self.log = get_logger("streamd")
        self.exit_code = ExitCode.OK
        self._reader: StreamReader | None = None
        self._publisher: KafkaPublisher | None = None
        self._rules_client: httpx.AsyncClient | None = None
        self._rules_synced = False
        # One sync at a time: start-up, SIGHUP and the 409 path never interleave.
        self._rules_lock = anyio.Lock()
        self._rules_scopes: set[anyio.CancelScope] = set()
        # >0 while the daemon is deliberately busy with or waiting on the rules endpoints
        # (the systemd watchdog keeps being fed); the text says what for `systemctl status`.
        self._rules_busy = 0
        self._rules_waiting: str | None = None
        self._stopping = False
        self._stop_at: float | None = None  # anyio clock: when the shutdown budget started

    # -- readiness -------------------------------------------------------------------------

    def readiness(self) -> str | None:
        reader, publisher = self._reader, self._publisher
        if reader is None or publisher is None:
            return "starting"
        if reader.usage_capped:
            return "usage_cap"
        if not reader.connected:
            return "stream_disconnected"
        if not publisher.available:
            return "kafka_unavailable"
        return None

    def status_text(self) -> str:
        """The one line `systemctl status` shows (STATUS=)."""
        reader, publisher = self._reader, self._publisher
        if reader is None or publisher is None:
            return "starting"
        counts = f"received {reader.received}, published {publisher.stats.published}"
        if self._stopping:
            state = "stopping"
        elif reader.connected:
            state = "streaming"
        elif self._rules_waiting is not None:
            state = f"waiting for the rules endpoint: {self._rules_waiting}"
        elif reader.usage_capped:
            state = "usage capped: waiting for X to lift the cap"
        elif reader.last_reason is not None:
            state = f"reconnecting after {reader.last_reason}"
        else:
            state = "connecting"
        return f"{state}; {counts}"

    # -- rules -----------------------------------------------------------------------------

    def _rules_api(self) -> RulesApi:
        """The daemon's rules client: transient failures (network, 5xx, 429 however far its
        reset) are retried on the server_error schedule for as long as it takes; every wait
        is cancelled by SIGTERM."""
        assert self._rules_client is not None
        backoff = self.settings.backoff
        return RulesApi(
            self._rules_client, self.metrics, max_attempts=None, max_wait=math.inf,
            retry_initial=backoff.http_initial, retry_max=backoff.http_max,
            on_retry=self._on_rules_retry,
        )

    def _on_rules_retry(self, reason: str, attempt: int, delay: float, failure: str) -> None:
        self._rules_waiting = f"{reason}, retry in {delay:.0f} s"
        self.log.warning("rules.retry_scheduled", reason=reason, attempt=attempt + 1,
                         delay_s=round(delay, 3), detail=failure)

    async def sync_rules(self, *, reason: str) -> bool:
        """Make the server's rules match the configuration. True if rules are in place.
        Returns False at once when the daemon is stopping (the caller checks)."""
        if self.settings.rules.mode == "off":
            return False
        async with self._rules_lock:
            with anyio.CancelScope() as scope:
                self._rules_scopes.add(scope)
                if self._stopping:
                    scope.cancel()
                self._rules_busy += 1
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
                    self._rules_busy -= 1
                    self._rules_waiting = None
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
            self._stop(None)
        finally:
            sdnotify.ready(self.status_text())

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

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> int:
        settings = self.settings
        started = time.monotonic()
        token = settings.x.resolve_bearer_token(self._environ)
        send, receive = anyio.create_memory_object_stream[list[OutRecord]](
            max_buffer_size=queue_batches(settings.stream.queue_size)
        )
        spool = await self._open_spool()
        dedup = Deduplicator(DEDUP_MAX_IDS, DEDUP_WINDOW_S)
        dedup.preload(await anyio.to_thread.run_sync(
            spool.recent_ids, DEDUP_WINDOW_S, DEDUP_MAX_IDS))
        self.metrics.spool_messages.set(spool.count)
        self.metrics.spool_bytes.set(spool.bytes)
        if spool.count:
            self.log.info("spool.found", spooled=spool.count, bytes=spool.bytes,
                          detail="publishing what a previous run left")
        self.metrics.rule_tags.configure(configured_tags(settings))
        publisher = self._publisher = KafkaPublisher(
            settings.kafka, self.metrics, self.log, spool=spool,
            spool_interval=settings.spool.batch_interval,
            sasl_password=settings.kafka.resolve_sasl_password(self._environ),
        )
        reader = self._reader = StreamReader(
            settings, lambda: make_client(settings, token), self.metrics, self.log,
            ReconnectPolicy(BackoffSettings(**settings.backoff.model_dump())),
            dedup=dedup,
            on_no_rules=lambda: self.sync_rules(reason="no_rules"),
            room=lambda: publisher.spool_room,
            last_read_at=await anyio.to_thread.run_sync(_last_read_at, spool),
        )
        try:
            async with make_client(settings, token) as rules_client:
                self._rules_client = rules_client
                await self._serve(reader, publisher, spool, send, receive)
        except Exception as exc:  # a task of the group failed: ExceptionGroup
            self._fatal(exc)
        finally:
            with anyio.CancelScope(shield=True):
                await self._save_state(spool, reader, dedup)
        self.log.info(
            "daemon.stopped", exit_code=int(self.exit_code), published=publisher.stats.published,
            spooled=spool.count, received=reader.received, duplicates=reader.duplicates,
            uptime_s=round(time.monotonic() - started, 3),
        )
        return int(self.exit_code)

    async def _serve(
        self,
        reader: StreamReader,
        publisher: KafkaPublisher,
        spool: Spool,
        send: MemoryObjectSendStream[list[OutRecord]],
        receive: MemoryObjectReceiveStream[list[OutRecord]],
    ) -> None:
        """Start-up, main loop and shutdown inside one task group. A failing task cancels
        the main loop, and the shutdown still runs."""
        async with anyio.create_task_group() as tg:
            port = await tg.start(
                serve_ops, OpsApp(self.metrics.asgi_app(), self.readiness),
                self.settings.http.listen,
            )
            self.log.info("http.listening", port=port, listen=self.settings.http.listen)
            tg.start_soon(self._watch_signals, tg)
            tg.start_soon(publisher.run, receive)
            tg.start_soon(self._notify_systemd)
            tg.start_soon(self._remember_last_read, spool)
            try:
                self._rules_synced = await self.sync_rules(reason="startup")
                if not self._stopping:
                    await reader.run(send)
            except StreamdError as exc:
                self._fatal(exc)
            finally:
                send.close()  # the reader may not have started: end the queue here
                await self._shutdown(publisher)
                tg.cancel_scope.cancel()

    def _fatal(self, exc: BaseException) -> None:
        """Record why the daemon ends: the first StreamdError of `exc` (an ExceptionGroup
        when a task failed) picks the exit code; anything else is an internal error."""
        errors = list(_leaves(exc))
        known = [e for e in errors if isinstance(e, StreamdError)]
        if known:
            error: BaseException = known[0]
            self.exit_code = known[0].exit_code
        else:
            error = errors[0] if errors else exc
            self.exit_code = ExitCode.INTERNAL
        reason = getattr(error, "reason", None) or _kind(error)
        self.log.error("daemon.fatal", reason=str(reason), detail=_detail(error),
                       exit_code=int(self.exit_code))
        self._stop(None)

    async def _open_spool(self) -> Spool:
        directory = self.settings.spool.dir
        try:
            return await anyio.to_thread.run_sync(
                Spool, directory, self.settings.spool.max_bytes
            )
        except StreamdError as exc:
            raise ConfigError("spool.dir", f"cannot use {str(directory)!r}: {exc}") from None

    async def _shutdown(self, publisher: KafkaPublisher) -> None:
        """Reading has stopped. One budget for everything the publisher holds: flush to
        Kafka until flush_timeout after the stop was asked for, then spool the rest (past
        spool.max_bytes if need be). Exit 0 keeps its meaning: nothing was dropped."""
        sdnotify.stopping()
        self._stop(None)
        assert self._stop_at is not None
        deadline = self._stop_at + self.settings.kafka.flush_timeout
        with anyio.CancelScope(shield=True):
            outcome = await publisher.shutdown(deadline)
        if outcome.lost:
            # Only the disk refusing the final write gets here.
            self.log.error("daemon.lost", count=outcome.lost, error=outcome.error)
            if self.exit_code == ExitCode.OK:
                self.exit_code = ExitCode.INTERNAL

    async def _save_state(self, spool: Spool, reader: StreamReader, dedup: Deduplicator) -> None:
        """Best effort, within the shutdown margin: when X was last read and the duplicate
        window. A disk that refuses them (it may just have refused records) costs a
        precise backfill and some duplicates after the restart, never the exit code."""
        try:
            await anyio.to_thread.run_sync(_save_last_read, spool, reader.last_read_at)
            await anyio.to_thread.run_sync(spool.remember_ids, dedup.snapshot())
        except StreamdError as exc:
            self.log.warning("spool.state_not_saved", error=str(exc))
        await anyio.to_thread.run_sync(spool.close)

    def _stop(self, signum: int | None) -> None:
        """Begin stopping: the reader ends its connection or wait, rules waits end."""
        if self._stopping:
            return
        self._stopping = True
        self._stop_at = anyio.current_time()
        if signum is not None:
            self.log.info("daemon.stopping", signal=signal.Signals(signum).name)
        if self._reader is not None:
            self._reader.stop()
        for scope in list(self._rules_scopes):
            scope.cancel()

    async def _watch_signals(self, tg: TaskGroup) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    if not self._stopping:
                        tg.start_soon(self._reload)
                    continue
                self._stop(signum)

    async def _remember_last_read(self, spool: Spool) -> None:
        """Write down when X was last read, so a restart knows the gap it must fill."""
        assert self._reader is not None
        saved = self._reader.last_read_at
        while True:
            await anyio.sleep(LAST_READ_EVERY_S)
            current = self._reader.last_read_at
            if current is None or current == saved:
                continue
            try:
                await anyio.to_thread.run_sync(_save_last_read, spool, current)
            except StreamdError as exc:  # e.g. disk full: the spool path reports it
                self.log.warning("spool.meta_failed", error=str(exc))
            saved = current

    def _pipeline_moving(self) -> bool:
        """For the systemd watchdog: bytes arrived recently (heartbeats count), or the
        daemon is deliberately waiting (a reconnect backoff, a full spool, the rules
        endpoints). A wedged loop or a hung read is neither."""
        reader = self._reader
        if reader is None:
            return False
        return reader.in_backoff or self._rules_busy > 0 or (
            time.monotonic() - reader.last_progress < self.settings.stream.stall_timeout * 2
        )

    async def _notify_systemd(self) -> None:
        """READY=1 once tweets can flow or the daemon is deliberately waiting on X (rules
        synced, stream connected, or a retry scheduled: a start-up that waits out an X
        outage must not fail the unit); STATUS= as things change; WATCHDOG=1 only while the
        pipeline moves."""
        watchdog = sdnotify.Watchdog()
        async with anyio.create_task_group() as tg:
            if watchdog.enabled:
                tg.start_soon(watchdog.run, self._pipeline_moving)
            ready_sent = False
            last_status = ""
            while True:
                reader = self._reader
                if reader is not None and not ready_sent and (
                    reader.connected or self._rules_synced or reader.in_backoff
                    or self._rules_waiting is not None
                ):
                    last_status = self.status_text()
                    sdnotify.ready(last_status)
                    ready_sent = True
                text = self.status_text()
                if text != last_status:
                    sdnotify.status(text)
                    last_status = text
                await anyio.sleep(1)


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
