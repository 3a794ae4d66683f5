"""Prometheus metrics (README "Metrics, health and alerts": the names are a fixed contract),
each Metrics owning its own registry.

A registry per instance lets several daemons live in one test process. Labelled series
are pre-initialised for every known label value so dashboards show zeros, not gaps.
"""

from __future__ import annotations

import bisect
import functools
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    make_asgi_app,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from streamd import __version__
from streamd.reasons import Reason
from streamd.records import DLQ_REASONS, PUBLISH_FAILURE_REASONS

# The *_created series double the exposition and no dashboard uses them. (This is a
# process-wide prometheus_client switch; streamd owns the process.)
disable_created_metrics()  # type: ignore[no-untyped-call]

# streamd_stream_lines_total{kind}: every line read from the stream, by what it was: a tweet
# (duplicates included), a heartbeat (blank line), an invalid line (one for the dead-letter
# topic: not JSON, no data.id, too long, cut off by the connection's end), an error-only
# message (errors[] without data). tweet, keepalive and invalid equal tweets_received,
# keepalives and the stream's share of tweets_dlq; the sum is every line read.
STREAM_LINE_KINDS: tuple[str, ...] = ("tweet", "keepalive", "invalid", "error")
# streamd_stream_disconnects_total{reason} and streamd_reconnect_delay_seconds{reason}: every
# reason but `shutdown`, which only names the end of the reader's own last connection and is
# never counted (the reader stops before it would count it).
DISCONNECT_REASONS: tuple[Reason, ...] = tuple(r for r in Reason if r is not Reason.SHUTDOWN)
# How a gap (a time when no connection was reading) was covered: by the other redundant
# connection, by backfill on the reconnect, by a recovery job, or not at all.
GAP_COVERED_BY: tuple[str, ...] = ("redundant", "backfill", "recovery", "none")
# Why streamd terminated a connection through the Connections API (interface: own_stale,
# evict, handover, cli).
TERMINATED_WHY: tuple[str, ...] = ("own_stale", "evict", "handover", "cli")
# streamd_tweets_received_by_connection_total{connection}: the live connections and, all
# together, the recovery jobs.
CONNECTION_LABELS: tuple[str, ...] = ("live-1", "live-2", "recovery")
# X endpoints whose x-rate-limit-remaining header is exported.
RATE_LIMIT_ENDPOINTS: tuple[str, ...] = (
    "stream", "rules_get", "rules_post", "connections_get", "connections_delete")

# streamd_tweets_published_by_rule_total: the tag that stands for every tag not in the
# label set (not configured, or past the first-come cap when no tags are configured).
OTHER_RULE_TAG = "other"
# With rules.mode = "off" the tags come from X (set up by someone else) and are not known in
# advance: the first this many distinct tags seen get a series, later ones count as `other`.
FIRST_COME_RULE_TAGS = 100

RECONNECT_DELAY_BUCKETS: tuple[float, ...] = (
    0, 0.25, 1, 5, 16, 60, 320, 960, 3600, 21600,
)
# 1 ms .. 60 s, roughly x2.5 per step: local brokers ack in ms, a recovering spool in s.
PUBLISH_LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)


class BatchHistogram(Collector):
    """A histogram that takes a value with a count: `observe(value, count)`.

    The publisher learns of acks a batch at a time, and the tweets of one network read share
    one read time, so one observation stands for all of them. prometheus_client's Histogram
    takes one value per call (a lock and a bucket search each); at tens of thousands of
    tweets a second that was a measurable share of the daemon's CPU. Exposed as a normal
    Prometheus histogram (`_bucket{le}`, `_count`, `_sum`).
    """

    def __init__(
        self, name: str, documentation: str, buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = [float(b) for b in buckets]
        if self._bounds[-1] != math.inf:
            self._bounds.append(math.inf)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float, count: int = 1) -> None:
        i = bisect.bisect_left(self._bounds, value)
        with self._lock:
            self._counts[i] += count
            self._sum += value * count

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(self._bounds, counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=buckets, sum_value=total
        )


