"""The `streamd` command line: argument parsing, exit codes, and dispatch.

Entry points for the commands live in their own modules and are imported only when their
command runs, so one missing or broken module fails only its own command.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import traceback
import typing
from collections.abc import Callable
from typing import NoReturn

from streamd import __version__
from streamd.config import Settings, load_settings
from streamd.errors import ConfigError, MissingSecretError, StreamdError
from streamd.ops.logs import configure_logging, current_level, get_logger, redact, register_secret
from streamd.ops.terminal import printable, printable_lines
from streamd.reasons import ExitCode

PROG = "streamd"
# Commands that take the rest of the command line unparsed and own their options.
_PASSTHROUGH = ("simulate", "demo")


class _UsageError(Exception):
    """argparse rejected the command line (exit 64, not argparse's 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise _UsageError(message)


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="CONFIG",
        help="TOML config file (default: $STREAMD_CONFIG, else /etc/streamd/streamd.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="X API v2 filtered stream to Kafka, at least once.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser("run", help="run the daemon in the foreground")
    _config_option(run)

    rules = commands.add_parser("rules", help="list, diff or sync the stream rules")
    rules.add_argument(
        "action",
        choices=("list", "diff", "sync"),
        help="list: server rules; diff: exit 1 unless in sync; sync: apply the config",
    )
    rules.add_argument("--dry-run", action="store_true", help="validate only, change nothing")
    rules.add_argument("--json", action="store_true", dest="as_json", help="JSON output")
    _config_option(rules)

    check = commands.add_parser("check", help="diagnose token, tier, rules and Kafka")
    check.add_argument("--json", action="store_true", dest="as_json", help="JSON output")
    _config_option(check)

    # Listed for --help only; main() hands their argv over before argparse sees it.
    commands.add_parser("simulate", help="run the bundled X API simulator", add_help=False)
    commands.add_parser("demo", help="the whole pipeline locally, no credentials", add_help=False)
    return parser


def _fail(message: str, code: int) -> int:
    # The message may quote a server or a library (an exception's text): no secret, and no
    # control character a terminal would obey.
    print(f"{PROG}: {printable(redact(message))}", file=sys.stderr)
    return code


def _load(config: str | None, *, changes_rules: bool = True) -> Settings:
    # An empty rule set under rules.mode = "sync" would delete every rule on the App, which
    # X cannot undo: refused by every command that may apply a sync, not by list/diff.
    settings = load_settings(config, refuse_empty_sync=changes_rules)
    configure_logging(settings.log.level, settings.log.format)
    # Defence in depth: whatever later code logs, these values never reach the output. The
    # inline values first, as written: registered even if the checks below refuse them.
    for secret in (settings.x.bearer_token, settings.kafka.sasl_password):
        if secret is not None:
            register_secret(secret.get_secret_value())
    # Read and check the secrets now, so a bad token file (two lines, a NUL, a BOM, the
    # token pasted as the path) stops every command with exit 78 before any request could
    # quote it. Only a missing token is the command's to report (check lists it as a
    # failed check; the daemon exits 78 on it).
    with contextlib.suppress(MissingSecretError):
        register_secret(settings.x.resolve_bearer_token())
    with contextlib.suppress(MissingSecretError):
        password = settings.kafka.resolve_sasl_password()
        if password is not None:
            register_secret(password)
    log = get_logger("streamd.cli")
    for warning in settings.warnings():
        log.warning("config.warning", message=warning)
    return settings


def _entry_point(module: str, name: str) -> Callable[..., int]:
    """`module.name`, imported now: the command modules are optional to each other."""
    function = getattr(importlib.import_module(module), name)
    return typing.cast(Callable[..., int], function)


def _run(settings: Settings) -> int:
    return _entry_point("streamd.daemon", "run_daemon")(settings)


def _rules(settings: Settings, args: argparse.Namespace) -> int:
    rules_command = _entry_point("streamd.commands.rules", "rules_command")
    return rules_command(settings, args.action, dry_run=args.dry_run, as_json=args.as_json)


def _check(settings: Settings, args: argparse.Namespace) -> int:
    return _entry_point("streamd.commands.check", "check_command")(settings, as_json=args.as_json)


def _passthrough(command: str, argv: list[str]) -> int:
    if command == "simulate":
        return _entry_point("streamd.simulator.cli", "main")(argv)
    return _entry_point("streamd.dev.demo", "main")(argv)


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in _PASSTHROUGH:
        return _passthrough(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    read_only = args.command == "rules" and args.action in ("list", "diff")
    try:
        settings = _load(args.config, changes_rules=not read_only)
    except ConfigError as exc:
        return _fail(f"config error: {exc}", ExitCode.CONFIG)
    handlers: dict[str, Callable[[], int]] = {
        "run": lambda: _run(settings),
        "rules": lambda: _rules(settings, args),
        "check": lambda: _check(settings, args),
    }
    return handlers[args.command]()


def main(argv: list[str] | None = None) -> int:
    """Run the `streamd` command line; returns the process exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        return int(_dispatch(args))
    except _UsageError:
        return ExitCode.USAGE
    except SystemExit as exc:  # --help / --version, or a command that calls sys.exit
        if exc.code is None:
            return ExitCode.OK
        if isinstance(exc.code, int):
            return exc.code
        print(printable(redact(str(exc.code))), file=sys.stderr)
        return ExitCode.INTERNAL
    except ConfigError as exc:
        return _fail(f"config error: {exc}", exc.exit_code)
    except StreamdError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if current_level() == "debug":
            print(printable_lines(redact(traceback.format_exc())), file=sys.stderr, end="")
        return _fail(f"internal error: {type(exc).__name__}: {exc}", ExitCode.INTERNAL)
