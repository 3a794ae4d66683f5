"""streamd's exceptions, all in one place. Every error a user can see derives from
StreamdError, and its `exit_code` is what the process exits with if that error ends it:

    StreamdError ............................ 70  internal / transient, unless below
    ├── ConfigError ......................... 78  the configuration is wrong (`key`)
    │   └── MissingSecretError .............. 78  no token or password configured at all
    ├── CredentialsError .................... 77  X refused the token or the app (401/403)
    ├── RulesError .......................... 78  the configured rules cannot be applied
    │   └── RulesSyncError .................. 78, or 70 when its `reason` is transient
    ├── FatalDisconnect ..................... the reason's code (77 or 78)
    ├── AnswerTooLarge ...................... 70  X answered more than the cap allows
    ├── ConnectionsApiError ................. 70  the Connections API failed (transient)
    │   └── ConnectionsUnavailable .......... 70  no access to it (403) or absent (404)
    ├── SpoolError .......................... 70  the spool cannot be used
    │   ├── SpoolInUse ...................... 70  another daemon holds the directory
    │   └── SpoolFull ....................... 70  over spool.max_bytes, or the disk is full
    └── BrokerError ......................... 70  the local (demo/test) broker failed

77 and 78 tell systemd not to restart (RestartPreventExitStatus): only what a restart
cannot fix maps to them. Code that catches an error to retry it catches the narrowest
class; the daemon and the command line map whatever reaches them by `exit_code`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streamd.reasons import ExitCode, Reason, RulesFailure


class StreamdError(Exception):
    """Base class. `exit_code` is what the process exits with if this error ends it."""

    exit_code: ExitCode = ExitCode.INTERNAL


class ConfigError(StreamdError):
    """The configuration is invalid. `key` is the dotted key at fault (e.g. `kafka.topic`);
    `problem` says what is wrong without quoting a value that could be a secret. Exit 78."""

    exit_code = ExitCode.CONFIG

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config key {key!r}: {problem}" if key else problem)


class MissingSecretError(ConfigError):
    """No source configured for a required secret. A command may report this itself
    (`check` shows it as a failed check); a secret that is configured but unusable is a
    plain ConfigError, and every command exits 78 on it. Exit 78."""


class CredentialsError(StreamdError):
    """X refused the credentials or the app's access level (401/403), on any endpoint.
    `reason` is the disconnect reason it stands for. Exit 77."""

    exit_code = ExitCode.CREDENTIALS

    def __init__(self, message: str, reason: Reason = Reason.UNAUTHORIZED) -> None:
        self.reason = reason
        super().__init__(message)


class RulesError(StreamdError):
    """The configured rules cannot be applied (invalid, over the cap, too long). Exit 78."""

    exit_code = ExitCode.CONFIG


@dataclass(frozen=True)
class InvalidRule:
    """A configured rule that cannot be applied, with X's `details[]` (or our own words)."""

    value: str
    tag: str | None
    details: tuple[str, ...]

    def describe(self) -> str:
        tag = f" (tag {self.tag!r})" if self.tag is not None else ""
        # X's details verbatim, one per line when there are several (they end in '.').
        if len(self.details) == 1:
            return f"rule {self.value!r}{tag}: {self.details[0]}"
        return f"rule {self.value!r}{tag}:" + "".join(f"\n    {d}" for d in self.details)


class RulesSyncError(RulesError):
    """A rules sync failed: `reason` says why, `invalid` lists each offending rule, and
    `applied` whether the server was changed. Exit 78, or 70 when the reason is a
    transient condition of the rules endpoints (a restart may succeed)."""

    def __init__(
        self,
        reason: RulesFailure | str,
        summary: str,
        invalid: Sequence[InvalidRule] = (),
        *,
        applied: bool = False,
    ) -> None:
        self.reason = RulesFailure(reason)  # one type, whichever form the caller had
        if self.reason.transient:
            self.exit_code = ExitCode.INTERNAL
        self.summary = summary
        self.invalid = tuple(invalid)
        self.applied = applied
        lines = [f"{self.reason}: {summary}"]
        lines += [f"  {rule.describe()}" for rule in self.invalid]
        if not applied:
            lines.append("  (no rule was changed on the server)")
        super().__init__("\n".join(lines))


class FatalDisconnect(StreamdError):
    """A disconnect whose reason must not be retried; exits with that reason's code (77 for
    unauthorized/forbidden, 78 for invalid_request and no_rules without configured rules)."""

    def __init__(self, reason: str, exit_code: ExitCode, detail: str = "") -> None:
        self.reason = reason
        self.exit_code = exit_code
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class AnswerTooLarge(StreamdError):
    """An answer from X inflated past its cap; nothing past the cap was kept. Transient
    (the caller retries it like a 5xx); exit 70 if it ends a command."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"answer larger than {limit} bytes")
        self.limit = limit


class ConnectionsApiError(StreamdError):
    """A request to X's Connections API failed: network, 5xx, 429, an answer that is not
    the documented shape. The daemon carries on as if the API did not exist (this
    disconnect is waited out the old way); a command exits 70."""


class ConnectionsUnavailable(ConnectionsApiError):
    """The app cannot use the Connections API: its tier has no access (403) or the endpoint
    does not exist (404). The daemon stops asking for the rest of its run."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"the Connections API is not available to this app (HTTP {status}): "
                         f"{detail}")


class SpoolError(StreamdError):
    """The spool cannot be opened, read or written. Exit 70 (the daemon reports a spool it
    cannot open as a ConfigError on `spool.dir`, 78)."""


class SpoolInUse(SpoolError):
    """Another process holds the spool directory."""


class SpoolFull(SpoolError):
    """The batch does not fit: over the configured max_bytes, or the disk is full.
    Nothing of the batch was written."""


class BrokerError(StreamdError):
    """The local Kafka-compatible broker (demo, tests, bench) could not be started or
    driven. Exit 70."""
