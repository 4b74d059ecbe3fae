"""The zone planner: which availability zone each node of each shard runs in.

Shared by the local platform and the Kubernetes operator. Zone names are sorted first, so the
plan depends only on the set of zones, never on the order they were listed in.

Layout: the nodes of all shards, shard after shard, are dealt round-robin over the zones, so
per-zone node counts differ by at most one and a shard's nodes fall in consecutive (hence
distinct, when there are enough) zones. Within its zones, each shard's primary is chosen so that
every run of len(zones) consecutive shards puts exactly one primary in each zone. A shard's
placement depends only on its number, so adding shards never moves existing ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from math import gcd

__all__ = [
    "NodePlacement",
    "Spreading",
    "ZonePlan",
    "ZonePlanError",
    "ZoneSpreadError",
    "plan_zones",
    "replacement_zone",
]


class ZonePlanError(ValueError):
    """The planner was given inputs it cannot plan for (no zones, a negative count, ...)."""


class ZoneSpreadError(ZonePlanError):
    """Spreading is Required and the shard's nodes cannot all be in different zones."""


class Spreading(StrEnum):
    """How strictly a shard's nodes must sit in distinct zones (as in the MemoryCluster spec)."""

    REQUIRED = "Required"  # refuse a layout that puts two nodes of a shard in one zone
    PREFERRED = "Preferred"  # spread as far as the zones allow, and say how it fell short

    @classmethod
    def parse(cls, value: str | Spreading) -> Spreading:
        """The Spreading named value (any case), or ZonePlanError naming the accepted values."""
        for member in cls:
            if str(value).lower() == member.value.lower():
                return member
        raise ZonePlanError(f"spreading must be Required or Preferred, got {value!r}")


@dataclass(frozen=True, slots=True)
class NodePlacement:
    """Node index of shard, placed in zone; index 0 is the planned primary."""

    shard: int
    index: int
    zone: str
    primary: bool


@dataclass(frozen=True, slots=True)
class ZonePlan:
    """Placement of every node of every shard; shards[s][i] is node i of shard s."""

    zones: tuple[str, ...]
    spreading: Spreading
    replicas: int
    shards: tuple[tuple[NodePlacement, ...], ...]
    warnings: tuple[str, ...] = ()

    @property
    def nodes(self) -> list[NodePlacement]:
        """Every placement, shard by shard."""
        return [node for shard in self.shards for node in shard]

    def node(self, shard: int, index: int) -> NodePlacement:
        """Node index of shard, or ZonePlanError naming the plan's nodes."""
        if not 0 <= shard < len(self.shards):
            raise ZonePlanError(f"shard {shard} is not in the plan: it has shards 0..{len(self.shards) - 1}")
        # Looked up by index, not position: after a replica scale-down a shard's indices can have gaps.
        for node in self.shards[shard]:
            if node.index == index:
                return node
        have = ", ".join(str(n.index) for n in self.shards[shard]) or "none"
        raise ZonePlanError(f"shard {shard} has no node {index}: it has nodes {have}")

    def has(self, shard: int, index: int) -> bool:
        """Whether the plan holds node index of shard."""
        return 0 <= shard < len(self.shards) and any(n.index == index for n in self.shards[shard])

    def zone_load(self) -> Counter[str]:
        """Nodes per zone (every zone of the plan present, even at zero)."""
        load = Counter(dict.fromkeys(self.zones, 0))
        load.update(node.zone for node in self.nodes)
        return load

    def primary_load(self) -> Counter[str]:
        """Planned primaries per zone (every zone of the plan present, even at zero)."""
        load = Counter(dict.fromkeys(self.zones, 0))
        load.update(node.zone for node in self.nodes if node.primary)
        return load

    def shard_zones(self, shard: int) -> list[str]:
        """The zones of shard's nodes, in node order."""
        return [node.zone for node in self.shards[shard]]

    def moved(self, shard: int, index: int, zone: str) -> ZonePlan:
        """This plan with one node placed in zone instead (its primary flag unchanged)."""
        node = self.node(shard, index)
        nodes = [replace(n, zone=zone) if n is node else n for n in self.shards[shard]]
        shards = list(self.shards)
        shards[shard] = tuple(nodes)
        zones = self.zones if zone in self.zones else tuple(sorted((*self.zones, zone)))
        return replace(self, shards=tuple(shards), zones=zones)


