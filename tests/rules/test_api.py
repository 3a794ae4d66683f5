"""RulesApi: pagination, rate-limit windows, 429/5xx retries, credentials, odd bodies.
A fake clock: every wait is recorded, none is slept."""

from __future__ import annotations

import math
from collections.abc import Callable

import anyio
import httpx
import pytest
from rules_fakes import PROBLEMS, FakeClock, FakeX

from streamd.config import BackoffSettings, RuleSpec
from streamd.errors import CredentialsError, RulesSyncError
from streamd.ops.metrics import Metrics
from streamd.x.reconnect import ReconnectPolicy
from streamd.x.rules import RulesApi, ServerRule, terminal_policy

MakeApi = Callable[..., RulesApi]


def test_list_follows_pagination(fake_x: FakeX, make_api: MakeApi) -> None:
    ids = fake_x.seed(*[(f"r{i}", None) for i in range(5)])
    fake_x.page_size = 2
    rules = anyio.run(make_api().list_rules)
    assert [r.id for r in rules] == ids
    assert fake_x.gets() == 3
    tokens = [r.url.params.get("pagination_token") for r in fake_x.requests]
    assert tokens == [None, "0000000000000002", "0000000000000004"]
    assert all(r.url.params["max_results"] == "1000" for r in fake_x.requests)


def test_list_without_data_is_empty(make_api: MakeApi) -> None:
    assert anyio.run(make_api().list_rules) == []


def test_add_and_delete_bodies(fake_x: FakeX, make_api: MakeApi) -> None:
    api = make_api()

    async def run() -> None:
        outcome = await api.add([RuleSpec("cat", "cats"), RuleSpec("dog")], dry_run=False)
        assert [(r.value, r.tag) for r in outcome.created] == [("cat", "cats"), ("dog", None)]
        deleted = await api.delete([outcome.created[0].id, "999"], dry_run=False)
        assert (deleted.deleted, deleted.not_deleted) == (1, 1)

    anyio.run(run)
    bodies = fake_x.posts()
    assert bodies[0] == {"add": [{"value": "cat", "tag": "cats"}, {"value": "dog"}]}
    assert "ids" in bodies[1]["delete"]
    assert fake_x.pairs() == [("dog", None)]


def test_exhausted_window_waits_for_reset(fake_x: FakeX, clock: FakeClock,
                                          make_api: MakeApi) -> None:
    fake_x.remaining["GET"] = 1  # the first answer says 0 left, reset in 900 s
    metrics = Metrics()
    api = make_api(metrics=metrics)

    async def run() -> None:
        await api.list_rules()
        assert clock.slept == []
        await api.list_rules()

    anyio.run(run)
    assert clock.slept == [pytest.approx(901.0)]
    sample = metrics.registry.get_sample_value(
        "streamd_x_rate_limit_remaining", {"endpoint": "rules_get"}
    )
    assert sample == 0.0


