"""A small in-process fake of X's rules endpoints (for httpx.MockTransport) and a fake clock,
so sync logic is tested without sockets or sleeping."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

PROBLEMS = "https://api.twitter.com/2/problems/"


@dataclass
class FakeClock:
    now: float = 1_700_000_000.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@dataclass
class FakeX:
    """Rules store with X's answers: DuplicateRule by value, invalid-rules for values holding
    `bad:` (an unknown operator), rule-cap inside a 201 body, dry_run, pagination, headers."""

    clock: FakeClock
    cap: int = 1000
    page_size: int | None = None  # force pagination below the client's max_results
    rules: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    # Scripted answers served before the real ones: (status, body, headers).
    script: list[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    remaining: dict[str, int] = field(default_factory=lambda: {"GET": 450, "POST": 100})
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1_600_000_000_000_000_000))

    def seed(self, *rules: tuple[str, str | None]) -> list[str]:
        """Server-side rules, bypassing the checks (duplicates allowed, as a test aid)."""
        ids = []
        for value, tag in rules:
            rule_id = str(next(self._ids))
            self.rules[rule_id] = (value, tag)
            ids.append(rule_id)
        return ids

    def pairs(self) -> list[tuple[str, str | None]]:
        return sorted(self.rules.values(), key=lambda p: (p[0], p[1] or ""))

    def posts(self, *, dry_run: bool | None = None) -> list[dict[str, Any]]:
        out = []
        for request in self.requests:
            if request.method != "POST":
                continue
            is_dry = request.url.params.get("dry_run") == "true"
            if dry_run is None or dry_run == is_dry:
                out.append(json.loads(request.content))
        return out

    def gets(self) -> int:
        return sum(1 for r in self.requests if r.method == "GET")

    def headers(self, method: str) -> dict[str, str]:
        self.remaining[method] = max(0, self.remaining[method] - 1)
        limit = 450 if method == "GET" else 100
        return {
            "x-rate-limit-limit": str(limit),
            "x-rate-limit-remaining": str(self.remaining[method]),
            "x-rate-limit-reset": str(int(self.clock.now) + 900),
        }

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.script:
            status, body, headers = self.script.pop(0)
            return httpx.Response(status, json=body, headers=headers)
        headers = self.headers(request.method)
        if request.method == "GET":
            return httpx.Response(200, json=self._get(request), headers=headers)
        body = json.loads(request.content)
        dry_run = request.url.params.get("dry_run") == "true"
        if "add" in body:
            return httpx.Response(201, json=self._add(body["add"], dry_run), headers=headers)
        return httpx.Response(200, json=self._delete(body["delete"]["ids"], dry_run),
                              headers=headers)

    def _get(self, request: httpx.Request) -> dict[str, Any]:
        size = self.page_size or int(request.url.params.get("max_results", "1000"))
        offset = int(request.url.params.get("pagination_token", "0" * 16))
        items = list(self.rules.items())
        page = items[offset : offset + size]
        meta: dict[str, Any] = {"sent": "2024-01-15T10:30:00.000Z", "result_count": len(page)}
        if offset + size < len(items):
            meta["next_token"] = f"{offset + size:016d}"
        body: dict[str, Any] = {"meta": meta}
        if page:
            body["data"] = [_rule(i, v, t) for i, (v, t) in page]
        return body

    def _add(self, items: list[dict[str, Any]], dry_run: bool) -> dict[str, Any]:
        by_value = {v: i for i, (v, _) in self.rules.items()}
        errors: list[dict[str, Any]] = []
        valid: list[tuple[str, str | None]] = []
        for item in items:
            value = item["value"]
            if value in by_value:
                errors.append({"value": value, "id": by_value[value], "title": "DuplicateRule",
                               "type": PROBLEMS + "duplicate-rules"})
            elif "bad:" in value:
                position = value.index("bad:") + 1
                errors.append({
                    "value": value,
                    "details": [f"Reference to invalid operator 'bad' (at position {position})."],
                    "title": "UnprocessableEntity", "type": PROBLEMS + "invalid-rules",
                })
            else:
                valid.append((value, item.get("tag")))
        created: list[dict[str, Any]] = []
        if valid and len(self.rules) + len(valid) > self.cap:
            errors.append({"title": "RulesCapExceeded",
                           "detail": "You have exceeded the maximum number of rules.",
                           "type": PROBLEMS + "rule-cap"})
        else:
            for value, tag in valid:
                rule_id = str(next(self._ids))
                created.append(_rule(rule_id, value, tag))
                if not dry_run:
                    self.rules[rule_id] = (value, tag)
        body: dict[str, Any] = {"meta": {"sent": "2024-01-15T10:30:00.000Z", "summary": {
            "created": len(created), "not_created": len(items) - len(created),
            "valid": len(valid), "invalid": len(items) - len(valid)}}}
        if created:
            body["data"] = created
        if errors:
            body["errors"] = errors
        return body

    def _delete(self, ids: list[str], dry_run: bool) -> dict[str, Any]:
        found = [i for i in ids if i in self.rules]
        if not dry_run:
            for rule_id in found:
                del self.rules[rule_id]
        return {"meta": {"sent": "2024-01-15T10:30:00.000Z",
                         "summary": {"deleted": len(found), "not_deleted": len(ids) - len(found)}}}


def _rule(rule_id: str, value: str, tag: str | None) -> dict[str, str]:
    out = {"id": rule_id, "value": value}
    if tag is not None:
        out["tag"] = tag
    return out
