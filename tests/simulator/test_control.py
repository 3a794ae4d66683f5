"""The /_simulator/ control endpoints, the scenario runner and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from sim_helpers import AUTH, RULES, STREAM, open_stream

from streamd.simulator import Simulator
from streamd.simulator.cli import parse_rule


def test_control_endpoints(simulator: Simulator) -> None:
    with httpx.Client(base_url=simulator.url) as c:
        added = c.post("/_simulator/rules", json={"add": [{"value": "cat", "tag": "c"}]})
        assert added.status_code == 200
        (rule_id,) = added.json()["ids"]
        assert c.get("/_simulator/rules").json() == [{"id": rule_id, "value": "cat", "tag": "c"}]
        config = c.post("/_simulator/config",
                        json={"tweets_per_second": None, "total_tweets": 5, "match_all": True})
        assert config.json()["tweets_per_second"] is None
        assert config.json()["total_tweets"] == 5
        assert c.post("/_simulator/config", json={"tier": "nope"}).status_code == 400
        assert c.post("/_simulator/connect-faults",
                      json={"kind": "status", "status": 502, "count": 1}).json() == {"ok": True}
        assert c.get(STREAM, headers=AUTH).status_code == 502
        with open_stream(simulator) as (_, reader):
            reader.wait_tweets(5)
            assert c.get("/_simulator/state").json()["active_connections"] == 1
            fault = c.post("/_simulator/faults",
                           json={"fault": "operational_disconnect",
                                 "disconnect_type": "ForceDisconnect"})
            assert fault.status_code == 200
            assert reader.wait_end(3.0)
        sent = c.get("/_simulator/sent").json()
        assert sent["count"] == 5
        assert [t["id"] for t in sent["tweets"]] == [s.id for s in simulator.sent_tweets()]
        assert sent["lines"][-1]["kind"] == "operational_disconnect"
        assert c.get("/_simulator/sent", params={"since": 3}).json()["tweets"] == sent["tweets"][3:]
        connects = c.get("/_simulator/connects").json()
        assert [r["status"] for r in connects] == [502, 200]
        assert c.post("/_simulator/faults", json={"fault": "bogus"}).status_code == 400
        assert c.get("/_simulator/nothing").status_code == 404


def test_scenario_file_runs_timed_events(
    make_simulator: Callable[..., Simulator], tmp_path: Path
) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(
        '[[events]]\nat = 0.0\nrules = { add = [{ value = "cat", tag = "c" }] }\n'
        "[[events]]\nat = 0.0\nconfig = { match_all = true, tweets_per_second = 200.0 }\n"
        '[[events]]\nat = 0.8\nfault = "operational_disconnect"\n'
        'disconnect_type = "UpstreamOperationalDisconnect"\n'
    )
    sim = make_simulator(scenario_file=scenario)
    time.sleep(0.1)
    with open_stream(sim) as (response, reader):
        assert response.status_code == 200
        assert reader.wait_end(3.0)
    assert b"UpstreamOperationalDisconnect" in reader.lines[-1]
    assert reader.tweets()


def test_parse_rule_option() -> None:
    assert parse_rule("cat has:images:cats") == ("cat has:images", "cats")
    assert parse_rule("from:bob") == ("from:bob", None)
    assert parse_rule("cat") == ("cat", None)
    assert parse_rule("cat dog:pets") == ("cat dog", "pets")


def test_cli_smoke(tmp_path: Path) -> None:
    """`python -m streamd.simulator` serves heartbeats, then a tweet once a rule is posted."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamd.simulator", "--port", "0", "--heartbeat", "0.3",
         "--rate", "100", "--rule", "zzznomatch", "--rule-propagation-delay", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        second = proc.stdout.readline().decode()
        assert first.startswith("simulator listening on http://127.0.0.1:")
        assert "test-token" in second
        url = first.split()[-1]
        with httpx.Client(base_url=url, headers=AUTH, timeout=10.0) as c, \
                c.stream("GET", STREAM) as response:
            assert response.status_code == 200
            buffer = b""
            posted = False
            deadline = time.monotonic() + 10
            tweet = None
            for chunk in response.iter_raw():
                buffer += chunk
                if not posted and b"\r\n" in buffer:  # a heartbeat arrived
                    with httpx.Client(base_url=url, headers=AUTH) as rules:
                        body = {"add": [{"value": "cat OR dog OR coffee OR news"}]}
                        assert rules.post(RULES, json=body).status_code == 201
                    posted = True
                complete = buffer.split(b"\r\n")[:-1]
                tweet = next((line for line in complete if line.startswith(b'{"data"')), None)
                if tweet is not None or time.monotonic() > deadline:
                    break
            assert tweet is not None
            assert json.loads(tweet)["matching_rules"]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
