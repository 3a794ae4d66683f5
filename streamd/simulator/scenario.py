"""Timed fault scenarios from a JSON or TOML file.

Format (JSON shown; TOML uses [[events]] tables with the same keys):

    {"repeat_every": null,
     "events": [
       {"at": 2.0, "fault": "operational_disconnect", "disconnect_type": "ForceDisconnect"},
       {"at": 5.0, "fault": "stall", "seconds": 25},
       {"at": 7.0, "fault": "usage_capped", "end": "reset"},
       {"at": 9.0, "connect_fault": {"kind": "status", "status": 503}, "count": 2},
       {"at": 10.0, "connect_fault": {"kind": "hang"}},
       {"at": 11.0, "rules_fault": {"kind": "server_error", "status": 503, "method": "POST",
                                    "count": 2}},
       {"at": 12.0, "config": {"tweets_per_second": 500}},
       {"at": 15.0, "rules": {"add": [{"value": "cat", "tag": "cats"}]}},
       {"at": 20.0, "advance": 600, "keep_connections": false}
     ]}

`at` is seconds after the simulator started. With `repeat_every: S` the whole list runs
again every S seconds (S must exceed the largest `at`)."""

from __future__ import annotations

import asyncio
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from streamd.simulator import control
from streamd.simulator.faults import ConnectFault, Fault
from streamd.simulator.rules_faults import parse_rules_fault_spec
from streamd.simulator.state import SimulatorState


@dataclass(frozen=True)
class ScenarioEvent:
    at: float
    action: dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    events: tuple[ScenarioEvent, ...]
    repeat_every: float | None = None


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    raw = path.read_bytes()
    document: Any = (
        tomllib.loads(raw.decode("utf-8")) if path.suffix == ".toml" else orjson.loads(raw)
    )
    if not isinstance(document, dict) or not isinstance(document.get("events"), list):
        raise ValueError(f"{path}: a scenario is an object with an `events` list")
    events = []
    for item in document["events"]:
        if not isinstance(item, dict) or "at" not in item:
            raise ValueError(f"{path}: every event needs `at` (seconds)")
        action = {k: v for k, v in item.items() if k != "at"}
        _validate(action)
        events.append(ScenarioEvent(float(item["at"]), action))
    events.sort(key=lambda e: e.at)
    repeat = document.get("repeat_every")
    if repeat is not None and events and float(repeat) <= events[-1].at:
        raise ValueError(f"{path}: repeat_every must exceed the last event's `at`")
    return Scenario(tuple(events), None if repeat is None else float(repeat))


def _validate(action: dict[str, Any]) -> None:
    if "fault" in action:
        Fault.from_dict(action)
    elif "connect_fault" in action:
        ConnectFault.from_dict(dict(action["connect_fault"]))
    elif "rules_fault" in action:
        parse_rules_fault_spec(dict(action["rules_fault"]))
    elif "advance" in action:
        seconds = action["advance"]
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError(f"`advance` must be a number of seconds >= 0: {action}")
        if not isinstance(action.get("keep_connections", False), bool):
            raise ValueError(f"`keep_connections` must be true or false: {action}")
    elif "config" not in action and "rules" not in action:
        raise ValueError(
            "scenario event has no fault/connect_fault/rules_fault/config/rules/advance:"
            f" {action}"
        )


def apply(state: SimulatorState, action: dict[str, Any]) -> None:
    if "fault" in action:
        state.inject(Fault.from_dict(action))
    elif "connect_fault" in action:
        state.inject_connect(
            ConnectFault.from_dict(dict(action["connect_fault"])), int(action.get("count", 1))
        )
    elif "rules_fault" in action:
        state.inject_rules_fault(*parse_rules_fault_spec(dict(action["rules_fault"])))
    elif "advance" in action:
        control.advance(state, action["advance"], bool(action.get("keep_connections", False)))
    elif "config" in action:
        control.configure(state, dict(action["config"]))
    elif "rules" in action:
        rules = action["rules"]
        control.add_rules(state, [(r["value"], r.get("tag")) for r in rules.get("add", [])])
        if rules.get("delete"):
            control.delete_rules(state, [str(i) for i in rules["delete"]])


async def run_scenario(state: SimulatorState, scenario: Scenario) -> None:
    origin = state.started_at
    while True:
        for event in scenario.events:
            delay = origin + event.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            apply(state, event.action)
        if scenario.repeat_every is None:
            return
        origin += scenario.repeat_every
