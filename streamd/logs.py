"""Structured logs: one JSON object per line (or a console rendering), secrets scrubbed.

Every line, from streamd's own structlog loggers and from stdlib loggers (aiokafka, httpx,
uvicorn), goes through the same processors, so the redaction of registered secrets is a
property of the output, not of each call site.
"""

from __future__ import annotations

import logging
import sys
import threading
import urllib.parse
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

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
_secrets_lock = threading.Lock()
_handler: logging.Handler | None = None
_current_level = "info"


def current_level() -> str:
    """The level last passed to configure_logging ("info" before any call)."""
    return _current_level


def register_secret(value: str) -> None:
    """Never let `value` (or its URL-encoded/decoded forms) appear in a log line."""
    value = value.strip()
    if len(value) < _MIN_SECRET_LENGTH:
        return
    # X bearer tokens are often stored URL-encoded ("%3D"), and may be logged either way.
    forms = {value, urllib.parse.quote(value, safe=""), urllib.parse.unquote(value)}
    with _secrets_lock:
        _secrets.update(f for f in forms if len(f) >= _MIN_SECRET_LENGTH)


def clear_secrets() -> None:
    """Forget registered secrets (tests)."""
    with _secrets_lock:
        _secrets.clear()


def redact(text: str) -> str:
    """`text` with every registered secret replaced by '***'."""
    # Longest first, so a secret containing another is replaced whole.
    for secret in sorted(_secrets, key=len, reverse=True):
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


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger to write to `stream` (stderr).

    Safe to call again (tests, SIGHUP): the previous handler is replaced.
    """
    global _handler, _current_level
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r} (debug|info|warning|error)")
    out = sys.stderr if stream is None else stream
    renderer = _renderer(fmt, out)
    shared = _shared_processors()

    structlog.configure(
        processors=[*shared, _logger_name, redact_secrets, _key_order, renderer],
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
            redact_secrets,
            _key_order,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
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
