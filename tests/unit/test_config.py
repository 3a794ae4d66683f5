"""streamd.config: loading, env overrides, one-key error messages, secrets never echoed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamd.config import RuleSpec, Settings, load_settings, validate_settings
from streamd.errors import ConfigError
from streamd.reasons import ExitCode

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "streamd.example.toml"
TOKEN = "AAAAsecret-token%3Dvalue"
# One rule, for tests about other keys: a config with none (rules.mode "sync") is refused.
RULE = "\n[[rules.rule]]\nvalue = 'cat'\n"


def write(tmp_path: Path, text: str, name: str = "streamd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ or {})
    return info.value


# --- defaults and the example file ------------------------------------------------------


def test_every_section_is_optional() -> None:
    settings = Settings.model_validate({})
    assert settings.x.api_url == "https://api.x.com"
    assert settings.x.tweet_fields[:3] == ["created_at", "author_id", "lang"]
    assert settings.stream.stall_timeout == 30
    assert settings.kafka.compression == "zstd"
    assert settings.kafka.acks == "all"
    assert settings.backoff.usage_cap_max == 21600
    assert settings.http.host == "127.0.0.1"
    assert settings.http.port == 9464
    assert settings.source_path is None


def test_example_config_is_valid_and_complete(tmp_path: Path) -> None:
    settings = load_settings(EXAMPLE, {})
    assert settings.source_path == EXAMPLE
    assert settings.resolved_rules() == [
        RuleSpec("cat has:images", "cats"),
        RuleSpec("(dog OR puppy) lang:en -is:retweet", "dogs"),
    ]
    # The example shows the defaults: it must agree with the models.
    defaults = Settings.model_validate(
        {"rules": {"rule": [r.__dict__ for r in settings.rules.rule]}}
    )
    assert settings.model_dump() == defaults.model_dump()
    # Every key of every section is mentioned (set or commented out) in the example.
    text = EXAMPLE.read_text(encoding="utf-8")
    for section, model in Settings.model_fields.items():
        assert f"[{section}]" in text
        assert model.annotation is not None
        for key in model.annotation.model_fields:
            mention = "[[rules.rule]]" if (section, key) == ("rules", "rule") else f"{key} ="
            assert mention in text, f"{section}.{key} missing from the example"


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    # The defaults say rules.mode = "sync" with no rules: refused (see the empty-sync tests).
    with pytest.raises(ConfigError, match=re.escape("rules.allow_empty = true")):
        load_settings(write(tmp_path, ""), {})
    settings = load_settings(write(tmp_path, ""), {}, refuse_empty_sync=False)
    assert settings.model_dump() == Settings.model_validate({}).model_dump()


# --- path selection ---------------------------------------------------------------------


def test_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[kafka]\ntopic = "from-env-path"\n' + RULE)
    settings = load_settings(None, {"STREAMD_CONFIG": str(path)})
    assert settings.kafka.topic == "from-env-path"
    assert settings.source_path == path


def test_explicit_path_beats_environment(tmp_path: Path) -> None:
    a = write(tmp_path, '[kafka]\ntopic = "a"\n' + RULE, "a.toml")
    b = write(tmp_path, '[kafka]\ntopic = "b"\n' + RULE, "b.toml")
    assert load_settings(a, {"STREAMD_CONFIG": str(b)}).kafka.topic == "a"


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(missing, {})
    assert str(missing) in str(info.value)
    assert info.value.exit_code == ExitCode.CONFIG


def test_default_path_used_without_flag_or_env() -> None:
    with pytest.raises(ConfigError, match=re.escape("/etc/streamd/streamd.toml")):
        load_settings(None, {})


def test_toml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    err = error_of(tmp_path, f'[x]\nbearer_token = "{TOKEN}"\napi_url = \n')
    assert "streamd.toml" in str(err)
    assert "line 3" in str(err)
    assert "column" in str(err)
    assert TOKEN not in str(err)


# --- error messages ---------------------------------------------------------------------


def test_bad_enum_value_names_key_choices_and_value(tmp_path: Path) -> None:
    err = error_of(tmp_path, '[kafka]\ncompression = "brotli"\n')
    assert err.key == "kafka.compression"
    assert err.problem == "must be one of none, gzip, snappy, lz4, zstd; got 'brotli'"


def test_unknown_key(tmp_path: Path) -> None:
    err = error_of(tmp_path, "[kafka]\ntopik = 'x'\n")
    assert err.key == "kafka.topik"
    assert err.problem == "unknown key"


def test_unknown_section(tmp_path: Path) -> None:
    err = error_of(tmp_path, "[kafak]\ntopic = 'x'\n")
    assert err.key == "kafak"
    assert err.problem == "unknown key"


def test_several_errors_are_counted(tmp_path: Path) -> None:
    err = error_of(tmp_path, "[stream]\nstall_timeout = -1\nbackfill_minutes = 9\nqueue_size = 0\n")
    assert err.key == "stream.stall_timeout"
    assert "greater than 0" in err.problem
    assert "(and 2 more errors)" in err.problem


@pytest.mark.parametrize(
    ("toml", "key", "fragment"),
    [
        ("[stream]\nbackfill_minutes = 6", "stream.backfill_minutes", "less than or equal to 5"),
        ("[stream]\nmax_line_bytes = 10", "stream.max_line_bytes", "1024"),
        ("[backoff]\nhttp_initial = 10\nhttp_max = 5", "backoff.http_max", ">= http_initial"),
        ("[backoff]\nnetwork_step = -1", "backoff.network_step", "greater than or equal"),
        ("[http]\nlisten = 'localhost'", "http.listen", "host:port"),
        ("[http]\nlisten = 'h:70000'", "http.listen", "out of range"),
        ("[kafka]\nbootstrap_servers = ''", "kafka.bootstrap_servers", "at least one"),
        ("[kafka]\nsecurity_protocol = 'SASL_SSL'", "kafka.sasl_mechanism", "required"),
        (
            "[kafka]\nsecurity_protocol = 'SASL_SSL'\nsasl_mechanism = 'PLAIN'",
            "kafka.sasl_username",
            "required",
        ),
        ("[kafka]\nacks = 2", "kafka.acks", "must be one of"),
        ("[x]\ntweet_fields = ['lang', 'bogus']", "x.tweet_fields", "unknown value 'bogus'"),
        ("[x]\nexpansions = ['author_id', 'author_id']", "x.expansions", "duplicate"),
        ("[x]\napi_url = 'ftp://x'", "x.api_url", "http"),
        ("[rules]\nmode = 'replace'", "rules.mode", "sync, add, off"),
        ("[[rules.rule]]\nvalue = ''", "rules.rule[0].value", "empty"),
        ("[[rules.rule]]\ntag = 'a'", "rules.rule[0].value", "required"),
        ("[[rules.rule]]\nvalue = 'a'\ncolour = 'red'", "rules.rule[0].colour", "unknown key"),
        ("[[rules.rule]]\nvalue = 'a'\n[[rules.rule]]\nvalue = 'a'", "rules.rule", "duplicate"),
        ("[log]\nformat = 'xml'", "log.format", "json, console"),
        ("[spool]\nmax_bytes = 0", "spool.max_bytes", "greater than 0"),
        ("stream = 5", "stream", "valid dictionary"),
    ],
)
def test_bad_values(tmp_path: Path, toml: str, key: str, fragment: str) -> None:
    err = error_of(tmp_path, toml + "\n")
    assert err.key == key
    assert fragment in err.problem
    assert key in str(err)


def test_case_insensitive_enums(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            "[kafka]\ncompression='LZ4'\nsecurity_protocol='ssl'\n[log]\nlevel='DEBUG'" + RULE,
        ),
        {},
    )
    assert settings.kafka.compression == "lz4"
    assert settings.kafka.security_protocol == "SSL"
    assert settings.log.level == "debug"


@pytest.mark.parametrize(
    ("given", "expected"), [("all", "all"), (1, 1), (0, 0), ("1", 1), (-1, "all")]
)
def test_acks(given: object, expected: object) -> None:
    assert Settings.model_validate({"kafka": {"acks": given}}).kafka.acks == expected


def test_ipv6_listen() -> None:
    http = Settings.model_validate({"http": {"listen": "[::1]:0"}}).http
    assert (http.host, http.port) == ("::1", 0)


# --- environment overrides --------------------------------------------------------------


def test_env_overrides_are_coerced(tmp_path: Path) -> None:
    path = write(tmp_path, "[kafka]\ntopic = 'file'\n" + RULE)
    env = {
        "STREAMD_KAFKA__TOPIC": "env",
        "STREAMD_KAFKA__ENABLE_IDEMPOTENCE": "false",
        "STREAMD_KAFKA__ACKS": "1",
        "STREAMD_STREAM__STALL_TIMEOUT": "5.5",
        "STREAMD_STREAM__BACKFILL_MINUTES": "2",
        "STREAMD_X__TWEET_FIELDS": "lang, created_at",
        "STREAMD_X__EXPANSIONS": '["author_id", "geo.place_id"]',
        "STREAMD_X__MEDIA_FIELDS": "",
        "STREAMD_HTTP__LISTEN": "0.0.0.0:0",
        "UNRELATED": "1",
        "STREAMD_SOMETHING_ELSE": "ignored",
    }
    settings = load_settings(path, env)
    assert settings.kafka.topic == "env"
    assert settings.kafka.enable_idempotence is False
    assert settings.kafka.acks == 1
    assert settings.stream.stall_timeout == 5.5
    assert settings.stream.backfill_minutes == 2
    assert settings.x.tweet_fields == ["lang", "created_at"]
    assert settings.x.expansions == ["author_id", "geo.place_id"]
    assert settings.x.media_fields == []
    assert settings.http.port == 0


def test_env_empty_value_unsets_optional_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[kafka]\nsecurity_protocol='SSL'\nssl_cafile='/ca.pem'\n" + RULE)
    settings = load_settings(path, {"STREAMD_KAFKA__SSL_CAFILE": ""})
    assert settings.kafka.ssl_cafile is None


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("STREAMD_KAFKA__TOPK", "kafka.topk"),
        ("STREAMD_KAFAK__TOPIC", "kafak.topic"),
        ("STREAMD_KAFKA_TOPIC", "kafka.topic"),
    ],
)
def test_env_unknown_names_are_errors(tmp_path: Path, name: str, key: str) -> None:
    err = error_of(tmp_path, "", {name: "x"})
    assert err.key == key
    assert name in err.problem


def test_env_bad_value_names_key(tmp_path: Path) -> None:
    err = error_of(tmp_path, "", {"STREAMD_STREAM__QUEUE_SIZE": "many"})
    assert err.key == "stream.queue_size"
    assert "'many'" in err.problem


def test_config_path_variable_is_not_an_override(tmp_path: Path) -> None:
    path = write(tmp_path, RULE)
    load_settings(path, {"STREAMD_CONFIG": "/elsewhere.toml"})


# --- secrets ----------------------------------------------------------------------------


def test_bearer_token_order(tmp_path: Path) -> None:
    token_file = write(tmp_path, f"  {TOKEN}-file \n", "token")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "x_bearer_token").write_text(f"{TOKEN}-cred\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}

    inline = Settings.model_validate(
        {"x": {"bearer_token": f" {TOKEN} ", "bearer_token_file": str(token_file)}}
    )
    assert inline.x.resolve_bearer_token(env) == TOKEN
    from_file = Settings.model_validate({"x": {"bearer_token_file": str(token_file)}})
    assert from_file.x.resolve_bearer_token(env) == f"{TOKEN}-file"
    assert Settings.model_validate({}).x.resolve_bearer_token(env) == f"{TOKEN}-cred"


def test_bearer_token_from_env_override(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, RULE), {"STREAMD_X__BEARER_TOKEN": TOKEN})
    assert settings.x.resolve_bearer_token({}) == TOKEN


def test_missing_bearer_token_explains_all_sources() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.model_validate({}).x.resolve_bearer_token({})
    assert info.value.key == "x.bearer_token"
    for source in ("x.bearer_token_file", "CREDENTIALS_DIRECTORY", "LoadCredential=x_bearer_token"):
        assert source in info.value.problem


def test_unreadable_token_file_names_the_file_key(tmp_path: Path) -> None:
    settings = Settings.model_validate({"x": {"bearer_token_file": str(tmp_path / "absent")}})
    with pytest.raises(ConfigError) as info:
        settings.x.resolve_bearer_token({})
    assert info.value.key == "x.bearer_token_file"
    empty = write(tmp_path, "\n", "empty")
    with pytest.raises(ConfigError, match="empty"):
        Settings.model_validate({"x": {"bearer_token_file": str(empty)}}).x.resolve_bearer_token({})


def test_sasl_password(tmp_path: Path) -> None:
    assert Settings.model_validate({}).kafka.resolve_sasl_password({}) is None
    sasl = {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "u",
    }
    pw_file = write(tmp_path, "pw-from-file\n", "pw")
    kafka = Settings.model_validate({"kafka": {**sasl, "sasl_password_file": str(pw_file)}}).kafka
    assert kafka.resolve_sasl_password({}) == "pw-from-file"
    with pytest.raises(ConfigError) as info:
        Settings.model_validate({"kafka": sasl}).kafka.resolve_sasl_password({})
    assert info.value.key == "kafka.sasl_password"


@pytest.mark.parametrize(
    "toml",
    [
        f'[x]\nbearer_token = "{TOKEN}"\nbearer_tokne = "{TOKEN}"\n',  # typo'd secret key
        f"[x]\nbearer_token = {{ v = '{TOKEN}' }}\n",  # wrong type
        f'[x]\nbearer_token = "{TOKEN}"\n[kafka]\ncompression = "brotli"\n',
        f'[kafka]\nsasl_password = ["{TOKEN}"]\n',
    ],
)
def test_secrets_never_in_error_messages(tmp_path: Path, toml: str) -> None:
    err = error_of(tmp_path, toml)
    assert TOKEN not in str(err)
    assert TOKEN not in repr(err)
    assert err.__cause__ is None
    assert err.__suppress_context__


def test_secret_from_env_never_in_error(tmp_path: Path) -> None:
    err = error_of(tmp_path, "", {"STREAMD_X__BEARER_TOKEN": TOKEN, "STREAMD_X__NOPE": "1"})
    assert TOKEN not in str(err)


def test_redacted_and_repr_hide_secrets() -> None:
    settings = Settings.model_validate(
        {"x": {"bearer_token": TOKEN}, "kafka": {"sasl_password": TOKEN}}
    )
    dumped = settings.redacted()
    assert dumped["x"]["bearer_token"] == "***"
    assert dumped["kafka"]["sasl_password"] == "***"
    assert TOKEN not in str(dumped)
    assert TOKEN not in repr(settings)
    assert Settings.model_validate({}).redacted()["x"]["bearer_token"] is None


# --- rules ------------------------------------------------------------------------------


def test_rules_file_merged_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    write(
        tmp_path,
        "[[rule]]\nvalue = 'from file'\n[[rule]]\nvalue = 'tagged'\ntag = 't'\n",
        "rules/r.toml",
    )
    path = write(tmp_path, "[rules]\nfile = 'rules/r.toml'\n[[rules.rule]]\nvalue = 'inline'\n")
    settings = load_settings(path, {})
    assert settings.resolved_rules() == [
        RuleSpec("inline"),
        RuleSpec("from file"),
        RuleSpec(value="tagged", tag="t"),
    ]
    assert settings.rules.resolved_rules(tmp_path) == settings.resolved_rules()


def test_rules_file_errors_at_load(tmp_path: Path) -> None:
    path = write(tmp_path, "[rules]\nfile = 'absent.toml'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert info.value.key == "rules.file"
    assert "absent.toml" in info.value.problem

    write(tmp_path, "[[rule]]\nvalu = 'x'\n", "bad.toml")
    err = error_of(tmp_path, "[rules]\nfile = 'bad.toml'\n")
    assert err.key.startswith("rules.file(")
    assert "rule[0]" in err.key

    write(tmp_path, "[[rule]]\nvalue = 'dup'\n", "dup.toml")
    err = error_of(tmp_path, "[rules]\nfile = 'dup.toml'\n[[rules.rule]]\nvalue = 'dup'\n")
    assert err.key == "rules.file"
    assert "duplicate" in err.problem


# --- an empty rule set never wipes the App's rules (issue item 9) -------------------------


@pytest.mark.parametrize(
    ("toml", "files", "env", "key"),
    [
        ("", {}, {}, "rules.rule"),  # everything defaulted
        ("[rules]\nmode = 'sync'\n", {}, {}, "rules.rule"),
        ("[rules]\nmode = 'SYNC'\nallow_empty = false\n", {}, {}, "rules.rule"),
        ("[rules]\nfile = 'rules.toml'\n", {"rules.toml": ""}, {}, "rules.file"),
        ("[rules]\nfile = 'rules.toml'\n", {"rules.toml": "# all commented out\n"}, {},
         "rules.file"),
        ("[rules]\nfile = 'rules.toml'\n", {"rules.toml": "rule = []\n"}, {}, "rules.file"),
        ("[rules]\nmode = 'off'\n", {}, {"STREAMD_RULES__MODE": "sync"}, "rules.rule"),
        ("[rules]\nallow_empty = true\n", {}, {"STREAMD_RULES__ALLOW_EMPTY": "false"},
         "rules.rule"),
    ],
    ids=["defaults", "sync", "explicit-false", "empty-file", "comments-only", "empty-list",
         "env-mode", "env-allow-empty"],
)
def test_sync_with_no_rules_is_refused_at_load(
    tmp_path: Path, toml: str, files: dict[str, str], env: dict[str, str], key: str
) -> None:
    for name, text in files.items():
        write(tmp_path, text, name)
    err = error_of(tmp_path, toml, env)
    assert err.key == key
    assert err.exit_code == ExitCode.CONFIG
    message = str(err)
    # What is wrong, why it matters, and every way forward.
    assert "delete every rule on the App" in message
    assert "X cannot restore deleted rules" in message
    for way in ("[[rules.rule]]", 'rules.mode = "add"', '"off"', "rules.allow_empty = true"):
        assert way in message
    if key == "rules.file":
        assert "'rules.toml' holds no rules" in message


@pytest.mark.parametrize(
    ("toml", "env"),
    [
        ("[rules]\nallow_empty = true\n", {}),
        ("", {"STREAMD_RULES__ALLOW_EMPTY": "true"}),
        ("[rules]\nmode = 'add'\n", {}),
        ("[rules]\nmode = 'off'\n", {}),
        ("[[rules.rule]]\nvalue = 'cat'\n", {}),
        ("[rules]\nfile = 'r.toml'\n", {}),  # r.toml holds one rule
    ],
    ids=["allow-empty", "env-allow-empty", "add", "off", "inline-rule", "file-rule"],
)
def test_empty_sync_is_allowed_only_when_nothing_is_deleted_or_it_is_asked_for(
    tmp_path: Path, toml: str, env: dict[str, str]
) -> None:
    write(tmp_path, "[[rule]]\nvalue = 'dog'\n", "r.toml")
    load_settings(write(tmp_path, toml), env)


def test_commands_that_never_delete_may_load_an_empty_sync_config(tmp_path: Path) -> None:
    """`rules list` / `rules diff` never change the App: their loader may skip the check,
    which still reports the problem on demand."""
    settings = load_settings(write(tmp_path, "[rules]\nmode = 'sync'\n"), {},
                             refuse_empty_sync=False)
    assert settings.rules.allow_empty is False
    problem = settings.empty_sync_problem()
    assert problem is not None
    assert problem.key == "rules.rule"
    assert Settings.model_validate({"rules": {"mode": "add"}}).empty_sync_problem() is None


def test_allow_empty_must_be_a_boolean(tmp_path: Path) -> None:
    err = error_of(tmp_path, "[rules]\nallow_empty = 'please'\n")
    assert err.key == "rules.allow_empty"
    assert "boolean" in err.problem


def test_no_rules_warnings_say_what_each_mode_does(tmp_path: Path) -> None:
    def no_rules_warning(rules: dict[str, object]) -> str:
        found = [w for w in Settings.model_validate({"rules": rules}).warnings()
                 if "no rules are configured" in w]
        assert len(found) == 1
        return found[0]

    assert "runs on the rules already on the App" in no_rules_warning({"mode": "add"})
    allowed = no_rules_warning({"mode": "sync", "allow_empty": True})
    assert "deletes every rule on the App" in allowed
    assert "exits 78" in allowed
    # Built without load_settings (which refuses it): the warning is the refusal itself.
    assert "rules.allow_empty = true" in no_rules_warning({"mode": "sync"})
    # A rules file with no rules in it counts as no rules (it used to pass silently).
    write(tmp_path, "", "empty.toml")
    settings = load_settings(
        write(tmp_path, "[rules]\nmode = 'add'\nfile = 'empty.toml'\n"), {}
    )
    assert any("no rules are configured" in w for w in settings.warnings())
    off = Settings.model_validate({"rules": {"mode": "off"}})
    assert not any("no rules" in w for w in off.warnings())


def test_rule_specs_are_hashable_values() -> None:
    assert {RuleSpec("a", "t"), RuleSpec(value="a", tag="t")} == {RuleSpec("a", "t")}
    assert RuleSpec("a") != RuleSpec("a", "t")


# --- warnings and helpers ---------------------------------------------------------------


def test_warnings() -> None:
    quiet = Settings.model_validate({"rules": {"rule": [{"value": "a"}]}})
    assert quiet.warnings() == []
    short = Settings.model_validate({"stream": {"stall_timeout": 3}, "rules": {"mode": "off"}})
    assert any("stream.stall_timeout" in w for w in short.warnings())
    assert any("no rules" in w for w in Settings.model_validate({}).warnings())


def test_stream_params_omit_empty_lists() -> None:
    params = Settings.model_validate(
        {"x": {"user_fields": [], "poll_fields": ["id"]}}
    ).x.stream_params()
    assert params["tweet.fields"].startswith("created_at,author_id")
    assert params["poll.fields"] == "id"
    assert "user.fields" not in params
    assert "media.fields" not in params


def test_backoff_keys_match_policy_settings() -> None:
    dumped = Settings.model_validate({}).backoff.model_dump()
    assert set(dumped) == {
        "network_step",
        "network_max",
        "http_initial",
        "http_max",
        "rate_limit_initial",
        "rate_limit_max",
        "usage_cap_initial",
        "usage_cap_max",
        "jitter",
        "healthy_after",
    }


def test_validate_settings_maps_errors() -> None:
    with pytest.raises(ConfigError) as info:
        validate_settings({"log": {"level": "loud"}})
    assert info.value.key == "log.level"


def test_settings_are_frozen() -> None:
    settings = Settings.model_validate({})
    with pytest.raises(ValueError, match="frozen"):
        settings.kafka.topic = "other"  # type: ignore[misc]
