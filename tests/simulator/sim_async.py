"""Async clients for the simulator tests that run over HTTP/1.1 and HTTP/2: a line reader
over an httpx.AsyncClient stream that keeps the transport error instead of raising it."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from sim_helpers import AUTH, STREAM

from streamd.simulator import Simulator


@dataclass
class Served:
    """A started simulator and how a client reaches it (`wire`: "http/1.1", "https/1.1"
    or "h2")."""

    sim: Simulator
    wire: str
    verify: ssl.SSLContext | bool = True

    @property
    def http2(self) -> bool:
        return self.wire == "h2"

    def client(self, read: float = 10.0, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.sim.url, http2=self.http2, verify=self.verify, headers=AUTH,
            timeout=httpx.Timeout(5.0, read=read), **kwargs,
        )


class Lines:
    """Reads a streaming response on demand; collects raw chunks and CRLF lines."""

    def __init__(self, response: httpx.Response, raw: bool = False) -> None:
        self.response = response
        self.chunks: list[bytes] = []
        self.lines: list[bytes] = []  # including b"" heartbeats
        self.partial = b""
        self.error: Exception | None = None
        self.ended = False
        self._source = (response.aiter_raw() if raw else response.aiter_bytes()).__aiter__()

    def tweets(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines if line.startswith(b'{"data"')]

    def messages(self) -> list[dict[str, Any]]:
        """Lines that are not tweets nor heartbeats (e.g. {"errors": [...]})."""
        return [json.loads(line) for line in self.lines
                if line and not line.startswith(b'{"data"')]

    async def until(self, predicate: Callable[[Lines], bool], within: float = 5.0) -> bool:
        """Read until `predicate` holds (True), or the body ends or `within` seconds pass
        (False)."""
        with anyio.move_on_after(within):
            while not predicate(self):
                if self.ended:
                    return False
                await self._read_one()
            return True
        return False

    async def tweets_at_least(self, n: int, within: float = 5.0) -> list[dict[str, Any]]:
        assert await self.until(lambda r: len(r.tweets()) >= n, within), (
            f"{len(self.tweets())} tweets, error {self.error!r}"
        )
        return self.tweets()

    async def end(self, within: float = 5.0) -> bool:
        return await self.until(lambda r: r.ended, within)

    async def _read_one(self) -> None:
        try:
            chunk = await self._source.__anext__()
        except StopAsyncIteration:
            self.ended = True
            return
        except httpx.HTTPError as exc:
            self.error = exc
            self.ended = True
            return
        self.chunks.append(chunk)
        self.partial += chunk
        *complete, self.partial = self.partial.split(b"\r\n")
        self.lines.extend(complete)


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None, raw: bool = False,
) -> AsyncIterator[tuple[httpx.Response, Lines]]:
    async with client.stream("GET", STREAM, params=params, headers=headers) as response:
        yield response, Lines(response, raw=raw)
