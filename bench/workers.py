"""Reference consumers and producers, each run as `python -m bench.workers KIND ARGS_JSON` in
its own process (its own GIL); the last stdout line is a JSON result.

raw       httpx iter_raw + bytes.split on CRLF: the HTTP ceiling of one Python reader.
          Optionally keeps the bytes it read (written after the clock stops) so the Kafka
          ceiling publishes exactly the same lines.
confluent the confluent-kafka (librdkafka) producer publishing those lines, keys = tweet ids,
          linger 5 ms, zstd, acks=all: the Kafka ceiling of one Python process.
tweepy    tweepy 4.x StreamingClient; `tweepy` counts in on_data (no parsing: tweepy's
          cheapest path), `tweepy-objects` lets tweepy build its Tweet objects (its default
          path) and counts in on_response.
twarc     twarc2 (twarc.client2.Twarc2.stream), which json-decodes every line itself.
tweepy-aiokafka  the pipeline a tweepy user writes with aiokafka: tweepy's asyncio
          StreamingClient (`AsyncStreamingClient`: aiokafka's send() is a coroutine, and this
          is tweepy's StreamingClient whose on_data can await it), on_data json-decodes the
          line for its id and awaits `producer.send(topic, line, key=id)` per tweet; the clock
          stops when every send's future is acknowledged.
twarc-confluent  the pipeline a twarc2 user writes with confluent-kafka: for each tweet the
          stream generator yields (a dict), `produce(topic, json.dumps(tweet), key=id)` and
          `poll(0)`, then `flush()`; the clock stops when flush returns with every delivery
          report in.

Every worker reports `cpu`: its process's CPU seconds (all threads: librdkafka's too) over
the clocked window, so peers compare with the daemon per tweet.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.rig import EXPANSIONS, MEDIA_FIELDS, TOKEN, TWEET_FIELDS, USER_FIELDS, stream_params

X_HOST = "https://api.twitter.com"


def raw_reader(url: str, n: int, save: str | None = None) -> dict[str, Any]:
    import httpx

    chunks: list[bytes] = []
    count = 0
    nbytes = 0
    carry = b""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(timeout=httpx.Timeout(30.0)) as client, client.stream(
        "GET", f"{url}/2/tweets/search/stream", params=stream_params(), headers=headers
    ) as resp:
        resp.raise_for_status()
        start, cpu = time.perf_counter(), time.process_time()
        for chunk in resp.iter_raw():
            nbytes += len(chunk)
            if save is not None:
                chunks.append(chunk)
            parts = (carry + chunk).split(b"\r\n")
            carry = parts.pop()
            count += sum(1 for p in parts if p)
            if count >= n:
                break
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
    if save is not None:
        Path(save).write_bytes(b"".join(chunks))
    return {"tweets": count, "seconds": elapsed, "cpu": cpu, "bytes": nbytes}


def confluent_producer(bootstrap: str, topic: str, lines_path: str, n: int,
                       compression: str) -> dict[str, Any]:
    import orjson
    from confluent_kafka import Producer

    lines = [line for line in Path(lines_path).read_bytes().split(b"\r\n") if line][:n]
    keys = [orjson.loads(line)["data"]["id"].encode() for line in lines]
    acked = 0
    failed = 0

    def on_delivery(err: Any, msg: Any) -> None:
        nonlocal acked, failed
        if err is None:
            acked += 1
        else:
            failed += 1

    producer = Producer({
        "bootstrap.servers": bootstrap,
        "linger.ms": 5,
        "compression.type": compression,
        "acks": "all",
        "enable.idempotence": False,  # Tansu's memory store has no idempotent producer
        "batch.size": 1_048_576,      # the daemon's kafka.max_batch_bytes
    })
    producer.list_topics(topic, timeout=10)  # connect before the clock starts
    start, cpu = time.perf_counter(), time.process_time()
    for key, value in zip(keys, lines, strict=True):
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    return {"tweets": acked, "failed": failed, "seconds": elapsed, "cpu": cpu,
            "bytes": sum(len(v) for v in lines)}


def tweepy_client(url: str, n: int, objects: bool) -> dict[str, Any]:
    import tweepy  # type: ignore[import-untyped]
    from tweepy.streaming import BaseStream  # type: ignore[import-untyped]

    state = {"count": 0, "start": 0.0, "end": 0.0, "cpu0": 0.0, "cpu1": 0.0}

    class BenchClient(tweepy.StreamingClient):  # type: ignore[misc]
        # StreamingClient._connect builds f"https://api.twitter.com/2/tweets/{endpoint}/stream"
        # inline (no host attribute to patch), so this override is its base-URL patch.
        def _connect(self, method: str, endpoint: str, **kwargs: Any) -> None:
            self.session.headers["Authorization"] = f"Bearer {self.bearer_token}"
            BaseStream._connect(self, method, f"{url}/2/tweets/{endpoint}/stream", **kwargs)

        def on_connect(self) -> None:
            state["start"], state["cpu0"] = time.perf_counter(), time.process_time()

        def _count(self) -> None:
            state["count"] += 1
            if state["count"] >= n:
                state["end"], state["cpu1"] = time.perf_counter(), time.process_time()
                self.disconnect()

        if objects:
            def on_response(self, response: Any) -> None:
                self._count()
        else:
            def on_data(self, raw_data: bytes) -> None:
                self._count()

    client = BenchClient(TOKEN, wait_on_rate_limit=False, max_retries=0)
    client.filter(
        tweet_fields=TWEET_FIELDS, expansions=EXPANSIONS, user_fields=USER_FIELDS,
        media_fields=MEDIA_FIELDS,
    )
    return {"tweets": state["count"], "seconds": state["end"] - state["start"],
            "cpu": state["cpu1"] - state["cpu0"], "version": tweepy.__version__}


def _twarc_stream(url: str, clock: dict[str, float]) -> Any:
    """twarc2's stream generator against the simulator; `clock` gets the time and CPU when
    the response headers are in."""
    from twarc.client2 import Twarc2  # type: ignore[import-untyped]

    twarc = Twarc2(bearer_token=TOKEN)
    twarc.connect()
    session_get = twarc.client.get

    # Twarc2 writes every endpoint as a literal "https://api.twitter.com/2/..." URL; its
    # requests session is the one place all of them pass, so the base URL is swapped there.
    def get(target: str, *args: Any, **kwargs: Any) -> Any:
        resp = session_get(target.replace(X_HOST, url, 1), *args, **kwargs)
        # headers in: the same start as the others
        clock["start"], clock["cpu"] = time.perf_counter(), time.process_time()
        return resp

    twarc.client.get = get
    return twarc.stream(
        tweet_fields=",".join(TWEET_FIELDS), expansions=",".join(EXPANSIONS),
        user_fields=",".join(USER_FIELDS), media_fields=",".join(MEDIA_FIELDS),
    )


def twarc_client(url: str, n: int) -> dict[str, Any]:
    from importlib.metadata import version

    clock = {"start": 0.0, "cpu": 0.0}
    count = 0
    for item in _twarc_stream(url, clock):
        if isinstance(item, dict) and "data" in item:
            count += 1
            if count >= n:
                break
    elapsed = time.perf_counter() - clock["start"]
    cpu = time.process_time() - clock["cpu"]
    return {"tweets": count, "seconds": elapsed, "cpu": cpu, "version": version("twarc")}


def _producer_settings(compression: str) -> dict[str, Any]:
    """The daemon's producer settings (bench.rig.daemon_config), for the pipelines."""
    return {"linger_ms": 5, "acks": "all", "compression": compression,
            "enable_idempotence": False, "batch_bytes": 1_048_576}


