"""What an acknowledged batch counts for (streamd.kafka.acks), pure: tweets and DLQ records,
one latency observation per run of tweets read together, tags per rule, also for tweets
that went through the spool (their tags are kept)."""

from __future__ import annotations

from pathlib import Path

from streamd.kafka.acks import tally
from streamd.kafka.spool import Spool
from streamd.records import OutRecord, dlq_record


def tweet(i: int, read_at: float, tags: tuple[str, ...] = ()) -> OutRecord:
    return OutRecord(dlq=False, key=str(i).encode(), value=b"{}", timestamp_ms=i,
                     headers=[], read_at=read_at, tweet_id=str(i), tags=tags)


def test_tweets_dlq_records_runs_and_tags() -> None:
    records = [
        tweet(1, 5.0, ("cats",)), tweet(2, 5.0, ("cats",)), tweet(3, 5.0, ("cats", "dogs")),
        dlq_record(b"bad", "decode", "x", read_ms=1, read_at=5.0),
        tweet(4, 6.0), tweet(5, 5.0, ("dogs",)),
    ]
    counted = tally(records)
    assert (counted.tweets, counted.dlq) == (5, 1)
    assert counted.runs == [(5.0, 3), (6.0, 1), (5.0, 1)]
    assert counted.by_tag == {"cats": 3, "dogs": 2}


def test_nothing_to_count() -> None:
    counted = tally([])
    assert (counted.tweets, counted.dlq, counted.runs, counted.by_tag) == (0, 0, [], {})


def test_tweets_restored_from_the_spool_still_count_per_rule(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        spool.append([tweet(1, 0.0, ("cats",)), tweet(2, 0.0, ("cats", "dogs")),
                      tweet(3, 0.0)])
        restored = [record for _, record in spool.peek()]
    assert tally(restored).by_tag == {"cats": 2, "dogs": 1}
