"""Per-request faults on GET/POST /2/tweets/search/stream/rules, the rules request log, and
their control endpoints."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sim_helpers import AUTH, RULES, client, fixture_body

from streamd.simulator import RulesFault, Simulator

JSON = "application/json; charset=utf-8"
ADD = {"add": [{"value": "cat", "tag": "c"}]}


def _rate_headers(response: httpx.Response) -> list[str]:
    return [h for h in response.headers if h.startswith("x-rate-limit")]


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_error(simulator: Simulator, method: str, status: int) -> None:
    simulator.inject_rules_fault(RulesFault.server_error(status), method=method)
    with client(simulator) as c:
        response = c.request(method, RULES, json=ADD if method == "POST" else None)
        after = c.request(method, RULES, json=ADD if method == "POST" else None)
    assert response.status_code == status
    assert response.headers["content-type"] == JSON
    body = response.json()
    assert body == {"title": body["title"], "detail": body["title"], "type": "about:blank",
                    "status": status}
    assert response.headers["x-rate-limit-limit"] == ("450" if method == "GET" else "100")
    assert after.status_code == (200 if method == "GET" else 201)
    if method == "POST":
        assert [r.value for r in simulator.rules()] == ["cat"]  # created once, by `after`


def test_unauthorized_is_x_s_401_without_rate_limit_headers(simulator: Simulator) -> None:
    simulator.inject_rules_fault(RulesFault.unauthorized(), method="any", count=2)
    with client(simulator) as c:
        responses = [c.get(RULES), c.post(RULES, json=ADD)]
    for response in responses:
        assert response.status_code == 401
        assert response.headers["content-type"] == JSON
        assert response.json() == fixture_body("unauthorized")
        assert _rate_headers(response) == []
    assert simulator.rules() == []


def test_a_real_401_on_the_rules_endpoints_has_no_rate_limit_headers(
    simulator: Simulator,
) -> None:
    with httpx.Client(base_url=simulator.url) as c:
        for response in (c.get(RULES), c.post(RULES, json=ADD),
                         c.get(RULES, headers={"Authorization": "Bearer nope"})):
            assert response.status_code == 401
            assert response.json() == fixture_body("unauthorized")
            assert _rate_headers(response) == []


def test_forbidden_is_client_forbidden(simulator: Simulator) -> None:
    simulator.inject_rules_fault(RulesFault.forbidden(), method="POST")
    with client(simulator) as c:
        response = c.post(RULES, json=ADD)
    assert response.status_code == 403
    assert response.headers["content-type"] == JSON
    assert response.json() == fixture_body("client_forbidden")
    assert response.json()["reason"] == "client-not-enrolled"


def test_rate_limited_sets_remaining_0_and_the_reset(simulator: Simulator) -> None:
    simulator.inject_rules_fault(RulesFault.rate_limited(reset_in=5.0), method="GET")
    with client(simulator) as c:
        response = c.get(RULES)
    assert response.status_code == 429
    assert response.json() == fixture_body("rate_limited")
    assert response.headers["x-rate-limit-limit"] == "450"
    assert response.headers["x-rate-limit-remaining"] == "0"
    assert abs(int(response.headers["x-rate-limit-reset"]) - (time.time() + 5.0)) <= 1.5


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_connection_reset_answers_nothing(simulator: Simulator, method: str) -> None:
    simulator.inject_rules_fault(RulesFault.connection_reset(), method=method)
    with client(simulator) as c:
        with pytest.raises(httpx.TransportError):
            c.request(method, RULES, json=ADD if method == "POST" else None)
        after = c.request(method, RULES, json=ADD if method == "POST" else None)
    assert after.status_code in (200, 201)
    first, second = simulator.rules_requests()
    assert (first.method, first.status, first.fault, first.problem_type) == (
        method, 0, "connection_reset", None)
    assert (second.status, second.fault) == (after.status_code, None)
    if method == "POST":
        assert [r.value for r in simulator.rules()] == ["cat"]  # the reset one was not applied


def test_faults_are_consumed_in_order_one_per_matching_request(simulator: Simulator) -> None:
    simulator.inject_rules_fault(RulesFault.server_error(503), method="POST", count=2)
    simulator.inject_rules_fault(RulesFault.forbidden(), method="GET")
    simulator.inject_rules_fault(RulesFault.server_error(500), method="any")
    with client(simulator) as c:
        statuses = [
            c.get(RULES).status_code,  # GET skips the POST faults: forbidden
            c.get(RULES).status_code,  # the "any" 500
            c.post(RULES, json=ADD).status_code,  # 503
            c.post(RULES, json=ADD).status_code,  # 503
            c.post(RULES, json=ADD).status_code,  # real
            c.get(RULES).status_code,  # real
        ]
    assert statuses == [403, 500, 503, 503, 201, 200]
    records = simulator.rules_requests()
    assert [(r.method, r.status, r.fault) for r in records] == [
        ("GET", 403, "forbidden"), ("GET", 500, "server_error"), ("POST", 503, "server_error"),
        ("POST", 503, "server_error"), ("POST", 201, None), ("GET", 200, None),
    ]
    assert records[0].problem_type == "https://api.twitter.com/2/problems/client-forbidden"
    assert records[1].problem_type == "about:blank"
    assert records[4].problem_type is None
    assert all(r.at <= time.time() for r in records)


def test_a_bad_token_is_answered_before_any_fault(simulator: Simulator) -> None:
    simulator.inject_rules_fault(RulesFault.server_error(503))
    with httpx.Client(base_url=simulator.url) as c:
        assert c.get(RULES).status_code == 401
    with client(simulator) as c:
        assert c.get(RULES).status_code == 503  # the fault was still waiting
    assert [(r.status, r.fault) for r in simulator.rules_requests()] == [
        (401, None), (503, "server_error")]


def test_counts_endpoint_is_not_faulted(simulator: Simulator) -> None:
    simulator.inject_rules_fault(RulesFault.server_error(503), method="GET")
    with client(simulator) as c:
        assert c.get(RULES + "/counts").status_code == 200
        assert c.get(RULES).status_code == 503
    assert [r.method for r in simulator.rules_requests()] == ["GET"]


def test_bad_arguments_are_refused(simulator: Simulator) -> None:
    with pytest.raises(ValueError, match="method"):
        simulator.inject_rules_fault(RulesFault.unauthorized(), method="PUT")
    with pytest.raises(ValueError, match="count"):
        simulator.inject_rules_fault(RulesFault.unauthorized(), count=0)
    with pytest.raises(ValueError, match="unknown rules fault"):
        RulesFault("teapot")


def test_control_endpoints(simulator: Simulator) -> None:
    with httpx.Client(base_url=simulator.url) as c:
        for spec in ({"kind": "server_error", "status": 502, "method": "POST"},
                     {"kind": "rate_limited", "reset_in": 30, "method": "GET", "count": 2},
                     {"kind": "connection_reset", "method": "GET"}):
            assert c.post("/_simulator/rules-faults", json=spec).json() == {"ok": True}
        assert c.post("/_simulator/rules-faults", json={"kind": "nope"}).status_code == 400
        assert c.post("/_simulator/rules-faults",
                      json={"kind": "forbidden", "method": "PUT"}).status_code == 400
        assert c.post(RULES, json=ADD, headers=AUTH).status_code == 502
        limited = [c.get(RULES, headers=AUTH) for _ in range(2)]
        assert [r.status_code for r in limited] == [429, 429]
        with pytest.raises(httpx.TransportError):
            c.get(RULES, headers=AUTH)
        assert c.get(RULES, headers=AUTH).status_code == 200
        records = c.get("/_simulator/rules-requests").json()
    assert [(r["method"], r["status"], r["fault"]) for r in records] == [
        ("POST", 502, "server_error"), ("GET", 429, "rate_limited"),
        ("GET", 429, "rate_limited"), ("GET", 0, "connection_reset"), ("GET", 200, None),
    ]
    assert records[1]["problem_type"] == "about:blank"
    assert set(records[0]) == {"at", "method", "status", "problem_type", "fault"}


def test_scenario_rules_fault(make_simulator: Callable[..., Simulator], tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.json"
    scenario.write_text(
        '{"events": [{"at": 0, "rules_fault": {"kind": "server_error", "status": 503,'
        ' "method": "POST", "count": 2}}]}'
    )
    # Events at 0 s are applied while the server starts, before start() returns.
    sim = make_simulator(scenario_file=scenario)
    with client(sim) as c:
        assert [c.post(RULES, json=ADD).status_code for _ in range(3)] == [503, 503, 201]
