"""Payloads replayed from an NDJSON file instead of generated tweets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from streamd.simulator.rule_syntax import TweetFeatures, words_of


@dataclass(frozen=True)
class ReplayItem:
    """One replayed message. For tweets, `head` lacks matching_rules and the final brace;
    `tail` is the file's own matching_rules (kept verbatim) or None (match live rules)."""

    tweet_id: str | None
    head: bytes
    tail: bytes | None
    features: TweetFeatures | None


def _features(data: dict[str, Any]) -> TweetFeatures:
    text = str(data.get("text", ""))
    note = data.get("note_tweet")
    if isinstance(note, dict) and isinstance(note.get("text"), str):
        text = note["text"]
    entities = data.get("entities") or {}
    hashtags = frozenset(str(h.get("tag", "")).lower() for h in entities.get("hashtags", []))
    mentions = frozenset(
        str(m.get("username", "")).lower() for m in entities.get("mentions", [])
    )
    urls = tuple(str(u.get("expanded_url", u.get("url", ""))).lower()
                 for u in entities.get("urls", []))
    has = set()
    if hashtags:
        has.add("hashtags")
    if mentions:
        has.add("mentions")
    if urls:
        has.add("links")
    if data.get("attachments", {}).get("media_keys"):
        has.update(("media", "images"))
    kinds = {ref.get("type") for ref in data.get("referenced_tweets", [])}
    is_ = {"retweet" if k == "retweeted" else "reply" if k == "replied_to" else "quote"
           for k in kinds if k}
    return TweetFeatures(
        words=words_of(text),
        text_lower=text.lower(),
        username="",
        lang=str(data.get("lang", "")),
        has=frozenset(has),
        is_=frozenset(is_),
        hashtags=hashtags,
        mentions=mentions,
        urls=urls,
    )


def load_replay(path: str | Path) -> list[ReplayItem]:
    items: list[ReplayItem] = []
    for raw in Path(path).read_bytes().splitlines():
        raw = raw.strip()
        if not raw:
            continue
        message = orjson.loads(raw)
        if not isinstance(message, dict):
            raise ValueError(f"{path}: every line must be a JSON object")
        data = message.get("data")
        if not isinstance(data, dict) or "id" not in data:
            items.append(ReplayItem(None, orjson.dumps(message), None, None))
            continue
        tail: bytes | None = None
        if "matching_rules" in message:
            tail = b',"matching_rules":' + orjson.dumps(message.pop("matching_rules")) + b"}"
        head = orjson.dumps(message)[:-1]
        items.append(ReplayItem(str(data["id"]), head, tail, _features(data)))
    return items
