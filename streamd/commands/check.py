"""`streamd check`: the operator's first command. One line per check, a verdict, exit 0 only
when no check failed (a WARN passes).

Checks, in order: config, token, stream_access, rate_limits, rules, kafka, producer, topics,
spool, ha (the election's group, streamd.ha.group). A check whose prerequisite failed is
reported SKIP rather than guessed at.

A green check predicts `streamd run`: the configured rules are validated by X with the
rules endpoint's dry run (`dry_run=true`: nothing changes), as run validates them before it
applies them; a producer is started with the daemon's settings and stopped, publishing
nothing (with enable_idempotence its start asks for a producer id, which some brokers
refuse); the spool directory is judged by looking only: check creates nothing, it says what
run would create.

Three layers, as in streamd.x.rules:

* probes (`probe_x`, `probe_kafka`, `probe_spool`) do the I/O and return plain facts;
* pure judges (`judge_token`, `judge_rate_limits`, `judge_rules`, ...) turn facts into
  `CheckResult`s, with an injectable clock and time zone so they are tested without I/O;
* `run_checks` orders them; `check_command` renders text or JSON and picks the exit code.

Stream access is deliberately NOT probed by connecting: a test connect takes the stream's
only connection slot (a running daemon would be kicked or refused) and counts against the
50-connects-per-15-minutes window. X answers the rules endpoint with 403 client-forbidden
to the same tiers it refuses the stream to, so the rules answer stands in for it.

The bearer token is never printed: every line goes through `logs.redact` and the token
itself is scrubbed from the output as a second guard.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from functools import cached_property
from pathlib import Path
from typing import Any, TextIO

import anyio
import httpx
import orjson

from streamd.commands.connections import own_record
from streamd.config import RuleSpec, Settings, plan_directory, spool_dir_fix
from streamd.errors import (
    AnswerTooLarge,
    ConfigError,
    ConnectionsUnavailable,
    CredentialsError,
    RulesError,
    RulesSyncError,
    StreamdError,
)
from streamd.ha.group import GroupView, judge_group, probe_group
from streamd.kafka.producer import try_producer
from streamd.kafka.publisher import producer_kwargs
from streamd.kafka.spool import held_by_a_daemon
from streamd.ops.logs import redact
from streamd.ops.metrics import Metrics
from streamd.ops.terminal import json_printable, printable
from streamd.reasons import ExitCode, Reason
from streamd.x.body import read_answer
from streamd.x.classify import Classification, classify_answer, classify_transport_error
from streamd.x.connections import ConnectionsApi, XConnection
from streamd.x.ownership import describe
from streamd.x.rules import (
    PAGE_SIZE,
    RULES_PATH,
    RulesApi,
    ServerRule,
    SyncResult,
    check_locally,
    plan_rules,
    rules_of,
    sync_rules,
    terminal_policy,
)
from streamd.x.stream import make_client
from streamd.x.wire import ABOUT_BLANK, Answer, parse_answer

FAILED_EXIT = 1  # at least one check failed ("exit 0 only if all pass")

X_TIMEOUT = 10.0  # seconds for the one rules GET (the shared client has no read timeout)
KAFKA_DEADLINE = 5.0  # seconds for bootstrap + metadata
PROBE_NAME = ".streamd-check-probe"

CHECK_NAMES = (
    "config", "token", "stream_access", "rate_limits", "rules", "connections", "kafka",
    "producer", "topics", "spool", "ha",
)

TIER_FIX = (
    "this app's access level has no filtered stream (Basic/Free): move the app to a Project "
    "on a tier with filtered stream (Pro/Enterprise or pay-per-use)"
)
USER_CONTEXT_FIX = "a user-context token: use the app's bearer token (OAuth 2.0 App-Only)"
SYNC_FIX = "run `streamd rules sync` (`streamd run` also syncs at start-up)"
RULE_SYNTAX_FIX = (
    "correct the rule's value in the config (X's rule syntax: "
    "https://docs.x.com/x-api/posts/filtered-stream/integrate/build-a-rule); "
    "`streamd rules sync --dry-run` shows X's whole answer"
)
IDEMPOTENCE_FIX = "set kafka.enable_idempotence = false"


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    Status.OK: "[ OK ]", Status.WARN: "[WARN]", Status.FAIL: "[FAIL]", Status.SKIP: "[SKIP]",
}


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    fix: str | None = None

    def line(self) -> str:
        text = f"{self.status.label} {self.name}: {self.detail}"
        return f"{text} — fix: {self.fix}" if self.fix else text

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": str(self.status), "detail": self.detail,
                "fix": self.fix}


def skipped(name: str, because: str) -> CheckResult:
    return CheckResult(name, Status.SKIP, f"skipped: {because}")


def passed(results: Sequence[CheckResult]) -> bool:
    return all(r.status is not Status.FAIL for r in results)


# --- facts gathered by the probes -------------------------------------------------------


@dataclass(frozen=True)
class XAnswer:
    """The rules endpoint's answer to one GET (headers lower-cased)."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @cached_property
    def read(self) -> Answer:
        """What X said, read once (wire.py)."""
        return parse_answer(self.status, self.headers, self.body)

    @cached_property
    def verdict(self) -> Classification:
        """The answer classified as a connect answer would be: the rules GET is app-only
        like the stream, and refused to the same apps."""
        return classify_answer(self.read)


