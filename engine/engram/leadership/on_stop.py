"""A primary asked to stop hands its shard over first.

SIGTERM is how a pod is deleted or evicted (a drain, a rolling update) and how `engram local down`
stops nodes. A primary that simply exited would leave its shard without a leader until the lease
runs out and a replica wins an election: seconds of refused writes. Handing over to the most
caught-up live replica (switchover.hand_over: pause writes, commit what Valkey executed, name the
successor in the journal) moves leadership in a moment, and no acknowledged write can be lost
either way. If no replica can take over in time the node stops anyway: the lease decides then.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from engram.node.peer import PeerUnreachable, peer_status
from engram.orchestration.successor import successors

if TYPE_CHECKING:
    from engram.cluster.topology import NodeRecord
    from engram.node.node import Node

log = logging.getLogger(__name__)

# The whole hand-over on stop, choice of successor included. Platforms give a stopping node more
# than this before they kill it (the operator's terminationGracePeriodSeconds, the local
# supervisor's STOP_TIMEOUT).
STOP_HANDOVER_TIMEOUT = 5.0
STATUS_TIMEOUT = 1.0


async def _status(node: Node, record: NodeRecord) -> dict[str, str] | None:
    try:
        return await peer_status(record.admin or record.address, STATUS_TIMEOUT, node.control_tls(record))
    except (PeerUnreachable, ValueError):
        return None  # gone, or stopping too: not a successor


async def hand_over_on_stop(node: Node, timeout: float = STOP_HANDOVER_TIMEOUT) -> str | None:
    """If ``node`` leads its shard, hand it to the best live replica; the successor's id, or None.

    Never raises: the node is stopping whatever happens here.
    """
    if not node.is_primary or node.meta is None:
        return None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    me, shard = node.config.node_id, node.config.shard
    try:
        records = [r for r in node.view.nodes.values() if r.shard == shard and r.node != me]
        replies = await asyncio.gather(*(_status(node, r) for r in records))
        statuses = {r.node: fields for r, fields in zip(records, replies, strict=True) if fields}
        for target in successors(me, shard, statuses):
            remaining = deadline - loop.time()
            if remaining <= 0 or not node.is_primary:
                break
            try:
                await asyncio.wait_for(node.switchover(target, timeout=remaining), remaining)
            except Exception as exc:  # SwitchoverError, a timeout, Valkey going away: try the next
                if not node.is_primary:
                    # The hand-off entry is in the journal; only the successor's first renewal was
                    # not seen in time (this node replays the journal from the start after stepping
                    # down). The successor takes over on its own.
                    log.warning("node %s handed shard %d to %s before stopping (%s)", me, shard, target, exc)
                    return target
                log.warning("hand-over of shard %d to %s before stopping failed: %s", shard, target, exc)
                continue
            log.warning("node %s handed shard %d to %s before stopping", me, shard, target)
            return target
    except Exception:  # a stopping node must stop: never let the hand-over keep it up
        log.exception("hand-over before stopping failed")
    if node.is_primary:
        log.warning(
            "node %s stops as the primary of shard %d without a hand-over (no live replica took it); "
            "a replica takes over when the lease runs out",
            me,
            shard,
        )
    return None
