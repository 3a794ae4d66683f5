"""streamd.config: loading, env overrides, one-key error messages, secrets never echoed."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from streamd.config import (
    RuleSpec,
    Settings,
    load_settings,
    plan_directory,
    spool_dir_fix,
    suggested_spool_dir,
    validate_settings,
)
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
    assert err.problem == "unknown key; did you mean `kafka.topic`?"


def test_unknown_section(tmp_path: Path) -> None:
    err = error_of(tmp_path, "[kafak]\ntopic = 'x'\n")
    assert err.key == "kafak"
    assert err.problem == "unknown key; did you mean `kafka`?"


@pytest.mark.parametrize(
    ("toml", "key", "suggestion"),
    [
        ("[kafka]\nbootsrap_servers = 'k:9092'\n", "kafka.bootsrap_servers",
         "kafka.bootstrap_servers"),  # a typo: the closest key of the same table
        ("[kafka]\nbootstrap_server = 'k:9092'\n", "kafka.bootstrap_server",
         "kafka.bootstrap_servers"),
        ("[x]\ntopic = 't'\n", "x.topic", "kafka.topic"),  # a key in the wrong table
        ("bootstrap_servers = 'k:9092'\n", "bootstrap_servers", "kafka.bootstrap_servers"),
        ("[spool]\ndirectory = '/tmp/s'\n", "spool.directory", "spool.dir"),
        ("[[rules.rule]]\nvalue = 'cat'\ntga = 'cats'\n", "rules.rule[0].tga",
         "rules.rule[0].tag"),
        ("[stream]\nstall_timout = 30\n", "stream.stall_timout", "stream.stall_timeout"),
    ],
)
def test_an_unknown_key_suggests_the_closest_known_key(
    tmp_path: Path, toml: str, key: str, suggestion: str
) -> None:
    err = error_of(tmp_path, toml + (RULE if "rules.rule" not in toml else ""))
    assert err.key == key
    assert err.problem == f"unknown key; did you mean `{suggestion}`?"
    assert err.exit_code == ExitCode.CONFIG


def test_an_unknown_key_far_from_any_is_named_without_a_guess(tmp_path: Path) -> None:
    err = error_of(tmp_path, "[kafka]\nzzzqqq = 1\n")
    assert (err.key, err.problem) == ("kafka.zzzqqq", "unknown key")


def test_an_unknown_environment_override_suggests_the_variable(tmp_path: Path) -> None:
    err = error_of(tmp_path, RULE, {"STREAMD_KAFKA__BOOTSRAP_SERVERS": "k:9092"})
    assert err.key == "kafka.bootsrap_servers"
    assert err.problem.endswith(
        "unknown key; did you mean STREAMD_KAFKA__BOOTSTRAP_SERVERS (`kafka.bootstrap_servers`)?")


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


# --- secrets: validated when read, never echoed -----------------------------------------

MARKER = "AAAAh18MarkerTok3n%2FZZ"
SASL = {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"}


def _token_error(settings: Settings, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        settings.x.resolve_bearer_token(environ or {})
    return info.value


def _assert_silent(err: ConfigError, *values: str) -> None:
    text = f"{err} {err!r} {err.problem}"
    for value in (MARKER, *values):
        assert value not in text
    assert err.exit_code == ExitCode.CONFIG


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (f"{MARKER}\nsecond-line\n".encode(), "the file holds 2 lines; a bearer token is one line"),
        (f"{MARKER}\n\n".encode(), "holds 2 lines"),
        (f"{MARKER}\r\nmore".encode(), "holds 2 lines"),
        (f"{MARKER}\x00".encode(), "a control character (0x00) at character 24"),
        (f"{MARKER}\t\n".encode(), "a control character (0x09)"),
        (f"\ufeff{MARKER}\n".encode(), "starts with a byte-order mark (BOM)"),
        (f"{MARKER[:8]} {MARKER[8:]}\n".encode(), "a space at character 9"),
        (f"{MARKER}\u00e9\n".encode(), "a non-ASCII character at character 24"),
        (f"{MARKER}\u202e\n".encode(), "a non-ASCII character"),
        (MARKER.encode() + b"\xff\xfe", "not UTF-8 text (byte 24)"),
        (MARKER.encode() * 1000, "more than 16384 bytes"),
        (b"", "the file is empty"),
        (b" \n", "the file is empty"),
    ],
)
def test_bad_token_file_names_key_and_problem_never_the_value(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "x_token"
    path.write_bytes(content)
    err = _token_error(Settings.model_validate({"x": {"bearer_token_file": str(path)}}))
    assert err.key == "x.bearer_token_file"
    assert problem in err.problem
    _assert_silent(err, str(path), MARKER[:8], MARKER[8:])


@pytest.mark.parametrize("content", [f"{MARKER}", f"{MARKER}\n", f"{MARKER}\r\n", f"  {MARKER} \n"])
def test_one_line_token_files_are_accepted(tmp_path: Path, content: str) -> None:
    path = tmp_path / "x_token"
    path.write_text(content, encoding="utf-8", newline="")
    settings = Settings.model_validate({"x": {"bearer_token_file": str(path)}})
    assert settings.x.resolve_bearer_token({}) == MARKER


def test_a_huge_file_is_refused(tmp_path: Path) -> None:
    # A wrong path (a log, a disk image): refused after reading a bounded prefix. Sparse,
    # so the test costs no disk; not /dev/zero, which would exhaust memory on a regression.
    path = tmp_path / "huge"
    with path.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    settings = Settings.model_validate({"x": {"bearer_token_file": str(path)}})
    assert "more than 16384 bytes" in _token_error(settings).problem


@pytest.mark.parametrize("via_env", [False, True])
def test_token_pasted_as_the_file_path_is_not_echoed(tmp_path: Path, via_env: bool) -> None:
    environ = {"STREAMD_X__BEARER_TOKEN_FILE": MARKER} if via_env else {}
    text = RULE if via_env else f'[x]\nbearer_token_file = "{MARKER}"\n{RULE}'
    settings = load_settings(write(tmp_path, text), environ)
    err = _token_error(settings, environ)
    assert err.key == "x.bearer_token_file"
    assert "cannot read the file: No such file or directory" in err.problem
    _assert_silent(err)
    # Nor does a wrong type for the path key echo it.
    err = error_of(tmp_path, f'[x]\nbearer_token_file = ["{MARKER}"]\n')
    assert err.key == "x.bearer_token_file"
    _assert_silent(err)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (f"{MARKER}\nsecond", "holds 2 lines"),
        (f"{MARKER}\x00", "a control character (0x00)"),
        (f"\ufeff{MARKER}", "byte-order mark"),
        (f"{MARKER[:8]} {MARKER[8:]}", "a space at character 9"),
        (f"{MARKER}\u00e9", "a non-ASCII character"),
        ("   ", "is empty"),
    ],
)
def test_bad_inline_or_env_token_names_the_key(
    tmp_path: Path, value: str, problem: str
) -> None:
    environ = {"STREAMD_X__BEARER_TOKEN": value}
    settings = load_settings(write(tmp_path, RULE), environ)
    err = _token_error(settings)
    assert err.key == "x.bearer_token"
    assert problem in err.problem
    assert "STREAMD_X__BEARER_TOKEN" in err.problem
    _assert_silent(err, MARKER[:8], MARKER[8:])


def test_bad_systemd_credential_is_named(tmp_path: Path) -> None:
    (tmp_path / "x_bearer_token").write_text(f"{MARKER}\nsecond\n")
    err = _token_error(Settings.model_validate({}), {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert err.key == "x.bearer_token"
    assert "systemd credential $CREDENTIALS_DIRECTORY/x_bearer_token holds 2 lines" in err.problem
    _assert_silent(err, str(tmp_path))


def test_sasl_password_may_hold_spaces_and_unicode_but_one_clean_line(tmp_path: Path) -> None:
    good = tmp_path / "pw"
    good.write_text("correct horse ü battery\n", encoding="utf-8")
    kafka = Settings.model_validate({"kafka": {**SASL, "sasl_password_file": str(good)}}).kafka
    assert kafka.resolve_sasl_password({}) == "correct horse ü battery"
    for content, problem in ((f"{MARKER}\nx", "holds 2 lines; a SASL password is one line"),
                             (f"{MARKER}\x1b[2J", "a control character (0x1b)")):
        bad = tmp_path / "bad_pw"
        bad.write_text(content, encoding="utf-8")
        kafka = Settings.model_validate({"kafka": {**SASL, "sasl_password_file": str(bad)}}).kafka
        with pytest.raises(ConfigError) as info:
            kafka.resolve_sasl_password({})
        assert info.value.key == "kafka.sasl_password_file"
        assert problem in info.value.problem
        _assert_silent(info.value, str(bad))
    pasted = Settings.model_validate({"kafka": {**SASL, "sasl_password_file": MARKER}}).kafka
    with pytest.raises(ConfigError) as info:
        pasted.resolve_sasl_password({})
    assert info.value.key == "kafka.sasl_password_file"
    _assert_silent(info.value)
    inline = Settings.model_validate({"kafka": {**SASL, "sasl_password": f"{MARKER}\n2"}}).kafka
    with pytest.raises(ConfigError) as info:
        inline.resolve_sasl_password({})
    assert info.value.key == "kafka.sasl_password"
    assert "STREAMD_KAFKA__SASL_PASSWORD" in info.value.problem
    _assert_silent(info.value)


# --- clear text: http:// only to loopback unless x.allow_insecure ---------------------------


@pytest.mark.parametrize(
    "url", ["http://api.x.com", "http://10.0.0.5:8080", "http://[2001:db8::1]/",
            "http://localhost.example.com", "http://127.0.0.1.nip.io"],
)
def test_plain_http_to_another_host_is_refused(tmp_path: Path, url: str) -> None:
    err = error_of(tmp_path, f'[x]\napi_url = "{url}"\n{RULE}')
    assert err.key == "x.api_url"
    assert "clear text" in err.problem
    assert "x.allow_insecure = true" in err.problem
    assert err.exit_code == ExitCode.CONFIG


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://127.9.8.7", "http://localhost:1/",
            "http://LOCALHOST", "http://[::1]:9000", "https://api.x.com", "https://10.0.0.5"],
)
def test_loopback_and_https_are_accepted(tmp_path: Path, url: str) -> None:
    settings = load_settings(write(tmp_path, f'[x]\napi_url = "{url}"\n{RULE}'), {})
    assert settings.x.api_url == url.rstrip("/")
    assert settings.x.allow_insecure is False


def test_allow_insecure_lets_plain_http_through(tmp_path: Path) -> None:
    text = f'[x]\napi_url = "http://proxy.internal:8080"\nallow_insecure = true\n{RULE}'
    assert load_settings(write(tmp_path, text), {}).x.api_url == "http://proxy.internal:8080"
    from_env = load_settings(
        write(tmp_path, RULE),
        {"STREAMD_X__API_URL": "http://proxy.internal", "STREAMD_X__ALLOW_INSECURE": "true"},
    )
    assert from_env.x.allow_insecure is True
    err = error_of(tmp_path, RULE, {"STREAMD_X__API_URL": "http://proxy.internal"})
    assert err.key == "x.api_url"
    # Allowed, but said at every start: the token crosses that network in clear text.
    assert any("proxy.internal over plain http://" in w for w in from_env.warnings())
    loopback = load_settings(write(tmp_path, RULE), {"STREAMD_X__API_URL": "http://[::1]:9"})
    assert not any("http://" in w for w in loopback.warnings())


def test_api_url_value_is_not_echoed(tmp_path: Path) -> None:
    # It may carry credentials (user:password@); the key and the problem are enough.
    err = error_of(tmp_path, f'[x]\napi_url = "ftp://u:{MARKER}@h"\n{RULE}')
    assert err.key == "x.api_url"
    _assert_silent(err)


# --- secrets readable by other users: a warning naming the file and the chmod -------------


def _warnings_about(settings: Settings, path: Path) -> list[str]:
    return [w for w in settings.warnings() if str(path) in w]


def test_config_file_with_an_inline_secret_readable_by_others_warns(tmp_path: Path) -> None:
    path = write(tmp_path, f'[x]\nbearer_token = "{MARKER}"\n{RULE}')
    path.chmod(0o644)
    (warning,) = _warnings_about(load_settings(path, {}), path)
    assert f"chmod 600 {path}" in warning
    assert "mode 0644" in warning
    assert "x.bearer_token" in warning
    assert MARKER not in warning
    path.chmod(0o600)
    assert _warnings_about(load_settings(path, {}), path) == []


def test_config_file_without_secrets_or_with_env_secret_does_not_warn(tmp_path: Path) -> None:
    path = write(tmp_path, RULE)
    path.chmod(0o644)
    settings = load_settings(path, {"STREAMD_X__BEARER_TOKEN": MARKER})
    assert _warnings_about(settings, path) == []


def test_sasl_password_inline_in_the_config_file_warns(tmp_path: Path) -> None:
    text = (f'[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\n'
            f'sasl_username = "u"\nsasl_password = "{MARKER}"\n{RULE}')
    path = write(tmp_path, text)
    path.chmod(0o604)
    (warning,) = _warnings_about(load_settings(path, {}), path)
    assert "kafka.sasl_password" in warning


@pytest.mark.parametrize("key", ["bearer_token_file", "sasl_password_file"])
def test_secret_file_readable_by_others_warns(tmp_path: Path, key: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text(MARKER + "\n")
    section = "x" if key == "bearer_token_file" else "kafka"
    extra = SASL if section == "kafka" else {}
    settings = Settings.model_validate({section: {key: str(secret), **extra}})
    secret.chmod(0o644)
    (warning,) = _warnings_about(settings, secret)
    assert f"{section}.{key}" in warning
    assert f"chmod 600 {secret}" in warning
    assert MARKER not in warning
    secret.chmod(0o600)
    assert _warnings_about(settings, secret) == []
    secret.chmod(0o400)
    assert _warnings_about(settings, secret) == []


def test_group_read_warns_unless_the_group_is_our_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    secret = tmp_path / "secret"
    secret.write_text(MARKER)
    secret.chmod(0o440)
    settings = Settings.model_validate({"x": {"bearer_token_file": str(secret)}})
    os.chown(secret, -1, os.getegid())
    assert _warnings_about(settings, secret) == []  # root:streamd 0640, k8s fsGroup 0440
    # The file's group stays; streamd's own group is another one now (no root needed to
    # make the file's group someone else's).
    ours = os.getegid()
    monkeypatch.setattr(os, "getegid", lambda: ours + 4242)
    (warning,) = _warnings_about(settings, secret)
    assert "readable by its group" in warning


def test_kubernetes_secret_layout_checks_the_symlink_target(tmp_path: Path) -> None:
    # A Secret volume: token -> ..data/token, ..data -> ..2024_01_01_00_00_00.1/
    stamp = tmp_path / "..2024_01_01_00_00_00.1"
    stamp.mkdir()
    (stamp / "token").write_text(MARKER)
    (tmp_path / "..data").symlink_to(stamp.name)
    link = tmp_path / "token"
    link.symlink_to("..data/token")
    settings = Settings.model_validate({"x": {"bearer_token_file": str(link)}})
    (stamp / "token").chmod(0o644)  # the default Secret mode
    (warning,) = _warnings_about(settings, link)
    assert f"chmod 600 {link}" in warning
    (stamp / "token").chmod(0o400)  # defaultMode: 0400
    assert _warnings_about(settings, link) == []
    assert settings.x.resolve_bearer_token({}) == MARKER


def test_missing_secret_file_gives_no_warning_that_shows_its_path(tmp_path: Path) -> None:
    settings = Settings.model_validate({"x": {"bearer_token_file": MARKER}})
    assert not any(MARKER in w for w in settings.warnings())


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


# --- kafka timeouts: one per phase, publish_timeout a deprecated alias ---------------------


def test_kafka_timeouts_default_to_ten_seconds_each() -> None:
    kafka = Settings.model_validate({}).kafka
    assert (kafka.request_timeout, kafka.ack_timeout, kafka.startup_timeout) == (10, 10, 10)
    assert kafka.flush_timeout == 15
    assert kafka.publish_timeout is None


def test_each_kafka_timeout_is_set_on_its_own(tmp_path: Path) -> None:
    text = "[kafka]\nrequest_timeout = 3\nack_timeout = 4.5\nstartup_timeout = 20\n" + RULE
    settings = load_settings(write(tmp_path, text), {})
    kafka = settings.kafka
    assert (kafka.request_timeout, kafka.ack_timeout, kafka.startup_timeout) == (3, 4.5, 20)
    assert not any("publish_timeout" in w for w in settings.warnings())


def test_publish_timeout_sets_the_timeouts_not_set_and_warns(tmp_path: Path) -> None:
    text = "[kafka]\npublish_timeout = 2\nack_timeout = 7\n" + RULE
    settings = load_settings(write(tmp_path, text), {})
    kafka = settings.kafka
    assert (kafka.request_timeout, kafka.ack_timeout, kafka.startup_timeout) == (2, 7, 2)
    [warning] = [w for w in settings.warnings() if "publish_timeout" in w]
    assert "deprecated" in warning
    for key in ("kafka.request_timeout", "kafka.ack_timeout", "kafka.startup_timeout"):
        assert key in warning


def test_publish_timeout_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, RULE)
    kafka = load_settings(path, {"STREAMD_KAFKA__PUBLISH_TIMEOUT": "4"}).kafka
    assert (kafka.request_timeout, kafka.ack_timeout, kafka.startup_timeout) == (4, 4, 4)
    both = {"STREAMD_KAFKA__PUBLISH_TIMEOUT": "4", "STREAMD_KAFKA__STARTUP_TIMEOUT": "30"}
    assert load_settings(path, both).kafka.startup_timeout == 30


@pytest.mark.parametrize("key", ["request_timeout", "ack_timeout", "startup_timeout",
                                 "publish_timeout"])
def test_a_kafka_timeout_must_be_positive_and_its_own_key_is_named(
    tmp_path: Path, key: str,
) -> None:
    err = error_of(tmp_path, f"[kafka]\n{key} = 0\n" + RULE)
    assert err.key == f"kafka.{key}"
    assert "greater than 0" in str(err)


def test_the_producer_gets_the_request_timeout() -> None:
    from streamd.kafka.producer import producer_kwargs

    kafka = Settings.model_validate({"kafka": {"request_timeout": 2.5, "ack_timeout": 9}}).kafka
    assert producer_kwargs(kafka, None)["request_timeout_ms"] == 2500


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


# --- the spool directory, judged without creating it (issue 19) ------------------------------


def test_plan_directory_says_what_run_would_create_and_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "spool"
    plan = plan_directory(target)
    assert plan.problem is None
    assert plan.missing == (tmp_path / "a", tmp_path / "a" / "b", target)
    assert plan.base == tmp_path
    assert list(tmp_path.iterdir()) == []
    existing = plan_directory(tmp_path)
    assert (existing.missing, existing.problem) == ((), None)


def test_plan_directory_names_what_stands_in_the_way(tmp_path: Path) -> None:
    """A regular file where a directory must go stops anyone, root included (tests may run
    as root, whom permission bits do not stop and access(2) does not refuse)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    plan = plan_directory(blocker / "spool")
    assert plan.problem == (f"{blocker} is a file, not a directory, so {blocker / 'spool'} "
                            "cannot be created")
    assert plan_directory(blocker).problem == f"{blocker} is a file, not a directory"
    if os.geteuid() != 0:  # a permission refusal, where permission bits apply
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        try:
            problem = plan_directory(locked / "spool").problem
            assert problem == (f"no write permission on {locked} for this user (uid "
                               f"{os.geteuid()}), so {locked / 'spool'} cannot be created")
        finally:
            locked.chmod(0o700)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({"STATE_DIRECTORY": "/var/lib/streamd:/var/lib/other"}, "/var/lib/streamd/spool"),
     ({"XDG_STATE_HOME": "/home/u/.state"}, "/home/u/.state/streamd/spool"),
     ({}, str(Path.home() / ".local" / "state" / "streamd" / "spool"))],
)
def test_suggested_spool_dir_fits_where_streamd_runs(
    environ: dict[str, str], expected: str
) -> None:
    assert str(suggested_spool_dir(environ)) == expected
    fix = spool_dir_fix(environ)
    assert f'spool.dir = "{expected}"' in fix
    assert ("StateDirectory=streamd" in fix) is ("STATE_DIRECTORY" not in environ)


