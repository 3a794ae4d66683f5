"""`streamd rules list|diff|sync [--dry-run] [--json]`.

Exit codes: 0 success (and, for `diff`, in sync); 1 `diff` found a difference; 78 the rules
cannot be applied (invalid, over the cap or length); 77 X refused the credentials. For the
CLI a failed sync is always non-zero: `rules.on_error = "continue"` only governs the daemon,
which may keep streaming on the server's rules; a person running `sync` wants to know.

With `rules.mode = "off"`, `sync` changes nothing (streamd does not manage the rules) and
`diff` compares as mode "sync" would, so an operator can still see the difference.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import anyio
import orjson

from streamd.config import RuleSpec, Settings
from streamd.errors import RulesSyncError, StreamdError
from streamd.ops.logs import get_logger, redact
from streamd.ops.metrics import Metrics
from streamd.ops.terminal import json_printable, printable, printable_lines
from streamd.reasons import ExitCode
from streamd.x.rules import (
    RulesApi,
    RulesPlan,
    ServerRule,
    SyncResult,
    plan_rules,
    sync_rules,
    terminal_policy,
)
from streamd.x.stream import make_client

DIFF_EXIT = 1

# The daemon retries a failing rules endpoint for about 30 s; a person at a terminal
# should hear about an unreachable server in seconds (1 + 2 + 4 s of backoff).
CLI_MAX_ATTEMPTS = 4
ACTIONS = ("list", "diff", "sync")


def _rule_json(rule: RuleSpec | ServerRule) -> dict[str, Any]:
    out: dict[str, Any] = {"id": rule.id} if isinstance(rule, ServerRule) else {}
    out["value"] = rule.value
    if rule.tag is not None:
        out["tag"] = rule.tag
    return out


# Rule values, tags and ids come from X (or from whoever else edits the App's rules): every
# one is printed through terminal.printable, so a control character in them is shown as an
# escape and never acts on the terminal (clear the screen, rewrite a line, reorder text).


def _tag_suffix(tag: str | None) -> str:
    return f"  (tag: {printable(tag)})" if tag is not None else ""


def _added_line(rule: RuleSpec) -> str:
    return f"+ {printable(rule.value)}{_tag_suffix(rule.tag)}"


def _deleted_line(rule: ServerRule) -> str:
    return f"- {printable(rule.value)}{_tag_suffix(rule.tag)}  [id {printable(rule.id)}]"


def _print_json(data: Any, out: TextIO) -> None:
    # orjson escapes C0 controls; C1 and bidi characters it writes raw.
    out.write(json_printable(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()) + "\n")


def format_table(rules: list[ServerRule]) -> str:
    """id, tag, value columns; the value last so long values do not break alignment.
    Escaped before the widths are measured, so the columns line up as printed."""
    header = ("ID", "TAG", "VALUE")
    rows = [(printable(r.id), printable(r.tag or "-"), printable(r.value)) for r in rules]
    id_width = max(len(header[0]), *(len(r[0]) for r in rows)) if rows else len(header[0])
    tag_width = max(len(header[1]), *(len(r[1]) for r in rows)) if rows else len(header[1])
    lines = [f"{a:<{id_width}}  {b:<{tag_width}}  {c}" for a, b, c in (header, *rows)]
    lines.append(f"{len(rules)} rule{'s' if len(rules) != 1 else ''}")
    return "\n".join(lines)


def _list(rules: list[ServerRule], as_json: bool, out: TextIO) -> int:
    if as_json:
        _print_json({"rules": [_rule_json(r) for r in rules], "count": len(rules)}, out)
    else:
        out.write(format_table(rules) + "\n")
    return ExitCode.OK


def _diff(plan: RulesPlan, as_json: bool, out: TextIO) -> int:
    if as_json:
        _print_json(
            {
                "in_sync": plan.in_sync,
                "add": [_rule_json(r) for r in plan.to_add],
                "delete": [_rule_json(r) for r in plan.to_delete],
                "unchanged": len(plan.unchanged),
                "conflicts": [_rule_json(r) for r in plan.conflicts],
            },
            out,
        )
    else:
        _write_changes(out, plan.to_add, plan.to_delete)
        for conflict in plan.conflicts:
            out.write(f"! {printable(conflict.value)}{_tag_suffix(conflict.tag)}  "
                      f"[id {printable(conflict.id)}] kept: mode 'add' cannot change its tag\n")
        state = "in sync" if plan.in_sync else "not in sync"
        out.write(
            f"{state}: {len(plan.to_add)} to add, {len(plan.to_delete)} to delete, "
            f"{len(plan.unchanged)} unchanged\n"
        )
    return ExitCode.OK if plan.in_sync else DIFF_EXIT


def _write_changes(
    out: TextIO, added: Sequence[RuleSpec], deleted: Sequence[ServerRule]
) -> None:
    for rule in added:
        out.write(_added_line(rule) + "\n")
    for server_rule in deleted:
        out.write(_deleted_line(server_rule) + "\n")


def _sync_report(result: SyncResult, as_json: bool, out: TextIO) -> int:
    if as_json:
        _print_json(
            {
                "dry_run": result.dry_run,
                "added": [_rule_json(r) for r in result.added],
                "deleted": [_rule_json(r) for r in result.deleted],
                "unchanged": len(result.unchanged),
                "active": result.active,
                "requests": result.requests,
            },
            out,
        )
        return ExitCode.OK
    _write_changes(out, result.added, result.deleted)
    verb = "would add" if result.dry_run else "added"
    gone = "would delete" if result.dry_run else "deleted"
    tail = " (dry run: validated by X, nothing changed)" if result.dry_run else ""
    out.write(
        f"{verb} {len(result.added)}, {gone} {len(result.deleted)}, unchanged "
        f"{len(result.unchanged)}; {result.active} rules on the server{tail}\n"
    )
    return ExitCode.OK


def _report_failure(exc: StreamdError, as_json: bool, out: TextIO, err: TextIO) -> int:
    # The message may quote X or a library (httpx quotes a refused header whole): secrets
    # scrubbed, and on the terminal every control character escaped.
    message = redact(str(exc))
    if as_json:
        data: dict[str, Any] = {"error": type(exc).__name__, "message": message}
        if isinstance(exc, RulesSyncError):
            data.update(
                reason=exc.reason,
                summary=redact(exc.summary),
                applied=exc.applied,
                invalid=[
                    {"value": r.value, "tag": r.tag,
                     "details": [redact(d) for d in r.details]}
                    for r in exc.invalid
                ],
            )
        _print_json(data, out)
    err.write(f"streamd rules: {printable_lines(message)}\n")
    return int(exc.exit_code)


async def run_rules_action(
    api: RulesApi,
    settings: Settings,
    action: str,
    *,
    dry_run: bool,
    as_json: bool,
    out: TextIO,
    metrics: Metrics | None = None,
) -> int:
    """One action against `api` (the testable core of rules_command)."""
    rules_settings = settings.rules
    if action == "list":
        return _list(await api.list_rules(), as_json, out)
    if action == "diff":
        desired = settings.resolved_rules()
        mode = "sync" if rules_settings.mode == "off" else rules_settings.mode
        plan = plan_rules(
            desired, await api.list_rules(), mode=mode, max_rules=rules_settings.max_rules
        )
        return _diff(plan, as_json, out)
    if rules_settings.mode == "off":
        out.write("rules.mode is \"off\": streamd does not manage the rules; nothing done\n")
        return ExitCode.OK
    result = await sync_rules(
        api, settings.resolved_rules(), rules_settings, get_logger("streamd.x.rules"),
        metrics or Metrics(), trigger="cli", dry_run=dry_run,
    )
    return _sync_report(result, as_json, out)


def rules_command(
    settings: Settings,
    action: str,
    *,
    dry_run: bool,
    as_json: bool,
    out: TextIO | None = None,
    err: TextIO | None = None,
    api_factory: Callable[[Any], RulesApi] | None = None,
) -> int:
    """`streamd rules ACTION`: runs its own event loop; returns the exit code."""
    stdout = sys.stdout if out is None else out
    stderr = sys.stderr if err is None else err
    if action not in ACTIONS:
        stderr.write(f"streamd rules: unknown action {action!r} (list, diff, sync)\n")
        return ExitCode.USAGE
    endpoint = settings.stream.stream
    if not endpoint.rules:
        stderr.write(
            f"streamd rules: stream.endpoint = {endpoint.name!r} takes no rules: X applies "
            "rules to the filtered stream only (stream.endpoint = \"filtered\"); this "
            f"stream carries its whole share ({endpoint.path})\n")
        return ExitCode.CONFIG

    async def main() -> int:
        token = settings.x.resolve_bearer_token()
        metrics = Metrics()
        async with make_client(settings, token) as client:
            api = api_factory(client) if api_factory else RulesApi(
                client, policy=terminal_policy(CLI_MAX_ATTEMPTS)
            )
            return await run_rules_action(
                api, settings, action, dry_run=dry_run, as_json=as_json, out=stdout,
                metrics=metrics,
            )

    try:
        return anyio.run(main, backend="asyncio")
    except StreamdError as exc:
        return _report_failure(exc, as_json, stdout, stderr)
