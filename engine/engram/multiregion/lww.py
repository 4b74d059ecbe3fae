"""Last-writer-wins across regions: what a key holds once every region's writes have arrived.

Every write carries a Stamp and names the type it writes (a DEL writes none). The rules, as
docs/multi-region.md states them:
- the key's type is the type of its latest write;
- a string is its latest write's value;
- a hash, set or sorted set holds, for each field or member, what the latest write to that field or
  member said (set or removed), counting only writes newer than every write of another type;
- a collection left with nothing, like a DEL, leaves the key absent.
An increment of an additive counter (opt-in by key pattern) is a string write that adds: a string
is its latest set's value (0 when there is none since a write of another type) plus every increment
after that set, when that value is an integer (`counter_value`).
This is a function of the set of writes, not of their order: regions that have applied the same
writes, in any order, hold the same data. KeyState computes it incrementally; `resolve` computes it
from scratch and exists to check the incremental one.
"""

from __future__ import annotations

import enum
import hashlib
import re
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

    STRING: ``value``, or ``delta`` for an additive counter's increment. HASH: ``put`` field ->
    value. SET: ``put`` member -> b"". ZSET: ``put`` member -> score. Collections name removed
    fields or members in ``remove``.
    """

    key: bytes
    stamp: Stamp
    kind: Kind
    value: bytes = b""
    put: Mapping[bytes, Any] = field(default_factory=dict)
    remove: frozenset[bytes] = frozenset()
    delta: int | None = None
    # A string set's deadline (unix ms) on a key of a ttls pattern: its TTL is part of its value.
    deadline: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in COLLECTIONS and (self.put or self.remove):
            raise ValueError(f"a {self.kind} write has no fields or members")
        if self.delta is not None and self.kind != Kind.STRING:
            raise ValueError("only a string write is an increment")
        if self.deadline is not None and (self.kind != Kind.STRING or self.delta is not None):
            raise ValueError("only a string set carries a deadline")
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

_INTEGER = re.compile(rb"0|-?[1-9][0-9]{0,37}")


def counter_value(start: bytes | None, increments: Iterable[int]) -> bytes:
    """A string's value from its latest set (None: no set, which counts from 0) and the increments
    after it: added when the set is an integer as INCR writes one (below 10^38), else ignored."""
    if start is None:
        start = b"0"
    if not _INTEGER.fullmatch(start):
        return start
    return str(int(start) + sum(increments)).encode()


@dataclass
class KeyState:
    """One key's data and the stamps that decide how later writes land on it."""

    top: Stamp | None = None  # the latest write's stamp
    kind: Kind = Kind.NONE  # the latest write's type
    # The latest write of another type than ``kind``: writes of ``kind`` at or before it lost.
    base: Stamp | None = None
    value: bytes = b""
    elements: dict[bytes, Element] = field(default_factory=dict)
    # A counter's increments not yet settled, and while there are any, the latest set before them
    # (None: no set since the base, or settled). A key never incremented has neither: its top is
    # its set. The module keeps both in the key's element tree.
    increments: dict[Stamp, int] = field(default_factory=dict)
    mark: Stamp | None = None
    # The latest set's deadline (converging TTLs); increments keep it, as INCRBY keeps a TTL.
    deadline: int | None = None

    def apply(self, write: Write) -> None:
        if self.top is None or (write.kind != self.kind and write.stamp > self.top):
            # A new type (or the key's first write): every earlier write was of another type, so
            # none of them counts and the old top bounds what older writes of this type may add.
            self.base = self.top
            self.kind, self.top, self.value, self.elements = write.kind, write.stamp, b"", {}
            self.increments, self.mark, self.deadline = {}, None, None
            if write.delta is not None:
                self.increments[write.stamp] = write.delta
                self.value = counter_value(None, [write.delta])
            else:
                self._merge(write)
        elif write.kind != self.kind:
            # An older write of another type: it still outdates this type's writes before it.
            if self.base is None or write.stamp > self.base:
                self.base = write.stamp
                self.elements = {m: e for m, e in self.elements.items() if e.stamp > write.stamp}
                if self.kind == Kind.STRING:
                    self._cut(write.stamp)
        elif self.base is None or write.stamp > self.base:
            if write.kind == Kind.STRING:
                self._string(write)
                return
            if write.stamp > self.top:
                self.top = write.stamp
            self._merge(write)

    def _string(self, write: Write) -> None:
        """A set or an increment, newer than the base (the module's string_write)."""
        assert self.top is not None
        if (write.stamp <= self.mark if self.mark is not None
                else not self.increments and write.stamp < self.top):
            return  # a newer set won
        if write.delta is not None:
            if write.stamp in self.increments:
                return
            if self.mark is None and not self.increments:
                self.mark = self.top  # the top was the set
            self.increments[write.stamp] = write.delta
            self.top = max(self.top, write.stamp)
            self.value = counter_value(self.value, [write.delta])
            return
        self.increments = {s: d for s, d in self.increments.items() if s > write.stamp}
        self.mark = write.stamp if self.increments else None
        self.top = max(self.top, write.stamp)
        self.deadline = write.deadline
        self.value = counter_value(write.value, self.increments.values()) if self.increments else write.value

    def _cut(self, cut: Stamp) -> None:
        """A write of another type at ``cut``, older than the top: when the latest set is at or before
        it, the count restarts at 0 from the increments after it."""
        if (not self.increments and self.mark is None) or (self.mark is not None and self.mark > cut):
            return
        self.increments = {s: d for s, d in self.increments.items() if s > cut}
        self.mark = None
        if self.increments:
            self.value = counter_value(None, self.increments.values())
            self.deadline = None  # the set and its TTL are gone

    def _merge(self, write: Write) -> None:
        if write.kind == Kind.STRING and write.stamp == self.top:
            self.value = write.value
            self.deadline = write.deadline
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
        # Settled increments are in the value already; a settled set's mark bounds nothing to come.
        self.increments = {s: d for s, d in self.increments.items() if s > frontier}
        if self.mark is not None and self.mark <= frontier:
            self.mark = None
        # A deleted or emptied key whose last write is settled: any later write starts it afresh.
        return self.top is not None and self.top <= frontier and self.visible() is None

    def element_count(self) -> int:
        """What the module counts as stamped elements: fields or members, increments, the mark."""
        return len(self.elements) + len(self.increments) + (self.mark is not None)

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


