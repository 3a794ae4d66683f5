"""`streamd connections list [--all] [--json]` and `streamd connections terminate (--own |
--uuid ID... | --endpoint NAME | --all) [--yes]`: the app's streaming connections through
X's Connections API (README "Connection ownership").

streamd's own connection is the one the daemon recorded in its spool (`spool.dir`); the
spool is read without taking it, so these commands work beside a running daemon.

Exit codes: 0 success (terminate: every termination succeeded, or there was nothing to
terminate); 1 a termination failed or was declined at the prompt; 64 bad usage; 77 X
refused the credentials; 70 the Connections API failed or is not available to the app.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import anyio
import orjson

from streamd.config import Settings
from streamd.errors import StreamdError
from streamd.kafka.spool import held_by_a_daemon, peek_meta
from streamd.ops.logs import get_logger, redact
from streamd.ops.terminal import json_printable, printable, printable_lines
from streamd.reasons import ExitCode
from streamd.x.connections import (
    ENDPOINT_IDS,
    ConnectionsApi,
    KillReport,
    XConnection,
)
from streamd.x.ownership import OWN_CONNECTION_KEY, OwnRecord, describe
from streamd.x.stream import make_client

__all__ = ["Target", "connections_command", "format_table"]

FAILED_EXIT = 1
_COLUMNS = ("OWN", "ID", "ENDPOINT", "CLIENT IP", "CONNECTED AT", "DISCONNECTED AT", "REASON")


@dataclass(frozen=True, slots=True)
class Target:
    """What `terminate` ends: exactly one of these is set."""

    own: bool = False
    uuids: tuple[str, ...] = ()
    endpoint: str | None = None
    everything: bool = False

    def describe(self) -> str:
        if self.own:
            return "streamd's own connection"
        if self.uuids:
            return f"{len(self.uuids)} connection(s) by id"
        if self.endpoint is not None:
            return f"every connection on {self.endpoint}"
        return "every connection of the app"


def own_record(settings: Settings) -> OwnRecord:
    return OwnRecord.from_text(peek_meta(settings.spool.dir, OWN_CONNECTION_KEY))


def _cell(value: str | None) -> str:
    return printable(value) if value else "-"


def format_table(connections: Sequence[XConnection], own_id: str | None) -> str:
    rows = [
        ("*" if c.id is not None and c.id == own_id else "", _cell(d["id"]),
         _cell(d["endpoint"]), _cell(d["client_ip"]), _cell(d["connected_at"]),
         _cell(d["disconnected_at"]), _cell(d["disconnect_reason"]))
        for c, d in ((c, describe(c)) for c in connections)
    ]
    widths = [max(len(r[i]) for r in (_COLUMNS, *rows)) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in (_COLUMNS, *rows)]
    lines.append(f"{len(rows)} connection{'s' if len(rows) != 1 else ''}"
                 + ("; * = this streamd's own (recorded in spool.dir)" if own_id else ""))
    return "\n".join(lines)


def _print_json(data: Any, out: TextIO) -> None:
    out.write(json_printable(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()) + "\n")


async def list_action(
    api: ConnectionsApi, settings: Settings, *, include_inactive: bool, as_json: bool,
    out: TextIO,
) -> int:
    own_id = own_record(settings).id
    found = await api.list(status="all" if include_inactive else "active", endpoint=None)
    if as_json:
        _print_json({
            "connections": [describe(c) | {"active": c.active, "own": c.id == own_id}
                            for c in found],
            "count": len(found),
            "own_id": own_id,
            "own_held_by_a_running_streamd": held_by_a_daemon(settings.spool.dir),
        }, out)
    else:
        out.write(format_table(found, own_id) + "\n")
    return ExitCode.OK


async def terminate_action(
    api: ConnectionsApi, settings: Settings, target: Target, *, confirm: Callable[[str], bool],
    out: TextIO,
) -> int:
    log = get_logger("streamd.cli")
    if target.own:
        own_id = own_record(settings).id
        active = await api.list(status="active", endpoint=None)
        ids = [c.id for c in active if c.id is not None and c.id == own_id]
        if not ids:
            out.write("no active connection is recorded as this streamd's own; nothing done\n")
            return ExitCode.OK
        question = f"Terminate streamd's own connection {printable(ids[0])}?"
    elif target.uuids:
        ids = list(target.uuids)
        question = f"Terminate {len(ids)} connection(s): {', '.join(map(printable, ids))}?"
    else:
        endpoint = target.endpoint
        active = await api.list(status="active", endpoint=endpoint)
        if not active:
            out.write(f"no active connection on {endpoint or 'any endpoint'}; nothing done\n")
            return ExitCode.OK
        ids = [c.id or "?" for c in active]
        question = (f"Terminate {target.describe()} ({len(active)} active: "
                    f"{', '.join(map(printable, ids))})?")
    if not confirm(question):
        out.write("declined; nothing done\n")
        return FAILED_EXIT
    report: KillReport
    if target.own or target.uuids:
        report = await api.terminate(ids)
    elif target.endpoint is not None:
        report = await api.terminate_endpoint(target.endpoint)
    else:
        report = await api.terminate_all()
    for kill in report.results:
        if kill.success:
            out.write(f"terminated {printable(kill.uuid)}\n")
        else:
            why = printable(kill.error or "no reason given")
            out.write(f"failed     {printable(kill.uuid)}: {why}\n")
    if report.succeeded:
        log.info("connections.terminated", ids=list(report.succeeded), why="cli",
                 detail=target.describe())
    failed = len(report.failed)
    out.write(f"{len(report.succeeded)} terminated, {failed} failed\n")
    return ExitCode.OK if failed == 0 else FAILED_EXIT


def _ask(question: str) -> bool:
    """On a terminal: ask. Elsewhere (a script, a pipe): no one to ask; proceed."""
    if not sys.stdin.isatty():
        return True
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def connections_command(
    settings: Settings,
    action: str,
    *,
    as_json: bool = False,
    include_inactive: bool = False,
    target: Target | None = None,
    yes: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`streamd connections ACTION`: runs its own event loop; returns the exit code."""
    stdout = sys.stdout if out is None else out
    stderr = sys.stderr if err is None else err
    if target is not None and target.endpoint is not None and target.endpoint not in ENDPOINT_IDS:
        stderr.write(f"streamd connections: unknown endpoint {printable(target.endpoint)!r}; "
                     f"one of: {', '.join(ENDPOINT_IDS)}\n")
        return ExitCode.USAGE

    async def main() -> int:
        token = settings.x.resolve_bearer_token()
        async with make_client(settings, token) as client:
            api = ConnectionsApi(client)
            if action == "list":
                return await list_action(api, settings, include_inactive=include_inactive,
                                         as_json=as_json, out=stdout)
            assert target is not None
            return await terminate_action(
                api, settings, target, confirm=(lambda _: True) if yes else _ask, out=stdout)

    try:
        return anyio.run(main, backend="asyncio")
    except StreamdError as exc:
        stderr.write(f"streamd connections: {printable_lines(redact(str(exc)))}\n")
        return int(exc.exit_code)