class RuleTagCounts:
    """streamd_tweets_published_by_rule_total with a bounded label set.

    Tags arrive with each tweet from the stream, so they are hostile input: 5,000 distinct
    tags used to make 5,000 series. The label set is the configured tags plus `other`
    (everything else). With no configured tags (rules.mode = "off": the rules on X are
    someone else's), the first FIRST_COME_RULE_TAGS distinct tags seen get a series and
    later ones count as `other`. A SIGHUP reload changes the configured set; series of tags
    no longer configured stay (a counter must not vanish) and stop growing."""

    def __init__(self, counter: Counter, first_come: int = FIRST_COME_RULE_TAGS) -> None:
        self._counter = counter
        self._first_come = first_come
        self._configured: frozenset[str] | None = None
        self._seen: set[str] = set()
        self._children: dict[str, Any] = {}
        self._other = counter.labels(rule_tag=OTHER_RULE_TAG)

    def configure(self, tags: frozenset[str] | set[str] | None) -> None:
        """The configured tags (rules.mode "sync" or "add"), or None: not known in advance
        (mode "off"), first come first served. Zero series are shown for each."""
        if tags is None:
            self._configured = None
        else:
            self._configured = frozenset(t for t in tags if t != OTHER_RULE_TAG)
            for tag in self._configured:
                self._child(tag)
        self._other = self._counter.labels(rule_tag=OTHER_RULE_TAG)

    @property
    def label_values(self) -> frozenset[str]:
        """The rule_tag values that may have a series now (for tests and docs)."""
        if self._configured is not None:
            return self._configured | {OTHER_RULE_TAG}
        return frozenset(self._seen) | {OTHER_RULE_TAG}

    def _child(self, tag: str) -> Any:
        child = self._children.get(tag)
        if child is None:
            child = self._children[tag] = self._counter.labels(rule_tag=tag)
        return child

    def inc(self, tag: str, count: int = 1) -> None:
        configured = self._configured
        if configured is not None:
            target = self._child(tag) if tag in configured else self._other
        elif tag in self._seen:
            target = self._children[tag]
        elif len(self._seen) < self._first_come and tag != OTHER_RULE_TAG:
            self._seen.add(tag)
            target = self._child(tag)
        else:
            target = self._other
        target.inc(count)