@dataclass(frozen=True)
class XProbe:
    answer: XAnswer | None = None
    transport_error: str | None = None  # no answer at all
    rules: tuple[ServerRule, ...] | None = None  # every server rule, when the GET succeeded
    rules_error: str | None = None  # pagination beyond the first page failed
    # X's verdict on the configured change (the dry run `streamd run` makes before it
    # applies it): what it would do, or why it cannot. Both None: nothing was asked.
    dry_run: SyncResult | None = None
    dry_run_error: StreamdError | None = None
    # The Connections API: the active connections on filtered_stream, or why not.
    connections: tuple[XConnection, ...] | None = None
    connections_error: str | None = None
    connections_unavailable: int | None = None  # 403/404: the app has no such API


@dataclass(frozen=True)
class KafkaProbe:
    topics: Mapping[str, int] = field(default_factory=dict)  # name -> partition count
    brokers: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class ProducerProbe:
    """A producer with the daemon's settings, started and stopped, publishing nothing."""

    error: str | None = None  # why it did not start
    # With enable_idempotence: the same producer without idempotence started (so the broker
    # refused the producer id), and whether it was refused for want of permission.
    idempotence_refused: bool = False
    unauthorized: bool = False


@dataclass(frozen=True)
class SpoolProbe:
    path: Path
    error: str | None = None
    free_bytes: int | None = None
    to_create: tuple[Path, ...] = ()  # what `streamd run` would create (check creates none)


# --- pure judges --------------------------------------------------------------------------


def judge_config(settings: Settings) -> CheckResult:
    """Loading already validated the file (a bad one exits 78 before we run); here: what
    loading cannot see (secrets files, the rules file) and accepted-but-odd values."""
    where = str(settings.source_path) if settings.source_path else "built-in settings"
    try:
        rules = settings.resolved_rules()
        settings.kafka.resolve_sasl_password()
    except ConfigError as exc:
        return CheckResult("config", Status.FAIL, f"{where}: {exc}",
                           f"correct config key {exc.key!r}")
    mode = settings.rules.mode
    detail = f"{where} is valid; {len(rules)} rule(s) configured, rules.mode = {mode}"
    warnings = settings.warnings()
    if warnings:
        return CheckResult("config", Status.WARN, f"{detail}; " + "; ".join(warnings))
    return CheckResult("config", Status.OK, detail)


def token_source(settings: Settings) -> str:
    """Where the token comes from, never what it is."""
    if settings.x.bearer_token is not None:
        return "x.bearer_token"
    if settings.x.bearer_token_file is not None:
        return f"x.bearer_token_file ({settings.x.bearer_token_file})"
    return "$CREDENTIALS_DIRECTORY/x_bearer_token"


def _is_tier_refusal(verdict: Classification) -> bool:
    # v1.1 code 453: "access to a subset of endpoints only" (the app's tier).
    return verdict.problem_type == "client-forbidden" or 453 in verdict.codes


def _said(answer: XAnswer) -> str:
    """`HTTP 403 client-forbidden (client-not-enrolled): detail` — X's words, bounded."""
    verdict = answer.verdict
    parts = [f"HTTP {answer.status}"]
    if verdict.problem_type and verdict.problem_type != ABOUT_BLANK:
        parts.append(verdict.problem_type)
        refusal = answer.read.top.reason if answer.read.top is not None else None
        if refusal:
            parts.append(f"({refusal})")
    text = " ".join(parts)
    return f"{text}: {verdict.detail}" if verdict.detail else text


