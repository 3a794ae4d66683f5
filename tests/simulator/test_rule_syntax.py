"""The rule matcher and validator on hand-made tweet features (pure logic, no sockets)."""

from __future__ import annotations

import pytest

from streamd.simulator.rule_syntax import (
    RuleSyntaxError,
    TweetFeatures,
    compile_rule,
    words_of,
)
from streamd.simulator.tweets import make_pool


def features(text: str, *, username: str = "bob", lang: str = "en",
             has: frozenset[str] = frozenset(), is_: frozenset[str] = frozenset()) -> TweetFeatures:
    return TweetFeatures(
        words=words_of(text), text_lower=text.lower(), username=username, lang=lang, has=has,
        is_=is_, hashtags=frozenset(w[1:].lower() for w in text.split() if w.startswith("#")),
        mentions=frozenset(w[1:].lower() for w in text.split() if w.startswith("@")),
        urls=(),
    )


@pytest.mark.parametrize(
    ("rule", "text", "expected"),
    [
        ("cat", "I love my Cat!", True),
        ("cat", "concatenate", False),
        ("cat dog", "cat and dog", True),
        ("cat dog", "cat only", False),
        ("cat OR dog", "dog only", True),
        ("cat -dog", "cat and dog", False),
        ("cat -dog", "cat alone", True),
        ('"good morning"', "a Good Morning to all", True),
        ('"good morning"', "morning good", False),
        ("(cat OR dog) coffee", "dog with coffee", True),
        ("(cat OR dog) coffee", "dog with tea", False),
        ("#python", "learning #Python today", True),
        ("@alice hi", "hi @alice", True),
        ("猫", "猫がかわいい", True),
    ],
)
def test_keyword_logic(rule: str, text: str, expected: bool) -> None:
    assert compile_rule(rule, 1024)(features(text)) is expected


def test_operators() -> None:
    tweet = features("cat pic", username="bob", lang="ja", has=frozenset({"images"}),
                     is_=frozenset({"retweet"}))
    assert compile_rule("cat from:bob", 1024)(tweet)
    assert not compile_rule("cat from:alice", 1024)(tweet)
    assert compile_rule("cat lang:ja", 1024)(tweet)
    assert compile_rule("cat has:images", 1024)(tweet)
    assert not compile_rule("cat has:links", 1024)(tweet)
    assert not compile_rule("cat -is:retweet", 1024)(tweet)


def test_from_alone_is_valid_but_has_alone_is_not() -> None:
    compile_rule("from:bob", 1024)
    with pytest.raises(RuleSyntaxError) as error:
        compile_rule("has:images lang:en", 1024)
    assert error.value.details == [
        "is/has/lang cannot be used as a standalone operator (at position 1)"
    ]


def test_generated_pool_matches_typical_rules_often_enough() -> None:
    pool = make_pool(seed=0, size=500)
    cat = compile_rule("cat OR cats", 1024)
    share = sum(cat(model.features) for model in pool) / len(pool)
    assert 0.02 <= share <= 0.5
    assert make_pool(seed=0, size=20) == make_pool(seed=0, size=20)  # deterministic


def test_unknown_has_and_is_values_are_invalid_operators() -> None:
    with pytest.raises(RuleSyntaxError) as error:
        compile_rule("cat has:imagez", 1024)
    assert error.value.details == ["Reference to invalid operator 'has:imagez'."]
    with pytest.raises(RuleSyntaxError) as error:
        compile_rule("has:polls", 1024)  # X's answer, captured for this very rule
    assert error.value.details == [
        "is/has/lang cannot be used as a standalone operator (at position 1)",
        "Reference to invalid operator 'has:polls'.",
    ]
    for value in ("cat has:media", "cat -is:nullcast", "cat has:VIDEOS is:quote"):
        compile_rule(value, 1024)
