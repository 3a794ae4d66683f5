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
from streamd.config import Settings, load_settings, plan_directory, spool_dir_fix
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
    """Usage errors exit 64; the epilog (a command's examples) is printed as written."""

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise _UsageError(message)


# Each command's --help ends with these (1 to 3 each): command, then what it shows.
EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "": (
        ("streamd check -c streamd.toml", "will `run` work? one line per check, with its fix"),
        ("streamd run -c streamd.toml", "the daemon, in the foreground"),
        ("streamd simulate", "a local stand-in for X to try it all (README, Quickstart)"),
    ),
    "run": (
        ("streamd run -c streamd.toml", "X's filtered stream to Kafka until SIGTERM/Ctrl-C"),
        ("STREAMD_LOG__FORMAT=console streamd run -c streamd.toml",
         "any key from the environment: STREAMD_<SECTION>__<KEY>"),
        ("streamd check -c streamd.toml && streamd run -c streamd.toml",
         "start only when every check passes"),
    ),
    "rules": (
        ("streamd rules diff -c streamd.toml", "what sync would change; exit 1 unless in sync"),
        ("streamd rules sync --dry-run -c streamd.toml", "X validates the change; none made"),
        ("streamd rules list --json -c streamd.toml", "the rules on X, as JSON"),
    ),
    "check": (
        ("streamd check -c streamd.toml", "token, tier, rules (X's dry run), Kafka, spool"),
        ("streamd check --json -c streamd.toml", "the same as JSON, for scripts"),
    ),
    "connections": (
        ("streamd connections list -c streamd.toml",
         "the app's active connections; * marks this streamd's own"),
        ("streamd connections terminate --own -c streamd.toml",
         "end the connection a crashed streamd left (asks first on a terminal)"),
    ),
    "recover": (
        ("streamd recover --start 2026-12-01T10:00:00Z --end 2026-12-01T12:30:00Z "
         "-c streamd.toml", "X re-streams that window into kafka.topic; exit 0 when complete"),
    ),
    "connections list": (
        ("streamd connections list -c streamd.toml", "who holds the app's connection slots"),
        ("streamd connections list --all --json -c streamd.toml",
         "with the disconnected ones and their reason, as JSON"),
    ),
    "connections terminate": (
        ("streamd connections terminate --own --yes -c streamd.toml",
         "end this streamd's own recorded connection, without asking"),
        ("streamd connections terminate --uuid ID -c streamd.toml",
         "end one connection, by the id `connections list` shows"),
        ("streamd connections terminate --endpoint filtered_stream -c streamd.toml",
         "end every filtered-stream connection of the app"),
    ),
}