def twarc_confluent(url: str, bootstrap: str, topic: str, n: int,
                    compression: str) -> dict[str, Any]:
    from confluent_kafka import Producer

    conf = _producer_settings(compression)
    producer = Producer({
        "bootstrap.servers": bootstrap, "linger.ms": conf["linger_ms"],
        "compression.type": conf["compression"], "acks": conf["acks"],
        "enable.idempotence": conf["enable_idempotence"], "batch.size": conf["batch_bytes"],
    })
    producer.list_topics(topic, timeout=10)  # connected before the stream starts
    acked = 0
    failed = 0

    def on_delivery(err: Any, msg: Any) -> None:
        nonlocal acked, failed
        if err is None:
            acked += 1
        else:
            failed += 1

    clock = {"start": 0.0, "cpu": 0.0}
    count = 0
    for tweet in _twarc_stream(url, clock):
        if not (isinstance(tweet, dict) and "data" in tweet):
            continue
        value = json.dumps(tweet).encode()
        while True:
            try:
                producer.produce(topic, value=value, key=tweet["data"]["id"],
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        count += 1
        if count >= n:
            break
    producer.flush(60)
    elapsed = time.perf_counter() - clock["start"]
    cpu = time.process_time() - clock["cpu"]
    return {"tweets": acked, "failed": failed, "seconds": elapsed, "cpu": cpu}


def tweepy_aiokafka(url: str, bootstrap: str, topic: str, n: int,
                    compression: str) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer
    from tweepy.asynchronous import AsyncStreamingClient  # type: ignore[import-untyped]
    from tweepy.asynchronous.streaming import AsyncBaseStream  # type: ignore[import-untyped]

    state = {"count": 0, "acked": 0, "failed": 0, "start": 0.0, "cpu": 0.0}
    done = asyncio.Event()

    def on_ack(future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            state["failed"] += 1
        else:
            state["acked"] += 1
        if state["acked"] + state["failed"] >= n:
            done.set()

    async def run() -> None:
        conf = _producer_settings(compression)
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, linger_ms=conf["linger_ms"], acks=conf["acks"],
            compression_type=None if compression == "none" else compression,
            enable_idempotence=conf["enable_idempotence"], max_batch_size=conf["batch_bytes"],
        )
        await producer.start()
        await producer.partitions_for(topic)  # metadata in before the stream starts

        class Client(AsyncStreamingClient):  # type: ignore[misc]
            # Like StreamingClient, the asyncio one formats the api.twitter.com URL inline.
            async def _connect(self, method: str, endpoint: str, **kwargs: Any) -> None:
                headers = {"Authorization": f"Bearer {self.bearer_token}"}
                await AsyncBaseStream._connect(
                    self, method, f"{url}/2/tweets/{endpoint}/stream", headers=headers,
                    **kwargs)

            async def on_connect(self) -> None:
                state["start"], state["cpu"] = time.perf_counter(), time.process_time()

            async def on_data(self, raw_data: bytes) -> None:
                if state["count"] >= n:
                    return
                tweet = json.loads(raw_data)
                future = await producer.send(topic, raw_data,
                                             key=tweet["data"]["id"].encode())
                future.add_done_callback(on_ack)
                state["count"] += 1
                if state["count"] >= n:
                    self.disconnect()

        client = Client(TOKEN, max_retries=0)
        task = client.filter(
            tweet_fields=TWEET_FIELDS, expansions=EXPANSIONS, user_fields=USER_FIELDS,
            media_fields=MEDIA_FIELDS,
        )
        await done.wait()
        state["seconds"] = time.perf_counter() - state["start"]
        state["cpu"] = time.process_time() - state["cpu"]
        await task
        await producer.stop()

    asyncio.run(run())
    return {"tweets": state["acked"], "failed": state["failed"], "seconds": state["seconds"],
            "cpu": state["cpu"]}


def main(argv: list[str]) -> int:
    kind, args = argv[0], json.loads(argv[1])
    if kind == "raw":
        result = raw_reader(args["url"], args["n"], args.get("save"))
    elif kind == "confluent":
        result = confluent_producer(args["bootstrap"], args["topic"], args["lines"], args["n"],
                                    args["compression"])
    elif kind in ("tweepy", "tweepy-objects"):
        result = tweepy_client(args["url"], args["n"], objects=kind == "tweepy-objects")
    elif kind == "twarc":
        result = twarc_client(args["url"], args["n"])
    elif kind == "twarc-confluent":
        result = twarc_confluent(args["url"], args["bootstrap"], args["topic"], args["n"],
                                 args["compression"])
    elif kind == "tweepy-aiokafka":
        result = tweepy_aiokafka(args["url"], args["bootstrap"], args["topic"], args["n"],
                                 args["compression"])
    else:
        raise SystemExit(f"unknown worker {kind!r}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
