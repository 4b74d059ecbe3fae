"""Replica scaling: which nodes to add, in which zones, and which to remove, to give every shard R replicas.

Pure decisions both platforms carry out (`engram local scale --replicas`, the operator's
spec.replicasPerShard). A new replica goes where the
shared zone placement (zones.replacement_zone) would put a replacement: a zone its shard does not use
yet, then the least loaded. Scale-down removes replicas only, never a node that says it leads: first
those that do not serve (down, halted), then those in the zones holding most of the shard's nodes (so
the shard stays spread), then the highest index (the newest name). So a shard's indices can have gaps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from engram.orchestration.zones import (
    NodePlacement,
    Spreading,
    ZonePlan,
    ZonePlanError,
    ZoneSpreadError,
    replacement_zone,
)

PRIMARY = "primary"
REPLICA = "replica"

__all__ = ["AddNode", "ReplicaNode", "ReplicaPlan", "ReplicaScaleError", "plan_replicas"]


class ReplicaScaleError(ValueError):
    """The replica count cannot be reached as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ReplicaNode:
    """One node as the platform sees it now."""

    id: str
    shard: int
    # The number in its name (NAME-s<shard>-n<index>); new nodes take the lowest free one.
    index: int
    zone: str
    # What the node said it is; "" when it did not answer.
    role: str = ""
    halted: bool = False

    @property
    def serving(self) -> bool:
        return self.role in (PRIMARY, REPLICA) and not self.halted


@dataclass(frozen=True)
class AddNode:
    """A new replica to start: its id, shard, index and zone."""

    id: str
    shard: int
    index: int
    zone: str


@dataclass(frozen=True)
class ReplicaPlan:
    """What reaching ``replicas`` per shard takes: nodes to add, node ids to remove, warnings (Preferred
    spreading that had to put two nodes of a shard in one zone), and why a shard to shrink must wait."""

    replicas: int
    add: tuple[AddNode, ...] = ()
    remove: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # One line per shard to shrink that has no node answering as its primary (a passing state: any of
    # its nodes might be the one that leads, so none is removed); the other shards are planned as usual.
    waiting: tuple[str, ...] = ()

    @property
    def unchanged(self) -> bool:
        return not self.add and not self.remove


def plan_replicas(nodes: Sequence[ReplicaNode], zones: Iterable[str], replicas: int,
                  spreading: Spreading | str, node_id: Callable[[int, int], str]) -> ReplicaPlan:
    """Add or remove nodes so that every shard that has nodes has ``replicas`` besides its primary.

    node_id(shard, index) names a new node. ReplicaScaleError when replicas is negative or Required
    spreading has too few zones; a shard to shrink without an answering primary is left in ``waiting``."""
    names = sorted(zones)
    mode = Spreading.parse(spreading)
    if replicas < 0:
        raise ReplicaScaleError(f"--replicas must be 0 or more, got {replicas}")
    if mode is Spreading.REQUIRED and replicas + 1 > len(names):
        raise ReplicaScaleError(
            f"spreading Required puts each node of a shard in its own zone, but {replicas} replicas make "
            f"{replicas + 1} nodes a shard and there are only {len(names)} zones ({', '.join(names)}): "
            f"ask for at most {len(names) - 1} replicas or add zones")
    by_shard: dict[int, list[ReplicaNode]] = {}
    for node in sorted(nodes, key=lambda n: (n.shard, n.index)):
        by_shard.setdefault(node.shard, []).append(node)
    add: list[AddNode] = []
    remove: list[str] = []
    warnings: list[str] = []
    waiting: list[str] = []
    # The zones of every node that stays or is added, shard by shard, for the placement of the next one.
    layout = {shard: [n.zone for n in members] for shard, members in by_shard.items()}
    for shard, members in sorted(by_shard.items()):
        want = replicas + 1
        if len(members) < want:
            taken = {n.index for n in members}
            for _ in range(want - len(members)):
                index = min(i for i in range(len(taken) + 1) if i not in taken)
                taken.add(index)
                try:
                    zone = _zone_for(names, mode, layout, shard)
                except ZonePlanError as exc:
                    raise ReplicaScaleError(str(exc)) from None
                if zone in layout[shard]:
                    warnings.append(f"shard {shard}: {node_id(shard, index)} shares zone {zone} with another "
                                    f"node of its shard (only {len(names)} zones for {want} nodes)")
                layout[shard].append(zone)
                add.append(AddNode(node_id(shard, index), shard, index, zone))
        elif len(members) > want and not any(n.role == PRIMARY and not n.halted for n in members):
            waiting.append(
                f"shard {shard} has no node answering as its primary right now, so none of its nodes is "
                "known to be safe to remove")
        elif len(members) > want:
            remove += _removals(members, len(members) - want)
    return ReplicaPlan(replicas, tuple(add), tuple(remove), tuple(warnings), tuple(waiting))


def _zone_for(zones: list[str], spreading: Spreading, layout: dict[int, list[str]], shard: int) -> str:
    """Where the shared placement would put one more node of shard, given every node's zone."""
    shards = max(layout) + 1
    placed = tuple(
        tuple(NodePlacement(s, i, zone, False) for i, zone in enumerate(layout.get(s, [])))
        for s in range(shards))
    # The newcomer itself, in a zone it is then moved out of: replacement_zone leaves it out of the counts.
    newcomer = NodePlacement(shard, len(layout[shard]), zones[0], False)
    grown = (*placed[:shard], (*placed[shard], newcomer), *placed[shard + 1:])
    plan = ZonePlan(zones=tuple(zones), spreading=spreading, replicas=0, shards=grown)
    try:
        return replacement_zone(plan, shard, newcomer.index, (), zones)
    except ZoneSpreadError as exc:
        raise ReplicaScaleError(str(exc)) from None


def _removals(members: list[ReplicaNode], count: int) -> list[str]:
    """The count replicas of one shard to remove, in the order of the module docstring."""
    candidates = [n for n in members if n.role != PRIMARY]
    zones = Counter(n.zone for n in members)
    chosen: list[str] = []
    for _ in range(count):
        if not candidates:
            break  # every other node claims to lead: the caller asks again once one steps down
        victim = min(candidates, key=lambda n: (n.serving, -zones[n.zone], -n.index))
        candidates.remove(victim)
        zones[victim.zone] -= 1
        chosen.append(victim.id)
    return chosen
