"""Asks engine nodes who they are (ENGRAM.STATUS) and requests planned switchovers (ENGRAM.FAILOVER).

Both on the node's control port (ADMIN_PORT): the client port is Valkey's own and knows neither.
"""

from __future__ import annotations

import asyncio

from engram.node.peer import PeerRefused, PeerUnreachable, call
from engram_operator import constants
from engram_operator.observe import EngineStatus, PodInfo, parse_engine_status

TIMEOUT = 2.0
SWITCHOVER_TIMEOUT = 10.0


async def engine_status(host: str, port: int = constants.ADMIN_PORT) -> EngineStatus | None:
    """None when the node does not answer (starting, or gone): the caller keeps the last label."""
    try:
        return parse_engine_status(await call(host, port, "ENGRAM.STATUS", timeout=TIMEOUT))
    except (PeerUnreachable, PeerRefused, ValueError):
        return None


async def all_statuses(pods: list[PodInfo]) -> dict[str, EngineStatus]:
    """Probe every running pod concurrently."""
    running = [p for p in pods if p.ip and p.phase == "Running" and not p.deleting]
    answers = await asyncio.gather(*(engine_status(p.ip) for p in running))
    return {p.name: s for p, s in zip(running, answers, strict=True) if s is not None}


async def switchover(host: str, target_node_id: str) -> None:
    """Planned failover: the primary at ``host`` hands leadership to a caught-up replica."""
    await call(host, constants.ADMIN_PORT, "ENGRAM.FAILOVER", target_node_id, timeout=SWITCHOVER_TIMEOUT)
