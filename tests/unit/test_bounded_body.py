"""streamd.x.body: bodies inflated in bounded slices, answers read with a cap."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from streamd.errors import AnswerTooLarge
from streamd.x.body import (
    ANSWER_MAX_BYTES,
    SLICE_BYTES,
    Inflater,
    read_answer,
    read_capped,
)


def gzip_of(data: bytes, level: int = 9) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def newline_bomb(inflated: int) -> bytes:
    """About inflated/1000 bytes of gzip that inflate to `inflated` newlines, made in
    pieces (never holding the inflated form)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    piece = b"\n" * (1 << 20)
    out = [c.compress(piece) for _ in range(inflated >> 20)]
    return b"".join(out) + c.flush()


def test_identity_passes_through_in_slices() -> None:
    inflater = Inflater(None, slice_bytes=4)
    assert list(inflater.feed(b"abcdefghij")) == [b"abcd", b"efgh", b"ij"]
    assert list(inflater.feed(b"")) == []
    assert inflater.inflated == 10
    assert not inflater.gzip
    assert list(Inflater("identity").feed(b"x")) == [b"x"]


@pytest.mark.parametrize("encoding", ["gzip", "GZIP", " gzip ", "x-gzip", "identity, gzip"])
def test_gzip_is_inflated_in_slices_across_any_chunking(encoding: str) -> None:
    data = b"".join(b'{"data":{"id":"%d"}}\r\n' % i for i in range(20000))
    body = gzip_of(data)
    for cut in (1, 7, 1000, len(body)):
        inflater = Inflater(encoding, slice_bytes=1024)
        out = []
        for start in range(0, len(body), cut):
            out.extend(inflater.feed(body[start:start + cut]))
        assert b"".join(out) == data
        assert max(map(len, out)) <= 1024
        assert inflater.inflated == len(data)


def test_concatenated_gzip_members_are_one_body() -> None:
    body = gzip_of(b"one\r\n") + gzip_of(b"two\r\n")
    assert b"".join(Inflater("gzip").feed(body)) == b"one\r\ntwo\r\n"


@pytest.mark.parametrize("encoding", ["br", "deflate", "zstd", "gzip, gzip", "gzip, br",
                                      "compress" * 100])
def test_an_encoding_we_did_not_ask_for_is_a_decoding_error(encoding: str) -> None:
    with pytest.raises(httpx.DecodingError) as caught:
        Inflater(encoding)
    assert "unsupported Content-Encoding" in str(caught.value)
    assert len(str(caught.value)) < 150  # a hostile header is quoted in part only


def test_a_broken_gzip_stream_is_a_decoding_error_after_the_good_part() -> None:
    body = gzip_of(b"good line\r\n" * 100)
    inflater = Inflater("gzip", slice_bytes=64)
    got = b"".join(inflater.feed(body[:40]))
    with pytest.raises(httpx.DecodingError):
        list(inflater.feed(b"\x00garbage that is not deflate" * 10))
    assert (b"good line\r\n" * 100).startswith(got)


def test_a_gzip_bomb_never_holds_more_than_a_slice() -> None:
    """200 MB of newlines from ~200 KB of gzip, fed as 64 KiB network reads: httpx's own
    decoder would hold ~64 MB at once for each read; here no slice is over 64 KiB and the
    peak of Python allocations stays near one read plus one slice."""
    body = newline_bomb(200 << 20)
    assert len(body) < 300_000
    inflater = Inflater("gzip")
    tracemalloc.start()
    try:
        total = largest = 0
        for start in range(0, len(body), 65536):
            for piece in inflater.feed(body[start:start + 65536]):
                total += len(piece)
                largest = max(largest, len(piece))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 200 << 20
    assert largest <= SLICE_BYTES
    assert peak < 1 << 20, peak


# --- answers read with a cap -------------------------------------------------------------


def mock_client(handler: httpx.MockTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url="https://x.test", transport=handler)