def resolve_deadline(writes: Iterable[Write]) -> int | None:
    """A string key's deadline: its latest set's, when that set is newer than every write of
    another type (a delete included); None for any other key."""
    writes = list(writes)
    if not writes or max(writes, key=lambda w: w.stamp).kind != Kind.STRING:
        return None
    others = [w.stamp for w in writes if w.kind != Kind.STRING]
    sets = [w for w in writes if w.kind == Kind.STRING and w.delta is None
            and (not others or w.stamp > max(others))]
    return max(sets, key=lambda w: w.stamp).deadline if sets else None


def resolve(writes: Iterable[Write]) -> Visible:
    """What one key holds after ``writes``, computed from all of them at once (the rules above)."""
    writes = list(writes)
    if not writes:
        return None
    top = max(writes, key=lambda w: w.stamp)
    if top.kind == Kind.NONE:
        return None
    others = [w.stamp for w in writes if w.kind != top.kind]
    base = max(others) if others else None
    if top.kind == Kind.STRING:
        strings = [w for w in writes if w.kind == Kind.STRING and (base is None or w.stamp > base)]
        sets = [w for w in strings if w.delta is None]
        last = max(sets, key=lambda w: w.stamp) if sets else None
        increments = {w.stamp: w.delta for w in strings
                      if w.delta is not None and (last is None or w.stamp > last.stamp)}
        return (Kind.STRING, counter_value(last.value if last else None, increments.values()))
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
