"""Hostile bodies the simulator can send: a gzip bomb on the stream (blank lines or one giant
line) and an oversized rules answer, over each wire. The client side reads raw bytes and
inflates them itself with a bound, so the test never holds what the bomb inflates to."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import httpx
import orjson
import pytest
from sim_async import Served, open_stream
from sim_helpers import AUTH, RULES

from streamd.simulator import Fault, RulesFault
from streamd.simulator.rules_faults import oversized_body

pytestmark = pytest.mark.anyio

MiB = 1 << 20


class Inflated:
    """What a gzip body inflates to, measured 64 KiB at a time: size, first and last bytes,
    and line ends."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(31)
        self.raw = 0
        self.size = 0
        self.head = b""
        self.tail = b""
        self.newlines = 0

    def feed(self, chunk: bytes) -> None:
        self.raw += len(chunk)
        data = chunk
        while True:
            out = self._d.decompress(data, 65536)
            data = self._d.unconsumed_tail
            if out:
                self.size += len(out)
                if len(self.head) < 64:
                    self.head = (self.head + out)[:64]
                self.tail = (self.tail + out)[-64:]
                self.newlines += out.count(b"\n")
            if not data and len(out) < 65536:
                return


async def test_a_gzip_bomb_of_blank_lines(serve: Callable[..., Served]) -> None:
    served = serve(gzip=True, match_all=True, tweets_per_second=0.0)
    served.sim.add_rules([("cat", "cats")])
    served.sim.inject(Fault.gzip_bomb(inflated_mb=40))
    seen = Inflated()
    async with served.client() as client, client.stream(
        "GET", "/2/tweets/search/stream", headers={"Accept-Encoding": "gzip"},
    ) as response:
        assert response.headers["content-encoding"] == "gzip"
        async for chunk in response.aiter_raw():
            seen.feed(chunk)
            if seen.size >= 40 * MiB:
                break
    assert seen.size == 40 * MiB
    assert seen.newlines == 20 * MiB  # \r\n, 20 Mi heartbeats
    assert seen.raw < 60_000  # ~1 KB on the wire per MiB inflated
    assert [line.kind for line in served.sim.sent_lines()] == ["gzip_bomb"]
    assert served.sim.sent_lines()[0].line == b"40 MiB of heartbeats gzip"


async def test_a_gzip_bomb_of_one_line(serve: Callable[..., Served]) -> None:
    served = serve(gzip=True, match_all=True, tweets_per_second=0.0)
    served.sim.add_rules([("cat", "cats")])
    served.sim.inject(Fault.gzip_bomb(inflated_mb=8, shape="line"))
    seen = Inflated()
    async with served.client() as client, client.stream(
        "GET", "/2/tweets/search/stream", headers={"Accept-Encoding": "gzip"},
    ) as response:
        async for chunk in response.aiter_raw():
            seen.feed(chunk)
            if seen.tail.endswith(b"\r\n") and seen.size >= 8 * MiB:
                break
    assert seen.size == 8 * MiB
    assert seen.newlines == 1
    assert seen.head.startswith(b'{"data":{"id":"')
    assert seen.tail.endswith(b'xxx"},"matching_rules":[]}\r\n')


