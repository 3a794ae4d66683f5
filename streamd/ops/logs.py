"""Structured logs: one JSON object per line (or a console rendering), secrets scrubbed.

Every line, from streamd's own structlog loggers and from stdlib loggers (aiokafka, httpx,
uvicorn), goes through the same processors, so the redaction of registered secrets is a
property of the output, not of each call site. So is the throttle (LogThrottle): an exact
repeat of a recent line is counted instead of written.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# Third-party loggers never go below this: httpx logs every request URL at INFO.
_THIRD_PARTY_FLOOR = logging.WARNING
# Shorter strings are not registered: scrubbing "a" from every line would be noise.
_MIN_SECRET_LENGTH = 4
REDACTED = "***"

_secrets: set[str] = set()
_ordered_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()
_handler: logging.Handler | None = None
_current_level = "info"


class Logger(Protocol):
    """What streamd's parts need of a logger: structlog's bound loggers satisfy it, and a
    test can pass anything that records events."""

    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...
    def error(self, event: str, **kw: Any) -> Any: ...


def current_level() -> str:
    """The level last passed to configure_logging ("info" before any call)."""
    return _current_level


def _secret_forms(value: str) -> set[str]:
    """The ways `value` can show up in text: as is, URL-encoded or -decoded (X bearer tokens
    are often stored with "%3D"), and escaped the way a message quotes it: inside repr() of
    a str or of bytes (httpx's "Illegal header value b'Bearer ...'"), JSON, or
    terminal.printable(). A secret with a newline or a NUL in it is still caught when an
    exception message shows it as `\\n` or `\\x00`."""
    # Imported here, not at the top: this keeps the module's import block to the logging
    # set-up that shares this file.
    import json

    from streamd.ops.terminal import printable

    plain = {value, urllib.parse.quote(value, safe=""), urllib.parse.unquote(value)}
    forms = set(plain)
    for form in plain:
        for quoted in (
            repr(form)[1:-1],
            ascii(form)[1:-1],
            repr(form.encode("utf-8", "backslashreplace"))[2:-1],
            json.dumps(form)[1:-1],
            json.dumps(form, ensure_ascii=False)[1:-1],
            printable(form),
        ):
            forms.add(quoted)
            # repr() escapes a quote only when the whole text holds both kinds, so a longer
            # message may show the secret's own quote escaped where repr(secret) did not.
            forms.add(quoted.replace("'", "\\'"))
            forms.add(quoted.replace('"', '\\"'))
    return {f for f in forms if len(f) >= _MIN_SECRET_LENGTH}


def register_secret(value: str) -> None:
    """Never let `value`, in any of its encoded or quoted forms, appear in a log line or in
    text passed through redact()."""
    global _ordered_secrets
    value = value.strip()
    if len(value) < _MIN_SECRET_LENGTH:
        return
    forms = _secret_forms(value)
    # A multi-line value (refused as a token, but registered before it is checked) may be
    # quoted one line at a time.
    for line in value.splitlines():
        line = line.strip()
        if len(line) >= _MIN_SECRET_LENGTH and line != value:
            forms |= _secret_forms(line)
    with _secrets_lock:
        _secrets.update(forms)
        # Longest first, so a form containing another is replaced whole. A tuple swapped in
        # whole, so redact() in another thread never iterates a set being changed.
        _ordered_secrets = tuple(sorted(_secrets, key=len, reverse=True))


def clear_secrets() -> None:
    """Forget registered secrets (tests)."""
    global _ordered_secrets
    with _secrets_lock:
        _secrets.clear()
        _ordered_secrets = ()


def redact(text: str) -> str:
    """`text` with every registered secret, in every form, replaced by '***'."""
    for secret in _ordered_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, Mapping):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"))
    # Any other object would be rendered with str() by the serializer: do it here so the
    # rendering is scrubbed too.
    return redact(str(value))


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: scrub registered secrets from every value."""
    if not _secrets:
        return event_dict
    return {key: _redact_value(value) for key, value in event_dict.items()}


def _timestamp(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    now = datetime.now(UTC)
    event_dict["ts"] = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    return event_dict


def _level(_: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    level = event_dict.get("level", method_name)
    event_dict["level"] = "warning" if level == "warn" else str(level).lower()
    return event_dict


def _stdlib_fields(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """For records from stdlib loggers: the logger name and the rendered message."""
    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord):
        event_dict.setdefault("logger", record.name)
        event_dict["level"] = record.levelname.lower()
    return event_dict


class _NamedPrintLogger(structlog.PrintLogger):
    def __init__(self, file: TextIO, name: str | None) -> None:
        super().__init__(file)
        self.name = name


class _NamedPrintLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedPrintLogger:
        name = args[0] if args and isinstance(args[0], str) else None
        return _NamedPrintLogger(self._file, name)


def _logger_name(logger: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", None)
    if isinstance(name, str) and name:
        event_dict.setdefault("logger", name)
    return event_dict


def _key_order(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    head = {k: event_dict.pop(k) for k in ("ts", "level", "event") if k in event_dict}
    return {**head, **event_dict}


# Repeats of one line (same event, level, logger and fields) are let through once per this.
THROTTLE_INTERVAL_S = 10.0
# Events that record a change of state or a step in the daemon's life. Each is a new fact even
# when it reads exactly like an earlier one (kafka.unavailable, kafka.recovered, then
# kafka.unavailable again), and alerts and tests count them: never throttled.
_NEVER_THROTTLED_PREFIXES = (
    "daemon.", "config.", "stream.", "rules.", "ha.", "connections.", "recovery.",
)
_NEVER_THROTTLED = frozenset({
    "kafka.unavailable", "kafka.recovered", "spool.full", "spool.room", "http.listening",
})
# Distinct lines remembered. Beyond this the ones let through longest ago are forgotten: the
# next repeat of such a line goes out (its count of dropped repeats is lost).
_THROTTLE_MAX_KEYS = 1024


class _Seen:
    __slots__ = ("at", "dropped")

    def __init__(self, at: float) -> None:
        self.at = at  # when this line was last let through (throttle clock)
        self.dropped = 0  # repeats dropped since


class LogThrottle:
    """structlog processor: drop an exact repeat of a recent line, and count it.

    A line goes out unless one with the same event, level, logger and fields (everything but
    the timestamp) went out in the last `interval` seconds; a repeat inside the interval is
    dropped and counted, and the next one let through carries `suppressed=N`. A line that
    differs in any field is a different fact and always goes out: only repeats are dropped.
    Something failing in a loop (Kafka down, a client sending garbage to the ops port) writes
    one line per interval instead of filling the disk. `clock` is injectable for tests.
    """

    def __init__(
        self, interval: float = THROTTLE_INTERVAL_S, clock: Callable[[], float] = time.monotonic,
        max_keys: int = _THROTTLE_MAX_KEYS,
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._max_keys = max_keys
        # Lines let through, least recently first. stdlib records may come from any thread.
        self._seen: collections.OrderedDict[bytes, _Seen] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event = event_dict.get("event")
        if isinstance(event, str) and (
            event in _NEVER_THROTTLED or event.startswith(_NEVER_THROTTLED_PREFIXES)
        ):
            return event_dict
        try:
            rendered = orjson.dumps(
                {k: v for k, v in event_dict.items() if k != "ts"},
                default=repr, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
            )
        except TypeError:  # not serialisable as a key (an int beyond 64 bits ...): let it out
            return event_dict
        # A digest, so remembering a line with a long traceback costs 16 bytes, not its text.
        key = hashlib.blake2b(rendered, digest_size=16).digest()
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen.at < self._interval:
                seen.dropped += 1
                raise structlog.DropEvent
            dropped = seen.dropped if seen is not None else 0
            self._seen[key] = _Seen(now)
            self._seen.move_to_end(key)
            while len(self._seen) > self._max_keys:
                self._seen.popitem(last=False)
        if dropped:
            event_dict["suppressed"] = dropped
        return event_dict


class _StreamHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler whose formatter may drop a record (the throttle raises DropEvent,
    which logging itself would let escape into the caller)."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(structlog.DropEvent):
            super().emit(record)


def _json_dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode("utf-8")


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        _level,
        _timestamp,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        structlog.processors.UnicodeDecoder(),
    ]


def _renderer(fmt: str, stream: TextIO) -> Processor:
    if fmt == "console":
        isatty = getattr(stream, "isatty", None)
        colors = bool(isatty()) if callable(isatty) else False
        return structlog.dev.ConsoleRenderer(colors=colors, timestamp_key="ts")
    if fmt == "json":
        return structlog.processors.JSONRenderer(serializer=_json_dumps)
    raise ValueError(f"unknown log format {fmt!r} (json|console)")


def configure_logging(
    level: str = "info", fmt: str = "json", stream: TextIO | None = None,
    *, throttle: LogThrottle | None = None,
) -> None:
    """Configure structlog and the stdlib root logger to write to `stream` (stderr).

    Safe to call again (tests, SIGHUP): the previous handler is replaced. `throttle` (a new
    LogThrottle by default) is shared by structlog's and stdlib's lines.
    """
    global _handler, _current_level
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r} (debug|info|warning|error)")
    out = sys.stderr if stream is None else stream
    renderer = _renderer(fmt, out)
    shared = _shared_processors()
    throttle = LogThrottle() if throttle is None else throttle

    structlog.configure(
        # The throttle after the logger name (part of a line's identity), before the
        # redaction (a dropped repeat need not be scrubbed).
        processors=[*shared, _logger_name, throttle, redact_secrets, _key_order, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_NamedPrintLoggerFactory(out),
        # Not cached: module-level loggers created before configuration (and tests that
        # reconfigure with another stream) must follow the current configuration.
        cache_logger_on_first_use=False,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _stdlib_fields],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            throttle,
            redact_secrets,
            _key_order,
            renderer,
        ],
    )
    handler = _StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(max(numeric, _THIRD_PARTY_FLOOR))
    for name in ("httpx", "httpcore", "aiokafka", "uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).setLevel(max(numeric, _THIRD_PARTY_FLOOR))
    _handler = handler
    _current_level = level.lower()


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """A structlog logger; `name` (usually __name__) becomes the `logger` field."""
    # The proxy stays lazy: the logger is built from the configuration current at each call,
    # so module-level loggers follow configure_logging. The name reaches the output through
    # the logger factory (see _NamedPrintLogger), as `logger` is a reserved keyword here.
    logger: FilteringBoundLogger = structlog.get_logger(name) if name else structlog.get_logger()
    return logger
