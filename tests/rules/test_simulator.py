"""Acceptance against the bundled simulator, over real HTTP: `streamd rules` end to end."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from streamd.commands.rules import rules_command
from streamd.config import Settings
from streamd.errors import RulesSyncError
from streamd.ops.logs import get_logger
from streamd.ops.metrics import Metrics
from streamd.simulator import Simulator, SimulatorConfig
from streamd.x.rules import RulesApi, SyncResult, sync_configured_rules
from streamd.x.stream import make_client

CONFIGURED = [("keep", "k"), ("new has:images", "n"), ("retag", "new"), ("plain", None)]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(SimulatorConfig(heartbeat_interval=0.5, tweets_per_second=10.0))
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


def make_settings(sim: Simulator, rules: list[tuple[str, str | None]], **extra: Any) -> Settings:
    return Settings.model_validate({
        "x": {"api_url": sim.url, "bearer_token": "test-token"},
        "rules": {"rule": [{"value": v, "tag": t} for v, t in rules], **extra},
    })


def server_pairs(sim: Simulator) -> list[tuple[str, str | None]]:
    return sorted(((r.value, r.tag) for r in sim.rules()), key=lambda p: (p[0], p[1] or ""))


class Recorder:
    """Counts the requests a command sends, via an event hook on the client it builds."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    async def _hook(self, request: httpx.Request) -> None:
        self.requests.append((request.method, request.url.query.decode()))

    def api(self, client: httpx.AsyncClient) -> RulesApi:
        client.event_hooks = {"request": [self._hook], "response": []}
        return RulesApi(client)


def cli(settings: Settings, action: str, *, dry_run: bool = False, as_json: bool = False,
        recorder: Recorder | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    factory = recorder.api if recorder is not None else RulesApi
    code = rules_command(settings, action, dry_run=dry_run, as_json=as_json, out=out, err=err,
                         api_factory=factory)
    return code, out.getvalue(), err.getvalue()


def test_one_sync_leaves_exactly_the_configured_set(sim: Simulator) -> None:
    sim.add_rules([("keep", "k"), ("extra", None), ("retag", "old"), ("plain", "tagged"),
                   ("keep", "k")])  # the duplicate comes back as the existing rule
    settings = make_settings(sim, CONFIGURED)
    assert cli(settings, "diff")[0] == 1

    code, out, _ = cli(settings, "sync")
    assert code == 0, out
    assert server_pairs(sim) == sorted(CONFIGURED, key=lambda p: (p[0], p[1] or ""))
    assert "added 3, deleted 3, unchanged 1; 4 rules on the server" in out

    recorder = Recorder()
    code, out, _ = cli(settings, "sync", recorder=recorder)
    assert code == 0
    assert [m for m, _ in recorder.requests] == ["GET"]
    assert cli(settings, "diff") == (0, "in sync: 0 to add, 0 to delete, 4 unchanged\n", "")


def test_second_daemon_sync_only_reads(sim: Simulator) -> None:
    settings = make_settings(sim, CONFIGURED)
    metrics = Metrics()
    sent: list[str] = []

    async def hook(request: httpx.Request) -> None:
        sent.append(request.method)

    async def twice() -> tuple[SyncResult, SyncResult]:
        async with make_client(settings, "test-token") as client:
            client.event_hooks = {"request": [hook], "response": []}
            first = await sync_configured_rules(client, settings, get_logger("t"), metrics,
                                                trigger="startup")
            sent.clear()
            second = await sync_configured_rules(client, settings, get_logger("t"), metrics,
                                                 trigger="sighup")
            return first, second

    first, second = anyio.run(twice)
    assert first
    assert second
    assert sent == ["GET"]
    assert metrics.registry.get_sample_value("streamd_rules_active") == 4.0
    remaining = metrics.registry.get_sample_value(
        "streamd_x_rate_limit_remaining", {"endpoint": "rules_post"}
    )
    assert remaining is not None
    assert remaining < 100


@pytest.mark.parametrize("on_error", ["fail", "continue"])
def test_invalid_rule_changes_nothing_and_exits_78(sim: Simulator, on_error: str) -> None:
    sim.add_rules([("old", None)])
    before = sim.rules()
    settings = make_settings(sim, [("cat", None), ("foo:bar cat", "broken")], on_error=on_error)
    recorder = Recorder()
    code, _, err = cli(settings, "sync", recorder=recorder)
    # The CLI always fails on invalid rules; on_error only governs the daemon.
    assert code == 78
    assert "invalid_rules" in err
    assert "'foo:bar cat' (tag 'broken')" in err
    assert "Reference to invalid operator 'foo'" in err
    assert sim.rules() == before
    assert all("dry_run=true" in q for m, q in recorder.requests if m == "POST")


def test_invalid_rule_json_report(sim: Simulator) -> None:
    settings = make_settings(sim, [("has:images", "alone")])
    code, out, _ = cli(settings, "sync", as_json=True)
    assert code == 78
    report = json.loads(out)
    assert report["reason"] == "invalid_rules"
    assert report["applied"] is False
    assert report["invalid"][0]["value"] == "has:images"
    assert any("standalone" in d for d in report["invalid"][0]["details"])


def test_daemon_entry_point_raises_with_reason(sim: Simulator) -> None:
    settings = make_settings(sim, [("foo:bar", None)])

    async def go() -> None:
        async with make_client(settings, "test-token") as client:
            await sync_configured_rules(client, settings, get_logger("t"), Metrics(),
                                        trigger="startup")

    with pytest.raises(RulesSyncError) as caught:
        anyio.run(go)
    assert caught.value.reason == "invalid_rules"


def test_more_rules_than_the_cap_refused_before_any_request(sim: Simulator) -> None:
    settings = make_settings(sim, [("a", None), ("b", None), ("c", None)], max_rules=2)
    recorder = Recorder()
    code, _, err = cli(settings, "sync", recorder=recorder)
    assert code == 78
    assert err.startswith("streamd rules: rules_cap: 3 rules configured")
    assert recorder.requests == []
    assert sim.rules() == []


def test_dry_run_changes_nothing(sim: Simulator) -> None:
    sim.add_rules([("old", None)])
    settings = make_settings(sim, [("cat", "cats")])
    code, out, _ = cli(settings, "sync", dry_run=True)
    assert code == 0
    assert "+ cat  (tag: cats)" in out
    assert "- old" in out
    assert "would add 1, would delete 1" in out
    assert server_pairs(sim) == [("old", None)]


def test_list_table_and_json(sim: Simulator) -> None:
    ids = sim.add_rules([("cat has:images", "cats"), ("dog", None)])
    settings = make_settings(sim, [])
    code, out, _ = cli(settings, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "TAG", "VALUE"]
    assert lines[1].split(None, 2) == [ids[0], "cats", "cat has:images"]
    assert lines[2].split(None, 2) == [ids[1], "-", "dog"]
    assert lines[-1] == "2 rules"
    code, out, _ = cli(settings, "list", as_json=True)
    assert json.loads(out) == {"count": 2, "rules": [
        {"id": ids[0], "value": "cat has:images", "tag": "cats"},
        {"id": ids[1], "value": "dog"},
    ]}


def test_wrong_token_exits_77(sim: Simulator) -> None:
    settings = Settings.model_validate({"x": {"api_url": sim.url, "bearer_token": "nope"}})
    code, _, err = cli(settings, "list")
    assert code == 77
    assert "nope" not in err
