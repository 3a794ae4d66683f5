"""The durable spool: what streamd has read from X but Kafka has not yet acknowledged.

X's stream cannot be paused or rewound, so records that cannot be published right away are
kept on disk until Kafka acks them, across restarts and crashes (SIGKILL, power loss).

Storage is one SQLite database (stdlib `sqlite3`) in WAL mode with `synchronous=FULL`.
Why that survives a crash at any instant:

- Every `append`/`delete` is one transaction. In WAL mode a transaction's pages are appended
  to the write-ahead log, and it is committed only by its final *commit frame*; each frame
  carries a checksum chained over the log and the log's salt.
- With `synchronous=FULL` the log is fsynced before COMMIT returns, so a batch `append`
  reported as written is on stable storage: one fsync per committed batch, not per entry.
- On the next open SQLite replays the log only up to the last valid commit frame. Frames of
  a transaction torn by a crash (missing commit frame, bad checksum) are ignored, i.e. the
  transaction is rolled back. So a batch is either entirely present or entirely absent,
  and no entry is ever half-written.
- The database file itself is only rewritten by checkpoints, which copy already-committed
  pages from the log and fsync before the log is reset; a crash mid-checkpoint is repaired
  by replaying the (still valid) log again.

The count and byte totals live in a one-row table updated inside the same transactions, so
they are exactly as durable as the entries and are loaded at open without scanning.
Tweet ids for deduplication live in a separate table, so they survive a restart too.

A row is one `OutRecord` (streamd.records), its rule tags included, so a spooled tweet
counts in streamd_tweets_published_by_rule_total when it is published. The schema has a
version (`PRAGMA user_version`): an older database is migrated when it is opened (version 1
had no tags: its rows come back with none), a newer one is refused, since this streamd
cannot know what it would drop.

One connection is owned by the Spool. All calls are synchronous; the publisher calls them
from a worker thread (anyio.to_thread.run_sync), one at a time. An internal lock makes each
call atomic with respect to the others, whichever thread it comes from.

One daemon per spool directory: an exclusive `flock` on `spool.lock` is held while the
Spool is open (the kernel drops it when the process dies, even by SIGKILL, so it never goes
stale). Two daemons sharing a spool would each publish and delete the other's rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Container, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from streamd.dedup import DEDUP_MAX_IDS, REMEMBERED_MAX_AGE_S
from streamd.errors import SpoolError, SpoolFull, SpoolInUse
from streamd.records import OutRecord

DB_NAME = "spool.sqlite3"
LOCK_NAME = "spool.lock"

# 1: the first. 2: entries.tags (the rule tags of a tweet; NULL when none).
_SCHEMA_VERSION = 2

# SQLite's default host-parameter limit is 32766 (999 before 3.32): stay under the old one.
_MAX_PARAMS = 900

# When the spool drains, give free pages back to the file system only if there are enough
# of them to matter: emptying happens often in normal operation and shrinking a few pages
# each time would just make the next append grow the file again.
_VACUUM_MIN_FREE_BYTES = 8 << 20

_PAGE_SIZE = 16384

_LEN = struct.Struct(">I")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    size INTEGER NOT NULL,
    dlq INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    tweet_id TEXT,
    key BLOB,
    headers BLOB NOT NULL,
    value BLOB NOT NULL,
    tags BLOB
);
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals (id, count, bytes) VALUES (1, 0, 0);
CREATE TABLE IF NOT EXISTS seen_ids (
    tweet_id TEXT PRIMARY KEY,
    seen REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_ids_by_time ON seen_ids (seen);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gaps (
    id INTEGER PRIMARY KEY,
    start REAL NOT NULL,
    end REAL NOT NULL,
    covered_by TEXT NOT NULL,
    detail TEXT NOT NULL,
    connection TEXT
);
"""


# Migrations from each older version to the next, each run in one transaction with the
# version bump, so an interrupted one is simply run again at the next open.
_MIGRATIONS: dict[int, str] = {
    1: "ALTER TABLE entries ADD COLUMN tags BLOB",
}


