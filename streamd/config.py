"""The configuration: one TOML file, overridable per scalar key from the environment.

`load_settings()` is the only entry point that touches files and the environment; the
models themselves are plain, frozen pydantic models so tests can build them from dicts
(`Settings.model_validate({...})`, every section optional). Every problem surfaces as ONE
`ConfigError(key, problem)` naming the dotted key; secret values never appear in it.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import socket
import stat
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass

from streamd.endpoints import ENDPOINTS, Endpoint, partition_from_hostname
from streamd.errors import ConfigError, MissingSecretError
from streamd.ops.terminal import printable

DEFAULT_CONFIG_PATH = "/etc/streamd/streamd.toml"
CONFIG_PATH_ENV = "STREAMD_CONFIG"
ENV_PREFIX = "STREAMD_"
BEARER_TOKEN_CREDENTIAL = "x_bearer_token"
SASL_PASSWORD_CREDENTIAL = "kafka_sasl_password"

# Field names whose values must never be echoed in an error message: the secrets, the paths
# of secret files (a token pasted into bearer_token_file would be echoed back), and the API
# URL (it may carry user:password@).
_SECRET_KEYS = frozenset(
    {"bearer_token", "sasl_password", "bearer_token_file", "sasl_password_file", "api_url"}
)
# (section, key) of the values that are secrets when written in the config file itself.
_INLINE_SECRETS = (("x", "bearer_token"), ("kafka", "sasl_password"))

# --- X API field/expansion enums (https://docs.x.com/x-api/fundamentals/fields; OpenAPI 2.166)


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


TWEET_FIELDS = _names(
    "article attachments author_id card_uri community_id context_annotations "
    "conversation_id created_at display_text_range edit_controls edit_history_tweet_ids "
    "entities geo id in_reply_to_user_id lang matched_media_notes media_metadata "
    "non_public_metrics note_request_suggestions note_tweet organic_metrics "
    "paid_partnership possibly_sensitive promoted_metrics public_metrics referenced_tweets "
    "reply_settings scopes source suggested_source_links suggested_source_links_with_counts "
    "text withheld"
)
EXPANSIONS = _names(
    "article.cover_media article.media_entities attachments.media_keys "
    "attachments.media_source_tweet attachments.poll_ids author_id edit_history_tweet_ids "
    "entities.mentions.username geo.place_id in_reply_to_user_id "
    "entities.note.mentions.username referenced_tweets.id "
    "referenced_tweets.id.attachments.media_keys referenced_tweets.id.author_id"
)
MEDIA_FIELDS = _names(
    "alt_text duration_ms height media_key non_public_metrics organic_metrics "
    "preview_image_url promoted_metrics public_metrics type url variants width"
)
POLL_FIELDS = _names("duration_minutes end_datetime id options voting_status")
USER_FIELDS = _names(
    "affiliation confirmed_email connection_status created_at description entities id "
    "is_identity_verified location most_recent_tweet_id name parody pinned_tweet_id "
    "profile_banner_url profile_image_url protected public_metrics receives_your_dm "
    "subscription subscription_type url username verified verified_followers_count "
    "verified_type withheld"
)
PLACE_FIELDS = _names(
    "contained_within country country_code full_name geo id name place_type"
)


def _enum_list(allowed: frozenset[str]) -> AfterValidator:
    """A validator for an X list parameter: known values only, no duplicates."""

    def check(values: list[str]) -> list[str]:
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise ValueError(
                f"unknown value {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}"
            )
        if len(set(values)) != len(values):
            raise ValueError("duplicate values")
        return values

    return AfterValidator(check)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _acks(value: Any) -> Any:
    # aiokafka takes 0, 1 or "all"; TOML may say 1 or "1", the environment always says "1".
    if isinstance(value, str):
        value = value.strip().lower()
        if value in {"0", "1"}:
            return int(value)
        if value == "-1":
            return "all"
    if value == -1 and not isinstance(value, bool):
        return "all"
    return value


# The most a secret file may hold. A bearer token is about 110 characters; the cap keeps a
# wrong path (a log file, /dev/zero) from being read whole into memory and into a header.
MAX_SECRET_BYTES = 16_384
_BOM = "\ufeff"


@dataclass(frozen=True)
class _SecretKind:
    """What a secret may hold, and how the error names it."""

    noun: str  # "a bearer token"
    ascii_only: bool  # True: printable ASCII without spaces (an HTTP header token)


_TOKEN = _SecretKind("a bearer token", ascii_only=True)
_PASSWORD = _SecretKind("a SASL password", ascii_only=False)


def _char_problem(text: str, kind: _SecretKind) -> str | None:
    """The first character `kind` may not hold, described without showing the value: the
    position and, for a control character (never part of a real secret), its code."""
    for index, char in enumerate(text, start=1):
        code = ord(char)
        if code < 0x20 or 0x7F <= code < 0xA0:
            return f"a control character (0x{code:02x}) at character {index}"
        if char == _BOM:
            return f"a byte-order mark (U+FEFF) at character {index}"
        if kind.ascii_only and char == " ":
            return f"a space at character {index}"
        if kind.ascii_only and code > 0x7E:
            return f"a non-ASCII character at character {index}"
        if printable(char) != char:
            # Bidi controls and line separators: never part of a password, and shown as
            # escapes everywhere else (streamd.ops.terminal).
            return f"a control character (U+{code:04X}) at character {index}"
    return None


def _check_secret(raw: str, kind: _SecretKind, where: str) -> str:
    """The secret in `raw` (one line; one trailing newline and surrounding spaces are
    dropped), else ValueError naming what is wrong in `where`'s words, never the value.

    A token with a second line or a stray byte would go out in the Authorization header,
    where httpx refuses it with an error that quotes the header: so it is refused here,
    before any request, with a message that does not."""
    if raw.startswith(_BOM):
        raise ValueError(
            f"{where} starts with a byte-order mark (BOM); save it as plain UTF-8 without one"
        )
    value = raw.removesuffix("\n").removesuffix("\r").strip(" ")
    lines = value.replace("\r\n", "\n").replace("\r", "\n").count("\n") + 1
    if lines > 1:
        raise ValueError(f"{where} holds {lines} lines; {kind.noun} is one line")
    if not value:
        raise ValueError(f"{where} is empty")
    problem = _char_problem(value, kind)
    if problem is not None:
        allowed = (
            "printable ASCII without spaces" if kind.ascii_only
            else "text without control characters"
        )
        raise ValueError(f"{where} holds {problem}; {kind.noun} is {allowed}")
    return value


def _read_secret_file(path: Path, key: str, kind: _SecretKind, where: str) -> str:
    # The path is never shown: a secret pasted into the *_file key would be echoed back.
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(
            key, f"cannot read {where}: {why} (the path is not shown: it may be a secret)"
        ) from None
    if len(raw) > MAX_SECRET_BYTES:
        raise ConfigError(
            key, f"{where} holds more than {MAX_SECRET_BYTES} bytes; {kind.noun} is one short "
            "line: is the path right?"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            key, f"{where} is not UTF-8 text (byte {exc.start + 1}); {kind.noun} is "
            + ("printable ASCII" if kind.ascii_only else "UTF-8 text")
        ) from None
    try:
        return _check_secret(text, kind, where)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _resolve_secret(
    inline: SecretStr | None,
    file: Path | None,
    credential: str,
    environ: Mapping[str, str] | None,
    *,
    kind: _SecretKind,
    inline_key: str,
    file_key: str,
) -> str | None:
    """inline value, else the file, else $CREDENTIALS_DIRECTORY/<credential>, else None.
    Whichever it is must hold one clean line (see _check_secret)."""
    if inline is not None:
        env_name = f"{ENV_PREFIX}{inline_key.replace('.', '__').upper()}"
        try:
            return _check_secret(
                inline.get_secret_value(), kind, f"the value (inline, or ${env_name})"
            )
        except ValueError as exc:
            raise ConfigError(inline_key, str(exc)) from None
    if file is not None:
        return _read_secret_file(file, file_key, kind, "the file")
    env = os.environ if environ is None else environ
    creds_dir = env.get("CREDENTIALS_DIRECTORY")
    if creds_dir:
        candidate = Path(creds_dir) / credential
        if candidate.exists():
            return _read_secret_file(
                candidate, inline_key, kind,
                f"the systemd credential $CREDENTIALS_DIRECTORY/{credential}",
            )
    return None


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, validate_default=True
    )


# --- sections ----------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: a connection that never leaves this machine."""
    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class XSettings(_Section):
    # Declared before api_url, whose validator reads it.
    allow_insecure: bool = False
    api_url: str = "https://api.x.com"
    bearer_token: SecretStr | None = None
    bearer_token_file: Path | None = None
    tweet_fields: Annotated[list[str], _enum_list(TWEET_FIELDS)] = Field(
        default_factory=lambda: [
            "created_at",
            "author_id",
            "lang",
            "entities",
            "public_metrics",
            "conversation_id",
        ]
    )
    expansions: Annotated[list[str], _enum_list(EXPANSIONS)] = Field(
        default_factory=lambda: ["author_id"]
    )
    user_fields: Annotated[list[str], _enum_list(USER_FIELDS)] = Field(
        default_factory=lambda: ["username", "name", "verified"]
    )
    media_fields: Annotated[list[str], _enum_list(MEDIA_FIELDS)] = Field(default_factory=list)
    poll_fields: Annotated[list[str], _enum_list(POLL_FIELDS)] = Field(default_factory=list)
    place_fields: Annotated[list[str], _enum_list(PLACE_FIELDS)] = Field(default_factory=list)
    connect_timeout: float = Field(default=10.0, gt=0)
    # X's Connections API (README "Connection ownership"): learn this connection's id, clean
    # up a stale slot streamd left, name the holder on TooManyConnections.
    connections_api: bool = True
    evict: Annotated[Literal["own", "never", "endpoint"], BeforeValidator(_lower)] = "own"
    evict_min_interval: float = Field(default=300.0, ge=0)

    @field_validator("api_url")
    @classmethod
    def _check_url(cls, value: str, info: ValidationInfo) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        url = urllib.parse.urlsplit(value)
        # Every request carries the bearer token: over plain http it crosses the network in
        # clear text. A typo ("http://api.x.com") must not do that silently; loopback (the
        # simulator, a local proxy) never leaves the machine.
        if url.scheme.lower() == "http" and not info.data.get("allow_insecure", False):
            host = url.hostname or ""
            if not _is_loopback(host):
                raise ValueError(
                    f"http:// to {host} would send the bearer token in clear text: use "
                    "https://, or a loopback host (localhost, 127.0.0.1, [::1]), or set "
                    "x.allow_insecure = true if the network in between is trusted"
                )
        return value.rstrip("/")

    def resolve_bearer_token(self, environ: Mapping[str, str] | None = None) -> str:
        """The app-only bearer token: bearer_token, else bearer_token_file, else the systemd
        credential $CREDENTIALS_DIRECTORY/x_bearer_token. It must be one line of printable
        ASCII (a trailing newline and surrounding spaces are dropped); anything else is a
        ConfigError naming the key and the problem, never the value."""
        token = _resolve_secret(
            self.bearer_token,
            self.bearer_token_file,
            BEARER_TOKEN_CREDENTIAL,
            environ,
            kind=_TOKEN,
            inline_key="x.bearer_token",
            file_key="x.bearer_token_file",
        )
        if token is None:
            raise MissingSecretError(
                "x.bearer_token",
                "no bearer token: set x.bearer_token (env STREAMD_X__BEARER_TOKEN), "
                "x.bearer_token_file, or provide $CREDENTIALS_DIRECTORY/x_bearer_token "
                "(systemd LoadCredential=x_bearer_token)",
            )
        return token


