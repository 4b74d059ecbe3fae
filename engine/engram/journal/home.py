"""Keep a node's journal connection on the journal server of its own zone.

A node connects to its own zone's server first (orchestration/node_config.py). When that server
restarts, the client moves to another zone's and, left alone, stays there: a later cut of that
other zone then takes this node's journal with it, though its own zone is whole. Seen in chaos as
replicas that could not see the stream for a second at the start of a zone cut, whose election
clocks were held and restarted, delaying the failover by about 2 s. So once the home server has
answered for a while again, the connection goes back to it.

nats-py has no call to change servers: this uses its server pool and its protocol-error path, the
way the client itself moves after a broken connection. With a client whose internals differ it
does nothing (logged once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import ParseResult, urlparse

from nats.aio.client import Client as NatsClient

log = logging.getLogger(__name__)

# How often the connection's server is checked, and how many checks in a row the home server must
# answer before the connection moves (a restarted server needs a moment to rejoin its cluster).
HOME_EVERY = 2.0
HOME_CHECKS = 2
PROBE_TIMEOUT = 0.5


def _host_port(uri: ParseResult) -> tuple[str, int]:
    return uri.hostname or "", uri.port or 4222


def _address(url: str) -> tuple[str, int]:
    return _host_port(urlparse(url if "://" in url else f"nats://{url}"))


def is_home(current: tuple[str, int] | None, home: tuple[str, int]) -> bool:
    """Whether the connection is on the home server (an unknown server counts as home: no move)."""
    return current is None or current == home


async def answers(address: tuple[str, int], timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to the server opens."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(*address), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _current(nc: NatsClient) -> tuple[str, int] | None:
    url = nc.connected_url
    return _host_port(url) if url is not None else None


async def stay_home(nc: NatsClient, home_url: str, every: float = HOME_EVERY,
                    checks: int = HOME_CHECKS) -> None:
    """Run forever: move the connection back to `home_url` whenever it is elsewhere and home has
    answered `checks` times in a row."""
    home = _address(home_url)
    seen = 0
    while True:
        await asyncio.sleep(every)
        if is_home(_current(nc), home) or not nc.is_connected:
            seen = 0
            continue
        seen = seen + 1 if await answers(home) else 0
        if seen < checks:
            continue
        seen = 0
        if not _move(nc, home):
            log.warning("journal connection: cannot move back to %s:%d (not in the client's server pool, "
                        "or a nats-py without one); it stays on %s:%d", *home, *(_current(nc) or ("?", 0)))
            return
        log.info("journal connection: moving back to this zone's server %s:%d", *home)
        await nc._process_op_err(ConnectionResetError("moving back to this zone's journal server"))


def _move(nc: NatsClient, home: tuple[str, int]) -> bool:
    """Put the home server first in the client's pool, where its next reconnection starts."""
    pool = getattr(nc, "_server_pool", None)
    if not isinstance(pool, list) or not hasattr(nc, "_process_op_err"):
        return False
    first = next((srv for srv in pool if _host_port(srv.uri) == home), None)
    if first is None:
        return False
    pool.remove(first)
    pool.insert(0, first)
    first.last_attempt = None
    return True