def judge_token(settings: Settings, probe: XProbe) -> CheckResult:
    """The rules GET is app-only, like the stream (`/2/users/me` would refuse an app-only
    token even when it is perfect, so it cannot serve here)."""
    source = token_source(settings)
    if probe.answer is None:
        return CheckResult(
            "token", Status.FAIL,
            f"cannot reach X at {settings.x.api_url}: {probe.transport_error}",
            "check x.api_url, DNS, proxy settings and outbound HTTPS from this host",
        )
    answer = probe.answer
    if answer.status == 200:
        return CheckResult(
            "token", Status.OK,
            f"X accepted the app-only bearer token from {source} (GET {RULES_PATH}: 200)",
        )
    verdict = answer.verdict
    said = _said(answer)
    if verdict.reason is Reason.UNAUTHORIZED:
        return CheckResult(
            "token", Status.FAIL, f"X rejected the token from {source} ({said})",
            "check x.bearer_token_file (or x.bearer_token, or the systemd credential "
            "x_bearer_token): it must hold the app's current Bearer Token from the developer "
            "portal; regenerate it if it was revoked",
        )
    if verdict.reason is Reason.FORBIDDEN:
        if verdict.problem_type == "unsupported-authentication":
            return CheckResult("token", Status.FAIL, f"X refused the token ({said})",
                               USER_CONTEXT_FIX)
        if _is_tier_refusal(verdict):
            return CheckResult("token", Status.FAIL, f"X refused this app ({said})", TIER_FIX)
        return CheckResult(
            "token", Status.FAIL, f"X refused access ({said})",
            "check the app's and the account's status in the X developer portal",
        )
    if verdict.reason is Reason.RATE_LIMITED:
        # X authenticates before it counts: a 429 means the token itself was accepted.
        return CheckResult(
            "token", Status.OK, f"X accepted the token from {source} (rules endpoint: {said})"
        )
    if verdict.reason is Reason.SERVER_ERROR:
        return CheckResult(
            "token", Status.FAIL, f"could not verify the token: X answered {said}",
            "X-side trouble: retry in a few minutes (https://api.twitterstat.us)",
        )
    return CheckResult(
        "token", Status.FAIL, f"{settings.x.api_url} answered {said}",
        "check x.api_url (https://api.x.com, or the simulator's URL)",
    )


def judge_stream_access(probe: XProbe, token: CheckResult) -> CheckResult:
    name = "stream_access"
    how = ("(from the rules endpoint's answer; no test connect, which would take the "
           "stream's connection slot and one of its 50 connects / 15 min)")
    answer = probe.answer
    if answer is not None and answer.status == 200:
        return CheckResult(name, Status.OK, f"this app may use the filtered stream {how}")
    if answer is not None and answer.status in (420, 429):
        return CheckResult(name, Status.WARN,
                           f"unknown: the rules endpoint is rate-limited {how}")
    if answer is not None and answer.status == 403 and _is_tier_refusal(answer.verdict):
        return CheckResult(
            name, Status.FAIL,
            f"none: X refuses this app's access level (403 client-forbidden) {how}",
            "move the app to a Project on a tier with filtered stream",
        )
    return skipped(name, "the token check failed" if token.status is Status.FAIL
                   else "no usable answer from the rules endpoint")


def describe_reset(reset: float, now: float, local_tz: tzinfo | None = None) -> str:
    """`2025-01-02 03:04:05 UTC (05:04:05 CEST local), in 840 s`."""
    utc = datetime.fromtimestamp(reset, UTC)
    local = datetime.fromtimestamp(reset, local_tz) if local_tz else utc.astimezone()
    zone = local.tzname() or local.strftime("%z")
    seconds = max(0, round(reset - now))
    return (f"{utc:%Y-%m-%d %H:%M:%S} UTC ({local:%Y-%m-%d %H:%M:%S} {zone} local), "
            f"in {seconds} s")


def judge_rate_limits(
    probe: XProbe, *, now: float, local_tz: tzinfo | None = None
) -> CheckResult:
    name = "rate_limits"
    answer = probe.answer
    if answer is None or answer.status not in (200, 420, 429):
        return skipped(name, "the token check failed")
    limits = answer.read.rate_limit
    if limits.limit is None or limits.remaining is None or limits.reset is None:
        return CheckResult(
            name, Status.WARN,
            "the rules GET carried no complete x-rate-limit-limit/remaining/reset headers",
            "a proxy between here and X may strip them; streamd then backs off blindly",
        )
    detail = (f"rules GET: {limits.remaining} of {limits.limit} requests left; window "
              f"resets {describe_reset(limits.reset, now, local_tz)}")
    if limits.remaining <= 0 or answer.status in (420, 429):
        return CheckResult(
            name, Status.WARN, f"{detail}; the window is exhausted",
            "wait for the reset before `streamd rules sync`; look for another client "
            "using this app's token",
        )
    return CheckResult(name, Status.OK, detail)


