"""The bearer token (and the SASL password) never appear in output, on any path: real
`streamd` child processes, the bundled simulator and the Tansu broker. Every secret is a
recognisable marker; after each run the marker is looked for in stdout, stderr (the JSON
logs), /metrics and every file the daemon wrote to its spool directory.

`log.level = "debug"` everywhere: the most verbose output must be as clean as the usual.
The many cheap cases (every shape of a bad token file, every quoted form) are fuzzed in
process in tests/unit/test_secrets_fuzz.py; these are the representative end-to-end runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rig import DaemonProcess, daemon_config, simulator, write_toml

from streamd.dev.broker import LocalBroker, free_port
from streamd.simulator import ConnectFault, Fault, RulesFault, Simulator

# Distinctive: only the secret itself holds "h18Pipe", so the search finds it in any form
# (raw, URL-decoded, repr-quoted) while "***" shows where it was scrubbed.
MARKER = "AAAAh18Pipe%2FMarker%3DQQ"
CORE = "h18Pipe"
PASSWORD = "kafka-h18Pass word"
PASSWORD_CORE = "h18Pass"
RULE = {"value": "cat", "tag": "cats"}


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (CORE, urllib.parse.unquote(MARKER), PASSWORD_CORE):
            assert secret not in text, f"{secret!r} leaked:\n{text[-3000:]}"


def spool_bytes(spool_dir: Path) -> bytes:
    """Every file the daemon left in its spool directory (the SQLite database and its
    journal), as raw bytes."""
    return b"".join(p.read_bytes() for p in sorted(spool_dir.rglob("*")) if p.is_file())


def cli(config: Path, *argv: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith("STREAMD_") and k not in ("CREDENTIALS_DIRECTORY",
                                                              "NOTIFY_SOCKET")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "streamd", *argv, "-c", str(config)],
        capture_output=True, text=True, timeout=timeout, env=full_env, check=False,
    )


def base_config(
    api_url: str, bootstrap: str, topics: tuple[str, str], tmp_path: Path, **extra: Any,
) -> dict[str, dict[str, Any]]:
    cfg = daemon_config(api_url, bootstrap, *topics, tmp_path, **extra)
    cfg["x"]["bearer_token"] = MARKER
    cfg["rules"] = {"mode": "sync", "rule": [RULE]}
    cfg["log"] = {"level": "debug", "format": "json"}
    return cfg


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """A simulator that accepts the marker as its token."""
    with simulator(tokens=(MARKER,)) as s:
        yield s


@pytest.fixture
def refusing_sim() -> Iterator[Simulator]:
    """A simulator that does not know the marker: every request is answered 401."""
    with simulator() as s:
        yield s


# --- the daemon ---------------------------------------------------------------------------


def test_daemon_401_on_stream_connect(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
) -> None:
    """Connected (tweets spooled or published, /metrics served), then X revokes the token:
    the reconnect gets a 401 and the daemon exits 77. The token is in none of it."""
    cfg = base_config(sim.url, broker.bootstrap, topics, tmp_path)
    path = write_toml(tmp_path / "streamd.toml", cfg)  # 0644 and inline: a warning too
    daemon = DaemonProcess(path)
    try:
        daemon.wait_event("stream.connected")
        assert sim.wait_sent(5, 10)
        port = daemon.port
        scraped = [httpx.get(f"http://127.0.0.1:{port}{p}", timeout=5).text
                   for p in ("/metrics", "/readyz", "/livez")]
        sim.inject_connect(ConnectFault.unauthorized(), count=5)
        sim.inject(Fault.close())
        assert daemon.wait() == 77
        out = daemon.proc.stdout.read().decode() if daemon.proc.stdout else ""
    finally:
        daemon.stop()
    assert "streamd_tweets_received_total" in scraped[0]
    assert [e["reason"] for e in daemon.named("daemon.fatal")] == ["unauthorized"]
    assert any("chmod 600" in str(e.get("message")) for e in daemon.named("config.warning"))
    assert_no_secret("\n".join(daemon.raw_stderr), out, *scraped)
    assert CORE.encode() not in spool_bytes(tmp_path / "spool")


def test_daemon_401_on_rules_with_the_token_from_the_environment(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
) -> None:
    cfg = base_config(sim.url, broker.bootstrap, topics, tmp_path)
    del cfg["x"]["bearer_token"]
    sim.inject_rules_fault(RulesFault.unauthorized(), method="GET", count=5)
    daemon = DaemonProcess(write_toml(tmp_path / "streamd.toml", cfg),
                           env={"STREAMD_X__BEARER_TOKEN": MARKER})
    try:
        assert daemon.wait() == 77
    finally:
        daemon.stop()
    assert [e["reason"] for e in daemon.named("daemon.fatal")] == ["unauthorized"]
    assert_no_secret("\n".join(daemon.raw_stderr))
    assert CORE.encode() not in spool_bytes(tmp_path / "spool")


# --- check and rules: X answers 401 -------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "code"),
    [(("check",), 1), (("check", "--json"), 1), (("rules", "list"), 77),
     (("rules", "diff"), 77), (("rules", "sync"), 77), (("rules", "sync", "--json"), 77)],
    ids=["check", "check-json", "rules-list", "rules-diff", "rules-sync", "rules-sync-json"],
)
def test_commands_refused_by_x(
    refusing_sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    argv: tuple[str, ...], code: int,
) -> None:
    cfg = base_config(refusing_sim.url, broker.bootstrap, topics, tmp_path)
    result = cli(write_toml(tmp_path / "streamd.toml", cfg), *argv)
    assert result.returncode == code, result.stderr
    if argv[0] == "check":
        assert "401" in result.stdout
    assert_no_secret(result.stdout, result.stderr)


# --- configuration errors -----------------------------------------------------------------


def _config_error(result: subprocess.CompletedProcess[str], key: str) -> str:
    assert_no_secret(result.stdout, result.stderr)
    assert result.returncode == 78, result.stderr
    line = result.stderr.splitlines()[-1]
    assert line.startswith(f"streamd: config error: config key '{key}': "), line
    return line


@pytest.mark.parametrize(
    ("content", "problem", "argv"),
    [(f"{MARKER}\nsecond line\n".encode(), "holds 2 lines", ("check",)),
     (f"{MARKER}\nsecond line\n".encode(), "holds 2 lines", ("run",)),
     (f"{MARKER}\nsecond line\n".encode(), "holds 2 lines", ("rules", "list")),
     (f"{MARKER}\x00".encode(), "a control character (0x00)", ("check", "--json")),
     (f"\ufeff{MARKER}".encode(), "byte-order mark", ("rules", "sync"))],
    ids=["two-lines-check", "two-lines-run", "two-lines-rules-list", "trailing-nul-check-json",
         "bom-rules-sync"],
)
def test_bad_token_file(
    sim: Simulator, broker: LocalBroker, topics: tuple[str, str], tmp_path: Path,
    content: bytes, problem: str, argv: tuple[str, ...],
) -> None:
    """A simulator that would accept the token on its first line: before this change the
    second line went out in the header, and httpx's refusal quoted it."""
    token_file = tmp_path / "x_token"
    token_file.write_bytes(content)
    cfg = base_config(sim.url, broker.bootstrap, topics, tmp_path)
    cfg["x"] = {"api_url": sim.url, "bearer_token_file": str(token_file)}
    line = _config_error(cli(write_toml(tmp_path / "streamd.toml", cfg), *argv),
                         "x.bearer_token_file")
    assert problem in line
    assert str(token_file) not in line
    assert sim.rules_requests() == []  # stopped before any request
    assert sim.connects() == []


