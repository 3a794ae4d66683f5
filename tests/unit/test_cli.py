"""streamd.cli: exit codes, config errors, dispatch to the command entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamd import __version__
from streamd.cli import main
from streamd.errors import CredentialsError
from streamd.logs import clear_secrets, configure_logging

TOKEN = "AAAAcli-secret-token%3Dxyz"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("STREAMD_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)
    yield
    clear_secrets()
    configure_logging("info", "json", sys.__stderr__)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "streamd.toml"
    path.write_text(
        f'[x]\nbearer_token = "{TOKEN}"\n[stream]\nstall_timeout = 3\n'
        '[[rules.rule]]\nvalue = "cats"\n',
        encoding="utf-8",
    )
    return path


def fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **functions: Any) -> None:
    module = types.ModuleType(name)
    for attr, function in functions.items():
        setattr(module, attr, function)
    monkeypatch.setitem(sys.modules, name, module)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"streamd {__version__}"


def test_python_dash_m_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamd", "--version"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"streamd {__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["--nope"],
        ["rules"],
        ["rules", "frobnicate"],
        ["run", "--extra"],
        ["check", "-c"],
    ],
)
def test_bad_command_line_exits_64(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 64
    assert "usage:" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "--help"]) == 0
    assert "--dry-run" in capsys.readouterr().out


def test_config_error_exits_78_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'[x]\nbearer_token = "{TOKEN}"\n[kafka]\ncompression = "brotli"\n')
    monkeypatch.setenv("STREAMD_X__BEARER_TOKEN", TOKEN)
    assert main(["check", "-c", str(path)]) == 78
    out = capsys.readouterr()
    (line,) = out.err.splitlines()
    assert line.startswith("streamd: config error: ")
    assert "kafka.compression" in line
    assert "brotli" in line
    assert TOKEN not in out.err + out.out


def test_missing_config_file_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-c", str(tmp_path / "absent.toml")]) == 78
    assert "absent.toml" in capsys.readouterr().err


def test_config_from_environment_variable(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Any] = []
    fake_module(monkeypatch, "streamd.check", check_command=lambda s, as_json: seen.append(s) or 0)
    monkeypatch.setenv("STREAMD_CONFIG", str(config))
    assert main(["check"]) == 0
    assert seen[0].source_path == config


def test_dispatch_run_rules_check(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[Any, ...]] = []
    fake_module(monkeypatch, "streamd.daemon", run_daemon=lambda s: calls.append(("run", s)) or 0)
    fake_module(
        monkeypatch,
        "streamd.rules_cli",
        rules_command=lambda s, action, dry_run, as_json: (
            calls.append(("rules", action, dry_run, as_json)) or 1
        ),
    )
    fake_module(
        monkeypatch,
        "streamd.check",
        check_command=lambda s, as_json: calls.append(("check", as_json)) or 0,
    )
    assert main(["run", "-c", str(config)]) == 0
    assert main(["rules", "diff", "-c", str(config)]) == 1
    assert main(["rules", "sync", "--dry-run", "--json", "-c", str(config)]) == 1
    assert main(["check", "--json", "-c", str(config)]) == 0
    assert calls[0][0] == "run"
    assert calls[0][1].stream.stall_timeout == 3
    assert calls[1:] == [
        ("rules", "diff", False, False),
        ("rules", "sync", True, True),
        ("check", True),
    ]
    # The settings' warnings were logged (stall_timeout < 21), as JSON on stderr.
    err = capsys.readouterr().err
    assert '"event":"config.warning"' in err
    assert "stream.stall_timeout" in err


def test_streamd_error_exit_code_and_redacted_message(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(settings: Any) -> int:
        raise CredentialsError(f"401 for Bearer {TOKEN}")

    fake_module(monkeypatch, "streamd.daemon", run_daemon=refuse)
    assert main(["run", "-c", str(config)]) == 77
    err = capsys.readouterr().err
    assert "401 for Bearer ***" in err
    assert TOKEN not in err


def test_unexpected_exception_exits_70_with_one_line(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def crash(settings: Any) -> int:
        raise RuntimeError(f"bug near {TOKEN}")

    fake_module(monkeypatch, "streamd.daemon", run_daemon=crash)
    assert main(["run", "-c", str(config)]) == 70
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "streamd: internal error: RuntimeError: bug near ***"
    assert "Traceback" not in err

    monkeypatch.setenv("STREAMD_LOG__LEVEL", "debug")
    assert main(["run", "-c", str(config)]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert TOKEN not in err


def test_missing_command_module_exits_70(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "streamd.check", None)  # makes the import fail
    assert main(["check", "-c", str(config)]) == 70
    assert "streamd.check" in capsys.readouterr().err


def test_passthrough_commands_get_raw_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []
    fake_module(monkeypatch, "streamd.simulator.cli", main=lambda a: calls.append(("sim", a)) or 0)
    fake_module(monkeypatch, "streamd.demo", main=lambda a: calls.append(("demo", a)) or 3)
    assert main(["simulate", "--port", "0", "--help"]) == 0
    assert main(["demo", "-c", "whatever", "--tweets", "5"]) == 3
    assert calls == [
        ("sim", ["--port", "0", "--help"]),
        ("demo", ["-c", "whatever", "--tweets", "5"]),
    ]


def test_empty_sync_is_refused_only_by_commands_that_apply_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """rules.mode = "sync" with no rules would delete every rule on the App: run, check and
    rules sync exit 78 naming the key; list and diff only read, so they go ahead."""
    path = tmp_path / "empty.toml"
    path.write_text(f'[x]\nbearer_token = "{TOKEN}"\n[rules]\nmode = "sync"\n',
                    encoding="utf-8")
    ran: list[str] = []
    fake_module(monkeypatch, "streamd.daemon", run_daemon=lambda s: ran.append("run") or 0)
    fake_module(monkeypatch, "streamd.check", check_command=lambda s, as_json: 0)
    fake_module(monkeypatch, "streamd.rules_cli",
                rules_command=lambda s, action, dry_run, as_json: ran.append(action) or 0)
    for argv in (["run"], ["check"], ["rules", "sync"], ["rules", "sync", "--dry-run"]):
        assert main([*argv, "-c", str(path)]) == 78
        err = capsys.readouterr().err
        assert "rules.rule" in err
        assert "allow_empty" in err
    assert main(["rules", "list", "-c", str(path)]) == 0
    assert main(["rules", "diff", "-c", str(path)]) == 0
    assert ran == ["list", "diff"]
    assert TOKEN not in capsys.readouterr().err