def judge_rules(settings: Settings, probe: XProbe, token: CheckResult) -> CheckResult:
    """Configured rules against the local caps, then the server's rules against the config.
    Being out of sync is a WARN: `streamd run` syncs at start-up."""
    name = "rules"
    cfg = settings.rules
    try:
        desired = settings.resolved_rules()
    except ConfigError as exc:
        return skipped(name, f"the rules configuration is invalid ({exc.key})")
    local = _judge_local_rules(desired, settings)
    if local is not None:
        return local
    if probe.rules is None:
        why = probe.rules_error or (
            "the token check failed" if token.status is Status.FAIL
            else "the server's rules could not be read")
        return skipped(name, f"{len(desired)} configured rule(s) pass local checks; {why}")
    server = probe.rules
    longest = max((len(r.value) for r in desired), default=0)
    counts = (f"{len(server)} on the server, {len(desired)} configured (rules.max_rules = "
              f"{cfg.max_rules}; longest {longest} of rules.max_length = {cfg.max_length})")
    if cfg.mode == "off":
        if not server:
            return CheckResult(
                name, Status.FAIL,
                "rules.mode = off and the server holds no rules: the stream would be "
                "refused (409 no rules)",
                "add [[rules.rule]] entries with rules.mode = \"sync\", or create rules "
                "with `streamd rules sync` / your own tooling",
            )
        return CheckResult(name, Status.OK,
                           f"rules.mode = off (not managed by streamd): {len(server)} on the "
                           "server")
    plan = plan_rules(desired, server, mode=cfg.mode, max_rules=cfg.max_rules)
    if plan.final_count > cfg.max_rules:
        return CheckResult(
            name, Status.FAIL,
            f"{counts}: after the sync {plan.final_count} rules would exceed rules.max_rules",
            "delete server rules (rules.mode = \"sync\" does) or configure fewer rules",
        )
    if plan.final_count == 0:
        return CheckResult(
            name, Status.FAIL,
            f"{counts}: no rule would be active, so the stream would be refused (409)",
            "configure at least one [[rules.rule]]",
        )
    if probe.dry_run_error is not None:
        return _judge_dry_run_error(settings, counts, probe.dry_run_error)
    if plan.in_sync and not plan.conflicts:
        return CheckResult(name, Status.OK, f"{counts}; in sync")
    diff = f"{len(plan.to_add)} to add, {len(plan.to_delete)} to delete"
    if plan.conflicts:
        diff += (f", {len(plan.conflicts)} held under another tag (mode add never "
                 "deletes them)")
    if probe.dry_run is not None and plan.to_add:
        diff += "; X accepts the rules to add (dry run, nothing changed)"
    return CheckResult(name, Status.WARN, f"{counts}; {diff}", SYNC_FIX)


def _judge_dry_run_error(
    settings: Settings, counts: str, error: StreamdError
) -> CheckResult:
    """What X's dry run of the configured change said, when it did not accept it."""
    if settings.rules.on_error == "fail":
        then = "`streamd run` would exit 78"
    else:
        then = "`streamd run` would stream on the server's rules: rules.on_error = continue"
    if isinstance(error, RulesSyncError) and error.invalid:
        first = error.invalid[0]
        tag = f" (tag {first.tag!r})" if first.tag is not None else ""
        more = f" (and {len(error.invalid) - 1} more)" if len(error.invalid) > 1 else ""
        return CheckResult(
            "rules", Status.FAIL,
            f"{counts}; X rejects rule {first.value!r}{tag}: {' '.join(first.details)}{more}"
            f" (dry run, nothing changed; {then})",
            RULE_SYNTAX_FIX,
        )
    if isinstance(error, CredentialsError):
        return CheckResult(
            "rules", Status.FAIL,
            f"{counts}; X refused the rules POST (dry run): {error} (`streamd run` would "
            "exit 77)",
            "check the app's permissions in the X developer portal",
        )
    if isinstance(error, RulesError) and error.exit_code == ExitCode.CONFIG:
        summary = error.summary if isinstance(error, RulesSyncError) else str(error)
        return CheckResult(
            "rules", Status.FAIL,
            f"{counts}; X refuses the change (dry run, nothing changed): {summary}",
            "configure fewer rules, or delete rules on the App",
        )
    summary = error.summary if isinstance(error, RulesSyncError) else str(error)
    return CheckResult(
        "rules", Status.WARN,
        f"{counts}; X could not validate the configured rules (dry run): {summary}",
        "retry `streamd check` later; `streamd run` validates them again before applying",
    )


def _judge_local_rules(desired: Sequence[RuleSpec], settings: Settings) -> CheckResult | None:
    cfg = settings.rules
    if cfg.mode != "off" and len(desired) > cfg.max_rules:
        return CheckResult(
            "rules", Status.FAIL,
            f"{len(desired)} rules configured, over rules.max_rules = {cfg.max_rules}",
            "configure fewer rules, or raise rules.max_rules if your tier allows more",
        )
    problems = check_locally(desired, cfg.max_length) if cfg.mode != "off" else []
    if problems:
        first = problems[0].describe()
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return CheckResult(
            "rules", Status.FAIL, f"{first}{more}",
            "shorten or split the rule, or raise rules.max_length if your tier allows more",
        )
    return None


