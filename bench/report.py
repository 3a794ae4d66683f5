"""Render a run's results as markdown (bench/RESULTS.md)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import streamd.kafka.publisher

# Targets from the benchmark brief (issues 3 and 7).
E2E_VS_CONFLUENT = 0.6
E2E_VS_TWEEPY = 3.0
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
    if results.get("latency"):
        out += _latency(results["latency"])
    if results.get("memory"):
        out += _memory(results["memory"])
    out += _targets(results)
    if results.get("profile"):
        out += _profile(results["profile"])
    out += _notes(results)
    return "\n".join(out) + "\n"


def _throughput(e2e: Any, ceil: Any, peers: Any) -> list[str]:
    out = ["", "## 1-3. Throughput: daemon, ceilings, peers (same run, same simulator settings)",
           "", "Simulator at full speed (`tweets_per_second=inf`, `match_all`, same "
           "tweet.fields/expansions/user.fields/media.fields for every client: ~1.7 KB "
           "tweets, up to ~3 KB). Each client gets a fresh simulator process.", "",
           "| path | tweets | seconds | tweets/s | MB/s | daemon ÷ this |",
           "|---|---:|---:|---:|---:|---:|"]
    daemon_rate = e2e["rate"] if e2e else math.nan

    def row(label: str, r: dict[str, Any] | None) -> None:
        if not r:
            return
        if r.get("error"):
            out.append(f"| {label} | failed: {r['error'].splitlines()[-1][:120]} | | | | |")
            return
        mbs = r["bytes"] / r["seconds"] / 1e6 if r.get("bytes") and r["seconds"] > 0 else math.nan
        ratio = daemon_rate / r["rate"] if r["rate"] else math.nan
        out.append(f"| {label} | {r['tweets']:,} | {_f(r['seconds'], 2)} | {_f(r['rate'])} | "
                   f"{_f(mbs, 1)} | {_f(ratio, 2)} |")

    if e2e:
        out.append(f"| **streamd run** (simulator -> daemon -> Tansu, acked) | {e2e['tweets']:,} | "
                   f"{_f(e2e['seconds'], 2)} | **{_f(e2e['rate'])}** | | 1.00 |")
    if ceil:
        row("ceiling (a): raw httpx reader, iter_raw + split", ceil["raw"])
        row("ceiling (b): confluent-kafka producer, same lines, linger 5 ms, zstd, acks=all",
            ceil["confluent"])
    if peers:
        row("tweepy StreamingClient, counting in on_data (no parsing)", peers.get("tweepy"))
        row("tweepy StreamingClient, default parsing (Tweet objects, on_response)",
            peers.get("tweepy-objects"))
        row("twarc2 Twarc2.stream (json-decodes each line)", peers.get("twarc"))
    if e2e:
        out += ["", "Daemon resources over the same window (psutil on the daemon pid, from "
                "stream.connected to published == N):", "",
                "| CPU s | CPU s / 10k tweets | CPU utilisation | waiting for a CPU | "
                "peak RSS (VmHWM) | load |",
                "|---:|---:|---:|---:|---:|---|",
                f"| {_f(e2e['cpu_seconds'], 2)} | {_f(e2e['cpu_per_10k'], 3)} | "
                f"{_f(e2e['cpu_util'] * 100)} % of one core | "
                f"{_f(e2e['runqueue_wait'], 2)} s "
                f"({_f(e2e['runqueue_wait'] / e2e['seconds'] * 100)} % of wall) | "
                f"{_f(e2e['peak_rss_mb'], 1)} MB | {e2e['load']} |",
                "", "Waiting for a CPU = runnable but not running (schedstat, all daemon "
                "threads): the share of the window the machine's other load took from the "
                "daemon. CPU-bound ceiling of this daemon build = 10,000 / (CPU s per 10k) = "
                f"{_f(10_000 / e2e['cpu_per_10k'] if e2e['cpu_per_10k'] else math.nan)} "
                "tweets/s on one core of this CPU."]
    loads = [f"{name}: {part['load']}" for name, part in (("ceilings", ceil), ("peers", peers))
             if part]
    if loads:
        out += ["", "Load average during: " + "; ".join(loads) + "."]
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
           " after the drain wait). Spool depth peaked at "
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


def _targets(results: dict[str, Any]) -> list[str]:
    e2e, ceil, peers = results.get("e2e"), results.get("ceilings"), results.get("peers")
    lat, mem = results.get("latency"), results.get("memory")
    rows: list[tuple[str, str, bool | None]] = []
    if e2e and ceil and ceil["confluent"].get("rate"):
        ratio = e2e["rate"] / ceil["confluent"]["rate"]
        rows.append((f"end-to-end >= {E2E_VS_CONFLUENT} x confluent ceiling",
                     f"{ratio:.2f} x", ratio >= E2E_VS_CONFLUENT))
    if e2e and peers and peers.get("tweepy-objects", {}).get("rate"):
        ratio = e2e["rate"] / peers["tweepy-objects"]["rate"]
        rows.append((f"end-to-end >= {E2E_VS_TWEEPY:g} x tweepy's consume-only rate "
                     "(StreamingClient as shipped: each line parsed into Tweet objects, "
                     "handlers do nothing)", f"{ratio:.2f} x", ratio >= E2E_VS_TWEEPY))
    if e2e and peers and peers.get("tweepy", {}).get("rate"):
        ratio = e2e["rate"] / peers["tweepy"]["rate"]
        raw = (ceil or {}).get("raw", {}).get("rate")
        why = ""
        if raw and E2E_VS_TWEEPY * peers["tweepy"]["rate"] > raw:
            why = (f"; {E2E_VS_TWEEPY:g} x this = {E2E_VS_TWEEPY * peers['tweepy']['rate']:,.0f}"
                   f"/s, above the HTTP ceiling ({raw:,.0f}/s): no client can reach it")
        rows.append(("for reference: tweepy with on_data overridden to count raw lines "
                     "(no parsing)", f"{ratio:.2f} x{why}", None))
    if lat:
        for w in lat["windows"]:
            if w["rate"] == 2000:
                p99 = w["exact_ms"][0.99]
                rows.append((f"p99 <= {P99_MS_AT_2K:g} ms at 2,000 tweets/s",
                             f"{p99:.1f} ms", p99 <= P99_MS_AT_2K))
    if e2e:
        rows.append((f"peak RSS <= {PEAK_RSS_MB:g} MB at full speed",
                     f"{e2e['peak_rss_mb']:.1f} MB", e2e["peak_rss_mb"] <= PEAK_RSS_MB))
    if mem and mem["pause"].get("before") and mem["pause"].get("during"):
        growth = mem["pause"]["during"]["peak"] - mem["pause"]["before"]["end"]
        rows.append((f"RSS flat during the broker pause (growth <= {PAUSE_GROWTH_MB:g} MB)",
                     f"+{growth:.1f} MB", growth <= PAUSE_GROWTH_MB))
    if not rows:
        return []
    out = ["", "## Targets", "", "| target | measured | verdict |", "|---|---:|---|"]
    out += [f"| {name} | {value} | {_verdict(ok)} |" for name, value, ok in rows]
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
           "stderr as written) to the first `/metrics` poll (every 50 ms) showing "
           "`streamd_tweets_published_total` == N; CPU = user+system of the daemon pid over "
           "that window; peak RSS = VmHWM (whole life, start-up included).",
           "- Ceilings and peers: each a separate process (`python -m bench.workers`), clock "
           "from response headers to the N-th tweet (confluent: first produce() to flush() "
           "returning with every delivery report in). The raw reader keeps the bytes it read; "
           "the confluent producer publishes exactly those lines, keys = tweet ids, to the "
           "same Tansu, a 3-partition topic like the daemon's.",
           "- tweepy 4.x `StreamingClient._connect` formats "
           "`https://api.twitter.com/2/tweets/{endpoint}/stream` inline (no host attribute), so "
           "the benchmark subclasses it and overrides `_connect` with the simulator's URL. "
           "tweepy's default parsing path raises `KeyError: 'tag'` on `matching_rules` without "
           "a tag, so the simulator's one rule is tagged (`bench tweets:bench`). tweepy reads "
           "with its default `chunk_size=512`.",
           "- twarc2 hard-codes `https://api.twitter.com/2/...` in every method; the benchmark "
           "wraps its requests session's `get` (after `connect()`) to swap the base URL.",
           "- The daemon runs with production defaults (zstd, linger 5 ms, acks=all, "
           "queue_size 10,000) except `enable_idempotence=false` (Tansu) and `rules.mode=off` "
           "(the rule is preloaded on the simulator).",
           "- The simulator's own generation rate bounds every full-speed figure: ceiling (a) "
           "is the simulator+HTTP ceiling, not only the reader's."]
    return out
