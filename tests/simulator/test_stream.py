"""The stream endpoint over a real socket: framing, headers, payloads, heartbeats, gzip,
connection slots, usage cap, backfill, replay."""

from __future__ import annotations

import gzip
import json
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sim_helpers import AUTH, STREAM, client, open_stream

from streamd.simulator import Simulator


def test_stream_sends_crlf_json_lines_with_rate_limit_headers(simulator: Simulator) -> None:
    rule_ids = simulator.add_rules([("cat", "cats"), ("dog", None)])
    simulator.set_rate(1000.0)
    with open_stream(simulator) as (response, reader):
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.headers["x-rate-limit-limit"] == "50"
        assert response.headers["x-rate-limit-remaining"] == "49"
        assert int(response.headers["x-rate-limit-reset"]) > time.time()
        tweets = reader.wait_tweets(20)
    ids = [int(t["data"]["id"]) for t in tweets]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for tweet in tweets:
        data = tweet["data"]
        assert len(data["id"]) == 19
        assert data["edit_history_tweet_ids"] == [data["id"]]
        assert set(data) == {"id", "text", "edit_history_tweet_ids"}  # X's default fields
        words = data["text"].lower()
        for match in tweet["matching_rules"]:
            assert match["id"] in rule_ids
            if match["id"] == rule_ids[0]:
                assert match["tag"] == "cats"
                assert "cat" in words or words.endswith("…")  # long: matched in note text
            else:
                assert "tag" not in match
                assert "dog" in words or words.endswith("…")
    sent = simulator.sent_tweets()
    by_id = {s.id: s.line for s in sent}
    for line in reader.lines:
        if line.startswith(b'{"data"'):
            assert by_id[json.loads(line)["data"]["id"]] == line  # byte-identical record


def test_requested_fields_and_expansions_are_rendered(simulator: Simulator) -> None:
    simulator.add_rules([("cat", None)])
    simulator.configure(match_all=True, tweets_per_second=2000.0)
    params = {
        "tweet.fields": "created_at,lang,author_id,entities,public_metrics,conversation_id",
        "expansions": "author_id",
        "user.fields": "description,created_at,public_metrics",
    }
    with open_stream(simulator, params) as (_, reader):
        tweets = reader.wait_tweets(200)
    sizes = []
    for tweet in tweets:
        data = tweet["data"]
        assert data["created_at"].endswith("Z")
        assert len(data["created_at"]) == 24
        assert {"lang", "author_id", "public_metrics", "conversation_id"} <= set(data)
        users = tweet["includes"]["users"]
        assert users[0]["id"] == data["author_id"]
        assert {"id", "name", "username", "description", "created_at"} <= set(users[0])
        for hashtag in data.get("entities", {}).get("hashtags", []):
            assert data["text"][hashtag["start"] : hashtag["end"]] == "#" + hashtag["tag"]
        sizes.append(len(json.dumps(tweet, ensure_ascii=False).encode()))
    assert max(sizes) > 600
    langs = {t["data"]["lang"] for t in tweets}
    assert {"en", "ar", "ja"} <= langs or len(langs) >= 5


def test_heartbeat_when_nothing_matches(simulator: Simulator) -> None:
    simulator.add_rules([("zzzqqqnevermatches", None)])
    with open_stream(simulator) as (_, reader):
        started = time.monotonic()
        assert reader.wait_for(lambda r: r.lines.count(b"") >= 2, timeout=3.0)
        elapsed = time.monotonic() - started
    assert 0.8 <= elapsed <= 2.5  # two heartbeats at a 0.5 s interval
    assert reader.tweets() == []


def test_total_tweets_stops_generation_but_keeps_heartbeats(
    make_simulator: Callable[..., Simulator],
) -> None:
    sim = make_simulator(tweets_per_second=float("inf"), total_tweets=30, match_all=True)
    sim.add_rules([("cat", None)])
    with open_stream(sim) as (_, reader):
        reader.wait_tweets(30)
        assert reader.wait_for(lambda r: b"" in r.lines, timeout=2.0)
    assert len(sim.sent_tweets()) == 30


def test_rate_is_respected(make_simulator: Callable[..., Simulator]) -> None:
    sim = make_simulator(tweets_per_second=40.0, match_all=True)
    sim.add_rules([("cat", None)])
    with open_stream(sim) as (_, reader):
        reader.wait_tweets(1)
        start_count, start = len(reader.tweets()), time.monotonic()
        time.sleep(1.0)
        rate = (len(reader.tweets()) - start_count) / (time.monotonic() - start)
    assert 25 <= rate <= 55