class StreamSettings(_Section):
    stall_timeout: float = Field(default=30.0, gt=0)
    backfill_minutes: int = Field(default=0, ge=0, le=5)
    max_line_bytes: int = Field(default=1_048_576, ge=1024)
    queue_size: int = Field(default=10_000, ge=1)
    # Which stream (README "Enterprise streams"); the partition validator reads these two.
    endpoint: Annotated[
        Literal["filtered", "sample", "sample10", "firehose", "firehose_en", "firehose_ja",
                "firehose_ko", "firehose_pt"],
        BeforeValidator(_lower),
    ] = "filtered"
    partition_from: Literal["", "hostname"] = ""
    partition: int = Field(default=0, ge=0, le=20)
    connections: int = Field(default=1, ge=1, le=2)
    recovery: Annotated[Literal["off", "auto"], BeforeValidator(_lower)] = "off"
    max_recovery_hours: float = Field(default=24.0, gt=0, le=24)

    @field_validator("partition")
    @classmethod
    def _check_partition(cls, value: int, info: ValidationInfo) -> int:
        endpoint = ENDPOINTS[info.data.get("endpoint", "filtered")]
        if info.data.get("partition_from") == "hostname":
            hostname = os.environ.get("HOSTNAME") or socket.gethostname()
            derived = partition_from_hostname(hostname)
            if derived is None:
                raise ValueError(
                    f'stream.partition_from = "hostname" needs a host name ending in '
                    f"-<ordinal> (a StatefulSet pod: streamd-0 is partition 1); this host is "
                    f"{hostname!r}")
            value = derived
        if endpoint.partitions == 0:
            if value:
                raise ValueError(f"stream.endpoint = {endpoint.name!r} has no partitions: "
                                 "leave stream.partition at 0")
            return value
        if not 1 <= value <= endpoint.partitions:
            raise ValueError(f"stream.endpoint = {endpoint.name!r} needs a partition from 1 "
                             f"to {endpoint.partitions} (got {value})")
        return value

    @property
    def stream(self) -> Endpoint:
        return ENDPOINTS[self.endpoint]


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid", hide_input_in_errors=True))
class RuleSpec:
    """One filtered-stream rule as configured. Hashable, so rule sets can be diffed."""

    value: str
    tag: str | None = None

    @field_validator("value")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


