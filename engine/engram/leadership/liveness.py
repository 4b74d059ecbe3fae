"""Is the primary's process still there? Asked only when its renewals are late.

A refused connection on the primary's client port means nothing listens there: the Valkey that
served its clients is gone (a node's Valkey dies with it, see engram/lifetime.py), so no lease of
that process can still be serving and a replica may campaign without waiting out the lease. Every
other outcome proves nothing: a paused process still completes connections from its backlog, and a
cut-off zone times out or is unreachable; those wait for the lease as before.
"""

from __future__ import annotations

import asyncio
import contextlib


async def process_gone(address: str, timeout: float) -> bool:
    """True only when host:port refused a TCP connection within `timeout`."""
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), timeout)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False
