"""The server-side rule store: ids, add/delete/lookup with X's response bodies, and the
delayed view the matcher uses (rule changes reach the stream after a propagation delay)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streamd.simulator import problems
from streamd.simulator.records import Rule
from streamd.simulator.rule_syntax import (
    Predicate,
    RuleSyntaxError,
    compile_rule,
    plain_keyword,
)
from streamd.simulator.snowflake import snowflake_now
from streamd.simulator.timefmt import iso_now

_TOKEN_BYTES = 10  # base32hex of 10 bytes is exactly 16 characters, as X's tokens are


def encode_page_token(offset: int) -> str:
    return base64.b32hexencode(offset.to_bytes(_TOKEN_BYTES, "big")).decode("ascii")


def decode_page_token(token: str) -> int | None:
    if len(token) != 16:
        return None
    try:
        return int.from_bytes(base64.b32hexdecode(token.upper()), "big")
    except ValueError:
        return None


@dataclass(frozen=True)
class ActiveRules:
    """An immutable rule set as the matcher sees it; `version` changes on every change."""

    version: int
    rules: tuple[Rule, ...]
    predicates: tuple[Predicate, ...]
    keywords: tuple[str | None, ...]  # see rule_syntax.plain_keyword


@dataclass(frozen=True)
class RulesAnswer:
    status: int
    body: dict[str, Any]


class RuleStore:
    """Not thread-safe by itself: the Simulator calls it under its lock."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._wall = wall  # epoch seconds for `meta.sent` (the simulated clock)
        self._rules: dict[str, Rule] = {}
        self._by_value: dict[str, str] = {}
        self._predicates: dict[str, Predicate] = {}
        self._last_id = 0
        self._version = 0
        # (effective_at, ActiveRules), oldest first; the matcher uses the newest effective.
        self._history: list[tuple[float, ActiveRules]] = [(0.0, ActiveRules(0, (), (), ()))]
        self.propagation_delay = 0.0

    # --- reads ---------------------------------------------------------------------------

    def all(self) -> list[Rule]:
        return list(self._rules.values())

    def id_for_value(self, value: str) -> str:
        return self._by_value[value]

    def __len__(self) -> int:
        return len(self._rules)

    def active(self) -> ActiveRules:
        """The rule set the stream matcher should use now (after propagation delay)."""
        now = self._clock()
        history = self._history
        chosen = 0
        for index in range(len(history) - 1, -1, -1):
            if history[index][0] <= now:
                chosen = index
                break
        if chosen > 0:
            del history[:chosen]  # older snapshots can never be chosen again
        return history[0][1]

    def take_effect_now(self) -> None:
        """Every change so far reaches the matcher at once, skipping the propagation delay
        (for rules the account already had when the simulator started)."""
        self._history = [(self._clock(), self._history[-1][1])]

    def next_change_in(self) -> float | None:
        """Seconds until a pending (not yet effective) change applies, else None."""
        now = self._clock()
        pending = [at for at, _ in self._history if at > now]
        return min(pending) - now if pending else None

    # --- writes --------------------------------------------------------------------------

    def _new_id(self) -> str:
        candidate = snowflake_now()
        self._last_id = max(candidate, self._last_id + 1)
        return str(self._last_id)

    def _changed(self) -> None:
        self._version += 1
        rules = tuple(self._rules.values())
        snapshot = ActiveRules(
            self._version,
            rules,
            tuple(self._predicates[r.id] for r in rules),
            tuple(plain_keyword(r.value) for r in rules),
        )
        self._history.append((self._clock() + self.propagation_delay, snapshot))

    def add(
        self,
        items: Sequence[tuple[str, str | None]],
        *,
        host: str,
        max_rules: int,
        max_length: int,
        dry_run: bool = False,
    ) -> RulesAnswer:
        """Add rules. Valid new rules are created, duplicates and invalid ones reported in
        `errors[]` of the same 201 body. If the valid new rules would exceed the tier's rule
        cap, none of them is created and a `rule-cap` problem is reported (our choice: X's
        exact answer is not captured anywhere)."""
        errors: list[dict[str, Any]] = []
        to_create: list[tuple[str, str, str | None, Predicate]] = []
        seen_in_request: dict[str, str] = {}
        invalid = 0
        for value, tag in items:
            existing = self._by_value.get(value)
            if existing is not None:
                errors.append(problems.duplicate_rule(host, value, existing))
                invalid += 1
                continue
            try:
                predicate = compile_rule(value, max_length)
            except RuleSyntaxError as exc:
                errors.append(problems.invalid_rule(host, value, exc.details))
                invalid += 1
                continue
            if value in seen_in_request:
                # Same value twice in one request: the second is a duplicate of the first.
                errors.append(problems.duplicate_rule(host, value, seen_in_request[value]))
                invalid += 1
                continue
            rule_id = self._new_id()
            seen_in_request[value] = rule_id
            to_create.append((rule_id, value, tag, predicate))
        valid = len(to_create)
        if to_create and len(self._rules) + len(to_create) > max_rules:
            errors.append(problems.rule_cap(host))
            to_create = []
        created: list[Rule] = []
        for rule_id, value, tag, predicate in to_create:
            rule = Rule(rule_id, value, tag)
            created.append(rule)
            if not dry_run:
                self._rules[rule.id] = rule
                self._by_value[value] = rule.id
                self._predicates[rule.id] = predicate
        if created and not dry_run:
            self._changed()
        body: dict[str, Any] = {}
        if created:
            body["data"] = [_rule_json(r) for r in created]
        body["meta"] = {
            "sent": iso_now(self._wall),
            "summary": {
                "created": len(created),
                "not_created": len(items) - len(created),
                "valid": valid,
                "invalid": invalid,
            },
        }
        if errors:
            body["errors"] = errors
        return RulesAnswer(201, body)

    def delete(
        self,
        *,
        host: str,
        ids: Sequence[str] = (),
        values: Sequence[str] = (),
        dry_run: bool = False,
    ) -> RulesAnswer:
        errors: list[dict[str, Any]] = []
        doomed: list[str] = []
        for rule_id in ids:
            if rule_id in self._rules and rule_id not in doomed:
                doomed.append(rule_id)
            else:
                errors.append(problems.rule_not_found(host, "ids", rule_id))
        for value in values:
            rule_id_or_none = self._by_value.get(value)
            if rule_id_or_none is not None and rule_id_or_none not in doomed:
                doomed.append(rule_id_or_none)
            else:
                errors.append(problems.rule_not_found(host, "values", value))
        if not dry_run:
            self._remove(doomed)
        body: dict[str, Any] = {
            "meta": {
                "sent": iso_now(self._wall),
                "summary": {"deleted": len(doomed), "not_deleted": len(errors)},
            }
        }
        if errors:
            body["errors"] = errors
        return RulesAnswer(200, body)

    def delete_all(self, *, dry_run: bool = False) -> RulesAnswer:
        doomed = list(self._rules)
        if not dry_run:
            self._remove(doomed)
        body = {"meta": {"sent": iso_now(self._wall),
                         "summary": {"deleted": len(doomed), "not_deleted": 0}}}
        return RulesAnswer(200, body)

    def _remove(self, ids: list[str]) -> None:
        for rule_id in ids:
            rule = self._rules.pop(rule_id)
            self._by_value.pop(rule.value, None)
            self._predicates.pop(rule_id, None)
        if ids:
            self._changed()

    def lookup(
        self, *, ids: Sequence[str] | None, max_results: int, offset: int
    ) -> dict[str, Any]:
        rules = self.all() if ids is None else [self._rules[i] for i in ids if i in self._rules]
        page = rules[offset : offset + max_results]
        meta: dict[str, Any] = {"sent": iso_now(self._wall), "result_count": len(page)}
        if offset + max_results < len(rules):
            meta["next_token"] = encode_page_token(offset + max_results)
        body: dict[str, Any] = {}
        if page:
            body["data"] = [_rule_json(r) for r in page]
        body["meta"] = meta
        return body


def _rule_json(rule: Rule) -> dict[str, str]:
    out = {"id": rule.id, "value": rule.value}
    if rule.tag is not None:
        out["tag"] = rule.tag
    return out
