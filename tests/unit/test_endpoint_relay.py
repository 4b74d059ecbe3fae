"""The local cluster endpoint relays to the first node that accepts, and closes quietly."""

from __future__ import annotations

import asyncio
from typing import Any

from engram.platforms.local.ports import LOOPBACK
from engram.platforms.local.relay import EndpointRelay


def test_a_relay_closed_with_connections_open_ends_them_without_asyncio_errors() -> None:
    async def scenario() -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
            writer.close()

        node = await asyncio.start_server(echo, LOOPBACK, 0)
        node_port = node.sockets[0].getsockname()[1]
        relay = EndpointRelay(0, lambda: [(LOOPBACK, 1), (LOOPBACK, node_port)])  # the first refuses
        await relay.start()
        assert relay._server is not None
        port = relay._server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        await asyncio.wait_for(relay.close(), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the client sees the end
        writer.close()
        node.close()
        await node.wait_closed()
        for _ in range(3):  # the finished connection task's done callbacks run in these iterations
            await asyncio.sleep(0)
        return errors

    assert asyncio.run(scenario()) == []