def examples_epilog(examples: typing.Iterable[tuple[str, str]]) -> str:
    """An `examples:` block for a parser's epilog (printed as written by _Parser)."""
    lines = ["examples:"]
    for command, what in examples:
        lines += [f"  {command}", f"      {what}"]
    return "\n".join(lines)


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
    rules.add_argument("--dry-run", action="store_true",
                       help="sync only: X validates the change, nothing is changed")
    rules.add_argument("--json", action="store_true", dest="as_json", help="JSON output")
    _config_option(rules)

    check = commands.add_parser("check", help="diagnose token, tier, rules and Kafka")
    check.add_argument("--json", action="store_true", dest="as_json", help="JSON output")
    _config_option(check)

    connections = commands.add_parser(
        "connections", help="list or terminate the app's streaming connections (X's API)")
    connection_actions = connections.add_subparsers(
        dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    listing = connection_actions.add_parser(
        "list", help="the app's connections; * marks this streamd's own")
    listing.add_argument("--all", action="store_true", dest="include_inactive",
                         help="also the disconnected ones, with their reason")
    listing.add_argument("--json", action="store_true", dest="as_json", help="JSON output")
    _config_option(listing)
    terminate = connection_actions.add_parser(
        "terminate", help="terminate connections; exit 0 only if every one succeeded")
    which = terminate.add_mutually_exclusive_group(required=True)
    which.add_argument("--own", action="store_true",
                       help="the connection this streamd recorded as its own (spool.dir)")
    which.add_argument("--uuid", nargs="+", metavar="ID", help="these connection ids")
    which.add_argument("--endpoint", metavar="NAME",
                       help="every connection on this endpoint, e.g. filtered_stream")
    which.add_argument("--all", action="store_true", dest="everything",
                       help="every connection of the app (X allows 25 per 15 minutes)")
    terminate.add_argument("--yes", action="store_true",
                           help="do not ask for confirmation on a terminal")
    _config_option(terminate)

    recover = commands.add_parser(
        "recover", help="re-stream a past window (at most 24 h back) into the topic")
    recover.add_argument("--start", required=True, metavar="RFC3339",
                         help="the window's start, e.g. 2026-12-01T10:00:00Z")
    recover.add_argument("--end", required=True, metavar="RFC3339",
                         help="the window's end (not in the future)")
    _config_option(recover)

    # Listed for --help only; main() hands their argv over before argparse sees it.
    commands.add_parser("simulate", help="run the bundled X API simulator", add_help=False)
    commands.add_parser("demo", help="the whole pipeline locally, no credentials", add_help=False)
    nested = {"connections list": listing, "connections terminate": terminate}
    for name, examples in EXAMPLES.items():
        target = nested.get(name) or (commands.choices.get(name) if name else parser)
        if target is not None:
            target.epilog = examples_epilog(examples)
    return parser


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace
            ) -> argparse.ArgumentParser:
    """The innermost (sub)parser the command line chose: its usage fits an error."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            name = getattr(args, action.dest, None)
            if name in action.choices:
                return _chosen(action.choices[name], args)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parse_args, but what a command does not know is reported with that command's usage
    (`streamd run --foo` shows run's), and options that mean nothing here are refused."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _chosen(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "rules" and args.dry_run and args.action != "sync":
        _chosen(parser, args).error(
            f"--dry-run applies to `rules sync` only: `rules {args.action}` changes nothing")
    return args


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
    try:
        return _entry_point("streamd.daemon", "run_daemon")(settings)
    except ConfigError as exc:
        # A spool.dir this user cannot create or write: say why and where else it could go.
        plan = plan_directory(settings.spool.dir) if exc.key == "spool.dir" else None
        if plan is None or plan.problem is None:
            raise
        raise ConfigError(exc.key, f"{exc.problem}; {plan.problem} — fix: {spool_dir_fix()}"
                          ) from None


def _rules(settings: Settings, args: argparse.Namespace) -> int:
    rules_command = _entry_point("streamd.commands.rules", "rules_command")
    return rules_command(settings, args.action, dry_run=args.dry_run, as_json=args.as_json)


def _check(settings: Settings, args: argparse.Namespace) -> int:
    return _entry_point("streamd.commands.check", "check_command")(settings, as_json=args.as_json)


def _connections(settings: Settings, args: argparse.Namespace) -> int:
    module = importlib.import_module("streamd.commands.connections")
    if args.action == "list":
        return typing.cast(int, module.connections_command(
            settings, "list", as_json=args.as_json, include_inactive=args.include_inactive))
    target = module.Target(own=args.own, uuids=tuple(args.uuid or ()),
                           endpoint=args.endpoint, everything=args.everything)
    return typing.cast(int, module.connections_command(
        settings, "terminate", target=target, yes=args.yes))


def _passthrough(command: str, argv: list[str]) -> int:
    if command == "simulate":
        return _entry_point("streamd.simulator.cli", "main")(argv)
    return _entry_point("streamd.dev.demo", "main")(argv)


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in _PASSTHROUGH:
        return _passthrough(argv[0], argv[1:])
    parser = build_parser()
    args = _parse(parser, argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    read_only = (args.command == "rules" and args.action in ("list", "diff")) or (
        args.command == "connections")
    try:
        settings = _load(args.config, changes_rules=not read_only)
    except ConfigError as exc:
        return _fail(f"config error: {exc}", ExitCode.CONFIG)
    handlers: dict[str, Callable[[], int]] = {
        "run": lambda: _run(settings),
        "rules": lambda: _rules(settings, args),
        "check": lambda: _check(settings, args),
        "connections": lambda: _connections(settings, args),
        "recover": lambda: _entry_point("streamd.commands.recover", "recover_command")(
            settings, args.start, args.end),
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
