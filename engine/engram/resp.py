"""RESP framing: requests in, reply boundaries out, the replies Engram renders itself.

The node's control port parses requests with it, and CLUSTER replies are rendered with it for the
module; hiredis decodes replies but does not report where one ends, which tests need.
"""

from __future__ import annotations

# Valkey's own limits and messages, so a bad request gets the answer Valkey would give.
MAX_MULTIBULK = 1024 * 1024
MAX_BULK = 512 * 1024 * 1024
MAX_INLINE = 64 * 1024


class ProtocolError(Exception):
    """The client broke RESP framing; Valkey answers with this message and closes."""


class RequestParser:
    """Incremental parser of client commands (multibulk and inline), keeping each raw span."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos:
            self._buf = self._buf[self._pos :] + data
            self._pos = 0
        elif self._buf:
            self._buf += data
        else:
            self._buf = data

    def pending(self) -> int:
        return len(self._buf) - self._pos

    def parse(self) -> list[tuple[list[bytes], bytes]]:
        """Return every complete command as (args, raw bytes); raise ProtocolError on bad framing."""
        out: list[tuple[list[bytes], bytes]] = []
        buf = self._buf
        end = len(buf)
        pos = self._pos
        while pos < end:
            start = pos
            if buf[pos] != 42:  # not '*': an inline command
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    if end - pos > MAX_INLINE:
                        raise ProtocolError("Protocol error: too big inline request")
                    break
                line = buf[pos:nl].rstrip(b"\r")
                pos = nl + 1
                args = _split_inline(line)
                if args:
                    out.append((args, _encode_command(args)))
                continue
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                if end - pos > MAX_INLINE:
                    raise ProtocolError("Protocol error: too big mbulk count string")
                break
            try:
                count = int(buf[pos + 1 : nl])
            except ValueError:
                raise ProtocolError("Protocol error: invalid multibulk length") from None
            if count > MAX_MULTIBULK:
                raise ProtocolError("Protocol error: invalid multibulk length")
            pos = nl + 2
            if count <= 0:
                continue
            args = []
            complete = True
            for _ in range(count):
                if pos >= end:
                    complete = False
                    break
                if buf[pos] != 36:  # '$'
                    raise ProtocolError(f"Protocol error: expected '$', got '{chr(buf[pos])}'")
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if end - pos > MAX_INLINE:
                        raise ProtocolError("Protocol error: too big bulk count string")
                    complete = False
                    break
                try:
                    size = int(buf[pos + 1 : nl])
                except ValueError:
                    raise ProtocolError("Protocol error: invalid bulk length") from None
                if size < 0 or size > MAX_BULK:
                    raise ProtocolError("Protocol error: invalid bulk length")
                data_start = nl + 2
                data_end = data_start + size
                if data_end + 2 > end:
                    complete = False
                    break
                args.append(buf[data_start:data_end])
                pos = data_end + 2
            if not complete:
                pos = start
                break
            out.append((args, buf[start:pos]))
        self._pos = pos
        if pos == end:
            self._buf = b""
            self._pos = 0
        return out


def _split_inline(line: bytes) -> list[bytes]:
    """Split an inline command as Valkey does, honouring double and single quotes."""
    if b'"' not in line and b"'" not in line:
        return line.split()
    args: list[bytes] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in b" \t":
            i += 1
        if i >= n:
            break
        quote = line[i] if line[i] in b"\"'" else 0
        cur = bytearray()
        if quote:
            i += 1
            while True:
                if i >= n:
                    raise ProtocolError("Protocol error: unbalanced quotes in request")
                c = line[i]
                if c == quote:
                    i += 1
                    if i < n and line[i] not in b" \t":
                        raise ProtocolError("Protocol error: unbalanced quotes in request")
                    break
                if c == 92 and quote == 34 and i + 1 < n:  # backslash escapes inside "..."
                    i += 1
                    c = {110: 10, 114: 13, 116: 9, 98: 8, 97: 7}.get(line[i], line[i])
                cur.append(c)
                i += 1
        else:
            while i < n and line[i] not in b" \t":
                cur.append(line[i])
                i += 1
        args.append(bytes(cur))
    return args


def _encode_command(args: list[bytes]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


encode_command = _encode_command

_SIMPLE = frozenset(b"+-:_#,(")
_BULK = frozenset(b"$!=")
_AGG = frozenset(b"*~>")


class ReplyScanner:
    """Finds where each Valkey reply ends, without decoding it."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> None:
        self._buf = self._buf + data if self._buf else data

    def replies(self) -> list[bytes]:
        """Every complete reply, raw; the first byte tells its type."""
        out: list[bytes] = []
        buf = self._buf
        end = len(buf)
        pos = 0
        while pos < end:
            stop = _reply_end(buf, pos, end)
            if stop < 0:
                break
            out.append(buf[pos:stop])
            pos = stop
        self._buf = buf[pos:] if pos else buf
        return out


def _reply_end(buf: bytes, pos: int, end: int) -> int:
    """End offset of the reply starting at pos, or -1 if it is not complete yet."""
    remaining = 1  # replies still to skip at the current depth, counted flat
    while remaining:
        if pos >= end:
            return -1
        kind = buf[pos]
        nl = buf.find(b"\r\n", pos)
        if nl < 0:
            return -1
        if kind in _BULK:
            size = int(buf[pos + 1 : nl])
            pos = nl + 2 if size < 0 else nl + 2 + size + 2
            if pos > end:
                return -1
        elif kind in _AGG:
            count = int(buf[pos + 1 : nl])
            pos = nl + 2
            if count > 0:
                remaining += count
        elif kind == 37:  # '%' map: key and value per entry
            count = int(buf[pos + 1 : nl])
            pos = nl + 2
            if count > 0:
                remaining += 2 * count
        elif kind == 124:  # '|' attribute: its pairs, then the reply it decorates
            count = int(buf[pos + 1 : nl])
            pos = nl + 2
            remaining += 2 * max(count, 0) + 1
        else:
            # simple types and RESP3 attributes' payload-free forms
            pos = nl + 2
        remaining -= 1
    return pos


def error(message: str) -> bytes:
    """A RESP error line; message starts with its code (ERR, MOVED, TRYAGAIN...)."""
    return b"-" + message.replace("\r", " ").replace("\n", " ").encode() + b"\r\n"


def bulk(value: bytes | str | None) -> bytes:
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, str):
        value = value.encode()
    return b"$%d\r\n%s\r\n" % (len(value), value)


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def simple(value: str) -> bytes:
    return b"+" + value.encode() + b"\r\n"


def array(items: list[bytes]) -> bytes:
    """An array of already-encoded items."""
    return b"*%d\r\n" % len(items) + b"".join(items)


def mapping(pairs: list[tuple[bytes, bytes]], resp3: bool) -> bytes:
    """A map of encoded key/value items; a flat array in RESP2."""
    head = b"%%%d\r\n" % len(pairs) if resp3 else b"*%d\r\n" % (2 * len(pairs))
    return head + b"".join(k + v for k, v in pairs)


def first_element(reply: bytes) -> bytes | None:
    """The first bulk string of an array/push reply (the pub/sub message kind), if there is one."""
    nl = reply.find(b"\r\n")
    if nl < 0 or reply[nl + 2 : nl + 3] not in (b"$", b"+"):
        return None
    start = nl + 2
    nl2 = reply.find(b"\r\n", start)
    if reply[start] == 43:  # '+'
        return reply[start + 1 : nl2]
    size = int(reply[start + 1 : nl2])
    return reply[nl2 + 2 : nl2 + 2 + size] if size >= 0 else None