def _check_unique(rules: list[RuleSpec], key: str) -> None:
    seen: set[str] = set()
    for rule in rules:
        if rule.value in seen:
            raise ConfigError(key, f"duplicate rule value {rule.value!r}")
        seen.add(rule.value)


class _RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rule: list[RuleSpec] = Field(default_factory=list)


class RulesSettings(_Section):
    mode: Annotated[Literal["sync", "add", "off"], BeforeValidator(_lower)] = "sync"
    on_error: Annotated[Literal["fail", "continue"], BeforeValidator(_lower)] = "fail"
    # "sync" with no rules configured deletes every rule on the App, and X cannot restore
    # deleted rules: load_settings refuses that unless this is set (see refuse_empty_sync).
    allow_empty: bool = False
    file: Path | None = None
    rule: list[RuleSpec] = Field(default_factory=list)
    # Local pre-checks against the tier (enforced by the rules module, per on_error).
    max_rules: int = Field(default=1000, ge=1)
    max_length: int = Field(default=1024, ge=1)

    @field_validator("rule")
    @classmethod
    def _unique(cls, rules: list[RuleSpec]) -> list[RuleSpec]:
        values = [r.value for r in rules]
        for value in values:
            if values.count(value) > 1:
                raise ValueError(f"duplicate rule value {value!r}")
        return rules

    def resolved_rules(self, base_dir: str | os.PathLike[str] | None = None) -> list[RuleSpec]:
        """Inline [[rules.rule]] entries followed by those of `rules.file` (a TOML file of
        [[rule]] tables; a relative path is taken from base_dir, normally the config
        file's directory)."""
        rules = list(self.rule)
        if self.file is not None:
            path = self.file
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            rules.extend(_load_rules_file(path))
        _check_unique(rules, "rules.file" if self.file is not None else "rules.rule")
        return rules


