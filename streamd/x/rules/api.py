"""The rules endpoints, `GET/POST /2/tweets/search/stream/rules`, over one httpx client.

Pagination, the endpoints' rate-limit windows, and retries as a `ReconnectPolicy` decides
them (README "Rules as code"). Every answer is read with a cap (body.py) and through
wire.py; every wait goes through the injected `sleep`, so a caller can cancel it (SIGTERM)
and count it as deliberate waiting (the systemd watchdog).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import orjson

from streamd.config import BackoffSettings, RuleSpec
from streamd.errors import AnswerTooLarge, CredentialsError, RulesSyncError, StreamdError
from streamd.ops.metrics import Metrics
from streamd.reasons import ExitCode, Reason, RulesFailure
from streamd.x.body import read_answer
from streamd.x.classify import Classification
from streamd.x.reconnect import Decision, Delay, Exit, ReconnectPolicy
from streamd.x.rules.plan import ServerRule
from streamd.x.wire import Answer, Problem, RateLimit, parse_answer

RULES_PATH = "/2/tweets/search/stream/rules"
PAGE_SIZE = 1000  # GET max_results upper bound
REQUEST_TIMEOUT = 30.0  # the shared client has no read timeout (the stream's watchdog owns it)

# A person at a terminal hears about an endpoint in trouble within a minute or two: 1 s
# doubling to 60 s between a few tries, and no wait past one rate-limit window (15 min).
TERMINAL_BACKOFF = BackoffSettings(http_initial=1.0, http_max=60.0)
TERMINAL_ATTEMPTS = 6
TERMINAL_MAX_WAIT = 16 * 60.0

Sleep = Callable[[float], Awaitable[None]]
# (reason, attempt number that failed, seconds until the next one, what went wrong)
RetryHook = Callable[[str, int, float, str], None]


def terminal_policy(
    max_attempts: int = TERMINAL_ATTEMPTS,
    *,
    max_wait: float = TERMINAL_MAX_WAIT,
    clock: Callable[[], float] = time.time,
) -> ReconnectPolicy:
    """The rules endpoints' policy for a command: a few tries, then exit 70."""
    return ReconnectPolicy.for_rules(TERMINAL_BACKOFF, max_attempts=max_attempts,
                                     max_wait=max_wait, clock=clock)


@dataclass
class _Window:
    """The last x-rate-limit-* headers of one endpoint."""

    remaining: int | None = None
    reset: float | None = None


@dataclass(frozen=True)
class AddOutcome:
    created: tuple[ServerRule, ...]
    errors: tuple[Problem, ...]  # X's per-rule errors (invalid, duplicate, rule-cap)


@dataclass(frozen=True)
class DeleteOutcome:
    deleted: int
    not_deleted: int


def rules_of(document: Mapping[str, Any]) -> list[ServerRule]:
    """The rules in a rules answer's `data`."""
    items = document.get("data") or []
    return [ServerRule(str(item["id"]), str(item["value"]), item.get("tag"))
            for item in items if isinstance(item, dict)]


