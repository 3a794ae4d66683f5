"""The simulator does what the README says (issue 19, item 4): raw lines injected over HTTP
reach the stream, an unknown `has:` value is rejected as X rejects an unknown operator, and
`streamd simulate` on a port in use fails with one line and exit 78."""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx
import pytest
from sim_helpers import AUTH, RULES, fixture_body, open_stream

from streamd.simulator import Fault, Simulator
from streamd.simulator.cli import build_parser


def test_raw_fault_over_http_sends_its_lines(simulator: Simulator) -> None:
    simulator.add_rules([("zzznomatch", None)])
    lines = ["hello from a raw fault", '{"surprise":true}', "ünïcode ✓"]
    with open_stream(simulator) as (response, reader), \
            httpx.Client(base_url=simulator.url) as c:
        assert response.status_code == 200
        assert reader.wait_for(lambda r: bool(r.lines), 3.0)  # a heartbeat: streaming
        injected = c.post("/_simulator/faults", json={"kind": "raw", "lines": lines})
        assert injected.json() == {"ok": True}
        wanted = [line.encode() for line in lines]
        assert reader.wait_for(lambda r: all(w in r.lines for w in wanted), 3.0), reader.lines
        got = [line for line in reader.lines if line in wanted]
        assert got == wanted
    assert [s.line for s in simulator.sent_lines() if s.kind == "raw"] == wanted


@pytest.mark.parametrize(
    "spec",
    [
        {"fault": "raw"},  # nothing to send: was {"ok": true} and silence
        {"fault": "raw", "lines": "one line"},
        {"fault": "raw", "lines": [1, 2]},
        {"fault": "raw", "lines": ["two\nlines"]},
        {"fault": "raw", "line": ["typo"]},
        {"fault": "stall", "second": 3},
    ],
)
def test_bad_fault_specs_are_refused(simulator: Simulator, spec: dict[str, object]) -> None:
    with httpx.Client(base_url=simulator.url) as c:
        refused = c.post("/_simulator/faults", json=spec)
    assert refused.status_code == 400, refused.text
    assert "error" in refused.json()


def test_raw_fault_from_dict_and_python_agree() -> None:
    assert Fault.from_dict({"fault": "raw", "lines": ["a", "b"]}) == Fault.raw([b"a", b"b"])
    with pytest.raises(ValueError, match="newline"):
        Fault.raw([b"a\nb"])


@pytest.mark.parametrize(
    ("value", "details"),
    [
        ("cat has:imagez", ["Reference to invalid operator 'has:imagez'."]),
        ("cat -is:retweeet", ["Reference to invalid operator 'is:retweeet'."]),
        ("has:imagez", ["is/has/lang cannot be used as a standalone operator (at position 1)",
                        "Reference to invalid operator 'has:imagez'."]),
    ],
)
def test_an_unknown_has_value_is_an_invalid_operator(
    simulator: Simulator, value: str, details: list[str]
) -> None:
    real = fixture_body("invalid_rule")  # X's answer to the unknown operator "h:m"
    with httpx.Client(base_url=simulator.url, headers=AUTH) as c:
        for params in ({"dry_run": "true"}, {}):
            response = c.post(RULES, params=params, json={"add": [{"value": value}]})
            assert response.status_code == 201
            body = response.json()
            assert set(body) == set(real) | {"meta"}
            assert body["meta"]["summary"] == {
                "created": 0, "not_created": 1, "valid": 0, "invalid": 1}
            assert body["errors"] == [{**real["errors"][0], "value": value,
                                       "details": details}]
    assert simulator.rules() == []
    # Known values stay valid.
    with httpx.Client(base_url=simulator.url, headers=AUTH) as c:
        ok = c.post(RULES, json={"add": [{"value": "cat has:images -is:retweet"}]}).json()
    assert ok["meta"]["summary"]["created"] == 1


def test_simulate_on_a_port_in_use_exits_78_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "streamd", "simulate", "--port", str(port)],
            capture_output=True, timeout=30, check=False,
        )
    assert done.returncode == 78
    assert done.stdout == b""
    (line,) = done.stderr.decode().splitlines()
    assert line.startswith("streamd simulate: ")
    assert f"port {port} " in line
    assert "already in use" in line
    assert "Traceback" not in line
    assert "SystemExit" not in line


def test_simulate_help_shows_the_connection_options_and_defaults() -> None:
    text = build_parser().format_help()
    for option in ("--zombie-seconds", "--connection-limit", "--terminate-ending",
                   "--connections-api"):
        assert option in text
    assert "(default: 0.0, freed at once)" in text
    assert "default: the tier's" in text
    args = build_parser().parse_args([])
    assert (args.zombie_seconds, args.connection_limit) == (0.0, None)
