"""Error bodies exactly as X sends them, after its documentation
(https://docs.x.com/x-api/fundamentals/response-codes-and-errors) and bodies captured from
the live API. Each builder returns an ErrorAnswer: status, JSON body, content type, and the
problem type/detail for the records.

Content type: every error body is served as `application/json; charset=utf-8`, as in the
captured responses, although X's OpenAPI also allows `application/problem+json`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

PLAIN_JSON = "application/json; charset=utf-8"

DISCONNECT_TYPES = (
    "OperationalDisconnect",
    "UpstreamOperationalDisconnect",
    "ForceDisconnect",
    "UpstreamUncleanDisconnect",
    "SlowReader",
    "InternalError",
    "ClientApplicationStateDegraded",
    "InvalidRules",
)

# Only the first two texts and the full-buffer text are documented or observed; the others
# are our wording.
_DISCONNECT_DETAILS = {
    "OperationalDisconnect": "This stream has been disconnected for operational reasons.",
    "UpstreamOperationalDisconnect": (
        "This stream has been disconnected upstream for operational reasons."
    ),
    "ForceDisconnect": (
        "This stream has been disconnected because your client was unable to keep up with us."
    ),
    "SlowReader": (
        "This stream has been disconnected because your client was unable to keep up with us."
    ),
}

_HTTP_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(frozen=True)
class ErrorAnswer:
    status: int
    body: bytes
    content_type: str
    problem_type: str | None
    detail: str | None


def problem_uri(host: str, slug: str) -> str:
    return f"https://{host}/2/problems/{slug}"


def _problem(status: int, body: dict[str, Any]) -> ErrorAnswer:
    return ErrorAnswer(
        status=status,
        body=orjson.dumps(body),
        content_type=PLAIN_JSON,
        problem_type=str(body["type"]),
        detail=body.get("detail"),
    )


def generic(status: int, title: str | None = None) -> ErrorAnswer:
    """`about:blank` problems: 401, 429 rate limit, 5xx."""
    text = title or _HTTP_TITLES.get(status, "Error")
    body = {"title": text, "detail": text, "type": "about:blank", "status": status}
    return _problem(status, body)


def unauthorized() -> ErrorAnswer:
    # Key order of the real capture.
    body = {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"}
    return _problem(401, body)


def rate_limited() -> ErrorAnswer:
    return generic(429, "Too Many Requests")


def invalid_request(host: str, errors: list[dict[str, Any]]) -> ErrorAnswer:
    """400 with the nested `errors[]` of {parameters, message} items."""
    body = {
        "errors": errors,
        "title": "Invalid Request",
        "detail": "One or more parameters to your request was invalid.",
        "type": problem_uri(host, "invalid-request"),
    }
    return _problem(400, body)


def param_error(parameter: str, value: str, message: str) -> dict[str, Any]:
    return {"parameters": {parameter: [value]}, "message": message}


def client_forbidden(host: str) -> ErrorAnswer:
    body = {
        "client_id": "27347717",
        "detail": (
            "When authenticating requests to the Twitter API v2 endpoints, you must use keys"
            " and tokens from a Twitter developer App that is attached to a Project. You can"
            " create a project via the developer portal."
        ),
        "registration_url": "https://developer.twitter.com/en/docs/projects/overview",
        "title": "Client Forbidden",
        "required_enrollment": "Appropriate Level of API Access",
        "reason": "client-not-enrolled",
        "type": problem_uri(host, "client-forbidden"),
    }
    return _problem(403, body)


def unsupported_authentication(host: str, scheme: str = "OAuth 2.0 User Context") -> ErrorAnswer:
    body = {
        "title": "Unsupported Authentication",
        "detail": (
            f"Authenticating with {scheme} is forbidden for this endpoint.  Supported"
            " authentication types are [OAuth 2.0 Application-Only]."
        ),
        "type": problem_uri(host, "unsupported-authentication"),
        "status": 403,
    }
    return _problem(403, body)


def usage_capped_problem(host: str, product_name: str = "standard-basic") -> dict[str, Any]:
    """The usage-capped Problem, key order of the capture (its account_id was redacted; this
    one is made up)."""
    return {
        "account_id": "1234567890123456789",
        "product_name": product_name,
        "title": "UsageCapExceeded",
        "period": "Monthly",
        "scope": "Product",
        "detail": "Usage cap exceeded: Monthly product cap",
        "type": problem_uri(host, "usage-capped"),
    }


def usage_capped(host: str, product_name: str = "standard-basic") -> ErrorAnswer:
    return _problem(429, usage_capped_problem(host, product_name))


def too_many_connections(host: str) -> ErrorAnswer:
    body = {
        "title": "ConnectionException",
        "detail": "This stream is currently at the maximum allowed connection limit.",
        "connection_issue": "TooManyConnections",
        "type": problem_uri(host, "streaming-connection"),
    }
    return _problem(429, body)


def no_rules(host: str) -> ErrorAnswer:
    body = {
        "title": "ConnectionException",
        "detail": (
            "You must define rules using the POST /2/tweets/search/stream/rules endpoint"
            " before connecting to filtered stream."
        ),
        "connection_issue": "RuleConfigurationIssue",
        "type": problem_uri(host, "streaming-connection"),
    }
    return _problem(409, body)


def v1_error(status: int, code: int, message: str) -> ErrorAnswer:
    """Legacy v1.1 body `{"errors":[{"message":...,"code":N}]}` (application/json)."""
    body = orjson.dumps({"errors": [{"message": message, "code": code}]})
    return ErrorAnswer(status, body, PLAIN_JSON, None, message)


def not_found() -> ErrorAnswer:
    return generic(404, "Not Found")


# --- in-stream and rule-level problems (items of an `errors` array) ---------------------


def operational_disconnect(
    host: str, disconnect_type: str, detail: str | None = None
) -> dict[str, Any]:
    """The in-stream operational-disconnect problem; `detail` replaces the type's text."""
    if disconnect_type not in DISCONNECT_TYPES:
        raise ValueError(f"unknown disconnect_type {disconnect_type!r}")
    if detail is None:
        detail = _DISCONNECT_DETAILS.get(
            disconnect_type, "This stream has been disconnected for operational reasons."
        )
    return {
        "title": "operational-disconnect",
        "disconnect_type": disconnect_type,
        "detail": detail,
        "type": problem_uri(host, "operational-disconnect"),
    }


