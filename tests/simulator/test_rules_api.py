"""GET/POST /2/tweets/search/stream/rules per X's bodies."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sim_helpers import RULES, client, fixture_body

from streamd.simulator import Simulator

SENT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _post(sim: Simulator, body: Any, **params: str) -> httpx.Response:
    with client(sim) as c:
        if isinstance(body, bytes):
            return c.post(RULES, content=body, params=params)
        return c.post(RULES, json=body, params=params)


def _get(sim: Simulator, **params: str) -> httpx.Response:
    with client(sim) as c:
        return c.get(RULES, params=params)


def test_empty_rules_list_has_meta_without_data(simulator: Simulator) -> None:
    response = _get(simulator)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"meta"}
    assert SENT.match(body["meta"]["sent"])
    assert body["meta"]["result_count"] == 0
    assert response.headers["x-rate-limit-limit"] == "450"


def test_add_returns_201_with_created_rules(simulator: Simulator) -> None:
    response = _post(simulator, {"add": [{"value": "cat has:images", "tag": "cats with images"},
                                         {"value": "meme has:images"}]})
    assert response.status_code == 201
    assert response.headers["x-rate-limit-limit"] == "100"
    body = response.json()
    real = fixture_body("add_rules")
    assert set(body) == set(real)
    assert body["meta"]["summary"] == {"created": 2, "not_created": 0, "valid": 2, "invalid": 0}
    assert SENT.match(body["meta"]["sent"])
    first, second = body["data"]
    assert first["value"] == "cat has:images"
    assert first["tag"] == "cats with images"
    assert "tag" not in second
    assert all(re.fullmatch(r"\d{19}", rule["id"]) for rule in body["data"])
    assert [r.id for r in simulator.rules()] == [first["id"], second["id"]]
    listed = _get(simulator).json()
    assert listed["data"] == body["data"]
    assert listed["meta"]["result_count"] == 2


def test_duplicate_rule_is_reported_with_the_existing_id(simulator: Simulator) -> None:
    (existing,) = simulator.add_rules([("from:elonmusk", None)])
    response = _post(simulator, {"add": [{"value": "from:elonmusk"}]})
    assert response.status_code == 201
    body = response.json()
    real = fixture_body("duplicate_rule")
    assert set(body) == set(real)
    assert body["meta"]["summary"] == real["meta"]["summary"]
    (error,) = body["errors"]
    assert set(error) == set(real["errors"][0])
    assert error == {**real["errors"][0], "id": existing}


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("h:m", "Reference to invalid operator 'h' (at position 1)."),
        ("cat x:y", "Reference to invalid operator 'x' (at position 5)."),
        ("has:images", "is/has/lang cannot be used as a standalone operator"),
        ("lang:en -is:retweet", "is/has/lang cannot be used as a standalone operator"),
        ('"unclosed phrase', "token recognition error"),
        ("(cat OR dog", "expecting ')'"),
        ("cat)", "missing EOF at ')'"),
        ("", "no viable alternative"),
        ("-cat", "non-negation"),
    ],
)
def test_invalid_rules(simulator: Simulator, value: str, detail: str) -> None:
    response = _post(simulator, {"add": [{"value": value}]})
    assert response.status_code == 201
    body = response.json()
    assert body["meta"]["summary"] == {"created": 0, "not_created": 1, "valid": 0, "invalid": 1}
    (error,) = body["errors"]
    real = fixture_body("invalid_rule")["errors"][0]
    assert set(error) == set(real)
    assert (error["title"], error["type"]) == (real["title"], real["type"])
    assert error["value"] == value
    assert any(detail in d for d in error["details"]), error["details"]
    assert simulator.rules() == []


def test_invalid_operator_matches_the_real_body(simulator: Simulator) -> None:
    body = _post(simulator, {"add": [{"value": "h:m"}]}).json()
    assert body["errors"] == fixture_body("invalid_rule")["errors"]


def test_too_long_rule_depends_on_tier(make_simulator: Callable[..., Simulator]) -> None:
    pro = make_simulator()
    value = "cat " + "x" * 1100
    (error,) = _post(pro, {"add": [{"value": value}]}).json()["errors"]
    assert error["title"] == "UnprocessableEntity"
    assert error["details"][0].startswith(f"Rule '{value}'")
    enterprise = make_simulator(tier="enterprise")
    assert _post(enterprise, {"add": [{"value": value}]}).json()["meta"]["summary"]["created"] == 1


def test_mixed_add_creates_the_valid_rules(simulator: Simulator) -> None:
    body = _post(simulator, {"add": [{"value": "cat"}, {"value": "x:y"}]}).json()
    assert body["meta"]["summary"] == {"created": 1, "not_created": 1, "valid": 1, "invalid": 1}
    assert [r["value"] for r in body["data"]] == ["cat"]


def test_rule_cap_rejects_the_whole_add(simulator: Simulator) -> None:
    simulator.add_rules([(f"word{i}", None) for i in range(999)])
    body = _post(simulator, {"add": [{"value": "one"}, {"value": "two"}]}).json()
    assert body["meta"]["summary"] == {"created": 0, "not_created": 2, "valid": 2, "invalid": 0}
    assert "data" not in body
    (error,) = body["errors"]
    assert error["type"] == "https://api.twitter.com/2/problems/rule-cap"
    assert error["title"] == "RulesCapExceeded"
    assert len(simulator.rules()) == 999


def test_delete_by_ids_and_values(simulator: Simulator) -> None:
    ids = simulator.add_rules([("cat", None), ("dog", None), ("cow", None)])
    response = _post(simulator, {"delete": {"ids": [ids[0]]}})
    assert response.status_code == 200
    body = response.json()
    real = fixture_body("delete_rules")
    assert set(body) == set(real)
    assert body["meta"]["summary"] == real["meta"]["summary"]
    body = _post(simulator, {"delete": {"values": ["dog"]}}).json()
    assert body["meta"]["summary"] == {"deleted": 1, "not_deleted": 0}
    assert [r.value for r in simulator.rules()] == ["cow"]


def test_delete_unknown_id_is_not_deleted_with_an_error(simulator: Simulator) -> None:
    (rule_id,) = simulator.add_rules([("cat", None)])
    body = _post(simulator, {"delete": {"ids": [rule_id, "1234567890123456789"]}}).json()
    assert body["meta"]["summary"] == {"deleted": 1, "not_deleted": 1}
    assert "data" not in body
    (error,) = body["errors"]
    assert error["type"].endswith("/2/problems/invalid-request")
    assert error["errors"][0]["message"] == "Rule does not exist"


def test_dry_run_changes_nothing(simulator: Simulator) -> None:
    (rule_id,) = simulator.add_rules([("cat", None)])
    added = _post(simulator, {"add": [{"value": "dog"}]}, dry_run="true")
    assert added.status_code == 201
    assert added.json()["meta"]["summary"]["created"] == 1
    deleted = _post(simulator, {"delete": {"ids": [rule_id]}}, dry_run="true")
    assert deleted.json()["meta"]["summary"] == {"deleted": 1, "not_deleted": 0}
    assert [r.value for r in simulator.rules()] == ["cat"]


def test_delete_all(simulator: Simulator) -> None:
    simulator.add_rules([("cat", None), ("dog", None)])
    dry = _post(simulator, {}, delete_all="true", dry_run="true").json()
    assert dry["meta"]["summary"] == {"deleted": 2, "not_deleted": 0}
    assert len(simulator.rules()) == 2
    body = _post(simulator, {}, delete_all="true").json()
    assert body["meta"]["summary"] == {"deleted": 2, "not_deleted": 0}
    assert simulator.rules() == []


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"add": [], "delete": {"ids": []}}',
        b"{}",
        b'{"add": [{"tag": "no value"}]}',
        b'{"delete": {"ids": ["abc"]}}',
        b'{"add": [{"value": "cat"}], "extra": 1}',
    ],
)
def test_malformed_bodies_are_400_invalid_request(simulator: Simulator, body: bytes) -> None:
    response = _post(simulator, body)
    assert response.status_code == 400
    problem = response.json()
    real = fixture_body("invalid_request")
    assert set(problem) == set(real)
    assert problem["type"] == real["type"]
    assert problem["detail"] == real["detail"]
    assert "x-rate-limit-remaining" in response.headers


def test_not_a_long_message(simulator: Simulator) -> None:
    problem = _post(simulator, b'{"delete": {"ids": ["abc"]}}').json()
    assert problem["errors"][0]["message"] == "'abc' is not a valid Long"


def test_pagination_and_ids_filter(simulator: Simulator) -> None:
    ids = simulator.add_rules([(f"word{i}", f"t{i}") for i in range(5)])
    page1 = _get(simulator, max_results="2").json()
    assert [r["id"] for r in page1["data"]] == ids[:2]
    token = page1["meta"]["next_token"]
    assert len(token) == 16
    page2 = _get(simulator, max_results="2", pagination_token=token).json()
    assert [r["id"] for r in page2["data"]] == ids[2:4]
    page3 = _get(simulator, max_results="2", pagination_token=page2["meta"]["next_token"]).json()
    assert [r["id"] for r in page3["data"]] == ids[4:]
    assert "next_token" not in page3["meta"]
    filtered = _get(simulator, ids=f"{ids[1]},{ids[3]}").json()
    assert [r["id"] for r in filtered["data"]] == [ids[1], ids[3]]
    for params in ({"max_results": "0"}, {"max_results": "1001"},
                   {"pagination_token": "short"}, {"ids": "abc"}):
        assert _get(simulator, **params).status_code == 400


def test_rules_rate_limits_are_separate_windows(
    make_simulator: Callable[..., Simulator],
) -> None:
    sim = make_simulator(rules_get_limit=2, rules_post_limit=1)
    assert [_get(sim).status_code for _ in range(3)] == [200, 200, 429]
    first = _post(sim, {"add": [{"value": "cat"}]})
    second = _post(sim, {"add": [{"value": "dog"}]})
    assert (first.status_code, second.status_code) == (201, 429)
    assert second.json() == fixture_body("rate_limited")
    assert second.headers["x-rate-limit-remaining"] == "0"


def test_rules_auth(simulator: Simulator) -> None:
    with httpx.Client(base_url=simulator.url) as c:
        assert c.get(RULES).status_code == 401
        user = c.post(RULES, json={"add": [{"value": "cat"}]},
                      headers={"Authorization": "Bearer user-token"})
    assert user.status_code == 403
    assert user.json()["type"].endswith("/2/problems/unsupported-authentication")


def test_rule_counts(simulator: Simulator) -> None:
    simulator.add_rules([("cat", None)])
    with client(simulator) as c:
        body = c.get("/2/tweets/search/stream/rules/counts").json()
    assert body["data"]["project_rules_count"] == 1
    assert body["data"]["cap_per_project"] == 1000
