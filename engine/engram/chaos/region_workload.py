"""The multi-region chaos workload: one writer per region, through that region's endpoint, and the
ledger of what each region was told about its writes (docs/multi-region.md, "Faults across regions").

Each writer writes its own keys (`<region>:k<i>`, SET of an increasing counter) and, every other
step, one of the keys all regions write: SET of strings, HSET/HDEL of hash fields, SADD/SREM of set
members (last-writer-wins), INCRBY of an additive counter, and SET ... EX of a string with a
converging TTL. A write is acknowledged, refused before it ran (it did not happen), or unsure.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from bisect import bisect_left
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from engram.chaos.client import Answer, RoutedClient, expected_error
from engram.chaos.history import Outcome as Said

# What one write decides: (kind, key, field or member); a string's field is "".
Item = tuple[str, str, str]
# What a write leaves there: a string's or field's value, PRESENT for a set member, None for
# removed (HDEL, SREM) or never written.
Outcome = str | None
PRESENT = "present"
# A breath between a writer's steps: writers unpaced would keep both cores busy with their own
# commits and leave the regions' appliers (what is measured) starved.
PAUSE = 0.01
# After a failed write: not a wait for anything, just not hammering a region while it fails over.
BACKOFF = 0.1
# Failures that are the network's, not a reply: the client's categories (engram.chaos.client).
_NETWORK = ("connect", "timeout", "disconnected")


@dataclass(frozen=True)
class RegionKeys:
    """The keys the writers use; counter or ttl None when the cluster has no pattern for it."""

    regions: tuple[str, ...]
    own_keys: int = 40
    strings: tuple[str, ...] = ("shared:s0", "shared:s1", "shared:s2")
    hash: str = "shared:h"
    fields: tuple[str, ...] = ("f0", "f1", "f2", "f3")
    set: str = "shared:set"
    members: tuple[str, ...] = ("m0", "m1", "m2", "m3")
    # An additive counter (`up --counters`): every region's increments add up.
    counter: str | None = "counter:hits"
    # A string whose TTL replicates with its value (`up --ttls`).
    ttl: str | None = "session:chaos"
    ttl_seconds: int = 3600

    def own(self, region: str) -> list[str]:
        return [f"{region}:k{i}" for i in range(self.own_keys)]

    def owner(self, item: Item) -> str | None:
        """The region that alone writes the item, or None for a shared one."""
        region, _, rest = item[1].partition(":")
        if item[0] == "string" and region in self.regions and rest.startswith("k") and rest[1:].isdigit():
            return region
        return None

    def strings_read(self) -> list[str]:
        """Every string key a writer may have set (the counter aside)."""
        return [*(k for r in self.regions for k in self.own(r)), *self.strings,
                *([self.ttl] if self.ttl else [])]

    def items(self) -> list[Item]:
        """Every last-writer-wins item: strings, hash fields, set members."""
        return [*(("string", k, "") for k in self.strings_read()),
                *(("hash", self.hash, f) for f in self.fields), *(("set", self.set, m) for m in self.members)]


@dataclass
class Ledger:
    """One region's writes: per item the outcome of its last acknowledged write and the outcomes of
    the unsure writes after it (they may or may not have happened); the counter's increments."""

    acked: dict[Item, Outcome] = field(default_factory=dict)
    unsure: dict[Item, set[Outcome]] = field(default_factory=lambda: defaultdict(set))
    increments_acked: int = 0
    increments_unsure: list[int] = field(default_factory=list)
    # The TTL string's values: when each write was sent and answered (or given up), wall clock.
    ttl_windows: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Acknowledged writes, when sent and when answered (time.monotonic()); sent ascends.
    sent: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    # ok / refused (did not happen) / unsure, and the failures by category (TRYAGAIN, timeout, ...).
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    # Writes refused with an error no failover gives: each one a finding.
    unexpected: list[str] = field(default_factory=list)

    def ok(self, item: Item, outcome: Outcome) -> None:
        self.acked[item] = outcome
        # Stamps only grow within a region, across its failovers too: an earlier write that may
        # have happened is older than this one and can no longer be what this region left.
        self.unsure.pop(item, None)

    def failed(self, item: Item, outcome: Outcome) -> None:
        self.unsure[item].add(outcome)

    def wrote(self, item: Item) -> bool:
        return item in self.acked or bool(self.unsure.get(item))

    def candidates(self, item: Item) -> set[Outcome]:
        """What this region's newest write of the item that happened may have left; an item never
        acknowledged may also never have been written at all (None)."""
        last = {self.acked[item]} if item in self.acked else {None}
        return last | self.unsure.get(item, set())

    def acks_since(self, moment: float, before: float = float("inf")) -> int:
        """Acknowledged writes sent at or after `moment` and answered before `before`."""
        first = bisect_left(self.sent, moment)
        return sum(1 for d in self.done[first:] if d < before)

    def first_ack_after(self, moment: float) -> float | None:
        """Seconds from `moment` until a write sent after it was acknowledged (None: none was)."""
        first = bisect_left(self.sent, moment)
        # One write at a time: answers come in the order the writes were sent.
        return self.done[first] - moment if first < len(self.done) else None


