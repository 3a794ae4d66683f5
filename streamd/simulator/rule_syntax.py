"""A small PowerTrack-like rule language: tokenizer, validator (X's parser messages) and a
compiled matcher over generated tweets.

Grammar (simplified): expr := and (OR and)* ; and := term+ ;
term := '-'? ( '(' expr ')' | "phrase" | operator:value | #tag | @user | keyword ).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# Operators the filtered stream knows
# (https://docs.x.com/x-api/posts/filtered-stream/integrate/build-a-rule). Only a few are
# evaluated by the matcher; the rest parse but match nothing.
KNOWN_OPERATORS = frozenset(
    {
        "from", "to", "lang", "is", "has", "url", "entity", "conversation_id", "bio",
        "bio_name", "bio_location", "place", "place_country", "point_radius",
        "bounding_box", "retweets_of", "context", "sample", "followers_count",
        "tweets_count", "following_count", "listed_count", "url_title", "url_description",
        "url_contains", "source", "in_reply_to_tweet_id", "retweets_of_tweet_id",
        "quotes_of_tweet_id", "list",
    }
)
# Operators that cannot form a rule on their own (need a keyword or another operator).
_CONJUNCTION_REQUIRED = frozenset({"is", "has", "lang"})
# What `has:` and `is:` take (X's operator reference, plus PowerTrack names X still knows).
# Anything else is an unknown operator to X: `has:polls` was answered "Reference to invalid
# operator 'has:polls'." (no position), after the standalone error when alone.
OPERATOR_VALUES: dict[str, frozenset[str]] = {
    "has": frozenset({
        "hashtags", "cashtags", "links", "mentions", "media", "images", "videos",
        "video_link", "geo", "lang", "profile_geo", "symbols",
    }),
    "is": frozenset({"retweet", "reply", "quote", "verified", "nullcast"}),
}


@dataclass(frozen=True)
class Token:
    kind: str  # "word" | "phrase" | "lparen" | "rparen" | "or"
    text: str
    position: int  # 1-based, as X reports positions
    negated: bool = False


class RuleSyntaxError(Exception):
    def __init__(self, details: list[str]) -> None:
        super().__init__("; ".join(details))
        self.details = details


def tokenize(value: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        if ch.isspace():
            i += 1
            continue
        start = i
        negated = False
        if ch == "-" and i + 1 < n and not value[i + 1].isspace():
            negated = True
            i += 1
            ch = value[i]
        if ch == "(":
            tokens.append(Token("lparen", "(", start + 1, negated))
            i += 1
        elif ch == ")":
            tokens.append(Token("rparen", ")", start + 1, negated))
            i += 1
        elif ch == '"':
            end = value.find('"', i + 1)
            if end < 0:
                raise RuleSyntaxError(
                    [f"token recognition error at: '{value[i:]}' (at position {i + 1})"]
                )
            tokens.append(Token("phrase", value[i + 1 : end], start + 1, negated))
            i = end + 1
        else:
            j = i
            while j < n and not value[j].isspace() and value[j] not in "()":
                if value[j] == '"':  # op:"quoted value"
                    close = value.find('"', j + 1)
                    if close < 0:
                        raise RuleSyntaxError(
                            [f"token recognition error at: '{value[j:]}' (at position {j + 1})"]
                        )
                    j = close + 1
                else:
                    j += 1
            text = value[i:j]
            kind = "or" if text == "OR" and not negated else "word"
            tokens.append(Token(kind, text, start + 1, negated))
            i = j
    return tokens


@dataclass(frozen=True)
class TweetFeatures:
    """What a rule can look at, precomputed once per generated tweet model."""

    words: frozenset[str]
    text_lower: str
    username: str
    lang: str
    has: frozenset[str]
    is_: frozenset[str]
    hashtags: frozenset[str]
    mentions: frozenset[str]
    urls: tuple[str, ...]


Predicate = Callable[[TweetFeatures], bool]

_WORD_RE = re.compile(r"\w+", re.UNICODE)
_CJK_START = 0x2E80


def words_of(text: str) -> frozenset[str]:
    return frozenset(w.lower() for w in _WORD_RE.findall(text))


class _Parser:
    def __init__(self, tokens: list[Token], value: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.value = value
        self.errors: list[str] = []
        self.positive_terms = 0  # non-negated standalone-capable terms
        self.conjunction_only = 0  # is:/has:/lang: terms
        # Unknown has:/is: values: reported after the standalone check (see compile_rule).
        self.value_errors: list[str] = []

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def parse(self) -> Predicate:
        predicate = self.parse_or()
        extra = self.peek()
        if extra is not None:
            self.errors.append(f"missing EOF at '{extra.text}' (at position {extra.position})")
        return predicate

    def parse_or(self) -> Predicate:
        alternatives = [self.parse_and()]
        while (tok := self.peek()) is not None and tok.kind == "or":
            self.pos += 1
            alternatives.append(self.parse_and())
        if len(alternatives) == 1:
            return alternatives[0]
        return lambda f: any(alt(f) for alt in alternatives)

    def parse_and(self) -> Predicate:
        terms: list[Predicate] = []
        while (tok := self.peek()) is not None and tok.kind not in ("or", "rparen"):
            terms.append(self.parse_term())
        if not terms:
            tok = self.peek()
            where = tok.position if tok else len(self.value) + 1
            shown = tok.text if tok else "<EOF>"
            self.errors.append(f"no viable alternative at input '{shown}' (at position {where})")
            return lambda f: False
        if len(terms) == 1:
            return terms[0]
        return lambda f: all(term(f) for term in terms)

    def parse_term(self) -> Predicate:
        tok = self.tokens[self.pos]
        self.pos += 1
        if tok.kind == "lparen":
            inner = self.parse_or()
            close = self.peek()
            if close is None or close.kind != "rparen":
                where = close.position if close else len(self.value) + 1
                self.errors.append(f"mismatched input '<EOF>' expecting ')' (at position {where})")
            else:
                self.pos += 1
            if tok.negated:
                return lambda f: not inner(f)
            return inner
        predicate = self.leaf(tok)
        if tok.negated:
            return lambda f: not predicate(f)
        return predicate

    def leaf(self, tok: Token) -> Predicate:
        if tok.kind == "phrase":
            if not tok.negated:
                self.positive_terms += 1
            phrase = tok.text.lower()
            return lambda f: phrase in f.text_lower
        text = tok.text
        operator, sep, argument = text.partition(":")
        if sep and operator and argument and not text.startswith(("http", "#", "@", "$")):
            op = operator.lower()
            if op not in KNOWN_OPERATORS:
                self.errors.append(
                    f"Reference to invalid operator '{operator}' (at position {tok.position})."
                )
                self.errors.append(
                    f"Reference to invalid field '{operator}' (at position {tok.position})."
                )
                return lambda f: False
            values = OPERATOR_VALUES.get(op)
            if values is not None and argument.lower() not in values:
                self.value_errors.append(f"Reference to invalid operator '{text}'.")
            if op in _CONJUNCTION_REQUIRED:
                self.conjunction_only += 1
            elif not tok.negated:
                self.positive_terms += 1
            return _operator_predicate(op, argument.strip('"').lower())
        if not tok.negated:
            self.positive_terms += 1
        lowered = text.lower()
        if lowered.startswith("#") and len(lowered) > 1:
            tag = lowered[1:]
            return lambda f: tag in f.hashtags
        if lowered.startswith("@") and len(lowered) > 1:
            user = lowered[1:]
            return lambda f: user in f.mentions or user == f.username
        keyword_words = _WORD_RE.findall(lowered)
        if any(ord(ch) >= _CJK_START for ch in lowered):
            # CJK scripts have no spaces between words: match the characters anywhere.
            return lambda f: lowered in f.text_lower
        if len(keyword_words) == 1 and keyword_words[0] == lowered:
            return lambda f: lowered in f.words
        # Keywords with punctuation (e.g. "c++", emoji): substring match.
        return lambda f: lowered in f.text_lower


def _operator_predicate(op: str, argument: str) -> Predicate:
    if op == "from":
        return lambda f: f.username == argument
    if op == "lang":
        return lambda f: f.lang == argument
    if op == "has":
        return lambda f: argument in f.has
    if op == "is":
        return lambda f: argument in f.is_
    if op in ("url", "url_contains"):
        return lambda f: any(argument in u for u in f.urls)
    if op == "sample":
        return lambda f: True
    return lambda f: False


def plain_keyword(value: str) -> str | None:
    """The lowercased keyword when a rule is one plain word (the common case), else None.
    Such rules are matched through a word index instead of one predicate call per tweet."""
    stripped = value.strip()
    if " " in stripped or any(ord(ch) >= _CJK_START for ch in stripped):
        return None
    lowered = stripped.lower()
    if _WORD_RE.fullmatch(lowered) and lowered != "or":
        return lowered
    return None


def compile_rule(value: str, max_length: int) -> Predicate:
    """Validate `value` and return its matcher; raises RuleSyntaxError with X-like details."""
    if max_length and len(value) > max_length:
        raise RuleSyntaxError(
            [
                f"Rule '{value}' is too long. The maximum length of a rule is"
                f" {max_length} characters."
            ]
        )
    if not value.strip():
        raise RuleSyntaxError(["no viable alternative at input '<EOF>' (at position 1)"])
    parser = _Parser(tokenize(value), value)
    predicate = parser.parse()
    if parser.errors:
        raise RuleSyntaxError(parser.errors)
    details: list[str] = []
    if parser.positive_terms == 0:
        if parser.conjunction_only:
            details.append("is/has/lang cannot be used as a standalone operator (at position 1)")
        else:
            details.append("Rules must contain a non-negation term (at position 1)")
    details.extend(parser.value_errors)
    if details:
        raise RuleSyntaxError(details)
    return predicate
