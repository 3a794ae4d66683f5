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
"""

from __future__ import annotations

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
        start = time.perf_counter()
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
    if save is not None:
        Path(save).write_bytes(b"".join(chunks))
    return {"tweets": count, "seconds": elapsed, "bytes": nbytes}


def confluent_producer(bootstrap: str, topic: str, lines_path: str, n: int) -> dict[str, Any]:
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
        "compression.type": "zstd",
        "acks": "all",
        "enable.idempotence": False,  # Tansu's memory store has no idempotent producer
        "batch.size": 1_048_576,      # the daemon's kafka.max_batch_bytes
    })
    producer.list_topics(topic, timeout=10)  # connect before the clock starts
    start = time.perf_counter()
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
    return {"tweets": acked, "failed": failed, "seconds": elapsed,
            "bytes": sum(len(v) for v in lines)}


def tweepy_client(url: str, n: int, objects: bool) -> dict[str, Any]:
    import tweepy  # type: ignore[import-untyped]
    from tweepy.streaming import BaseStream  # type: ignore[import-untyped]

    state = {"count": 0, "start": 0.0, "end": 0.0}

    class BenchClient(tweepy.StreamingClient):  # type: ignore[misc]
        # StreamingClient._connect builds f"https://api.twitter.com/2/tweets/{endpoint}/stream"
        # inline (no host attribute to patch), so this override is its base-URL patch.
        def _connect(self, method: str, endpoint: str, **kwargs: Any) -> None:
            self.session.headers["Authorization"] = f"Bearer {self.bearer_token}"
            BaseStream._connect(self, method, f"{url}/2/tweets/{endpoint}/stream", **kwargs)

        def on_connect(self) -> None:
            state["start"] = time.perf_counter()

        def _count(self) -> None:
            state["count"] += 1
            if state["count"] >= n:
                state["end"] = time.perf_counter()
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
            "version": tweepy.__version__}


def twarc_client(url: str, n: int) -> dict[str, Any]:
    from importlib.metadata import version

    from twarc.client2 import Twarc2  # type: ignore[import-untyped]

    twarc = Twarc2(bearer_token=TOKEN)
    twarc.connect()
    session_get = twarc.client.get

    # Twarc2 writes every endpoint as a literal "https://api.twitter.com/2/..." URL; its
    # requests session is the one place all of them pass, so the base URL is swapped there.
    def get(target: str, *args: Any, **kwargs: Any) -> Any:
        resp = session_get(target.replace(X_HOST, url, 1), *args, **kwargs)
        clock["start"] = time.perf_counter()  # headers in: the same start as the others
        return resp

    clock = {"start": 0.0}
    twarc.client.get = get
    count = 0
    for item in twarc.stream(
        tweet_fields=",".join(TWEET_FIELDS), expansions=",".join(EXPANSIONS),
        user_fields=",".join(USER_FIELDS), media_fields=",".join(MEDIA_FIELDS),
    ):
        if isinstance(item, dict) and "data" in item:
            count += 1
            if count >= n:
                break
    elapsed = time.perf_counter() - clock["start"]
    return {"tweets": count, "seconds": elapsed, "version": version("twarc")}


def main(argv: list[str]) -> int:
    kind, args = argv[0], json.loads(argv[1])
    if kind == "raw":
        result = raw_reader(args["url"], args["n"], args.get("save"))
    elif kind == "confluent":
        result = confluent_producer(args["bootstrap"], args["topic"], args["lines"], args["n"])
    elif kind in ("tweepy", "tweepy-objects"):
        result = tweepy_client(args["url"], args["n"], objects=kind == "tweepy-objects")
    elif kind == "twarc":
        result = twarc_client(args["url"], args["n"])
    else:
        raise SystemExit(f"unknown worker {kind!r}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
