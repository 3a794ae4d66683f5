"""streamd's exception hierarchy. Every error a user can see derives from StreamdError."""

from __future__ import annotations

from streamd.reasons import ExitCode


class StreamdError(Exception):
    """Base class. `exit_code` is what the process exits with if this error ends it."""

    exit_code: ExitCode = ExitCode.INTERNAL


class ConfigError(StreamdError):
    """The configuration is invalid. `key` is the dotted key at fault (e.g. `kafka.topic`)."""

    exit_code = ExitCode.CONFIG

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config key {key!r}: {problem}" if key else problem)


class RulesError(StreamdError):
    """The configured rules cannot be applied (invalid, over the cap, too long)."""

    exit_code = ExitCode.CONFIG


class CredentialsError(StreamdError):
    """X refused the credentials or the app's access level (401/403), on any endpoint.

    `reason` is the disconnect reason it stands for: "unauthorized" (401) or "forbidden"
    (403)."""

    exit_code = ExitCode.CREDENTIALS

    def __init__(self, message: str, reason: str = "unauthorized") -> None:
        self.reason = reason
        super().__init__(message)


class FatalDisconnect(StreamdError):
    """A disconnect whose reason must not be retried; carries the reason's exit code."""

    def __init__(self, reason: str, exit_code: ExitCode, detail: str = "") -> None:
        self.reason = reason
        self.exit_code = exit_code
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
