"""Rules as code: make the server's filtered-stream rules match the configuration.

Three layers, each usable alone:

* pure planning: `check_locally` (length and duplicate checks) and `plan_rules` (what to add,
  what to delete, in which order) — no I/O, unit-tested directly;
* `RulesApi`: the GET/POST rules endpoints over one httpx client, with pagination, batching,
  the endpoints' rate-limit headers and bounded retries (sleep and clock are injectable);
* `sync_rules` / `sync_configured_rules`: local checks, GET, plan, validate the whole change
  with `dry_run=true`, then apply it — or stop, changing nothing, on the first problem.

A rule's identity is its (value, tag) pair: a tag cannot be updated on X, so a changed tag is
a delete plus an add. X refuses a second rule with the same value whatever its tag
(DuplicateRule), which is why a re-tagged rule can only be added after its old twin is gone.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import anyio
import httpx
import orjson
from structlog.typing import FilteringBoundLogger

from streamd.config import RuleSpec, RulesSettings, Settings
from streamd.errors import AnswerTooLarge, CredentialsError, InvalidRule, RulesSyncError
from streamd.ops.metrics import Metrics
from streamd.reasons import Reason, RulesFailure
from streamd.x.body import read_answer
from streamd.x.classify import header_number, problem_slug

RULES_PATH = "/2/tweets/search/stream/rules"
# X documents no per-request limit for `add`; 100 keeps bodies and error lists small while
# 1000 rules still take only 10 POSTs of the 100-per-15-min budget.
ADD_BATCH = 100
# The delete-by-ids list mirrors GET's `ids` maxItems of 1000.
DELETE_BATCH = 1000
PAGE_SIZE = 1000  # GET max_results upper bound
REQUEST_TIMEOUT = 30.0  # the shared client has no read timeout (the stream's watchdog owns it)


Mode = Literal["sync", "add", "off"]
RuleKey = tuple[str, str | None]
_T = TypeVar("_T")


# --- identity, problems, errors ---------------------------------------------------------


@dataclass(frozen=True)
class ServerRule:
    """A rule as the server holds it."""

    id: str
    value: str
    tag: str | None = None

    @property
    def key(self) -> RuleKey:
        return (self.value, self.tag)


def rule_key(rule: RuleSpec) -> RuleKey:
    return (rule.value, rule.tag)


# --- pure planning ----------------------------------------------------------------------


def check_locally(desired: Sequence[RuleSpec], max_length: int) -> list[InvalidRule]:
    """Problems found without asking X: values over the tier's length, and values configured
    twice (X accepts a value once, whatever the tag)."""
    problems: list[InvalidRule] = []
    seen: set[str] = set()
    for rule in desired:
        details: list[str] = []
        if len(rule.value) > max_length:
            details.append(
                f"{len(rule.value)} characters, over rules.max_length = {max_length}"
            )
        if rule.value in seen:
            details.append("the same value is configured more than once")
        seen.add(rule.value)
        if details:
            problems.append(InvalidRule(rule.value, rule.tag, tuple(details)))
    return problems


@dataclass(frozen=True)
class Step:
    """One phase of applying a plan: adds (RuleSpec) or deletes (ServerRule)."""

    action: Literal["add", "delete"]
    add: tuple[RuleSpec, ...] = ()
    delete: tuple[ServerRule, ...] = ()


@dataclass(frozen=True)
class RulesPlan:
    mode: Mode
    server_count: int
    unchanged: tuple[ServerRule, ...]
    to_add: tuple[RuleSpec, ...]
    to_delete: tuple[ServerRule, ...]
    # Mode "add" never deletes, so a configured value the server holds under another tag
    # cannot be added (DuplicateRule): the server rule is kept and listed here.
    conflicts: tuple[ServerRule, ...]
    adds_first: bool

    @property
    def in_sync(self) -> bool:
        return not self.to_add and not self.to_delete

    @property
    def final_count(self) -> int:
        return self.server_count + len(self.to_add) - len(self.to_delete)

    @property
    def blocked_values(self) -> frozenset[str]:
        """Values to add that a rule being deleted still holds: they must wait for it."""
        held = {rule.value for rule in self.to_delete}
        return frozenset(rule.value for rule in self.to_add if rule.value in held)

    def steps(self) -> list[Step]:
        """The order of application. Adds first when the cap leaves room (never a moment
        without the wanted rules), except re-tagged values, which follow their deletion;
        deletes first when the cap is too tight for both sets at once."""
        blocked = self.blocked_values
        if self.adds_first:
            early = tuple(r for r in self.to_add if r.value not in blocked)
            late = tuple(r for r in self.to_add if r.value in blocked)
            steps = [Step("add", add=early), Step("delete", delete=self.to_delete),
                     Step("add", add=late)]
        else:
            steps = [Step("delete", delete=self.to_delete), Step("add", add=self.to_add)]
        return [s for s in steps if s.add or s.delete]


def plan_rules(
    desired: Sequence[RuleSpec], server: Sequence[ServerRule], *, mode: Mode, max_rules: int
) -> RulesPlan:
    """What it takes to go from `server` to `desired` under `mode` ("off" plans nothing).

    A desired (value, tag) already on the server is kept (its first copy, if the server holds
    it more than once); in mode "sync" every other server rule is deleted."""
    if mode == "off":
        return RulesPlan(mode, len(server), tuple(server), (), (), (), True)
    wanted = {rule_key(r) for r in desired}
    unchanged: dict[RuleKey, ServerRule] = {}
    extra: list[ServerRule] = []
    for rule in server:
        if rule.key in wanted and rule.key not in unchanged:
            unchanged[rule.key] = rule
        else:
            extra.append(rule)
    missing = [r for r in desired if rule_key(r) not in unchanged]
    if mode == "sync":
        to_add, to_delete, conflicts = missing, extra, []
    else:
        on_server = {rule.value: rule for rule in server}
        to_add = [r for r in missing if r.value not in on_server]
        conflicts = [on_server[r.value] for r in missing if r.value in on_server]
        to_delete = []
    held = {rule.value for rule in to_delete}
    early_adds = sum(1 for r in to_add if r.value not in held)
    return RulesPlan(
        mode=mode,
        server_count=len(server),
        unchanged=tuple(unchanged.values()),
        to_add=tuple(to_add),
        to_delete=tuple(to_delete),
        conflicts=tuple(conflicts),
        adds_first=len(server) + early_adds <= max_rules,
    )


def batches(items: Sequence[_T], size: int) -> Iterator[tuple[_T, ...]]:
    for start in range(0, len(items), size):
        yield tuple(items[start : start + size])


# --- the rules endpoints ----------------------------------------------------------------


@dataclass
class _Window:
    """The last x-rate-limit-* headers of one endpoint."""

    remaining: int | None = None
    reset: float | None = None


@dataclass(frozen=True)
class AddOutcome:
    created: tuple[ServerRule, ...]
    errors: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class DeleteOutcome:
    deleted: int
    not_deleted: int


Sleep = Callable[[float], Awaitable[None]]
# (reason, attempt number that failed, seconds until the next one, what went wrong)
RetryHook = Callable[[str, int, float, str], None]
# 2^60 times any positive delay is past every cap: keeps the float arithmetic finite.
_MAX_EXPONENT = 60




def _json(response: httpx.Response) -> dict[str, Any]:
    # `response` comes from RulesApi._request, its body already read with a cap.
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise RulesSyncError(
            RulesFailure.SERVER_ERROR,
            f"rules endpoint answered HTTP {response.status_code} with a non-JSON body",
        )
    return body


def _body_or_empty(response: httpx.Response) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def _is_rule_cap(response: httpx.Response) -> bool:
    """A top-level rule-cap problem (X's status for it is not documented: may be any 4xx)."""
    return problem_slug(str(_body_or_empty(response).get("type", ""))) == "rule-cap"


def _count(value: Any, default: int) -> int:
    """A count from X's `meta.summary`; a missing or odd value is not worth a crash."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10:
        return int(value)  # newer specs type the counts as strings
    return max(0, default)


def _problem_text(body: Mapping[str, Any]) -> str:
    """A one-line account of a problem body, nested `errors[].message` included."""
    parts = [str(body[k]) for k in ("title", "detail") if body.get(k)]
    for item in body.get("errors") or []:
        if isinstance(item, Mapping) and item.get("message"):
            parts.append(str(item["message"]))
    return ": ".join(parts) or "no detail"


class RulesApi:
    """GET/POST /2/tweets/search/stream/rules with X's rate limits honoured.

    Before each request, if the endpoint's window is exhausted (remaining 0) we wait for its
    reset. A 429 waits max(reset - now, exponential backoff); 5xx and transport errors retry
    with the same backoff. Commands bound this with `max_attempts` and `max_wait` (a single
    wait longer than that raises rather than keeping a terminal busy for a window). The
    daemon passes `max_attempts=None` and `max_wait=math.inf`: a rules endpoint in trouble
    is weather, and the daemon waits it out like the stream does (only 401/403 and invalid
    rules are fatal). Every wait goes through `sleep`, so the caller can cancel it (SIGTERM)
    and count it as deliberate waiting (the systemd watchdog); `on_retry` hears of each one."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        metrics: Metrics | None = None,
        *,
        sleep: Sleep = anyio.sleep,
        clock: Callable[[], float] = time.time,
        max_attempts: int | None = 6,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        max_wait: float = 16 * 60.0,
        on_retry: RetryHook | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._sleep = sleep
        self._clock = clock
        self._max_attempts = max_attempts
        self._on_retry = on_retry
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._max_wait = max_wait
        self._windows = {"rules_get": _Window(), "rules_post": _Window()}
        self.requests = 0  # sent, retries included (tests and `rules sync` output)

    # -- public calls --------------------------------------------------------------------

    async def list_rules(self) -> list[ServerRule]:
        """Every rule on the server, following `meta.next_token`."""
        rules: list[ServerRule] = []
        params: dict[str, str] = {"max_results": str(PAGE_SIZE)}
        while True:
            response = await self._request("GET", "rules_get", params=params)
            body = self._expect(response, {200})
            for item in body.get("data") or []:
                rules.append(ServerRule(str(item["id"]), str(item["value"]), item.get("tag")))
            token = (body.get("meta") or {}).get("next_token")
            if not token:
                return rules
            params = {"max_results": str(PAGE_SIZE), "pagination_token": str(token)}

    async def add(self, rules: Sequence[RuleSpec], *, dry_run: bool) -> AddOutcome:
        """One POST of `add` (the caller batches)."""
        payload = {
            "add": [
                {"value": r.value, **({"tag": r.tag} if r.tag is not None else {})}
                for r in rules
            ]
        }
        response = await self._post(payload, dry_run=dry_run)
        body = self._expect(response, {200, 201})
        created = tuple(
            ServerRule(str(item["id"]), str(item["value"]), item.get("tag"))
            for item in body.get("data") or []
        )
        errors = tuple(e for e in body.get("errors") or [] if isinstance(e, dict))
        return AddOutcome(created, errors)

    async def delete(self, ids: Sequence[str], *, dry_run: bool) -> DeleteOutcome:
        """One POST of `delete` by ids (the caller batches). Ids already gone count as
        not deleted; that is not an error for a sync."""
        response = await self._post({"delete": {"ids": list(ids)}}, dry_run=dry_run)
        body = self._expect(response, {200})
        summary = (body.get("meta") or {}).get("summary") or {}
        deleted = _count(summary.get("deleted"), len(ids))
        return DeleteOutcome(deleted, _count(summary.get("not_deleted"), len(ids) - deleted))

    # -- plumbing ------------------------------------------------------------------------

    async def _post(self, payload: dict[str, Any], *, dry_run: bool) -> httpx.Response:
        params = {"dry_run": "true"} if dry_run else None
        return await self._request(
            "POST", "rules_post", params=params, content=orjson.dumps(payload),
            headers={"Content-Type": "application/json"},
        )

    def _expect(self, response: httpx.Response, ok: set[int]) -> dict[str, Any]:
        body = _json(response)
        if response.status_code in ok:
            return body
        status = response.status_code
        if _is_rule_cap(response):
            raise RulesSyncError(
                RulesFailure.RULES_CAP, f"X refused the rules: {_problem_text(body)}"
            )
        if status == 400:
            raise RulesSyncError(
                RulesFailure.INVALID_REQUEST,
                f"X refused the request (400): {_problem_text(body)}",
            )
        raise RulesSyncError(
            RulesFailure.SERVER_ERROR,
            f"rules endpoint answered HTTP {status}: {_problem_text(body)}",
        )

    def _backoff(self, attempt: int) -> float:
        return float(min(self._retry_initial * 2.0 ** min(attempt, _MAX_EXPONENT),
                         self._retry_max))

    async def _wait(self, seconds: float, why: str) -> None:
        if seconds > self._max_wait:
            raise RulesSyncError(
                RulesFailure.RATE_LIMITED,
                f"{why}: the next request is allowed in {seconds:.0f} s, "
                f"longer than the {self._max_wait:.0f} s we wait",
            )
        if seconds > 0:
            await self._sleep(seconds)

    async def _wait_for_window(self, endpoint: str) -> None:
        window = self._windows[endpoint]
        if window.remaining is None or window.remaining > 0 or window.reset is None:
            return
        delay = window.reset - self._clock()
        # Stale either way after the reset: forget it, the next answer tells us afresh.
        window.remaining = window.reset = None
        await self._wait(delay + 1.0 if delay > 0 else 0.0, f"{endpoint} window exhausted")

    def _note_window(self, endpoint: str, headers: Mapping[str, str]) -> None:
        remaining = header_number(headers, "x-rate-limit-remaining")
        reset = header_number(headers, "x-rate-limit-reset")
        window = self._windows[endpoint]
        if remaining is not None:
            window.remaining = int(remaining)
            if self._metrics is not None:
                self._metrics.x_rate_limit_remaining.labels(endpoint=endpoint).set(remaining)
        if reset is not None:
            # Epoch seconds; tolerate milliseconds from a proxy or a fake server.
            window.reset = reset / 1000.0 if reset > 1e11 else reset

    async def _request(
        self, method: str, endpoint: str, **kwargs: Any
    ) -> httpx.Response:
        failure = ""
        reason = RulesFailure.NETWORK
        delay = 0.0  # before the next attempt; none after the last one
        attempts = itertools.count() if self._max_attempts is None else range(
            self._max_attempts)
        for attempt in attempts:
            if attempt and self._on_retry is not None:
                self._on_retry(reason, attempt, delay, failure)
            await self._wait(delay, failure)
            await self._wait_for_window(endpoint)
            self.requests += 1
            request = self._client.build_request(
                method, RULES_PATH, timeout=REQUEST_TIMEOUT, **kwargs)
            try:
                # Read with a cap (bounded.py): an answer is never buffered past 16 MiB
                # inflated, nor waited for past REQUEST_TIMEOUT in all.
                response = await read_answer(self._client, request, seconds=REQUEST_TIMEOUT)
            except (httpx.TransportError, httpx.DecodingError) as exc:
                reason, failure = RulesFailure.NETWORK, f"{type(exc).__name__}: {exc}"
                delay = self._backoff(attempt)
                continue
            except AnswerTooLarge as exc:
                # No rules page is that large: X (or what stands in for it) is in trouble.
                reason, failure = RulesFailure.SERVER_ERROR, f"{endpoint}: {exc}"
                delay = self._backoff(attempt)
                continue
            self._note_window(endpoint, response.headers)
            status = response.status_code
            if status in (401, 403) and not _is_rule_cap(response):
                raise CredentialsError(
                    f"X refused the credentials on the rules endpoint (HTTP {status}): "
                    f"{_problem_text(_body_or_empty(response))}",
                    Reason.UNAUTHORIZED if status == 401 else Reason.FORBIDDEN,
                )
            if status in (420, 429):
                window = self._windows[endpoint]
                until_reset = (window.reset - self._clock()) if window.reset else 0.0
                window.remaining = None  # the delay below covers it
                reason, failure = RulesFailure.RATE_LIMITED, f"{endpoint} answered {status}"
                delay = max(until_reset + 1.0, self._backoff(attempt))
                continue
            if status >= 500:
                reason, failure = RulesFailure.SERVER_ERROR, f"{endpoint} answered {status}"
                delay = self._backoff(attempt)
                continue
            if status == 402:
                # Pay-per-use credits used up: it passes when they are topped up, as the
                # stream's usage cap does. Wait, never exit 78 (systemd would not restart).
                reason, failure = RulesFailure.USAGE_CAP, f"{endpoint} answered 402 (credits)"
                delay = self._backoff(attempt)
                continue
            return response
        raise RulesSyncError(reason, f"gave up after {self._max_attempts} attempts: {failure}")


# --- the sync procedure -----------------------------------------------------------------


@dataclass(frozen=True)
class SyncResult:
    """What a sync did (or, with dry_run, would do). Truthy when the server holds rules
    afterwards, i.e. a stream connect will not get 409."""

    mode: Mode
    dry_run: bool
    added: tuple[RuleSpec, ...] = ()
    deleted: tuple[ServerRule, ...] = ()
    unchanged: tuple[ServerRule, ...] = ()
    conflicts: tuple[ServerRule, ...] = ()
    active: int = 0
    requests: int = 0
    plan: RulesPlan | None = field(default=None, compare=False)

    def __bool__(self) -> bool:
        return self.active > 0


def _local_failure(
    desired: Sequence[RuleSpec], settings: RulesSettings
) -> RulesSyncError | None:
    problems = check_locally(desired, settings.max_length)
    too_many = settings.mode == "sync" and len(desired) > settings.max_rules
    if not problems and not too_many:
        return None
    over_length = any("max_length" in d for p in problems for d in p.details)
    reason = RulesFailure.RULES_CAP if (too_many or over_length) else RulesFailure.INVALID_RULES
    if too_many:
        summary = (
            f"{len(desired)} rules configured, over rules.max_rules = {settings.max_rules}"
        )
    else:
        summary = f"{len(problems)} configured rule(s) cannot be applied (checked locally)"
    return RulesSyncError(reason, summary, problems)


def _invalid_from_errors(
    errors: Sequence[Mapping[str, Any]],
    tags: Mapping[str, str | None],
    *,
    expected_duplicates: frozenset[str],
) -> tuple[list[InvalidRule], bool]:
    """X's per-rule errors as InvalidRules, plus whether a rule-cap problem was among them.
    DuplicateRule for a value we are about to delete is expected and skipped."""
    invalid: list[InvalidRule] = []
    capped = False
    for error in errors:
        slug = problem_slug(str(error.get("type", "")))
        value = str(error.get("value", ""))
        if slug == "rule-cap":
            capped = True
            continue
        if slug == "duplicate-rules":
            if value in expected_duplicates:
                continue
            details = [f"DuplicateRule: the server already holds this value as rule "
                       f"{error.get('id', '?')}"]
        else:
            details = [str(d) for d in error.get("details") or []]
            details = details or [_problem_text(error)]
        invalid.append(InvalidRule(value, tags.get(value), tuple(details)))
    return invalid, capped


async def _validate(api: RulesApi, plan: RulesPlan) -> None:
    """Dry-run every add; raise with every invalid rule, or on the cap, before any change.

    Deletes by the ids we just listed cannot be invalid, so they are not dry-run (that would
    spend POST budget for nothing). When deletes must come first, the dry-run adds still see
    the old rules and may hit the cap: that rule-cap is expected and ignored here (our local
    check already proved the final set fits rules.max_rules)."""
    tags = {r.value: r.tag for r in plan.to_add}
    invalid: list[InvalidRule] = []
    capped = False
    for batch in batches(plan.to_add, ADD_BATCH):
        outcome = await api.add(batch, dry_run=True)
        found, batch_capped = _invalid_from_errors(
            outcome.errors, tags, expected_duplicates=plan.blocked_values
        )
        invalid += found
        capped = capped or batch_capped
    if invalid:
        raise RulesSyncError(
            RulesFailure.INVALID_RULES,
            f"X rejected {len(invalid)} configured rule(s) (dry run)", invalid,
        )
    if capped and plan.adds_first:
        raise RulesSyncError(
            RulesFailure.RULES_CAP,
            f"X refused {len(plan.to_add)} more rule(s) beside the {plan.server_count} it "
            "holds: the account's rule cap is below rules.max_rules",
        )


@dataclass
class _Progress:
    created: list[ServerRule] = field(default_factory=list)
    deleted: int = 0

    def partly(self) -> str:
        return (f"added {len(self.created)}, deleted {self.deleted} before stopping; the "
                "server's rules are partly synced")


async def _apply(api: RulesApi, plan: RulesPlan) -> _Progress:
    """Run the plan's steps. A failure part-way says how far it got (`applied`)."""
    done = _Progress()
    try:
        await _run_steps(api, plan, done)
    except RulesSyncError as exc:
        if exc.applied or not (done.created or done.deleted):
            raise
        raise RulesSyncError(
            exc.reason, f"{exc.summary} ({done.partly()})", exc.invalid, applied=True
        ) from exc
    return done


async def _run_steps(api: RulesApi, plan: RulesPlan, done: _Progress) -> None:
    tags = {r.value: r.tag for r in plan.to_add}
    for step in plan.steps():
        if step.action == "delete":
            for id_batch in batches([r.id for r in step.delete], DELETE_BATCH):
                done.deleted += (await api.delete(id_batch, dry_run=False)).deleted
            continue
        for batch in batches(step.add, ADD_BATCH):
            outcome = await api.add(batch, dry_run=False)
            done.created += outcome.created
            invalid, capped = _invalid_from_errors(
                outcome.errors, tags, expected_duplicates=frozenset()
            )
            if capped or invalid:
                raise RulesSyncError(
                    RulesFailure.RULES_CAP if capped else RulesFailure.INVALID_RULES,
                    "X refused rules while applying", invalid,
                )


async def sync_rules(
    api: RulesApi,
    desired: Sequence[RuleSpec],
    settings: RulesSettings,
    log: FilteringBoundLogger,
    metrics: Metrics,
    *,
    trigger: str,
    dry_run: bool = False,
) -> SyncResult:
    """Local checks, GET, plan, dry-run validation, then (unless dry_run) apply."""
    mode: Mode = settings.mode
    if mode == "off":
        return SyncResult(mode, dry_run)
    failure = _local_failure(desired, settings)
    if failure is not None:
        raise failure
    server = await api.list_rules()
    plan = plan_rules(desired, server, mode=mode, max_rules=settings.max_rules)
    if plan.final_count > settings.max_rules:  # mode "add": the server's rules count too
        raise RulesSyncError(
            RulesFailure.RULES_CAP,
            f"adding {len(plan.to_add)} rule(s) to the {plan.server_count} on the server "
            f"would exceed rules.max_rules = {settings.max_rules}",
        )
    for conflict in plan.conflicts:
        log.warning(
            "rules.tag_conflict", value=conflict.value, server_tag=conflict.tag, mode=mode,
            detail="mode 'add' never deletes: the server's rule is kept with its tag",
        )
    created: list[ServerRule] = []
    deleted = 0
    if not plan.in_sync:
        await _validate(api, plan)
        if not dry_run:
            done = await _apply(api, plan)
            created, deleted = done.created, done.deleted
    active = plan.server_count if dry_run else plan.server_count + len(created) - deleted
    metrics.rules_active.set(active)
    result = SyncResult(
        mode=mode,
        dry_run=dry_run,
        added=plan.to_add,
        deleted=plan.to_delete,
        unchanged=plan.unchanged,
        conflicts=plan.conflicts,
        active=active,
        requests=api.requests,
        plan=plan,
    )
    log.info(
        "rules.synced",
        added=len(plan.to_add) if dry_run else len(created),
        deleted=len(plan.to_delete) if dry_run else deleted,
        unchanged=len(plan.unchanged),
        dry_run=dry_run,
        trigger=trigger,
        mode=mode,
        active=active,
    )
    return result


async def sync_configured_rules(
    client: httpx.AsyncClient,
    settings: Settings,
    log: FilteringBoundLogger,
    metrics: Metrics,
    *,
    trigger: str,
    dry_run: bool = False,
    api: RulesApi | None = None,
) -> SyncResult:
    """The daemon's entry point: sync `settings`' rules over `client` (from make_client),
    or through `api` when the caller configured one (the daemon's retries forever).

    Mode "off" returns a falsy result without any request. Raises RulesSyncError (a
    RulesError, with `.reason` "rules_cap" or "invalid_rules", ...) when the rules cannot be
    applied — the caller applies rules.on_error — and CredentialsError on 401/403."""
    if settings.rules.mode == "off":
        return SyncResult("off", dry_run)
    if api is None:
        api = RulesApi(client, metrics)
    return await sync_rules(
        api, settings.resolved_rules(), settings.rules, log, metrics,
        trigger=trigger, dry_run=dry_run,
    )