def judge_kafka(settings: Settings, probe: KafkaProbe) -> CheckResult:
    servers = settings.kafka.bootstrap_servers
    if probe.error is not None:
        return CheckResult(
            "kafka", Status.FAIL, f"cannot reach {servers}: {probe.error}",
            "check kafka.bootstrap_servers, that the broker runs and that its advertised "
            "listeners are reachable from here (and kafka.security_protocol / sasl_* / ssl_*)",
        )
    return CheckResult(
        "kafka", Status.OK,
        f"{servers}: {probe.brokers} broker(s) answered in {probe.seconds:.2f} s "
        f"({settings.kafka.security_protocol})",
    )


def judge_producer(
    settings: Settings, kafka: KafkaProbe, probe: ProducerProbe | None
) -> CheckResult:
    name = "producer"
    if kafka.error is not None or probe is None:
        return skipped(name, "the kafka check failed")
    cfg = settings.kafka
    if probe.error is None:
        how = ("idempotent: the broker granted a producer id" if cfg.enable_idempotence
               else "kafka.enable_idempotence = false")
        return CheckResult(
            name, Status.OK,
            f"a producer with the daemon's settings started and stopped, publishing nothing "
            f"({how}; acks = {cfg.acks}, compression = {cfg.compression})",
        )
    if probe.idempotence_refused and probe.unauthorized:
        return CheckResult(
            name, Status.FAIL,
            f"this broker refuses this client the idempotent producer (InitProducerId: "
            f"{probe.error}); a producer without idempotence starts",
            "grant this principal the IdempotentWrite permission on the cluster, or "
            + IDEMPOTENCE_FIX,
        )
    if probe.idempotence_refused:
        return CheckResult(
            name, Status.FAIL,
            f"this broker does not support the idempotent producer (InitProducerId: "
            f"{probe.error}); a producer without idempotence starts",
            IDEMPOTENCE_FIX,
        )
    return CheckResult(
        name, Status.FAIL,
        f"a producer with the daemon's settings did not start: {probe.error} "
        "(`streamd run` would retry it every second, spooling meanwhile)",
        "check kafka.security_protocol / sasl_* / ssl_*, kafka.compression, kafka.acks, "
        "and the broker's log",
    )


def judge_topics(settings: Settings, probe: KafkaProbe) -> CheckResult:
    if probe.error is not None:
        return skipped("topics", "the kafka check failed")
    wanted = (settings.kafka.topic, settings.kafka.dlq_topic)
    missing = [t for t in wanted if t not in probe.topics]
    if missing:
        servers = settings.kafka.bootstrap_servers
        commands = "; ".join(
            f"kafka-topics --bootstrap-server {servers} --create --topic {t}" for t in missing
        )
        return CheckResult(
            "topics", Status.FAIL, "missing: " + ", ".join(missing),
            f"create it: {commands} (choose partitions and replication for your cluster)",
        )
    present = ", ".join(
        f"{t} ({n} partition{'s' if n != 1 else ''})"
        for t, n in ((t, probe.topics[t]) for t in wanted)
    )
    return CheckResult("topics", Status.OK, f"present: {present}")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def judge_spool(settings: Settings, probe: SpoolProbe) -> CheckResult:
    where = str(probe.path)
    if probe.error is not None:
        return CheckResult(
            "spool", Status.FAIL, f"spool.dir {where} cannot be used: {probe.error}",
            spool_dir_fix(),
        )
    if probe.to_create:
        made = ", ".join(str(p) for p in probe.to_create)
        detail = (f"{where} does not exist yet: `streamd run` will create {made} "
                  f"(check created nothing)")
    else:
        detail = f"{where} is writable (write + fsync + delete)"
    limit = settings.spool.max_bytes
    if probe.free_bytes is not None and probe.free_bytes < limit:
        return CheckResult(
            "spool", Status.WARN,
            f"{detail}; only {_size(probe.free_bytes)} free, below spool.max_bytes = "
            f"{_size(limit)}",
            "free disk space or lower spool.max_bytes",
        )
    return CheckResult("spool", Status.OK, detail)


@dataclass(frozen=True)
class SpoolOwner:
    """What the spool says about the connection slot: the connection a streamd recorded as
    its own there, and whether a streamd process holds that spool now."""

    own_id: str | None
    held: bool


def probe_owner(settings: Settings) -> SpoolOwner:
    # Read only: the spool is neither created nor locked (a daemon may hold it).
    return SpoolOwner(own_record(settings).id, held_by_a_daemon(settings.spool.dir))


