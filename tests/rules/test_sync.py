"""The sync procedure against the in-process fake: end state, request counts, validation
before any change, the cap, modes, dry run, the `rules.synced` event and the gauge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from rules_fakes import FakeX
from structlog.testing import capture_logs

from streamd.config import RulesSettings
from streamd.errors import RulesSyncError
from streamd.ops.logs import get_logger
from streamd.ops.metrics import Metrics
from streamd.x.rules import RulesApi, SyncResult, sync_rules

MakeApi = Callable[..., RulesApi]


def settings(*rules: tuple[str, str | None], **extra: Any) -> RulesSettings:
    return RulesSettings.model_validate(
        {"rule": [{"value": v, "tag": t} for v, t in rules], **extra}
    )


def run_sync(api: RulesApi, rules_settings: RulesSettings, *, dry_run: bool = False,
             metrics: Metrics | None = None) -> SyncResult:
    async def go() -> SyncResult:
        return await sync_rules(
            api, list(rules_settings.rule), rules_settings, get_logger("test"),
            metrics or Metrics(), trigger="test", dry_run=dry_run,
        )

    return anyio.run(go)


CONFIGURED = (("keep", "k"), ("new has:images", "n"), ("retag", "new"), ("plain", None))


def test_sync_from_a_set_that_differs_every_way(fake_x: FakeX, make_api: MakeApi) -> None:
    fake_x.seed(("keep", "k"), ("extra", None), ("retag", "old"), ("keep", "k"),
                ("plain", "was-tagged"))
    metrics = Metrics()
    with capture_logs() as logs:
        result = run_sync(make_api(), settings(*CONFIGURED), metrics=metrics)
    assert fake_x.pairs() == sorted(CONFIGURED, key=lambda p: (p[0], p[1] or ""))
    assert result.active == 4
    assert bool(result)
    assert metrics.registry.get_sample_value("streamd_rules_active") == 4.0
    # GET, one dry-run add, then add new / delete 4 / add the two re-tagged values.
    dry, real = fake_x.posts(dry_run=True), fake_x.posts(dry_run=False)
    assert len(dry) == 1
    assert [next(iter(b)) for b in real] == ["add", "delete", "add"]
    assert real[0] == {"add": [{"value": "new has:images", "tag": "n"}]}
    assert len(real[1]["delete"]["ids"]) == 4
    synced = [e for e in logs if e["event"] == "rules.synced"]
    assert synced == [{
        "event": "rules.synced", "log_level": "info", "added": 3, "deleted": 4,
        "unchanged": 1, "dry_run": False, "trigger": "test", "mode": "sync", "active": 4,
    }]

    # A second sync only reads.
    fake_x.requests.clear()
    again = run_sync(make_api(), settings(*CONFIGURED))
    assert [r.method for r in fake_x.requests] == ["GET"]
    assert (len(again.added), len(again.deleted), len(again.unchanged)) == (0, 0, 4)


def test_invalid_rule_changes_nothing_and_lists_xs_details(fake_x: FakeX,
                                                           make_api: MakeApi) -> None:
    fake_x.seed(("old", None))
    before = dict(fake_x.rules)
    configured = settings(("ok", None), ("cat bad:x", "broken"), ("bad:y", None))
    with pytest.raises(RulesSyncError) as caught:
        run_sync(make_api(), configured)
    error = caught.value
    assert error.reason == "invalid_rules"
    assert error.exit_code == 78
    assert not error.applied
    assert [(r.value, r.tag) for r in error.invalid] == [("cat bad:x", "broken"),
                                                         ("bad:y", None)]
    assert error.invalid[0].details == ("Reference to invalid operator 'bad' (at position 5).",)
    assert "Reference to invalid operator 'bad' (at position 1)." in str(error)
    assert fake_x.rules == before
    assert fake_x.posts(dry_run=False) == []


def test_more_rules_than_the_cap_refused_before_any_request(fake_x: FakeX,
                                                            make_api: MakeApi) -> None:
    configured = settings(*[(f"r{i}", None) for i in range(4)], max_rules=3)
    with pytest.raises(RulesSyncError) as caught:
        run_sync(make_api(), configured)
    assert caught.value.reason == "rules_cap"
    assert "4 rules configured, over rules.max_rules = 3" in str(caught.value)
    assert fake_x.requests == []


def test_over_length_rule_is_rules_cap_before_any_request(fake_x: FakeX,
                                                          make_api: MakeApi) -> None:
    configured = settings(("x" * 30, "long"), ("fine", None), max_length=20)
    with pytest.raises(RulesSyncError) as caught:
        run_sync(make_api(), configured)
    assert caught.value.reason == "rules_cap"
    assert [r.tag for r in caught.value.invalid] == ["long"]
    assert fake_x.requests == []


def test_add_mode_counts_server_rules_against_the_cap(fake_x: FakeX,
                                                      make_api: MakeApi) -> None:
    fake_x.seed(("a", None), ("b", None))
    with pytest.raises(RulesSyncError) as caught:
        run_sync(make_api(), settings(("c", None), ("d", None), mode="add", max_rules=3))
    assert caught.value.reason == "rules_cap"
    assert fake_x.posts() == []


def test_add_mode_never_deletes(fake_x: FakeX, make_api: MakeApi) -> None:
    fake_x.seed(("extra", None), ("cat", "old"))
    with capture_logs() as logs:
        result = run_sync(make_api(), settings(("cat", "new"), ("dog", None), mode="add"))
    assert fake_x.pairs() == [("cat", "old"), ("dog", None), ("extra", None)]
    assert [r.value for r in result.conflicts] == ["cat"]
    assert any(e["event"] == "rules.tag_conflict" for e in logs)


def test_server_cap_lower_than_configured_is_rules_cap_without_change(
    fake_x: FakeX, make_api: MakeApi
) -> None:
    fake_x.cap = 2
    with pytest.raises(RulesSyncError) as caught:
        run_sync(make_api(), settings(("a", None), ("b", None), ("c", None)))
    assert caught.value.reason == "rules_cap"
    assert fake_x.rules == {}
    assert fake_x.posts(dry_run=False) == []


def test_tight_cap_deletes_before_adding(fake_x: FakeX, make_api: MakeApi) -> None:
    fake_x.cap = 3
    fake_x.seed(("a", None), ("b", None), ("c", None))
    run_sync(make_api(), settings(("x", None), ("y", None), ("z", None), max_rules=3))
    assert [next(iter(b)) for b in fake_x.posts(dry_run=False)] == ["delete", "add"]
    assert fake_x.pairs() == [("x", None), ("y", None), ("z", None)]


def test_dry_run_validates_but_changes_nothing(fake_x: FakeX, make_api: MakeApi) -> None:
    fake_x.seed(("extra", None))
    with capture_logs() as logs:
        result = run_sync(make_api(), settings(("cat", None)), dry_run=True)
    assert fake_x.pairs() == [("extra", None)]
    assert result.dry_run
    assert [r.value for r in result.added] == ["cat"]
    assert [r.value for r in result.deleted] == ["extra"]
    assert result.active == 1
    assert len(fake_x.posts(dry_run=True)) == 1
    assert fake_x.posts(dry_run=False) == []
    synced = next(e for e in logs if e["event"] == "rules.synced")
    assert (synced["added"], synced["deleted"], synced["dry_run"]) == (1, 1, True)


def test_large_sets_are_batched(fake_x: FakeX, make_api: MakeApi) -> None:
    fake_x.seed(*[(f"old{i}", None) for i in range(1200)])
    fake_x.page_size = 500
    fake_x.cap = 2000
    configured = settings(*[(f"new{i}", None) for i in range(250)], max_rules=2000)
    run_sync(make_api(), configured)
    assert fake_x.gets() == 3
    real = fake_x.posts(dry_run=False)
    assert [len(b["add"]) for b in real if "add" in b] == [100, 100, 50]
    assert [len(b["delete"]["ids"]) for b in real if "delete" in b] == [1000, 200]
    assert len(fake_x.posts(dry_run=True)) == 3
    assert len(fake_x.rules) == 250


def test_mode_off_makes_no_request(fake_x: FakeX, make_api: MakeApi) -> None:
    result = run_sync(make_api(), settings(("cat", None), mode="off"))
    assert not result
    assert fake_x.requests == []


def test_empty_configuration_in_sync_mode_deletes_everything(fake_x: FakeX,
                                                             make_api: MakeApi) -> None:
    fake_x.seed(("a", None))
    result = run_sync(make_api(), settings())
    assert fake_x.rules == {}
    assert not result  # no rules on the server: a connect would get 409


def test_failure_part_way_says_the_server_was_changed(fake_x: FakeX, make_api: MakeApi) -> None:
    fake_x.seed(("old", None))
    inner = fake_x.handler

    def fail_deletes(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and b"delete" in request.content:
            fake_x.requests.append(request)
            return httpx.Response(503, json={"title": "Service Unavailable"})
        return inner(request)

    fake_x.handler = fail_deletes  # type: ignore[method-assign]
    with pytest.raises(RulesSyncError) as caught:
        run_sync(make_api(max_attempts=2), settings(("cat", None)))
    error = caught.value
    assert (error.reason, error.applied, error.exit_code) == ("server_error", True, 70)
    assert "added 1, deleted 0 before stopping" in str(error)
    assert "no rule was changed" not in str(error)
    assert fake_x.pairs() == [("cat", None), ("old", None)]
