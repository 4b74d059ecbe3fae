"""Ask the local cluster's nodes about themselves and request switchovers, many at a time.

Everything here talks to a node's control port (NodeState.control_port), never to its client
port: clients are served by Valkey itself there, which knows nothing of ENGRAM.STATUS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from engram.node.peer import PeerRefused, PeerUnreachable, call, parse_status
from engram.platforms.local.ports import LOOPBACK
from engram.platforms.local.state import NodeState

# Generous: a busy machine (CI, a laptop running tests) must not make a live node look down.
STATUS_TIMEOUT = 2.5


class FailoverFailed(RuntimeError):
    """The primary refused or could not complete a switchover."""


def control_addresses(nodes: Iterable[NodeState]) -> list[tuple[str, int]]:
    """(host, control port) of each node, in order: what fetch_all takes."""
    return [(n.host, n.control_port) for n in nodes]


async def fetch_status(
    port: int, timeout: float = STATUS_TIMEOUT, host: str = LOOPBACK
) -> dict[str, str] | None:
    """ENGRAM.STATUS from the control port host:port as a dict, or None when it does not answer in time."""
    try:
        return parse_status(await call(host, port, "ENGRAM.STATUS", timeout=timeout))
    except (PeerUnreachable, PeerRefused, ValueError):
        return None


async def fetch_all(
    nodes: Sequence[tuple[str, int]], timeout: float = STATUS_TIMEOUT
) -> list[dict[str, str] | None]:
    """ENGRAM.STATUS of many nodes (host, control port) at once, in order."""
    return list(await asyncio.gather(*(fetch_status(port, timeout, host) for host, port in nodes)))


async def request_failover(primary: tuple[str, int], target: str, timeout: float = 60.0) -> None:
    """Ask the primary at (host, control port) to hand leadership to target; FailoverFailed if it will not."""
    host, port = primary
    try:
        await call(host, port, "ENGRAM.FAILOVER", target, timeout=timeout)
    except PeerRefused as exc:
        raise FailoverFailed(f"the primary refused the switchover to {target}: {exc}") from exc
    except PeerUnreachable as exc:
        raise FailoverFailed(f"switchover to {target} did not complete: {exc}") from exc
