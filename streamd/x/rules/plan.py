"""Rules planning, pure: what it takes to go from the server's rules to the configured ones.

`check_locally` (length and duplicate checks) and `plan_rules` (what to add, what to delete,
in which order) need no I/O and are unit-tested directly.

A rule's identity is its (value, tag) pair: a tag cannot be updated on X, so a changed tag is
a delete plus an add. X refuses a second rule with the same value whatever its tag
(DuplicateRule), which is why a re-tagged rule can only be added after its old twin is gone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from streamd.config import RuleSpec
from streamd.errors import InvalidRule

Mode = Literal["sync", "add", "off"]
RuleKey = tuple[str, str | None]
_T = TypeVar("_T")


# --- identity ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerRule:
    """A rule as the server holds it."""

    id: str
    value: str
    tag: str | None = None

    @property
    def key(self) -> RuleKey:
        return (self.value, self.tag)


def rule_key(rule: RuleSpec) -> RuleKey:
    return (rule.value, rule.tag)


# --- pure planning ----------------------------------------------------------------------


def check_locally(desired: Sequence[RuleSpec], max_length: int) -> list[InvalidRule]:
    """Problems found without asking X: values over the tier's length, and values configured
    twice (X accepts a value once, whatever the tag)."""
    problems: list[InvalidRule] = []
    seen: set[str] = set()
    for rule in desired:
        details: list[str] = []
        if len(rule.value) > max_length:
            details.append(
                f"{len(rule.value)} characters, over rules.max_length = {max_length}"
            )
        if rule.value in seen:
            details.append("the same value is configured more than once")
        seen.add(rule.value)
        if details:
            problems.append(InvalidRule(rule.value, rule.tag, tuple(details)))
    return problems


@dataclass(frozen=True)
class Step:
    """One phase of applying a plan: adds (RuleSpec) or deletes (ServerRule)."""

    action: Literal["add", "delete"]
    add: tuple[RuleSpec, ...] = ()
    delete: tuple[ServerRule, ...] = ()


@dataclass(frozen=True)
class RulesPlan:
    mode: Mode
    server_count: int
    unchanged: tuple[ServerRule, ...]
    to_add: tuple[RuleSpec, ...]
    to_delete: tuple[ServerRule, ...]
    # Mode "add" never deletes, so a configured value the server holds under another tag
    # cannot be added (DuplicateRule): the server rule is kept and listed here.
    conflicts: tuple[ServerRule, ...]
    adds_first: bool

    @property
    def in_sync(self) -> bool:
        return not self.to_add and not self.to_delete

    @property
    def final_count(self) -> int:
        return self.server_count + len(self.to_add) - len(self.to_delete)

    @property
    def blocked_values(self) -> frozenset[str]:
        """Values to add that a rule being deleted still holds: they must wait for it."""
        held = {rule.value for rule in self.to_delete}
        return frozenset(rule.value for rule in self.to_add if rule.value in held)

    def steps(self) -> list[Step]:
        """The order of application. Adds first when the cap leaves room (never a moment
        without the wanted rules), except re-tagged values, which follow their deletion;
        deletes first when the cap is too tight for both sets at once."""
        blocked = self.blocked_values
        if self.adds_first:
            early = tuple(r for r in self.to_add if r.value not in blocked)
            late = tuple(r for r in self.to_add if r.value in blocked)
            steps = [Step("add", add=early), Step("delete", delete=self.to_delete),
                     Step("add", add=late)]
        else:
            steps = [Step("delete", delete=self.to_delete), Step("add", add=self.to_add)]
        return [s for s in steps if s.add or s.delete]


def plan_rules(
    desired: Sequence[RuleSpec], server: Sequence[ServerRule], *, mode: Mode, max_rules: int
) -> RulesPlan:
    """What it takes to go from `server` to `desired` under `mode` ("off" plans nothing).

    A desired (value, tag) already on the server is kept (its first copy, if the server holds
    it more than once); in mode "sync" every other server rule is deleted."""
    if mode == "off":
        return RulesPlan(mode, len(server), tuple(server), (), (), (), True)
    wanted = {rule_key(r) for r in desired}
    unchanged: dict[RuleKey, ServerRule] = {}
    extra: list[ServerRule] = []
    for rule in server:
        if rule.key in wanted and rule.key not in unchanged:
            unchanged[rule.key] = rule
        else:
            extra.append(rule)
    missing = [r for r in desired if rule_key(r) not in unchanged]
    if mode == "sync":
        to_add, to_delete, conflicts = missing, extra, []
    else:
        on_server = {rule.value: rule for rule in server}
        to_add = [r for r in missing if r.value not in on_server]
        conflicts = [on_server[r.value] for r in missing if r.value in on_server]
        to_delete = []
    held = {rule.value for rule in to_delete}
    early_adds = sum(1 for r in to_add if r.value not in held)
    return RulesPlan(
        mode=mode,
        server_count=len(server),
        unchanged=tuple(unchanged.values()),
        to_add=tuple(to_add),
        to_delete=tuple(to_delete),
        conflicts=tuple(conflicts),
        adds_first=len(server) + early_adds <= max_rules,
    )


def batches(items: Sequence[_T], size: int) -> Iterator[tuple[_T, ...]]:
    for start in range(0, len(items), size):
        yield tuple(items[start : start + size])
