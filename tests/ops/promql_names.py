"""What a PromQL expression asks of the exposition: series names, label names, metric types.

A small tokenizer, not a full PromQL parser: enough to find every vector selector with its
matchers, every grouping clause (by / without / on / ignoring / group_left / group_right)
with the selectors it applies to, and every rate-like call with its selectors. Grafana's
`$__rate_interval` and `$variable` placeholders are accepted where PromQL has a duration or
a string. Used by test_alerts.py and test_dashboard.py against a live /metrics.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
    |(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<range>\[[^\]]*\])                                # [5m], [30m:1m], [$__rate_interval]
    |(?P<number>0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)
    |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<var>\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}@])
    """,
    re.VERBOSE,
)

AGGREGATIONS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
})
KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "atan2", "inf", "nan", "start", "end",
})
# Functions whose argument must be a counter (or a histogram's _bucket/_sum/_count).
COUNTER_FUNCTIONS = frozenset({"rate", "irate", "increase", "resets"})
# Labels every scraped series gets from its target, whatever the exposition says.
TARGET_LABELS = frozenset({"job", "instance"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


@dataclass(frozen=True)
class Selector:
    name: str
    labels: frozenset[str]
    index: int  # the token index of the name


@dataclass(frozen=True)
class Clause:
    keyword: str  # by, without, on, ignoring, group_left, group_right, or a function name
    labels: frozenset[str]
    selectors: tuple[Selector, ...]  # the selectors it applies to


@dataclass
class Expression:
    text: str
    selectors: list[Selector] = field(default_factory=list)
    clauses: list[Clause] = field(default_factory=list)

    @property
    def names(self) -> set[str]:
        return {s.name for s in self.selectors}


def tokenize(expr: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(expr):
        match = TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot tokenize {expr[pos:pos + 20]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "ws":
            tokens.append(Token(kind, match.group(0)))
        pos = match.end()
    return tokens


def _partners(tokens: list[Token]) -> dict[int, int]:
    """Index of each bracket -> index of its partner."""
    pairs: dict[int, int] = {}
    stack: list[tuple[str, int]] = []
    for i, token in enumerate(tokens):
        if token.text in ("(", "{"):
            stack.append((token.text, i))
        elif token.text in (")", "}"):
            if not stack or stack[-1][0] != {")": "(", "}": "{"}[token.text]:
                raise ValueError(f"unbalanced {token.text!r} at token {i}")
            _, start = stack.pop()
            pairs[start] = i
            pairs[i] = start
    if stack:
        raise ValueError("unbalanced brackets")
    return pairs


def _label_list(tokens: list[Token], start: int, end: int) -> frozenset[str]:
    return frozenset(t.text for t in tokens[start + 1:end] if t.kind == "ident")


def _matcher_labels(tokens: list[Token], start: int, end: int) -> tuple[frozenset[str], str]:
    """(label names, __name__ value if matched by equality) of a {...} matcher list."""
    labels: set[str] = set()
    name = ""
    for i in range(start + 1, end):
        token = tokens[i]
        following = tokens[i + 1] if i + 1 < end else None
        if token.kind in ("ident", "string") and following is not None and following.text in (
            "=", "!=", "=~", "!~"
        ):
            label = token.text.strip("\"'`")
            if label == "__name__":
                if following.text == "=" and tokens[i + 2].kind == "string":
                    name = tokens[i + 2].text[1:-1]
            else:
                labels.add(label)
    return frozenset(labels), name


def analyse(expr: str) -> Expression:
    tokens = tokenize(expr)
    pairs = _partners(tokens)
    out = Expression(expr)
    clause_groups: set[int] = set()  # "(" of label lists, not sub-expressions
    for i, token in enumerate(tokens):
        if token.kind == "ident" and token.text in (
            "by", "without", "on", "ignoring", "group_left", "group_right"
        ) and i + 1 < len(tokens) and tokens[i + 1].text == "(":
            clause_groups.add(i + 1)

    def inside(start: int, end: int) -> tuple[Selector, ...]:
        return tuple(s for s in out.selectors if start < s.index < end)

    # Selectors first, so that clauses can collect them.
    for i, token in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        preceding = tokens[i - 1] if i > 0 else None
        if token.kind == "ident":
            if token.text.lower() in KEYWORDS or (following is not None and following.text == "("):
                continue  # an operator keyword or a function / aggregation call
            if token.text in AGGREGATIONS and following is not None and following.text in (
                "by", "without"
            ):
                continue  # sum by (...) (...)
            if preceding is not None and preceding.text == "(" and i - 1 in clause_groups:
                continue  # a label in by (...) and friends
            if any(start < i < pairs[start] for start in clause_groups):
                continue
            labels: frozenset[str] = frozenset()
            if following is not None and following.text == "{":
                labels, _ = _matcher_labels(tokens, i + 1, pairs[i + 1])
            # a label name inside a matcher list is not a selector
            if any(t.text == "{" and j < i < pairs[j] for j, t in enumerate(tokens)):
                continue
            out.selectors.append(Selector(token.text, labels, i))
        elif token.text == "{" and (preceding is None or preceding.kind != "ident"):
            labels, name = _matcher_labels(tokens, i, pairs[i])
            if name:
                out.selectors.append(Selector(name, labels, i))

    for i, token in enumerate(tokens):
        if token.kind != "ident":
            continue
        if token.text in ("by", "without"):
            labels = _label_list(tokens, i + 1, pairs[i + 1])
            after = pairs[i + 1] + 1
            if i > 0 and tokens[i - 1].text in AGGREGATIONS:  # sum by (x) (expr)
                scope = inside(after, pairs[after])
            else:  # sum (expr) by (x)
                scope = inside(pairs[i - 1], i - 1)
            out.clauses.append(Clause(token.text, labels, scope))
        elif token.text in ("on", "ignoring", "group_left", "group_right"):
            has_list = i + 1 < len(tokens) and tokens[i + 1].text == "("
            labels = _label_list(tokens, i + 1, pairs[i + 1]) if has_list else frozenset()
            # both operands: everything in the innermost enclosing parentheses
            enclosing = [j for j in pairs if tokens[j].text == "(" and j < i < pairs[j]]
            start = max(enclosing) if enclosing else -1
            end = pairs[start] if enclosing else len(tokens)
            out.clauses.append(Clause(token.text, labels, inside(start, end)))
        elif token.text in COUNTER_FUNCTIONS and i + 1 < len(tokens) and tokens[i + 1].text == "(":
            out.clauses.append(Clause(token.text, frozenset(), inside(i + 1, pairs[i + 1])))
    return out


@dataclass(frozen=True)
class Exposition:
    """A /metrics scrape: each series name with its type and the label names it carries."""

    labels: dict[str, frozenset[str]]
    types: dict[str, str]  # series name -> its family's type

    @classmethod
    def parse(cls, text: str) -> Exposition:
        labels: dict[str, set[str]] = {}
        types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
                types[sample.name] = family.type
        return cls({k: frozenset(v) for k, v in labels.items()}, types)

    def is_counter_like(self, name: str) -> bool:
        kind = self.types.get(name)
        if kind == "counter":
            return True
        return kind in ("histogram", "summary") and name.endswith(HISTOGRAM_SUFFIXES)


def problems(expr: str, exposition: Exposition, where: str) -> Iterator[str]:
    """Everything in `expr` the exposition cannot answer: unknown series, unknown labels,
    a rate over a gauge."""
    parsed = analyse(expr)
    for selector in parsed.selectors:
        if selector.name not in exposition.labels:
            yield f"{where}: {selector.name} is not exported"
            continue
        have = exposition.labels[selector.name] | TARGET_LABELS
        for label in sorted(selector.labels - have):
            yield f"{where}: {selector.name} has no label {label!r}"
    for clause in parsed.clauses:
        known = [s for s in clause.selectors if s.name in exposition.labels]
        if clause.keyword in COUNTER_FUNCTIONS:
            for s in known:
                if not exposition.is_counter_like(s.name):
                    yield (f"{where}: {clause.keyword}() over {s.name}, a "
                           f"{exposition.types[s.name]}, not a counter")
            continue
        for label in sorted(clause.labels - TARGET_LABELS):
            carriers = [s for s in known if label in exposition.labels[s.name]]
            if clause.keyword in ("group_left", "group_right"):
                ok = bool(carriers) or not known
            else:
                ok = len(carriers) == len(known)
            if not ok:
                missing = sorted({s.name for s in known} - {s.name for s in carriers})
                yield f"{where}: {clause.keyword} ({label}) but {missing} lack {label!r}"


def all_problems(exprs: Iterable[tuple[str, str]], exposition: Exposition) -> list[str]:
    """`problems` over (where, expr) pairs."""
    return [p for where, expr in exprs for p in problems(expr, exposition, where)]