def duplicate_rule(host: str, value: str, existing_id: str) -> dict[str, Any]:
    return {
        "value": value,
        "id": existing_id,
        "title": "DuplicateRule",
        "type": problem_uri(host, "duplicate-rules"),
    }


def invalid_rule(host: str, value: str, details: list[str]) -> dict[str, Any]:
    return {
        "value": value,
        "details": details,
        "title": "UnprocessableEntity",
        "type": problem_uri(host, "invalid-rules"),
    }


def rule_cap(host: str) -> dict[str, Any]:
    # No capture exists; title from the spec's RulesCapProblem family naming.
    return {
        "title": "RulesCapExceeded",
        "detail": "You have exceeded the maximum number of rules.",
        "type": problem_uri(host, "rule-cap"),
    }


def rule_not_found(host: str, parameter: str, value: str) -> dict[str, Any]:
    return {
        "errors": [{"parameters": {parameter: [value]}, "message": "Rule does not exist"}],
        "title": "Invalid Request",
        "detail": "One or more parameters to your request was invalid.",
        "type": problem_uri(host, "invalid-request"),
    }


def resource_not_found(host: str, tweet_id: str) -> dict[str, Any]:
    """Partial error on a tweet whose referenced tweet could not be hydrated."""
    return {
        "value": tweet_id,
        "detail": f"Could not find tweet with referenced_tweets.id: [{tweet_id}].",
        "title": "Not Found Error",
        "resource_type": "tweet",
        "parameter": "referenced_tweets.id",
        "resource_id": tweet_id,
        "type": problem_uri(host, "resource-not-found"),
    }
