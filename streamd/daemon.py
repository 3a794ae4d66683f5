"""The daemon's lifecycle: one task group holding the reader, the publisher and the
operations endpoint; signals; a shielded, deadline-bounded shutdown.

SIGTERM/SIGINT: stop reading X, let the publisher drain the queue, wait for the last acks
within kafka.flush_timeout, exit 0. SIGHUP: re-read the config file and re-sync rules while
the stream stays connected.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from collections.abc import Mapping
from typing import Any

import anyio
from anyio.abc import TaskGroup

from streamd import sdnotify
from streamd.backoff import BackoffSettings, ReconnectPolicy
from streamd.config import Settings, load_settings
from streamd.dedup import Deduplicator
from streamd.errors import ConfigError, FatalDisconnect, RulesError, StreamdError
from streamd.http_server import OpsApp, serve_ops
from streamd.logs import get_logger
from streamd.metrics import Metrics
from streamd.publisher import KafkaPublisher
from streamd.reasons import ExitCode
from streamd.records import OutRecord
from streamd.spool import Spool
from streamd.stream import StreamReader, make_client, queue_batches

# The duplicate window: reconnect overlaps and backfill (at most 5 minutes) fall inside it.
DEDUP_WINDOW_S = 900.0
DEDUP_MAX_IDS = 200_000


class Daemon:
    def __init__(self, settings: Settings, *, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self._environ = dict(os.environ if environ is None else environ)
        self.metrics = Metrics()
        self.log = get_logger("streamd")
        self.exit_code = ExitCode.OK
        self._reader: StreamReader | None = None
        self._publisher: KafkaPublisher | None = None
        self._rules_synced = False
        self._client: Any = None

    # -- readiness -------------------------------------------------------------------

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

    # -- rules -------------------------------------------------------------------------

    async def sync_rules(self, *, reason: str) -> bool:
        """Make the server's rules match the configuration. True if rules are in place."""
        if self.settings.rules.mode == "off":
            return False
        try:
            from streamd.rules import sync_configured_rules
        except ImportError:  # pragma: no cover - rules sync ships with the rules module
            return False
        try:
            result = await sync_configured_rules(
                self._client, self.settings, self.log, self.metrics, trigger=reason
            )
        except RulesError as exc:
            if self.settings.rules.on_error == "continue":
                self.log.error("rules.sync_failed", error=str(exc), action="keeping server rules")
                return True
            raise
        return bool(result)

    async def _reload(self) -> None:
        """SIGHUP: re-read the config file, re-sync rules; the stream stays connected."""
        sdnotify.reloading()
        try:
            await self._reload_rules()
        finally:
            sdnotify.ready("streaming")

    async def _reload_rules(self) -> None:
        path = self.settings.source_path
        try:
            fresh = load_settings(path, self._environ)
        except StreamdError as exc:
            self.log.error("config.reload_failed", error=str(exc))
            return
        self.settings = self.settings.model_copy(update={"rules": fresh.rules})
        self.log.info("config.reloaded", path=str(path))
        try:
            await self.sync_rules(reason="sighup")
        except StreamdError as exc:
            self.log.error("rules.sync_failed", error=str(exc), action="keeping server rules")

    # -- the run -----------------------------------------------------------------------

    async def run(self) -> int:
        settings = self.settings
        started = time.monotonic()
        token = settings.x.resolve_bearer_token(self._environ)
        backoff = BackoffSettings(**settings.backoff.model_dump())
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
        publisher = self._publisher = KafkaPublisher(
            settings.kafka, self.metrics, self.log, spool=spool,
            spool_interval=settings.spool.batch_interval,
            sasl_password=settings.kafka.resolve_sasl_password(self._environ),
        )
        async with make_client(settings, token) as client:
            self._client = client
            reader = self._reader = StreamReader(
                settings, client, self.metrics, self.log, ReconnectPolicy(backoff),
                dedup=dedup,
                on_no_rules=lambda: self.sync_rules(reason="no_rules"),
                room=lambda: publisher.spool_room,
            )
            async with anyio.create_task_group() as tg:
                port = await tg.start(
                    serve_ops, OpsApp(self.metrics.asgi_app(), self.readiness),
                    settings.http.listen,
                )
                self.log.info("http.listening", port=port, listen=settings.http.listen)
                tg.start_soon(self._watch_signals, tg)
                publisher_done = anyio.Event()
                tg.start_soon(self._run_publisher, receive, publisher_done)
                tg.start_soon(self._notify_systemd)
                try:
                    self._rules_synced = await self.sync_rules(reason="startup")
                    await reader.run(send)
                except FatalDisconnect as exc:
                    self._fatal(exc.reason, exc.detail, exc.exit_code)
                except RulesError as exc:
                    self._fatal(getattr(exc, "reason", "rules"), str(exc), exc.exit_code)
                finally:
                    send.close()  # the reader may not have started: end the queue here
                spooled = await self._shutdown(publisher, publisher_done)
                tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(spool.remember_ids, dedup.snapshot())
            await anyio.to_thread.run_sync(spool.close)
        self.log.info(
            "daemon.stopped", exit_code=int(self.exit_code), published=publisher.stats.published,
            spooled=spooled, received=self._reader.received if self._reader else 0,
            duplicates=self._reader.duplicates if self._reader else 0,
            uptime_s=round(time.monotonic() - started, 3),
        )
        return int(self.exit_code)

    def _fatal(self, reason: str, detail: str, exit_code: ExitCode) -> None:
        self.exit_code = exit_code
        self.log.error("daemon.fatal", reason=reason, detail=detail, exit_code=int(exit_code))

    async def _run_publisher(self, receive: Any, done: anyio.Event) -> None:
        assert self._publisher is not None
        try:
            await self._publisher.run(receive)
        finally:
            done.set()

    async def _open_spool(self) -> Spool:
        directory = self.settings.spool.dir
        try:
            return await anyio.to_thread.run_sync(
                Spool, directory, self.settings.spool.max_bytes
            )
        except StreamdError as exc:
            raise ConfigError("spool.dir", f"cannot use {str(directory)!r}: {exc}") from None

    async def _shutdown(self, publisher: KafkaPublisher, publisher_done: anyio.Event) -> int:
        """Stop reading is done; drain the queue, flush within the deadline, spool the rest.
        Returns how many records are left in the spool."""
        sdnotify.stopping()
        deadline = self.settings.kafka.flush_timeout
        held = 0
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(deadline):
                await publisher_done.wait()
            held = await publisher.close(deadline)
        return held

    async def _watch_signals(self, tg: TaskGroup) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    tg.start_soon(self._reload)
                    continue
                self.log.info("daemon.stopping", signal=signal.Signals(signum).name)
                if self._reader is not None:
                    self._reader.stop()

    def _pipeline_moving(self) -> bool:
        """For the systemd watchdog: bytes arrived recently (heartbeats count) or the reader
        is deliberately waiting out a backoff. A wedged loop or a hung read is neither."""
        reader = self._reader
        if reader is None:
            return False
        return reader.in_backoff or (
            time.monotonic() - reader.last_progress < self.settings.stream.stall_timeout * 2
        )

    async def _notify_systemd(self) -> None:
        """READY=1 once rules are synced and tweets can flow; STATUS= as things change;
        WATCHDOG=1 only while the pipeline moves."""
        watchdog = sdnotify.Watchdog()
        async with anyio.create_task_group() as tg:
            if watchdog.enabled:
                tg.start_soon(watchdog.run, self._pipeline_moving)
            ready_sent = False
            last_status = ""
            while True:
                reader, publisher = self._reader, self._publisher
                if reader is not None and not ready_sent and (
                    reader.connected or self._rules_synced
                ):
                    sdnotify.ready("streaming")
                    ready_sent = True
                if reader is not None and publisher is not None:
                    text = (
                        f"{'connected' if reader.connected else 'reconnecting'}; "
                        f"received {reader.received}, published {publisher.stats.published}"
                    )
                    if text != last_status:
                        sdnotify.status(text)
                        last_status = text
                await anyio.sleep(2)


def run_daemon(settings: Settings) -> int:
    # uvloop, when installed (`pip install streamd[fast]`), makes socket writes and the loop
    # itself cheaper; set STREAMD_UVLOOP=0 to opt out.
    use_uvloop = os.environ.get("STREAMD_UVLOOP", "1") != "0" and _has_uvloop()
    return anyio.run(Daemon(settings).run, backend="asyncio",
                     backend_options={"use_uvloop": use_uvloop})


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None
