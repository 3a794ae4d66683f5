"""`streamd rules list|diff|sync` print rule values, tags and ids as the server holds them:
another tool (or person) with the App's token may have put control characters there. They
are shown as escapes, never obeyed by the terminal. Over real HTTP against the simulator,
whose rule store accepts such values."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest

from streamd.commands.rules import rules_command
from streamd.config import Settings
from streamd.simulator import Simulator, SimulatorConfig
from streamd.x.rules import RulesApi

CLEAR_AND_FAKE = "\x1b[2J\r[ OK ] token"
HOSTILE_RULES = [
    (f"cat{CLEAR_AND_FAKE}", "tag\r[ OK ] all rules in sync\x9b2K"),
    ("dog \u202egnp.exe", "\u2066tag\u2069\n[ OK ]"),
]
ESCAPED_VALUE = "cat\\x1b[2J\\r[ OK ] token"
NEVER = ("\x1b", "\r", "\x9b", "\u202e", "\u2066", "\u2069")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(SimulatorConfig(heartbeat_interval=0.5, rule_propagation_delay=0.0))
    simulator.start()
    try:
        simulator.add_rules(HOSTILE_RULES)
        yield simulator
    finally:
        simulator.stop()


def run(sim: Simulator, action: str, *, as_json: bool = False) -> tuple[int, str, str]:
    settings = Settings.model_validate({
        "x": {"api_url": sim.url, "bearer_token": "test-token"},
        "rules": {"rule": [{"value": "bird", "tag": "b"}]},
    })
    out, err = io.StringIO(), io.StringIO()
    code = rules_command(settings, action, dry_run=False, as_json=as_json, out=out, err=err,
                         api_factory=RulesApi)
    return code, out.getvalue(), err.getvalue()


def assert_shown_not_obeyed(text: str, lines: int) -> None:
    for char in NEVER:
        assert char not in text, repr(char)
    assert len(text.splitlines()) == lines  # a \n inside a tag made no line of its own
    assert not any(line.startswith("[ OK ]") for line in text.splitlines())


def test_list_table_escapes_server_values_and_tags(sim: Simulator) -> None:
    code, out, err = run(sim, "list")
    assert code == 0, err
    assert_shown_not_obeyed(out, 4)  # header, two rules, count
    assert ESCAPED_VALUE in out
    assert "\\u2066tag\\u2069\\n[ OK ]" in out


def test_list_json_escapes_c1_and_bidi_and_keeps_the_values(sim: Simulator) -> None:
    code, out, _ = run(sim, "list", as_json=True)
    assert code == 0
    for char in NEVER:
        assert char not in out
    values = {(r["value"], r.get("tag")) for r in json.loads(out)["rules"]}
    assert values == set(HOSTILE_RULES)


def test_diff_and_sync_lines_escape_what_they_delete(sim: Simulator) -> None:
    code, out, _ = run(sim, "diff")
    assert code == 1
    assert_shown_not_obeyed(out, 4)  # one add, two deletes, the summary
    assert f"- {ESCAPED_VALUE}" in out
    code, out, err = run(sim, "sync")
    assert code == 0, err
    assert_shown_not_obeyed(out, 4)
    assert [(r.value, r.tag) for r in sim.rules()] == [("bird", "b")]
