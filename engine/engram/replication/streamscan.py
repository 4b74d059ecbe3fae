"""Where the tap may cut Valkey's replication stream into journal entries.

The tap does not parse commands: it hands raw chunks to a StreamScanner (C, `_streamscan.c`),
which returns a Scan of the stream up to its last safe place after each chunk, as absolute stream
offsets:

- `safe`: the end of the last complete command outside MULTI...EXEC. An entry may end there; a
  transaction is never split across entries, since a replica applies each entry at once.
- `db`: the database selected at `safe` (`SELECT n` in the stream), which is the `db` of an entry
  starting there (replicas select it before applying the payload).
- `data_end`: the end of the last command up to `safe` that is not link-only (`PING`, `REPLCONF
  ...`, which only keep the replication link alive). It is a safe place too (a transaction open
  there would end with an EXEC after it), and only link-only commands lie between it and `safe`.
  The committer ends an entry there; when it is at or before the start of what the committer has
  buffered, everything buffered up to `safe` is link-only and is acknowledged without being
  journaled.

A stream that is not RESP arrays of bulk strings, a bad length, a SELECT whose database is not a
plain number, or MULTI/EXEC out of order raises StreamError (and the scanner stays failed): the tap
fails and the node steps down rather than cut the stream in the wrong place.

ReferenceScanner below is the same scanner in plain Python, written for clarity rather than speed:
it re-reads an incomplete command from its first byte on every feed, so it has no state to carry
across chunks. Tests compare it with the C scanner on random streams split at every byte.
"""

from __future__ import annotations

import re

from engram.replication._streamscan import Scan, StreamError, StreamScanner

__all__ = ["ReferenceScanner", "Scan", "StreamError", "StreamScanner"]

MAX_DIGITS = 18  # lengths always fit in 64 bits
_DB = re.compile(rb"[0-9]{1,9}")
_LINK_ONLY = (b"ping", b"replconf")


class ReferenceScanner:
    """StreamScanner's behaviour, in Python: same results, same errors at the same offsets."""

    def __init__(self, offset: int = 0) -> None:
        if offset < 0:
            raise ValueError("a stream offset cannot be negative")
        self.offset = offset
        self.safe = offset
        self.db = 0  # at safe
        self.data_end = offset  # up to safe
        self.in_multi = False
        self._data_end = offset
        self._db = 0  # after the last complete command
        self._pending = b""  # the command not complete yet
        self._start = offset  # the offset of its first byte
        self._failure = ""

    def feed(self, data: bytes | bytearray | memoryview) -> Scan:
        if self._failure:
            raise StreamError(self._failure)
        chunk = bytes(data)
        self._pending += chunk
        while self._pending:
            parsed = self._parse(self._pending)
            if parsed is None:
                break
            args, length = parsed
            self._command(args, self._start + length - 1)
            self._pending = self._pending[length:]
            self._start += length
        self.offset += len(chunk)
        return Scan((self.safe, self.db, self.data_end))

    def _fail(self, at: int, reason: str, byte: int | None = None) -> None:
        self._failure = f"offset {at}: {reason}" + ("" if byte is None else f", got byte 0x{byte:02x}")
        raise StreamError(self._failure)

    def _parse(self, buf: bytes) -> tuple[list[bytes], int] | None:
        """The first command in buf and its length, None if it is incomplete; raises at the first
        byte that cannot belong to a command."""
        if buf[0] != ord("*"):
            self._fail(self._start, "expected '*' starting a command array", buf[0])
        counted = self._length(buf, 1, "array")
        if counted is None:
            return None
        nargs, pos = counted
        if nargs == 0:
            self._fail(self._start + pos - 1, "empty command array")
        args = []
        while len(args) < nargs:
            if pos >= len(buf):
                return None
            if buf[pos] != ord("$"):
                self._fail(self._start + pos, "expected '$' starting a bulk string", buf[pos])
            counted = self._length(buf, pos + 1, "bulk")
            if counted is None:
                return None
            size, pos = counted
            if len(buf) < pos + size:
                return None
            args.append(buf[pos : pos + size])
            pos += size
            for expected in b"\r\n":
                if pos >= len(buf):
                    return None
                if buf[pos] != expected:
                    self._fail(self._start + pos, "bulk string not followed by CRLF", buf[pos])
                pos += 1
        return args, pos

    def _length(self, buf: bytes, pos: int, what: str) -> tuple[int, int] | None:
        """The decimal length at pos and the position after its CRLF; None if incomplete."""
        digits = b""
        while pos < len(buf) and buf[pos] != ord("\r"):
            if not buf[pos : pos + 1].isdigit():
                self._fail(self._start + pos, f"malformed {what} length", buf[pos])
            if len(digits) == MAX_DIGITS:
                self._fail(self._start + pos, f"{what} length of more than {MAX_DIGITS} digits")
            digits += buf[pos : pos + 1]
            pos += 1
        if pos >= len(buf):
            return None
        if not digits:
            self._fail(self._start + pos, f"malformed {what} length", buf[pos])
        if pos + 1 >= len(buf):
            return None
        if buf[pos + 1] != ord("\n"):
            self._fail(self._start + pos + 1, f"malformed {what} length", buf[pos + 1])
        return int(digits), pos + 2

    def _command(self, args: list[bytes], at: int) -> None:
        """A complete command whose last byte is at offset `at`."""
        name, end = args[0].lower(), at + 1
        if name == b"multi":
            if self.in_multi:
                self._fail(at, "MULTI inside MULTI")
            self.in_multi = True
        elif name == b"exec":
            if not self.in_multi:
                self._fail(at, "EXEC without MULTI")
            self.in_multi = False
        elif name == b"select":
            if len(args) != 2 or not _DB.fullmatch(args[1]):
                self._fail(at, "SELECT needs exactly one database number of at most 9 digits")
            self._db = int(args[1])
        if name not in _LINK_ONLY:
            self._data_end = end
        if not self.in_multi:
            self.safe = end
            self.db = self._db
            self.data_end = self._data_end
