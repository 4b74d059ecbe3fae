"""The cluster's shape: which shard owns each slot, each shard's primary, and its nodes."""

from __future__ import annotations

import hashlib
import json
import time
from array import array
from dataclasses import asdict, dataclass, field

from engram.cluster.slots import SLOTS
from engram.cluster.users import Users
from engram.records import known_fields

# A node that has not refreshed its record for this long is left out of CLUSTER replies.
NODE_STALE_SECONDS = 30.0


class TopologyError(ValueError):
    """A slot map or record that does not describe a valid cluster."""


def cluster_node_id(name: str) -> str:
    """The 40-hex id Valkey cluster clients expect, derived from the node's readable name."""
    return hashlib.sha1(name.encode()).hexdigest()


@dataclass
class SlotMap:
    """Contiguous slot ranges per shard; every slot is owned by exactly one shard.

    `count` shards exist (0..count-1); a shard may own no slot (just added, or drained before it is
    removed). `moving` lists slots being migrated from their owner to another shard (docs/scaling.md).
    """

    ranges: list[tuple[int, int, int]]  # (first slot, last slot, shard)
    epoch: int = 1
    count: int = 0
    moving: list[tuple[int, int, int]] = field(default_factory=list)  # (first, last, target shard)

    def __post_init__(self) -> None:
        self.ranges = sorted(tuple(r) for r in self.ranges)  # type: ignore[misc]
        self.moving = sorted(tuple(m) for m in self.moving)  # type: ignore[misc]
        owner = array("h", [-1]) * SLOTS
        for first, last, shard in self.ranges:
            if not 0 <= first <= last < SLOTS:
                raise TopologyError(f"slot range {first}-{last} is outside 0-{SLOTS - 1}")
            if shard < 0:
                raise TopologyError(f"slot range {first}-{last} names shard {shard}")
            for slot in range(first, last + 1):
                if owner[slot] != -1:
                    raise TopologyError(f"slot {slot} is assigned to shards {owner[slot]} and {shard}")
                owner[slot] = shard
        missing = owner.count(-1)
        if missing:
            raise TopologyError(f"{missing} slots are not assigned to any shard")
        highest = max(shard for _, _, shard in self.ranges) + 1
        if not self.count:
            self.count = highest
        elif highest > self.count:
            raise TopologyError(f"slots are assigned to shard {highest - 1} of a {self.count}-shard cluster")
        target = array("h", [-1]) * SLOTS
        for first, last, shard in self.moving:
            if not 0 <= first <= last < SLOTS or not 0 <= shard < self.count:
                raise TopologyError(f"moving slots {first}-{last} to shard {shard}: out of range")
            for slot in range(first, last + 1):
                if owner[slot] == shard:
                    raise TopologyError(f"slot {slot} is moving to shard {shard}, which owns it")
                if target[slot] != -1:
                    raise TopologyError(f"slot {slot} is moving twice")
                target[slot] = shard
        self._owner = owner
        self._target = target

    @classmethod
    def even(cls, shards: int) -> SlotMap:
        """Slots split as evenly as possible, in shard order."""
        if not 1 <= shards <= 500:
            raise TopologyError(f"shards must be between 1 and 500, got {shards}")
        return cls(even_ranges(shards))

    def owner(self, slot: int) -> int:
        return self._owner[slot]

    def target(self, slot: int) -> int:
        """The shard the slot is moving to, -1 when it is not moving."""
        return self._target[slot]

    def owners(self) -> list[int]:
        """The owning shard of every slot."""
        return list(self._owner)

    def shards(self) -> list[int]:
        return list(range(self.count))

    def ranges_of(self, shard: int) -> list[tuple[int, int]]:
        return [(first, last) for first, last, owner in self.ranges if owner == shard]

    def slot_count(self, shard: int) -> int:
        return sum(last - first + 1 for first, last in self.ranges_of(shard))

    def ranges_text(self, shard: int) -> str:
        """A shard's slots as status reports show them, e.g. `0-5460,7000`."""
        return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in self.ranges_of(shard))

    @classmethod
    def from_ranges_text(cls, texts: dict[int, str]) -> SlotMap:
        """The map whose shards report these ranges_text strings."""
        return cls([
            (int(first), int(last or first), shard)
            for shard, text in texts.items() if text
            for first, _, last in (part.partition("-") for part in text.split(","))
        ], count=max(texts, default=-1) + 1)

    @classmethod
    def from_owners(cls, owners: list[int], epoch: int, count: int,
                    moving: list[tuple[int, int, int]] | None = None) -> SlotMap:
        """The map with this owner per slot, ranges merged."""
        return cls(merge_ranges(owners), epoch, count, list(moving or []))

    def dumps(self) -> bytes:
        return json.dumps({
            "epoch": self.epoch, "ranges": self.ranges, "shards": self.count, "moving": self.moving,
        }).encode()

    @classmethod
    def loads(cls, data: bytes) -> SlotMap:
        try:
            raw = json.loads(data)
            return cls(
                [tuple(r) for r in raw["ranges"]], int(raw["epoch"]), int(raw.get("shards") or 0),
                [tuple(m) for m in raw.get("moving") or []],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise TopologyError(f"malformed slot map in cluster metadata: {exc}") from None


def even_ranges(shards: int) -> list[tuple[int, int, int]]:
    """The 16384 slots split as evenly as possible over shards 0..shards-1, in order."""
    base, extra = divmod(SLOTS, shards)
    ranges, start = [], 0
    for shard in range(shards):
        size = base + (1 if shard < extra else 0)
        ranges.append((start, start + size - 1, shard))
        start += size
    return ranges


def merge_ranges(owners: list[int]) -> list[tuple[int, int, int]]:
    """Per-slot values (-1: none) as contiguous (first, last, value) ranges."""
    ranges: list[tuple[int, int, int]] = []
    for slot, shard in enumerate(owners):
        if shard < 0:
            continue
        if ranges and ranges[-1][2] == shard and ranges[-1][1] == slot - 1:
            ranges[-1] = (ranges[-1][0], slot, shard)
        else:
            ranges.append((slot, slot, shard))
    return ranges


@dataclass
class LeaderRecord:
    """A shard's primary as it published itself on winning leadership."""

    shard: int
    node: str
    address: str
    epoch: int

    def dumps(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def loads(cls, data: bytes) -> LeaderRecord:
        return cls(**known_fields(cls, json.loads(data)))


@dataclass
class NodeRecord:
    """A node's own advertisement: where it is and what it is doing."""

    node: str
    shard: int
    zone: str
    address: str
    role: str
    applied_seq: int = 0
    updated: float = field(default_factory=time.time)
    # The node's control port (ENGRAM.STATUS, ENGRAM.FAILOVER); empty in records of older nodes.
    admin: str = ""
    # The control port speaks TLS (a TLS cluster's node); False in records of older nodes, which
    # served it in plain text, so peers still reach them while a cluster is rolled.
    admin_tls: bool = False
    # Where another shard's Valkey reaches this node's Valkey with MIGRATE, when not at `address`:
    # a node that terminates client TLS itself (node/tls_front.py) announces its TLS port, which
    # MIGRATE's plain TCP cannot speak. Empty: `address` (and in records of older nodes).
    migrate: str = ""

    def dumps(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def loads(cls, data: bytes) -> NodeRecord:
        return cls(**known_fields(cls, json.loads(data)))


@dataclass
class ClusterView:
    """A node's current picture of the cluster, fed by the metadata watch."""

    slots: SlotMap | None = None
    leaders: dict[int, LeaderRecord] = field(default_factory=dict)
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    # Bumped on every change, so whoever renders the view knows when to render it again.
    changes: int = 0
    users: Users = field(default_factory=Users)
    # The reshard record's JSON text (resharding/record.py), "" when none was recorded.
    reshard: str = ""

    def owner(self, slot: int) -> int | None:
        return self.slots.owner(slot) if self.slots is not None else None

    def leader_address(self, shard: int) -> str:
        record = self.leaders.get(shard)
        return record.address if record else ""

    def live_nodes(self, shard: int, now: float | None = None) -> list[NodeRecord]:
        """The shard's nodes with fresh records, leader first."""
        now = time.time() if now is None else now
        leader = self.leaders.get(shard)
        members = [
            n for n in self.nodes.values()
            if n.shard == shard and now - n.updated < NODE_STALE_SECONDS
        ]
        members.sort(key=lambda n: (not (leader and n.node == leader.node), n.node))
        return members
