"""A minimal async RESP connection to the private Valkey for the node's own use."""

from __future__ import annotations

import asyncio

import hiredis


class ValkeyError(RuntimeError):
    """Valkey answered a node-internal command with an error."""


class ValkeyConnection:
    """Pipelined request/reply over the unix socket; replies decoded by hiredis."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._parser = hiredis.Reader(notEnoughData=False)

    @classmethod
    async def open(cls, socket_path: str) -> ValkeyConnection:
        reader, writer = await asyncio.open_unix_connection(socket_path, limit=1 << 22)
        return cls(reader, writer)

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    async def read_reply(self) -> object:
        while True:
            reply = self._parser.gets()
            if reply is not False:
                return reply
            data = await self._reader.read(1 << 20)
            if not data:
                raise ConnectionError("valkey closed the connection")
            self._parser.feed(data)

    async def execute(self, *args: bytes | str | int) -> object:
        self.write(encode(args))
        reply = await self.read_reply()
        if isinstance(reply, hiredis.ReplyError):
            raise ValkeyError(str(reply))
        return reply

    async def identify_as_node(self) -> None:
        """ENGRAM.INTERNAL: the node's connection, exempt from the module's checks and from the
        cluster's users. A Valkey without the module (tests of the tap alone) has nothing to pass."""
        try:
            await self.execute("ENGRAM.INTERNAL")
        except ValkeyError as exc:
            if not is_unknown_command(exc):
                raise

    def close(self) -> None:
        self._writer.close()


def is_unknown_command(error: BaseException | str) -> bool:
    return str(error).startswith("ERR unknown command")


def encode(args: tuple[bytes | str | int, ...] | list[bytes | str | int]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)
