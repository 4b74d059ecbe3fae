"""Which slots move where when the shard count changes: pure planning (docs/scaling.md)."""

from __future__ import annotations

from dataclasses import dataclass

from engram.cluster.slots import SLOTS
from engram.cluster.topology import SlotMap, merge_ranges


@dataclass(frozen=True)
class Move:
    """A contiguous run of slots going from one shard to another."""

    first: int
    last: int
    source: int
    target: int

    @property
    def slots(self) -> int:
        return self.last - self.first + 1


def desired_counts(shards: int) -> list[int]:
    """How many slots each of shards 0..shards-1 holds once balanced (the first ones one more)."""
    base, extra = divmod(SLOTS, shards)
    return [base + (1 if shard < extra else 0) for shard in range(shards)]


def plan_moves(slots: SlotMap, shards: int) -> list[Move]:
    """The fewest slot moves that leave shards 0..shards-1 balanced and higher shards empty.

    A shard over its share gives away its highest slots; shards under their share take them in
    shard order, so scaling out from an even map gives the even map of the new count.
    """
    if shards < 1:
        raise ValueError(f"a cluster needs at least one shard, not {shards}")
    owners = slots.owners()
    total = max(slots.count, shards)
    desired = desired_counts(shards) + [0] * (total - shards)
    held: list[list[int]] = [[] for _ in range(total)]
    for slot, shard in enumerate(owners):
        held[shard].append(slot)
    surplus: list[tuple[int, int]] = []  # (slot, source)
    for shard in range(total):
        extra = len(held[shard]) - desired[shard]
        if extra > 0:
            surplus += [(slot, shard) for slot in held[shard][-extra:]]
    target_of = [-1] * SLOTS
    source_of = [-1] * SLOTS
    need = [(shard, desired[shard] - len(held[shard])) for shard in range(total)]
    index = 0
    for shard, count in need:
        for _ in range(max(count, 0)):
            slot, source = surplus[index]
            target_of[slot], source_of[slot] = shard, source
            index += 1
    moves = []
    for first, last, target in merge_ranges(target_of):
        # A run to one target may span two sources: split it where the source changes.
        start = first
        for slot in range(first + 1, last + 2):
            if slot > last or source_of[slot] != source_of[start]:
                moves.append(Move(start, slot - 1, source_of[start], target))
                start = slot
    return moves


def chunks(moves: list[Move], size: int) -> list[list[Move]]:
    """The moves in groups of at most `size` slots, one source per group, in plan order."""
    groups: list[list[Move]] = []
    for source in sorted({m.source for m in moves}):
        current: list[Move] = []
        room = size
        for move in (m for m in moves if m.source == source):
            first = move.first
            while first <= move.last:
                last = min(move.last, first + room - 1)
                current.append(Move(first, last, source, move.target))
                room -= last - first + 1
                first = last + 1
                if room == 0:
                    groups.append(current)
                    current, room = [], size
        if current:
            groups.append(current)
    return groups


def apply_moves(slots: SlotMap, moves: list[Move]) -> SlotMap:
    """The map once the moves are done: their slots owned by their targets, nothing in motion."""
    owners = slots.owners()
    for move in moves:
        owners[move.first : move.last + 1] = [move.target] * move.slots
    return SlotMap.from_owners(owners, slots.epoch, slots.count)


def start_moves(slots: SlotMap, moves: list[Move]) -> SlotMap:
    """The map with these moves in motion (MIGRATING on their source, IMPORTING on their target)."""
    return SlotMap(slots.ranges, slots.epoch, slots.count, [(m.first, m.last, m.target) for m in moves])


def moves_in_motion(slots: SlotMap) -> list[Move]:
    """The moves a slot map shows in motion, as Moves (their source is each slot's owner)."""
    moves = []
    for first, last, target in slots.moving:
        start = first
        for slot in range(first + 1, last + 2):
            if slot > last or slots.owner(slot) != slots.owner(start):
                moves.append(Move(start, slot - 1, slots.owner(start), target))
                start = slot
    return moves
