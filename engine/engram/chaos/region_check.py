"""The end of a multi-region chaos run: read every key the writers touched through each region's
endpoint, then check (pure functions of the readings and the ledgers) that

- every region holds the same (compare digests; on a difference, name the items that differ);
- each own key holds its region's last acknowledged value, or that of a later unsure write;
- each shared item holds what some region's newest write that happened left (last-writer-wins);
- the additive counter holds every acknowledged increment plus some of the unsure ones;
- the TTL string's deadline is the one its winning write set;
- no write was refused with an error no failover gives.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engram.chaos.client import RoutedClient
from engram.chaos.history import Outcome as Said
from engram.chaos.region_workload import PRESENT, Item, Ledger, Outcome, RegionKeys

# How far a TTL's deadline may lie outside the span of the write that set it (one machine, one
# clock: this covers rounding and a write executed a little after its client gave up).
DEADLINE_SLACK = 2.0
# Unexpected refusals listed per region; the rest are counted.
SHOWN = 20


class ReadFailed(RuntimeError):
    """A region could not be read back (it answered with an error, or not at all)."""


@dataclass
class RegionReading:
    """What one region holds of every key the writers touched."""

    items: dict[Item, Outcome]
    # The additive counter's value (0 when absent); None when the workload has no counter.
    counter: int | str | None = None
    # PEXPIRETIME of the TTL string, in unix ms (-1: no TTL, -2: absent); None without one.
    deadline: int | None = None
    # Hash fields and set members no writer writes (there should be none).
    strays: list[str] = field(default_factory=list)

    def canonical(self) -> dict[str, Any]:
        return {"items": sorted([*item, value] for item, value in self.items.items()),
                "counter": self.counter, "deadline": self.deadline, "strays": sorted(self.strays)}

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True).encode()).hexdigest()[:16]


# ---- reading ---------------------------------------------------------------------------------------


async def _call(client: RoutedClient, *args: str) -> Any:
    answer = await client.call(args[1].encode(), *(a.encode() for a in args))
    if answer.outcome is not Said.OK:
        raise ReadFailed(f"{client.endpoint}: {' '.join(args)}: {answer.error or answer.category}")
    return answer.value


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def read_region(endpoint: str, keys: RegionKeys, timeout: float = 10.0) -> RegionReading:
    """Every item as the region's primaries hold it, read through its endpoint (GET, HGETALL, SMEMBERS)."""
    client = RoutedClient(endpoint, timeout=timeout, connect_timeout=2.0)
    try:
        items: dict[Item, Outcome] = {}
        for key in keys.strings_read():
            items[("string", key, "")] = _text(await _call(client, "GET", key))
        flat = [_text(v) for v in await _call(client, "HGETALL", keys.hash)]
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        members = {_text(m) for m in await _call(client, "SMEMBERS", keys.set)}
        items.update({("hash", keys.hash, f): fields.get(f) for f in keys.fields})
        items.update({("set", keys.set, m): PRESENT if m in members else None for m in keys.members})
        strays = [f"{keys.hash} field {f}" for f in fields if f not in keys.fields]
        strays += [f"{keys.set} member {m}" for m in members if m not in keys.members]
        reading = RegionReading(items, strays=sorted(str(s) for s in strays))
        if keys.counter:
            value = _text(await _call(client, "GET", keys.counter))
            reading.counter = 0 if value is None else int(value) if value.lstrip("-").isdigit() else value
        if keys.ttl:
            reading.deadline = int(await _call(client, "PEXPIRETIME", keys.ttl))
        return reading
    finally:
        client.close()


def read_regions(endpoints: Mapping[str, str], keys: RegionKeys, timeout: float) -> dict[str, RegionReading]:
    """Read every region, each until it answers without an error or `timeout` passes (a read can meet
    a planned switchover: the supervisor rebalances primaries once roles settle)."""
    deadline = time.monotonic() + timeout
    readings = {}
    for region, endpoint in endpoints.items():
        while True:
            try:
                readings[region] = asyncio.run(read_region(endpoint, keys))
                break
            except ReadFailed as exc:
                if time.monotonic() >= deadline:
                    raise ReadFailed(f"region {region} could not be read within {timeout:g}s: {exc}") from exc
                time.sleep(0.5)
    return readings


# ---- checking --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """One finding. kind: diverged, lost, unexpected, lww, counter, ttl, error (and the runner's
    frozen and drain)."""

    kind: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.subject}: {self.detail}"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "subject": self.subject, "detail": self.detail}


def allowed(item: Item, ledgers: Mapping[str, Ledger]) -> set[Outcome]:
    """What an item may hold once every region has everything: the winner is some region's newest
    write that happened, which is its last acknowledged write or an unsure one after it."""
    wrote = [ledger for ledger in ledgers.values() if ledger.wrote(item)]
    outcomes: set[Outcome] = set()
    for ledger in wrote:
        outcomes |= ledger.candidates(item) if item in ledger.acked else ledger.unsure[item]
    if not any(item in ledger.acked for ledger in wrote):
        outcomes.add(None)  # no write of it was acknowledged: none may have happened
    return outcomes


def _name(item: Item) -> str:
    kind, key, part = item
    return f"{kind} {key}" + (f" {part}" if part else "")


def divergences(readings: Mapping[str, RegionReading]) -> list[Violation]:
    """Every difference between the regions' readings (none when their digests agree)."""
    if len({r.digest for r in readings.values()}) <= 1:
        return []
    first = next(iter(readings.values()))
    found = []
    for item in first.items:
        seen = {region: r.items.get(item) for region, r in readings.items()}
        if len(set(seen.values())) > 1:
            found.append(Violation("diverged", _name(item), f"regions hold {seen}"))
    for what in ("counter", "deadline", "strays"):
        seen_other = {region: getattr(r, what) for region, r in readings.items()}
        if len({json.dumps(v) for v in seen_other.values()}) > 1:
            found.append(Violation("diverged", what, f"regions hold {seen_other}"))
    return found


