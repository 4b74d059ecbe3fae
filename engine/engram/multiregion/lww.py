"""Last-writer-wins across regions: what a key holds once every region's writes have arrived.

Every write carries a Stamp and names the type it writes (a DEL writes none). The rules, as
docs/multi-region.md states them:
- the key's type is the type of its latest write;
- a string is its latest write's value;
- a hash, set or sorted set holds, for each field or member, what the latest write to that field or
  member said (set or removed), counting only writes newer than every write of another type;
- a collection left with nothing, like a DEL, leaves the key absent.
This is a function of the set of writes, not of their order: regions that have applied the same
writes, in any order, hold the same data. KeyState computes it incrementally; `resolve` computes it
from scratch and exists to check the incremental one.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


class Kind(enum.StrEnum):
    NONE = "none"  # DEL: the key holds nothing
    STRING = "string"
    HASH = "hash"
    SET = "set"
    ZSET = "zset"


COLLECTIONS = (Kind.HASH, Kind.SET, Kind.ZSET)


@dataclass(frozen=True, order=True)
class Stamp:
    """When a write happened (hybrid logical clock, microseconds) and where: ties between regions
    go to the greater region name, so every region orders any two writes alike."""

    hlc: int
    region: str


@dataclass(frozen=True, eq=False)
class Write:
    """One write's effect on one key, as it replicates between regions.

    STRING: ``value``. HASH: ``put`` field -> value. SET: ``put`` member -> b"". ZSET: ``put``
    member -> score. Collections name removed fields or members in ``remove``.
    """

    key: bytes
    stamp: Stamp
    kind: Kind
    value: bytes = b""
    put: Mapping[bytes, Any] = field(default_factory=dict)
    remove: frozenset[bytes] = frozenset()

    def __post_init__(self) -> None:
        if self.kind not in COLLECTIONS and (self.put or self.remove):
            raise ValueError(f"a {self.kind} write has no fields or members")
        if set(self.put) & self.remove:
            raise ValueError("a write both sets and removes the same field or member")


@dataclass(frozen=True)
class Element:
    """A field or member: the stamp of the write that decided it, and what it said."""

    stamp: Stamp
    present: bool
    value: Any = b""


# What a reader sees: None (absent), or the type and bytes (string), dict (hash, zset), frozenset (set).
Visible = tuple[Kind, Any] | None


@dataclass
class KeyState:
    """One key's data and the stamps that decide how later writes land on it."""

    top: Stamp | None = None  # the latest write's stamp
    kind: Kind = Kind.NONE  # the latest write's type
    # The latest write of another type than ``kind``: writes of ``kind`` at or before it lost.
    base: Stamp | None = None
    value: bytes = b""
    elements: dict[bytes, Element] = field(default_factory=dict)

    def apply(self, write: Write) -> None:
        if self.top is None or (write.kind != self.kind and write.stamp > self.top):
            # A new type (or the key's first write): every earlier write was of another type, so
            # none of them counts and the old top bounds what older writes of this type may add.
            self.base = self.top
            self.kind, self.top, self.value, self.elements = write.kind, write.stamp, b"", {}
            self._merge(write)
        elif write.kind != self.kind:
            # An older write of another type: it still outdates this type's writes before it.
            if self.base is None or write.stamp > self.base:
                self.base = write.stamp
                self.elements = {m: e for m, e in self.elements.items() if e.stamp > write.stamp}
        elif self.base is None or write.stamp > self.base:
            if write.stamp > self.top:
                self.top = write.stamp
                self.value = write.value
            self._merge(write)

    def _merge(self, write: Write) -> None:
        if write.kind == Kind.STRING and write.stamp == self.top:
            self.value = write.value
        for member, value in write.put.items():
            self._decide(member, Element(write.stamp, True, value))
        for member in write.remove:
            self._decide(member, Element(write.stamp, False))

    def _decide(self, member: bytes, element: Element) -> None:
        held = self.elements.get(member)
        if held is None or element.stamp > held.stamp:
            self.elements[member] = element

    def visible(self) -> Visible:
        """What a reader of the key sees."""
        if self.top is None or self.kind == Kind.NONE:
            return None
        if self.kind == Kind.STRING:
            return (Kind.STRING, self.value)
        return _collection(self.kind, self.elements)

    def collect(self, frontier: Stamp) -> bool:
        """Forget what no write still to come can need: every write at or before ``frontier`` has
        been applied here. True when nothing is left to keep."""
        if self.base is not None and self.base <= frontier:
            self.base = None  # no older write of another type can still arrive
        self.elements = {m: e for m, e in self.elements.items() if e.present or e.stamp > frontier}
        # A deleted or emptied key whose last write is settled: any later write starts it afresh.
        return self.top is not None and self.top <= frontier and self.visible() is None

    def tombstones(self) -> int:
        """Removed fields or members still remembered, and the key itself when deleted."""
        removed = sum(1 for e in self.elements.values() if not e.present)
        return removed + (1 if self.top is not None and self.visible() is None else 0)


