"""The durable spool: ordering, accounting, SpoolFull, reopen, headers and tags, schema
versions, crash safety, ids."""

from __future__ import annotations

import importlib.util
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd.errors import SpoolFull, SpoolInUse, StreamdError
from streamd.kafka.spool import (
    DB_NAME,
    Spool,
    decode_headers,
    decode_tags,
    encode_headers,
    encode_tags,
)
from streamd.records import OutRecord

WRITER = Path(__file__).with_name("spool_crash_writer.py")


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def entry(n: int, size: int = 100, **overrides: object) -> OutRecord:
    fields: dict[str, object] = {
        "dlq": False,
        "key": f"k{n}".encode(),
        "value": f"v{n}:".encode().ljust(size, b"."),
        "timestamp_ms": 1_700_000_000_000 + n,
        "headers": [("h", b"\x00\xff")],
        "tweet_id": str(n),
        "tags": ("cats",) if n % 2 else (),
        "read_at": 0.0,
    }
    fields.update(overrides)
    return OutRecord(**fields)  # type: ignore[arg-type]


class Stored(NamedTuple):
    """What the spool keeps of a record (everything but the monotonic read time)."""

    dlq: bool
    key: bytes | None
    value: bytes
    timestamp_ms: int
    headers: list[tuple[str, bytes]]
    tweet_id: str | None
    tags: tuple[str, ...]


def stored(r: OutRecord) -> Stored:
    return Stored(r.dlq, r.key, r.value, r.timestamp_ms, r.headers, r.tweet_id, r.tags)


def size_of(e: OutRecord | Stored) -> int:
    return len(e.value) + len(e.key or b"") + len(encode_headers(e.headers))


def everything(spool: Spool) -> list[tuple[int, Stored]]:
    return [(seq, stored(r)) for seq, r in spool.peek(limit=1 << 30, max_bytes=1 << 40)]


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool", max_bytes=1 << 20) as s:
        yield s


# -- ordering ---------------------------------------------------------------------------------


def test_append_returns_increasing_seqs_and_peek_is_oldest_first(spool: Spool) -> None:
    first = spool.append([entry(0), entry(1), entry(2)])
    second = spool.append([entry(3), entry(4)])
    seqs = first + second
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5
    assert everything(spool) == list(
        zip(seqs, [stored(entry(i)) for i in range(5)], strict=True)
    )


def test_peek_does_not_remove_and_delete_removes_only_given(spool: Spool) -> None:
    seqs = spool.append([entry(i) for i in range(6)])
    assert len(spool.peek()) == 6
    assert len(spool.peek()) == 6
    spool.delete([seqs[0], seqs[2]])
    assert [s for s, _ in everything(spool)] == [seqs[1], *seqs[3:]]
    spool.delete(seqs[1:4])
    assert [s for s, _ in everything(spool)] == seqs[4:]


def test_peek_skips_given_seqs_without_counting_them(spool: Spool) -> None:
    seqs = spool.append([entry(i, size=1000) for i in range(8)])
    one = size_of(entry(0, size=1000))
    skip = frozenset(seqs[:5])  # e.g. rows shadowing batches still in flight
    got = spool.peek(limit=2, max_bytes=10 * one, skip=skip)
    assert [s for s, _ in got] == seqs[5:7]
    # skipped rows do not use up the byte budget either
    got = spool.peek(limit=100, max_bytes=2 * one, skip=skip)
    assert [s for s, _ in got] == seqs[5:7]
    assert spool.peek(skip=frozenset(seqs)) == []


def test_peek_limit_and_max_bytes(spool: Spool) -> None:
    spool.append([entry(i, size=1000) for i in range(10)])
    assert len(spool.peek(limit=3)) == 3
    one = size_of(entry(0, size=1000))
    assert len(spool.peek(max_bytes=one * 4)) == 4
    assert len(spool.peek(max_bytes=one * 4 + one - 1)) == 4
    # An entry bigger than max_bytes still comes out, alone, or it would block the spool.
    assert len(spool.peek(max_bytes=10)) == 1
    assert spool.peek(limit=0) == []