def check_items(reading: RegionReading, ledgers: Mapping[str, Ledger], keys: RegionKeys) -> list[Violation]:
    """Each item of one (converged) reading against what the ledgers allow."""
    found = []
    for item, held in reading.items.items():
        owner = keys.owner(item)
        if owner is not None:
            ledger = ledgers[owner]
            if held not in ledger.candidates(item):
                kind = "lost" if item in ledger.acked else "unexpected"
                last, unsure = ledger.acked.get(item), sorted(map(str, ledger.unsure.get(item, ())))
                found.append(Violation(kind, _name(item), f"holds {held!r}; {owner}'s last acknowledged "
                                       f"write left {last!r}, its unsure ones after it {unsure}"))
            continue
        if held not in (ok := allowed(item, ledgers)):
            acked = {r: ledger.acked[item] for r, ledger in ledgers.items() if item in ledger.acked}
            found.append(Violation("lww", _name(item), f"holds {held!r}; allowed {sorted(map(str, ok))}, "
                                   f"last acknowledged per region {acked}"))
    found += [Violation("unexpected", stray, "no writer writes it") for stray in reading.strays]
    return found


def possible_sums(deltas: list[int]) -> int:
    """A bit mask of every sum of a subset of the (positive) deltas: bit s is set when s is one."""
    mask = 1
    for delta in deltas:
        mask |= mask << delta
    return mask


def check_counter(reading: RegionReading, ledgers: Mapping[str, Ledger], key: str) -> list[Violation]:
    """The counter holds every acknowledged increment plus a subset of the unsure ones."""
    acked = sum(ledger.increments_acked for ledger in ledgers.values())
    unsure = [d for ledger in ledgers.values() for d in ledger.increments_unsure]
    value = reading.counter
    bounds = f"acknowledged increments add up to {acked}, unsure ones to {sum(unsure)}"
    if not isinstance(value, int):
        return [Violation("counter", key, f"holds {value!r}, not an integer; {bounds}")]
    extra = value - acked
    if extra < 0 or not possible_sums(unsure) >> extra & 1:
        return [Violation("counter", key, f"holds {value}: not every acknowledged increment plus some unsure "
                          f"ones ({bounds})")]
    return []


def check_ttl(reading: RegionReading, ledgers: Mapping[str, Ledger], keys: RegionKeys) -> list[Violation]:
    """The TTL string's deadline is the one the write that left its value set (ttl_seconds after it)."""
    assert keys.ttl is not None
    value, deadline = reading.items.get(("string", keys.ttl, "")), reading.deadline
    if value is None:
        return [] if deadline == -2 else [Violation("ttl", keys.ttl, f"absent, yet PEXPIRETIME {deadline}")]
    window = next((w for ledger in ledgers.values() if (w := ledger.ttl_windows.get(value))), None)
    if window is None:
        return []  # a value no TTL write left: check_items reports it
    if deadline is None or deadline < 0:
        return [Violation("ttl", keys.ttl, f"holds {value!r} without a TTL (PEXPIRETIME {deadline})")]
    low = (window[0] - DEADLINE_SLACK + keys.ttl_seconds) * 1000
    high = (window[1] + DEADLINE_SLACK + keys.ttl_seconds) * 1000
    if not low <= deadline <= high:
        return [Violation("ttl", keys.ttl, f"holds {value!r} with deadline {deadline}, not "
                          f"{keys.ttl_seconds}s after its write (between {low:.0f} and {high:.0f})")]
    return []


def check_errors(ledgers: Mapping[str, Ledger]) -> list[Violation]:
    """Writes refused with an error no failover gives (ERR ..., say)."""
    found = []
    for region, ledger in ledgers.items():
        found += [Violation("error", region, line) for line in ledger.unexpected[:SHOWN]]
        if len(ledger.unexpected) > SHOWN:
            found.append(Violation("error", region, f"and {len(ledger.unexpected) - SHOWN} more"))
    return found


def check(readings: Mapping[str, RegionReading], ledgers: Mapping[str, Ledger],
          keys: RegionKeys) -> list[Violation]:
    """Every finding: divergence between regions, then each region's data against the ledgers."""
    found = divergences(readings) + check_errors(ledgers)
    # The rules are checked on every distinct reading, so a region that diverged is judged too.
    judged: set[str] = set()
    for reading in readings.values():
        if reading.digest in judged:
            continue
        judged.add(reading.digest)
        found += check_items(reading, ledgers, keys)
        if keys.counter:
            found += check_counter(reading, ledgers, keys.counter)
        if keys.ttl:
            found += check_ttl(reading, ledgers, keys)
    return list(dict.fromkeys(found))  # regions that diverged may share a finding: once is enough