class Metrics:
    """Every streamd metric, registered on a private CollectorRegistry.

    Every label set is fixed or bounded: reason (DISCONNECT_REASONS, DLQ_REASONS,
    PUBLISH_FAILURE_REASONS), kind, covered_by, endpoint and version take values from the
    tuples in this module; rule_tag only through `rule_tags` (RuleTagCounts)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        counter = functools.partial(Counter, registry=self.registry)
        gauge = functools.partial(Gauge, registry=self.registry)

        self.build_info = gauge(
            "streamd_build_info", "streamd version (value is always 1)", ["version"])
        self.build_info.labels(version=__version__).set(1)
        # The process's own RSS, CPU seconds, open fds (Linux /proc): what an operator
        # watches next to the pipeline's numbers.
        ProcessCollector(registry=self.registry)
        self.leader = gauge(
            "streamd_leader",
            "1 while this instance reads X (always, when ha.mode is off); 0 as a standby")

        # --- stream ---
        self.tweets_received = counter(
            "streamd_tweets_received_total", "Tweets read from the X stream")
        self.keepalives = counter(
            "streamd_keepalives_total", "Heartbeat (blank) lines read from the stream")
        self.stream_lines = counter(
            "streamd_stream_lines_total",
            "Lines read from the stream by kind (tweet, keepalive, invalid: for the DLQ, "
            "error: an error-only message)", ["kind"])
        # Resolved once: the reader counts on its hot path (per network read, not per line).
        self.lines_tweet = self.stream_lines.labels(kind="tweet")
        self.lines_keepalive = self.stream_lines.labels(kind="keepalive")
        self.lines_invalid = self.stream_lines.labels(kind="invalid")
        self.lines_error = self.stream_lines.labels(kind="error")
        self.stream_connected = gauge(
            "streamd_stream_connected", "1 while the stream connection is up")
        self.stream_disconnects = counter(
            "streamd_stream_disconnects_total",
            "Stream connection ends and failed connects, by reason", ["reason"])
        self.reconnect_delay = Histogram(
            "streamd_reconnect_delay_seconds",
            "Delay scheduled before the next connect, by the reason that caused it",
            ["reason"], buckets=RECONNECT_DELAY_BUCKETS, registry=self.registry)
        self.usage_capped = gauge(
            "streamd_usage_capped", "1 while X reports the usage cap is reached")
        self.x_rate_limit_remaining = gauge(
            "streamd_x_rate_limit_remaining",
            "Last x-rate-limit-remaining header seen, by endpoint", ["endpoint"])
        self.rules_active = gauge(
            "streamd_rules_active", "Rules active on the server after the last sync")
        self.gap_seconds = counter(
            "streamd_gap_seconds_total",
            "Seconds in which no connection was reading the stream, by how they were covered",
            ["covered_by"])
        self.tweets_received_by_connection = counter(
            "streamd_tweets_received_by_connection_total",
            "Tweets read, by connection (live-1, live-2 with stream.connections = 2; "
            "recovery: the recovery jobs)", ["connection"])
        self.recovery_jobs = counter(
            "streamd_recovery_jobs_total",
            "Recovery jobs ended, by outcome (completed: X delivered the window; failed: X "
            "refused it)", ["outcome"])
        self.connections_terminated = counter(
            "streamd_connections_terminated_total",
            "Stream connections terminated through X's Connections API, by why "
            "(own_stale: one streamd left; evict: another holder's, per x.evict)", ["why"])

        # --- publishing ---
        self.tweets_published = counter(
            "streamd_tweets_published_total", "Tweets acknowledged by Kafka")
        self.tweets_published_by_rule = counter(
            "streamd_tweets_published_by_rule_total",
            "Tweets acknowledged by Kafka, once per matching rule tag (configured tags, "
            "else 'other')", ["rule_tag"])
        # The only way to count by tag: the label set stays bounded.
        self.rule_tags = RuleTagCounts(self.tweets_published_by_rule)
        self.tweets_dlq = counter(
            "streamd_tweets_dlq_total", "Lines sent to the dead-letter topic, by reason",
            ["reason"])
        self.duplicates_dropped = counter(
            "streamd_duplicates_dropped_total",
            "Tweets dropped because their id was seen recently")
        self.publish_latency = BatchHistogram(
            "streamd_publish_latency_seconds",
            "Time from reading a line to the broker's acknowledgement",
            PUBLISH_LATENCY_BUCKETS, self.registry)
        self.publish_failures = counter(
            "streamd_publish_failures_total",
            "Failed publish attempts (the record is retried or spooled), by reason",
            ["reason"])
        self.kafka_available = gauge(
            "streamd_kafka_available", "1 while Kafka acknowledges records")

        # --- spool ---
        self.spool_messages = gauge(
            "streamd_spool_messages", "Records held in the spool awaiting Kafka")
        self.spool_bytes = gauge(
            "streamd_spool_bytes", "Bytes held in the spool awaiting Kafka")

        self._preinitialise()

    def _preinitialise(self) -> None:
        for reason in DISCONNECT_REASONS:
            self.stream_disconnects.labels(reason=reason.value)
            self.reconnect_delay.labels(reason=reason.value)
        for dlq_reason in DLQ_REASONS:
            self.tweets_dlq.labels(reason=dlq_reason)
        for failure in PUBLISH_FAILURE_REASONS:
            self.publish_failures.labels(reason=failure)
        for kind in STREAM_LINE_KINDS:
            self.stream_lines.labels(kind=kind)
        for covered_by in GAP_COVERED_BY:
            self.gap_seconds.labels(covered_by=covered_by)
        for why in TERMINATED_WHY:
            self.connections_terminated.labels(why=why)
        for outcome in ("completed", "failed"):
            self.recovery_jobs.labels(outcome=outcome)
        for connection in CONNECTION_LABELS:
            self.tweets_received_by_connection.labels(connection=connection)
        # x_rate_limit_remaining is left unset until a header is seen: a pre-set 0 would
        # read as "exhausted".

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

    def asgi_app(self) -> Callable[..., Any]:
        """An ASGI app serving this registry (mount it at /metrics)."""
        return make_asgi_app(self.registry)
