"""Rules as code: make the server's filtered-stream rules match the configuration.

Three layers, each usable alone:

* `plan`: pure planning, `check_locally` and `plan_rules`, no I/O;
* `api`: `RulesApi`, the GET/POST rules endpoints with pagination, batching, the endpoints'
  rate-limit windows and retries as a `ReconnectPolicy` decides them;
* `sync`: `sync_rules` / `sync_configured_rules`, the procedure built from both.
"""

from streamd.x.rules.api import (
    PAGE_SIZE,
    RULES_PATH,
    AddOutcome,
    DeleteOutcome,
    RetryHook,
    RulesApi,
    rules_of,
    terminal_policy,
)
from streamd.x.rules.plan import (
    Mode,
    RuleKey,
    RulesPlan,
    ServerRule,
    Step,
    batches,
    check_locally,
    plan_rules,
    rule_key,
)
from streamd.x.rules.sync import SyncResult, sync_configured_rules, sync_rules

__all__ = [
    "PAGE_SIZE",
    "RULES_PATH",
    "AddOutcome",
    "DeleteOutcome",
    "Mode",
    "RetryHook",
    "RuleKey",
    "RulesApi",
    "RulesPlan",
    "ServerRule",
    "Step",
    "SyncResult",
    "batches",
    "check_locally",
    "plan_rules",
    "rule_key",
    "rules_of",
    "sync_configured_rules",
    "sync_rules",
    "terminal_policy",
]
