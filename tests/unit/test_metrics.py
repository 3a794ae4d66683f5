"""streamd.ops.metrics: the README's fixed metric names, private registries, zero series."""

from __future__ import annotations

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamd.ops.metrics import Metrics
from streamd.reasons import Reason

INTERFACE_METRICS = {
    "streamd_tweets_received": "counter",
    "streamd_tweets_published": "counter",
    "streamd_tweets_dlq": "counter",
    "streamd_duplicates_dropped": "counter",
    "streamd_keepalives": "counter",
    "streamd_stream_connected": "gauge",
    "streamd_stream_disconnects": "counter",
    "streamd_reconnect_delay_seconds": "histogram",
    "streamd_publish_latency_seconds": "histogram",
    "streamd_spool_messages": "gauge",
    "streamd_spool_bytes": "gauge",
    "streamd_rules_active": "gauge",
    "streamd_usage_capped": "gauge",
    "streamd_x_rate_limit_remaining": "gauge",
}


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_interface_metric_exists_with_its_type() -> None:
    m = Metrics()
    m.x_rate_limit_remaining.labels(endpoint="stream").set(49)
    families = {f.name: f.type for f in text_string_to_metric_families(m.render().decode())}
    for name, kind in INTERFACE_METRICS.items():
        assert families.get(name) == kind, name


def test_exposed_sample_names() -> None:
    text = Metrics().render().decode()
    for name in (
        "streamd_tweets_received_total ",
        "streamd_tweets_published_total ",
        'streamd_tweets_dlq_total{reason="decode"} ',
        "streamd_duplicates_dropped_total ",
        "streamd_keepalives_total ",
        'streamd_stream_disconnects_total{reason="stall"} ',
        'streamd_reconnect_delay_seconds_bucket{le="21600.0",reason="usage_cap"} ',
        'streamd_publish_latency_seconds_bucket{le="0.001"} ',
        'streamd_publish_failures_total{reason="timeout"} ',
        'streamd_stream_lines_total{kind="error"} ',
        "streamd_kafka_available ",
    ):
        assert name in text, name
    assert "_created" not in text


def test_labelled_series_are_preinitialised_for_every_reason() -> None:
    s = samples(Metrics())
    for reason in Reason:
        if reason is Reason.SHUTDOWN:
            continue
        assert s[("streamd_stream_disconnects_total", (("reason", reason.value),))] == 0
        assert s[("streamd_reconnect_delay_seconds_count", (("reason", reason.value),))] == 0
    for dlq in ("decode", "validate", "oversize"):
        assert s[("streamd_tweets_dlq_total", (("reason", dlq),))] == 0
    # An unseen rate limit is absent, not a misleading 0.
    assert not any(name == "streamd_x_rate_limit_remaining" for name, _ in s)


def test_no_series_for_a_label_that_is_never_counted() -> None:
    """Zero series only where the count can move: the reader never counts its own
    `shutdown`; stream_lines counts every kind it declares (tests/pipeline/
    test_metrics_truth.py)."""
    s = samples(Metrics())
    reasons = {dict(labels).get("reason") for name, labels in s
               if name == "streamd_stream_disconnects_total"}
    assert "shutdown" not in reasons
    kinds = {dict(labels)["kind"] for name, labels in s if name == "streamd_stream_lines_total"}
    assert kinds == {"tweet", "keepalive", "invalid", "error"}


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.tweets_received.inc(3)
    a.stream_disconnects.labels(reason=Reason.NETWORK).inc()
    assert samples(a)[("streamd_tweets_received_total", ())] == 3
    assert samples(b)[("streamd_tweets_received_total", ())] == 0
    assert samples(a)[("streamd_stream_disconnects_total", (("reason", "network"),))] == 1


def test_histograms_and_rule_tags() -> None:
    m = Metrics()
    m.reconnect_delay.labels(reason=Reason.RATE_LIMITED).observe(61)
    m.publish_latency.observe(0.004)
    m.rule_tags.configure(frozenset({"cats", "dogs"}))
    m.tweets_published_by_rule.labels(rule_tag="cats").inc()
    s = samples(m)
    key = ("streamd_reconnect_delay_seconds_bucket", (("le", "320.0"), ("reason", "rate_limited")))
    assert s[key] == 1
    assert s[("streamd_publish_latency_seconds_bucket", (("le", "0.005"),))] == 1
    assert s[("streamd_publish_latency_seconds_bucket", (("le", "0.0025"),))] == 0
    assert s[("streamd_tweets_published_by_rule_total", (("rule_tag", "cats"),))] == 1
    assert s[("streamd_tweets_published_by_rule_total", (("rule_tag", "dogs"),))] == 0


