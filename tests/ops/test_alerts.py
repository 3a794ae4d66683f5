"""config/prometheus-alerts.yml: well-formed rules that use only streamd's metric names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamd.reasons import Reason

ALERTS = Path(__file__).resolve().parents[2] / "config" / "prometheus-alerts.yml"

# The README's metric names (a fixed contract); histograms also expose _bucket/_sum/_count.
COUNTERS_AND_GAUGES = {
    "streamd_tweets_received_total",
    "streamd_tweets_published_total",
    "streamd_tweets_dlq_total",
    "streamd_duplicates_dropped_total",
    "streamd_keepalives_total",
    "streamd_stream_connected",
    "streamd_stream_disconnects_total",
    "streamd_spool_messages",
    "streamd_spool_bytes",
    "streamd_rules_active",
    "streamd_usage_capped",
    "streamd_x_rate_limit_remaining",
}
HISTOGRAMS = {"streamd_reconnect_delay_seconds", "streamd_publish_latency_seconds"}
KNOWN_SERIES = COUNTERS_AND_GAUGES | {
    h + suffix for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
}
REASONS = {reason.value for reason in Reason}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "inf", "nan",
}  # fmt: skip
DURATION = re.compile(r"^\d+[smhd]$")


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    assert set(document) == {"groups"}
    rules: list[dict[str, Any]] = []
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        rules.extend(group["rules"])
    return rules


def _series_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (strings, matchers, ranges, label lists removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function call or an operator keyword
        names.add(word)
    return names


def test_rules_are_well_formed() -> None:
    rules = _rules()
    assert len(rules) >= 7
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert isinstance(rule["expr"], str)
        assert rule["expr"].strip()
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        if "for" in rule:
            assert DURATION.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_only_interface_metrics_are_used() -> None:
    used: set[str] = set()
    for rule in _rules():
        names = _series_names(rule["expr"])
        assert names, f"{rule['alert']} references no metric"
        unknown = names - KNOWN_SERIES
        assert not unknown, f"{rule['alert']}: not a streamd metric: {sorted(unknown)}"
        used |= names
    # The brief's list: stream down, usage cap, disconnects, spool, DLQ, no tweets, Kafka.
    assert {
        "streamd_stream_connected",
        "streamd_usage_capped",
        "streamd_stream_disconnects_total",
        "streamd_spool_bytes",
        "streamd_tweets_dlq_total",
        "streamd_tweets_published_total",
        "streamd_tweets_received_total",
    } <= used


def test_reason_labels_are_real_reasons() -> None:
    for rule in _rules():
        for values in re.findall(r'reason\s*[!=]~?\s*"([^"]*)"', rule["expr"]):
            for value in values.split("|"):
                assert value in REASONS, f"{rule['alert']}: unknown reason {value!r}"


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("rate(streamd_tweets_received_total[5m]) > 0", {"streamd_tweets_received_total"}),
        (
            'sum by (job, le) (rate(foo_bucket{reason="x"}[1m])) and on (job) bar == 1',
            {"foo_bucket", "bar"},
        ),
        ("absent(streamd_stream_connected)", {"streamd_stream_connected"}),
    ],
)
def test_series_name_extraction(expr: str, expected: set[str]) -> None:
    assert _series_names(expr) == expected