def judge_connections(
    settings: Settings, probe: XProbe, token: CheckResult, owner: SpoolOwner
) -> CheckResult:
    """The slot: who holds a connection on filtered_stream now, and whether one of them is
    a stale one of this streamd's (active, but no streamd holds its spool)."""
    name = "connections"
    if not settings.x.connections_api:
        return skipped(name, "x.connections_api = false")
    if token.status is Status.FAIL:
        return skipped(name, "the token check failed")
    if probe.connections_unavailable is not None:
        return CheckResult(
            name, Status.WARN,
            f"X's Connections API is not available to this app (HTTP "
            f"{probe.connections_unavailable}): after a crash, a stale connection slot is "
            "waited out (TooManyConnections) instead of terminated")
    if probe.connections is None:
        return CheckResult(name, Status.WARN,
                           f"the Connections API failed: {probe.connections_error or 'no answer'}")
    active = probe.connections
    if not active:
        return CheckResult(name, Status.OK, "no active connection on filtered_stream: the "
                                            "slot is free")

    def who(c: XConnection) -> str:
        return (f"{c.id or '?'} from {c.client_ip or '?'} since "
                f"{describe(c)['connected_at'] or '?'}")

    own = [c for c in active if c.id is not None and c.id == owner.own_id]
    others = [c for c in active if c not in own]
    parts: list[str] = []
    status = Status.OK
    fix: str | None = None
    if own and owner.held:
        parts.append(f"{who(own[0])} is this streamd's, held by the running daemon")
    elif own:
        status = Status.WARN
        parts.append(f"stale: {who(own[0])} is this streamd's own (recorded in spool.dir) but "
                     "no streamd runs with this spool.dir; `streamd run` terminates it at "
                     "start-up")
        fix = "streamd connections terminate --own"
    if others:
        status = Status.WARN
        parts.append(
            f"{len(others)} active connection(s) not recorded as this streamd's: "
            + "; ".join(who(c) for c in others[:5])
            + ("; ..." if len(others) > 5 else "")
            + ". While they hold the tier's slots (1 below Enterprise), `streamd run` gets "
              "TooManyConnections (x.evict decides what it does)")
        fix = fix or ("stop that client, or `streamd connections terminate --uuid ID` "
                      "(`streamd connections list` shows them)")
    return CheckResult(name, status, "; ".join(parts), fix)


# --- probes (I/O) ---------------------------------------------------------------------


async def probe_x(settings: Settings, token: str) -> XProbe:
    """One GET of the rules (a second pass through RulesApi only past 1000 rules)."""
    async with make_client(settings, token) as client:
        request = client.build_request(
            "GET", RULES_PATH, params={"max_results": str(PAGE_SIZE)}, timeout=X_TIMEOUT)
        try:
            # Read with a cap (body.py), as the rules client does.
            response = await read_answer(client, request, seconds=X_TIMEOUT)
        except httpx.HTTPError as exc:
            return XProbe(transport_error=classify_transport_error(exc).detail)
        except AnswerTooLarge as exc:
            return XProbe(transport_error=f"the rules answer was refused: {exc}")
        answer = XAnswer(
            response.status_code,
            {k.lower(): v for k, v in response.headers.items()},
            response.content,
        )
        if response.status_code != 200:
            return XProbe(answer)
        document = answer.read.document or {}
        if not (document.get("meta") or {}).get("next_token"):
            rules = tuple(rules_of(document))
        else:
            # More than one page: let RulesApi follow the pages; never wait out a window.
            api = RulesApi(client, policy=terminal_policy(max_attempts=1, max_wait=0.0))
            try:
                rules = tuple(await api.list_rules())
            except StreamdError as exc:
                return XProbe(answer, rules_error=f"listing every page failed: {exc}")
        result, error = await _dry_run(settings, client)
        connections: tuple[XConnection, ...] | None = None
        connections_error: str | None = None
        unavailable: int | None = None
        if settings.x.connections_api:
            try:
                connections = tuple(await ConnectionsApi(client).list(status="active"))
            except ConnectionsUnavailable as exc:
                unavailable = exc.status
            except StreamdError as exc:
                connections_error = str(exc)
        return XProbe(answer, rules=rules, dry_run=result, dry_run_error=error,
                      connections=connections, connections_error=connections_error,
                      connections_unavailable=unavailable)


class _Silent:
    """The dry run's log: its outcome is the rules line, not a log event."""

    def info(self, event: str, **kw: Any) -> None:
        pass

    warning = error = info


async def _dry_run(
    settings: Settings, client: httpx.AsyncClient
) -> tuple[SyncResult | None, StreamdError | None]:
    """The configured change, validated by X as `streamd run` validates it before applying
    it: the same procedure as `streamd rules sync --dry-run` (a GET, then the adds POSTed
    with dry_run=true; nothing changes). (None, None) when there is nothing to ask: mode
    off, or rules that fail the local checks (judge_rules reports those)."""
    if settings.rules.mode == "off":
        return None, None
    try:
        desired = settings.resolved_rules()
    except ConfigError:
        return None, None
    if _judge_local_rules(desired, settings) is not None:
        return None, None
    api = RulesApi(client, policy=terminal_policy(max_attempts=1, max_wait=0.0))
    try:
        result = await sync_rules(api, desired, settings.rules, _Silent(), Metrics(),
                                  trigger="check", dry_run=True)
    except StreamdError as exc:
        return None, exc
    return result, None


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """aiokafka logs each refused connection at ERROR; the check line says it once."""
    logger = logging.getLogger(logger_name)
    before = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(before)


