"""Render a run's results as markdown (bench/RESULTS.md)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import streamd.kafka.publisher

# Targets (issue 16): CPU per tweet against the peers, measured in the same run. A ratio is
# the peer's CPU microseconds a tweet over the daemon's (end to end, acknowledged): >= 1
# means the daemon spends no more CPU a tweet than that peer.
VS_CONSUME_ONLY = 1.0  # twarc2 consume-only
VS_PIPELINES = 2.0  # each peer pipeline (tweepy + aiokafka, twarc2 + confluent-kafka)
P99_MS_AT_2K = 50.0
PEAK_RSS_MB = 150.0
# "Flat" during a broker pause, stated as a number: RSS grows by at most this much.
PAUSE_GROWTH_MB = 20.0


def _f(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**PASS**" if ok else "**FAIL**")


def spool_integrated() -> bool:
    source = Path(streamd.kafka.publisher.__file__).read_text()
    return "Spool" in source


def render(env: list[tuple[str, str]], results: dict[str, Any], *, quick: bool,
           parts: list[str], seconds: float) -> str:
    out: list[str] = ["# streamd benchmark results", ""]
    out.append(f"`python -m bench{' --quick' if quick else ''}"
               f"{' ' + ' '.join(parts) if parts else ''}` — total wall time {seconds:.0f} s.")
    out += ["", "## Machine and versions", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in env]
    out += [
        "",
        "The machine has 2 cores shared with other engineers running tests, so absolute "
        "numbers drift between runs; compare the ratios, which are measured side by side in "
        "this one run. Phases run one after another; during a throughput phase the "
        "simulator (its own process) takes about one core and the client under test the "
        "other. The load average (1/5 min) before -> after each phase is in its table.",
    ]
    e2e = results.get("e2e")
    ceil = results.get("ceilings")
    peers = results.get("peers")
    if e2e or ceil or peers:
        out += _throughput(e2e, ceil, peers)
    if results.get("stages"):
        out += _stages(results["stages"], e2e)
    if results.get("latency"):
        out += _latency(results["latency"])
    if results.get("memory"):
        out += _memory(results["memory"])
    out += _targets(results)
    if results.get("profile"):
        out += _profile(results["profile"])
    out += _notes(results)
    return "\n".join(out) + "\n"


PEER_LABELS = {
    "twarc": "twarc2 `Twarc2.stream`, consume only (json-decodes each line)",
    "tweepy": "tweepy `StreamingClient`, counting in on_data (no parsing)",
    "tweepy-objects": "tweepy `StreamingClient`, default parsing (Tweet objects, on_response)",
    "tweepy-aiokafka": "pipeline: tweepy `AsyncStreamingClient` + aiokafka `send()` per tweet "
                       "in on_data (acked)",
    "twarc-confluent": "pipeline: twarc2 stream + confluent-kafka `produce()` per tweet, "
                       "`flush()` at the end (acked)",
}


def _throughput(e2e: Any, ceil: Any, peers: Any) -> list[str]:
    compression = (peers or {}).get("compression") or (e2e or {}).get("compression") or "?"
    out = ["", "## 1-3. Throughput and CPU per tweet: daemon, ceilings, peers (same run)",
           "", "Simulator at full speed (`tweets_per_second=inf`, `match_all`, same "
           "tweet.fields/expansions/user.fields/media.fields for every client: ~1.7 KB "
           "tweets, up to ~3 KB). Each client gets a fresh simulator process. **CPU us / "
           "tweet** = the client process's user+system CPU (all its threads) over its clocked "
           "window, divided by the tweets: the figure the targets compare, since a client's "
           "tweets/s is capped by the simulator (about one core) when the client needs less "
           "than a core. **peer ÷ streamd** = that client's CPU a tweet over the daemon's "
           f"(>= 1: the daemon is cheaper). Producers use the daemon's default compression "
           f"(`{compression}`), linger 5 ms, acks=all.", "",
           "| path | tweets | seconds | tweets/s | CPU us / tweet | CPU util | "
           "peer ÷ streamd (CPU/tweet) |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    daemon_cpu = e2e["cpu_us"] if e2e else math.nan

    def row(label: str, r: dict[str, Any] | None) -> None:
        if not r:
            return
        if r.get("error"):
            out.append(f"| {label} | failed: {r['error'].splitlines()[-1][:120]} | | | | | |")
            return
        cpu_us = r.get("cpu_us", math.nan)
        util = r["cpu"] / r["seconds"] * 100 if r.get("cpu") and r["seconds"] > 0 else math.nan
        ratio = cpu_us / daemon_cpu if daemon_cpu else math.nan
        out.append(f"| {label} | {r['tweets']:,} | {_f(r['seconds'], 2)} | {_f(r['rate'])} | "
                   f"{_f(cpu_us, 1)} | {_f(util)} % | {_f(ratio, 2)} |")

    if e2e:
        out.append(f"| **streamd run** (simulator -> daemon -> Tansu, acked) | {e2e['tweets']:,} | "
                   f"{_f(e2e['seconds'], 2)} | **{_f(e2e['rate'])}** | **{_f(daemon_cpu, 1)}** | "
                   f"{_f(e2e['cpu_util'] * 100)} % | 1.00 |")
    if peers:
        for kind, label in PEER_LABELS.items():
            row(label, peers.get(kind))
    if ceil:
        row("ceiling (a): raw httpx reader, iter_raw + split", ceil["raw"])
        row("ceiling (b): confluent-kafka producer, same lines (no reading, no parsing)",
            ceil["confluent"])
    if e2e:
        out += ["", "Daemon resources over the same window (psutil on the daemon pid, from "
                "stream.connected to published == N):", "",
                "| CPU s | CPU us / tweet | of which kernel | CPU utilisation | waiting for a "
                "CPU | peak RSS (VmHWM) | load |",
                "|---:|---:|---:|---:|---:|---:|---|",
                f"| {_f(e2e['cpu_seconds'], 2)} | {_f(e2e['cpu_us'], 1)} | "
                f"{_f(e2e.get('system_us'), 1)} | "
                f"{_f(e2e['cpu_util'] * 100)} % of one core | "
                f"{_f(e2e['runqueue_wait'], 2)} s "
                f"({_f(e2e['runqueue_wait'] / e2e['seconds'] * 100)} % of wall) | "
                f"{_f(e2e['peak_rss_mb'], 1)} MB | {e2e['load']} |",
                "", "Waiting for a CPU = runnable but not running (schedstat, all daemon "
                "threads): the share of the window the machine's other load took from the "
                "daemon. CPU-bound ceiling of this daemon build = 1,000,000 / (CPU us a tweet) "
                f"= {_f(1e6 / e2e['cpu_us'] if e2e['cpu_us'] else math.nan)} "
                "tweets/s on one core of this CPU."]
    loads = [f"{name}: {part['load']}" for name, part in (("ceilings", ceil), ("peers", peers))
             if part]
    if loads:
        out += ["", "Load average during: " + "; ".join(loads) + "."]
    return out


def _stages(st: dict[str, Any], e2e: Any) -> list[str]:
    us = st["us"]
    out = ["", "## Where the daemon's CPU goes, per stage", "",
           f"`python -m bench.stages` on {st['tweets']:,} simulator lines "
           f"({_f(st['line_bytes'])} bytes a line on average), each stage alone in one "
           "process, best of 5 (`time.process_time`), microseconds a tweet. The end-to-end "
           "figure above holds these plus the I/O (httpx/h11 reads, the queue hand-over, "
           "aiokafka's sender and protocol, asyncio/anyio).", "",
           "| stage | us / tweet |", "|---|---:|"]
    out += [f"| {name} | {value:.2f} |" for name, value in us.items()]
    out += ["", "Compression (aiokafka `BatchBuilder` build, per batch as the publisher packs "
            f"them: {st.get('cycle', '?')} records a cycle, 3 partitions, {st['batches']:,} "
            "batches):", "",
            "| codec | build us / tweet | bytes / tweet on the wire |", "|---|---:|---:|"]
    out += [f"| {codec} | {c['build_us']:.2f} | {c['bytes']:,.0f} |"
            for codec, c in st["codecs"].items()]
    if e2e:
        known = (us["framing"] + us["read path (_process)"] + us["pack (partition + append)"]
                 + us["ack tally"])
        out += ["", f"End to end the daemon spent {e2e['cpu_us']:.1f} us a tweet; framing, "
                f"the read path, packing and the ack tally account for {known:.1f}, the "
                "batch build for the codec's figure, the rest is I/O and the event loop."]
    return out


def _latency(lat: dict[str, Any]) -> list[str]:
    bounds = ", ".join(f"{b * 1000:g}" for b in lat["buckets"])
    out = ["", "## 4. Latency: line read -> broker ack, steady rate-limited load", "",
           f"One daemon, simulator rate-limited; {lat['warmup']:g} s warm-up then a "
           f"{lat['seconds']:g} s window per rate. **Exact** = every latency the daemon "
           "measured (its own `read_at` -> ack, recorded by `bench/latency_shim.py`, which "
           "wraps the histogram's `observe` without editing streamd/). **Histogram** = "
           "`streamd_publish_latency_seconds` scraped before/after the window, interpolated "
           f"linearly within buckets (bounds in ms: {bounds}; so e.g. anything between 5 and "
           "10 ms is one bucket).", "",
           "| rate asked | achieved tweets/s | samples | p50 ms | p99 ms | p99.9 ms | max ms | "
           "histogram p50 / p99 / p99.9 ms |",
           "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for w in lat["windows"]:
        e, h = w["exact_ms"], w["histogram_ms"]
        out.append(
            f"| {w['rate']:,.0f} | {_f(w['achieved'])} | {w['samples']:,} | {_f(e[0.5], 1)} | "
            f"{_f(e[0.99], 1)} | {_f(e[0.999], 1)} | {_f(w['max_ms'], 1)} | "
            f"{_f(h[0.5], 1)} / {_f(h[0.99], 1)} / {_f(h[0.999], 1)} |")
    out += ["", f"Load average: {lat['load']}."]
    return out


def _memory(mem: dict[str, Any]) -> list[str]:
    s, tl = mem["settings"], mem["timeline"]

    def row(label: str, w: dict[str, dict[str, float]], a: str, b: str, c: str) -> str:
        start = w[a].get("end", math.nan) if w.get(a) else math.nan
        peak = max(w[b].get("peak", math.nan) if w.get(b) else math.nan,
                   w[c].get("peak", math.nan) if w.get(c) else math.nan)
        end = w[c].get("end", math.nan) if w.get(c) else math.nan
        return f"| {label} | {_f(start, 1)} | {_f(peak, 1)} | {_f(end, 1)} |"

    stream_gap = mem["sent"] - mem["received"]
    undelivered = mem["received"] - mem["duplicates"] - mem["published"]
    disconnects = "; ".join(
        ", ".join(f"{k}={v}" for k, v in d.items()) for d in mem["disconnects"]
    ) or "none"
    out = ["", "## 5. Memory: daemon RSS through a burst and a broker pause", "",
           f"One daemon, simulator at 2,000 tweets/s; RSS sampled every 0.5 s. Burst: "
           f"20,000 tweets/s for {s['burst']:g} s (at t={tl['burst_at']} s), back to 2,000. "
           f"Pause: Tansu SIGSTOPped for {s['pause']:g} s (t={tl['pause_at']} -> "
           f"{tl['resume_at']} s) while tweets keep arriving; then {s['recover']:g} s to "
           "recover.", "",
           "| episode | RSS before (MB) | peak (MB) | end (MB) |", "|---|---:|---:|---:|",
           row("10x burst (before = end of baseline; end = after settling)", mem["burst"],
               "before", "during", "after"),
           row(f"{s['pause']:g} s broker pause (end = {s['recover']:g} s after resume)",
               mem["pause"], "before", "during", "after"),
           "",
           f"Delivery: the simulator wrote {mem['sent']:,} tweet lines; the daemon read "
           f"{mem['received']:,} ({stream_gap:,} written but never read: lost in the socket "
           f"when the stream dropped, X-side behaviour), dropped {mem['duplicates']:,} "
           f"duplicates and published {mem['published']:,} "
           f"({'all it read' if undelivered <= 0 else f'{undelivered:,} read but not acked'}"
           " after the drain wait). Read back from Kafka (confluent-kafka, to the high "
           f"watermarks): {mem.get('topic_records', 0):,} records, "
           f"{mem.get('topic_distinct', 0):,} distinct tweet ids. Spool depth peaked at "
           f"{mem['spool_peak']:,.0f} records during the pause (streamd_spool_messages, polled "
           f"every 2 s). Stream disconnects: {disconnects}.",
           "",
           "Daemon log events during the pause: "
           + (", ".join(f"`{k}` x{v}" for k, v in sorted(mem["events_in_pause"].items()))
              or "none") + ".",
           f"Spool integrated in streamd/kafka/publisher.py at run time: "
           f"{'yes' if spool_integrated() else 'no — this is the in-memory behaviour'}.",
           "", "<details><summary>RSS series (t s, MB)</summary>", "",
           " ".join(f"{t}:{mb}" for t, mb in mem["series"]), "", "</details>",
           "", f"Load average: {mem['load']}."]
    return out


def _why_cpu(e2e: dict[str, Any], peer_cpu: float, need: float,
             st: dict[str, Any] | None) -> str:
    """Why the daemon's CPU a tweet is above `peer_cpu / need`: where its microseconds go,
    measured per stage (bench.stages) in the same run."""
    budget = peer_cpu / need
    why = (f"the budget is {budget:.1f} us a tweet ({peer_cpu:.1f} / {need:g}); the daemon "
           f"spends {e2e['cpu_us']:.1f}")
    if not st:
        return why + "; see bench/PERFORMANCE.md"
    us = st["us"]
    read = us["framing"] + us["read path (_process)"]
    codec = st["codecs"].get(st.get("default_codec", ""), {}).get("build_us", 0.0)
    publish = us["pack (partition + append)"] + codec + us["ack tally"]
    rest = max(0.0, e2e["cpu_us"] - read - publish)
    why += (f". Measured per stage: reading X {read:.1f} (framing; one orjson parse of the "
            f"whole line, {us['orjson.loads alone']:.1f}, which is what finds the lines the DLQ "
            "must take; validation of ids, dates and rule headers; the duplicate-id check; the "
            "record and its CloudEvents headers; dedup), building the Kafka batches "
            f"{publish:.1f} (murmur2 key partitioning {us['partition (murmur2)']:.1f}, "
            f"aiokafka's record batch, {st.get('default_codec', '?')} {codec:.1f}), and "
            f"{rest:.1f} of I/O on both sides (httpx/h11 reads, aiokafka's sender and "
            "protocol, the event loop)")
    if read + publish > budget:
        why += (f". The stages that make the daemon's contract (a DLQ verdict, a key and "
                f"headers for every line, keyed and compressed batches) come to "
                f"{read + publish:.1f} before any I/O: above the budget with no I/O at all")
    else:
        why += (f". Reading and batch building ({read + publish:.1f}) fit the budget; the "
                f"I/O ({rest:.1f}) does not: the peer has no Kafka side (or no parsing)")
    return why + "; see bench/PERFORMANCE.md"


def _targets(results: dict[str, Any]) -> list[str]:
    e2e, peers = results.get("e2e"), results.get("peers")
    lat, mem, st = results.get("latency"), results.get("memory"), results.get("stages")
    rows: list[tuple[str, str, bool | None, str]] = []
    if e2e and peers:
        checks = [("twarc", VS_CONSUME_ONLY, "twarc2 consume-only")]
        checks += [(kind, VS_PIPELINES, PEER_LABELS[kind].split(": ", 1)[1].split(" (")[0])
                   for kind in ("tweepy-aiokafka", "twarc-confluent")]
        for kind, need, label in checks:
            r = peers.get(kind) or {}
            if not r.get("cpu_us"):
                rows.append((f"streamd (acked) >= {need:g} x {label}, CPU per tweet",
                             "not measured", None, r.get("error", "")[-200:]))
                continue
            ratio = r["cpu_us"] / e2e["cpu_us"]
            ok = ratio >= need
            rows.append((f"streamd (acked) >= {need:g} x {label}, CPU per tweet",
                         f"{ratio:.2f} x ({r['cpu_us']:.1f} vs {e2e['cpu_us']:.1f} us)", ok,
                         "" if ok else _why_cpu(e2e, r["cpu_us"], need, st)))
    if lat:
        for w in lat["windows"]:
            if w["rate"] == 2000:
                p99 = w["exact_ms"][0.99]
                rows.append((f"p99 read -> ack <= {P99_MS_AT_2K:g} ms at 2,000 tweets/s",
                             f"{p99:.1f} ms", p99 <= P99_MS_AT_2K, ""))
    peaks = []
    if e2e:
        peaks.append(("full speed", e2e["peak_rss_mb"]))
    if mem:
        mem_peak = max((mb for _, mb in mem["series"]), default=math.nan)
        peaks.append(("burst and pause", mem_peak))
    if peaks:
        worst = max(mb for _, mb in peaks)
        rows.append((f"peak RSS <= {PEAK_RSS_MB:g} MB",
                     ", ".join(f"{mb:.1f} MB ({where})" for where, mb in peaks),
                     worst <= PEAK_RSS_MB, ""))
    if mem and mem["pause"].get("before") and mem["pause"].get("during"):
        growth = mem["pause"]["during"]["peak"] - mem["pause"]["before"]["end"]
        rows.append((f"RSS flat through the {mem['settings']['pause']:g} s broker pause "
                     f"(growth <= {PAUSE_GROWTH_MB:g} MB)",
                     f"+{growth:.1f} MB", growth <= PAUSE_GROWTH_MB, ""))
    if mem and "topic_distinct" in mem:
        expected = mem["received"] - mem["duplicates"]
        lost = max(0, expected - mem["topic_distinct"])
        twice = mem["topic_records"] - mem["topic_distinct"]
        gap = mem["sent"] - mem["received"]
        rows.append(("zero loss in the memory phase (every tweet read is in Kafka)",
                     f"{lost:,} lost: {mem['topic_distinct']:,} distinct tweet ids in the topic "
                     f"for {expected:,} read (less duplicates dropped); {twice:,} records "
                     "written twice (at least once)"
                     + (f"; {gap:,} written by the simulator but never read" if gap else ""),
                     lost == 0, ""))
    if not rows:
        return []
    out = ["", "## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    out += [f"| {name} | {value} | {_verdict(ok)} |" for name, value, ok, _ in rows]
    reasons = [(name, why) for name, _, ok, why in rows if ok is False and why]
    if reasons:
        out += ["", "Why a target is not met:", ""]
        out += [f"- **{name}**: {why}." for name, why in reasons]
    return out


def _profile(prof: dict[str, Any]) -> list[str]:
    out = ["", "## Daemon profile at full speed (py-spy)", "",
           f"`py-spy record --idle --rate 200 --format raw --function` on the daemon pid "
           f"over a separate full-speed end-to-end run ({prof['samples']:,} busy samples; that "
           f"run's rate under the sampler: {_f(prof.get('rate'))} tweets/s, not the "
           "throughput figure). The event loop (main thread) was idle in epoll for "
           f"**{_f(prof.get('main_idle_pct'))} %** of its samples. Self = the function itself "
           "on CPU; inclusive = it or its callees (entry points above 90 % omitted); both as "
           "% of busy samples (waits excluded).", "",
           "| self % | function |", "|---:|---|"]
    out += [f"| {pct:.1f} | `{name}` |" for name, pct in prof["self"]]
    out += ["", "| inclusive % | function |", "|---:|---|"]
    out += [f"| {pct:.1f} | `{name}` |" for name, pct in prof["inclusive"]]
    return out


def _notes(results: dict[str, Any]) -> list[str]:
    out = ["", "## Method notes", "",
           "- End-to-end clock: from the daemon's `stream.connected` log line (read from its "
           "stderr as written) to the first `/metrics` poll (every 50 ms once 80 % are "
           "published, every 0.5 s before: a scrape costs the daemon CPU) showing "
           "`streamd_tweets_published_total` == N; CPU = user+system of the daemon pid over "
           "that window; peak RSS = VmHWM (whole life, start-up included).",
           "- Ceilings and peers: each a separate process (`python -m bench.workers`), clock "
           "and CPU (`time.process_time`, every thread of the process) from response headers "
           "to the N-th tweet; for the pipelines and the confluent ceiling, to the last "
           "acknowledgement (aiokafka: every send() future done; confluent-kafka: flush() "
           "returning with every delivery report in). The raw reader keeps the bytes it read; "
           "the confluent ceiling publishes exactly those lines, keys = tweet ids, to the "
           "same Tansu, a 3-partition topic like the daemon's. The pipelines publish to their "
           "own 3-partition topics, keyed by tweet id like the daemon (the id is what a user "
           "keys by; tweepy's on_data gets the raw line, so it json-decodes it for the id; "
           "twarc2 yields dicts, so it json-encodes the tweet to produce it).",
           "- tweepy + aiokafka: aiokafka's send() is a coroutine, so the pipeline uses "
           "tweepy's asyncio StreamingClient (`tweepy.asynchronous.AsyncStreamingClient`, "
           "aiohttp; the `tweepy[async]` extra), whose on_data can await it; the synchronous "
           "StreamingClient calls on_data outside any event loop, so each send() would have "
           "to be handed to a loop running in another thread (`run_coroutine_threadsafe`).",
           "- CPU is what the kernel charges to the process (user + system). On loopback the "
           "receiving side's TCP work may be charged to softirq time rather than to the "
           "sender, the same way for every client measured here.",
           "- tweepy 4.x `StreamingClient._connect` formats "
           "`https://api.twitter.com/2/tweets/{endpoint}/stream` inline (no host attribute), so "
           "the benchmark subclasses it and overrides `_connect` with the simulator's URL. "
           "tweepy's default parsing path raises `KeyError: 'tag'` on `matching_rules` without "
           "a tag, so the simulator's one rule is tagged (`bench tweets:bench`). tweepy reads "
           "with its default `chunk_size=512`.",
           "- twarc2 hard-codes `https://api.twitter.com/2/...` in every method; the benchmark "
           "wraps its requests session's `get` (after `connect()`) to swap the base URL.",
           "- The daemon runs with production defaults (kafka.compression's default, linger "
           "5 ms, acks=all, "
           "queue_size 10,000) except `enable_idempotence=false` (Tansu) and `rules.mode=off` "
           "(the rule is preloaded on the simulator).",
           "- The simulator's own generation rate bounds every full-speed figure: ceiling (a) "
           "is the simulator+HTTP ceiling, not only the reader's."]
    return out