def encode_headers(headers: Sequence[tuple[str, bytes]]) -> bytes:
    """Length-prefixed name/value pairs: lossless for any bytes and any str name.

    Names use `surrogatepass` so even a str with lone surrogates round-trips.
    """
    parts: list[bytes] = []
    for name, value in headers:
        raw_name = name.encode("utf-8", "surrogatepass")
        parts += (_LEN.pack(len(raw_name)), raw_name, _LEN.pack(len(value)), bytes(value))
    return b"".join(parts)


def decode_headers(blob: bytes) -> list[tuple[str, bytes]]:
    headers: list[tuple[str, bytes]] = []
    view = memoryview(blob)
    pos = 0
    while pos < len(view):
        (name_len,) = _LEN.unpack_from(view, pos)
        pos += 4
        name = bytes(view[pos : pos + name_len]).decode("utf-8", "surrogatepass")
        pos += name_len
        (value_len,) = _LEN.unpack_from(view, pos)
        pos += 4
        headers.append((name, bytes(view[pos : pos + value_len])))
        pos += value_len
    return headers


def encode_tags(tags: Sequence[str]) -> bytes | None:
    """The tags as a blob (None for none), in the header encoding: lossless for any str."""
    return encode_headers([(tag, b"") for tag in tags]) if tags else None


def decode_tags(blob: bytes | None) -> tuple[str, ...]:
    return tuple(name for name, _ in decode_headers(blob)) if blob else ()


