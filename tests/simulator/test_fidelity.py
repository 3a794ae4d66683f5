"""Behaviour chosen to match X: rule propagation delay, Enterprise-only backfill, and the
new faults' control-endpoint and scenario forms."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sim_helpers import AUTH, STREAM, open_stream

from streamd.simulator import ConnectFault, Fault, Simulator, SimulatorConfig
from streamd.simulator.cli import build_parser
from streamd.simulator.scenario import load_scenario


def test_rules_take_about_20_seconds_by_default() -> None:
    assert SimulatorConfig().rule_propagation_delay == 20.0
    assert build_parser().parse_args([]).rule_propagation_delay == 20.0
    with pytest.raises(ValueError, match="rule_propagation_delay"):
        SimulatorConfig(rule_propagation_delay=-1.0)


def test_a_new_rule_waits_the_delay_unless_immediate(
    make_simulator: Callable[..., Simulator],
) -> None:
    sim = make_simulator(rule_propagation_delay=20.0, match_all=True, tweets_per_second=200.0)
    sim.add_rules([("cat", None)])
    with open_stream(sim) as (response, reader):
        assert response.status_code == 200  # the rule exists: no 409
        assert reader.wait_for(lambda r: b"" in r.lines, 3.0)  # a heartbeat, no tweet
        assert reader.tweets() == []
        sim.add_rules([("dog", None)], immediate=True)  # the whole set is in force now
        tweets = reader.wait_tweets(3)
    assert {m["id"] for t in tweets for m in t["matching_rules"]} == {
        r.id for r in sim.rules()}


def _first_line_after_connect(sim: Simulator, params: dict[str, str]) -> bytes:
    with open_stream(sim, params) as (response, reader):
        assert response.status_code == 200
        assert reader.wait_for(lambda r: bool(r.lines), 3.0)
        return reader.lines[0]


def test_backfill_is_ignored_below_enterprise_unless_configured(
    make_simulator: Callable[..., Simulator],
) -> None:
    sim = make_simulator(tier="pro", match_all=True, tweets_per_second=200.0)
    sim.add_rules([("cat", None)])
    with open_stream(sim) as (_, reader):
        reader.wait_tweets(5)
    assert sim.wait_connections(0, 3.0)
    sim.set_rate(0.0)
    before = len(sim.sent_tweets())
    # Pro: accepted (200), nothing replayed: the first line is a heartbeat.
    assert _first_line_after_connect(sim, {"backfill_minutes": "2"}) == b""
    assert len(sim.sent_tweets()) == before
    assert sim.wait_connections(0, 3.0)
    sim.configure(backfill_tiers=["pro", "enterprise"])
    first = _first_line_after_connect(sim, {"backfill_minutes": "2"})
    assert json.loads(first)["data"]["id"] == sim.sent_tweets()[0].id
    with pytest.raises(ValueError, match="backfill_tiers"):
        sim.configure(backfill_tiers=["gold"])


def test_fault_end_validation() -> None:
    assert Fault.operational_disconnect().end == "clean"
    assert Fault.from_dict({"fault": "usage_capped", "end": "rst_stream"}) == Fault.usage_capped(
        end="rst_stream")
    with pytest.raises(ValueError, match="unknown end"):
        Fault.close(end="slam")
    with pytest.raises(ValueError, match="applies only"):
        Fault("stall", seconds=1.0, end="reset")
    assert ConnectFault.from_dict({"kind": "hang"}) == ConnectFault.hang()


def test_control_endpoint_forms(make_simulator: Callable[..., Simulator]) -> None:
    sim = make_simulator(match_all=True, tweets_per_second=200.0)
    sim.add_rules([("cat", None)])
    with httpx.Client(base_url=sim.url) as c:
        assert c.post("/_simulator/faults",
                      json={"fault": "usage_capped", "end": "bogus"}).status_code == 400
        assert c.post("/_simulator/faults",
                      json={"fault": "operational_disconnect",
                            "end": "no_final_chunk"}).status_code == 200
        with open_stream(sim) as (_, reader):
            assert reader.wait_end(3.0)
        assert isinstance(reader.error, httpx.RemoteProtocolError)
        assert b"operational-disconnect" in reader.lines[-1]
        assert c.post("/_simulator/connect-faults", json={"kind": "hang"}).status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            c.get(STREAM, headers=AUTH, timeout=httpx.Timeout(5.0, read=0.3))
        connects = c.get("/_simulator/connects").json()
    assert [r["status"] for r in connects] == [200, 0]


def test_scenario_accepts_the_new_faults(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        '[[events]]\nat = 1.0\nfault = "usage_capped"\nend = "reset"\n'
        '[[events]]\nat = 2.0\nconnect_fault = { kind = "hang" }\ncount = 2\n'
        '[[events]]\nat = 3.0\nfault = "close"\nend = "rst_stream"\n'
        '[[events]]\nat = 4.0\nrules_fault = { kind = "rate_limited", reset_in = 5.0 }\n'
    )
    assert len(load_scenario(path).events) == 4
    path.write_text('[[events]]\nat = 1.0\nrules_fault = { kind = "teapot" }\n')
    with pytest.raises(ValueError, match="teapot"):
        load_scenario(path)
