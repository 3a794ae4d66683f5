"""The stream path over each wire (HTTP/1.1, HTTP/1.1 over TLS, HTTP/2 over TLS): tweets,
gzip, abrupt ends after a disconnect or usage-capped message, RST_STREAM, stalls and
reconnects, hanging connects, rules faults. Every test uses an httpx.AsyncClient over a
real socket."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable

import anyio
import httpx
import pytest
from sim_async import Lines, Served, open_stream
from sim_helpers import RULES, fixture_body

from streamd.simulator import ConnectFault, Fault, RulesFault, Simulator

pytestmark = pytest.mark.anyio

ENDS = ["clean", "reset", "no_final_chunk", "rst_stream"]

# What the client sees of each abrupt end. Over HTTP/1.1 "rst_stream" is a TCP reset.
_RESET: dict[str, type[httpx.TransportError]] = {
    "http/1.1": httpx.ReadError, "https/1.1": httpx.ReadError, "h2": httpx.ReadError,
}
_NO_FINAL: dict[str, type[httpx.TransportError]] = {
    "http/1.1": httpx.RemoteProtocolError, "https/1.1": httpx.RemoteProtocolError,
    "h2": httpx.RemoteProtocolError,
}
_RST_STREAM: dict[str, type[httpx.TransportError]] = {
    "http/1.1": httpx.ReadError, "https/1.1": httpx.ReadError, "h2": httpx.RemoteProtocolError,
}


def expected_error(wire: str, end: str) -> type[httpx.TransportError] | None:
    return {"clean": None, "reset": _RESET[wire], "no_final_chunk": _NO_FINAL[wire],
            "rst_stream": _RST_STREAM[wire]}[end]


@pytest.fixture
def busy(serve: Callable[..., Served]) -> Served:
    served = serve(match_all=True, tweets_per_second=200.0, slow_reader_seconds=1.0)
    served.sim.add_rules([("cat", "cats")])
    return served


async def wait_connections(sim: Simulator, n: int, within: float = 3.0) -> bool:
    return await anyio.to_thread.run_sync(sim.wait_connections, n, within)


def assert_ended_after(lines: Lines, wire: str, end: str) -> None:
    """The body ended as `end` says, and the message before it arrived whole."""
    error = expected_error(wire, end)
    if error is None:
        assert lines.error is None
    else:
        assert type(lines.error) is error, repr(lines.error)
    assert lines.partial == b""


async def test_tweets_arrive_over_the_wire(busy: Served) -> None:
    async with busy.client() as c, open_stream(c) as (response, lines):
        assert response.status_code == 200
        assert response.http_version == ("HTTP/2" if busy.http2 else "HTTP/1.1")
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        assert response.headers["x-rate-limit-remaining"] == "49"
        tweets = await lines.tweets_at_least(10)
    sent = {s.id: s.line for s in busy.sim.sent_tweets()}
    for line in lines.lines:
        if line.startswith(b'{"data"'):
            assert sent[json.loads(line)["data"]["id"]] == line
    ids = [int(t["data"]["id"]) for t in tweets]
    assert ids == sorted(ids)


async def test_gzip_over_the_wire(serve: Callable[..., Served]) -> None:
    served = serve(gzip=True, match_all=True, tweets_per_second=200.0)
    served.sim.add_rules([("cat", None)])
    async with served.client() as c, \
            open_stream(c, headers={"Accept-Encoding": "gzip"}, raw=True) as (response, lines):
        assert response.headers["content-encoding"] == "gzip"
        assert await lines.until(lambda r: len(r.chunks) >= 5)
    text = zlib.decompressobj(31).decompress(b"".join(lines.chunks))
    first = json.loads(text.split(b"\r\n")[0])
    assert first["data"]["id"] in {t.id for t in served.sim.sent_tweets()}


@pytest.mark.parametrize("end", ENDS)
async def test_disconnect_message_then_each_end(busy: Served, end: str) -> None:
    async with busy.client() as c, open_stream(c) as (_, lines):
        await lines.tweets_at_least(3)
        busy.sim.inject(Fault.operational_disconnect("ForceDisconnect", end=end))
        assert await lines.end()
    assert_ended_after(lines, busy.wire, end)
    problem = json.loads(lines.lines[-1])["errors"][0]
    assert set(problem) == set(fixture_body("operational_disconnect")["errors"][0])
    assert problem["disconnect_type"] == "ForceDisconnect"
    assert busy.sim.sent_lines()[-1].kind == "operational_disconnect"
    assert await wait_connections(busy.sim, 0)


@pytest.mark.parametrize("end", ENDS)
async def test_usage_capped_message_then_each_end(busy: Served, end: str) -> None:
    async with busy.client() as c:
        async with open_stream(c) as (_, lines):
            await lines.tweets_at_least(2)
            busy.sim.inject(Fault.usage_capped(end=end))
            assert await lines.end()
        assert_ended_after(lines, busy.wire, end)
        message = json.loads(lines.lines[-1])
        assert set(message) == {"errors"}
        (problem,) = message["errors"]
        real = fixture_body("usage_capped")
        assert list(problem) == list(real)  # same keys, same order
        assert {k: problem[k] for k in ("title", "period", "scope", "detail", "type")} == {
            k: real[k] for k in ("title", "period", "scope", "detail", "type")}
        assert problem["product_name"] == "standard-pro"
        assert busy.sim.sent_lines()[-1].kind == "usage_capped"
        assert await wait_connections(busy.sim, 0)
        # The message alone does not refuse the next connect (usage_cap would).
        async with busy.client() as fresh, open_stream(fresh) as (again, more):
            assert again.status_code == 200
            await more.tweets_at_least(1)


async def test_rst_stream_mid_stream(busy: Served) -> None:
    async with busy.client() as c:
        async with open_stream(c) as (first, lines):
            await lines.tweets_at_least(3)
            busy.sim.inject(Fault.close(end="rst_stream"))
            assert await lines.end()
        assert type(lines.error) is _RST_STREAM[busy.wire], repr(lines.error)
        assert await wait_connections(busy.sim, 0)
        async with open_stream(c) as (second, more):
            assert second.status_code == 200
            await more.tweets_at_least(1)
        if busy.http2:  # RST_STREAM ends the stream only: the connection carries on
            stream = first.extensions["network_stream"]
            assert second.extensions["network_stream"] is stream


async def test_stall_then_the_client_reconnects_at_once(serve: Callable[..., Served]) -> None:
    """After a stall the client gives up, closes its connection and reconnects at once: the
    slot of the stalled stream is free (pro tier: one connection, reject_new)."""
    served = serve(match_all=True, tweets_per_second=200.0, connection_policy="reject_new")
    served.sim.add_rules([("cat", None)])
    async with served.client(read=0.5) as c, open_stream(c) as (_, lines):
        await lines.tweets_at_least(2)
        served.sim.inject(Fault.stall(seconds=30.0))
        assert await lines.end(within=5.0)
        assert isinstance(lines.error, httpx.ReadTimeout)
    async with served.client() as fresh, open_stream(fresh) as (response, more):
        assert response.status_code == 200
        await more.tweets_at_least(1)
    assert [r.status for r in served.sim.connects()] == [200, 200]


async def test_connect_hang_holds_no_slot_until_the_client_gives_up(
    serve: Callable[..., Served],
) -> None:
    served = serve(match_all=True, tweets_per_second=200.0)
    sim = served.sim
    sim.add_rules([("cat", None)])
    sim.inject_connect(ConnectFault.hang())
    hung: list[BaseException] = []

    async def hanging_connect() -> None:
        async with served.client(read=0.8) as c:
            started = time.monotonic()
            try:
                await c.get("/2/tweets/search/stream")
            except httpx.ReadTimeout as exc:
                hung.append(exc)
            assert time.monotonic() - started >= 0.7

    async with anyio.create_task_group() as group:
        group.start_soon(hanging_connect)
        assert await anyio.to_thread.run_sync(sim.wait_connects, 1, 5.0)
        # While that connect hangs, the one stream slot is free.
        async with served.client() as c, open_stream(c) as (response, lines):
            assert response.status_code == 200
            await lines.tweets_at_least(1)
    assert len(hung) == 1
    records = sim.connects()
    assert [r.status for r in records] == [0, 200]
    assert (records[0].problem_type, records[0].detail) == (None, None)


async def test_connect_hang_ends_when_the_simulator_stops(
    serve: Callable[..., Served],
) -> None:
    served = serve()
    served.sim.add_rules([("cat", None)])
    served.sim.inject_connect(ConnectFault.hang())

    async def stop_when_hanging() -> None:
        # The connect log has the hang as soon as the request is in.
        assert await anyio.to_thread.run_sync(served.sim.wait_connects, 1, 5.0)
        await anyio.to_thread.run_sync(served.sim.stop)

    async with served.client(read=30.0) as c, anyio.create_task_group() as group:
        group.start_soon(stop_when_hanging)
        started = time.monotonic()
        with pytest.raises(httpx.TransportError):
            await c.get("/2/tweets/search/stream")
    assert time.monotonic() - started < 5.0


async def test_rules_faults_over_the_wire(serve: Callable[..., Served]) -> None:
    served = serve()
    sim = served.sim
    sim.inject_rules_fault(RulesFault.server_error(503), method="POST")
    sim.inject_rules_fault(RulesFault.connection_reset(), method="GET")
    async with served.client() as c:
        failed = await c.post(RULES, json={"add": [{"value": "cat"}]})
        assert (failed.status_code, failed.json()["type"]) == (503, "about:blank")
        with pytest.raises(httpx.ReadError):
            await c.get(RULES)
    async with served.client() as c:
        assert (await c.get(RULES)).status_code == 200
    assert [(r.method, r.status, r.fault) for r in sim.rules_requests()] == [
        ("POST", 503, "server_error"), ("GET", 0, "connection_reset"), ("GET", 200, None)]
