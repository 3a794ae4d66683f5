"""streamd.ops.logs: one JSON object per line, fixed head keys, secrets scrubbed everywhere."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest

from streamd.ops.logs import (
    clear_secrets,
    configure_logging,
    current_level,
    get_logger,
    redact,
    register_secret,
)

SECRET = "AAAAAAAAAAAAAAAAAAAAAbCdEf%2Bxyz%3DtokenTail"
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("info", "json", out)
    yield out
    clear_secrets()
    configure_logging("info", "json")


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_line_shape(stream: io.StringIO) -> None:
    get_logger("streamd.test").info("stream.connected", attempt=3, extra={"a": [1, 2]})
    (entry,) = lines(stream)
    assert list(entry)[:3] == ["ts", "level", "event"]
    assert TS.match(entry["ts"])
    assert entry["level"] == "info"
    assert entry["event"] == "stream.connected"
    assert entry["attempt"] == 3
    assert entry["extra"] == {"a": [1, 2]}
    assert entry["logger"] == "streamd.test"


def test_level_filter(stream: io.StringIO) -> None:
    log = get_logger()
    log.debug("hidden")
    log.warning("shown")
    assert [e["event"] for e in lines(stream)] == ["shown"]
    assert lines(stream)[0]["level"] == "warning"


def test_module_level_logger_follows_reconfiguration(stream: io.StringIO) -> None:
    log = get_logger("early")  # as a module would, before configure_logging
    other = io.StringIO()
    configure_logging("debug", "json", other)
    log.debug("late")
    assert stream.getvalue() == ""
    assert lines(other)[0]["event"] == "late"
    assert current_level() == "debug"


def test_exceptions_are_rendered(stream: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger().exception("failed")
    (entry,) = lines(stream)
    assert entry["level"] == "error"
    assert "RuntimeError: boom" in entry["exception"]


def test_secrets_are_scrubbed_everywhere(stream: io.StringIO) -> None:
    register_secret(SECRET)
    log = get_logger("streamd.test")
    log.info(
        f"event {SECRET}",
        header=f"Bearer {SECRET}",
        decoded=f"x {SECRET.replace('%2B', '+').replace('%3D', '=')} y",
        nested={"list": [SECRET, ("t", SECRET)]},
        raw=SECRET.encode(),
        obj=ValueError(SECRET),
    )
    try:
        raise RuntimeError(f"token {SECRET}")
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("aiokafka").warning("broker said %s", SECRET)
    text = stream.getvalue()
    assert SECRET not in text
    assert "%2Bxyz" not in text
    assert "+xyz=token" not in text
    first = lines(stream)[0]
    assert first["header"] == "Bearer ***"
    assert first["event"] == "event ***"
    assert first["nested"] == {"list": ["***", ["t", "***"]]}
    assert len(lines(stream)) == 3


def test_quoted_forms_are_scrubbed_too(stream: io.StringIO) -> None:
    """An exception message quotes a secret the way repr() does: httpx refuses a header
    with a newline in it as "Illegal header value b'Bearer ...\\n...'"."""
    secret = "AAAAquoted-secret\nsecond\x00line'\\x"
    register_secret(secret)
    header = f"Bearer {secret}".encode()
    texts = [
        f"LocalProtocolError: Illegal header value {header!r}",
        f"ValueError({secret!r})",
        f"{secret!a}",
        json.dumps({"h": secret}),
        f"both quotes {(secret + chr(34))!r}",  # repr() then escapes the secret's quote
    ]
    for text in texts:
        scrubbed = redact(text)
        assert "AAAAquoted" not in scrubbed, (text, scrubbed)
        assert "***" in scrubbed
    get_logger().error("daemon.fatal", detail=texts[0], exc=ValueError(texts[0]))
    assert "AAAAquoted" not in stream.getvalue()


def test_each_line_of_a_multi_line_secret_is_scrubbed() -> None:
    register_secret("first-line-secret\nsecond-line-secret")
    assert redact("got second-line-secret") == "got ***"
    clear_secrets()


def test_short_strings_are_not_registered() -> None:
    register_secret("ab")
    register_secret("   ")
    assert redact("ab cd") == "ab cd"
    clear_secrets()


def test_stdlib_logging_is_routed_at_warning(stream: io.StringIO) -> None:
    logging.getLogger("httpx").info("HTTP Request: GET https://api.x.com/2/tweets/search/stream")
    logging.getLogger("uvicorn.error").warning("port busy %d", 9464)
    (entry,) = lines(stream)
    assert entry["event"] == "port busy 9464"
    assert entry["level"] == "warning"
    assert entry["logger"] == "uvicorn.error"
    assert TS.match(entry["ts"])


def test_third_party_stays_at_warning_under_debug() -> None:
    out = io.StringIO()
    configure_logging("debug", "json", out)
    logging.getLogger("httpx").info("HTTP Request: GET /")
    get_logger().debug("ours")
    assert [e["event"] for e in lines(out)] == ["ours"]
    configure_logging("info", "json")


def test_reconfiguring_does_not_duplicate_stdlib_lines() -> None:
    out = io.StringIO()
    configure_logging("info", "json", io.StringIO())
    configure_logging("info", "json", out)
    logging.getLogger("aiokafka").error("once")
    assert len(lines(out)) == 1
    configure_logging("info", "json")


def test_console_format_without_colors() -> None:
    out = io.StringIO()
    configure_logging("info", "console", out)
    register_secret(SECRET)
    get_logger("streamd.c").info("rules.synced", added=1, token=SECRET)
    text = out.getvalue()
    assert "rules.synced" in text
    assert "added=1" in text
    assert "\x1b[" not in text
    assert SECRET not in text
    clear_secrets()
    configure_logging("info", "json")


def test_bad_level_or_format() -> None:
    with pytest.raises(ValueError, match="level"):
        configure_logging("loud")
    with pytest.raises(ValueError, match="format"):
        configure_logging("info", "xml")