def test_gzip_when_client_accepts_it(make_simulator: Callable[..., Simulator]) -> None:
    sim = make_simulator(gzip=True, match_all=True, tweets_per_second=200.0)
    sim.add_rules([("cat", None)])
    headers = {"Accept-Encoding": "gzip"}
    with open_stream(sim, headers=headers, raw=True) as (response, reader):
        assert response.headers["content-encoding"] == "gzip"
        assert reader.wait_for(lambda r: len(r.chunks) >= 5, timeout=5.0)
        raw = b"".join(reader.chunks)
    # Each chunk is sync-flushed: the prefix decompresses without the gzip trailer.
    text = zlib.decompressobj(31).decompress(raw)
    first = text.split(b"\r\n")[0]
    assert json.loads(first)["data"]["id"] in {t.id for t in sim.sent_tweets()}
    with open_stream(sim, headers={"Accept-Encoding": "identity"}) as (plain, _):
        assert "content-encoding" not in plain.headers
    assert gzip  # imported for readers: the body is RFC 1952 gzip (wbits 31)


def test_reject_new_then_slot_released_on_disconnect(simulator: Simulator) -> None:
    simulator.add_rules([("cat", None)])
    with open_stream(simulator) as (first, _):
        assert first.status_code == 200
        with client(simulator) as c:
            second = c.get(STREAM)
        assert second.status_code == 429
        assert second.json()["connection_issue"] == "TooManyConnections"
        assert second.headers["x-rate-limit-limit"] == "50"
    assert simulator.wait_connections(0, timeout=3.0)
    with open_stream(simulator) as (third, _):
        assert third.status_code == 200


def test_kick_old_closes_the_old_stream(make_simulator: Callable[..., Simulator]) -> None:
    sim = make_simulator(connection_policy="kick_old")
    sim.add_rules([("cat", None)])
    with open_stream(sim) as (_, old_reader), open_stream(sim) as (new, new_reader):
        assert new.status_code == 200
        assert old_reader.wait_end(3.0)
        assert old_reader.error is None  # a clean end of body, no message
        assert not any(b"errors" in line for line in old_reader.lines)
        new_reader.wait_tweets(1)
        assert sim.active_connections() == 1


def test_enterprise_two_redundant_connections_get_the_same_tweets(
    make_simulator: Callable[..., Simulator],
) -> None:
    sim = make_simulator(tier="enterprise", match_all=True, tweets_per_second=200.0)
    sim.add_rules([("cat", None)])
    with open_stream(sim) as (_, a), open_stream(sim) as (_, b):
        assert sim.wait_connections(2, 2.0)
        with client(sim) as c:
            assert c.get(STREAM).status_code == 429
        b.wait_tweets(20)
        a.wait_tweets(20)
    ids_a = [t["data"]["id"] for t in a.tweets()]
    ids_b = [t["data"]["id"] for t in b.tweets()]
    common = set(ids_a) & set(ids_b)
    assert len(common) >= 15


def test_usage_cap_ends_streams_then_429(make_simulator: Callable[..., Simulator]) -> None:
    sim = make_simulator(usage_cap=10, match_all=True, tweets_per_second=500.0)
    sim.add_rules([("cat", None)])
    with open_stream(sim) as (_, reader):
        assert reader.wait_end(3.0)
    assert len(reader.tweets()) == 10
    with client(sim) as c:
        response = c.get(STREAM)
    assert response.status_code == 429
    body = response.json()
    assert body["title"] == "UsageCapExceeded"
    assert body["type"] == "https://api.twitter.com/2/problems/usage-capped"
    assert (body["period"], body["scope"]) == ("Monthly", "Product")


def test_backfill_replays_recent_tweets_as_duplicates(
    make_simulator: Callable[..., Simulator],
) -> None:
    """The last minutes of the timeline, oldest first, what the client already had included
    (X does not deduplicate), and what was created while it was away."""
    sim = make_simulator(tier="enterprise", match_all=True, tweets_per_second=200.0)
    sim.add_rules([("cat", None)])
    with open_stream(sim) as (_, reader):
        reader.wait_tweets(10)
    assert sim.wait_connections(0, 3.0)
    time.sleep(0.1)  # tweets go on being created with nobody connected
    sim.set_rate(0.0)
    before = [s.id for s in sim.sent_tweets()]
    created = [t.id for t in sim.timeline()]
    assert created[: len(before)] == before
    assert len(created) > len(before)
    with open_stream(sim, {"backfill_minutes": "1"}) as (_, reader):
        replayed = reader.wait_tweets(len(created))
    assert [t["data"]["id"] for t in replayed] == created
    assert [s.id for s in sim.sent_tweets()] == before + created


