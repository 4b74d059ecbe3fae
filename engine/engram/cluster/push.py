"""The node's cluster view as the Engram module takes it: the ENGRAM.TOPOLOGY command."""

# The module checks slots and answers CLUSTER from this push alone (docs/data-path.md), so the
# CLUSTER replies are rendered here, by the code the front door answered with, as RESP3; the
# module re-emits them in each client's protocol.

from __future__ import annotations

import sys
from array import array

from engram.cluster.protocol import Me, cluster_command
from engram.cluster.slots import SLOTS
from engram.cluster.topology import ClusterView, cluster_node_id

__all__ = ["UNASSIGNED", "slot_owners", "slot_targets", "topology_command"]

UNASSIGNED = 0xFFFF
# Replies pushed ready-made; REPLICAS is pushed per primary, KEYSLOT and the slot scans are the module's.
_ALWAYS = (b"MYID", b"MYSHARDID")
_WITH_SLOTS = (b"INFO", b"SLOTS", b"SHARDS", b"NODES")


def _slot_array(ranges: list[tuple[int, int, int]]) -> bytes:
    """A shard per slot as big-endian uint16 (0xFFFF none), 32768 bytes."""
    owners = array("H", [UNASSIGNED]) * SLOTS
    for first, last, shard in ranges:
        owners[first : last + 1] = array("H", [shard]) * (last - first + 1)
    if sys.byteorder == "little":
        owners.byteswap()
    return owners.tobytes()


def slot_owners(view: ClusterView) -> bytes:
    """The owning shard of each slot as big-endian uint16 (0xFFFF unassigned), 32768 bytes."""
    return _slot_array(view.slots.ranges if view.slots is not None else [])


def slot_targets(view: ClusterView) -> bytes:
    """The shard each slot is migrating to, in slot_owners' encoding (0xFFFF: not moving)."""
    return _slot_array(view.slots.moving if view.slots is not None else [])


def topology_command(view: ClusterView, me: Me, leader: str, reason: str) -> list[bytes]:
    """ENGRAM.TOPOLOGY's argv for this view; leader: this shard's primary as the node knows it ("" none)."""
    args = [b"ENGRAM.TOPOLOGY", b"SHARD", b"%d" % me.shard]
    args += [b"SLOTS", slot_owners(view) if view.slots is not None else b"UNKNOWN"]
    if view.slots is not None:
        args += [b"EPOCH", b"%d" % view.slots.epoch]
        if view.slots.moving:
            args += [b"MOVING", slot_targets(view)]
    args += [b"REASON", reason.encode()]
    for shard, record in sorted(view.leaders.items()):
        if shard != me.shard and record.address:
            args += [b"LEADER", b"%d" % shard, record.address.encode()]
    if leader:
        args += [b"LEADER", b"%d" % me.shard, leader.encode()]
    # The module lets MIGRATE go only to the target shard's primary, at the address it is told here.
    for shard, record in sorted(view.leaders.items()):
        node = view.nodes.get(record.node)
        if shard != me.shard and record.address and node is not None and node.migrate:
            args += [b"MIGRATE", b"%d" % shard, node.migrate.encode()]
    subcommands = _ALWAYS + (_WITH_SLOTS if view.slots is not None else ())
    for sub in subcommands:
        args += [b"REPLY", sub, cluster_command(view, me, [b"CLUSTER", sub], resp3=True)]
    if view.slots is not None:
        for shard in view.slots.shards():
            record = view.leaders.get(shard)
            if record is None:
                continue
            node_id = cluster_node_id(record.node).encode()
            reply = cluster_command(view, me, [b"CLUSTER", b"REPLICAS", node_id], resp3=True)
            args += [b"REPLICAS", node_id, reply]
    return args
