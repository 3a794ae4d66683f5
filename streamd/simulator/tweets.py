"""Synthetic tweet models and their pre-rendered wire templates.

A TweetModel is everything about a tweet except its id and created_at. `render_head`
turns a model into the JSON bytes of one stream message for a given field selection, with
ID_SENTINEL / TS_SENTINEL where the id and created_at go and *without* the closing brace:
the sender appends `,"matching_rules":[...]}` per the active rules.

Field policy (like X): data always has id, text and edit_history_tweet_ids; every other
tweet field appears only when requested in tweet.fields; includes.users only with the
author_id / entities.mentions.username expansions, includes.tweets with referenced_tweets.id,
includes.media with attachments.media_keys. Users always carry id, name, username.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamd.simulator import problems, vocab
from streamd.simulator.rule_syntax import TweetFeatures, words_of
from streamd.simulator.snowflake import TWITTER_EPOCH_MS
from streamd.simulator.timefmt import iso_from_ms

ID_SENTINEL = b"@@TWEETID@@"
TS_SENTINEL = b"@@CREATEDAT@@"
_ID_TEXT = ID_SENTINEL.decode()
_TS_TEXT = TS_SENTINEL.decode()

# How long regular tweet text can be; longer texts are note tweets (text is truncated and
# note_tweet.text carries the whole text, as X does).
_MAX_TEXT = 280


@dataclass(frozen=True)
class FieldSelection:
    """The stream's query: which fields/expansions the client asked for."""

    tweet_fields: frozenset[str] = frozenset()
    expansions: frozenset[str] = frozenset()
    user_fields: frozenset[str] = frozenset()
    media_fields: frozenset[str] = frozenset()
    place_fields: frozenset[str] = frozenset()
    poll_fields: frozenset[str] = frozenset()


