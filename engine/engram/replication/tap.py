"""The replication tap: the primary node attaches to its Valkey as the only replica (PSYNC).

It receives the replication stream (effects, so non-deterministic commands are safe) and pumps
its raw bytes to the committer, with a scan of where they may be cut (see streamscan); no command
is parsed in Python. It acknowledges an offset to Valkey only once the journal has committed
everything up to it; that acknowledgement releases the clients' write replies (the Engram module
holds them until then).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from engram.replication.streamscan import Scan, StreamError, StreamScanner
from engram.valkey.connection import ValkeyConnection, encode, is_unknown_command

log = logging.getLogger(__name__)

# What the tap hands over for every chunk it receives: the raw bytes and the scan after them.
OnChunk = Callable[[bytes, Scan], None]

_ACK = b"*3\r\n$8\r\nREPLCONF\r\n$3\r\nACK\r\n"


def _ack_command(offset: int) -> bytes:
    """REPLCONF ACK <offset>, built without the generic encoder: it is sent once per commit."""
    digits = b"%d" % offset
    return b"%s$%d\r\n%s\r\n" % (_ACK, len(digits), digits)


class TapError(RuntimeError):
    """The replication link to the local Valkey failed or spoke something unexpected."""


class Tap:
    """A replica connection to the local Valkey that yields its write stream."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.replid = ""
        self.offset = 0  # replication offset after the last byte received (maybe mid-command)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._acked = -1
        self._leftover = b""

    async def attach(self, timeout: float = 60.0) -> int:
        """Full-resync handshake; the snapshot is skipped (the journal already holds that state)."""
        reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=1 << 24)
        self._reader, self._writer = reader, writer

        async def line() -> bytes:
            while True:
                data = await asyncio.wait_for(reader.readline(), timeout)
                if not data:
                    raise TapError("valkey closed the replication link during the handshake")
                if data.strip():  # Valkey sends bare newlines as keep-alives while it prepares
                    return data.rstrip(b"\r\n")

        # The node's identity first: the cluster's users may have turned the default user off.
        writer.write(encode([b"ENGRAM.INTERNAL"]))
        reply = await line()
        if reply.startswith(b"-") and not is_unknown_command(reply[1:].decode()):
            raise TapError(f"valkey refused ENGRAM.INTERNAL: {reply[1:].decode()}")
        for command in (
            [b"PING"],
            [b"REPLCONF", b"listening-port", b"0"],
            [b"REPLCONF", b"capa", b"eof", b"capa", b"psync2"],
        ):
            writer.write(encode(command))
            reply = await line()
            if reply.startswith(b"-"):
                raise TapError(f"valkey refused {command[0].decode()}: {reply[1:].decode()}")
        writer.write(encode([b"PSYNC", b"?", b"-1"]))
        reply = await line()
        if not reply.startswith(b"+FULLRESYNC"):
            raise TapError(f"expected FULLRESYNC from valkey, got {reply[:80]!r}")
        _, replid, offset = reply.split()
        self.replid = replid.decode()
        self.offset = int(offset)
        await self._skip_snapshot(line, timeout)
        self._acked = -1
        await self._start_stream(timeout)
        return self.offset

    async def _start_stream(self, timeout: float) -> None:
        """Valkey streams commands to a diskless replica only after an ack that arrives once it
        has put the replica online, a moment after the snapshot ends. Without this, a new
        primary's first writes waited for the next periodic ack."""
        admin = await ValkeyConnection.open(self.socket_path)
        try:
            await admin.identify_as_node()
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                info = await admin.execute("INFO", "replication")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "state=online" in text:
                    break
                if asyncio.get_running_loop().time() > deadline:
                    raise TapError("valkey did not put the replication tap online")
                await asyncio.sleep(0.002)
        finally:
            admin.close()
        self.ack(self.offset)

    async def _skip_snapshot(self, line: Callable, timeout: float) -> None:
        assert self._reader is not None
        header = await line()
        if not header.startswith(b"$"):
            raise TapError(f"expected the RDB transfer from valkey, got {header[:80]!r}")
        if header.startswith(b"$EOF:"):
            mark = header[5:]
            tail = b""
            while True:
                chunk = await asyncio.wait_for(self._reader.read(1 << 20), timeout)
                if not chunk:
                    raise TapError("valkey closed the replication link during the RDB transfer")
                tail = (tail + chunk)[-(len(mark) + len(chunk)) :]
                index = tail.find(mark)
                if index >= 0:
                    # Stream bytes that arrived with the end mark belong to the stream.
                    self._leftover = tail[index + len(mark) :]
                    return
        else:
            await asyncio.wait_for(self._reader.readexactly(int(header[1:])), timeout)

    async def stream(self, on_chunk: OnChunk) -> None:
        """Read the stream forever, handing over each chunk as it arrives with its scan."""
        assert self._reader is not None
        reader = self._reader
        scanner = StreamScanner(self.offset)
        data, self._leftover = self._leftover, b""
        while True:
            if not data:
                data = await reader.read(1 << 20)
                if not data:
                    raise TapError("valkey closed the replication link")
            try:
                scan = scanner.feed(data)
            except StreamError as exc:
                # Bytes we cannot frame cannot be cut into entries safely: stop, and the node
                # steps down, rather than journal a transaction in halves.
                raise TapError(f"malformed replication stream from valkey: {exc}") from None
            self.offset = scanner.offset
            on_chunk(data, scan)
            data = b""

    def ack(self, offset: int) -> None:
        """Tell Valkey the journal holds everything up to offset."""
        if offset <= self._acked or self._writer is None:
            return
        self._acked = offset
        self._writer.write(_ack_command(offset))

    def reack(self) -> None:
        """Repeat the last ack: Valkey drops a replica it has not heard from in repl-timeout."""
        if self._writer is not None and self._acked >= 0:
            self._writer.write(_ack_command(self._acked))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