def _count(value: Any, default: int) -> int:
    """A count from X's `meta.summary`; a missing or odd value is not worth a crash."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10:
        return int(value)  # newer specs type the counts as strings
    return max(0, default)


def _is_rule_cap(answer: Answer) -> bool:
    """A top-level rule-cap problem (X's status for it is not documented: may be any 4xx)."""
    return answer.top is not None and answer.top.slug == "rule-cap"


def _refusal(decision: Exit) -> StreamdError:
    """The error a decision to stop trying ends the call with."""
    if decision.code is ExitCode.CREDENTIALS:
        return CredentialsError(decision.detail, decision.reason)
    return RulesSyncError(RulesFailure(decision.reason.value), decision.detail)


class RulesApi:
    """GET/POST /2/tweets/search/stream/rules with X's rate limits honoured.

    Before each request, if the endpoint's window is exhausted (remaining 0) we wait for its
    reset. A failed request (network, 5xx, 402, 429) is retried as `policy` decides: a
    command's (`terminal_policy`, the default) gives up after a few tries; the daemon's
    (`ReconnectPolicy.for_rules(settings.backoff)`) waits for as long as it takes, since a
    rules endpoint in trouble is weather, as it is for the stream (only 401/403 and invalid
    rules are fatal). `on_retry` hears of each retry before its wait."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        metrics: Metrics | None = None,
        *,
        policy: ReconnectPolicy | None = None,
        sleep: Sleep = anyio.sleep,
        on_retry: RetryHook | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._policy = policy or terminal_policy()
        self._sleep = sleep
        self._on_retry = on_retry
        self._windows = {"rules_get": _Window(), "rules_post": _Window()}
        self.requests = 0  # sent, retries included (tests and `rules sync` output)

    # -- public calls --------------------------------------------------------------------

    async def list_rules(self) -> list[ServerRule]:
        """Every rule on the server, following `meta.next_token`."""
        rules: list[ServerRule] = []
        params: dict[str, str] = {"max_results": str(PAGE_SIZE)}
        while True:
            document = self._expect(await self._request("GET", "rules_get", params=params),
                                    {200})
            rules += rules_of(document)
            token = (document.get("meta") or {}).get("next_token")
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
        answer = await self._post(payload, dry_run=dry_run)
        return AddOutcome(tuple(rules_of(self._expect(answer, {200, 201}))), answer.errors)

    async def delete(self, ids: Sequence[str], *, dry_run: bool) -> DeleteOutcome:
        """One POST of `delete` by ids (the caller batches). Ids already gone count as
        not deleted; that is not an error for a sync."""
        answer = await self._post({"delete": {"ids": list(ids)}}, dry_run=dry_run)
        summary = (self._expect(answer, {200}).get("meta") or {}).get("summary") or {}
        deleted = _count(summary.get("deleted"), len(ids))
        return DeleteOutcome(deleted, _count(summary.get("not_deleted"), len(ids) - deleted))

    # -- plumbing ------------------------------------------------------------------------

    async def _post(self, payload: dict[str, Any], *, dry_run: bool) -> Answer:
        params = {"dry_run": "true"} if dry_run else None
        return await self._request(
            "POST", "rules_post", params=params, content=orjson.dumps(payload),
            headers={"Content-Type": "application/json"},
        )

    def _expect(self, answer: Answer, ok: set[int]) -> Mapping[str, Any]:
        """The document of an answer with an `ok` status; anything else raises."""
        status = answer.status
        if answer.document is None:
            raise RulesSyncError(
                RulesFailure.SERVER_ERROR,
                f"rules endpoint answered HTTP {status} with a non-JSON body",
            )
        if status in ok:
            return answer.document
        if _is_rule_cap(answer):
            raise RulesSyncError(
                RulesFailure.RULES_CAP, f"X refused the rules: {answer.summary()}"
            )
        if status == 400:
            raise RulesSyncError(
                RulesFailure.INVALID_REQUEST,
                f"X refused the request (400): {answer.summary()}",
            )
        raise RulesSyncError(
            RulesFailure.SERVER_ERROR,
            f"rules endpoint answered HTTP {status}: {answer.summary()}",
        )

    async def _wait(self, decision: Decision) -> None:
        # The rules endpoints' failures are never no_rules or spool_full.
        assert isinstance(decision, Delay | Exit), decision
        if isinstance(decision, Exit):
            raise _refusal(decision)
        if decision.seconds > 0:
            await self._sleep(decision.seconds)

    async def _pace(self, endpoint: str) -> None:
        window = self._windows[endpoint]
        if window.remaining != 0 or window.reset is None:
            return
        reset = window.reset
        # Stale either way after the reset: forget it, the next answer tells us afresh.
        window.remaining = window.reset = None
        await self._wait(self._policy.until_reset(reset, f"{endpoint} window exhausted"))

    def _note_window(self, endpoint: str, limits: RateLimit) -> None:
        window = self._windows[endpoint]
        if limits.remaining is not None:
            window.remaining = limits.remaining
            if self._metrics is not None:
                self._metrics.x_rate_limit_remaining.labels(endpoint=endpoint).set(
                    limits.remaining)
        if limits.reset is not None:
            window.reset = limits.reset

    def _failure(self, endpoint: str, answer: Answer) -> Classification | None:
        """What is wrong with an answer the policy must decide on; None for the answers
        the caller reads (a success, or a refusal of the rules themselves)."""
        status = answer.status
        assert status is not None
        if status in (401, 403) and not _is_rule_cap(answer):
            return Classification(
                Reason.UNAUTHORIZED if status == 401 else Reason.FORBIDDEN, status=status,
                detail=f"X refused the credentials on the rules endpoint (HTTP {status}): "
                       f"{answer.summary()}",
            )
        if status in (420, 429):
            window = self._windows[endpoint]
            window.remaining = None  # the retry's wait covers the window
            return Classification(Reason.RATE_LIMITED, status=status, reset_at=window.reset,
                                  detail=f"{endpoint} answered {status}")
        if status >= 500:
            return Classification(Reason.SERVER_ERROR, status=status,
                                  detail=f"{endpoint} answered {status}")
        if status == 402:
            # Pay-per-use credits used up: it passes when they are topped up, as the
            # stream's usage cap does. Wait, never exit 78 (systemd would not restart).
            return Classification(Reason.USAGE_CAP, status=status,
                                  detail=f"{endpoint} answered 402 (credits)")
        return None

    async def _request(self, method: str, endpoint: str, **kwargs: Any) -> Answer:
        while True:
            await self._pace(endpoint)
            self._policy.start_attempt()
            self.requests += 1
            request = self._client.build_request(
                method, RULES_PATH, timeout=REQUEST_TIMEOUT, **kwargs)
            try:
                # Read with a cap (body.py): an answer is never buffered past 16 MiB
                # inflated, nor waited for past REQUEST_TIMEOUT in all.
                response = await read_answer(self._client, request, seconds=REQUEST_TIMEOUT)
            except (httpx.TransportError, httpx.DecodingError) as exc:
                failure = Classification(Reason.NETWORK, detail=f"{type(exc).__name__}: {exc}")
            except AnswerTooLarge as exc:
                # No rules page is that large: X (or what stands in for it) is in trouble.
                failure = Classification(Reason.SERVER_ERROR, detail=f"{endpoint}: {exc}")
            else:
                answer = parse_answer(response.status_code, response.headers, response.content)
                self._note_window(endpoint, answer.rate_limit)
                found = self._failure(endpoint, answer)
                if found is None:
                    self._policy.on_data()  # a good answer: the next trouble starts afresh
                    return answer
                failure = found
            decision = self._policy.decide(failure)
            if isinstance(decision, Delay) and self._on_retry is not None:
                self._on_retry(str(decision.reason), decision.attempt - 1, decision.seconds,
                               failure.detail or "")
            await self._wait(decision)
