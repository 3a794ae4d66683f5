"""The sample, sample10, firehose and language firehose endpoints over real sockets: the
partitions of a firehose are disjoint and make up the whole timeline, the samples are the
documented shares, partition validation, which tiers may connect, slots per partition,
backfill of a share, and the Connections API's endpoint names."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
from sim_helpers import LineReader, client, open_stream

from streamd.simulator import Simulator
from streamd.simulator.endpoints import (
    firehose_partition,
    in_sample,
    sample10_partition,
)

MakeSimulator = Callable[..., Simulator]
FIREHOSE = "/2/tweets/firehose/stream"
SAMPLE = "/2/tweets/sample/stream"
SAMPLE10 = "/2/tweets/sample10/stream"


def ids_of(reader: LineReader) -> list[str]:
    return [t["data"]["id"] for t in reader.tweets()]


@contextmanager
def streams(sim: Simulator, *opened: tuple[str, dict[str, str]]) -> Iterator[list[LineReader]]:
    """Open several streams at once (each must be answered 200)."""
    with ExitStack() as stack:
        readers = []
        for path, params in opened:
            response, reader = stack.enter_context(open_stream(sim, params, path=path))
            assert response.status_code == 200, response.read()
            readers.append(reader)
        yield readers


def settle(sim: Simulator, seconds: float, readers: list[LineReader],
           expected: Callable[[int], list[str]]) -> None:
    """Let tweets come for `seconds`, stop the rate, then wait until each reader has what
    `expected(index)` says."""
    time.sleep(seconds)
    sim.set_rate(0.0)
    for index, reader in enumerate(readers):
        want = expected(index)
        assert reader.wait_for(lambda r, want=want: ids_of(r) == want, 5.0), (
            index, len(ids_of(reader)), len(want))


def test_the_firehose_partitions_are_disjoint_and_make_the_whole_timeline(
    make_simulator: MakeSimulator,
) -> None:
    sim = make_simulator(tier="enterprise", tweets_per_second=0.0, firehose_partitions=4)
    # No rules at all: the firehose needs none (no 409).
    opened = [(FIREHOSE, {"partition": str(p)}) for p in range(1, 5)]
    with streams(sim, *opened) as readers:
        sim.set_rate(800.0)
        timeline = sim.timeline
        settle(sim, 1.0, readers, lambda i: [
            t.id for t in timeline(endpoint=FIREHOSE, partition=i + 1)])
        got = [set(ids_of(r)) for r in readers]
        lines = [line for r in readers for line in r.lines if line]
    whole = [t.id for t in sim.timeline()]
    assert len(whole) >= 400
    assert set().union(*got) == set(whole)
    assert sum(len(g) for g in got) == len(whole)  # pairwise disjoint
    assert all(min(len(g) for g in got) > len(whole) / 8 for _ in got)
    assert all(firehose_partition(i, 4) == p + 1 for p, g in enumerate(got) for i in g)
    assert [t.id for t in sim.timeline(endpoint="firehose")] == whole  # every partition
    assert [t.id for t in sim.timeline(endpoint="firehose_stream", partition=2)] == [
        t.id for t in sim.timeline(endpoint=FIREHOSE, partition=2)]
    assert not any(b"matching_rules" in line for line in lines)
    records = sim.connection_records()
    assert sorted((r.endpoint_name, r.partition) for r in records) == [
        ("firehose_stream", p) for p in range(1, 5)]


def test_the_samples_are_their_shares_of_the_timeline(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(tier="enterprise", tweets_per_second=0.0, match_all=True)
    sim.add_rules([("cat", None)], immediate=True)  # rules do not narrow the samples
    opened = [(SAMPLE, {}), (SAMPLE10, {"partition": "1"}), (SAMPLE10, {"partition": "2"}),
              ("/2/tweets/search/stream", {})]
    with streams(sim, *opened) as readers:
        sim.set_rate(3000.0)

        def expected(index: int) -> list[str]:
            timeline = sim.timeline()
            return [t.id for t in timeline if (
                t.in_sample, t.sample10_partition == 1, t.sample10_partition == 2, True,
            )[index]]

        settle(sim, 1.0, readers, expected)
        sample, half1, half2, filtered = (ids_of(r) for r in readers)
    whole = [t.id for t in sim.timeline()]
    assert filtered == whole  # every tweet matches the rule: the filtered stream has all
    tenths = {t.id for t in sim.timeline(endpoint="sample10")}
    assert tenths == set(half1) | set(half2)
    assert [t.id for t in sim.timeline(endpoint="sample")] == sample
    assert set(sample) <= set(half1)  # the 1% sample is inside partition 1 of the 10%
    assert not set(half1) & set(half2)
    tenth = len(half1) + len(half2)
    assert 0.06 < tenth / len(whole) < 0.14
    assert all("matching_rules" not in t for r in readers[:3] for t in r.tweets())


def test_the_shares_over_many_ids() -> None:
    ids = range(2_000_000_000_000_000_000, 2_000_000_000_000_000_000 + 200_000, 1)
    assert sum(map(in_sample, ids)) / 200_000 == pytest.approx(0.01, rel=0.1)
    halves = [sample10_partition(i) for i in ids]
    assert halves.count(1) / 200_000 == pytest.approx(0.05, rel=0.05)
    assert halves.count(2) / 200_000 == pytest.approx(0.05, rel=0.05)
    counts = [0] * 20
    for i in ids:
        counts[firehose_partition(i, 20) - 1] += 1
    assert max(counts) / min(counts) < 1.1


def test_a_language_firehose_has_that_language_only(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(tier="enterprise", tweets_per_second=0.0)
    path = "/2/tweets/firehose/stream/lang/ja"
    with streams(sim, (path, {"partition": "1"}), (path, {"partition": "2"})) as readers:
        sim.set_rate(1500.0)
        settle(sim, 1.0, readers, lambda i: [
            t.id for t in sim.timeline(endpoint=path, partition=i + 1)])
        both = ids_of(readers[0]) + ids_of(readers[1])
    japanese = [t for t in sim.timeline() if t.lang == "ja"]
    assert sorted(both) == sorted(t.id for t in japanese)
    assert len(both) > 20
    assert {r.endpoint_name for r in sim.connection_records()} == {"firehose_stream_lang_ja"}


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        (FIREHOSE, {}, "The `partition` query parameter can not be empty"),
        (FIREHOSE, {"partition": ""}, "The `partition` query parameter can not be empty"),
        (FIREHOSE, {"partition": "0"},
         "The `partition` query parameter value [0] is not between 1 and 20"),
        (FIREHOSE, {"partition": "21"},
         "The `partition` query parameter value [21] is not between 1 and 20"),
        (FIREHOSE, {"partition": "x"},
         "The `partition` query parameter value [x] is not between 1 and 20"),
        (SAMPLE10, {"partition": "3"},
         "The `partition` query parameter value [3] is not between 1 and 2"),
        ("/2/tweets/firehose/stream/lang/en", {"partition": "9"},
         "The `partition` query parameter value [9] is not between 1 and 8"),
        (SAMPLE, {"partition": "1"},
         "The query parameter [partition] is not one of [backfill_minutes,expansions,"
         "media.fields,place.fields,poll.fields,tweet.fields,user.fields]"),
        ("/2/tweets/search/stream", {"partition": "1"},
         "The query parameter [partition] is not one of [backfill_minutes,end_time,"
         "expansions,media.fields,place.fields,poll.fields,start_time,tweet.fields,"
         "user.fields]"),
    ],
)
def test_a_bad_partition_is_an_invalid_request(
    make_simulator: MakeSimulator, path: str, params: dict[str, str], message: str,
) -> None:
    sim = make_simulator(tier="enterprise")
    sim.add_rules([("cat", None)])
    with client(sim) as c:
        answer = c.get(path, params=params)
    assert answer.status_code == 400
    body = answer.json()
    assert body["type"] == "https://api.twitter.com/2/problems/invalid-request"
    assert [e["message"] for e in body["errors"]] == [message]
    assert list(body["errors"][0]["parameters"]) == ["partition"]


def test_partitions_above_the_simulators_count_are_refused(
    make_simulator: MakeSimulator,
) -> None:
    sim = make_simulator(tier="enterprise", firehose_partitions=4)
    with client(sim) as c:
        answer = c.get(FIREHOSE, params={"partition": "5"})
        assert answer.status_code == 400
        assert answer.json()["errors"][0]["message"] == (
            "The `partition` query parameter value [5] is not between 1 and 4")
        sim.configure(firehose_partitions=8)
        with c.stream("GET", FIREHOSE, params={"partition": "5"}) as response:
            assert response.status_code == 200


@pytest.mark.parametrize(
    ("tier", "path", "status"),
    [
        ("pro", SAMPLE, 200),
        ("pro", SAMPLE10, 403),
        ("pro", FIREHOSE, 403),
        ("pro", "/2/tweets/firehose/stream/lang/pt", 403),
        ("basic", SAMPLE, 403),
        ("enterprise", SAMPLE10, 200),
    ],
)
def test_which_tiers_reach_which_endpoint(
    make_simulator: MakeSimulator, tier: str, path: str, status: int,
) -> None:
    sim = make_simulator(tier=tier)
    params = {} if path == SAMPLE else {"partition": "1"}
    with client(sim) as c, c.stream("GET", path, params=params) as response:
        assert response.status_code == status
        if status == 403:
            response.read()
            body: dict[str, Any] = response.json()
            assert body["type"] == "https://api.twitter.com/2/problems/client-forbidden"


def test_endpoint_tiers_are_configurable(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(tier="pro")
    with client(sim) as c:
        assert c.get(FIREHOSE, params={"partition": "1"}).status_code == 403
        settings = c.post("/_simulator/config",
                          json={"endpoint_tiers": {"firehose": ["pro", "enterprise"]}}).json()
        assert settings["endpoint_tiers"]["firehose"] == ["pro", "enterprise"]
        assert settings["endpoint_tiers"]["sample10"] == ["enterprise"]
        with c.stream("GET", FIREHOSE, params={"partition": "1"}) as response:
            assert response.status_code == 200
        bad = c.post("/_simulator/config", json={"endpoint_tiers": {"firehose": ["gold"]}})
        assert bad.status_code == 400


def test_each_partition_has_its_own_redundant_slots(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(tier="enterprise")
    one = (FIREHOSE, {"partition": "1"})
    with streams(sim, one, one, (FIREHOSE, {"partition": "2"}), (SAMPLE, {})), client(
        sim
    ) as c:
        third = c.get(FIREHOSE, params={"partition": "1"})
        assert third.status_code == 429
        assert third.json()["connection_issue"] == "TooManyConnections"
        listed = c.get("/2/connections", params={"connection.fields": "endpoint_name"}).json()
        names = sorted(d["endpoint_name"] for d in listed["data"])
        assert names == ["firehose_stream"] * 3 + ["sample_stream"]
        assert c.get("/2/connections", params={"endpoints": "sample_stream"}).json()[
            "meta"]["result_count"] == 1
        killed = c.delete("/2/connections/firehose_stream").json()["data"]
        assert killed["successful_kills"] == 3


def test_backfill_of_a_partition_is_its_share_of_the_last_minutes(
    make_simulator: MakeSimulator,
) -> None:
    sim = make_simulator(tier="enterprise", timeline_start="start", tweets_per_second=20.0,
                         firehose_partitions=2)
    result = sim.advance(120)
    sim.set_rate(0.0)
    params = {"partition": "2", "backfill_minutes": "1"}
    with open_stream(sim, params, path=FIREHOSE) as (_, reader):
        connected = sim.connection_records()[0].connected_at_epoch
        assert connected >= result["to"]
        expected = [t.id for t in sim.timeline(start=connected - 60, end=connected,
                                               endpoint=FIREHOSE, partition=2)]
        assert 400 < len(expected) < 800
        assert reader.wait_for(lambda r: len(r.tweets()) >= len(expected), 5.0)
        time.sleep(0.1)
    assert ids_of(reader) == expected


def test_one_connection_reset_the_other_goes_on(make_simulator: MakeSimulator) -> None:
    sim = make_simulator(tier="enterprise", tweets_per_second=100.0, match_all=True)
    sim.add_rules([("cat", None)], immediate=True)
    with streams(sim, ("/2/tweets/search/stream", {}), ("/2/tweets/search/stream", {})) as (
        one, two,
    ):
        one.wait_tweets(2)
        first, second = sorted(sim.connection_records(), key=lambda r: r.connected_at_epoch)
        assert sim.reset_connection(first.id)
        assert one.wait_end(3.0)
        assert one.error is not None  # a network end, not a clean one
        count = len(two.tweets())
        two.wait_tweets(count + 5)  # the other goes on
        assert sim.wait_active_records(1, 3.0)
        assert not sim.reset_connection(first.id)  # no open stream with that id any more
        with client(sim) as c:
            answer = c.post("/_simulator/reset-connection", json={"id": second.id,
                                                                  "end": "clean"})
            assert answer.json() == {"reset": True}
            assert c.post("/_simulator/reset-connection",
                          json={"id": second.id, "end": "slam"}).status_code == 400
        assert two.wait_end(3.0)
        assert two.error is None
    reasons = {r.id: r.disconnect_reason for r in sim.connection_records()}
    assert reasons == {first.id: "server_disconnect", second.id: "server_disconnect"}