def test_asgi_app_serves_the_registry() -> None:
    m = Metrics()
    m.rules_active.set(7)

    async def fetch() -> httpx.Response:
        transport = httpx.ASGITransport(app=m.asgi_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/")

    response = anyio.run(fetch)
    assert response.status_code == 200
    assert "streamd_rules_active 7.0" in response.text


def test_publish_latency_takes_a_count_per_observation() -> None:
    m = Metrics()
    m.publish_latency.observe(0.004, 26)  # one network read's tweets, acked together
    m.publish_latency.observe(0.3)
    m.publish_latency.observe(120.0, 2)  # past the last bound: only in +Inf
    s = samples(m)
    bucket = "streamd_publish_latency_seconds_bucket"
    assert s[(bucket, (("le", "0.0025"),))] == 0
    assert s[(bucket, (("le", "0.005"),))] == 26
    assert s[(bucket, (("le", "0.5"),))] == 27
    assert s[(bucket, (("le", "60.0"),))] == 27
    assert s[(bucket, (("le", "+Inf"),))] == 29
    assert s[("streamd_publish_latency_seconds_count", ())] == 29
    assert s[("streamd_publish_latency_seconds_sum", ())] == pytest.approx(
        0.004 * 26 + 0.3 + 240.0)


# --- bounded label sets (security issue, item 4) -------------------------------------------


def rule_tag_series(m: Metrics) -> dict[str, float]:
    return {dict(labels)["rule_tag"]: value
            for (name, labels), value in samples(m).items()
            if name == "streamd_tweets_published_by_rule_total"}


def test_configured_tags_plus_other_is_the_whole_label_set() -> None:
    m = Metrics()
    m.rule_tags.configure(frozenset({"cats", "dogs"}))
    assert rule_tag_series(m) == {"cats": 0, "dogs": 0, "other": 0}
    m.rule_tags.inc("cats", 2)
    for i in range(5000):
        m.rule_tags.inc(f"hostile-{i}")
    m.rule_tags.inc("other", 3)
    assert rule_tag_series(m) == {"cats": 2, "dogs": 0, "other": 5003}


def test_without_configured_tags_the_first_100_are_kept_then_other() -> None:
    m = Metrics()
    m.rule_tags.configure(None)  # rules.mode = "off"
    for i in range(5000):
        m.rule_tags.inc(f"t{i}")
    m.rule_tags.inc("t7", 4)
    series = rule_tag_series(m)
    assert len(series) == 101
    assert series["other"] == 4900
    assert series["t7"] == 5
    assert series["t99"] == 1
    assert "t100" not in series


def test_a_reload_changes_the_label_set_and_keeps_old_series() -> None:
    m = Metrics()
    m.rule_tags.configure(frozenset({"cats"}))
    m.rule_tags.inc("cats")
    m.rule_tags.configure(frozenset({"dogs"}))
    m.rule_tags.inc("cats")  # no longer configured: other
    m.rule_tags.inc("dogs")
    assert rule_tag_series(m) == {"cats": 1, "dogs": 1, "other": 1}
    assert m.rule_tags.label_values == {"dogs", "other"}


def test_the_daemon_passes_the_configured_tags_or_none_with_mode_off() -> None:
    from streamd.config import Settings
    from streamd.daemon import configured_tags

    rules = [{"value": "cat", "tag": "cats"}, {"value": "dog"}, {"value": "cow", "tag": "x"}]
    for mode in ("sync", "add"):
        settings = Settings.model_validate({"rules": {"mode": mode, "rule": rules}})
        assert configured_tags(settings) == {"cats", "x"}
    off = Settings.model_validate({"rules": {"mode": "off", "rule": rules}})
    assert configured_tags(off) is None


def test_rule_tags_are_counted_only_through_the_bounded_counter() -> None:
    """The label sets besides rule_tag are all pre-initialised from fixed tuples: their series
    exist from the start and the code never labels them with anything from the network."""
    import ast
    import inspect

    from streamd.kafka import publisher
    from streamd.ops import metrics as metrics_module
    from streamd.x import rules, stream

    fixed = {"reason", "kind", "covered_by", "endpoint", "version", "rule_tag", "connection"}
    for module in (stream, publisher, rules):
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "labels":
                names = {kw.arg for kw in node.keywords}
                assert names <= fixed, (module.__name__, names)
                assert "rule_tag" not in names, "count by tag only through Metrics.rule_tags"
    assert metrics_module.FIRST_COME_RULE_TAGS == 100