@dataclass(frozen=True)
class User:
    id: str
    username: str
    name: str
    description: str
    location: str
    created_at: str
    followers: int
    following: int
    tweets: int
    verified: bool

    def to_json(self, fields: frozenset[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name, "username": self.username}
        if "created_at" in fields:
            out["created_at"] = self.created_at
        if "description" in fields:
            out["description"] = self.description
        if "location" in fields and self.location:
            out["location"] = self.location
        if "verified" in fields:
            out["verified"] = self.verified
        if "protected" in fields:
            out["protected"] = False
        if "profile_image_url" in fields:
            out["profile_image_url"] = (
                f"https://pbs.twimg.com/profile_images/{self.id}/avatar_normal.jpg"
            )
        if "public_metrics" in fields:
            out["public_metrics"] = {
                "followers_count": self.followers,
                "following_count": self.following,
                "tweet_count": self.tweets,
                "listed_count": self.followers // 50,
                "like_count": self.tweets * 2,
            }
        if "url" in fields:
            out["url"] = ""
        return out


@dataclass(frozen=True)
class Reference:
    kind: str  # "replied_to" | "quoted" | "retweeted"
    tweet_id: str
    author: User
    text: str
    deleted: bool  # cannot be hydrated -> partial error instead of includes.tweets


@dataclass(frozen=True)
class TweetModel:
    index: int
    text: str  # the display text (<= 280 chars)
    full_text: str | None  # the note tweet text when longer than 280 chars
    lang: str
    author: User
    entities: dict[str, list[dict[str, Any]]]
    mentions: tuple[User, ...]
    reference: Reference | None
    media_key: str | None
    metrics: dict[str, int]
    source: str
    sensitive: bool
    context: tuple[tuple[str, str, str, str, str], ...]
    features: TweetFeatures = field(compare=False)


def make_users(rng: random.Random, count: int) -> list[User]:
    users: list[User] = []
    for number in range(count):
        first = rng.choice(vocab.NAME_PARTS)
        username = f"{first.lower()}_{rng.choice(vocab.TOPIC_WORDS)}{number}"[:15]
        user_id = str(rng.randrange(10**9, 10**19 - 1))
        created_ms = TWITTER_EPOCH_MS + rng.randrange(0, 14 * 365 * 86400 * 1000)
        description = " ".join(
            [rng.choice(vocab.FILLER_EN) for _ in range(rng.randrange(4, 12))]
            + [rng.choice(vocab.EMOJI), "#" + rng.choice(vocab.TOPIC_WORDS)]
        )
        users.append(
            User(
                id=user_id,
                username=username,
                name=first + rng.choice(vocab.NAME_SUFFIXES),
                description=description,
                location=rng.choice(("", "Berlin", "東京", "São Paulo", "القاهرة", "NYC")),
                created_at=iso_from_ms(created_ms),
                followers=int(rng.paretovariate(1.2) * 40),
                following=rng.randrange(0, 3000),
                tweets=rng.randrange(1, 80000),
                verified=rng.random() < 0.05,
            )
        )
    return users


def _pick_lang(rng: random.Random) -> str:
    langs = [lang for lang, _ in vocab.LANG_WEIGHTS]
    weights = [weight for _, weight in vocab.LANG_WEIGHTS]
    return rng.choices(langs, weights)[0]


class _TextBuilder:
    """Builds a text piece by piece and records entity offsets in code points."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.hashtags: list[dict[str, Any]] = []
        self.mentions: list[dict[str, Any]] = []
        self.urls: list[dict[str, Any]] = []

    def add(self, piece: str) -> int:
        if self.parts:
            self.parts.append(" ")
            self.length += 1
        start = self.length
        self.parts.append(piece)
        self.length += len(piece)
        return start

    def hashtag(self, tag: str) -> None:
        start = self.add("#" + tag)
        self.hashtags.append({"start": start, "end": start + 1 + len(tag), "tag": tag})

    def mention(self, user: User) -> None:
        start = self.add("@" + user.username)
        self.mentions.append(
            {"start": start, "end": start + 1 + len(user.username), "username": user.username,
             "id": user.id}
        )

    def url(self, rng: random.Random) -> None:
        short = "https://t.co/" + "".join(
            rng.choice("abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789")
            for _ in range(10)
        )
        start = self.add(short)
        slug = rng.choice(vocab.TOPIC_WORDS)
        self.urls.append(
            {"start": start, "end": start + len(short), "url": short,
             "expanded_url": f"https://example.com/{slug}/{rng.randrange(10**6)}",
             "display_url": f"example.com/{slug}/…"}
        )

    def text(self) -> str:
        return "".join(self.parts)


def make_model(index: int, rng: random.Random, users: list[User]) -> TweetModel:
    lang = _pick_lang(rng)
    author = rng.choice(users)
    builder = _TextBuilder()
    reference: Reference | None = None
    is_retweet = rng.random() < 0.08
    if is_retweet:
        original_author = rng.choice(users)
        builder.add("RT")
        builder.mention(original_author)
    else:
        original_author = None
    mentions: list[User] = []
    if not is_retweet and rng.random() < 0.25:
        mentioned = rng.choice(users)
        mentions.append(mentioned)
        builder.mention(mentioned)
    for _ in range(rng.randrange(1, 4)):
        for _ in range(rng.randrange(2, 7)):
            builder.add(rng.choice(vocab.FILLER_EN) if lang == "en" else rng.choice(
                vocab.PHRASES[lang]))
        builder.add(rng.choice(vocab.TOPIC_WORDS))
        if rng.random() < 0.4:
            builder.add(rng.choice(vocab.EMOJI))
        if rng.random() < 0.1:
            builder.add(rng.choice(vocab.ODDITIES))
        if lang != "en" and rng.random() < 0.3:
            builder.add(rng.choice(vocab.PHRASES["en"]))
    if rng.random() < 0.35:
        builder.hashtag(rng.choice(vocab.TOPIC_WORDS))
    long_text = rng.random() < 0.03
    if long_text:
        target = rng.randrange(1000, 4000)
        while builder.length < target:
            builder.add(rng.choice(vocab.PHRASES[lang]) if rng.random() < 0.5 else rng.choice(
                vocab.FILLER_EN))
            if rng.random() < 0.05:
                builder.add(rng.choice(vocab.TOPIC_WORDS))
    if rng.random() < 0.3:
        builder.url(rng)
    has_media = rng.random() < 0.2
    media_key = f"3_{rng.randrange(10**18, 10**19)}" if has_media else None
    full = builder.text()
    text = full
    full_text: str | None = None
    if len(full) > _MAX_TEXT:
        full_text = full
        text = full[: _MAX_TEXT - 1].rstrip() + "…"
    if is_retweet and original_author is not None:
        reference = Reference(
            "retweeted", str(rng.randrange(10**18, 10**19)), original_author, text, False
        )
    elif rng.random() < 0.2:
        referenced_author = rng.choice(users)
        reference = Reference(
            rng.choice(("replied_to", "quoted")),
            str(rng.randrange(10**18, 10**19)),
            referenced_author,
            " ".join(rng.choice(vocab.FILLER_EN) for _ in range(8)),
            rng.random() < 0.05,
        )
    entities: dict[str, list[dict[str, Any]]] = {}
    visible = len(text)
    for key, items in (
        ("hashtags", builder.hashtags), ("mentions", builder.mentions), ("urls", builder.urls),
    ):
        kept = [item for item in items if item["end"] <= visible]
        if kept:
            entities[key] = kept
    has: set[str] = set()
    if builder.urls:
        has.add("links")
    if builder.hashtags:
        has.add("hashtags")
    if builder.mentions:
        has.add("mentions")
    if has_media:
        has.update(("images", "media"))
    is_: set[str] = set()
    if reference is not None:
        is_.add({"retweeted": "retweet", "replied_to": "reply", "quoted": "quote"}[reference.kind])
    if author.verified:
        is_.add("verified")
    features = TweetFeatures(
        words=words_of(full),
        text_lower=full.lower(),
        username=author.username.lower(),
        lang=lang,
        has=frozenset(has),
        is_=frozenset(is_),
        hashtags=frozenset(h["tag"].lower() for h in builder.hashtags),
        mentions=frozenset(u.username.lower() for u in mentions)
        | (frozenset({original_author.username.lower()}) if original_author else frozenset()),
        urls=tuple(u["expanded_url"].lower() for u in builder.urls),
    )
    context = tuple(
        (*rng.choice(vocab.CONTEXT_DOMAINS), str(rng.randrange(10**17, 10**18)),
         rng.choice(vocab.TOPIC_WORDS).title())
        for _ in range(rng.randrange(0, 4))
    )
    return TweetModel(
        index=index,
        text=text,
        full_text=full_text,
        lang=lang,
        author=author,
        entities=entities,
        mentions=tuple(mentions),
        reference=reference,
        media_key=media_key,
        metrics={
            "retweet_count": int(rng.paretovariate(1.5)) - 1,
            "reply_count": rng.randrange(0, 20),
            "like_count": int(rng.paretovariate(1.2)) - 1,
            "quote_count": rng.randrange(0, 5),
            "bookmark_count": rng.randrange(0, 5),
            "impression_count": rng.randrange(0, 100000),
        },
        source=rng.choice(vocab.SOURCES),
        sensitive=rng.random() < 0.02,
        context=context,
        features=features,
    )


def make_pool(seed: int, size: int = 1024, users: int = 200) -> list[TweetModel]:
    rng = random.Random(seed)
    people = make_users(rng, users)
    return [make_model(index, rng, people) for index in range(size)]


def _data_json(model: TweetModel, sel: FieldSelection) -> dict[str, Any]:
    tf = sel.tweet_fields
    data: dict[str, Any] = {}
    # X writes keys in no particular order; we follow the order of real captures loosely.
    if "author_id" in tf:
        data["author_id"] = model.author.id
    if "context_annotations" in tf and model.context:
        data["context_annotations"] = [
            {"domain": {"id": d_id, "name": d_name, "description": d_desc},
             "entity": {"id": e_id, "name": e_name}}
            for d_id, d_name, d_desc, e_id, e_name in model.context
        ]
    if "conversation_id" in tf:
        data["conversation_id"] = (
            model.reference.tweet_id
            if model.reference is not None and model.reference.kind == "replied_to"
            else _ID_TEXT
        )
    if "created_at" in tf:
        data["created_at"] = _TS_TEXT
    data["edit_history_tweet_ids"] = [_ID_TEXT]
    if "edit_controls" in tf:
        data["edit_controls"] = {"edits_remaining": 5, "is_edit_eligible": True,
                                 "editable_until": _TS_TEXT}
    if "entities" in tf and model.entities:
        data["entities"] = model.entities
    if "attachments" in tf and model.media_key:
        data["attachments"] = {"media_keys": [model.media_key]}
    data["id"] = _ID_TEXT
    if "in_reply_to_user_id" in tf and model.reference and model.reference.kind == "replied_to":
        data["in_reply_to_user_id"] = model.reference.author.id
    if "lang" in tf:
        data["lang"] = model.lang
    if "note_tweet" in tf and model.full_text is not None:
        data["note_tweet"] = {"text": model.full_text}
    if "possibly_sensitive" in tf:
        data["possibly_sensitive"] = model.sensitive
    if "public_metrics" in tf:
        data["public_metrics"] = model.metrics
    if "referenced_tweets" in tf and model.reference is not None:
        data["referenced_tweets"] = [
            {"type": model.reference.kind, "id": model.reference.tweet_id}
        ]
    if "reply_settings" in tf:
        data["reply_settings"] = "everyone"
    if "source" in tf:
        data["source"] = model.source
    data["text"] = model.text
    return data


def render_head(model: TweetModel, sel: FieldSelection, host: str) -> bytes:
    """The message bytes up to (not including) the matching_rules member and final brace."""
    message: dict[str, Any] = {"data": _data_json(model, sel)}
    includes: dict[str, list[dict[str, Any]]] = {}
    errors: list[dict[str, Any]] = []
    users: list[dict[str, Any]] = []
    seen_users: set[str] = set()

    def include_user(user: User) -> None:
        if user.id not in seen_users:
            seen_users.add(user.id)
            users.append(user.to_json(sel.user_fields))

    if "author_id" in sel.expansions:
        include_user(model.author)
    if "entities.mentions.username" in sel.expansions:
        for user in model.mentions:
            include_user(user)
    ref = model.reference
    if ref is not None and "referenced_tweets.id" in sel.expansions:
        if ref.deleted:
            errors.append(problems.resource_not_found(host, ref.tweet_id))
        else:
            tweet: dict[str, Any] = {"edit_history_tweet_ids": [ref.tweet_id], "id": ref.tweet_id,
                                     "text": ref.text}
            if "author_id" in sel.tweet_fields:
                tweet["author_id"] = ref.author.id
            includes["tweets"] = [tweet]
        if "referenced_tweets.id.author_id" in sel.expansions and not ref.deleted:
            include_user(ref.author)
    if model.media_key and "attachments.media_keys" in sel.expansions:
        media: dict[str, Any] = {"media_key": model.media_key, "type": "photo"}
        if "url" in sel.media_fields:
            media["url"] = f"https://pbs.twimg.com/media/{model.media_key}.jpg"
        if "width" in sel.media_fields:
            media["width"] = 1200
        if "height" in sel.media_fields:
            media["height"] = 800
        if "alt_text" in sel.media_fields:
            media["alt_text"] = "a synthetic picture"
        includes["media"] = [media]
    if users:
        includes["users"] = users
    if includes:
        message["includes"] = {key: includes[key] for key in sorted(includes)}
    if errors:
        message["errors"] = errors
    rendered = orjson.dumps(message)
    return rendered[:-1]


def matching_rules_tail(rules: list[tuple[str, str | None]]) -> bytes:
    """`,"matching_rules":[...]}`: each rule once, tag omitted when None."""
    items = [{"id": rule_id, "tag": tag} if tag is not None else {"id": rule_id}
             for rule_id, tag in rules]
    return b',"matching_rules":' + orjson.dumps(items) + b"}"