# AIOKafkaClient takes these of the producer's settings (security included).
_CLIENT_KEYS = ("bootstrap_servers", "client_id", "security_protocol", "ssl_context",
                "sasl_mechanism", "sasl_plain_username", "sasl_plain_password")


async def probe_kafka(
    settings: Settings, deadline: float = KAFKA_DEADLINE
) -> KafkaProbe:
    """Bootstrap and read all topics' metadata, within `deadline` seconds. Asking for all
    topics (not ours by name) never triggers a broker's auto-creation."""
    from aiokafka.client import AIOKafkaClient

    try:
        password = settings.kafka.resolve_sasl_password()
        kwargs = producer_kwargs(settings.kafka, password)
    except (ConfigError, OSError) as exc:
        return KafkaProbe(error=str(exc))
    options = {k: kwargs[k] for k in _CLIENT_KEYS if k in kwargs}
    options["client_id"] = f"{settings.kafka.client_id}-check"
    options["request_timeout_ms"] = int(deadline * 1000)
    started = time.monotonic()
    with _quiet("aiokafka"):
        client = AIOKafkaClient(**options)
        try:
            with anyio.fail_after(deadline):
                await client.bootstrap()
                metadata = await client.fetch_all_metadata()
        except TimeoutError:
            return KafkaProbe(error=f"no answer within {deadline:g} s")
        except Exception as exc:  # aiokafka raises its own and OSError kinds alike
            return KafkaProbe(error=_exception_text(exc))
        finally:
            await client.close()
    topics = {t: len(metadata.partitions_for_topic(t) or ()) for t in metadata.topics()}
    return KafkaProbe(topics, len(metadata.brokers()), time.monotonic() - started)


def _exception_text(exc: BaseException) -> str:
    """`Name: message`, without the name twice (aiokafka's str() already starts with it)."""
    name, message = type(exc).__name__, str(exc)
    while message.startswith(f"{name}: "):
        message = message[len(name) + 2 :]
    if name in message:  # `[Error -1] UnknownError`
        return message
    return f"{name}: {message}" if message else name


async def probe_producer(settings: Settings, deadline: float = KAFKA_DEADLINE) -> ProducerProbe:
    """Start a producer as the daemon does and stop it, publishing nothing. When it does
    not start with enable_idempotence, once more without: if that one starts, the broker
    refused the producer id (InitProducerId), which is what `streamd run` would keep
    failing on."""
    kafka = settings.kafka
    try:
        password = kafka.resolve_sasl_password()
    except (ConfigError, OSError) as exc:
        return ProducerProbe(error=str(exc))
    with _quiet("aiokafka"):
        failure = await try_producer(kafka, password, deadline)
        if failure is None:
            return ProducerProbe()
        refused = kafka.enable_idempotence and await try_producer(
            kafka, password, deadline, enable_idempotence=False) is None
    error = (f"no answer within {deadline:g} s" if isinstance(failure, TimeoutError)
             else _exception_text(failure))
    unauthorized = "Authorization" in type(failure).__name__
    return ProducerProbe(error, idempotence_refused=refused, unauthorized=unauthorized)


def probe_spool(path: Path) -> SpoolProbe:
    """Judge the directory as `streamd run` would use it, creating nothing: a missing one
    by its nearest existing parent (config.plan_directory); an existing one by writing,
    fsyncing and deleting a probe file."""
    plan = plan_directory(path)
    if plan.problem is not None:
        return SpoolProbe(plan.path, error=plan.problem)
    if plan.missing:
        try:
            free: int | None = shutil.disk_usage(plan.base).free
        except OSError:
            free = None
        return SpoolProbe(plan.path, free_bytes=free, to_create=plan.missing)
    path = plan.path
    probe = path / f"{PROBE_NAME}-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"streamd check\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
        free = shutil.disk_usage(path).free
    except OSError as exc:
        return SpoolProbe(path, error=f"not writable: {exc.strerror or exc}")
    return SpoolProbe(path, free_bytes=free)


# --- orchestration ----------------------------------------------------------------------


@dataclass(frozen=True)
class CheckEnv:
    """What the judges may not take from the machine in tests."""

    now: Callable[[], float] = time.time
    local_tz: tzinfo | None = None  # None: the machine's zone
    kafka_deadline: float = KAFKA_DEADLINE