async def test_a_gzip_bomb_of_junk_lines(serve: Callable[..., Served]) -> None:
    served = serve(gzip=True, match_all=True, tweets_per_second=0.0)
    served.sim.add_rules([("cat", "cats")])
    served.sim.inject(Fault.gzip_bomb(inflated_mb=4, shape="junk_lines"))
    seen = Inflated()
    async with served.client() as client, client.stream(
        "GET", "/2/tweets/search/stream", headers={"Accept-Encoding": "gzip"},
    ) as response:
        async for chunk in response.aiter_raw():
            seen.feed(chunk)
            if seen.newlines >= 4 * (MiB // 3):
                break
    assert seen.size == 4 * (MiB // 3) * 3
    assert seen.head == b"x\r\n" * 21 + b"x"


async def test_without_gzip_a_bomb_is_sent_as_it_is(serve: Callable[..., Served]) -> None:
    served = serve(gzip=False, match_all=True, tweets_per_second=0.0)
    served.sim.add_rules([("cat", "cats")])
    served.sim.inject(Fault.gzip_bomb(inflated_mb=2))
    async with served.client() as client, open_stream(client, raw=True) as (response, lines):
        assert "content-encoding" not in response.headers
        assert await lines.until(lambda r: len(r.lines) >= MiB, within=10)
    assert set(lines.lines[:MiB]) == {b""}
    assert served.sim.sent_lines()[0].line == b"2 MiB of heartbeats (no gzip: sent as is)"


def test_gzip_bomb_parameters_are_checked() -> None:
    assert Fault.from_dict({"fault": "gzip_bomb"}) == Fault.gzip_bomb(200)
    assert Fault.from_dict({"fault": "gzip_bomb", "inflated_mb": 3, "shape": "line"}) == (
        Fault.gzip_bomb(3, "line"))
    with pytest.raises(ValueError, match="shape"):
        Fault.gzip_bomb(shape="zip")
    with pytest.raises(ValueError, match="inflated_mb"):
        Fault.gzip_bomb(inflated_mb=0)


@pytest.mark.parametrize("gzip", [True, False], ids=["gzip", "identity"])
async def test_an_oversized_rules_answer(serve: Callable[..., Served], gzip: bool) -> None:
    served = serve()
    served.sim.inject_rules_fault(RulesFault.oversized(megabytes=3), method="GET")
    encoding = {"Accept-Encoding": "gzip" if gzip else "identity"}
    seen = Inflated()
    body = bytearray()
    async with served.client() as client, client.stream(
        "GET", RULES, headers={**AUTH, **encoding},
    ) as response:
        assert response.status_code == 200
        assert response.headers.get("content-encoding") == ("gzip" if gzip else None)
        assert "x-rate-limit-remaining" in response.headers
        async for chunk in response.aiter_raw():
            if gzip:
                seen.feed(chunk)
            else:
                body += chunk
    if gzip:
        assert seen.raw < 200_000
        assert seen.size > 3 * MiB
    else:
        parsed = orjson.loads(body)
        assert len(body) > 3 * MiB
        assert parsed["meta"]["result_count"] == len(parsed["data"])
    request = served.sim.rules_requests()[-1]
    assert (request.method, request.status, request.fault) == ("GET", 200, "oversized")
    # the next request is answered as usual
    async with served.client() as client:
        after = await client.get(RULES, headers=AUTH)
    assert after.status_code == 200
    assert len(after.content) < 1000


async def test_an_oversized_answer_stops_when_the_client_hangs_up(
    serve: Callable[..., Served],
) -> None:
    served = serve()
    served.sim.inject_rules_fault(RulesFault.oversized(megabytes=4000), method="GET")
    received = 0
    async with served.client() as client, client.stream(
        "GET", RULES, headers={**AUTH, "Accept-Encoding": "identity"},
    ) as response:
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if received > 2 * MiB:
                break
    # 4000 MiB were promised; the simulator noticed the client go and answers the next one
    async with served.client(read=5.0) as client:
        after = await client.get(RULES, headers=AUTH)
    assert after.status_code == 200


def test_the_oversized_body_is_valid_json_of_rules() -> None:
    body = b"".join(oversized_body(2))
    assert 2 * MiB < len(body) < 3 * MiB
    parsed = orjson.loads(body)
    assert parsed["meta"]["result_count"] == len(parsed["data"])
    assert all(set(rule) == {"id", "value", "tag"} for rule in parsed["data"])
    assert RulesFault.from_dict({"kind": "oversized", "megabytes": 5}) == (
        RulesFault.oversized(5))
    with pytest.raises(ValueError, match="megabytes"):
        RulesFault.oversized(0)


_ = httpx  # the clients above are httpx's
