"""Split the stream body into lines across arbitrary chunk boundaries (hot path).

Frame representation, chosen for speed (every tweet goes through here):

* a normal line is plain `bytes` (the line without its delimiter, a slice of the chunk);
* a heartbeat is `b""` (an empty line);
* a line longer than `max_line_bytes` is one `Oversize` object (the first
  `max_line_bytes` bytes and the line's total length), emitted when the line ends. The rest
  of that line is counted but never buffered, so memory stays bounded by `max_line_bytes`
  plus one chunk, even for a gigabyte without a delimiter.

Delimiter: X ends every message with `\\r\\n`. The framer splits on `\\n` and drops one
`\\r` before it, so a bare `\\n` (a proxy or fake server normalising line ends) is tolerated
too. This is safe because JSON escapes newlines inside strings and X sends compact JSON, so a
raw `\\n` only ever appears as a delimiter. A one-byte delimiter also means a delimiter can
never straddle two chunks, which keeps the hot path to one `split` per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Frame", "LineFramer", "Oversize"]

_NL = b"\n"
_CR = b"\r"


@dataclass(frozen=True, slots=True)
class Oversize:
    """A line over the limit: its first `max_line_bytes` bytes and its full length."""

    prefix: bytes
    length: int


Frame = bytes | Oversize


class LineFramer:
    """Incremental line splitter; feed chunks, get complete lines."""

    __slots__ = ("_buf", "_discarding", "_limit", "_over_cr", "_over_len", "_over_prefix")

    def __init__(self, max_line_bytes: int) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self._limit = max_line_bytes
        self._buf = bytearray()  # the incomplete tail of a line within the limit
        # State while skipping the remainder of an oversize line:
        self._discarding = False
        self._over_prefix = b""
        self._over_len = 0  # raw bytes seen so far (a trailing \r included)
        self._over_cr = False  # the last byte seen was \r (maybe the delimiter's)

    def feed(self, chunk: bytes) -> list[Frame]:
        """Return the lines completed by `chunk`, in order."""
        if not chunk:
            return []
        frames: list[Frame] = []
        if self._discarding:
            end = chunk.find(_NL)
            if end < 0:
                self._over_len += len(chunk)
                self._over_cr = chunk.endswith(_CR)
                return frames
            cr = chunk[end - 1] == 13 if end > 0 else self._over_cr
            frames.append(Oversize(self._over_prefix, self._over_len + end - int(cr)))
            self._discarding = False
            self._over_prefix = b""
            chunk = chunk[end + 1 :]
            if not chunk:
                return frames
        elif chunk.find(_NL) < 0:
            # No delimiter: only append; avoids copying a huge delimiter-less chunk.
            self._append_partial(chunk)
            return frames

        lines = chunk.split(_NL)
        tail = lines.pop()
        if self._buf and lines:
            self._buf += lines[0]
            lines[0] = bytes(self._buf)
            self._buf.clear()
        limit = self._limit
        for line in lines:
            if line.endswith(_CR):
                line = line[:-1]
            if len(line) > limit:
                frames.append(Oversize(line[:limit], len(line)))
            else:
                frames.append(line)
        if tail:
            self._append_partial(tail)
        return frames

    def blank_lines(self, chunk: bytes) -> int | None:
        """If `chunk` holds nothing but blank lines, take it as `feed` would and return how
        many: the same heartbeats, counted without a list of them (a gzip bomb of newlines
        is 32 Ki of them per 64 KiB). Blank lines are "\r\n" (X's, and a "\r" left over
        from the previous chunk may open the chunk and one may close it) or bare "\n".
        Anything else: None, nothing taken, and the caller feeds the chunk as usual. A
        chunk that starts with anything but a line end is refused at once."""
        if not chunk or self._discarding or chunk[0] not in (10, 13):
            return None
        buf = self._buf
        if buf and buf != _CR:
            return None
        size = len(chunk)
        if not buf and chunk[0] == 10 and chunk[-1] == 10 and chunk.count(_NL) == size:
            return size
        # "\r\n" pairs: one may be split by the start of the chunk, one by its end.
        start = 0
        lines = 0
        if buf:
            if chunk[0] != 10:
                return None
            start, lines = 1, 1
        trailing_cr = chunk[-1] == 13
        pairs = chunk.count(b"\r\n", start)
        if 2 * pairs + start + trailing_cr != size:
            return None
        if buf:
            buf.clear()
        if trailing_cr:
            buf += _CR
        return lines + pairs

    def pending(self) -> int:
        """Bytes held for the incomplete line (the prefix while skipping an oversize line)."""
        return len(self._over_prefix) if self._discarding else len(self._buf)

    def finish(self) -> bytes:
        """The incomplete tail at EOF (a truncated line; the prefix if it was oversize).

        Returned raw (a trailing `\\r` included) and the framer is reset.
        """
        tail = self._over_prefix if self._discarding else bytes(self._buf)
        self._buf.clear()
        self._discarding = False
        self._over_prefix = b""
        self._over_len = 0
        self._over_cr = False
        return tail

    def _append_partial(self, data: bytes) -> None:
        if self._discarding:
            self._over_len += len(data)
            self._over_cr = data.endswith(_CR)
            return
        size = len(self._buf) + len(data)
        # limit + 1: the last byte may be the \r of a line exactly at the limit.
        if size <= self._limit + 1:
            self._buf += data
            return
        need = self._limit - len(self._buf)
        if need > 0:
            self._buf += data[:need]
        self._over_prefix = bytes(self._buf[: self._limit])
        self._over_len = size
        self._over_cr = data.endswith(_CR)
        self._discarding = True
        self._buf.clear()
