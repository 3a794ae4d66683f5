"""Small clients for the simulator tests: a line reader over a real httpx stream."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from streamd.simulator import Simulator

AUTH = {"Authorization": "Bearer test-token"}
STREAM = "/2/tweets/search/stream"
RULES = "/2/tweets/search/stream/rules"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "x_errors"


def fixture_body(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return body


class LineReader:
    """Reads a streaming response in a thread; collects raw chunks and CRLF lines."""

    def __init__(self, response: httpx.Response, raw: bool = False) -> None:
        self.response = response
        self.chunks: list[bytes] = []
        self.lines: list[bytes] = []  # including b"" heartbeats
        self.error: BaseException | None = None
        self.ended = threading.Event()
        self._buffer = b""
        self._cond = threading.Condition()
        self._raw = raw
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            source = self.response.iter_raw() if self._raw else self.response.iter_bytes()
            for chunk in source:
                with self._cond:
                    self.chunks.append(chunk)
                    self._buffer += chunk
                    *complete, self._buffer = self._buffer.split(b"\r\n")
                    self.lines.extend(complete)
                    self._cond.notify_all()
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended.set()
            with self._cond:
                self._cond.notify_all()

    @property
    def partial(self) -> bytes:
        return self._buffer

    def tweets(self) -> list[dict[str, Any]]:
        with self._cond:
            lines = list(self.lines)
        out = []
        for line in lines:
            if line.startswith(b'{"data"'):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # malformed/truncated fault lines are not tweets
        return out

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if self.ended.is_set():
                    return bool(predicate(self))
                self._cond.wait(min(left, 0.05))
            return True

    def wait_tweets(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        assert self.wait_for(lambda r: len(r.tweets()) >= n, timeout), (
            f"only {len(self.tweets())} tweets within {timeout}s"
        )
        return self.tweets()

    def wait_end(self, timeout: float = 5.0) -> bool:
        return self.ended.wait(timeout)


@contextmanager
def open_stream(
    sim: Simulator, params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
    raw: bool = False, path: str = STREAM,
) -> Iterator[tuple[httpx.Response, LineReader]]:
    with httpx.Client(base_url=sim.url, timeout=httpx.Timeout(10.0, read=30.0)) as client:
        request_headers = {**AUTH, **(headers or {})}
        with client.stream("GET", path, params=params, headers=request_headers) as response:
            reader = LineReader(response, raw=raw) if response.status_code == 200 else None
            try:
                yield response, reader  # type: ignore[misc]
            finally:
                response.close()


def client(sim: Simulator, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=sim.url, headers=AUTH, timeout=10.0, **kwargs)
