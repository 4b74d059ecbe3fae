"""Asks engine nodes who they are (ENGRAM.STATUS), requests planned switchovers (ENGRAM.FAILOVER)
and snapshots (ENGRAM.SNAPSHOT).

All on the node's control port (ADMIN_PORT): the client port is Valkey's own and knows none of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from engram.node.peer import PeerRefused, PeerUnreachable, call
from engram_operator import constants
from engram_operator.decisions import SnapshotResult, SnapshotTarget
from engram_operator.observe import EngineStatus, PodInfo, parse_engine_status

TIMEOUT = 2.0
SWITCHOVER_TIMEOUT = 10.0
# A snapshot replays the journal since the newest one into a scratch Valkey, saves, uploads and
# rehearses it: minutes for a large shard. The reconcile never waits for it (reconcile.py runs it
# as a task of its own), so this only bounds how long a request can stay in progress.
SNAPSHOT_TIMEOUT = 600.0

log = logging.getLogger(__name__)


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


async def snapshot(host: str) -> str:
    """Ask the replica at ``host`` to take, verify and store a snapshot of its shard now; its reply."""
    reply = await call(host, constants.ADMIN_PORT, "ENGRAM.SNAPSHOT", timeout=SNAPSHOT_TIMEOUT)
    return reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)


async def take_snapshots(targets: Sequence[SnapshotTarget], ips: Mapping[str, str]) -> list[SnapshotResult]:
    """Every shard's snapshot at once (each on its own replica); one result per target, never raises."""

    async def one(target: SnapshotTarget) -> SnapshotResult:
        if not target.pod:
            return SnapshotResult(target.shard, "", False, target.problem)
        where = f"shard {target.shard} on {target.pod}"
        try:
            reply = await snapshot(ips[target.pod])
        except PeerRefused as err:
            return SnapshotResult(target.shard, target.pod, False, f"{where}: refused: {err}")
        except PeerUnreachable as err:
            return SnapshotResult(
                target.shard,
                target.pod,
                False,
                f"{where}: no answer within {SNAPSHOT_TIMEOUT:g}s, or the connection failed ({err}); "
                "the node may still finish it (status.shards[].snapshotSeq shows the newest)",
            )
        except Exception as err:  # a task nobody awaits must still produce its result
            log.exception("snapshot of %s failed", where)
            return SnapshotResult(target.shard, target.pod, False, f"{where}: {err!r}")
        return SnapshotResult(target.shard, target.pod, True, reply)

    return list(await asyncio.gather(*(one(t) for t in targets)))
