"""1,000 random malformed, truncated, oversized and non-UTF-8 lines, and tweets with odd
`data.id` values, mixed into a live stream: each lands on the DLQ (or is counted as an error
message), the daemon does not crash, and no valid tweet is lost."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from rig import DaemonProcess, daemon_config, read_topic

from streamd.dev.broker import LocalBroker
from streamd.records import OutRecord
from streamd.simulator import Fault, Simulator, SimulatorConfig
from streamd.x.lines import interpret_line

pytestmark = pytest.mark.broker

MAX_LINE = 2048
_TWEET = orjson.dumps({
    "data": {"id": "1999999999999999999", "text": "synthetic \u00e9t\u00e9 \U0001f600",
             "author_id": "42", "created_at": "2026-01-01T00:00:00.000Z"},
    "matching_rules": [{"id": "1", "tag": "t"}],
})

no_newline = st.binary(min_size=1, max_size=400).filter(lambda b: b"\n" not in b)
truncated = st.integers(1, len(_TWEET) - 1).map(lambda n: _TWEET[:n])
oversized = st.integers(MAX_LINE + 1, 6 * MAX_LINE).map(
    lambda n: (b'{"data":{"id":"7","text":"' + b"x" * n + b'"}}'))
non_utf8 = st.binary(min_size=1, max_size=8).filter(
    lambda b: b"\n" not in b and b"\r" not in b
).map(lambda junk: _TWEET.replace(b"synthetic", b"synthetic" + b"\xff\xfe" + junk))
# Tweets whose data.id is not a canonical X id. Before ids were validated, "²" reached the
# deduplicator's int() and killed the daemon; each must now be on the DLQ as `validate`.
# (Ids past int()'s 4,300 digits would not fit MAX_LINE; tests/unit/test_records.py has them.)
ODD_ID_MARK = "odd-id-fuzz"
odd_id_value = st.one_of(
    st.sampled_from(["\u00b2", "\u0661\u0662\u0663", "", " 1", "+1", "01",
                     "12345678901234567890", None, 1790000000000000001, 1.5, True, ["1"],
                     {"id": "1"}]),
    st.text(max_size=30).filter(lambda t: re.fullmatch(r"0|[1-9][0-9]{0,18}", t) is None),
    st.integers(20, 1900).map(lambda n: "9" * n),
)
odd_id = odd_id_value.map(lambda v: orjson.dumps({
    "data": {"id": v, "text": ODD_ID_MARK}, "matching_rules": [{"id": "1", "tag": "t"}],
}))
bad_line = st.one_of(no_newline, truncated, oversized, non_utf8, odd_id).filter(
    # a line that frames as empty is a heartbeat, not data
    lambda b: b.rstrip(b"\r") != b""
)


def expected_dlq(line: bytes) -> bytes | None:
    """The DLQ value for a line streamd must dead-letter, or None (tweet or error message)."""
    # On the wire the line is followed by "\r\n"; the framer strips exactly that, so even a
    # line that ends in "\r" itself comes back whole.
    if len(line) > MAX_LINE:
        return line[:MAX_LINE]
    out = interpret_line(line, ce_source=b"x")
    return out.value if isinstance(out, OutRecord) and out.dlq else None


# Each example runs a whole daemon: no shrinking (it would rerun it hundreds of times).
def expected_tweet(line: bytes) -> str | None:
    if len(line) > MAX_LINE:
        return None
    out = interpret_line(line, ce_source=b"x")
    return out.tweet_id if isinstance(out, OutRecord) and not out.dlq else None


@settings(max_examples=3, deadline=None, database=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(lines=st.lists(bad_line, min_size=1000, max_size=1000))
def test_random_bad_lines_are_dead_lettered_and_no_tweet_is_lost(
    lines: list[bytes], broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory,
    run_daemon: Callable[..., DaemonProcess],
) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    topic = f"fuzz-{time.monotonic_ns()}"
    broker.create_topic(topic, partitions=2)
    broker.create_topic(topic + ".dlq", partitions=1)
    with Simulator(SimulatorConfig(port=0, tweets_per_second=400.0, heartbeat_interval=0.5,
                                   match_all=True, seed=len(lines[0]),
                                   rule_propagation_delay=0.0)) as sim:
        sim.add_rules([("cat", "cats")])
        d = run_daemon(daemon_config(sim.url, broker.bootstrap, topic, topic + ".dlq",
                                     Path(tmp), stream={"max_line_bytes": MAX_LINE}),
                       name=f"{topic}.toml")
        d.wait_event("stream.connected")
        for i in range(0, len(lines), 100):  # mixed in between tweets
            sim.inject(Fault.raw(lines[i:i + 100]))
            time.sleep(0.05)
        time.sleep(1.0)
        sim.set_rate(0.0)
        time.sleep(1.0)
        assert d.proc.poll() is None, "the daemon died"
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
        assert len(d.named("stream.connected")) == 1  # bad lines never cost the connection
        sent = {t.id for t in sim.sent_tweets()}
    got = read_topic(broker.bootstrap, topic, idle=3.0, timeout=60)
    # Hypothesis also draws byte literals found in the code under test, some of which are
    # valid tweets: those must be published like any other tweet.
    sent |= {tweet_id for tweet_id in map(expected_tweet, lines) if tweet_id is not None}
    assert {r.key.decode() for r in got if r.key} == sent  # no valid tweet lost
    want = [v for v in (expected_dlq(line) for line in lines) if v is not None]
    dlq = read_topic(broker.bootstrap, topic + ".dlq", expect=len(want), timeout=60)
    assert sorted(r.value for r in dlq) == sorted(want)
    assert all(r.headers["streamd_dlq_reason"] in (b"decode", b"validate", b"oversize")
               for r in dlq)
    odd = {line for line in lines if ODD_ID_MARK.encode() in line}
    reasons = {r.value: r.headers["streamd_dlq_reason"] for r in dlq}
    assert all(reasons.get(line) == b"validate" for line in odd)
    assert not odd & {r.value for r in got}
