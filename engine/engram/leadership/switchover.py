"""Planned switchover: the primary hands leadership to a named, caught-up replica.

Writes are paused, everything Valkey executed is committed, and then the primary appends a
leadership entry naming the target as its last word; the target takes over when it applies it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from engram import metrics
from engram.journal.entries import Entry, EntryType
from engram.journal.errors import JournalError
from engram.node.peer import PeerUnreachable, peer_status

if TYPE_CHECKING:
    from engram.node.node import Node


class SwitchoverError(RuntimeError):
    """The hand-over was refused or aborted; the primary keeps serving."""


async def hand_over(node: Node, target: str, timeout: float) -> None:
    if not node.is_primary or node.committer is None or node.tap is None:
        name = node.config.node_id
        raise SwitchoverError(f"{name} is not the primary; send ENGRAM.FAILOVER to the primary")
    if target == node.config.node_id:
        return
    await _check_target(node, target)
    admin, committer, tap = node.datapath, node.committer, node.tap
    node.handing_over = True
    await admin.execute("CLIENT", "PAUSE", str(int(timeout * 1000)), "WRITE")
    epoch = node.leader.epoch
    try:
        offset = _info_field(await admin.execute("INFO", "replication"), "master_repl_offset")
        deadline = time.monotonic() + timeout
        while tap.offset < offset:
            if time.monotonic() > deadline:
                raise SwitchoverError("the replication tap did not receive the last writes in time")
            await asyncio.sleep(0.002)
        # Reads stop before the hand-off entry exists: the target may serve as soon as it lands.
        await admin.set_lease(0.0, "switchover in progress, retry shortly")
        handoff = Entry(EntryType.LEADER, epoch + 1, target, source=node.config.node_id)
        await committer.final_append(handoff, timeout)
    except (JournalError, SwitchoverError) as exc:
        node.handing_over = False
        await admin.execute("CLIENT", "UNPAUSE")
        raise SwitchoverError(f"switchover to {target} aborted: {exc}") from exc
    # Hang up on clients before un-pausing: a write they had queued must never run here now
    # (and whatever slips through is flushed by demote, never journaled: the tap is gone).
    await admin.step_down(f"leadership handed to {target}")
    await admin.disconnect_clients()
    await admin.execute("CLIENT", "UNPAUSE")
    node.handing_over = False
    await node.demote(f"handed leadership to {target}")
    metrics.FAILOVERS.labels("switchover").inc()
    deadline = time.monotonic() + timeout
    # The successor's renewal seen in the journal, or its record in the metadata (a node that is
    # rebuilding, or stopping, does not read the journal's tail).
    while not ((node.leader.epoch == epoch + 1 and node.leader.leader_address)
               or (node.meta is not None and node.meta.recorded_epoch(node.config.shard) >= epoch + 1)):
        if time.monotonic() > deadline:
            raise SwitchoverError(f"{target} was handed leadership but has not renewed its lease")
        await asyncio.sleep(0.01)


async def _check_target(node: Node, target: str) -> None:
    """Refuse a hand-over to a node that is not a live, applying replica of this shard."""
    record = node.view.nodes.get(target)
    if record is None or record.shard != node.config.shard:
        raise SwitchoverError(f"{target} is not a known node of shard {node.config.shard}")
    try:
        fields = await peer_status(record.admin or record.address, tls=node.control_tls(record))
    except PeerUnreachable as exc:
        raise SwitchoverError(str(exc)) from exc
    if fields.get("role") != "replica" or fields.get("halted"):
        role, halted = fields.get("role"), fields.get("halted", "")
        raise SwitchoverError(f"{target} cannot take over: its role is {role!r} {halted}".rstrip())


def _info_field(info: object, name: str) -> int:
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split(":", 1)[1])
    raise SwitchoverError(f"INFO has no {name}")
