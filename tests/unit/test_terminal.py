"""streamd.ops.terminal and the printers that use it: text from X (problem details, rule values
and tags, error messages) is shown, never obeyed, by a terminal."""

from __future__ import annotations

import io
import json
import unicodedata

import orjson
from hypothesis import given
from hypothesis import strategies as st

from streamd.commands.check import (
    CheckResult,
    Status,
    XAnswer,
    XProbe,
    judge_token,
    render_json,
    render_text,
)
from streamd.commands.rules import _diff, _report_failure, format_table
from streamd.config import RuleSpec, Settings
from streamd.errors import CredentialsError, RulesSyncError
from streamd.ops.terminal import json_printable, printable, printable_lines
from streamd.x.rules import RulesPlan, ServerRule

# The attack from the issue: clear the screen, go back to column 0, draw a passing line.
FAKE_OK = "\x1b[2J\r[ OK ] token"
BIDI = "".join(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))
C1 = "".join(chr(c) for c in range(0x80, 0xA0))
C0 = "".join(chr(c) for c in range(0x20))
DANGEROUS = frozenset(C0 + "\x7f" + C1 + BIDI + "\u200e\u200f\u061c\u2028\u2029")


def _safe(text: str) -> bool:
    return not DANGEROUS.intersection(text)


def _safe_lines(text: str) -> bool:
    """Line breaks of the output's own, nothing else a terminal acts on."""
    return all(_safe(line) for line in text.split("\n"))


def test_printable_escapes_each_class() -> None:
    assert printable(FAKE_OK) == "\\x1b[2J\\r[ OK ] token"
    assert printable("a\tb\nc\rd\x00e\x7f") == "a\\tb\\nc\\rd\\x00e\\x7f"
    assert printable("\x9b31m") == "\\x9b31m"  # C1 CSI
    assert printable("abc\u202edcba\u2066x\u2069") == "abc\\u202edcba\\u2066x\\u2069"
    assert printable("line\u2028sep") == "line\\u2028sep"


def test_printable_keeps_ordinary_text() -> None:
    text = "café — naïve 日本語 🐈 has:images -is:retweet (a OR b) \"q\" 'q' \\ / ~"
    assert printable(text) == text


@given(st.text(max_size=200))
def test_printable_output_never_holds_a_control_character(text: str) -> None:
    assert _safe(printable(text))
    # Only the dangerous characters change: text without them comes back as it was.
    kept = "".join(c for c in text if c not in DANGEROUS)
    assert printable(kept) == kept


@given(st.text(max_size=100))
def test_json_printable_is_the_same_json_value(text: str) -> None:
    document = orjson.dumps({"detail": text}).decode()
    safe = json_printable(document)
    assert json.loads(safe) == {"detail": text}
    assert not set(C1 + BIDI + "\x7f").intersection(safe)


def test_printable_lines_keeps_only_its_own_line_breaks() -> None:
    text = f"Traceback:\n  boom {FAKE_OK}\nRuntimeError"
    assert printable_lines(text) == "Traceback:\n  boom \\x1b[2J\\r[ OK ] token\nRuntimeError"


# --- check: a hostile problem body from X ------------------------------------------------


def _settings() -> Settings:
    return Settings.model_validate({"x": {"bearer_token": "tok-for-terminal-tests"}})


def _hostile_answer(status: int) -> XAnswer:
    body = {"title": f"Unauthorized{FAKE_OK}", "detail": f"nope{FAKE_OK}\u202e",
            "type": "about:blank", "status": status, "reason": f"r{FAKE_OK}"}
    return XAnswer(status, {}, orjson.dumps(body))


def test_check_text_escapes_a_hostile_problem_detail() -> None:
    results = [judge_token(_settings(), XProbe(_hostile_answer(status)))
               for status in (401, 403, 500, 418)]
    text = render_text(results)
    assert _safe_lines(text)
    assert "\\x1b[2J" in text  # shown, as text (classify already turns CR into a space)
    # Each result is one line, and no line is a fake passing one.
    assert len(text.splitlines()) == len(results) + 1
    assert not any(line.startswith("[ OK ]") for line in text.splitlines())


def test_check_text_escapes_fix_and_detail_of_any_result() -> None:
    result = CheckResult("kafka", Status.FAIL, f"cannot reach: {FAKE_OK}\n[ OK ] kafka",
                         f"fix{FAKE_OK}")
    (line, verdict) = render_text([result]).splitlines()
    assert line.startswith("[FAIL] kafka: ")
    assert _safe(line)
    assert verdict.startswith("verdict: FAIL")


def test_check_json_keeps_the_text_and_escapes_c1_and_bidi() -> None:
    result = judge_token(_settings(), XProbe(_hostile_answer(401)))
    text = render_json([result])
    assert _safe_lines(text)
    detail = json.loads(text)["checks"][0]["detail"]
    # The value itself is unchanged: JSON readers get X's text.
    assert "\x1b[2J" in detail
    assert "\u202e" in detail


# --- rules: hostile rule values, tags and ids from the server ----------------------------

HOSTILE = ServerRule(f"1{FAKE_OK}", f"cat{FAKE_OK}\u202e", f"tag{FAKE_OK}\x9b")


def test_rules_table_escapes_and_stays_aligned() -> None:
    table = format_table([HOSTILE, ServerRule("2", "dog", None)])
    assert _safe_lines(table)
    lines = table.splitlines()
    assert len(lines) == 4  # header, two rules, count
    # Columns are measured on the escaped text, so "dog" starts where the hostile value does.
    assert lines[1].index("cat") == lines[2].index("dog")
    assert not any(line.startswith("[ OK ]") for line in lines)


def test_rules_diff_lines_escape_values_tags_and_ids() -> None:
    plan = RulesPlan(
        mode="add", server_count=1, unchanged=(),
        to_add=(RuleSpec(f"new{FAKE_OK}", f"t{FAKE_OK}"),),
        to_delete=(HOSTILE,), conflicts=(HOSTILE,), adds_first=True,
    )
    out = io.StringIO()
    _diff(plan, as_json=False, out=out)
    assert _safe_lines(out.getvalue())
    assert len(out.getvalue().splitlines()) == 4


def test_rules_failure_message_is_escaped_and_redacted() -> None:
    from streamd.ops.logs import clear_secrets, register_secret

    register_secret("sekret-token-value")
    try:
        out, err = io.StringIO(), io.StringIO()
        code = _report_failure(
            CredentialsError(f"401 {FAKE_OK} Illegal header value b'Bearer sekret-token-value'"),
            as_json=False, out=out, err=err,
        )
        assert code == 77
        assert _safe_lines(err.getvalue())
        assert "sekret-token-value" not in err.getvalue()
        out, err = io.StringIO(), io.StringIO()
        sync_error = RulesSyncError("invalid_rules", f"bad {FAKE_OK}")
        _report_failure(sync_error, as_json=True, out=out, err=err)
        assert _safe_lines(err.getvalue())
        assert json.loads(out.getvalue())["summary"] == f"bad {FAKE_OK}"
    finally:
        clear_secrets()


def test_unicode_categories_of_the_escaped_set() -> None:
    # Guard the table against an edit that drops a class: every C0/C1 is Cc, bidi are Cf.
    assert all(unicodedata.category(c) == "Cc" for c in C0 + C1 + "\x7f")
    assert all(unicodedata.category(c) == "Cf" for c in BIDI)
    assert _safe(printable(C0 + C1 + BIDI + "\x7f"))
