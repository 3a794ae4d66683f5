"""Connection control: what a stream (or a faulted request) can do to the connection under
it, whatever the HTTP version: see how much it has not yet sent, wait until the client has
what was sent, and end it abruptly in the ways X's connections end.

The ASGI app finds it in `scope["extensions"][CONNECTION_KEY]`. `TransportConnection` is
the HTTP/1.1 implementation over the asyncio transport; the HTTP/2 front end (h2_server)
has its own, per stream."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
import time
from typing import Any, Protocol

CONNECTION_KEY = "streamd.connection"

# How often to look again while waiting for the client to acknowledge what we sent: the
# kernel offers no event for "the peer has ACKed everything", so it is polled.
_POLL_SECONDS = 0.002


class ConnectionControl(Protocol):
    @property
    def protocol(self) -> str:
        """"http/1.1" or "h2"."""
        ...

    def backlogged(self) -> bool:
        """True when data we wrote is still waiting to leave (the client is not keeping
        up): a write now may block, so it is bounded by the slow-reader timeout."""
        ...

    def gone(self) -> bool:
        """True once the client has closed or reset the connection (or this stream); set
        as soon as the event arrives, before the ASGI app hears of it."""
        ...

    async def flushed(self, limit: float) -> bool:
        """Wait (up to `limit` seconds) until everything written so far has reached the
        client's kernel, so an abrupt end cannot discard it. False on timeout."""
        ...

    def release(self) -> None:
        """After a clean end of the response: HTTP/1.1 closes the connection (X does not
        reuse a stream's connection); HTTP/2 keeps it, the stream has ended."""
        ...

    def close(self) -> None:
        """End the TCP connection with FIN after what is buffered, without ending the
        response (no terminating chunk / no END_STREAM)."""
        ...

    def abort(self) -> None:
        """Drop the TCP connection at once, discarding what is buffered."""
        ...

    def reset(self) -> None:
        """TCP RST: SO_LINGER 0, then abort."""
        ...

    def reset_stream(self) -> None:
        """HTTP/2 RST_STREAM on this stream only; HTTP/1.1 has no such thing, so it falls
        back to a TCP reset."""
        ...


def unacked_bytes(transport: asyncio.BaseTransport) -> int:
    """Bytes the kernel still holds for the peer (unsent or not yet ACKed), via SIOCOUTQ;
    0 where that ioctl is unavailable."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return int(struct.unpack("i", raw)[0])


def buffered_bytes(transport: asyncio.WriteTransport) -> int:
    """What asyncio still buffers for the peer. Over TLS the SSL transport counts only its
    own buffer; the socket transport under it may hold encrypted bytes too."""
    size = transport.get_write_buffer_size()
    inner = _inner_transport(transport)
    if inner is not None:
        size += inner.get_write_buffer_size()
    return size


def _inner_transport(transport: asyncio.BaseTransport) -> asyncio.WriteTransport | None:
    # asyncio offers no public way to reach the socket transport under an SSL transport.
    protocol: Any = getattr(transport, "_ssl_protocol", None)
    inner = getattr(protocol, "_transport", None)
    return inner if isinstance(inner, asyncio.WriteTransport) else None


async def wait_flushed(transport: asyncio.WriteTransport, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while buffered_bytes(transport) or unacked_bytes(transport):
        if transport.is_closing() or time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_SECONDS)
    return True


def tcp_reset(transport: asyncio.WriteTransport) -> None:
    with contextlib.suppress(OSError):
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER on with a zero timeout: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class TransportConnection:
    """HTTP/1.1: the stream owns the whole TCP connection. The protocol sets `lost` when
    the client closes it (over TLS the transport itself says so only later)."""

    protocol = "http/1.1"

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.transport = transport
        self.lost = False

    def backlogged(self) -> bool:
        return buffered_bytes(self.transport) > 0

    def gone(self) -> bool:
        return self.lost or self.transport.is_closing()

    async def flushed(self, limit: float) -> bool:
        return await wait_flushed(self.transport, limit)

    def release(self) -> None:
        self.transport.close()

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    def reset(self) -> None:
        tcp_reset(self.transport)

    def reset_stream(self) -> None:
        self.reset()