def test_empty_batches_are_no_ops(spool: Spool) -> None:
    assert spool.append([]) == []
    spool.delete([])
    assert spool.count == 0
    assert spool.peek() == []


def test_delete_ignores_unknown_and_repeated_seqs(spool: Spool) -> None:
    seqs = spool.append([entry(i) for i in range(3)])
    spool.delete([seqs[0], seqs[0], 999_999])
    spool.delete([seqs[0]])
    assert spool.count == 2
    assert spool.bytes == size_of(entry(1)) + size_of(entry(2))


def test_delete_of_many_seqs_in_one_call(spool: Spool) -> None:
    seqs = spool.append([entry(i, size=10) for i in range(2500)])
    spool.delete(seqs[:2400])
    assert spool.count == 100
    assert [s for s, _ in everything(spool)] == seqs[2400:]


def test_seqs_are_never_reused_even_after_draining_and_reopening(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        seqs = s.append([entry(1), entry(2)])
        s.delete(seqs)
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        assert s.append([entry(3)])[0] > seqs[-1]


# -- entry fields -----------------------------------------------------------------------------


def test_all_fields_round_trip(spool: Spool) -> None:
    odd = [
        entry(1, dlq=True, key=None, tweet_id=None, headers=[]),
        entry(2, value=b"", headers=[("a", b""), ("", b"x"), ("a", b"dup")]),
        entry(3, value=bytes(range(256)) * 3, timestamp_ms=0),
        entry(4, key=b"", timestamp_ms=2**62),
        entry(5, tags=("cats", "dogs", "", "\ud800 lone", "cats")),
        entry(6, tags=()),
    ]
    spool.append(odd)
    assert [e for _, e in everything(spool)] == [stored(e) for e in odd]


header_lists = st.lists(
    st.tuples(st.text(max_size=20), st.binary(max_size=300)),
    max_size=6,
)


@given(header_lists)
def test_header_encoding_is_lossless(headers: list[tuple[str, bytes]]) -> None:
    assert decode_headers(encode_headers(headers)) == headers


def test_headers_with_arbitrary_bytes_round_trip_through_the_spool(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 30) as spool:

        @settings(max_examples=60, deadline=None)
        @given(st.lists(header_lists, min_size=1, max_size=4))
        def check(batches_headers: list[list[tuple[str, bytes]]]) -> None:
            entries = [entry(i, headers=h) for i, h in enumerate(batches_headers)]
            seqs = spool.append(entries)
            got = spool.peek(limit=len(entries), max_bytes=1 << 30)
            assert [(seq, stored(r)) for seq, r in got] == list(
                zip(seqs, map(stored, entries), strict=True))
            spool.delete(seqs)

        check()


# -- accounting and limits --------------------------------------------------------------------


def test_count_and_bytes_track_appends_and_deletes_across_reopen(tmp_path: Path) -> None:
    entries = [entry(i, size=50 + i) for i in range(20)]
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        seqs = s.append(entries)
        assert s.count == 20
        assert s.bytes == sum(map(size_of, entries))
        s.delete(seqs[:5])
        expected_bytes = sum(map(size_of, entries[5:]))
        assert (s.count, s.bytes) == (15, expected_bytes)
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        assert (s.count, s.bytes) == (15, expected_bytes)
        assert [e for _, e in everything(s)] == [stored(e) for e in entries[5:]]


def test_spool_full_writes_nothing(tmp_path: Path) -> None:
    one = size_of(entry(0))
    with Spool(tmp_path, max_bytes=one * 5) as s:
        s.append([entry(i) for i in range(3)])
        before = everything(s)
        with pytest.raises(SpoolFull) as raised:
            s.append([entry(i) for i in range(3, 6)])
        assert str(tmp_path) in str(raised.value)
        assert isinstance(raised.value, StreamdError)
        assert everything(s) == before
        assert (s.count, s.bytes) == (3, one * 3)
    with Spool(tmp_path, max_bytes=one * 5) as s:
        assert everything(s) == before
        assert (s.count, s.bytes) == (3, one * 3)
        # Exactly filling is allowed.
        s.append([entry(3), entry(4)])
        assert s.bytes == s.max_bytes


def test_disk_full_is_spool_full_and_writes_nothing(spool: Spool) -> None:
    spool.append([entry(0)])
    before = everything(spool)
    # Simulate a full disk: SQLite reports SQLITE_FULL when it may not grow the file.
    (pages,) = spool._conn.execute("PRAGMA page_count").fetchone()
    spool._conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(SpoolFull, match="disk full"):
        spool.append([entry(i, size=20_000) for i in range(1, 20)])
    assert everything(spool) == before
    assert (spool.count, spool.bytes) == (1, size_of(entry(0)))
    spool._conn.execute("PRAGMA max_page_count = 1073741823")
    spool.append([entry(1)])
    assert spool.count == 2


def test_forced_append_goes_past_max_bytes_and_is_kept(tmp_path: Path) -> None:
    """At shutdown, records held in memory go to the spool even past max_bytes."""
    one = size_of(entry(0))
    with Spool(tmp_path, max_bytes=one * 2) as s:
        s.append([entry(0), entry(1)])
        with pytest.raises(SpoolFull):
            s.append([entry(2)])
        seqs = s.append([entry(i) for i in range(2, 6)], force=True)
        assert len(seqs) == 4
        assert (s.count, s.bytes) == (6, one * 6)
        assert not s.has_room(0)
        assert s.free_fraction() == 0.0
    with Spool(tmp_path, max_bytes=one * 2) as s:
        assert [e for _, e in everything(s)] == [stored(entry(i)) for i in range(6)]
        with pytest.raises(SpoolFull):  # the bound still holds for normal appends
            s.append([entry(6)])


def test_forced_append_still_fails_when_the_disk_refuses(spool: Spool) -> None:
    spool.append([entry(0)])
    before = everything(spool)
    (pages,) = spool._conn.execute("PRAGMA page_count").fetchone()
    spool._conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(SpoolFull, match="disk full"):
        spool.append([entry(i, size=20_000) for i in range(1, 20)], force=True)
    assert everything(spool) == before
    assert spool.count == 1


def test_has_room_and_free_fraction(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1000) as s:
        assert s.free_fraction() == 1.0
        assert s.has_room(1000)
        assert not s.has_room(1001)
        e = entry(0, size=200, key=None, headers=[])
        s.append([e, e])
        assert s.bytes == 400
        assert s.free_fraction() == pytest.approx(0.6)
        assert s.has_room(600)
        assert not s.has_room(601)


def test_file_shrinks_after_an_outage_drains(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 30) as s:
        for batch in range(10):
            s.append([entry(batch * 100 + i, size=12_000) for i in range(100)])
    full = (tmp_path / DB_NAME).stat().st_size
    assert full > 12_000_000
    with Spool(tmp_path, max_bytes=1 << 30) as s:
        while rows := s.peek(limit=300):
            s.delete([seq for seq, _ in rows])
    assert (tmp_path / DB_NAME).stat().st_size < full // 10


# -- opening ----------------------------------------------------------------------------------


def test_creates_the_directory_private(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    with Spool(directory, max_bytes=100):
        pass
    assert (directory / DB_NAME).is_file()
    assert directory.stat().st_mode & 0o777 == 0o700


def test_reopen_after_close_keeps_data(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        seqs = s.append([entry(1), entry(2)])
    assert not (tmp_path / (DB_NAME + "-wal")).exists() or (
        (tmp_path / (DB_NAME + "-wal")).stat().st_size == 0
    )
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        assert everything(s) == [(seqs[0], stored(entry(1))), (seqs[1], stored(entry(2)))]


def test_one_spool_per_directory_at_a_time(tmp_path: Path) -> None:
    in_use = f"{tmp_path}.*in use.*pid {os.getpid()}"
    with Spool(tmp_path, max_bytes=100), pytest.raises(SpoolInUse, match=in_use):
        Spool(tmp_path, max_bytes=100)
    with Spool(tmp_path, max_bytes=100):  # released by close()
        pass


def test_the_lock_dies_with_its_process_even_by_sigkill(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from streamd.kafka.spool import Spool; "
         f"s = Spool({str(tmp_path)!r}, max_bytes=100); print('ready', flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(SpoolInUse, match=f"pid {holder.pid}"):
            Spool(tmp_path, max_bytes=100)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with Spool(tmp_path, max_bytes=100):
        pass


def test_directory_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StreamdError, match=str(blocker / "spool")):
        Spool(blocker / "spool", max_bytes=100)
    with pytest.raises(StreamdError, match=str(blocker)):
        Spool(blocker, max_bytes=100)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(StreamdError, match=f"{directory}.*not writable"):
            Spool(directory, max_bytes=100)
    finally:
        directory.chmod(0o700)


def test_unreadable_database_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StreamdError, match=str(tmp_path / DB_NAME)):
        Spool(tmp_path, max_bytes=100)


# -- the schema: versions and migration -------------------------------------------------------

# Version 1 as it was released: no tags column (and, in the first releases, no meta table).
_V1_SCHEMA = """
CREATE TABLE entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    size INTEGER NOT NULL,
    dlq INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    tweet_id TEXT,
    key BLOB,
    headers BLOB NOT NULL,
    value BLOB NOT NULL
);
CREATE TABLE totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT INTO totals (id, count, bytes) VALUES (1, 0, 0);
CREATE TABLE seen_ids (
    tweet_id TEXT PRIMARY KEY,
    seen REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX seen_ids_by_time ON seen_ids (seen);
"""


def write_v1_database(directory: Path, records: list[OutRecord], *, version: int = 1) -> None:
    """A spool database as a version-1 streamd left it, holding `records`."""
    directory.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(directory / DB_NAME, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(_V1_SCHEMA)
        total = 0
        for r in records:
            headers = encode_headers(r.headers)
            size = size_of(r)
            total += size
            conn.execute(
                "INSERT INTO entries (size, dlq, timestamp_ms, tweet_id, key, headers, value)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (size, int(r.dlq), r.timestamp_ms, r.tweet_id, r.key, headers, r.value))
        conn.execute("UPDATE totals SET count = ?, bytes = ?", (len(records), total))
        conn.execute("INSERT INTO seen_ids VALUES ('123', 1.0)")
        conn.execute(f"PRAGMA user_version = {version}")
    finally:
        conn.close()


def user_version(directory: Path) -> int:
    conn = sqlite3.connect(directory / DB_NAME)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


@given(st.lists(st.text(max_size=20), max_size=6))
def test_tag_encoding_is_lossless(tags: list[str]) -> None:
    assert decode_tags(encode_tags(tags)) == tuple(tags)
    assert encode_tags(()) is None


def test_a_version_1_database_is_migrated_and_its_rows_come_back_without_tags(
    tmp_path: Path,
) -> None:
    old = [entry(i, tags=()) for i in range(5)]
    write_v1_database(tmp_path, old)
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        assert (s.count, s.bytes) == (5, sum(map(size_of, old)))
        assert [e for _, e in everything(s)] == [stored(e) for e in old]
        assert s.recent_ids(window_seconds=1e12, max_ids=10) == ["123"]
        s.set_meta("k", "v")  # the meta table, created by the migration
        tagged = entry(99, tags=("cats", "dogs"))
        s.append([tagged])
    assert user_version(tmp_path) == 2
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        assert [e for _, e in everything(s)] == [*map(stored, old), stored(tagged)]
        assert s.get_meta("k") == "v"


def test_a_version_1_database_whose_first_open_was_cut_short_is_migrated(
    tmp_path: Path,
) -> None:
    """Version 1 created its tables before it recorded its version: a database with its
    tables and version 0 is a version-1 one."""
    write_v1_database(tmp_path, [entry(1, tags=())], version=0)
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        assert [e for _, e in everything(s)] == [stored(entry(1, tags=()))]
        s.append([entry(2)])
    assert user_version(tmp_path) == 2


def test_a_newer_schema_version_is_refused_and_left_alone(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        s.append([entry(1)])
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    with pytest.raises(StreamdError, match="schema version 3, this streamd knows 2"):
        Spool(tmp_path, max_bytes=1 << 20)
    assert user_version(tmp_path) == 3
    with Spool(tmp_path / "other", max_bytes=1 << 20):  # the directory lock was released
        pass


def test_a_new_database_has_the_current_version_and_large_pages(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as s:
        (page_size,) = s._conn.execute("PRAGMA page_size").fetchone()
        assert page_size == 16384
    assert user_version(tmp_path) == 2


def test_a_restored_record_was_read_as_long_ago_as_its_timestamp_says(tmp_path: Path) -> None:
    """The monotonic read time does not survive a restart: the latency histogram still
    measures read -> ack from the record's timestamp (never a read time in the future)."""
    wall = FakeClock(1_700_000_100.0)
    with Spool(tmp_path, max_bytes=1 << 20, clock=wall, monotonic=lambda: 500.0) as s:
        s.append([entry(0, timestamp_ms=1_700_000_090_000),
                  entry(1, timestamp_ms=1_700_000_200_000)])
        [(_, ten_s_ago), (_, future)] = s.peek()
    assert ten_s_ago.read_at == pytest.approx(490.0)
    assert future.read_at == 500.0


# -- threads ----------------------------------------------------------------------------------


def test_calls_from_several_threads_do_not_interleave(spool: Spool) -> None:
    def work(base: int) -> None:
        for n in range(20):
            seqs = spool.append([entry(base + n * 10 + i, size=10) for i in range(10)])
            spool.delete(seqs[:5])

    threads = [threading.Thread(target=work, args=(t * 1000,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert spool.count == 3 * 20 * 5
    assert spool.bytes == sum(size_of(e) for _, e in everything(spool))


# -- recent tweet ids -------------------------------------------------------------------------


def test_recent_ids_window_limit_and_order(tmp_path: Path) -> None:
    clock = FakeClock()
    with Spool(tmp_path, max_bytes=100, clock=clock) as s:
        now = clock.now
        s.remember_ids([("old", now - 1000), ("a", now - 50), ("b", now - 20)])
        s.remember_ids([("c", now - 10), ("d", now - 1)])
        assert s.recent_ids(window_seconds=60, max_ids=10) == ["a", "b", "c", "d"]
        assert s.recent_ids(window_seconds=60, max_ids=2) == ["c", "d"]
        assert s.recent_ids(window_seconds=15, max_ids=10) == ["c", "d"]
        assert s.recent_ids(window_seconds=60, max_ids=0) == []
        # Seen again later: moves to its newer time, not duplicated.
        s.remember_ids([("a", now)])
        assert s.recent_ids(window_seconds=60, max_ids=10) == ["b", "c", "d", "a"]
        clock.now += 30
        assert s.recent_ids(window_seconds=45, max_ids=10) == ["c", "d", "a"]


def test_recent_ids_survive_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    with Spool(tmp_path, max_bytes=100, clock=clock) as s:
        s.remember_ids([(str(i), clock.now - 100 + i) for i in range(100)])
    with Spool(tmp_path, max_bytes=100, clock=clock) as s:
        assert s.recent_ids(window_seconds=1000, max_ids=1000) == [str(i) for i in range(100)]


def test_remembered_ids_are_pruned_to_the_newest_and_by_age(tmp_path: Path) -> None:
    clock = FakeClock()
    with Spool(
        tmp_path, max_bytes=100, clock=clock, max_remembered_ids=10, remembered_max_age_seconds=500
    ) as s:
        s.remember_ids([(str(i), clock.now - 2000 + i) for i in range(2000)])
        kept = s.recent_ids(window_seconds=10_000, max_ids=10_000)
        assert kept == [str(i) for i in range(1990, 2000)]
        clock.now += 495
        s.remember_ids([("new", clock.now)])
        # Older than 500 s is gone: 1990..1999 were 10..1 s old, now 505..496 s old.
        assert s.recent_ids(window_seconds=10_000, max_ids=10_000) == [
            str(i) for i in range(1995, 2000)
        ] + ["new"]


# -- crash safety -----------------------------------------------------------------------------


def _load_writer() -> types.ModuleType:
    # By path: the writer is a script, not a package module.
    spec = importlib.util.spec_from_file_location("spool_crash_writer", WRITER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_expected_entry: Callable[[int, int, int], OutRecord] = _load_writer().expected_entry


def _parse_key(key: bytes | None) -> tuple[int, int, int]:
    assert key is not None
    batch, index, n = (int(part) for part in key.split(b":"))
    return batch, index, n


def _run_and_kill(directory: Path, first_batch: int, rand: random.Random) -> list[str]:
    """Start the writer, SIGKILL it at a random moment, return the lines it completed."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(directory), str(first_batch), str(rand.getrandbits(30))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "writer did not start"
        time.sleep(rand.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")
    text = out.decode()
    lines = text.split("\n")
    # The last piece may be a line the writer was killed while printing: not a report.
    complete = lines[:-1]
    assert complete[0] == "ready"
    return complete[1:]


def test_committed_batches_survive_sigkill_and_no_batch_is_partial(tmp_path: Path) -> None:
    rand = random.Random(20240605)
    reported: dict[int, list[int]] = {}  # batch -> its seqs, as printed once committed
    deleted: set[int] = set()
    maybe_deleted: set[int] = set()  # delete started; the kill may have come before commit
    highest_seq = 0
    for iteration in range(5):
        first_batch = iteration * 1_000_000
        lines = _run_and_kill(tmp_path, first_batch, rand)
        assert any(line.startswith("A ") for line in lines), "writer committed nothing"
        for line in lines:
            kind, *fields = line.split()
            if kind == "A":
                batch, first, last, n = map(int, fields)
                assert last - first + 1 == n  # one transaction: contiguous seqs
                reported[batch] = list(range(first, last + 1))
            elif kind == "d":
                maybe_deleted.add(int(fields[0]))
            else:
                deleted.add(int(fields[0]))

        with Spool(tmp_path, max_bytes=1 << 30) as spool:
            rows = everything(spool)
            by_batch: dict[int, list[tuple[int, int, int]]] = {}
            for seq, got in rows:
                batch, index, n = _parse_key(got.key)
                assert got == stored(_expected_entry(batch, index, n)), f"torn entry at seq {seq}"
                by_batch.setdefault(batch, []).append((seq, index, n))
            for batch, members in by_batch.items():
                n = members[0][2]
                assert [index for _, index, _ in members] == list(range(n)), (
                    f"batch {batch} is partial"
                )
                if batch in reported:
                    assert [seq for seq, _, _ in members] == reported[batch]
                # New batches never reuse or go below seqs seen before this run.
                if batch >= first_batch:
                    assert members[0][0] > highest_seq
            for batch in reported.keys() - deleted - maybe_deleted:
                assert batch in by_batch, f"committed batch {batch} lost"
            for batch in deleted:
                assert batch not in by_batch, f"deleted batch {batch} came back"
            assert spool.count == len(rows)
            assert spool.bytes == sum(size_of(e) for _, e in rows)
            highest_seq = max([highest_seq, *(seq for seq, _ in rows)])
