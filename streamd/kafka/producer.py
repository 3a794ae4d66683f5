"""The aiokafka producer's settings and its teardown, bounded in time.

aiokafka can hang in start/send/flush/stop while the cluster is down, so every await on it
carries a deadline, and a producer that does not stop in time is torn down without a
flush (README, "Delivery guarantee").
"""

from __future__ import annotations

from typing import Any, Final

import anyio
from aiokafka import AIOKafkaProducer

from streamd.config import KafkaSettings

# Tearing down a producer that would not stop: stopping its sender and closing its sockets
# takes no network round trip, so this is plenty.
_ABANDON_S: Final = 0.5
# try_producer: a producer that published nothing stops at once; one whose start failed,
# within this.
_TRY_STOP_S: Final = 2.0


def producer_kwargs(kafka: KafkaSettings, sasl_password: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "acks": kafka.acks,
        "enable_idempotence": kafka.enable_idempotence,
        "compression_type": None if kafka.compression == "none" else kafka.compression,
        "linger_ms": kafka.linger_ms,
        "max_batch_size": kafka.max_batch_bytes,
        "max_request_size": kafka.max_request_size,
        "request_timeout_ms": int(kafka.request_timeout * 1000),
        "security_protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = sasl_password
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        kwargs["ssl_context"] = create_ssl_context(
            cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile
        )
    return kwargs


async def try_producer(
    kafka: KafkaSettings, sasl_password: str | None, within: float, **overrides: Any
) -> BaseException | None:
    """Start a producer with the daemon's settings (`overrides` replace some, for a
    comparison), publish nothing, stop it. With enable_idempotence its start asks the
    broker for a producer id (InitProducerId), as the daemon's does. None when it started;
    else why not (TimeoutError past `within` seconds). For `streamd check`."""
    try:
        producer = AIOKafkaProducer(**{**producer_kwargs(kafka, sasl_password), **overrides})
    except Exception as exc:  # settings aiokafka refuses (ValueError, ...)
        return exc
    try:
        with anyio.fail_after(within):
            await producer.start()
    except Exception as exc:  # aiokafka raises its own and OSError kinds alike
        return exc
    finally:
        await stop_producer(producer, _TRY_STOP_S)
    return None


async def stop_producer(producer: AIOKafkaProducer, within: float) -> None:
    """Stop a producer within `within` s; past that, tear it down without a flush (its
    sender stops, its sockets close), so nothing keeps waiting on a broker that does not
    answer. Its unsent batches are simply dropped: their records are in the spool."""
    with anyio.CancelScope(shield=True):
        # stop() marks the producer closed before its first await, even when cut at once.
        with anyio.move_on_after(within) as scope:
            await producer.stop()
        if not scope.cancelled_caught:
            return
        with anyio.move_on_after(_ABANDON_S):
            await _abandon(producer)


async def _abandon(producer: AIOKafkaProducer) -> None:
    # aiokafka has no "close now" (stop() flushes first), so this reaches into its parts;
    # each is looked up defensively, and what cannot be closed is left to the loop's end.
    # Its batches are not failed: a failed batch nobody waits for makes asyncio log
    # "exception was never retrieved"; a pending one is just collected.
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        await sender.close()
    client = getattr(producer, "client", None)
    if client is not None:
        await client.close()
