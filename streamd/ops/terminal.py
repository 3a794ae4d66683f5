"""Text from the network, made safe to print on a terminal.

A problem `detail`, a rule value or tag, an exception message: any of it may carry bytes a
terminal obeys rather than shows. ESC starts a control sequence (clear the screen, move the
cursor, set the window title), CR returns to the start of the line so the next text
overwrites what was printed, C1 characters (U+0080-U+009F) are 8-bit control sequence
introducers on some terminals, and the bidi override/isolate characters reorder what is
shown. Together they can hide a `[FAIL]` line and draw a fake `[ OK ]` one.

`printable()` is the one place that turns such characters into visible escapes; every
command that prints server text passes it through here. JSON output escapes C0 by itself;
`json_printable()` adds the characters JSON leaves raw.
"""

from __future__ import annotations

# Shown as the escapes a Python or C programmer reads at a glance.
_NAMED = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}

# Bidi embedding/override (U+202A-U+202E), isolates (U+2066-U+2069), the implicit marks
# (U+200E LRM, U+200F RLM, U+061C ALM), and the Unicode line/paragraph separators, which
# some terminals and pagers treat as line breaks.
_BIDI_AND_BREAKS = (
    *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C, 0x2028, 0x2029,
)


def _escape(code: int) -> str:
    if code in _NAMED:
        return _NAMED[code]
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


# C0 (every one, TAB/CR/LF included: inside a value they are not layout), DEL, C1.
_CONTROLS = (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0))
_TABLE: dict[int, str] = {code: _escape(code) for code in (*_CONTROLS, *_BIDI_AND_BREAKS)}
# Inside a JSON string, \u escapes are valid for every code point; orjson already escapes C0.
_JSON_TABLE: dict[int, str] = {
    code: f"\\u{code:04x}" for code in (0x7F, *range(0x80, 0xA0), *_BIDI_AND_BREAKS)
}


def printable(text: str) -> str:
    """`text` with every control, C1, bidi-reordering and line-separator character shown as
    an escape (`\\x1b`, `\\r`, `\\n`, `\\x9b`, `\\u202e`): one line a terminal shows, never
    obeys. Other text, non-ASCII letters included, is unchanged."""
    return text.translate(_TABLE)


def printable_lines(text: str) -> str:
    """`printable()` for each line of a multi-line text of our own making (a traceback):
    its line breaks stay, whatever each line quotes is escaped."""
    return "\n".join(printable(line) for line in text.split("\n"))


def json_printable(document: str) -> str:
    """A serialized JSON document with DEL, C1 and the bidi/separator characters written as
    `\\uXXXX` escapes. Still the same JSON value: these characters can only occur inside
    strings, where an escape means the same character."""
    return document.translate(_JSON_TABLE)