def _collection(kind: Kind, elements: Mapping[bytes, Element]) -> Visible:
    present = {m: e.value for m, e in elements.items() if e.present}
    if not present:
        return None  # Valkey removes an emptied collection
    if kind == Kind.SET:
        return (kind, frozenset(present))
    return (kind, present)


def resolve(writes: Iterable[Write]) -> Visible:
    """What one key holds after ``writes``, computed from all of them at once (the rules above)."""
    writes = list(writes)
    if not writes:
        return None
    top = max(writes, key=lambda w: w.stamp)
    if top.kind == Kind.NONE:
        return None
    if top.kind == Kind.STRING:
        return (Kind.STRING, top.value)
    others = [w.stamp for w in writes if w.kind != top.kind]
    base = max(others) if others else None
    elements: dict[bytes, Element] = {}
    for write in writes:
        if write.kind != top.kind or (base is not None and write.stamp <= base):
            continue
        decided = [(m, Element(write.stamp, True, v)) for m, v in write.put.items()]
        decided += [(m, Element(write.stamp, False)) for m in write.remove]
        for member, element in decided:
            held = elements.get(member)
            if held is None or element.stamp > held.stamp:
                elements[member] = element
    return _collection(top.kind, elements)


@dataclass
class Store:
    """A region's keys under the rules: local and remote writes applied alike."""

    keys: dict[bytes, KeyState] = field(default_factory=dict)

    def apply(self, write: Write) -> None:
        self.keys.setdefault(write.key, KeyState()).apply(write)

    def get(self, key: bytes) -> Visible:
        state = self.keys.get(key)
        return state.visible() if state else None

    def collect(self, frontier: Stamp) -> int:
        """Forget settled tombstones and deleted keys; how many keys were dropped."""
        gone = [key for key, state in self.keys.items() if state.collect(frontier)]
        for key in gone:
            del self.keys[key]
        return len(gone)

    def digest(self) -> str:
        """A digest of what readers see: regions that converged have equal digests."""
        h = hashlib.sha256()
        for key in sorted(self.keys):
            seen = self.keys[key].visible()
            if seen is None:
                continue
            kind, value = seen
            h.update(len(key).to_bytes(4, "big") + key + kind.value.encode())
            if isinstance(value, bytes):
                h.update(value)
            elif isinstance(value, frozenset):
                for member in sorted(value):
                    h.update(len(member).to_bytes(4, "big") + member)
            else:
                for member in sorted(value):
                    h.update(len(member).to_bytes(4, "big") + member + repr(value[member]).encode())
            h.update(b"\0")
        return h.hexdigest()


def frontier(own: Stamp, applied: Mapping[str, int]) -> Stamp | None:
    """A region's frontier: the oldest of the newest stamps it has applied from each region, its own
    (`own`, its clock now) included; `applied` maps each linked region to the newest clock applied
    from it. None while a region has sent no clock yet, which holds every tombstone."""
    if any(hlc <= 0 for hlc in applied.values()):
        return None
    return min([own, *(Stamp(hlc, region) for region, hlc in applied.items())])
