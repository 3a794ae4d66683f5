"""Allowed values of the stream's field and expansion parameters (https://docs.x.com/x-api/fundamentals/fields)
and their validation into X's 400 invalid-request error items."""

from __future__ import annotations

from typing import Any

from streamd.simulator.problems import param_error
from streamd.simulator.tweets import FieldSelection

TWEET_FIELDS = (
    "article", "attachments", "author_id", "card_uri", "community_id", "context_annotations",
    "conversation_id", "created_at", "display_text_range", "edit_controls",
    "edit_history_tweet_ids", "entities", "geo", "id", "in_reply_to_user_id", "lang",
    "matched_media_notes", "media_metadata", "non_public_metrics", "note_request_suggestions",
    "note_tweet", "organic_metrics", "paid_partnership", "possibly_sensitive",
    "promoted_metrics", "public_metrics", "referenced_tweets", "reply_settings", "scopes",
    "source", "suggested_source_links", "suggested_source_links_with_counts", "text",
    "withheld",
)
EXPANSIONS = (
    "article.cover_media", "article.media_entities", "attachments.media_keys",
    "attachments.media_source_tweet", "attachments.poll_ids", "author_id",
    "edit_history_tweet_ids", "entities.mentions.username", "geo.place_id",
    "in_reply_to_user_id", "entities.note.mentions.username", "referenced_tweets.id",
    "referenced_tweets.id.attachments.media_keys", "referenced_tweets.id.author_id",
)
MEDIA_FIELDS = (
    "alt_text", "duration_ms", "height", "media_key", "non_public_metrics", "organic_metrics",
    "preview_image_url", "promoted_metrics", "public_metrics", "type", "url", "variants",
    "width",
)
POLL_FIELDS = ("duration_minutes", "end_datetime", "id", "options", "voting_status")
USER_FIELDS = (
    "affiliation", "confirmed_email", "connection_status", "created_at", "description",
    "entities", "id", "is_identity_verified", "location", "most_recent_tweet_id", "name",
    "parody", "pinned_tweet_id", "profile_banner_url", "profile_image_url", "protected",
    "public_metrics", "receives_your_dm", "subscription", "subscription_type", "url",
    "username", "verified", "verified_followers_count", "verified_type", "withheld",
)
PLACE_FIELDS = (
    "contained_within", "country", "country_code", "full_name", "geo", "id", "name",
    "place_type",
)

LIST_PARAMETERS: dict[str, tuple[str, ...]] = {
    "tweet.fields": TWEET_FIELDS,
    "expansions": EXPANSIONS,
    "media.fields": MEDIA_FIELDS,
    "poll.fields": POLL_FIELDS,
    "user.fields": USER_FIELDS,
    "place.fields": PLACE_FIELDS,
}
STREAM_PARAMETERS = (
    "backfill_minutes", "end_time", "expansions", "media.fields", "place.fields",
    "poll.fields", "start_time", "tweet.fields", "user.fields",
)


def validate_list(parameter: str, raw: str) -> tuple[frozenset[str], list[dict[str, Any]]]:
    return validate_enum_list(parameter, raw, LIST_PARAMETERS[parameter])


def validate_enum_list(
    parameter: str, raw: str, allowed: tuple[str, ...]
) -> tuple[frozenset[str], list[dict[str, Any]]]:
    """A comma-separated list query parameter whose values must be in `allowed`."""
    values = raw.split(",")
    errors = [
        param_error(
            parameter,
            value,
            f"The `{parameter}` query parameter value [{value}] is not one of"
            f" [{','.join(allowed)}]",
        )
        for value in values
        if value not in allowed
    ]
    return frozenset(values), errors


def unknown_parameter_error(parameter: str, value: str, known: tuple[str, ...]) -> dict[str, Any]:
    return param_error(
        parameter,
        value,
        f"The query parameter [{parameter}] is not one of [{','.join(known)}]",
    )


def selection_from(params: dict[str, frozenset[str]]) -> FieldSelection:
    return FieldSelection(
        tweet_fields=params.get("tweet.fields", frozenset()),
        expansions=params.get("expansions", frozenset()),
        user_fields=params.get("user.fields", frozenset()),
        media_fields=params.get("media.fields", frozenset()),
        place_fields=params.get("place.fields", frozenset()),
        poll_fields=params.get("poll.fields", frozenset()),
    )
