"""Asking another node how it is: ENGRAM.STATUS over its client port."""

from __future__ import annotations

import asyncio

import hiredis

from engram.valkey.connection import encode


class PeerUnreachable(RuntimeError):
    """The node did not answer ENGRAM.STATUS."""


def parse_status(reply: object) -> dict[str, str]:
    """ENGRAM.STATUS's flat field/value array as a dict of strings."""
    if not isinstance(reply, list) or len(reply) % 2:
        raise ValueError(f"ENGRAM.STATUS returned {reply!r}, not a field/value array")
    text = [v.decode() if isinstance(v, bytes) else str(v) for v in reply]
    return dict(zip(text[::2], text[1::2], strict=True))


async def peer_status(address: str, timeout: float = 3.0) -> dict[str, str]:
    host, _, port = address.rpartition(":")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    except (OSError, TimeoutError) as exc:
        raise PeerUnreachable(f"{address} does not answer: {exc}") from exc
    try:
        writer.write(encode(["ENGRAM.STATUS"]))
        parser = hiredis.Reader()
        reply: object = False
        while reply is False:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                raise PeerUnreachable(f"{address} closed the connection")
            parser.feed(data)
            reply = parser.gets()
    except (OSError, TimeoutError) as exc:
        raise PeerUnreachable(f"{address} does not answer: {exc}") from exc
    finally:
        writer.close()
    return parse_status(reply)
