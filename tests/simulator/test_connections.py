"""X's Connections API and zombie connections, over real sockets: listing, pagination,
fields and filters, validation, each DELETE form, request windows, the 403/404 modes,
zombies holding the slot, and how a terminated stream ends (over each wire)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sim_async import Served
from sim_async import open_stream as open_async_stream
from sim_helpers import AUTH, STREAM, client, fixture_body, open_stream

from streamd.simulator import Simulator, SimulatorConfig
from streamd.simulator.records import ConnectionRecord

CONNECTIONS = "/2/connections"
EVERY_FIELD = "id,endpoint_name,client_ip,connected_at,disconnected_at,disconnect_reason"
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
OPERATOR_LINE = (
    b'{"errors":[{"title":"operational-disconnect","disconnect_type":"ForceDisconnect",'
    b'"detail":"This stream has been disconnected by the operator.",'
    b'"type":"https://api.twitter.com/2/problems/operational-disconnect"}]}'
)


@pytest.fixture
def sim(make_simulator: Callable[..., Simulator]) -> Simulator:
    started = make_simulator(match_all=True, tweets_per_second=100.0)
    started.add_rules([("cat", None)])
    return started


@pytest.fixture
def api(sim: Simulator) -> Iterator[httpx.Client]:
    with client(sim) as c:
        yield c


def kill(c: httpx.Client, uuids: Any) -> httpx.Response:
    return c.request("DELETE", CONNECTIONS, json=uuids)


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def connect_and_leave(sim: Simulator) -> str:
    """Open a stream, read one line, hang up, wait until the server has seen it; returns
    its connection id."""
    with open_stream(sim) as (response, reader):
        assert response.status_code == 200
        assert reader.wait_for(lambda r: bool(r.lines), 3.0)
    assert sim.wait_connections(0, 3.0)  # the stream is gone (its connection may not be)
    connection_id = sim.connects()[-1].connection_id
    assert connection_id is not None
    return connection_id


def record_of(sim: Simulator, connection_id: str) -> ConnectionRecord:
    (record,) = [r for r in sim.connection_records() if r.id == connection_id]
    return record


def assert_invalid_request(response: httpx.Response, parameter: str | None) -> None:
    assert response.status_code == 400
    body = response.json()
    real = fixture_body("invalid_request")
    assert set(body) == set(real)
    assert (body["title"], body["type"]) == (real["title"], real["type"])
    if parameter is not None:
        assert parameter in body["errors"][0]["parameters"], body
    assert response.headers["x-rate-limit-limit"]


# --- listing ----------------------------------------------------------------------------------


def test_a_connect_creates_an_active_connection(sim: Simulator, api: httpx.Client) -> None:
    with open_stream(sim) as (response, reader):
        assert response.status_code == 200
        assert reader.wait_for(lambda r: bool(r.lines), 3.0)
        default = api.get(CONNECTIONS)
        assert default.status_code == 200
        (plain,) = default.json()["data"]
        assert set(plain) == {"endpoint_name", "connected_at"}  # the schema's required
        assert default.json()["meta"] == {"result_count": 1}
        assert default.headers["x-rate-limit-limit"] == "300"
        assert default.headers["x-rate-limit-remaining"] == "299"
        full = api.get(CONNECTIONS, params={"connection.fields": EVERY_FIELD}).json()
        (connection,) = full["data"]
    connect = sim.connects()[-1]
    assert connection == {
        "id": connect.connection_id, "endpoint_name": "filtered_stream",
        "client_ip": "127.0.0.1", "connected_at": plain["connected_at"],
    }
    assert RFC3339_MS.match(connection["connected_at"])
    assert abs(record_of(sim, connection["id"]).connected_at_epoch - connect.at) < 1.0


def test_history_with_reasons_fields_and_filters(sim: Simulator, api: httpx.Client) -> None:
    gone = connect_and_leave(sim)
    assert wait_until(lambda: not record_of(sim, gone).active)
    with open_stream(sim) as (response, _):
        assert response.status_code == 200
        live = sim.connects()[-1].connection_id
        fields = {"connection.fields": EVERY_FIELD}
        inactive = api.get(CONNECTIONS, params={"status": "inactive", **fields}).json()
        (old,) = inactive["data"]
        assert old["id"] == gone
        assert old["disconnect_reason"] == "client_disconnect"
        assert RFC3339_MS.match(old["disconnected_at"])
        assert old["disconnected_at"] >= old["connected_at"]
        active = api.get(CONNECTIONS, params=fields).json()["data"]
        assert [c["id"] for c in active] == [live]
        assert "disconnected_at" not in active[0]
        assert "disconnect_reason" not in active[0]
        both = api.get(CONNECTIONS, params={"status": "all", **fields}).json()["data"]
        assert [c["id"] for c in both] == [live, gone]  # newest first
        only_id = api.get(CONNECTIONS, params={"status": "inactive",
                                               "connection.fields": "id"}).json()
        assert set(only_id["data"][0]) == {"id", "endpoint_name", "connected_at"}
        on_filtered = api.get(CONNECTIONS, params={
            "status": "all", "endpoints": "filtered_stream,sample_stream"}).json()
        assert on_filtered["meta"]["result_count"] == 2
        elsewhere = api.get(CONNECTIONS, params={"endpoints": "sample_stream"})
        assert elsewhere.json() == {"meta": {"result_count": 0}}


def test_pagination_follows_next_token(sim: Simulator, api: httpx.Client) -> None:
    ids = [connect_and_leave(sim) for _ in range(5)]
    seen: list[str] = []
    params = {"status": "all", "max_results": "2", "connection.fields": "id"}
    pages = 0
    while True:
        body = api.get(CONNECTIONS, params=params).json()
        pages += 1
        seen.extend(c["id"] for c in body["data"])
        assert body["meta"]["result_count"] == len(body["data"])
        if "next_token" not in body["meta"]:
            break
        params["pagination_token"] = body["meta"]["next_token"]
    assert pages == 3
    assert seen == ids[::-1]


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"status": "open"}, "status"),
        ({"max_results": "0"}, "max_results"),
        ({"max_results": "101"}, "max_results"),
        ({"max_results": "ten"}, "max_results"),
        ({"connection.fields": "id,uuid"}, "connection.fields"),
        ({"endpoints": "filtered"}, "endpoints"),
        ({"pagination_token": "abcdefghijklmnop"}, "pagination_token"),
        ({"pagination_token": "x"}, "pagination_token"),
        ({"since_id": "1"}, "since_id"),
    ],
)
def test_bad_list_parameters_are_invalid_requests(
    api: httpx.Client, params: dict[str, str], parameter: str
) -> None:
    assert_invalid_request(api.get(CONNECTIONS, params=params), parameter)


def test_auth_tier_and_api_modes(sim: Simulator, api: httpx.Client) -> None:
    with httpx.Client(base_url=sim.url) as anonymous:
        unauthorized = anonymous.get(CONNECTIONS)
        assert unauthorized.status_code == 401
        assert unauthorized.json() == fixture_body("unauthorized")
        assert "x-rate-limit-limit" not in unauthorized.headers
        assert anonymous.delete(f"{CONNECTIONS}/all").status_code == 401
    forbidden = fixture_body("client_forbidden")
    sim.set_tier("basic")
    assert api.get(CONNECTIONS).json() == forbidden
    sim.set_tier("pro")
    sim.configure(connections_api="forbidden")
    for response in (api.get(CONNECTIONS), kill(api, {"uuids": ["x"]}),
                     api.delete(f"{CONNECTIONS}/all"),
                     api.delete(f"{CONNECTIONS}/filtered_stream")):
        assert response.status_code == 403
        assert response.json() == forbidden
        assert response.headers["x-rate-limit-remaining"]
    sim.configure(connections_api="absent")
    for response in (api.get(CONNECTIONS), api.delete(f"{CONNECTIONS}/all")):
        assert response.status_code == 404
        assert response.json()["type"] == "about:blank"
    sim.configure(connections_api="on")
    assert api.get(CONNECTIONS).status_code == 200
    assert api.post(CONNECTIONS).status_code == 404  # not an operation of the API
    log = sim.connections_requests()
    # Every Connections API request is logged; a POST is none.
    assert [r.status for r in log] == [401, 401, 403, 403, 403, 403, 403, 404, 404, 200]
    assert (log[4].method, log[4].path, log[4].uuids) == ("DELETE", CONNECTIONS, ["x"])


# --- terminating ------------------------------------------------------------------------------


def test_delete_by_uuids_ends_the_stream_with_a_disconnect_message(
    sim: Simulator, api: httpx.Client
) -> None:
    with open_stream(sim) as (response, reader):
        assert response.status_code == 200
        reader.wait_tweets(1)
        (live,) = [r.id for r in sim.connection_records() if r.active]
        answer = kill(api, {"uuids": [live, "no-such-id"]})
        # The slot is free before the answer: a new connect is admitted at once.
        assert not record_of(sim, live).active
        with client(sim) as other, other.stream("GET", STREAM) as again:
            assert again.status_code == 200
        assert reader.wait_end(3.0)
    assert answer.status_code == 200
    assert answer.headers["x-rate-limit-limit"] == "50"
    assert answer.json() == {"data": {
        "successful_kills": 1, "failed_kills": 1,
        "results": [{"uuid": live, "success": True},
                    {"uuid": "no-such-id", "success": False,
                     "error_message": "Connection not found"}],
    }}
    assert reader.error is None
    assert reader.lines[-1] == OPERATOR_LINE
    assert json.loads(reader.lines[-1]) == {"errors": [{
        **fixture_body("operational_disconnect")["errors"][0],
        "disconnect_type": "ForceDisconnect",
        "detail": "This stream has been disconnected by the operator."}]}
    record = record_of(sim, live)
    assert (record.active, record.disconnect_reason) == (False, "operator_disconnect")
    again = kill(api, {"uuids": [live]}).json()["data"]
    assert again["results"] == [{"uuid": live, "success": False,
                                 "error_message": "Connection is not active"}]
    (logged,) = [r for r in sim.connections_requests() if r.uuids == [live, "no-such-id"]]
    assert (logged.method, logged.path, logged.status) == ("DELETE", CONNECTIONS, 200)


@pytest.mark.parametrize(
    "body",
    [None, {"uuids": []}, {"uuids": ["x"] * 101}, {"uuids": "x"}, {"ids": ["x"]}, [1]],
)
def test_bad_delete_bodies_are_invalid_requests(api: httpx.Client, body: Any) -> None:
    response = (api.request("DELETE", CONNECTIONS) if body is None else kill(api, body))
    assert_invalid_request(response, None)


def test_delete_by_endpoint_and_all(make_simulator: Callable[..., Simulator]) -> None:
    sim = make_simulator(tier="enterprise", tweets_per_second=100.0, match_all=True)
    sim.add_rules([("cat", None)])
    with client(sim) as api, open_stream(sim) as (_, a), open_stream(sim) as (_, b):
        assert sim.wait_connections(2, 3.0)
        ids = {r.id for r in sim.connection_records() if r.active}
        elsewhere = api.delete(f"{CONNECTIONS}/sample_stream")
        assert elsewhere.json() == {"data": {"successful_kills": 0, "failed_kills": 0,
                                             "results": []}}
        assert_invalid_request(api.delete(f"{CONNECTIONS}/filtered"), "endpoint_id")
        assert_invalid_request(api.delete(f"{CONNECTIONS}/all", params={"x": "1"}), "x")
        by_endpoint = api.delete(f"{CONNECTIONS}/filtered_stream")
        assert by_endpoint.status_code == 200
        data = by_endpoint.json()["data"]
        assert (data["successful_kills"], data["failed_kills"]) == (2, 0)
        assert {r["uuid"] for r in data["results"]} == ids
        assert a.wait_end(3.0)
        assert b.wait_end(3.0)
        with open_stream(sim) as (response, _):
            assert response.status_code == 200
            every = api.delete(f"{CONNECTIONS}/all")
            assert every.headers["x-rate-limit-limit"] == "25"
            assert every.json()["data"]["successful_kills"] == 1
            assert sim.connection_records()[0].disconnect_reason == "operator_disconnect"


def test_request_windows(make_simulator: Callable[..., Simulator]) -> None:
    sim = make_simulator(connections_get_limit=2, connections_delete_limit=1,
                         connections_delete_endpoint_limit=1, connections_delete_all_limit=1)
    with client(sim) as api:
        first, second, third = (api.get(CONNECTIONS) for _ in range(3))
        assert [r.status_code for r in (first, second, third)] == [200, 200, 429]
        assert [r.headers["x-rate-limit-remaining"] for r in (first, second, third)] == [
            "1", "0", "0"]
        assert third.json() == fixture_body("rate_limited")
        reset = int(first.headers["x-rate-limit-reset"])
        assert time.time() < reset <= time.time() + 901
        # Each DELETE form has its own window.
        for path in (f"{CONNECTIONS}/all", f"{CONNECTIONS}/filtered_stream"):
            assert api.delete(path).status_code == 200
            assert api.delete(path).status_code == 429
        assert kill(api, {"uuids": ["a"]}).status_code == 200
        limited = kill(api, {"uuids": ["a"]})
        assert limited.status_code == 429
        assert limited.headers["x-rate-limit-limit"] == "1"


# --- zombies ----------------------------------------------------------------------------------


def test_a_zombie_holds_the_slot_for_zombie_seconds(
    make_simulator: Callable[..., Simulator],
) -> None:
    sim = make_simulator(zombie_seconds=0.5, match_all=True)
    sim.add_rules([("cat", None)])
    left = time.time()
    zombie = connect_and_leave(sim)
    record = record_of(sim, zombie)
    assert (record.active, record.zombie, record.disconnected_at) == (True, True, None)
    with client(sim) as api:
        listed = api.get(CONNECTIONS, params={"connection.fields": "id"}).json()["data"]
        assert [c["id"] for c in listed] == [zombie]
        refused = api.get(STREAM)
        assert refused.status_code == 429
        assert refused.json()["connection_issue"] == "TooManyConnections"
        assert wait_until(lambda: not record_of(sim, zombie).active, 3.0)
        record = record_of(sim, zombie)
        assert record.disconnect_reason == "client_disconnect"
        assert record.disconnected_at_epoch is not None
        assert record.disconnected_at_epoch >= left + 0.4
        with open_stream(sim) as (response, _):
            assert response.status_code == 200


def test_terminating_a_zombie_frees_the_slot_at_once(
    make_simulator: Callable[..., Simulator],
) -> None:
    sim = make_simulator(zombie_seconds=60.0)
    sim.add_rules([("cat", None)])
    zombie = connect_and_leave(sim)
    with client(sim) as api:
        assert api.get(STREAM).status_code == 429
        (listed,) = api.get(CONNECTIONS, params={"connection.fields": "id"}).json()["data"]
        assert listed["id"] == zombie
        assert kill(api, {"uuids": [zombie]}).json()["data"]["successful_kills"] == 1
        with open_stream(sim) as (response, _):
            assert response.status_code == 200
    assert record_of(sim, zombie).disconnect_reason == "operator_disconnect"


def test_without_zombie_seconds_a_gone_client_frees_the_slot(sim: Simulator) -> None:
    for _ in range(3):
        connect_and_leave(sim)  # each connect would get 429 if the last one lingered
    assert [c.status for c in sim.connects()] == [200, 200, 200]
    assert [r.disconnect_reason for r in sim.connection_records()] == ["client_disconnect"] * 3


def test_kick_old_marks_duplicate_connection(make_simulator: Callable[..., Simulator]) -> None:
    sim = make_simulator(connection_policy="kick_old", zombie_seconds=60.0)
    sim.add_rules([("cat", None)])
    zombie = connect_and_leave(sim)
    with open_stream(sim) as (first, old), open_stream(sim) as (second, _):
        assert first.status_code == second.status_code == 200
        assert old.wait_end(3.0)
    reasons = {r.id: r.disconnect_reason for r in sim.connection_records()}
    first_id = sim.connects()[1].connection_id
    assert reasons[zombie] == reasons[first_id] == "duplicate_connection"


def test_connection_limit_overrides_the_tier(make_simulator: Callable[..., Simulator]) -> None:
    sim = make_simulator(connection_limit=2)
    sim.add_rules([("cat", None)])
    with open_stream(sim) as (a, _), open_stream(sim) as (b, _):
        assert a.status_code == b.status_code == 200
        with client(sim) as c:
            assert c.get(STREAM).status_code == 429
    assert sim.wait_connections(0, 3.0)
    sim.configure(connection_limit=None)  # back to pro's 1
    with open_stream(sim) as (a, _), client(sim) as c:
        assert a.status_code == 200
        assert c.get(STREAM).status_code == 429


# --- control and Python API -------------------------------------------------------------------


def test_control_endpoints_and_settings(sim: Simulator) -> None:
    connection_id = connect_and_leave(sim)
    with httpx.Client(base_url=sim.url) as c:
        (listed,) = c.get("/_simulator/connections").json()
        assert {k: listed[k] for k in ("id", "endpoint_name", "client_ip", "active", "zombie",
                                       "disconnect_reason")} == {
            "id": connection_id, "endpoint_name": "filtered_stream", "client_ip": "127.0.0.1",
            "active": False, "zombie": False, "disconnect_reason": "client_disconnect"}
        assert RFC3339_MS.match(listed["connected_at"])
        assert RFC3339_MS.match(listed["disconnected_at"])
        settings = c.post("/_simulator/config", json={
            "connection_limit": 3, "zombie_seconds": 1.5, "terminate_ending": "reset",
            "connections_api": "forbidden"}).json()
        assert {k: settings[k] for k in ("connection_limit", "zombie_seconds",
                                         "terminate_ending", "connections_api")} == {
            "connection_limit": 3, "zombie_seconds": 1.5, "terminate_ending": "reset",
            "connections_api": "forbidden"}
        for bad in ({"connection_limit": -1}, {"connection_limit": "2"},
                    {"zombie_seconds": -1}, {"zombie_seconds": "nan"},
                    {"terminate_ending": "explode"}, {"connections_api": "off"}):
            assert c.post("/_simulator/config", json=bad).status_code == 400, bad
        assert c.get(CONNECTIONS, headers=AUTH).status_code == 403
        (logged,) = c.get("/_simulator/connections-requests").json()
        assert {k: logged[k] for k in ("method", "path", "query", "status", "uuids")} == {
            "method": "GET", "path": CONNECTIONS, "query": {}, "status": 403, "uuids": None}
        terminated = c.post("/_simulator/terminate-connections",
                            json={"uuids": [connection_id]}).json()
        assert terminated["failed_kills"] == 1
    with pytest.raises(ValueError, match="zombie_seconds"):
        SimulatorConfig(zombie_seconds=-1.0)
    with pytest.raises(ValueError, match="terminate_ending"):
        SimulatorConfig(terminate_ending="boom")  # type: ignore[arg-type]


# --- how a terminated stream ends, over each wire ---------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("ending", ["operational_disconnect", "close", "reset"])
async def test_a_terminated_stream_ends_as_terminate_ending_says(
    serve: Callable[..., Served], ending: str
) -> None:
    served = serve(terminate_ending=ending, match_all=True, tweets_per_second=100.0)
    served.sim.add_rules([("cat", None)])
    async with served.client() as streamer, served.client() as api, \
            open_async_stream(streamer) as (response, lines):
        assert response.status_code == 200
        await lines.tweets_at_least(1)
        (live,) = [r.id for r in served.sim.connection_records() if r.active]
        answer = await api.request("DELETE", CONNECTIONS, json={"uuids": [live]})
        assert answer.json()["data"]["successful_kills"] == 1
        assert await lines.end()
    messages = lines.messages()
    if ending == "operational_disconnect":
        assert lines.error is None
        assert lines.lines[-1] == OPERATOR_LINE
    elif ending == "close":
        assert lines.error is None
        assert messages == []
    else:
        assert isinstance(lines.error, httpx.ReadError), repr(lines.error)
        assert messages == []
    record = served.sim.connection_records()[0]
    assert (record.disconnect_reason, record.client_ip) == ("operator_disconnect", "127.0.0.1")
