"""Bounded reading of what X sends: bodies inflated in slices, answers read with a cap.

httpx's own gzip decoder inflates each network read in one go. gzip reaches about 1000:1
on repetitive data, so one 64 KiB read could become 64 MiB in memory at once (a 200 KB
body of newlines took the daemon to 1.16 GB). Here the body is read raw and inflated with
`max_length`, so no step ever holds more than `slice_bytes` of inflated data plus the
unconsumed part of one network read.

* `Inflater` turns raw body bytes into slices of at most `slice_bytes` (the stream reader
  frames and publishes each slice before it asks for the next);
* `read_capped` reads a whole answer, refusing (or, for error bodies, cutting) what goes
  past a cap on the inflated size;
* `read_answer` sends a request and returns its answer read with those caps, as an
  `httpx.Response` whose `.content` is already in memory (rules and check use it).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import anyio
import httpx

from streamd.errors import AnswerTooLarge

__all__ = [
    "ANSWER_MAX_BYTES",
    "ERROR_ANSWER_MAX_BYTES",
    "SLICE_BYTES",
    "AnswerTooLarge",
    "Inflater",
    "read_answer",
    "read_capped",
]

SLICE_BYTES = 64 * 1024
# A rules page holds at most 1,000 rules of at most 2,048 characters; even with every
# character escaped as \uXXXX that is about 12 MiB. Nothing X answers us comes near it.
ANSWER_MAX_BYTES = 16 * 1024 * 1024
# An error answer is read for its status, and its body only for detail: a 400 that lists a
# thousand refused ids is about 120 KB. Beyond this the body is cut, never refused.
ERROR_ANSWER_MAX_BYTES = 1024 * 1024
# An encoding name is quoted in errors; never quote a hostile header whole.
_QUOTE_CHARS = 40
_GZIP_WBITS = 31  # zlib: gzip header and trailer, 32 KiB window


def _decoding_error(text: str) -> httpx.DecodingError:
    return httpx.DecodingError(text)


class Inflater:
    """Raw body bytes in, decoded slices of at most `slice_bytes` out.

    `content_encoding` is the response's Content-Encoding header: absent, "identity" or
    "gzip" (also "x-gzip"). Anything else raises httpx.DecodingError at once: we only ever
    ask for gzip, and a body we cannot decode must not be framed as if it were plain.
    A broken gzip stream raises httpx.DecodingError too, so callers treat both like any
    other protocol problem of the transport."""

    __slots__ = ("_decompressor", "_slice", "inflated")

    def __init__(self, content_encoding: str | None, slice_bytes: int = SLICE_BYTES) -> None:
        if slice_bytes < 1:
            raise ValueError("slice_bytes must be at least 1")
        self._slice = slice_bytes
        self.inflated = 0  # decoded bytes handed out so far
        codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if not codings:
            self._decompressor: zlib._Decompress | None = None
        elif codings in (["gzip"], ["x-gzip"]):
            self._decompressor = zlib.decompressobj(_GZIP_WBITS)
        else:
            quoted = ascii((content_encoding or "")[:_QUOTE_CHARS])
            raise _decoding_error(
                f"unsupported Content-Encoding {quoted}: only gzip or identity is accepted"
            )

    @property
    def gzip(self) -> bool:
        return self._decompressor is not None

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded slices of `data`, in order; each is at most `slice_bytes`. Consume
        one before asking for the next: that is what keeps memory flat."""
        size = self._slice
        d = self._decompressor
        if d is None:
            if len(data) <= size:
                if data:
                    self.inflated += len(data)
                    yield data
                return
            for start in range(0, len(data), size):
                piece = data[start:start + size]
                self.inflated += len(piece)
                yield piece
            return
        pending = data
        while True:
            try:
                out = d.decompress(pending, size)
            except zlib.error as exc:
                raise _decoding_error(f"gzip body cannot be decoded: {exc}") from exc
            if d.eof:
                # One gzip member ended; RFC 1952 allows another to follow. Whatever comes
                # after is decoded as one (garbage fails its header check).
                pending = d.unused_data
                d = self._decompressor = zlib.decompressobj(_GZIP_WBITS)
            else:
                pending = d.unconsumed_tail
            if out:
                self.inflated += len(out)
                yield out
            # A full slice may have left output inside zlib even with no input left.
            if not pending and len(out) < size:
                return


async def read_capped(
    response: httpx.Response, limit: int, *, seconds: float, truncate: bool = False
) -> bytes:
    """The body of `response`, decoded, at most `limit` bytes, within `seconds`.

    Past `limit`: AnswerTooLarge, or with `truncate` the first `limit` bytes. Past
    `seconds`: httpx.ReadTimeout, or with `truncate` what came in time (an error body is
    read for detail only). Never holds more than `limit` bytes plus one slice."""
    if response.is_stream_consumed:
        # An in-process transport (httpx.MockTransport in tests) hands over a body it holds
        # already, decoded. An answer from the network, sent with stream=True, never is.
        held = response.content
        if len(held) > limit and not truncate:
            raise AnswerTooLarge(limit)
        return held[:limit]
    inflater = Inflater(response.headers.get("content-encoding"))
    body = bytearray()
    with anyio.move_on_after(seconds) as timer:
        async for chunk in response.aiter_raw():
            for piece in inflater.feed(chunk):
                room = limit - len(body)
                if len(piece) > room:
                    if truncate:
                        body += piece[:room]
                        return bytes(body)
                    raise AnswerTooLarge(limit)
                body += piece
    if timer.cancelled_caught and not truncate:
        raise httpx.ReadTimeout(f"answer not complete within {seconds:g} s")
    return bytes(body)


async def read_answer(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    seconds: float,
    limit: int = ANSWER_MAX_BYTES,
    error_limit: int = ERROR_ANSWER_MAX_BYTES,
) -> httpx.Response:
    """Send `request` and read its answer with a cap: a 2xx body past `limit` raises
    AnswerTooLarge (a page that large is not one X sends); any other body is cut at
    `error_limit`. The returned response holds the decoded body (its Content-Encoding and
    Content-Length headers dropped, as they described the wire form)."""
    response = await client.send(request, stream=True)
    try:
        if 200 <= response.status_code < 300:
            body = await read_capped(response, limit, seconds=seconds)
        else:
            body = await read_capped(response, error_limit, seconds=seconds, truncate=True)
    finally:
        await response.aclose()
    headers = [(k, v) for k, v in response.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length")]
    return httpx.Response(response.status_code, headers=headers, content=body,
                          request=request, extensions=response.extensions)