def test_429_waits_until_reset_then_retries(fake_x: FakeX, clock: FakeClock,
                                            make_api: MakeApi) -> None:
    limited = {"title": "Too Many Requests", "detail": "Too Many Requests",
               "type": "about:blank", "status": 429}
    reset = {"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(int(clock.now) + 30)}
    fake_x.script = [(429, limited, reset)]
    rules = anyio.run(make_api().list_rules)
    assert rules == []
    assert clock.slept == [pytest.approx(31.0)]  # reset - now (+1 s margin), not 1 s backoff
    assert fake_x.gets() == 2


def test_429_without_headers_backs_off_exponentially(fake_x: FakeX, clock: FakeClock,
                                                     make_api: MakeApi) -> None:
    fake_x.script = [(429, {"type": "about:blank"}, {})] * 3
    anyio.run(make_api().list_rules)
    assert clock.slept == [1.0, 2.0, 4.0]


def test_429_forever_gives_up_rate_limited(fake_x: FakeX, make_api: MakeApi) -> None:
    fake_x.script = [(429, {"type": "about:blank"}, {})] * 10
    with pytest.raises(RulesSyncError) as caught:
        anyio.run(make_api(max_attempts=3).list_rules)
    assert caught.value.reason == "rate_limited"
    assert fake_x.gets() == 3


def test_wait_beyond_bound_raises_instead_of_hanging(fake_x: FakeX, clock: FakeClock,
                                                     make_api: MakeApi) -> None:
    far = {"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(int(clock.now) + 7200)}
    fake_x.script = [(429, {"type": "about:blank"}, far)]
    with pytest.raises(RulesSyncError) as caught:
        anyio.run(make_api().list_rules)
    assert caught.value.reason == "rate_limited"
    assert clock.slept == []


def test_5xx_and_network_errors_retry(fake_x: FakeX, clock: FakeClock,
                                      make_api: MakeApi) -> None:
    fake_x.script = [(503, {"title": "Service Unavailable", "type": "about:blank"}, {})]
    calls = {"n": 0}
    inner = fake_x.handler

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ConnectError("refused")
        return inner(request)

    client = httpx.AsyncClient(base_url="https://x.test", transport=httpx.MockTransport(flaky))
    api = RulesApi(client, policy=terminal_policy(clock=clock), sleep=clock.sleep)
    assert anyio.run(api.list_rules) == []
    assert clock.slept == [1.0, 2.0]
    assert api.requests == 3


@pytest.mark.parametrize("status", [401, 403])
def test_credentials_refused(fake_x: FakeX, make_api: MakeApi, status: int) -> None:
    fake_x.script = [(status, {"title": "Unauthorized", "type": "about:blank"}, {})]
    with pytest.raises(CredentialsError):
        anyio.run(make_api().list_rules)


def test_top_level_rule_cap_problem_is_rules_cap(fake_x: FakeX, make_api: MakeApi) -> None:
    body = {"title": "RulesCapExceeded", "detail": "You have exceeded the maximum number of "
            "rules.", "type": "https://api.x.com/2/problems/rule-cap"}
    fake_x.script = [(403, body, {})]
    with pytest.raises(RulesSyncError) as caught:
        anyio.run(lambda: make_api().add([RuleSpec("cat")], dry_run=True))
    assert caught.value.reason == "rules_cap"


def test_400_is_invalid_request_with_message(fake_x: FakeX, make_api: MakeApi) -> None:
    body = {"errors": [{"parameters": {"ids": ["x"]}, "message": "'x' is not a valid Long"}],
            "title": "Invalid Request", "detail": "One or more parameters to your request "
            "was invalid.", "type": PROBLEMS + "invalid-request"}
    fake_x.script = [(400, body, {})]
    with pytest.raises(RulesSyncError) as caught:
        anyio.run(lambda: make_api().delete(["x"], dry_run=False))
    assert caught.value.reason == "invalid_request"
    assert "is not a valid Long" in str(caught.value)


def test_server_rule_key() -> None:
    assert ServerRule("1", "cat", "cats").key == ("cat", "cats")


def test_unreachable_server_is_transient_exit_70(clock: FakeClock) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client = httpx.AsyncClient(base_url="https://x.test", transport=httpx.MockTransport(refuse))
    api = RulesApi(client, policy=terminal_policy(4, clock=clock), sleep=clock.sleep)
    with pytest.raises(RulesSyncError) as caught:
        anyio.run(api.list_rules)
    assert caught.value.reason == "network"
    # 78 would stop systemd from restarting (RestartPreventExitStatus=77 78).
    assert caught.value.exit_code == 70
    assert clock.slept == [1.0, 2.0, 4.0]  # no wait after the last attempt
    assert RulesSyncError("invalid_rules", "x").exit_code == 78


def test_daemon_mode_retries_indefinitely_on_the_given_schedule(clock: FakeClock) -> None:
    """The daemon never gives up on a rules endpoint in trouble: it waits like the stream's
    server_error backoff (initial doubling to a cap), every wait reported through on_retry."""
    failures = {"left": 12}

    def flaky(request: httpx.Request) -> httpx.Response:
        if failures["left"]:
            failures["left"] -= 1
            if failures["left"] % 2:
                raise httpx.ConnectError("refused")
            return httpx.Response(503, json={"title": "Service Unavailable",
                                             "type": "about:blank"})
        return httpx.Response(200, json={"meta": {"result_count": 0}})

    retries: list[tuple[str, int, float]] = []
    client = httpx.AsyncClient(base_url="https://x.test", transport=httpx.MockTransport(flaky))
    daemon = ReconnectPolicy.for_rules(BackoffSettings(http_initial=5.0, http_max=40.0),
                                       clock=clock)
    api = RulesApi(client, policy=daemon, sleep=clock.sleep,
                   on_retry=lambda reason, n, delay, why: retries.append((reason, n, delay)))
    assert anyio.run(api.list_rules) == []
    assert api.requests == 13
    assert clock.slept == [5.0, 10.0, 20.0] + [40.0] * 9
    assert [r[2] for r in retries] == clock.slept
    assert {r[0] for r in retries} == {"network", "server_error"}


def test_daemon_mode_waits_out_a_far_rate_limit_reset(fake_x: FakeX, clock: FakeClock,
                                                      make_api: MakeApi) -> None:
    far = {"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(int(clock.now) + 7200)}
    fake_x.script = [(429, {"type": "about:blank"}, far)]
    api = make_api(max_attempts=None, max_wait=math.inf)
    assert anyio.run(api.list_rules) == []
    assert len(clock.slept) == 1
    assert clock.slept[0] >= 7200


@pytest.mark.parametrize(("status", "reason"), [(401, "unauthorized"), (403, "forbidden")])
def test_credentials_refused_names_the_reason(fake_x: FakeX, make_api: MakeApi, status: int,
                                              reason: str) -> None:
    fake_x.script = [(status, {"title": "Unauthorized", "type": "about:blank"}, {})]
    with pytest.raises(CredentialsError) as caught:
        anyio.run(make_api(max_attempts=None).list_rules)
    assert caught.value.reason == reason
    assert caught.value.exit_code == 77
