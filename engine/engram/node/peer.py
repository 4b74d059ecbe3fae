"""Talking to a node's control port as its peers and tools do: ENGRAM.STATUS, ENGRAM.FAILOVER.

Raw RESP2 over hiredis rather than a full client: a probe must send exactly one command (no HELLO,
no CLIENT SETINFO, no retries) and report a silent node quickly. On a TLS cluster the control port
speaks TLS only, verified with the cluster's CA (control_tls).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import hiredis

from engram.valkey.connection import encode


class PeerUnreachable(RuntimeError):
    """The node did not answer in time, or the connection failed."""


class PeerRefused(RuntimeError):
    """The node answered the command with an error reply."""


def parse_status(reply: object) -> dict[str, str]:
    """ENGRAM.STATUS's field/value array (a map under RESP3) as a dict of strings."""
    if isinstance(reply, dict):
        reply = [x for pair in reply.items() for x in pair]
    if not isinstance(reply, list) or len(reply) % 2:
        raise ValueError(f"ENGRAM.STATUS returned {reply!r}, not a field/value array")
    text = [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in reply]
    return dict(zip(text[::2], text[1::2], strict=True))


def control_tls(ca_file: str = "", *, ca_data: str = "", check_hostname: bool = True) -> ssl.SSLContext:
    """A client context for TLS control ports: the cluster's CA (a file, or PEM text), TLS 1.2+.

    ``check_hostname=False`` only where the address cannot be the certificate's name and nothing
    else can answer there: a pod's own loopback.
    """
    context = ssl.create_default_context(cafile=ca_file or None, cadata=ca_data or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    return context


async def call(host: str, port: int, *args: str, timeout: float, tls: ssl.SSLContext | None = None,
               server_hostname: str | None = None) -> Any:
    """Send one command on a fresh connection and return its reply (PeerUnreachable, PeerRefused).

    ``tls``: the control port speaks TLS; its certificate must name ``server_hostname`` (default host).
    """

    async def exchange() -> Any:
        if tls is None:
            reader, writer = await asyncio.open_connection(host, port)
        else:
            reader, writer = await asyncio.open_connection(host, port, ssl=tls,
                                                           server_hostname=server_hostname or host)
        try:
            writer.write(encode(list(args)))
            await writer.drain()
            parser = hiredis.Reader(replyError=PeerRefused)
            while (reply := parser.gets()) is False:
                data = await reader.read(65536)
                if not data:
                    raise PeerUnreachable(f"{host}:{port} closed the connection")
                parser.feed(data)
            return reply
        finally:
            writer.close()

    try:
        reply = await asyncio.wait_for(exchange(), timeout)
    except (OSError, TimeoutError, hiredis.ProtocolError) as exc:  # ssl.SSLError is an OSError
        raise PeerUnreachable(f"{host}:{port} does not answer: {exc or exc.__class__.__name__}") from exc
    if isinstance(reply, PeerRefused):
        raise reply
    return reply


async def peer_status(address: str, timeout: float = 3.0,
                      tls: ssl.SSLContext | None = None) -> dict[str, str]:
    """ENGRAM.STATUS of the node at host:port (over TLS with ``tls``)."""
    host, _, port = address.rpartition(":")
    try:
        return parse_status(await call(host, int(port), "ENGRAM.STATUS", timeout=timeout, tls=tls))
    except PeerRefused as exc:
        raise PeerUnreachable(f"{address} refused ENGRAM.STATUS: {exc}") from exc
