"""Which Kubernetes nodes and zones are lost, and which are only cordoned or blinking (pure).

Three things look alike from the node list and must not be treated alike:

- **lost**: a zone with no node left, or whose every node has been NotReady for NODE_LOSS_GRACE
  (a single node too, for the pods on it). Its pods are replaced elsewhere.
- **cordoned**: Ready but unschedulable, which is how maintenance starts (`kubectl drain` cordons
  first, then evicts through the PodDisruptionBudgets). Nothing is deleted; new pods go elsewhere;
  a primary there hands its shard over in a planned way before the eviction reaches it.
- **blinking**: NotReady for less than the grace (a kubelet restart, a slow heartbeat, a short
  network cut). Nothing is deleted: the engine's own lease already moves leadership away from a
  primary that cannot reach the journal, and deleting a pod on an unreachable node only leaves it
  Terminating until the node returns.

The grace adds to the node controller's own (about 40 s without heartbeats before a node turns
NotReady); the kubelet's default eviction waits 300 s, which is far longer than a database wants
to run short of a replica.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

NODE_LOSS_GRACE = 60.0


@dataclass(frozen=True)
class NodeInfo:
    """A Kubernetes node: its failure domain and whether new pods can land on it."""

    name: str
    zone: str | None
    ready: bool
    schedulable: bool
    # When its Ready condition last left True (wall-clock seconds); None while Ready, or when
    # the node has not reported yet (a node still registering is not lost).
    not_ready_since: float | None = None

    @property
    def usable(self) -> bool:
        """A new pod can be scheduled here now."""
        return self.ready and self.schedulable

    @property
    def cordoned(self) -> bool:
        return self.ready and not self.schedulable

    def lost(self, now: float, grace: float = NODE_LOSS_GRACE) -> bool:
        """NotReady for at least ``grace`` seconds."""
        return not self.ready and self.not_ready_since is not None and now - self.not_ready_since >= grace

    def blinking(self, now: float, grace: float = NODE_LOSS_GRACE) -> bool:
        """NotReady, but not for long enough to count as lost."""
        return not self.ready and not self.lost(now, grace)


def lost_zones(nodes: Iterable[NodeInfo], pod_zones: Iterable[str], now: float) -> set[str]:
    """Zones whose nodes are all lost, and zones pods run in that no node carries any more."""
    by_zone: dict[str, list[NodeInfo]] = {}
    for node in nodes:
        if node.zone:
            by_zone.setdefault(node.zone, []).append(node)
    if not by_zone:
        # No labelled node seen at all says more about the listing than about the zones.
        return set()
    lost = {zone for zone, members in by_zone.items() if all(n.lost(now) for n in members)}
    return lost | {z for z in pod_zones if z and z not in by_zone}


def blinking_zones(nodes: Iterable[NodeInfo], now: float) -> set[str]:
    """Zones with no Ready node where at least one node is still within its grace."""
    by_zone: dict[str, list[NodeInfo]] = {}
    for node in nodes:
        if node.zone:
            by_zone.setdefault(node.zone, []).append(node)
    return {
        zone
        for zone, members in by_zone.items()
        if not any(n.ready for n in members) and any(n.blinking(now) for n in members)
    }
