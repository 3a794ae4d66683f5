"""The timeline and the simulated clock, over real sockets: tweets created whether or not a
client is connected, a live connection reading only what comes after its connect, advance
(streams ended first, the gap's tweets created at once, capped), backfill after an advance,
the clock in created_at, the Date header and the Connections API, and the control
endpoints."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from sim_helpers import client, open_stream

from streamd.simulator import Simulator, SimulatorConfig
from streamd.simulator.cli import build_parser
from streamd.simulator.config import ADVANCE_MAX_TWEETS
from streamd.simulator.scenario import load_scenario
from streamd.simulator.snowflake import snowflake_ms

MakeSimulator = Callable[..., Simulator]


def started(make_simulator: MakeSimulator, **settings: object) -> Simulator:
    """A simulator whose timeline runs from its start; every tweet matches rule "cat"."""
    settings.setdefault("timeline_start", "start")
    settings.setdefault("match_all", True)
    sim = make_simulator(**settings)
    sim.add_rules([("cat", None)], immediate=True)
    return sim


def test_tweets_are_created_with_nobody_connected(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(timeline_start="start", tweets_per_second=200.0)
    time.sleep(0.4)
    tweets = sim.timeline()
    assert 40 <= len(tweets) <= 130
    assert sim.sent_tweets() == []
    ids = [int(t.id) for t in tweets]
    assert ids == sorted(set(ids))
    assert all(snowflake_ms(int(t.id)) == round(t.created_at * 1000) for t in tweets)
    gaps = [b.created_at - a.created_at for a, b in itertools.pairwise(tweets)]
    assert all(0.003 <= gap <= 0.007 for gap in gaps)  # 200 a second, on schedule
    # No rule is in force: the tweets match none, and have no matching_rules.
    assert not any(t.matching for t in tweets)
    assert b"matching_rules" not in tweets[0].line
    assert tweets[0].line.startswith(b'{"data":{"edit_history_tweet_ids":[')


def test_by_default_the_timeline_begins_with_the_first_connect(
    make_simulator: MakeSimulator,
) -> None:
    sim = make_simulator(match_all=True, tweets_per_second=200.0)
    sim.add_rules([("cat", None)])
    time.sleep(0.2)
    assert sim.timeline() == []
    with open_stream(sim) as (_, reader):
        reader.wait_tweets(5)
    assert sim.wait_connections(0, 3.0)
    count = len(sim.timeline())
    time.sleep(0.2)  # nobody connected: the timeline goes on
    assert len(sim.timeline()) >= count + 20


def test_a_live_connection_reads_what_is_created_after_it_connects(
    make_simulator: MakeSimulator,
) -> None:
    sim = started(make_simulator, tweets_per_second=200.0)
    time.sleep(0.2)
    with open_stream(sim) as (_, reader):
        got = [t["data"]["id"] for t in reader.wait_tweets(20)]
    (record,) = sim.connection_records()
    timeline = sim.timeline()
    ids = [t.id for t in timeline]
    first = ids.index(got[0])
    assert first >= 20  # what came before the connect is not sent
    assert got == ids[first : first + len(got)]
    assert all(t.created_at <= record.connected_at_epoch for t in timeline[:first])
    assert timeline[first].created_at >= record.connected_at_epoch - 0.001
    assert all(t.matching for t in timeline)  # rules in force: every tweet matches


def test_advance_ends_live_streams_and_creates_the_gap_at_once(
    make_simulator: MakeSimulator,
) -> None:
    sim = started(make_simulator, tier="enterprise", tweets_per_second=20.0)
    with open_stream(sim) as (_, reader):
        reader.wait_tweets(2)
        real = time.time()
        result = sim.advance(600)
        assert reader.wait_end(3.0)
        assert reader.error is None  # a clean end of the body
        assert time.time() - real < 2.0
    assert result["created"] == 20 * 600
    assert result["to"] - result["from"] == pytest.approx(600)
    assert result["now"] >= result["to"]
    assert sim.now() - time.time() == pytest.approx(600, abs=1.0)
    gap = [t for t in sim.timeline(start=result["from"]) if t.created_at <= result["to"]]
    assert len(gap) == 20 * 600
    spread = [b.created_at - a.created_at for a, b in itertools.pairwise(gap)]
    assert all(0.049 <= s <= 0.051 for s in spread)
    sent = {t.id for t in sim.sent_tweets()}
    assert not sent & {t.id for t in gap}
    (record,) = sim.connection_records()
    assert result["ended"] == [record.id]
    assert (record.active, record.disconnect_reason) == (False, "clock_advanced")
    # The slot is free at once, and live tweets carry the simulated clock.
    with open_stream(sim, {"tweet.fields": "created_at"}) as (response, reader):
        assert response.status_code == 200
        date = parsedate_to_datetime(response.headers["date"]).timestamp()
        assert date == pytest.approx(sim.now(), abs=2.0)
        tweet = reader.wait_tweets(1)[0]
    assert tweet["data"]["id"] not in sent
    created = snowflake_ms(int(tweet["data"]["id"])) / 1000
    assert created == pytest.approx(time.time() + 600, abs=2.0)
    assert tweet["data"]["created_at"].startswith(
        time.strftime("%Y-%m-%dT%H:", time.gmtime(created)))


def test_advance_with_keep_connections_sends_the_gap_as_a_burst(
    make_simulator: MakeSimulator,
) -> None:
    sim = started(make_simulator, tweets_per_second=20.0)
    with open_stream(sim) as (_, reader):
        reader.wait_tweets(1)
        result = sim.advance(60, keep_connections=True)
        assert result["ended"] == []
        gap = {t.id for t in sim.timeline(start=result["from"])
               if t.created_at <= result["to"]}
        assert len(gap) == 1200
        assert reader.wait_for(lambda r: gap <= {t["data"]["id"] for t in r.tweets()}, 5.0)
    assert sim.wait_active_records(0, 3.0)
    assert sim.connection_records()[0].disconnect_reason == "client_disconnect"


def test_backfill_after_an_advance_sends_the_gap_oldest_first(
    make_simulator: MakeSimulator,
) -> None:
    sim = started(make_simulator, tier="enterprise", tweets_per_second=10.0)
    with open_stream(sim) as (_, reader):
        reader.wait_tweets(3)
    assert sim.wait_connections(0, 3.0)
    result = sim.advance(120)  # nobody connected
    assert result["ended"] == []
    with open_stream(sim, {"backfill_minutes": "3"}) as (_, reader):
        connected = sim.connection_records()[0].connected_at_epoch
        window = [t.id for t in sim.timeline(start=connected - 180, end=connected)]
        assert len(window) >= 1200
        got = [t["data"]["id"] for t in reader.wait_tweets(len(window) + 1)]
    assert got[: len(window)] == window  # the window first, oldest first, duplicates kept
    assert got[len(window)] not in window  # then the live tail
    assert {t.id for t in sim.sent_tweets()} >= set(window)


def test_an_advance_is_capped(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(timeline_start="start", tweets_per_second=100.0)
    result = sim.advance(3 * 3600)
    assert result["created"] == ADVANCE_MAX_TWEETS
    last_minute = sim.timeline(start=result["to"] - 60, end=result["to"] + 0.001)
    assert len(last_minute) == pytest.approx(ADVANCE_MAX_TWEETS / 180, rel=0.05)


def test_total_and_rate_shape_the_timeline(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(timeline_start="start", tweets_per_second=500.0, total_tweets=40)
    time.sleep(0.3)
    assert len(sim.timeline()) == 40
    sim.configure(total_tweets=None, tweets_per_second=0)
    time.sleep(0.1)
    assert len(sim.timeline()) == 40  # rate 0: nothing more, and no burst when it resumes
    sim.set_rate(100.0)
    time.sleep(0.2)
    assert 10 <= len(sim.timeline()) - 40 <= 40


def test_the_control_endpoints(make_simulator: MakeSimulator) -> None:
    sim = started(make_simulator, tier="enterprise", tweets_per_second=10.0,
                  firehose_partitions=4)
    with client(sim) as c:
        clock = c.get("/_simulator/clock").json()
        assert clock["now"] == pytest.approx(time.time(), abs=1.0)
        answer = c.post("/_simulator/advance", json={"seconds": 30})
        assert answer.status_code == 200
        body = answer.json()
        assert body["created"] == 300
        assert body["to"] - body["from"] == pytest.approx(30)
        assert c.get("/_simulator/clock").json()["offset"] == pytest.approx(30)
        timeline = c.get("/_simulator/timeline", params={"start": body["from"]}).json()
        assert timeline["count"] >= 300
        tweet = timeline["tweets"][0]
        assert set(tweet) == {"id", "created_at", "partition", "lang", "matching",
                              "in_sample", "sample10_partition", "line"}
        assert tweet["matching"] is True
        part = c.get("/_simulator/timeline", params={
            "start": body["from"], "endpoint": "/2/tweets/firehose/stream", "partition": 2,
        }).json()
        assert 0 < part["count"] < timeline["count"]
        assert all(t["partition"] == 2 for t in part["tweets"])
        for bad in ({"seconds": -1}, {"seconds": "x"}, {"seconds": 1, "bogus": 1},
                    {"seconds": 1, "keep_connections": "yes"}):
            assert c.post("/_simulator/advance", json=bad).status_code == 400
        assert c.get("/_simulator/timeline", params={
            "endpoint": "/2/tweets/firehose/stream", "partition": 5}).status_code == 400
        settings = c.post("/_simulator/config", json={"firehose_partitions": 8}).json()
        assert settings["firehose_partitions"] == 8
        assert settings["now"] == pytest.approx(time.time() + 30, abs=1.0)
        assert c.post("/_simulator/config", json={"firehose_partitions": 21}).status_code == 400


def test_the_connections_api_and_rules_speak_simulated_time(
    make_simulator: MakeSimulator,
) -> None:
    sim = started(make_simulator, tweets_per_second=10.0)
    sim.advance(3600)
    with open_stream(sim) as (_, reader):
        reader.wait_tweets(1)
        with client(sim) as c:
            listed = c.get("/2/connections",
                           params={"connection.fields": "connected_at"}).json()
            rules = c.get("/2/tweets/search/stream/rules").json()
    connected = listed["data"][0]["connected_at"]
    hour = time.strftime("%Y-%m-%dT%H", time.gmtime(time.time() + 3600))
    assert connected.startswith(hour) or connected > hour
    assert rules["meta"]["sent"][:13] == connected[:13]


def test_a_scenario_advances_the_clock(make_simulator: MakeSimulator, tmp_path: Path) -> None:
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps({"events": [{"at": 0.1, "advance": 600}]}))
    sim = make_simulator(scenario_file=path, timeline_start="start", tweets_per_second=1.0)
    deadline = time.monotonic() + 3.0
    while sim.now() - time.time() < 599 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sim.now() - time.time() == pytest.approx(600, abs=1.0)
    assert len(sim.timeline()) >= 600
    path.write_text(json.dumps({"events": [{"at": 0, "advance": "soon"}]}))
    with pytest.raises(ValueError, match="advance"):
        load_scenario(path)


def test_the_command_line_options() -> None:
    args = build_parser().parse_args([
        "--timeline-start", "start", "--firehose-partitions", "4", "--recovery-rate", "50"])
    assert (args.timeline_start, args.firehose_partitions, args.recovery_rate) == (
        "start", 4, "50")
    with pytest.raises(ValueError, match="firehose_partitions"):
        SimulatorConfig(firehose_partitions=21)
    with pytest.raises(ValueError, match="lang_firehose_partitions"):
        SimulatorConfig(lang_firehose_partitions={"en": 9})
    with pytest.raises(ValueError, match="timeline_start"):
        SimulatorConfig(timeline_start="later")  # type: ignore[arg-type]


def backdated(tweet_id: str) -> bool:
    """Back-dated ids use the upper half of the snowflake's sequence bits."""
    return int(tweet_id) & ((1 << 22) - 1) >= 1 << 21