def _load_rules_file(path: Path) -> list[RuleSpec]:
    data = _read_toml(path, key="rules.file")
    try:
        return list(_RulesFile.model_validate(data).rule)
    except ValidationError as exc:
        raise _config_error_from(exc, prefix=f"rules.file({path})", root=_RulesFile) from None


class KafkaSettings(_Section):
    bootstrap_servers: str = "localhost:9092"
    topic: str = Field(default="x.tweets", min_length=1)
    dlq_topic: str = Field(default="x.tweets.dlq", min_length=1)
    enable_idempotence: bool = True
    compression: Annotated[
        Literal["none", "gzip", "snappy", "lz4", "zstd"], BeforeValidator(_lower)
    ] = "zstd"
    acks: Annotated[Literal["all", 0, 1], BeforeValidator(_acks)] = "all"
    linger_ms: int = Field(default=5, ge=0)
    max_batch_bytes: int = Field(default=1_048_576, ge=1)
    max_request_size: int = Field(default=1_048_576, ge=1024)
    # Bytes submitted to the broker and not yet acknowledged. Past it, live records wait a
    # moment for acks, then go to the spool: memory stays flat however long Kafka stalls.
    max_in_flight_bytes: int = Field(default=4_194_304, ge=65_536)
    client_id: str = Field(default="streamd", min_length=1)
    # Unset: the stream's own URL, with its partition (Settings.ce_source).
    ce_source: str | None = Field(default=None, min_length=1)
    # One timeout per phase, in seconds: a produce request's answer
    # (aiokafka's request_timeout_ms); the publisher's own wait for a batch's ack, or for
    # aiokafka to take a batch, before it keeps the records itself (spools them); starting
    # the producer and fetching metadata; and the flush at shutdown.
    request_timeout: float = Field(default=10.0, gt=0)
    ack_timeout: float = Field(default=10.0, gt=0)
    startup_timeout: float = Field(default=10.0, gt=0)
    flush_timeout: float = Field(default=15.0, gt=0)
    # Deprecated: sets each of request_timeout, ack_timeout and startup_timeout that is
    # not set itself (it used to be all three); Settings.warnings() names the new keys.
    publish_timeout: float | None = Field(default=None, gt=0)
    PUBLISH_TIMEOUT_SETS: ClassVar[tuple[str, ...]] = (
        "request_timeout", "ack_timeout", "startup_timeout")
    security_protocol: Annotated[
        Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"], BeforeValidator(_upper)
    ] = "PLAINTEXT"
    sasl_mechanism: Annotated[
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None, BeforeValidator(_upper)
    ] = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @model_validator(mode="after")
    def _publish_timeout_alias(self) -> KafkaSettings:
        if self.publish_timeout is not None:
            for key in self.PUBLISH_TIMEOUT_SETS:
                if key not in self.model_fields_set:
                    # Frozen model: the one place a field is filled in after validation.
                    object.__setattr__(self, key, self.publish_timeout)
        return self

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_servers(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("must list at least one host:port")
        for server in servers:
            _split_host_port(server)
        return ",".join(servers)

    @field_validator("sasl_mechanism")
    @classmethod
    def _sasl_needs_protocol(
        cls, value: str | None, info: ValidationInfo
    ) -> str | None:
        protocol = info.data.get("security_protocol", "")
        if protocol.startswith("SASL_") and value is None:
            raise ValueError(f"required when security_protocol is {protocol}")
        return value

    @field_validator("sasl_username")
    @classmethod
    def _sasl_needs_user(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("sasl_mechanism") is not None and not value:
            raise ValueError("required when sasl_mechanism is set")
        return value

    def resolve_sasl_password(self, environ: Mapping[str, str] | None = None) -> str | None:
        """None when SASL is not configured; else sasl_password, sasl_password_file, or
        $CREDENTIALS_DIRECTORY/kafka_sasl_password."""
        if self.sasl_mechanism is None:
            return None
        password = _resolve_secret(
            self.sasl_password,
            self.sasl_password_file,
            SASL_PASSWORD_CREDENTIAL,
            environ,
            kind=_PASSWORD,
            inline_key="kafka.sasl_password",
            file_key="kafka.sasl_password_file",
        )
        if password is None:
            raise MissingSecretError(
                "kafka.sasl_password",
                "no SASL password: set kafka.sasl_password, kafka.sasl_password_file, or "
                "provide $CREDENTIALS_DIRECTORY/kafka_sasl_password "
                "(systemd LoadCredential=kafka_sasl_password)",
            )
        return password


class SpoolSettings(_Section):
    dir: Path = Path("/var/lib/streamd/spool")
    max_bytes: int = Field(default=1_073_741_824, gt=0)
    batch_interval: float = Field(default=0.2, gt=0)


@dataclass(frozen=True)
class DirectoryPlan:
    """What `streamd run` would do to use a directory, found without creating anything
    (`streamd check` reports it; run's error on a spool.dir it cannot create quotes it)."""

    path: Path  # absolute
    missing: tuple[Path, ...]  # what run would create, outermost first
    base: Path  # the nearest existing ancestor (the path itself when it exists)
    problem: str | None  # why run could not create or write it, else None


def plan_directory(path: Path) -> DirectoryPlan:
    """Creating `path` (mkdir -p), judged by looking only: the nearest existing ancestor
    must be a directory this process may write. Root passes any permission check
    (access(2) says so), except on a read-only file system (EROFS)."""
    path = path.absolute()
    missing: list[Path] = []
    base = path
    while not base.exists() and base != base.parent:
        missing.append(base)
        base = base.parent
    missing.reverse()
    problem: str | None = None
    if not base.is_dir():
        problem = (f"{base} is a file, not a directory" if base.exists()
                   else f"{base} does not exist")
        if missing:
            problem += f", so {missing[0]} cannot be created"
    elif not os.access(base, os.W_OK | os.X_OK):
        who = f"uid {os.geteuid()}"
        problem = (f"no write permission on {base} for this user ({who}), so {missing[0]} "
                   "cannot be created" if missing
                   else f"no write permission on {base} for this user ({who})")
    return DirectoryPlan(path, tuple(missing), base, problem)


def suggested_spool_dir(environ: Mapping[str, str] | None = None) -> Path:
    """A spool.dir that fits where streamd runs: systemd's $STATE_DIRECTORY (from
    StateDirectory=, the unit's) + /spool, else the user's state directory
    ($XDG_STATE_HOME, default ~/.local/state) + /streamd/spool."""
    env = os.environ if environ is None else environ
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / "spool"
    xdg = env.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "streamd" / "spool"


def spool_dir_fix(environ: Mapping[str, str] | None = None) -> str:
    """What to do about a spool.dir this user cannot create or write."""
    env = os.environ if environ is None else environ
    text = (f"set spool.dir (or STREAMD_SPOOL__DIR) to a directory this user may write, "
            f"e.g. spool.dir = \"{suggested_spool_dir(env)}\"")
    if not env.get("STATE_DIRECTORY"):
        text += ("; as a systemd service, StateDirectory=streamd creates /var/lib/streamd "
                 "for it (README, \"Running under systemd\")")
    return text


def _split_host_port(value: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^\s:\[\]]+):(\d+)", value)
    if match is None:
        raise ValueError(f"{value!r} must be host:port (IPv6 as [addr]:port)")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0..65535")
    return host, port


class HttpSettings(_Section):
    listen: str = "127.0.0.1:9464"

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        _split_host_port(value)
        return value

    @property
    def host(self) -> str:
        return _split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        """0 means an ephemeral port (tests)."""
        return _split_host_port(self.listen)[1]


# Each *_max key and the key it may not be below.
_BACKOFF_FLOORS = {
    "network_max": "network_step",
    "http_max": "http_initial",
    "rate_limit_max": "rate_limit_initial",
    "usage_cap_max": "usage_cap_initial",
}


class BackoffSettings(_Section):
    """Seconds; the reconnect policy (streamd.x.reconnect) takes this section as it is."""

    network_step: float = Field(default=0.25, ge=0)
    network_max: float = Field(default=16.0, ge=0)
    http_initial: float = Field(default=5.0, ge=0)
    http_max: float = Field(default=320.0, ge=0)
    rate_limit_initial: float = Field(default=60.0, ge=0)
    rate_limit_max: float = Field(default=960.0, ge=0)
    usage_cap_initial: float = Field(default=900.0, ge=0)
    usage_cap_max: float = Field(default=21600.0, ge=0)
    jitter: float = Field(default=0.1, ge=0)
    healthy_after: float = Field(default=30.0, ge=0)

    @field_validator(*_BACKOFF_FLOORS)
    @classmethod
    def _max_not_below_initial(cls, value: float, info: ValidationInfo) -> float:
        assert info.field_name is not None
        floor_key = _BACKOFF_FLOORS[info.field_name]
        floor = info.data.get(floor_key)
        if floor is not None and value < floor:
            raise ValueError(f"must be >= {floor_key} ({floor:g})")
        return value


class LogSettings(_Section):
    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = (
        "info"
    )
    format: Annotated[Literal["json", "console"], BeforeValidator(_lower)] = "json"


# --- [ha]: high availability (README "High availability"; streamd/ha) ---------------------
# Kafka's legal topic names (kafka.common.internals.Topic): at most 249 of these characters.
_KAFKA_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


class HaSettings(_Section):
    # "kafka": the instances sharing ha.group elect one leader through Kafka's group protocol;
    # only the leader reads X. "off": this instance reads X whenever it runs.
    mode: Annotated[Literal["off", "kafka"], BeforeValidator(_lower)] = "off"
    group: str = Field(default="streamd", min_length=1, max_length=255)
    topic: str = Field(default="streamd.leader", min_length=1)
    # Seconds without a heartbeat before Kafka replaces a silent leader. Kafka refuses less
    # than its group.min.session.timeout.ms (6 s by default) and more than 30 minutes.
    session_timeout: float = Field(default=10.0, ge=6, le=1800)

    @field_validator("group")
    @classmethod
    def _check_group(cls, value: str) -> str:
        if not value.isprintable() or value != value.strip():
            raise ValueError("must be printable, without leading or trailing spaces")
        return value

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        if not _KAFKA_TOPIC.fullmatch(value) or value in (".", ".."):
            raise ValueError("must be a Kafka topic name: 1 to 249 of A-Z a-z 0-9 . _ -")
        return value


def _readable_by_others(path: Path, why: str) -> list[str]:
    """The warning for `path` when a secret file is readable beyond its owner, else none.

    The mode is the target's: a Kubernetes Secret volume's files are symlinks into its
    `..data` directory. Group read is accepted when the group is this process's own: that
    is how a service account shares a root-owned file (root:streamd 0640), and what
    Kubernetes makes of a Secret's `defaultMode: 0400` when the pod sets `fsGroup` (0440,
    group = fsGroup = the pod's group)."""
    try:
        info = path.stat()
    except OSError:
        # Unreadable or absent: resolving the secret reports that, without the path (which
        # could then be a secret pasted into the wrong key).
        return []
    if not stat.S_ISREG(info.st_mode):
        return []
    others = bool(info.st_mode & stat.S_IROTH)
    group = bool(info.st_mode & stat.S_IRGRP) and info.st_gid != os.getegid()
    if not (others or group):
        return []
    who = "other users" if others else "its group"
    mode = stat.S_IMODE(info.st_mode)
    return [
        f"{path} is readable by {who} (mode {mode:04o}) and {why}: run `chmod 600 {path}` "
        "(keeping it owned by the user streamd runs as)"
    ]


class Settings(_Section):
    x: XSettings = Field(default_factory=XSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    rules: RulesSettings = Field(default_factory=RulesSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    backoff: BackoffSettings = Field(default_factory=BackoffSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    ha: HaSettings = Field(default_factory=HaSettings)

    _source_path: Path | None = PrivateAttr(default=None)
    # The secrets written in the config file itself (not set from the environment).
    _secrets_in_file: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="before")
    @classmethod
    def _none_sections(cls, data: Any) -> Any:
        # An empty TOML table and an absent one mean the same: defaults.
        if isinstance(data, dict):
            return {k: ({} if v is None else v) for k, v in data.items()}
        return data

    @property
    def source_path(self) -> Path | None:
        """The file these settings were loaded from (None when built from a dict)."""
        return self._source_path

    @property
    def base_dir(self) -> Path:
        """Where relative paths in the config (rules.file) are taken from."""
        return self._source_path.parent if self._source_path is not None else Path.cwd()

    def resolved_rules(self) -> list[RuleSpec]:
        return self.rules.resolved_rules(self.base_dir)

    @property
    def ce_source(self) -> str:
        """The records' `ce_source`: kafka.ce_source, else the stream's URL (and partition)."""
        if self.kafka.ce_source is not None:
            return self.kafka.ce_source
        return self.stream.stream.source(self.stream.partition)

    def empty_sync_problem(self, rules: list[RuleSpec] | None = None) -> ConfigError | None:
        """The error for a configuration whose `rules.mode = "sync"` would delete every rule
        on the App (no rules configured, rules.allow_empty not set), else None. `rules` are
        the resolved rules when the caller has them; otherwise they are read here."""
        cfg = self.rules
        if cfg.mode != "sync" or cfg.allow_empty or not self.stream.stream.rules:
            return None  # a stream without rules (sample, firehose) never syncs them
        if rules is None:
            rules = self.resolved_rules()
        return None if rules else self._empty_sync_error()

    def _empty_sync_error(self) -> ConfigError:
        cfg = self.rules
        if cfg.file is not None and not cfg.rule:
            key, none = "rules.file", f"{str(cfg.file)!r} holds no rules and none are inline"
        else:
            key, none = "rules.rule", "no rules are configured"
        return ConfigError(
            key,
            f"{none}, so rules.mode = \"sync\" would delete every rule on the App, and X "
            "cannot restore deleted rules. Add [[rules.rule]] entries (or [[rule]] tables "
            "to rules.file); or set rules.mode = \"add\" or \"off\" to leave the App's "
            "rules alone; or, to delete them all on purpose, set rules.allow_empty = true",
        )

    def _has_rules(self) -> bool:
        if self.rules.rule:
            return True
        if self.rules.file is None:
            return False
        try:
            return bool(self.resolved_rules())
        except ConfigError:
            return True  # a broken rules file is reported as an error, not as "no rules"

    def warnings(self) -> list[str]:
        """Accepted but questionable values; the caller logs them."""
        found: list[str] = []
        if self.stream.stall_timeout < 21:
            found.append(
                f"stream.stall_timeout = {self.stream.stall_timeout:g} s is below 21 s: X "
                "sends a heartbeat every 20 s, so a healthy idle stream may be cut"
            )
        if self.stream.backfill_minutes > 0:
            found.append(
                "stream.backfill_minutes > 0 is honoured only on Enterprise access; other "
                "tiers may reject or ignore it"
            )
        if self.kafka.publish_timeout is not None:
            found.append(
                "kafka.publish_timeout is deprecated: it sets kafka.request_timeout, "
                "kafka.ack_timeout and kafka.startup_timeout where they are not set; set "
                "those instead"
            )
        if self.kafka.max_batch_bytes > self.kafka.max_request_size:
            found.append("kafka.max_batch_bytes exceeds kafka.max_request_size")
        if self.kafka.sasl_mechanism is not None and self.kafka.security_protocol == (
            "SASL_PLAINTEXT"
        ):
            found.append("kafka SASL credentials travel unencrypted (SASL_PLAINTEXT)")
        if not self.stream.stream.rules and self._has_rules():
            found.append(
                f"stream.endpoint = {self.stream.endpoint!r} takes no rules: the configured "
                "rules are not synced (X applies rules to the filtered stream only)")
        elif self.rules.mode != "off" and not self._has_rules():
            found.append(self._no_rules_warning())
        insecure = self._insecure_host()
        if insecure is not None:
            found.append(
                f"x.allow_insecure = true: the bearer token goes to {insecure} over plain "
                "http://, readable by anyone on the network in between"
            )
        found.extend(self._exposed_secret_warnings())
        return found

    def _insecure_host(self) -> str | None:
        """The host an allowed http:// api_url sends the token to in clear text, if any."""
        url = urllib.parse.urlsplit(self.x.api_url)
        host = url.hostname or ""
        if url.scheme.lower() == "http" and not _is_loopback(host):
            return host
        return None

    def _exposed_secret_warnings(self) -> list[str]:
        """A file holding a secret that other accounts on this machine can read."""
        found: list[str] = []
        if self._source_path is not None and self._secrets_in_file:
            keys = " and ".join(self._secrets_in_file)
            found.extend(_readable_by_others(self._source_path, f"it holds {keys}"))
        for key, path in (
            ("x.bearer_token_file", self.x.bearer_token_file),
            ("kafka.sasl_password_file", self.kafka.sasl_password_file),
        ):
            if path is not None:
                found.extend(_readable_by_others(path, f"it is {key}"))
        return found

    def _no_rules_warning(self) -> str:
        if self.rules.mode == "add":
            return (
                "rules.mode = 'add' but no rules are configured: streamd adds none and the "
                "stream runs on the rules already on the App; if it has none, X refuses the "
                "stream (409) and streamd exits 78"
            )
        if self.rules.allow_empty:
            return (
                "rules.allow_empty = true and no rules are configured: rules.mode = 'sync' "
                "deletes every rule on the App; with none left X refuses the stream (409) "
                "and streamd exits 78"
            )
        # Only reachable for settings not built by load_settings, which refuses them.
        return str(self._empty_sync_error())

    def redacted(self) -> dict[str, Any]:
        """A JSON-able dump for debug output, with every secret shown as '***'."""
        data = self.model_dump(mode="json")
        for section, key in (("x", "bearer_token"), ("kafka", "sasl_password")):
            if data[section].get(key) is not None:
                data[section][key] = "***"
        return data


# --- loading -----------------------------------------------------------------------------


def _read_toml(path: Path, *, key: str) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(key, f"config file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(key, f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(key, f"{str(path)!r} is not UTF-8 (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        # The message ends with "(at line L, column C)"; it never quotes the value.
        raise ConfigError(key, f"{str(path)!r}: invalid TOML: {exc}") from None


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap_optional(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            inner, _ = _unwrap_optional(args[0])
            return inner, optional
    return annotation, False


def _env_value(raw: str, annotation: Any) -> Any:
    inner, optional = _unwrap_optional(annotation)
    if optional and raw == "":
        return None
    if typing.get_origin(inner) is list:
        text = raw.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                pass  # fall through: validation reports it against the key
        return [item.strip() for item in text.split(",") if item.strip()]
    return raw


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    sections = Settings.model_fields
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_PATH_ENV:
            continue
        rest = name[len(ENV_PREFIX) :]
        if "__" not in rest:
            # A single underscore after a known section is a typo for the double one.
            for section in sections:
                if rest.lower().startswith(section + "_"):
                    key = rest[len(section) + 1 :].lower()
                    raise ConfigError(
                        f"{section}.{key}",
                        f"environment variable {name} is not an override; "
                        f"use STREAMD_{section.upper()}__{key.upper()}",
                    )
            continue
        section, _, key = rest.lower().partition("__")
        if section not in sections:
            raise ConfigError(
                f"{section}.{key}",
                f"environment variable {name}: unknown section {section!r}"
                + _did_you_mean((section, key), env=True),
            )
        section_model = typing.cast(type[BaseModel], sections[section].annotation)
        field = section_model.model_fields.get(key)
        if field is None:
            raise ConfigError(
                f"{section}.{key}",
                f"environment variable {name}: unknown key" + _did_you_mean((section, key),
                                                                            env=True),
            )
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(section, "must be a table")
        table[key] = _env_value(raw, field.annotation)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _fields_of(model: Any) -> dict[str, Any]:
    """The fields of a pydantic model or dataclass: name -> annotation."""
    fields = getattr(model, "model_fields", None) or getattr(model, "__pydantic_fields__", {})
    return {name: info.annotation for name, info in fields.items()}


def _model_of(annotation: Any) -> Any:
    """The model an annotation holds (a section, `list[RuleSpec]`, ...), else None."""
    inner, _ = _unwrap_optional(annotation)
    if typing.get_origin(inner) is list:
        inner, _ = _unwrap_optional(typing.get_args(inner)[0])
    return inner if _fields_of(inner) else None


def _dotted_keys(model: Any, prefix: str = "") -> list[str]:
    """Every key a config may hold, dotted (`kafka.topic`, `rules.rule.value`)."""
    keys: list[str] = []
    for name, annotation in _fields_of(model).items():
        key = f"{prefix}{name}"
        keys.append(key)
        inner = _model_of(annotation)
        if inner is not None:
            keys += _dotted_keys(inner, f"{key}.")
    return keys


def _did_you_mean(loc: tuple[int | str, ...], *, root: Any = None, env: bool = False) -> str:
    """`; did you mean `kafka.bootstrap_servers`?` for the unknown key at `loc`, or "".

    The closest key of the same table first (a typo), then the same name in another table
    (a key put in the wrong section), then the closest of every known key."""
    parts = [part for part in loc if isinstance(part, str)]
    if not parts:
        return ""
    model = Settings if root is None else root
    table = model
    for part in parts[:-1]:
        annotation = _fields_of(table).get(part)
        table = _model_of(annotation) if annotation is not None else None
        if table is None:
            break
    name = parts[-1]
    prefix = _format_loc(loc[:-1])  # as the key is named: `rules.rule[0]`
    known = _dotted_keys(model)
    found: str | None = None
    if table is not None:
        close = difflib.get_close_matches(name, list(_fields_of(table)), n=1, cutoff=0.6)
        if close:
            found = f"{prefix}.{close[0]}" if prefix else close[0]
    if found is None:
        elsewhere = [key for key in known if key.rsplit(".", 1)[-1] == name]
        if elsewhere:
            found = elsewhere[0]
    if found is None:
        close = difflib.get_close_matches(".".join(parts), known, n=1, cutoff=0.6)
        if close:
            found = close[0]
    if found is None:
        return ""
    if env and "." in found:
        section, _, key = found.partition(".")
        if "." not in key:
            return f"; did you mean {ENV_PREFIX}{section.upper()}__{key.upper()} (`{found}`)?"
    return f"; did you mean `{found}`?"


def _describe(error: Mapping[str, Any], root: Any = None) -> str:
    kind = error["type"]
    loc = error["loc"]
    value = error.get("input")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return "unknown key" + _did_you_mean(tuple(loc), root=root)
    if kind == "missing":
        return "required"
    if kind == "literal_error":
        expected = str(error.get("ctx", {}).get("expected", ""))
        problem = "must be one of " + expected.replace("'", "").replace(" or ", ", ")
    else:
        problem = str(error["msg"])
        problem = problem.removeprefix("Value error, ")
        problem = re.sub(r"^Input should be", "must be", problem)
        problem = re.sub(r"^Input ", "value ", problem)
    secret = any(part in _SECRET_KEYS for part in loc if isinstance(part, str))
    if not secret and isinstance(value, str | int | float | bool) and len(repr(value)) < 80:
        problem += f"; got {value!r}"
    return problem


def _config_error_from(
    exc: ValidationError, prefix: str = "", root: Any = None
) -> ConfigError:
    errors = exc.errors(include_url=False, include_context=True)
    first = errors[0]
    key = _format_loc(tuple(first["loc"]))
    if prefix:
        key = f"{prefix}.{key}" if key else prefix
    problem = _describe(first, root)
    if len(errors) > 1:
        more = len(errors) - 1
        problem += f" (and {more} more error{'s' if more > 1 else ''})"
    return ConfigError(key, problem)


def validate_settings(data: Mapping[str, Any]) -> Settings:
    """Settings from an already-parsed mapping; pydantic errors become one ConfigError."""
    try:
        return Settings.model_validate(dict(data))
    except ValidationError as exc:
        raise _config_error_from(exc) from None


def config_path(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """-c PATH, else $STREAMD_CONFIG, else /etc/streamd/streamd.toml."""
    env = os.environ if environ is None else environ
    if path is not None:
        return Path(path)
    return Path(env.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    refuse_empty_sync: bool = True,
) -> Settings:
    """Read, override from the environment, and validate the configuration.

    With `refuse_empty_sync` (the default) a configuration whose rules.mode = "sync" would
    delete every rule on the App is a ConfigError (see Settings.empty_sync_problem). The
    default is the safe side: `streamd run` (start-up and the SIGHUP re-read, so an edit
    that empties the rules is refused and the running rules are kept), `rules sync`
    (dry runs too: they predict the real one) and `check`. Only a caller that never
    changes the App's rules (`rules list`, `rules diff`) may pass False."""
    env = os.environ if environ is None else environ
    source = config_path(path, env)
    data = _read_toml(source, key="")
    in_file = tuple(
        f"{section}.{key}" for section, key in _INLINE_SECRETS
        if isinstance(data.get(section), dict) and data[section].get(key) is not None
    )
    _apply_env(data, env)
    settings = validate_settings(data)
    settings._source_path = source.absolute()
    settings._secrets_in_file = in_file
    # Catch a bad rules file at start-up (and on SIGHUP re-read), not at first sync.
    rules = settings.resolved_rules()
    if refuse_empty_sync:
        problem = settings.empty_sync_problem(rules)
        if problem is not None:
            raise problem
    return settings
