"""Recovery (start_time/end_time) over real sockets: the window re-streamed exactly, then a
clean end; the 24-hour limit and the other window rules on the simulated clock; at most two
jobs at once, beside the live slot; the tiers without recovery; a job cut short and
resumed from its last created_at; a firehose partition's window."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sim_helpers import client, open_stream

from streamd.simulator import Fault, Simulator, TimelineTweet

MakeSimulator = Callable[..., Simulator]
FIREHOSE = "/2/tweets/firehose/stream"


def rfc3339(epoch: float) -> str:
    """With milliseconds, as a client resuming from a created_at would send it."""
    millis = round(epoch * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + (
        f".{millis % 1000:03d}Z")


def an_hour_of_tweets(make_simulator: MakeSimulator, **settings: Any) -> tuple[
    Simulator, list[TimelineTweet]
]:
    """Enterprise; an hour passes with nobody connected (5 tweets a second, so 18,000),
    then the rate drops to 0. Returns the simulator and the hour's tweets."""
    settings.setdefault("tier", "enterprise")
    sim = make_simulator(timeline_start="start", match_all=True, tweets_per_second=5.0,
                         **settings)
    sim.add_rules([("cat", "cats")], immediate=True)
    result = sim.advance(3600)
    sim.set_rate(0.0)
    hour = [t for t in sim.timeline(start=result["from"]) if t.created_at <= result["to"]]
    assert len(hour) == 18_000
    return sim, hour


def ids_of(reader: Any) -> list[str]:
    return [t["data"]["id"] for t in reader.tweets()]


def test_the_window_is_re_streamed_exactly_then_the_stream_ends(
    make_simulator: MakeSimulator,
) -> None:
    sim, hour = an_hour_of_tweets(make_simulator)
    start, end = hour[1000], hour[4000]
    expected = [t.id for t in hour if start.created_at <= t.created_at < end.created_at]
    assert expected[0] == start.id  # [start, end)
    assert end.id not in expected
    params = {"start_time": rfc3339(start.created_at), "end_time": rfc3339(end.created_at)}
    with open_stream(sim, params) as (response, reader):
        assert response.status_code == 200
        assert reader.wait_end(10.0)
    assert reader.error is None  # a clean end
    assert ids_of(reader) == expected
    assert sim.recovery_sent() == len(expected)
    assert all(t["matching_rules"][0]["tag"] == "cats" for t in reader.tweets())
    (record,) = sim.connection_records()
    assert (record.recovery, record.active) == (True, False)
    assert record.disconnect_reason == "recovery_complete"
    assert sim.connects()[-1].query == params


