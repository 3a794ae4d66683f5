"""The one failure taxonomy of a publish attempt: which exception means what.

Its labels are `streamd.records.PUBLISH_FAILURE_REASONS` (the label set of
streamd_publish_failures_total{reason}). `too_large`: Kafka will never take this batch as it
is (split it, dead-letter the record); it says nothing about Kafka's availability.
Everything else means "not now": keep the records and retry.
"""

from __future__ import annotations

from aiokafka import errors

from streamd.records import FAILED_OTHER, FAILED_TIMEOUT, FAILED_TOO_LARGE, FAILED_UNAVAILABLE


def _error_classes(*names: str) -> tuple[type[BaseException], ...]:
    # Looked up by name: an aiokafka without one of them simply has fewer to match.
    found = (getattr(errors, name, None) for name in names)
    return tuple(cls for cls in found if isinstance(cls, type))


_TOO_LARGE = _error_classes("MessageSizeTooLargeError", "RecordListTooLargeError")
_TIMEOUT: tuple[type[BaseException], ...] = (
    TimeoutError, *_error_classes("KafkaTimeoutError", "RequestTimedOutError"))
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError, *_error_classes("KafkaConnectionError", "NodeNotReadyError", "NoBrokersAvailable"))


class NoAck(TimeoutError):
    """A batch got no answer within kafka.ack_timeout (or its future was cancelled)."""


def failure_reason(exc: BaseException) -> str:
    """The label of publish_failures{reason} for `exc`."""
    if isinstance(exc, _TOO_LARGE):
        return FAILED_TOO_LARGE
    if isinstance(exc, _TIMEOUT):
        return FAILED_TIMEOUT
    if isinstance(exc, _UNAVAILABLE):
        return FAILED_UNAVAILABLE
    return FAILED_OTHER


def is_too_large(exc: BaseException) -> bool:
    return isinstance(exc, _TOO_LARGE)
