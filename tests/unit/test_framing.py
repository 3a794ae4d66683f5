"""Line framing across arbitrary chunk boundaries."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd.x.framing import Frame, LineFramer, Oversize

TWEET = b'{"data":{"id":"1","text":"hi","edit_history_tweet_ids":["1"]},"matching_rules":[]}'
OP_DISCONNECT = (
    b'{"errors":[{"title":"operational-disconnect","disconnect_type":"OperationalDisconnect",'
    b'"type":"https://api.twitter.com/2/problems/operational-disconnect"}]}'
)
STREAM = TWEET + b"\r\n\r\n" + TWEET + b"\r\n\r\n\r\n" + OP_DISCONNECT + b"\r\n"
EXPECTED: list[Frame] = [TWEET, b"", TWEET, b"", b"", OP_DISCONNECT]


def feed_all(framer: LineFramer, chunks: list[bytes]) -> list[Frame]:
    out: list[Frame] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


def test_one_chunk() -> None:
    framer = LineFramer(1 << 20)
    assert framer.feed(STREAM) == EXPECTED
    assert framer.pending() == 0
    assert framer.finish() == b""


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_split_at_every_byte(cut: int) -> None:
    framer = LineFramer(1 << 20)
    assert feed_all(framer, [STREAM[:cut], STREAM[cut:]]) == EXPECTED
    assert framer.pending() == 0


def test_three_way_splits_around_delimiters() -> None:
    for a in range(len(STREAM) + 1):
        for b in range(a, min(a + 4, len(STREAM) + 1)):
            framer = LineFramer(1 << 20)
            assert feed_all(framer, [STREAM[:a], STREAM[a:b], STREAM[b:]]) == EXPECTED


def test_byte_by_byte() -> None:
    framer = LineFramer(1 << 20)
    assert feed_all(framer, [STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_heartbeats_only() -> None:
    framer = LineFramer(16)
    assert feed_all(framer, [b"\r", b"\n\r", b"\n", b"\r\n\r\n"]) == [b"", b"", b"", b""]


def test_bare_newline_tolerated_and_inner_cr_kept() -> None:
    framer = LineFramer(64)
    assert framer.feed(b"a\nb\r\nc\rd\r\n\n") == [b"a", b"b", b"c\rd", b""]


def test_empty_chunk_is_noop() -> None:
    framer = LineFramer(8)
    assert framer.feed(b"") == []
    assert framer.feed(b"ab") == []
    assert framer.feed(b"") == []
    assert framer.pending() == 2


def test_truncated_tail_at_eof() -> None:
    framer = LineFramer(1 << 20)
    cut = STREAM.index(OP_DISCONNECT) + 20
    frames = framer.feed(STREAM[:cut])
    assert frames == EXPECTED[:-1]
    assert framer.pending() == 20
    assert framer.finish() == OP_DISCONNECT[:20]
    assert framer.pending() == 0
    assert framer.finish() == b""


@pytest.mark.parametrize("limit", [1, 2, 5, 10])
def test_line_exactly_at_limit_is_normal(limit: int) -> None:
    line = b"x" * limit
    for cut in range(limit + 3):
        data = line + b"\r\n" + b"y" * (limit + 1) + b"\r\n"
        framer = LineFramer(limit)
        frames = feed_all(framer, [data[:cut], data[cut:]])
        assert frames == [line, Oversize(b"y" * limit, limit + 1)]


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 1000])
def test_oversize_one_frame_with_prefix_and_length(chunk_size: int) -> None:
    big = bytes(range(256)) * 4  # 1024 bytes, no \n
    big = big.replace(b"\n", b"_")
    data = TWEET + b"\r\n" + big + b"\r\n\r\n" + TWEET + b"\r\n"
    framer = LineFramer(50)
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    frames = feed_all(framer, chunks)
    tweet = Oversize(TWEET[:50], len(TWEET))
    assert frames == [tweet, Oversize(big[:50], 1024), b"", tweet]
    assert framer.pending() == 0


def test_oversize_cr_at_chunk_edge() -> None:
    framer = LineFramer(4)
    assert framer.feed(b"abcdefgh\r") == []
    assert framer.feed(b"\nok\r\n") == [Oversize(b"abcd", 8), b"ok"]
    framer = LineFramer(4)
    assert framer.feed(b"abcdefgh\r") == []
    assert framer.feed(b"x\r") == []  # the \r was content after all
    assert framer.feed(b"\n") == [Oversize(b"abcd", 10)]


def test_oversize_memory_bounded_for_huge_line() -> None:
    """A gigabyte-scale line without a delimiter never grows the buffer past the limit."""
    limit = 1000
    framer = LineFramer(limit)
    chunk = b"z" * 65536
    total = 0
    for _ in range(2000):  # 131 MB through the framer; only counted
        assert framer.feed(chunk) == []
        total += len(chunk)
        assert framer.pending() <= limit
    assert framer.feed(b"tail\r\nnext\r\n") == [Oversize(b"z" * limit, total + 4), b"next"]
    assert framer.pending() == 0


def test_oversize_truncated_at_eof() -> None:
    framer = LineFramer(3)
    framer.feed(b"abcdefgh")
    assert framer.pending() == 3
    assert framer.finish() == b"abc"
    assert framer.feed(b"ok\r\n") == [b"ok"]


def test_invalid_limit() -> None:
    with pytest.raises(ValueError, match="max_line_bytes"):
        LineFramer(0)


# Lines never contain \n; they may contain \r except as their last byte (that \r would be
# indistinguishable from the delimiter's).
_line = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"").rstrip(b"\r"))


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(_line, max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=30),
    bare_lf=st.booleans(),
    limit=st.integers(min_value=1, max_value=80),
)
def test_random_chunkings_reproduce_lines(
    lines: list[bytes], cuts: list[int], bare_lf: bool, limit: int
) -> None:
    delimiter = b"\n" if bare_lf else b"\r\n"
    data = b"".join(line + delimiter for line in lines)
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    framer = LineFramer(limit)
    frames = feed_all(framer, chunks)
    expected: list[Frame] = [
        line if len(line) <= limit else Oversize(line[:limit], len(line)) for line in lines
    ]
    assert frames == expected
    assert framer.pending() == 0
    assert framer.finish() == b""


def test_many_lines_across_chunk_boundaries() -> None:
    """200,000 lines cut into 16 KiB chunks come out whole (the speed of this path is
    measured in bench/, not here)."""
    lines = 200_000
    data = (TWEET * 5 + b"\r\n") * lines  # ~420-byte lines
    chunks = [data[i : i + 16384] for i in range(0, len(data), 16384)]
    framer = LineFramer(1 << 20)
    frames = [frame for chunk in chunks for frame in framer.feed(chunk)]
    assert len(frames) == lines
    assert set(frames) == {TWEET * 5}


# --- blank_lines: runs of heartbeats counted without framing them (security issue, item 2) ---


def frames_with_fast_path(framer: LineFramer, chunks: list[bytes]) -> list[Frame]:
    out: list[Frame] = []
    for chunk in chunks:
        beats = framer.blank_lines(chunk)
        if beats is None:
            out.extend(framer.feed(chunk))
        else:
            out.extend([b""] * beats)
    return out


@settings(max_examples=500, deadline=None)
@given(
    data=st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b"x", b"\r\r\n", b"{}"]),
                  max_size=40).map(b"".join),
    cuts=st.lists(st.integers(0, 80), max_size=8),
    limit=st.integers(1, 6),
)
def test_blank_lines_takes_a_chunk_exactly_as_feed_would(
    data: bytes, cuts: list[int], limit: int
) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    fast, plain = LineFramer(limit), LineFramer(limit)
    assert frames_with_fast_path(fast, chunks) == feed_all(plain, chunks)
    assert fast.pending() == plain.pending()
    assert fast.finish() == plain.finish()


def test_blank_lines_counts_a_bomb_slice_split_anywhere() -> None:
    bomb = b"\r\n" * (1 << 16)
    framer = LineFramer(1024)
    total = 0
    # odd boundaries: each slice opens with the "\n" of a "\r" the one before left pending
    for start in (0, *range(1, len(bomb), 65536)):
        end = 1 if start == 0 else start + 65536
        beats = framer.blank_lines(bomb[start:end])
        assert beats is not None
        total += beats
    assert total == 1 << 16
    assert framer.pending() == 0
    assert framer.blank_lines(b'{"data":{}}\r\n') is None
    assert framer.blank_lines(b"\r\nx\r\n") is None