def plan_zones(
    zones: Iterable[str], shards: int, replicas: int, spreading: Spreading | str = Spreading.REQUIRED
) -> ZonePlan:
    """Place shards x (replicas + 1) nodes over zones; see the module docstring for the layout."""
    names = _zone_names(zones)
    mode = Spreading.parse(spreading)
    if shards < 1:
        raise ZonePlanError(f"shards must be at least 1, got {shards}")
    if replicas < 0:
        raise ZonePlanError(f"replicas must be 0 or more, got {replicas}")
    per_shard = replicas + 1
    count = len(names)
    warnings: list[str] = []
    if per_shard > count:
        if mode is Spreading.REQUIRED:
            raise ZoneSpreadError(
                f"spreading Required puts each node of a shard in its own zone, but a shard has "
                f"{per_shard} nodes (primary + {replicas} replicas) and there are only {count} zones "
                f"({', '.join(names)}): add {per_shard - count} zone(s), lower replicas to {count - 1}, "
                f"or set spreading to Preferred"
            )
        crowded = -(-per_shard // count)  # ceil
        warnings.append(
            f"spreading Preferred: a shard has {per_shard} nodes (primary + {replicas} replicas) but there "
            f"are only {count} zones ({', '.join(names)}), so every shard has up to {crowded} nodes in one "
            f"zone and losing that zone takes {crowded} of its {per_shard} nodes; add "
            f"{per_shard - count} zone(s) to give each node its own zone"
        )
    plan = tuple(_place_shard(s, per_shard, names) for s in range(shards))
    return ZonePlan(zones=names, spreading=mode, replicas=replicas, shards=plan, warnings=tuple(warnings))


def _place_shard(shard: int, per_shard: int, zones: tuple[str, ...]) -> tuple[NodePlacement, ...]:
    """The nodes of one shard: positions shard*per_shard onwards of the round-robin deal."""
    count = len(zones)
    start = shard * per_shard
    # The window starts repeat every count // g shards; shifting the primary by one position
    # per repetition gives each of a block of `count` shards a different primary zone.
    repeats = count // gcd(per_shard, count)
    offset = (shard % count) // repeats
    positions = [start + (offset + i) % per_shard for i in range(per_shard)]
    return tuple(
        NodePlacement(shard=shard, index=i, zone=zones[pos % count], primary=i == 0)
        for i, pos in enumerate(positions)
    )


def replacement_zone(
    plan: ZonePlan,
    shard: int,
    node_index: int,
    lost_zones: Iterable[str],
    live_zones: Iterable[str],
) -> str:
    """The zone for a replacement of node node_index of shard, given which zones are lost and live.

    Prefers a live zone no other node of the shard uses, then the least loaded, then by name.
    """
    node = plan.node(shard, node_index)
    lost = set(lost_zones)
    live = set(live_zones)
    candidates = sorted(live - lost)
    if not candidates:
        raise ZoneSpreadError(
            f"no live zone to replace node {node_index} of shard {shard} in: every zone is lost "
            f"(lost: {', '.join(sorted(lost)) or 'none'}; live: {', '.join(sorted(live)) or 'none'}); "
            f"bring a zone back or add one"
        )
    others = Counter(n.zone for n in plan.shards[shard] if n.index != node_index)
    load = Counter(n.zone for n in plan.nodes if n is not node)
    primaries = Counter(n.zone for n in plan.nodes if n.primary and n is not node)
    unused = [zone for zone in candidates if others[zone] == 0]
    if not unused and plan.spreading is Spreading.REQUIRED:
        raise ZoneSpreadError(
            f"spreading Required: node {node_index} of shard {shard} needs a zone its shard does not use, "
            f"but its other nodes already use every live zone ({', '.join(candidates)}); bring a lost zone "
            f"({', '.join(sorted(lost)) or 'none'}) back, add a zone, or set spreading to Preferred"
        )
    return min(
        candidates,
        key=lambda zone: (others[zone], load[zone], primaries[zone] if node.primary else 0, zone),
    )


def _zone_names(zones: Iterable[str]) -> tuple[str, ...]:
    names = list(zones)
    if isinstance(zones, str):
        raise ZonePlanError(f"zones must be a list of zone names, got the single string {zones!r}")
    if not names:
        raise ZonePlanError("zones is empty: give at least one zone name")
    bad = [z for z in names if not isinstance(z, str) or not z]
    if bad:
        raise ZonePlanError(f"zone names must be non-empty strings, got {bad!r}")
    repeated = sorted(z for z, n in Counter(names).items() if n > 1)
    if repeated:
        raise ZonePlanError(f"zones {', '.join(repeated)} listed more than once: list each zone once")
    return tuple(sorted(names))