async def run_checks(
    settings: Settings, token: str | None, env: CheckEnv | None = None
) -> list[CheckResult]:
    """Every check in CHECK_NAMES order. `token` None means it could not be resolved (the
    token check then fails with the config error; its dependants are skipped)."""
    env = env or CheckEnv()
    x_probe: XProbe | None = None
    kafka_probe = KafkaProbe()
    producer_probe: ProducerProbe | None = None
    ha_probe: GroupView | None = None

    async def x_task() -> None:
        nonlocal x_probe
        if token is not None:
            x_probe = await probe_x(settings, token)

    async def kafka_task() -> None:
        nonlocal kafka_probe, producer_probe, ha_probe
        kafka_probe = await probe_kafka(settings, env.kafka_deadline)
        if kafka_probe.error is None:
            producer_probe = await probe_producer(settings, env.kafka_deadline)
            if settings.ha.mode == "kafka":
                ha_probe = await probe_group(settings, env.kafka_deadline)

    async with anyio.create_task_group() as group:
        group.start_soon(x_task)
        group.start_soon(kafka_task)
    spool_probe = await anyio.to_thread.run_sync(probe_spool, settings.spool.dir)
    spool_owner = await anyio.to_thread.run_sync(probe_owner, settings)

    results = [judge_config(settings)]
    if x_probe is None:
        token_result = _token_missing(settings)
        results += [token_result,
                    skipped("stream_access", "the token check failed"),
                    skipped("rate_limits", "the token check failed"),
                    judge_rules(settings, XProbe(), token_result),
                    skipped("connections", "the token check failed")]
    else:
        token_result = judge_token(settings, x_probe)
        results += [token_result,
                    judge_stream_access(x_probe, token_result),
                    judge_rate_limits(x_probe, now=env.now(), local_tz=env.local_tz),
                    judge_rules(settings, x_probe, token_result),
                    judge_connections(settings, x_probe, token_result, spool_owner)]
    results += [judge_kafka(settings, kafka_probe),
                judge_producer(settings, kafka_probe, producer_probe),
                judge_topics(settings, kafka_probe),
                judge_spool(settings, spool_probe)]
    ha_status, ha_detail, ha_fix = judge_group(settings, ha_probe, kafka_probe.topics,
                                               now=env.now())
    results.append(CheckResult("ha", Status(ha_status), ha_detail, ha_fix))
    return results


def _token_missing(settings: Settings) -> CheckResult:
    try:
        settings.x.resolve_bearer_token()
    except ConfigError as exc:
        detail = str(exc)
    else:  # pragma: no cover - run_checks passes None only after a ConfigError
        detail = "no token"
    return CheckResult(
        "token", Status.FAIL, detail,
        "set x.bearer_token_file to a file holding the app's Bearer Token (or "
        "STREAMD_X__BEARER_TOKEN, or systemd LoadCredential=x_bearer_token)",
    )


# --- output -------------------------------------------------------------------------------


def verdict_line(results: Sequence[CheckResult]) -> str:
    failed = [r.name for r in results if r.status is Status.FAIL]
    counts = ", ".join(
        f"{sum(1 for r in results if r.status is s)} {s.name}"
        for s in Status if any(r.status is s for r in results)
    )
    if failed:
        return f"verdict: FAIL ({counts}) — failed: {', '.join(failed)}"
    return f"verdict: PASS ({counts})"


def render_text(results: Sequence[CheckResult]) -> str:
    # A detail may quote X (a problem's title and detail) or a library's error text: one
    # line each, with every control character escaped, so nothing X sends can clear the
    # screen, rewrite a line or fake a verdict.
    lines = [*(printable(r.line()) for r in results), verdict_line(results)]
    return "\n".join(lines) + "\n"


def render_json(results: Sequence[CheckResult]) -> str:
    document = {
        "checks": [r.as_json() for r in results],
        "verdict": "pass" if passed(results) else "fail",
    }
    # orjson escapes C0 controls; C1 and bidi characters it writes raw, and a terminal
    # showing the JSON would act on them.
    return json_printable(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()) + "\n"


def _scrub(text: str, token: str | None) -> str:
    text = redact(text)
    if token and len(token) >= 4:
        text = text.replace(token, "***")
    return text


def check_command(
    settings: Settings, *, as_json: bool, out: TextIO | None = None,
    env: CheckEnv | None = None,
) -> int:
    """`streamd check [--json]`: 0 when no check failed, else 1."""
    try:
        token: str | None = settings.x.resolve_bearer_token()
    except ConfigError:
        token = None
    results = anyio.run(run_checks, settings, token, env)
    text = render_json(results) if as_json else render_text(results)
    (out or sys.stdout).write(_scrub(text, token))
    return int(ExitCode.OK) if passed(results) else FAILED_EXIT