def test_the_24_hour_limit_is_on_the_simulated_clock(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(timeline_start="start", tier="enterprise", tweets_per_second=0.0,
                         match_all=True)
    sim.add_rules([("cat", None)], immediate=True)
    sim.advance(25 * 3600)
    real_now = time.time()  # 25 simulated hours ago
    with client(sim) as c:
        answer = c.get("/2/tweets/search/stream", params={
            "start_time": rfc3339(real_now), "end_time": rfc3339(real_now + 60)})
        assert answer.status_code == 400
        body = answer.json()
        assert body["type"] == "https://api.twitter.com/2/problems/invalid-request"
        (error,) = body["errors"]
        assert list(error["parameters"]) == ["start_time"]
        bound = time.strftime("%Y-%m-%dT%H:", time.gmtime(sim.now() - 24 * 3600))
        assert error["message"].startswith(f"Invalid 'start_time':'{rfc3339(real_now)}'."
                                           f" 'start_time' must be on or after {bound}")
    recent = sim.now() - 23.9 * 3600
    with open_stream(sim, {"start_time": rfc3339(recent),
                           "end_time": rfc3339(recent + 60)}) as (response, reader):
        assert response.status_code == 200
        assert reader.wait_end(3.0)


@pytest.mark.parametrize(
    ("window", "parameter", "says"),
    [
        ({"start_time": -60, "end_time": 90}, "end_time", "'end_time' must be on or before"),
        ({"start_time": -60, "end_time": -60}, "end_time", "'end_time' must be after"),
        ({"start_time": -30, "end_time": -60}, "end_time", "'end_time' must be after"),
        ({"end_time": -60}, "end_time", "'end_time' requires 'start_time'"),
        ({"start_time": 30}, "start_time", "'start_time' must be before"),
    ],
)
def test_windows_that_cannot_be_recovered_are_invalid_requests(
    make_simulator: MakeSimulator, window: dict[str, float], parameter: str, says: str,
) -> None:
    sim = make_simulator(tier="enterprise", match_all=True)
    sim.add_rules([("cat", None)])
    now = sim.now()
    params = {name: rfc3339(now + offset) for name, offset in window.items()}
    with client(sim) as c:
        answer = c.get("/2/tweets/search/stream", params=params)
    assert answer.status_code == 400
    (error,) = answer.json()["errors"]
    assert list(error["parameters"]) == [parameter]
    assert says in error["message"]


def test_an_end_time_just_ahead_is_waited_for(make_simulator: MakeSimulator) -> None:
    """A client that rounds end_time up (or whose clock runs ahead) gets the whole window:
    the stream follows the timeline until the clock passes end_time, then ends."""
    sim = make_simulator(timeline_start="start", tier="enterprise", tweets_per_second=50.0,
                         match_all=True)
    sim.add_rules([("cat", None)], immediate=True)
    now = sim.now()
    params = {"start_time": rfc3339(now - 1.0), "end_time": rfc3339(now + 1.0)}
    with open_stream(sim, params) as (response, reader):
        assert response.status_code == 200
        assert reader.wait_end(5.0)
    assert reader.error is None
    expected = [t.id for t in sim.timeline(now - 1.0, now + 1.0)]
    assert ids_of(reader) == expected
    assert 45 <= len(expected) <= 100  # the second ahead alone holds 50
    assert sim.now() >= now + 1.0
    assert sim.connection_records()[0].disconnect_reason == "recovery_complete"


def test_at_most_two_jobs_at_once_beside_the_live_slot(make_simulator: MakeSimulator) -> None:
    sim, hour = an_hour_of_tweets(make_simulator, recovery_rate=50.0, connection_limit=1)
    params = {"start_time": rfc3339(hour[0].created_at),
              "end_time": rfc3339(hour[2000].created_at)}  # 40 s at 50 a second
    with open_stream(sim, params) as (first, one), open_stream(sim, params) as (second, two):
        assert (first.status_code, second.status_code) == (200, 200)
        one.wait_tweets(1)
        two.wait_tweets(1)
        with client(sim) as c:
            third = c.get("/2/tweets/search/stream", params=params)
            assert third.status_code == 429
            assert third.json()["connection_issue"] == "TooManyConnections"
            listed = c.get("/2/connections", params={"endpoints": "filtered_stream"}).json()
            assert listed["meta"]["result_count"] == 2
        with open_stream(sim) as (live, _):  # recovery jobs hold no live slot
            assert live.status_code == 200
    assert sim.wait_active_records(0, 3.0)
    records = sim.connection_records()
    assert sum(r.recovery for r in records) == 2
    with open_stream(sim, params) as (again, _):  # the jobs are over: room again
        assert again.status_code == 200


def test_tiers_without_recovery_get_client_forbidden(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(tier="pro", match_all=True)
    sim.add_rules([("cat", None)])
    params = {"start_time": rfc3339(sim.now() - 120), "end_time": rfc3339(sim.now() - 60)}
    with client(sim) as c:
        answer = c.get("/2/tweets/search/stream", params=params)
        assert answer.status_code == 403
        body = answer.json()
        assert body["type"] == "https://api.twitter.com/2/problems/client-forbidden"
        assert body["reason"] == "client-not-enrolled"
        assert c.get("/2/tweets/search/stream",
                     params={"end_time": "yesterday"}).status_code == 400  # syntax first
    sim.configure(recovery_tiers=["pro", "enterprise"])
    with open_stream(sim, params) as (response, reader):
        assert response.status_code == 200
        assert reader.wait_end(3.0)


def test_a_job_cut_short_is_resumed_from_its_last_created_at(
    make_simulator: MakeSimulator,
) -> None:
    sim, hour = an_hour_of_tweets(make_simulator)
    start, end = hour[100].created_at, hour[1100].created_at
    expected = [t.id for t in hour[100:1100]]
    sim.inject(Fault.recovery_cut(after=300))  # waits for the next recovery stream
    params = {"start_time": rfc3339(start), "end_time": rfc3339(end),
              "tweet.fields": "created_at"}
    with open_stream(sim, params) as (_, reader):
        assert reader.wait_end(5.0)
    assert isinstance(reader.error, httpx.HTTPError)  # not a clean end: a cut
    first = reader.tweets()
    assert [t["data"]["id"] for t in first] == expected[:300]
    assert sim.connection_records()[0].disconnect_reason == "server_disconnect"
    # Resume from the last created_at delivered (inclusive: the same millisecond again).
    params["start_time"] = first[-1]["data"]["created_at"]
    with open_stream(sim, params) as (_, reader):
        assert reader.wait_end(5.0)
    assert reader.error is None
    rest = ids_of(reader)
    assert rest[0] == expected[299]
    assert [t["data"]["id"] for t in first] + rest[1:] == expected


def test_a_cut_with_notice_over_http(make_simulator: MakeSimulator) -> None:
    sim, hour = an_hour_of_tweets(make_simulator)
    with client(sim) as c:
        injected = c.post("/_simulator/faults", json={
            "fault": "recovery_cut", "after": 5, "end": "clean", "notice": True})
        assert injected.status_code == 200
    params = {"start_time": rfc3339(hour[0].created_at),
              "end_time": rfc3339(hour[50].created_at)}
    with open_stream(sim, params) as (_, reader):
        assert reader.wait_end(5.0)
    assert reader.error is None
    assert len(reader.tweets()) == 5
    last = [line for line in reader.lines if line][-1]
    assert b'"disconnect_type":"OperationalDisconnect"' in last
    # The cut was consumed: the next job is whole.
    with open_stream(sim, params) as (_, reader):
        assert reader.wait_end(5.0)
    assert len(reader.tweets()) == 50


def test_a_firehose_partition_recovers_its_share_only(make_simulator: MakeSimulator) -> None:
    sim, hour = an_hour_of_tweets(make_simulator, firehose_partitions=4)
    start, end = hour[0].created_at, hour[2000].created_at
    expected = [t.id for t in sim.timeline(start, end, endpoint=FIREHOSE, partition=3)]
    assert 300 < len(expected) < 700
    with open_stream(sim, {"partition": "3", "start_time": rfc3339(start),
                           "end_time": rfc3339(end)}, path=FIREHOSE) as (response, reader):
        assert response.status_code == 200
        assert reader.wait_end(5.0)
    assert ids_of(reader) == expected
    assert all("matching_rules" not in t for t in reader.tweets())
    record = sim.connection_records()[0]
    assert (record.endpoint_name, record.partition, record.recovery) == (
        "firehose_stream", 3, True)
    # The 1% sample has no recovery: start_time is not one of its parameters.
    with client(sim) as c:
        answer = c.get("/2/tweets/sample/stream", params={"start_time": rfc3339(start)})
    assert answer.status_code == 400
    assert "is not one of [backfill_minutes," in answer.json()["errors"][0]["message"]