def test_backdate_creates_the_past_nobody_read(make_simulator: MakeSimulator) -> None:
    sim = started(make_simulator, tier="enterprise", tweets_per_second=50.0)
    with open_stream(sim) as (_, live):
        live.wait_tweets(3)
        result = sim.backdate(120)
        time.sleep(0.2)
        read_live = {t["data"]["id"] for t in live.tweets()}
    assert result["created"] == 6000
    assert result["to"] - result["from"] == pytest.approx(120)
    assert sim.now() == pytest.approx(time.time(), abs=0.5)  # the clock stays
    timeline = sim.timeline()
    past = {t.id for t in timeline if backdated(t.id)}
    assert len(past) == 6000
    assert all(result["from"] - 0.001 <= t.created_at < result["to"]
               for t in timeline if t.id in past)
    assert not read_live & past  # the open stream never got them
    assert [int(t.id) for t in timeline] == sorted(int(t.id) for t in timeline)
    sim.set_rate(0.0)
    with open_stream(sim, {"backfill_minutes": "3"}) as (_, reader):
        connected = sim.connection_records()[0].connected_at_epoch
        window = [t.id for t in sim.timeline(connected - 180, connected)]
        got = [t["data"]["id"] for t in reader.wait_tweets(len(window))]
    assert got == window
    assert past <= set(window)
    with client(sim) as c:
        answer = c.post("/_simulator/backdate", json={"seconds": 2})
        assert answer.json()["created"] == 0  # rate 0: an empty past
        assert c.post("/_simulator/backdate", json={"seconds": -2}).status_code == 400
