"""Pure planning: identity by (value, tag), modes, step order under the cap, local checks."""

from __future__ import annotations

from streamd.config import RuleSpec
from streamd.x.rules import ServerRule, batches, check_locally, plan_rules


def spec(value: str, tag: str | None = None) -> RuleSpec:
    return RuleSpec(value=value, tag=tag)


def test_in_sync_plans_nothing() -> None:
    server = [ServerRule("1", "cat", "cats"), ServerRule("2", "dog", None)]
    plan = plan_rules([spec("dog"), spec("cat", "cats")], server, mode="sync", max_rules=10)
    assert plan.in_sync
    assert plan.steps() == []
    assert [r.id for r in plan.unchanged] == ["1", "2"]
    assert plan.final_count == 2


def test_differs_every_way_adds_first_then_deletes_then_retags() -> None:
    server = [
        ServerRule("1", "keep", "k"),
        ServerRule("2", "extra", None),
        ServerRule("3", "retag", "old"),
        ServerRule("4", "keep", "k"),  # a duplicate of rule 1
    ]
    desired = [spec("keep", "k"), spec("new", "n"), spec("retag", "new")]
    plan = plan_rules(desired, server, mode="sync", max_rules=10)
    assert [r.id for r in plan.unchanged] == ["1"]
    assert plan.to_add == (spec("new", "n"), spec("retag", "new"))
    assert {r.id for r in plan.to_delete} == {"2", "3", "4"}
    assert plan.blocked_values == {"retag"}
    assert plan.adds_first
    steps = plan.steps()
    assert [s.action for s in steps] == ["add", "delete", "add"]
    assert steps[0].add == (spec("new", "n"),)
    assert steps[2].add == (spec("retag", "new"),)
    assert plan.final_count == 3


def test_tag_change_is_delete_plus_add() -> None:
    plan = plan_rules([spec("cat", "b")], [ServerRule("1", "cat", "a")], mode="sync",
                      max_rules=10)
    assert plan.to_add == (spec("cat", "b"),)
    assert plan.to_delete == (ServerRule("1", "cat", "a"),)
    # The value is held by the old rule: X would answer DuplicateRule to an early add.
    assert [s.action for s in plan.steps()] == ["delete", "add"]


def test_untagged_and_tagged_are_different_rules() -> None:
    plan = plan_rules([spec("cat")], [ServerRule("1", "cat", "cats")], mode="sync",
                      max_rules=10)
    assert not plan.in_sync


def test_tight_cap_deletes_first() -> None:
    server = [ServerRule(str(i), f"old{i}") for i in range(3)]
    desired = [spec(f"new{i}") for i in range(3)]
    plan = plan_rules(desired, server, mode="sync", max_rules=4)
    assert not plan.adds_first
    assert [s.action for s in plan.steps()] == ["delete", "add"]
    roomy = plan_rules(desired, server, mode="sync", max_rules=6)
    assert roomy.adds_first
    assert [s.action for s in roomy.steps()] == ["add", "delete"]


def test_add_mode_never_deletes_and_reports_tag_conflicts() -> None:
    server = [ServerRule("1", "extra"), ServerRule("2", "cat", "old")]
    plan = plan_rules([spec("cat", "new"), spec("dog")], server, mode="add", max_rules=10)
    assert plan.to_delete == ()
    assert plan.to_add == (spec("dog"),)
    assert plan.conflicts == (ServerRule("2", "cat", "old"),)
    assert plan.final_count == 3


def test_off_mode_plans_nothing() -> None:
    plan = plan_rules([spec("cat")], [ServerRule("1", "dog")], mode="off", max_rules=1)
    assert plan.in_sync
    assert plan.steps() == []


def test_local_checks_length_and_duplicates() -> None:
    desired = [spec("a" * 11, "long"), spec("ok"), spec("ok", "again"), spec("b" * 10)]
    problems = check_locally(desired, max_length=10)
    assert [(p.value, p.tag) for p in problems] == [("a" * 11, "long"), ("ok", "again")]
    assert "over rules.max_length = 10" in problems[0].details[0]
    assert "more than once" in problems[1].details[0]
    assert "rule 'ok' (tag 'again'): " in problems[1].describe()


def test_length_counts_characters_not_bytes() -> None:
    assert check_locally([spec("猫" * 10)], max_length=10) == []


def test_batches() -> None:
    assert list(batches(list(range(5)), 2)) == [(0, 1), (2, 3), (4,)]
    assert list(batches([], 3)) == []
