"""The sync procedure: make the server's filtered-stream rules match the configuration.

Local checks, GET, plan, validate the whole change with `dry_run=true`, then apply it, or
stop, changing nothing, on the first problem (README "Rules as code").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from streamd.config import RuleSpec, RulesSettings, Settings
from streamd.errors import InvalidRule, RulesSyncError
from streamd.ops.logs import Logger
from streamd.ops.metrics import Metrics
from streamd.reasons import RulesFailure
from streamd.x.rules.api import RulesApi
from streamd.x.rules.plan import Mode, RulesPlan, ServerRule, batches, check_locally, plan_rules
from streamd.x.wire import Problem

# X documents no per-request limit for `add`; 100 keeps bodies and error lists small while
# 1000 rules still take only 10 POSTs of the 100-per-15-min budget.
ADD_BATCH = 100
# The delete-by-ids list mirrors GET's `ids` maxItems of 1000.
DELETE_BATCH = 1000


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
    errors: Sequence[Problem],
    tags: Mapping[str, str | None],
    *,
    expected_duplicates: frozenset[str],
) -> tuple[list[InvalidRule], bool]:
    """X's per-rule errors as InvalidRules, plus whether a rule-cap problem was among them.
    DuplicateRule for a value we are about to delete is expected and skipped."""
    invalid: list[InvalidRule] = []
    capped = False
    for error in errors:
        value = error.value or ""
        if error.slug == "rule-cap":
            capped = True
            continue
        if error.slug == "duplicate-rules":
            if value in expected_duplicates:
                continue
            details: tuple[str, ...] = (
                "DuplicateRule: the server already holds this value as rule "
                f"{error.rule_id or '?'}",
            )
        else:
            details = error.details or (error.headline() or "no detail",)
        invalid.append(InvalidRule(value, tags.get(value), details))
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
    log: Logger,
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
    log: Logger,
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
