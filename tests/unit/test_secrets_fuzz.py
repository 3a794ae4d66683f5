"""Secrets fuzzed through the loading and redaction functions, in process: whatever a token
file or variable holds, streamd either uses one clean line or stops with an error that
names the key and never shows the value; and a registered secret is scrubbed in every form
a message can quote it in.

The subprocess runs (every command, the daemon, /metrics, the spool) are in
tests/pipeline/test_secrets.py; these are the many cheap cases."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import types
import unicodedata
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from streamd.cli import main
from streamd.config import Settings
from streamd.errors import ConfigError
from streamd.ops.logs import clear_secrets, configure_logging, redact, register_secret

# Every marker starts and ends with these, so no fixed wording of a message can contain a
# marker or either half of one.
PREFIX = "h18Mk"
SUFFIX = "Zq7"
TOKEN_CHARS = "".join(chr(c) for c in range(0x21, 0x7F))
SENTINEL = "\u2603"


# Bidi embeddings, overrides, isolates and marks; line and paragraph separators; the BOM.
_REORDERING = frozenset(
    chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C,
                     0x2028, 0x2029, 0xFEFF)
)


def _one_plain_line(text: str) -> bool:
    """No C0/DEL/C1 control, bidi control or line separator: what a terminal shows as is."""
    return not any(
        unicodedata.category(c) == "Cc" or c in _REORDERING for c in text
    )

markers = st.text(alphabet=TOKEN_CHARS, min_size=4, max_size=40).map(
    lambda s: PREFIX + s + SUFFIX
)
# Bytes around and inside the marker: control characters, spaces, BOM, non-ASCII, newlines.
junk = st.one_of(
    st.just(b""),
    st.binary(max_size=8),
    st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\x00", b" ", b"\t", b"\xef\xbb\xbf",
                     b"\xc3\xa9", b"\x1b[2J", b"\xe2\x80\xae", b"\x7f", b"\xc2\x9b"]),
)
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@contextlib.contextmanager
def _secret_file(content: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x_token"
        path.write_bytes(content)
        yield path


def _assert_clean_error(err: ConfigError, marker: str, key: str, *hidden: str) -> None:
    text = str(err)
    assert err.key == key
    assert marker not in text
    for value in hidden:
        assert value not in text
    assert _one_plain_line(text)  # nothing a terminal would act on


@FUZZ
@given(marker=markers, before=junk, inside=junk, after=junk)
def test_token_file_is_one_clean_line_or_a_clean_error(
    marker: str, before: bytes, inside: bytes, after: bytes
) -> None:
    half = len(marker) // 2
    content = before + marker[:half].encode() + inside + marker[half:].encode() + after
    with _secret_file(content) as path:
        x = Settings.model_validate({"x": {"bearer_token_file": str(path)}}).x
        try:
            token = x.resolve_bearer_token({})
        except ConfigError as err:
            _assert_clean_error(err, marker, "x.bearer_token_file", str(path), marker[:half],
                                marker[half:])
            return
    # Accepted: one line holding the marker (with whatever legal characters were around
    # and inside it), a legal header value.
    assert marker[:half] in token
    assert marker[half:] in token
    assert all(0x21 <= ord(c) <= 0x7E for c in token)


@FUZZ
@given(marker=markers, before=junk, inside=junk, after=junk)
def test_env_token_is_one_clean_line_or_a_clean_error(
    marker: str, before: bytes, inside: bytes, after: bytes
) -> None:
    half = len(marker) // 2
    raw = before + marker[:half].encode() + inside + marker[half:].encode() + after
    value = raw.decode("utf-8", "replace")
    x = Settings.model_validate({"x": {"bearer_token": value}}).x
    try:
        token = x.resolve_bearer_token({})
    except ConfigError as err:
        _assert_clean_error(err, marker, "x.bearer_token", marker[:half], marker[half:])
        return
    assert marker[:half] in token
    assert marker[half:] in token
    assert all(0x21 <= ord(c) <= 0x7E for c in token)


@FUZZ
@given(marker=markers, before=junk, after=junk)
def test_sasl_password_file_is_one_clean_line_or_a_clean_error(
    marker: str, before: bytes, after: bytes
) -> None:
    with _secret_file(before + marker.encode() + after) as path:
        kafka = Settings.model_validate({"kafka": {
            "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u",
            "sasl_password_file": str(path),
        }}).kafka
        try:
            password = kafka.resolve_sasl_password({})
        except ConfigError as err:
            _assert_clean_error(err, marker, "kafka.sasl_password_file", str(path))
            return
    assert password is not None
    assert marker in password
    assert _one_plain_line(password)


@FUZZ
@given(marker=markers, before=junk, inside=junk, after=junk,
       argv=st.sampled_from([["run"], ["check"], ["check", "--json"], ["rules", "list"],
                             ["rules", "diff"], ["rules", "sync"]]))
def test_every_command_stops_on_a_bad_token_file_without_showing_it(
    marker: str, before: bytes, inside: bytes, after: bytes, argv: list[str]
) -> None:
    """The whole command line, in process: a token file that is not one clean line stops
    every command with 78 before any request; a good one reaches the command. The commands
    themselves are stand-ins here (the real ones, against the simulator, run in
    tests/pipeline/test_secrets.py)."""
    half = len(marker) // 2
    content = before + marker[:half].encode() + inside + marker[half:].encode() + after
    reached: list[str] = []
    tokens: list[str] = []

    def command(name: str, settings: Settings) -> int:
        # What a real command does first: take the token for its Authorization header.
        reached.append(name)
        tokens.append(settings.x.resolve_bearer_token())
        return 0

    fakes = {
        "streamd.daemon": types.SimpleNamespace(run_daemon=lambda s: command("run", s)),
        "streamd.commands.check": types.SimpleNamespace(
            check_command=lambda s, as_json: command("check", s)),
        "streamd.commands.rules": types.SimpleNamespace(
            rules_command=lambda s, action, dry_run, as_json: command(action, s)),
    }
    err, out = io.StringIO(), io.StringIO()
    with _secret_file(content) as token_path:
        config = token_path.with_name("streamd.toml")
        config.write_text(
            f'[x]\nbearer_token_file = "{token_path}"\n[[rules.rule]]\nvalue = "cat"\n'
        )
        config.chmod(0o600)
        token_path.chmod(0o600)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("STREAMD_") and k != "CREDENTIALS_DIRECTORY"}
        with mock.patch.dict(sys.modules, fakes), mock.patch.dict(
            "os.environ", env, clear=True
        ), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main([*argv, "-c", str(config)])
        configure_logging("info", "json")
        clear_secrets()
    output = err.getvalue() + out.getvalue()
    assert marker not in output
    assert marker[:half] not in output
    assert marker[half:] not in output
    event(f"exit {code}")
    if code == 78:
        assert reached == []
        assert "config key 'x.bearer_token_file'" in output
        assert str(token_path) not in output
    else:
        assert code == 0
        assert reached == [argv[1] if argv[0] == "rules" else argv[0]]
        # Only a legal header value ever reaches a command.
        (token,) = tokens
        assert all(0x21 <= ord(c) <= 0x7E for c in token), repr(token)


def _forms(secret: str) -> list[str]:
    from streamd.ops.terminal import printable  # new with this change: imported where used

    return [
        secret,
        repr(secret)[1:-1],
        ascii(secret)[1:-1],
        repr(secret.encode())[2:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        printable(secret),
        urllib.parse.quote(secret, safe=""),
    ]


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=4, max_size=40).filter(lambda s: SENTINEL not in s))
def test_every_quoted_form_of_a_registered_secret_is_scrubbed(secret: str) -> None:
    assume(secret == secret.strip() and "***" not in secret)
    register_secret(secret)
    try:
        for form in _forms(secret):
            assert redact(f"{SENTINEL}{form}{SENTINEL}") == f"{SENTINEL}***{SENTINEL}", form
        header = f"Bearer {secret}".encode()
        assert secret not in redact(f"Illegal header value {header!r}")
    finally:
        clear_secrets()
