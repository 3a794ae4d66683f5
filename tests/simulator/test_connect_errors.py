"""Connect-time answers: auth, tier, window, injected ConnectFaults; bodies against real ones."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sim_helpers import AUTH, STREAM, client, fixture_body, open_stream

from streamd.simulator import ConnectFault, Simulator

# As in the captures (not application/problem+json).
PROBLEM = "application/json; charset=utf-8"


def _same_shape(body: dict[str, Any], real: dict[str, Any]) -> None:
    assert set(body) == set(real)
    assert body["type"] == real["type"]
    assert body["title"] == real["title"]


def test_missing_or_bad_token_is_401(simulator: Simulator) -> None:
    simulator.add_rules([("cat", None)])
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eA=="}):
        with httpx.Client(base_url=simulator.url) as c:
            response = c.get(STREAM, headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == PROBLEM
        assert response.json() == fixture_body("unauthorized")
        assert not any(h.startswith("x-rate-limit") for h in response.headers)
    record = simulator.connects()[-1]
    assert (record.status, record.problem_type) == (401, "about:blank")


def test_user_context_token_is_403_unsupported_authentication(simulator: Simulator) -> None:
    with httpx.Client(base_url=simulator.url) as c:
        response = c.get(STREAM, headers={"Authorization": "Bearer user-token"})
        oauth1 = c.get(STREAM, headers={"Authorization": 'OAuth oauth_consumer_key="x"'})
    assert response.status_code == 403
    _same_shape(response.json(), fixture_body("unsupported_authentication"))
    assert response.json()["status"] == 403
    assert oauth1.json() == fixture_body("unsupported_authentication")


@pytest.mark.parametrize("tier", ["free", "basic"])
def test_tiers_without_stream_get_client_forbidden(
    make_simulator: Callable[..., Simulator], tier: str
) -> None:
    sim = make_simulator(tier=tier)
    with client(sim) as c:
        stream = c.get(STREAM)
        rules = c.get("/2/tweets/search/stream/rules")
    for response in (stream, rules):
        assert response.status_code == 403
        body = response.json()
        assert body == fixture_body("client_forbidden")
        assert body["reason"] == "client-not-enrolled"


def test_set_tier_changes_access_live(simulator: Simulator) -> None:
    simulator.add_rules([("cat", None)])
    simulator.set_tier("basic")
    with client(simulator) as c:
        assert c.get(STREAM).status_code == 403
    simulator.set_tier("pro")
    with open_stream(simulator) as (response, _):
        assert response.status_code == 200


def test_no_rules_is_409(simulator: Simulator) -> None:
    with client(simulator) as c:
        response = c.get(STREAM)
    assert response.status_code == 409
    assert response.json() == fixture_body("no_rules")
    assert simulator.connects()[-1].detail == fixture_body("no_rules")["detail"]


def test_connect_window_exhaustion_is_429_about_blank(
    make_simulator: Callable[..., Simulator],
) -> None:
    sim = make_simulator(connect_window_limit=2)
    sim.add_rules([("cat", None)])
    with client(sim) as c:
        sim.inject_connect(ConnectFault.status(503), count=2)
        first, second = c.get(STREAM), c.get(STREAM)
        third = c.get(STREAM)
    assert (first.status_code, second.status_code) == (503, 503)
    assert [r.headers["x-rate-limit-remaining"] for r in (first, second)] == ["1", "0"]
    assert third.status_code == 429
    assert third.json() == fixture_body("rate_limited")
    assert third.headers["x-rate-limit-remaining"] == "0"
    assert int(third.headers["x-rate-limit-reset"]) >= int(time.time()) + 890


def test_usage_cap_problem_shape(make_simulator: Callable[..., Simulator]) -> None:
    sim = make_simulator(usage_cap=0)
    sim.add_rules([("cat", None)])
    with client(sim) as c:
        response = c.get(STREAM)
    assert response.status_code == 429
    body = response.json()
    _same_shape(body, fixture_body("usage_capped"))
    assert body["detail"] == "Usage cap exceeded: Monthly product cap"


def test_problem_host_x_com(make_simulator: Callable[..., Simulator]) -> None:
    sim = make_simulator(problem_host="api.x.com")
    with client(sim) as c:
        body = c.get(STREAM).json()
    assert body["type"] == "https://api.x.com/2/problems/streaming-connection"


CONNECT_FAULTS: list[tuple[ConnectFault, int, str | None, str]] = [
    (ConnectFault.status(500), 500, "about:blank", "Internal Server Error"),
    (ConnectFault.status(502), 502, "about:blank", "Bad Gateway"),
    (ConnectFault.status(503), 503, "about:blank", "Service Unavailable"),
    (ConnectFault.status(504), 504, "about:blank", "Gateway Timeout"),
    (ConnectFault.server_error(500), 500, "about:blank", "Internal Server Error"),
    (ConnectFault.rate_limited(reset_in=2), 429, "about:blank", "Too Many Requests"),
    (ConnectFault.usage_capped(), 429, "usage-capped", "UsageCapExceeded"),
    (ConnectFault.too_many_connections(), 429, "streaming-connection", "ConnectionException"),
    (ConnectFault.no_rules(), 409, "streaming-connection", "ConnectionException"),
    (ConnectFault.unauthorized(), 401, "about:blank", "Unauthorized"),
    (ConnectFault.client_forbidden(), 403, "client-forbidden", "Client Forbidden"),
    (ConnectFault.unsupported_authentication(), 403, "unsupported-authentication",
     "Unsupported Authentication"),
    (ConnectFault.invalid_request("bad"), 400, "invalid-request", "Invalid Request"),
]


@pytest.mark.parametrize(("fault", "status", "slug", "title"), CONNECT_FAULTS)
def test_connect_fault_problem_answers(
    simulator: Simulator, fault: ConnectFault, status: int, slug: str, title: str
) -> None:
    simulator.add_rules([("cat", None)])
    simulator.inject_connect(fault, count=1)
    with client(simulator) as c:
        response = c.get(STREAM)
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["title"] == title
    expected_type = "about:blank" if slug == "about:blank" else (
        f"https://api.twitter.com/2/problems/{slug}")
    assert body["type"] == expected_type
    # X sends no x-rate-limit-* headers with a 401.
    assert ("x-rate-limit-reset" in response.headers) == (status != 401)
    with open_stream(simulator) as (after, _):  # count=1: the next attempt succeeds
        assert after.status_code == 200


def test_rate_limited_fault_sets_reset_header(simulator: Simulator) -> None:
    simulator.add_rules([("cat", None)])
    simulator.inject_connect(ConnectFault.rate_limited(reset_in=2))
    with client(simulator) as c:
        response = c.get(STREAM)
    assert response.headers["x-rate-limit-remaining"] == "0"
    assert abs(int(response.headers["x-rate-limit-reset"]) - (time.time() + 2)) <= 1.5


@pytest.mark.parametrize(
    ("fault", "status", "code", "message"),
    [
        (ConnectFault.status(503, body="v1_over_capacity"), 503, 130, "Twitter is over capacity."),
        (ConnectFault.over_capacity(), 503, 130, "Twitter is over capacity."),
        (ConnectFault.enhance_your_calm(), 420, 420, "Enhance Your Calm"),
        (ConnectFault.v1_error(403, 453, "You currently have access to a subset"), 403, 453,
         "You currently have access to a subset"),
    ],
)
def test_v1_style_bodies(
    simulator: Simulator, fault: ConnectFault, status: int, code: int, message: str
) -> None:
    simulator.inject_connect(fault, count=2)
    with client(simulator) as c:
        responses = [c.get(STREAM), c.get(STREAM)]
    for response in responses:
        assert response.status_code == status
        assert response.headers["content-type"].startswith("application/json")
        assert response.json() == {"errors": [{"message": message, "code": code}]}


def test_connects_are_recorded_with_query(simulator: Simulator) -> None:
    simulator.add_rules([("cat", None)])
    with open_stream(simulator, {"tweet.fields": "lang"}):
        pass
    with httpx.Client(base_url=simulator.url, headers=AUTH) as c:
        c.get(STREAM, params={"expansions": "bad"})
    records = simulator.connects()
    assert [r.status for r in records] == [200, 400]
    assert records[0].query == {"tweet.fields": "lang"}
    assert records[1].problem_type == "https://api.twitter.com/2/problems/invalid-request"
    assert all(r.at <= time.time() for r in records)
