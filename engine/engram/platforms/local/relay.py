"""The cluster endpoint: a TCP relay to a live node, as a Kubernetes Service fronts its pods."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from engram.platforms.local.ports import LOOPBACK
from engram.tasks import cancel_and_wait

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 1.0
_CHUNK = 64 * 1024


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes until EOF, then half-close so the other side sees the end of this direction."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


class EndpointRelay:
    """Accepts client connections on one port and pumps each to the first target that accepts it."""

    def __init__(
        self, port: int, targets: Callable[[], list[tuple[str, int]]], host: str = LOOPBACK
    ) -> None:
        # targets() returns node (host, port)s, best first (shard 0's primary, then other live nodes).
        self.host = host
        self.port = port
        self._targets = targets
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await cancel_and_wait(*self._conns)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._serve(client_r, client_w)
        except asyncio.CancelledError:
            # close() cancels open connections. Python 3.11's start_server asks a cancelled
            # connection task for its exception, which raises and is logged as an error.
            pass
        finally:
            self._conns.discard(task)
            client_w.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        for host, port in self._targets():
            try:
                node_r, node_w = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
            except (OSError, TimeoutError):
                continue
            try:
                await asyncio.gather(pump(client_r, node_w), pump(node_r, client_w))
            finally:
                node_w.close()
                with contextlib.suppress(Exception):
                    await node_w.wait_closed()
            return
        log.warning("endpoint %s:%d: no node accepted the connection", self.host, self.port)
