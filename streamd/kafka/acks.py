"""What an acknowledged batch counts for: pure, no metrics objects.

The publisher turns a `Tally` into streamd_tweets_published_total, the receive-to-ack
latency histogram and streamd_tweets_published_by_rule_total (tags travel with the record,
through the spool too), and `PublishStats`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from streamd.records import OutRecord


@dataclass(slots=True)
class Tally:
    tweets: int = 0
    dlq: int = 0
    # (read_at, tweets): tweets of one network read share their read time, so one latency
    # observation stands for a run of them.
    runs: list[tuple[float, int]] = field(default_factory=list)
    by_tag: dict[str, int] = field(default_factory=dict)


def tally(records: Iterable[OutRecord]) -> Tally:
    out = Tally()
    runs = out.runs
    read_at = 0.0
    run = 0
    # Tweets of one read usually share their rules' tags tuple too: count tuples first.
    by_tags: dict[tuple[str, ...], int] = {}
    for record in records:
        if record.dlq:
            out.dlq += 1
            continue
        out.tweets += 1
        if record.read_at == read_at:
            run += 1
        else:
            if run:
                runs.append((read_at, run))
            read_at = record.read_at
            run = 1
        if record.tags:
            by_tags[record.tags] = by_tags.get(record.tags, 0) + 1
    if run:
        runs.append((read_at, run))
    by_tag = out.by_tag
    for tags, count in by_tags.items():
        for tag in tags:
            by_tag[tag] = by_tag.get(tag, 0) + count
    return out