def test_an_answer_is_decoded_and_its_wire_headers_dropped() -> None:
    body = b'{"data":[],"meta":{"result_count":0}}'

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=httpx.ByteStream(gzip.compress(body)),
                              headers={"content-encoding": "gzip", "x-rate-limit-remaining": "3"})

    async def main() -> httpx.Response:
        async with mock_client(httpx.MockTransport(answer)) as client:
            return await read_answer(client, client.build_request("GET", "/r"), seconds=5)

    response = anyio.run(main)
    assert response.status_code == 200
    assert response.content == body
    assert response.json() == {"data": [], "meta": {"result_count": 0}}
    assert "content-encoding" not in response.headers
    assert response.headers["x-rate-limit-remaining"] == "3"


def test_a_2xx_answer_past_the_cap_is_refused_without_buffering_it() -> None:
    bomb = newline_bomb(64 << 20)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=httpx.ByteStream(bomb),
                              headers={"content-encoding": "gzip"})

    async def main() -> None:
        async with mock_client(httpx.MockTransport(answer)) as client:
            await read_answer(client, client.build_request("GET", "/r"), seconds=5,
                              limit=1 << 20)

    tracemalloc.start()
    try:
        with pytest.raises(AnswerTooLarge) as caught:
            anyio.run(main)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(caught.value) == "answer larger than 1048576 bytes"
    assert peak < 4 << 20, peak
    assert ANSWER_MAX_BYTES == 16 << 20


def test_an_error_answer_past_its_cap_is_cut_not_refused() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, stream=httpx.ByteStream(b"x" * 5000))

    async def main() -> httpx.Response:
        async with mock_client(httpx.MockTransport(answer)) as client:
            return await read_answer(client, client.build_request("GET", "/r"), seconds=5,
                                     error_limit=100)

    response = anyio.run(main)
    assert response.status_code == 503
    assert response.content == b"x" * 100


class Drip(httpx.AsyncByteStream):
    """A body that sends a byte now and then, forever."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            yield b"{"
            await anyio.sleep(0.05)


def test_an_answer_that_never_ends_is_a_read_timeout() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Drip())

    async def main() -> None:
        async with mock_client(httpx.MockTransport(answer)) as client:
            await read_answer(client, client.build_request("GET", "/r"), seconds=0.3)

    with pytest.raises(httpx.ReadTimeout):
        anyio.run(main)


def test_read_capped_truncates_on_time_for_error_bodies() -> None:
    async def main() -> bytes:
        response = httpx.Response(500, stream=Drip())
        return await read_capped(response, 1000, seconds=0.3, truncate=True)

    body = anyio.run(main)
    assert 1 <= len(body) < 20
    assert set(body) == {ord("{")}


def test_a_body_an_in_process_transport_already_holds_is_capped_too() -> None:
    """httpx.MockTransport answers built with content= arrive read (the rules tests' fake X):
    the cap still applies, the raw path is for the network."""

    def answer(request: httpx.Request) -> httpx.Response:
        status = 200 if request.url.path == "/ok" else 500
        return httpx.Response(status, json={"data": ["x" * 200]})

    async def main(path: str) -> httpx.Response:
        async with mock_client(httpx.MockTransport(answer)) as client:
            return await read_answer(client, client.build_request("GET", path), seconds=5,
                                     limit=100, error_limit=10)

    with pytest.raises(AnswerTooLarge):
        anyio.run(main, "/ok")
    assert anyio.run(main, "/error").content == b'{"data":["'


def test_the_rules_client_refuses_an_oversized_answer_as_a_transient_server_error() -> None:
    """RulesApi reads every answer with the cap: 20 MiB of rules is refused, retried as a
    server_error, and never buffered (the raw path: a network-like stream)."""
    from streamd.errors import RulesError
    from streamd.x.rules import RulesApi, terminal_policy

    page = b'{"data":[' + b'{"id":"1","value":"x"},' * (1 << 20) + b'{"id":"2","value":"y"}]}'
    calls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, stream=httpx.ByteStream(gzip.compress(page)),
                              headers={"content-encoding": "gzip"})

    async def no_sleep(seconds: float) -> None:
        pass

    async def main() -> None:
        async with mock_client(httpx.MockTransport(answer)) as client:
            await RulesApi(client, policy=terminal_policy(2), sleep=no_sleep).list_rules()

    with pytest.raises(RulesError) as caught:
        anyio.run(main)
    assert getattr(caught.value, "reason", None) == "server_error"
    assert "rules_get: answer larger than 16777216 bytes" in str(caught.value)
    assert len(calls) == 2