def _entry_size(key: bytes | None, value: bytes, headers_blob: bytes) -> int:
    # What spool.max_bytes bounds (and streamd_spool_bytes shows): the record as Kafka gets
    # it. Tags are not counted: they are a copy of ce_ruletags, a few bytes.
    return len(value) + (len(key) if key is not None else 0) + len(headers_blob)


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Spool:
    """Durable FIFO of OutRecord, addressed by monotonic sequence numbers."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        max_remembered_ids: int = DEDUP_MAX_IDS,
        remembered_max_age_seconds: float = REMEMBERED_MAX_AGE_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        self.max_bytes = max_bytes
        self._max_ids = max_remembered_ids
        self._ids_max_age = remembered_max_age_seconds
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._lock_fd = -1
        self._conn = self._open()
        try:
            row = self._conn.execute("SELECT count, bytes FROM totals WHERE id = 1").fetchone()
            self._count, self._bytes = int(row[0]), int(row[1])
            # Upper bound on seen_ids rows; exact after each prune.
            (ids,) = self._conn.execute("SELECT count(*) FROM seen_ids").fetchone()
            self._ids_estimate = int(ids)
        except sqlite3.Error as exc:
            self._conn.close()
            self._unlock()
            raise SpoolError(f"spool {self.path}: cannot read: {exc}") from exc

    # -- opening ---------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(
                f"spool directory {self.directory}: cannot create: {exc.strerror or exc}"
            ) from exc
        if not self.directory.is_dir():
            raise SpoolError(f"spool directory {self.directory}: not a directory")
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise SpoolError(f"spool directory {self.directory}: not writable")
        self._take_directory()
        try:
            return self._open_database()
        except BaseException:
            self._unlock()
            raise

    def _take_directory(self) -> None:
        path = self.directory / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"spool directory {self.directory}: cannot create {LOCK_NAME}: "
                               f"{exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise SpoolInUse(
                f"spool directory {self.directory} is in use by another streamd process "
                f"(pid {holder}); each daemon needs its own spool.dir"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise SpoolError(f"spool directory {self.directory}: cannot lock {LOCK_NAME}: "
                               f"{exc.strerror or exc}") from exc
        self._lock_fd = fd
        # The holder's pid, for the message above; informative only (the lock is the flock),
        # so a full disk here is not a reason to fail.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def _open_database(self) -> sqlite3.Connection:
        is_new = not self.path.exists()
        try:
            # isolation_level=None: no implicit transactions; we BEGIN/COMMIT ourselves.
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: cannot open: {exc}") from exc
        try:
            # Both must be chosen before the first table exists (no effect on an old file).
            # 16 KiB pages: tweets are ~1-10 KB; with 4 KiB pages a 2.1 KB row takes a
            # whole page, doubling the file.
            conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SpoolError(f"spool {self.path}: cannot use WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            # After a checkpoint, cut the log back so an outage's burst does not keep it big.
            conn.execute("PRAGMA journal_size_limit = 67108864")
            version = _schema_version(conn)
            if version > _SCHEMA_VERSION:
                raise SpoolError(
                    f"spool {self.path}: schema version {version}, this streamd knows "
                    f"{_SCHEMA_VERSION}"
                )
            if version == 0:
                # A new database: its tables and its version in one transaction, so a
                # crash cannot leave tables without a version.
                conn.executescript(
                    f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = {_SCHEMA_VERSION};"
                    " COMMIT;")
            else:
                self._migrate(conn, version)
                # Tables added without a version bump (meta; gaps): new tables only, which
                # an older streamd never reads.
                conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            conn.close()
            raise SpoolError(f"spool {self.path}: cannot initialise: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        if is_new:
            _fsync_directory(self.directory)
        # Not ours to fix if it fails (e.g. a file owned by someone else but writable).
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)
        return conn

    def _migrate(self, conn: sqlite3.Connection, version: int) -> None:
        while version < _SCHEMA_VERSION:
            with _Transaction(conn, self.path, f"migrate from schema version {version}"):
                conn.execute(_MIGRATIONS[version])
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")

    # -- entries ---------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return self._count

    @property
    def bytes(self) -> int:
        """Sum of key + value + encoded header sizes of the entries held (not file size)."""
        return self._bytes

    def has_room(self, nbytes: int) -> bool:
        return self._bytes + nbytes <= self.max_bytes

    def free_fraction(self) -> float:
        return max(0.0, 1.0 - self._bytes / self.max_bytes)

    def append(self, records: Sequence[OutRecord], *, force: bool = False) -> list[int]:
        """Store the batch in one transaction (one fsync); return its sequence numbers.

        Raises SpoolFull, with nothing written, if the batch would go over max_bytes or the
        disk is full. With `force`, max_bytes is not checked: at shutdown, losing records
        is worse than holding more than the bound meant for normal operation, so only the
        disk itself may refuse.
        """
        if not records:
            return []
        rows: list[tuple[int, int, int, str | None, bytes | None, bytes, bytes, bytes | None]] = []
        batch_bytes = 0
        for record in records:
            headers_blob = encode_headers(record.headers)
            size = _entry_size(record.key, record.value, headers_blob)
            batch_bytes += size
            rows.append(
                (
                    size,
                    int(record.dlq),
                    record.timestamp_ms,
                    record.tweet_id,
                    record.key,
                    headers_blob,
                    record.value,
                    encode_tags(record.tags),
                )
            )
        with self._lock:
            if not force and self._bytes + batch_bytes > self.max_bytes:
                raise SpoolFull(
                    f"spool {self.path}: batch of {len(records)} entries ({batch_bytes} bytes) "
                    f"does not fit: {self._bytes} of {self.max_bytes} bytes used"
                )
            with self._transaction("append"):
                conn = self._conn
                seqs: list[int] = []
                insert = (
                    "INSERT INTO entries"
                    " (size, dlq, timestamp_ms, tweet_id, key, headers, value, tags)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                )
                for row in rows:
                    cursor = conn.execute(insert, row)
                    assert cursor.lastrowid is not None
                    seqs.append(cursor.lastrowid)
                conn.execute(
                    "UPDATE totals SET count = count + ?, bytes = bytes + ? WHERE id = 1",
                    (len(rows), batch_bytes),
                )
            self._count += len(rows)
            self._bytes += batch_bytes
            return seqs

    def peek(
        self,
        limit: int = 1000,
        max_bytes: int = 1 << 20,
        skip: Container[int] = frozenset(),
    ) -> list[tuple[int, OutRecord]]:
        """The oldest records, oldest first, without removing them.

        At most `limit` records and about `max_bytes`; always at least one record if any,
        so a record bigger than `max_bytes` cannot block the spool. Rows whose seq is in
        `skip` are passed over without being decoded or counted.

        The monotonic read time of a record does not survive a restart: it is derived from
        the record's timestamp, so the latency histogram still measures read -> ack.
        """
        if limit <= 0:
            return []
        out: list[tuple[int, OutRecord]] = []
        total = 0
        # monotonic read time = timestamp + offset, never later than now
        now = self._monotonic()
        offset = now - self._clock()
        with self._lock:
            cursor = self._conn.execute(
                "SELECT seq, size, dlq, timestamp_ms, tweet_id, key, headers, value, tags"
                " FROM entries ORDER BY seq",
            )
            try:
                for seq, size, dlq, timestamp_ms, tweet_id, key, headers, value, tags in cursor:
                    if seq in skip:
                        continue
                    if out and total + size > max_bytes:
                        break
                    total += size
                    record = OutRecord(
                        dlq=bool(dlq),
                        key=key,
                        value=value,
                        timestamp_ms=timestamp_ms,
                        headers=decode_headers(headers),
                        read_at=min(now, timestamp_ms / 1000 + offset),
                        tweet_id=tweet_id,
                        tags=decode_tags(tags),
                    )
                    out.append((seq, record))
                    if len(out) >= limit:
                        break
            finally:
                cursor.close()
        return out

    def delete(self, seqs: Sequence[int]) -> None:
        """Remove entries Kafka has acknowledged, in one transaction. Unknown seqs are ignored."""
        unique = sorted(set(seqs))
        if not unique:
            return
        with self._lock:
            removed = 0
            removed_bytes = 0
            with self._transaction("delete"):
                conn = self._conn
                for chunk in _chunks(unique, _MAX_PARAMS):
                    marks = ",".join("?" * len(chunk))
                    row = conn.execute(
                        f"SELECT count(*), coalesce(sum(size), 0) FROM entries"
                        f" WHERE seq IN ({marks})",
                        chunk,
                    ).fetchone()
                    removed += int(row[0])
                    removed_bytes += int(row[1])
                    conn.execute(f"DELETE FROM entries WHERE seq IN ({marks})", chunk)
                conn.execute(
                    "UPDATE totals SET count = count - ?, bytes = bytes - ? WHERE id = 1",
                    (removed, removed_bytes),
                )
            self._count -= removed
            self._bytes -= removed_bytes
            if self._count == 0 and removed:
                self._shrink_if_worth_it()

    def _shrink_if_worth_it(self) -> None:
        """After an outage drains, return the freed pages so the file shrinks again."""
        try:
            (free_pages,) = self._conn.execute("PRAGMA freelist_count").fetchone()
            (page_size,) = self._conn.execute("PRAGMA page_size").fetchone()
            if int(free_pages) * int(page_size) >= _VACUUM_MIN_FREE_BYTES:
                # executescript, not execute: the pragma frees one page per step, and only
                # sqlite3_exec (behind executescript) steps it to the end.
                self._conn.executescript("PRAGMA incremental_vacuum;")
        except sqlite3.Error:
            pass  # only an optimisation; the pages are reused by later appends anyway

    # -- recent tweet ids (dedup across restarts) ------------------------------------------

    def remember_ids(self, ids: Sequence[tuple[str, float]]) -> None:
        """Record (tweet_id, seen at epoch seconds) pairs; keeps the newest N, drops old ones."""
        if not ids:
            return
        with self._lock, self._transaction("remember_ids"):
            conn = self._conn
            conn.executemany(
                "INSERT INTO seen_ids (tweet_id, seen) VALUES (?, ?)"
                " ON CONFLICT (tweet_id) DO UPDATE SET seen = max(seen, excluded.seen)",
                ids,
            )
            self._ids_estimate += len(ids)
            conn.execute(
                "DELETE FROM seen_ids WHERE seen < ?", (self._clock() - self._ids_max_age,)
            )
            # Prune by count only once it is clearly over, not on every call: the exact
            # cut costs an index walk of N rows.
            if self._ids_estimate > self._max_ids + max(1000, self._max_ids // 10):
                self._prune_ids_to_max()

    def _prune_ids_to_max(self) -> None:
        conn = self._conn
        cut = conn.execute(
            "SELECT seen FROM seen_ids ORDER BY seen DESC LIMIT 1 OFFSET ?",
            (self._max_ids - 1,),
        ).fetchone()
        if cut is not None:
            conn.execute("DELETE FROM seen_ids WHERE seen < ?", (cut[0],))
            excess = int(conn.execute("SELECT count(*) FROM seen_ids").fetchone()[0])
            excess -= self._max_ids
            if excess > 0:
                # Ties at the cut: drop arbitrary ones among the oldest timestamp.
                conn.execute(
                    "DELETE FROM seen_ids WHERE tweet_id IN (SELECT tweet_id FROM seen_ids"
                    " WHERE seen = ? LIMIT ?)",
                    (cut[0], excess),
                )
        self._ids_estimate = int(conn.execute("SELECT count(*) FROM seen_ids").fetchone()[0])

    def recent_ids(self, window_seconds: float, max_ids: int) -> list[str]:
        """Ids seen in the last `window_seconds`, at most the newest `max_ids`, oldest first.

        Oldest first so that feeding them to Deduplicator.preload keeps the newest.
        """
        if max_ids <= 0:
            return []
        horizon = self._clock() - window_seconds
        with self._lock:
            rows = self._conn.execute(
                "SELECT tweet_id FROM (SELECT tweet_id, seen FROM seen_ids WHERE seen >= ?"
                " ORDER BY seen DESC LIMIT ?) ORDER BY seen ASC",
                (horizon, max_ids),
            ).fetchall()
        return [row[0] for row in rows]

    # -- small durable facts about the stream (e.g. when the last line was read) -----------

    def get_meta(self, name: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        with self._lock, self._transaction("set_meta"):
            self._conn.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    # -- the gap ledger (streamd/x/gaps.py) ------------------------------------------------

    def add_gap(self, start: float, end: float, covered_by: str, detail: str,
                connection: str | None) -> int:
        with self._lock, self._transaction("add_gap"):
            cursor = self._conn.execute(
                "INSERT INTO gaps (start, end, covered_by, detail, connection)"
                " VALUES (?, ?, ?, ?, ?)", (start, end, covered_by, detail, connection))
        return int(cursor.lastrowid or 0)

    def settle_gap(self, gap_id: int, covered_by: str, detail: str) -> None:
        with self._lock, self._transaction("settle_gap"):
            self._conn.execute("UPDATE gaps SET covered_by = ?, detail = ? WHERE id = ?",
                               (covered_by, detail, gap_id))

    def gaps(self) -> list[tuple[int, float, float, str, str, str | None]]:
        """Every gap recorded, oldest first: (id, start, end, covered_by, detail,
        connection)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, start, end, covered_by, detail, connection FROM gaps ORDER BY id"
            ).fetchall()
        return [(int(r[0]), float(r[1]), float(r[2]), str(r[3]), str(r[4]),
                 None if r[5] is None else str(r[5])) for r in rows]

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Checkpoint the log into the database (and truncate it), then close."""
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error:
                pass  # the log stays; it is replayed at the next open
            finally:
                self._conn.close()
                self._unlock()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _transaction(self, what: str) -> _Transaction:
        return _Transaction(self._conn, self.path, what)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT; ROLLBACK on any error; SQLite errors become SpoolError."""

    def __init__(self, conn: sqlite3.Connection, path: Path, what: str) -> None:
        self._conn = conn
        self._path = path
        self._what = what

    def __enter__(self) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if exc is None:
            try:
                self._conn.execute("COMMIT")
                return False
            except sqlite3.Error as commit_exc:
                self._rollback()
                raise self._translate(commit_exc) from commit_exc
        self._rollback()
        if isinstance(exc, sqlite3.Error):
            raise self._translate(exc) from exc
        return False

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            # SQLite may already have rolled back by itself (e.g. SQLITE_FULL).
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _translate(self, exc: sqlite3.Error) -> SpoolError:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return SpoolFull(f"spool {self._path}: {self._what}: disk full ({exc})")
        return SpoolError(f"spool {self._path}: {self._what} failed: {exc}")


def _schema_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == 0:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(entries)")}
        if columns and "tags" not in columns:
            # Version 1 created its tables before recording its version: a first open cut
            # short in between left a version-1 database that says 0.
            return 1
    return int(version)


def _fsync_directory(directory: Path) -> None:
    """Make the new database file's directory entry durable (power loss after creation)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def peek_meta(directory: Path, name: str) -> str | None:
    """One meta value of the spool in `directory`, read without taking the directory (a
    running daemon may hold it): for commands that only look. None when there is no spool,
    no such value, or the database cannot be read."""
    path = Path(directory) / DB_NAME
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return str(row[0]) if row is not None else None


def held_by_a_daemon(directory: Path) -> bool:
    """True while a streamd process holds the spool in `directory` (its flock)."""
    try:
        fd = os.open(Path(directory) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # releases a shared lock we took
    return False