def test_token_pasted_as_the_token_file_path(refusing_sim: Simulator, tmp_path: Path) -> None:
    cfg = base_config(refusing_sim.url, f"127.0.0.1:{free_port()}", ("t", "d"), tmp_path)
    del cfg["x"]["bearer_token"]
    result = cli(write_toml(tmp_path / "streamd.toml", cfg), "rules", "list",
                 env={"STREAMD_X__BEARER_TOKEN_FILE": MARKER})
    assert "cannot read the file" in _config_error(result, "x.bearer_token_file")


def test_config_error_elsewhere_with_the_token_inline(tmp_path: Path) -> None:
    cfg = base_config("http://127.0.0.1:1", "127.0.0.1:1", ("t", "d"), tmp_path,
                      kafka={"compression": "brotli"})
    _config_error(cli(write_toml(tmp_path / "streamd.toml", cfg), "run"), "kafka.compression")


def test_sasl_password_paths(
    broker: LocalBroker, topics: tuple[str, str], refusing_sim: Simulator, tmp_path: Path,
) -> None:
    sasl = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
            "sasl_username": "streamd"}
    # The password pasted as its file's path, and a file with a second line: 78, unnamed.
    pw_file = tmp_path / "pw"
    pw_file.write_text(f"{PASSWORD}\nmore\n")
    for where in (PASSWORD, str(pw_file)):
        cfg = base_config(refusing_sim.url, broker.bootstrap, topics, tmp_path,
                          kafka={**sasl, "sasl_password_file": where})
        _config_error(cli(write_toml(tmp_path / "streamd.toml", cfg), "run"),
                      "kafka.sasl_password_file")
    # A good password, to a broker that speaks no SASL: check reports Kafka failing, and
    # neither secret is in its output.
    pw_file.write_text(PASSWORD + "\n")
    pw_file.chmod(0o600)
    cfg = base_config(refusing_sim.url, broker.bootstrap, topics, tmp_path,
                      kafka={**sasl, "sasl_password_file": str(pw_file)})
    result = cli(write_toml(tmp_path / "streamd.toml", cfg), "check", "--json", timeout=90)
    assert result.returncode == 1, result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["kafka"]["status"] == "fail"
    assert_no_secret(result.stdout, result.stderr)


def test_plain_http_to_a_remote_host_is_refused_before_any_request(tmp_path: Path) -> None:
    cfg = base_config("http://api.x.com", "127.0.0.1:1", ("t", "d"), tmp_path)
    started = time.monotonic()
    line = _config_error(cli(write_toml(tmp_path / "streamd.toml", cfg), "check"), "x.api_url")
    assert "x.allow_insecure" in line
    assert time.monotonic() - started < 30