# --- issue 14: endpoints, partitions ------------------------------------------------------


def _stream(tmp_path: Path, stream: str, env: dict[str, str] | None = None) -> Settings:
    return load_settings(write(tmp_path, f"[stream]\n{stream}\n"), env or {},
                         refuse_empty_sync=False)


@pytest.mark.parametrize(("stream", "problem"), [
    ('endpoint = "firehose"', "needs a partition from 1 to 20 (got 0)"),
    ('endpoint = "firehose"\npartition = 21', "less than or equal to 20"),
    ('endpoint = "sample10"\npartition = 3', "needs a partition from 1 to 2 (got 3)"),
    ("partition = 2", "'filtered' has no partitions"),
    ('endpoint = "firehose_de"', "stream.endpoint"),
    ("connections = 3", "stream.connections"),
    ('recovery = "sometimes"', "stream.recovery"),
])
def test_a_stream_that_does_not_exist_is_refused_naming_the_key(
    tmp_path: Path, stream: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)) as caught:
        _stream(tmp_path, stream)
    assert caught.value.key.startswith("stream.")
    assert caught.value.exit_code == ExitCode.CONFIG


def test_the_partition_comes_from_a_statefulset_pods_ordinal(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setenv("HOSTNAME", "streamd-3")
    settings = _stream(tmp_path, 'endpoint = "firehose"\npartition_from = "hostname"')
    assert settings.stream.partition == 4
    assert settings.ce_source == "https://api.x.com/2/tweets/firehose/stream?partition=4"
    monkeypatch.setenv("HOSTNAME", "streamd")
    with pytest.raises(ConfigError, match="ending in -<ordinal>"):
        _stream(tmp_path, 'endpoint = "firehose"\npartition_from = "hostname"')


def test_ce_source_names_the_stream_unless_set(tmp_path: Path) -> None:
    assert _stream(tmp_path, "").ce_source == "https://api.x.com/2/tweets/search/stream"
    lang = _stream(tmp_path, 'endpoint = "firehose_en"\npartition = 7')
    assert lang.ce_source == "https://api.x.com/2/tweets/firehose/stream/lang/en?partition=7"
    own = load_settings(write(tmp_path, '[kafka]\nce_source = "urn:mine"\n'), {},
                        refuse_empty_sync=False)
    assert own.ce_source == "urn:mine"


def test_a_stream_without_rules_needs_none_and_warns_about_configured_ones(
    tmp_path: Path,
) -> None:
    # rules.mode = "sync" (the default) with no rules is refused for the filtered stream
    # only: the firehose never syncs rules.
    path = write(tmp_path, '[stream]\nendpoint = "sample"\n')
    assert load_settings(path, {}).stream.endpoint == "sample"
    with_rules = load_settings(write(
        tmp_path, '[stream]\nendpoint = "sample"\n[[rules.rule]]\nvalue = "cat"\n'), {})
    assert any("takes no rules" in w for w in with_rules.warnings())
