"""Ask a node about itself (ENGRAM.STATUS) and request switchovers (ENGRAM.FAILOVER)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis

from engram.platforms.local.ports import LOOPBACK

# Generous: a busy machine (CI, a laptop running tests) must not make a live node look down.
STATUS_TIMEOUT = 2.5


class FailoverFailed(RuntimeError):
    """The primary refused or could not complete a switchover."""


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def parse_status(reply: Any) -> dict[str, str]:
    """ENGRAM.STATUS replies with a flat field/value array; return it as a dict of strings."""
    if isinstance(reply, dict):
        return {_text(k): _text(v) for k, v in reply.items()}
    items = [_text(x) for x in reply]
    return dict(zip(items[::2], items[1::2], strict=False))


class CommandError(RuntimeError):
    """The node answered a command with an error reply."""


def _encode(args: Sequence[str]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def command(port: int, *args: str, timeout: float, host: str = LOOPBACK) -> Any:
    """Send one command on a fresh connection and return its reply.

    Raw RESP2 with hiredis rather than a full client: a probe must send exactly this one command
    (no HELLO, no CLIENT SETINFO, no retries) and report a silent node as down quickly.
    """

    async def exchange() -> Any:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(_encode(args))
            await writer.drain()
            parser = hiredis.Reader(replyError=CommandError)
            while (reply := parser.gets()) is False:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError(f"{host}:{port} closed the connection")
                parser.feed(data)
            return reply
        finally:
            writer.close()

    reply = await asyncio.wait_for(exchange(), timeout)
    if isinstance(reply, CommandError):
        raise reply
    return reply


async def fetch_status(
    port: int, timeout: float = STATUS_TIMEOUT, host: str = LOOPBACK
) -> dict[str, str] | None:
    """The node's ENGRAM.STATUS as a dict, or None when it does not answer in time."""
    try:
        return parse_status(await command(port, "ENGRAM.STATUS", timeout=timeout, host=host))
    except (OSError, TimeoutError, CommandError, hiredis.ProtocolError):
        return None


async def fetch_all(
    nodes: Sequence[tuple[str, int]], timeout: float = STATUS_TIMEOUT
) -> list[dict[str, str] | None]:
    """ENGRAM.STATUS of many nodes (host, port) at once, in order."""
    return list(await asyncio.gather(*(fetch_status(port, timeout, host) for host, port in nodes)))


async def request_failover(primary: tuple[str, int], target: str, timeout: float = 60.0) -> None:
    """Ask the primary at (host, port) to hand leadership to target; raise FailoverFailed if it will not."""
    host, port = primary
    try:
        await command(port, "ENGRAM.FAILOVER", target, timeout=timeout, host=host)
    except CommandError as exc:
        raise FailoverFailed(f"the primary refused the switchover to {target}: {exc}") from exc
    except (OSError, TimeoutError, hiredis.ProtocolError) as exc:
        raise FailoverFailed(
            f"switchover to {target} did not complete: {exc or exc.__class__.__name__}"
        ) from exc