# A step: the item, the outcome it leaves, the command, and for INCRBY the delta.
Step = tuple[Item, Outcome, tuple[str, ...], int]


def _own(keys: RegionKeys, region: str, rng: random.Random, n: int) -> Step:
    key = f"{region}:k{rng.randrange(keys.own_keys)}"
    return ("string", key, ""), str(n), ("SET", key, str(n)), 0


def _shared(keys: RegionKeys, region: str, rng: random.Random, n: int) -> Step:
    value = f"{region}:{n}"
    kinds = ["string", "hash", "set", *(["counter"] if keys.counter else []), *(["ttl"] if keys.ttl else [])]
    kind = rng.choice(kinds)
    if kind == "counter":
        assert keys.counter is not None
        delta = rng.randint(1, 5)
        return ("counter", keys.counter, ""), None, ("INCRBY", keys.counter, str(delta)), delta
    if kind == "ttl":
        assert keys.ttl is not None
        return ("string", keys.ttl, ""), value, ("SET", keys.ttl, value, "EX", str(keys.ttl_seconds)), 0
    if kind == "string":
        key = rng.choice(keys.strings)
        return ("string", key, ""), value, ("SET", key, value), 0
    if kind == "hash":
        name = rng.choice(keys.fields)
        if rng.random() < 0.2:  # removals too: their tombstones must win and lose like values
            return ("hash", keys.hash, name), None, ("HDEL", keys.hash, name), 0
        return ("hash", keys.hash, name), value, ("HSET", keys.hash, name, value), 0
    member = rng.choice(keys.members)
    if rng.random() < 0.4:
        return ("set", keys.set, member), None, ("SREM", keys.set, member), 0
    return ("set", keys.set, member), PRESENT, ("SADD", keys.set, member), 0


def failure(answer: Answer) -> tuple[str, bool]:
    """A failed write's category and whether it counts as expected: a refusal or an unknown outcome
    as a failover answers it, or the network's trouble; anything else is a finding."""
    if answer.category in _NETWORK:
        return answer.category, True
    return answer.category or "error", expected_error(answer.error)


@dataclass
class RegionWriter:
    """One thread writing through one region's endpoint: its own keys and the shared ones."""

    region: str
    endpoint: str
    keys: RegionKeys
    seed: int
    timeout: float = 5.0
    ledger: Ledger = field(default_factory=Ledger)
    # What the run is doing, for the messages about unexpected errors.
    phase: str = "before the faults"
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _crash: BaseException | None = None

    def start(self) -> RegionWriter:
        self._thread = threading.Thread(target=self._main, name=f"writer-{self.region}", daemon=True)
        self._thread.start()
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by stop(): a writer that died is no workload
            self._crash = exc

    async def _run(self) -> None:
        rng = random.Random(f"{self.seed}-{self.region}")
        # No retries: a write that fails is recorded, and the client goes back to the endpoint,
        # which relays to the region's current primary.
        client = RoutedClient(self.endpoint, timeout=self.timeout, connect_timeout=2.0)
        n = 0
        try:
            while not self._stop.is_set():
                n += 1
                steps = [_own(self.keys, self.region, rng, n)]
                if rng.random() < 0.5:
                    steps.append(_shared(self.keys, self.region, rng, n))
                for step in steps:
                    if not await self._write(client, step):
                        await asyncio.sleep(BACKOFF)
                        break
                await asyncio.sleep(PAUSE)
        finally:
            client.close()

    async def _write(self, client: RoutedClient, step: Step) -> bool:
        item, outcome, command, delta = step
        sent, wall = time.monotonic(), time.time()
        answer = await client.call(command[1].encode(), *(part.encode() for part in command))
        with self._lock:
            ledger = self.ledger
            if self.keys.ttl is not None and item[1] == self.keys.ttl and outcome is not None:
                ledger.ttl_windows[outcome] = (wall, time.time())
            if answer.outcome is Said.OK:
                ledger.outcomes["ok"] += 1
                if delta:
                    ledger.increments_acked += delta
                else:
                    ledger.ok(item, outcome)
                ledger.sent.append(sent)
                ledger.done.append(time.monotonic())
                return True
            category, expected = failure(answer)
            ledger.errors[category if expected else "unexpected"] += 1
            if not expected:
                ledger.unexpected.append(f"{self.region} {self.phase}: {' '.join(command)}: {answer.error}")
            if answer.outcome is Said.FAIL:  # refused before it ran: it did not happen
                ledger.outcomes["refused"] += 1
                return False
            ledger.outcomes["unsure"] += 1
            if delta:
                ledger.increments_unsure.append(delta)
            else:
                ledger.failed(item, outcome)
            return False

    def acks_since(self, moment: float) -> int:
        """Acknowledged writes sent at or after `moment` (a reply already on its way does not count)."""
        with self._lock:
            return self.ledger.acks_since(moment)

    @property
    def acks(self) -> int:
        with self._lock:
            return len(self.ledger.sent)

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase

    def stop(self, timeout: float = 30.0) -> None:
        """Stop writing and wait for the last write's answer; raise if the writer died or hung."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"{self.region}'s writer did not stop within {timeout:g}s")
        if self._crash is not None:
            raise RuntimeError(f"{self.region}'s writer failed: {self._crash!r}") from self._crash