def test_replay_file(make_simulator: Callable[..., Simulator], tmp_path: Path) -> None:
    payloads = [
        {"data": {"id": "1500000000000000001", "text": "a cat here",
                  "edit_history_tweet_ids": ["1500000000000000001"]}},
        {"data": {"id": "1500000000000000002", "text": "nothing to see",
                  "edit_history_tweet_ids": ["1500000000000000002"]}},
        {"data": {"id": "1500000000000000003", "text": "kept rules",
                  "edit_history_tweet_ids": ["1500000000000000003"]},
         "matching_rules": [{"id": "42", "tag": "orig"}]},
    ]
    path = tmp_path / "replay.ndjson"
    path.write_text("\n".join(json.dumps(p) for p in payloads) + "\n")
    sim = make_simulator(replay_file=path, tweets_per_second=100.0)
    (rule_id,) = sim.add_rules([("cat", "c")])
    with open_stream(sim) as (_, reader):
        tweets = reader.wait_tweets(2)
        assert reader.wait_for(lambda r: b"" in r.lines, 2.0)
    assert [t["data"]["id"] for t in tweets] == ["1500000000000000001", "1500000000000000003"]
    assert tweets[0]["matching_rules"] == [{"id": rule_id, "tag": "c"}]
    assert tweets[1]["matching_rules"] == [{"id": "42", "tag": "orig"}]


def test_rule_changes_reach_the_stream_after_the_propagation_delay(
    make_simulator: Callable[..., Simulator],
) -> None:
    sim = make_simulator(rule_propagation_delay=0.6, match_all=True, tweets_per_second=100.0)
    sim.add_rules([("cat", None)])
    time.sleep(0.7)
    with open_stream(sim) as (_, reader):
        reader.wait_tweets(1)
        (new_id,) = sim.add_rules([("dog", "d")])
        added_at = time.monotonic()
        assert reader.wait_for(
            lambda r: any(
                m["id"] == new_id for t in r.tweets() for m in t["matching_rules"]
            ),
            3.0,
        )
        assert time.monotonic() - added_at >= 0.5


def test_stream_check_order_auth_before_params(simulator: Simulator) -> None:
    with httpx.Client(base_url=simulator.url) as c:
        response = c.get(STREAM, params={"tweet.fields": "bogus"})
    assert response.status_code == 401
    with httpx.Client(base_url=simulator.url, headers=AUTH) as c:
        response = c.get(STREAM, params={"tweet.fields": "bogus"})  # no rules either
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"tweet.fields": "created_at,bogus"}, "tweet.fields"),
        ({"expansions": "nope"}, "expansions"),
        ({"user.fields": "x"}, "user.fields"),
        ({"media.fields": "x"}, "media.fields"),
        ({"poll.fields": "x"}, "poll.fields"),
        ({"place.fields": "x"}, "place.fields"),
        ({"backfill_minutes": "9"}, "backfill_minutes"),
        ({"foo": "1"}, "foo"),
    ],
)
def test_bad_parameters_get_invalid_request(
    simulator: Simulator, params: dict[str, str], parameter: str
) -> None:
    simulator.add_rules([("cat", None)])
    with client(simulator) as c:
        response = c.get(STREAM, params=params)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert body["type"] == "https://api.twitter.com/2/problems/invalid-request"
    assert body["title"] == "Invalid Request"
    assert body["detail"] == "One or more parameters to your request was invalid."
    assert [list(e["parameters"]) for e in body["errors"]] == [[parameter]]
    assert all(isinstance(e["message"], str) for e in body["errors"])


def test_start_time_recovery_replays_the_window_then_closes(
    make_simulator: Callable[..., Simulator],
) -> None:
    sim = make_simulator(tier="enterprise", match_all=True, tweets_per_second=200.0)
    sim.add_rules([("cat", None)])
    with open_stream(sim) as (_, reader):
        reader.wait_tweets(5)
    assert sim.wait_connections(0, 3.0)
    sim.set_rate(0.0)
    created = [t.id for t in sim.timeline()]
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    with open_stream(sim, {"start_time": start}) as (_, reader):
        assert reader.wait_end(3.0)
    assert [t["data"]["id"] for t in reader.tweets()] == created


def test_many_keyword_rules_match_quickly(make_simulator: Callable[..., Simulator]) -> None:
    sim = make_simulator(tier="enterprise", tweets_per_second=500.0)
    ids = sim.add_rules([(f"word{i}", None) for i in range(20000)] + [("cat OR dog", "pets")])
    assert len(ids) == 20001
    started = time.monotonic()
    with open_stream(sim) as (_, reader):
        tweets = reader.wait_tweets(3)
    assert time.monotonic() - started < 5.0
    assert all(t["matching_rules"] == [{"id": ids[-1], "tag": "pets"}] for t in tweets)


def test_context_manager_and_stop_with_a_reader_that_never_reads() -> None:
    import socket

    from streamd.simulator import SimulatorConfig

    with Simulator(SimulatorConfig(tweets_per_second=float("inf"), match_all=True,
                                   rule_propagation_delay=0.0)) as sim:
        sim.add_rules(["cat"])
        sock = socket.create_connection(("127.0.0.1", sim.port))
        sock.sendall(b"GET /2/tweets/search/stream HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer test-token\r\n\r\n")
        assert sim.wait_sent(1000, 5.0)
        started = time.monotonic()
    assert time.monotonic() - started < 3.0
    sock.close()
