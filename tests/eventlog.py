"""A logger for in-process tests: records every event with its fields (what streamd's parts
need of a logger is streamd.ops.logs.Logger)."""

from __future__ import annotations

from typing import Any


class EventLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _add(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    info = warning = error = debug = _add

    def named(self, name: str) -> list[dict[str, Any]]:
        return [f for e, f in self.events if e == name]
