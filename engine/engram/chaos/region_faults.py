"""Faults a multi-region chaos run injects into one region at a time, and the seeded schedule that
decides them (plan_region_faults, pure) apart from the code that injects them (RegionFaults).

- kill-primary: SIGKILL of the primary of one of a region's shards; the region fails over.
- kill-journal-leader: SIGKILL of the journal server leading a region's shard stream; the region's
  journal elects another leader and the supervisor restarts the server.
- freeze-region: SIGSTOP of every journal server and node of a region, SIGCONT a few seconds later.
  Its Valkey servers (children of the nodes, which `engram local kill` does not target) keep
  answering: its writes time out, then get TRYAGAIN once its lease has lapsed.
- cut-region: every link between a region and the others cut (`engram local partition NAME
  REGION`), healed a few seconds later. Unlike a frozen region, the cut-off region keeps serving
  and acknowledging writes, as do the others: when the links return, what each side took alone must
  flow both ways and every region must end alike.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from engram.chaos.faults import HOLD_SHARE, MIN_FAULT_INTERVAL, LocalFaults
from engram.platforms.local import cluster, multi_region
from engram.platforms.local.link_relay import cut_links
from engram.platforms.local.regions import RegionsError, region_cluster

# How long a region stays frozen when the interval leaves room: well beyond a lease (2 s by
# default), so its primaries lose them and the other regions' links go silent.
FREEZE_SECONDS = 6.0
# How long a region stays cut off when the interval leaves room: as long as a freeze, so both sides
# take a few seconds of writes alone and the others' copies of its stream go silent.
CUT_SECONDS = 6.0
# How long to wait for a victim (a primary, during a failover) before the fault is skipped.
VICTIM_TIMEOUT = 15.0
# How long a healed cut may take until the journals are linked across it again (about a second or
# two locally); past it the run goes on, and the drain tells whether everything still flowed.
RELINK_TIMEOUT = 30.0


class RegionFaultKind(StrEnum):
    KILL_PRIMARY = "kill-primary"
    KILL_JOURNAL_LEADER = "kill-journal-leader"
    FREEZE_REGION = "freeze-region"
    CUT_REGION = "cut-region"


ALL_REGION_KINDS = tuple(RegionFaultKind)
# The kinds held for a while, each at most this long; the others are kills, over at once.
HELD_SECONDS = {RegionFaultKind.FREEZE_REGION: FREEZE_SECONDS, RegionFaultKind.CUT_REGION: CUT_SECONDS}


def hold_for(kind: RegionFaultKind, interval: float) -> float:
    """How long a fault of this kind is held: 0 for a kill; a freeze or a cut shortened by a short
    interval rather than overlapping the next fault."""
    if kind not in HELD_SECONDS:
        return 0.0
    return min(HELD_SECONDS[kind], interval * HOLD_SHARE)


@dataclass(frozen=True)
class PlannedRegionFault:
    """A fault of the schedule: seconds after the start, where, and how long it is held (0: a kill)."""

    at: float
    kind: RegionFaultKind
    region: str
    shard: int = 0
    hold: float = 0.0

    @property
    def until(self) -> float:
        return self.at + self.hold


def plan_region_faults(
    seed: int, duration: float, regions: tuple[str, ...], kinds: tuple[RegionFaultKind, ...], interval: float,
    shards: int = 1, warmup: float = 4.0, cooldown: float = 8.0,
) -> list[PlannedRegionFault]:
    """One fault every `interval` from `warmup` on, each lifted before the next and before the last
    `cooldown` seconds; kinds in shuffled rounds (each kind once per round), regions and shards drawn."""
    if interval < MIN_FAULT_INTERVAL:
        raise ValueError(f"the fault interval must be at least {MIN_FAULT_INTERVAL:g}s, not {interval:g}s")
    if not regions or shards < 1:
        raise ValueError("faults need a region and a shard")
    rng = random.Random(f"{seed}-region-faults")

    def hold(kind: RegionFaultKind) -> float:
        return hold_for(kind, interval)

    plan: list[PlannedRegionFault] = []
    round_: list[RegionFaultKind] = []
    while True:
        at = warmup + len(plan) * interval
        room = duration - cooldown - at
        if not any(hold(k) <= room for k in kinds):
            break
        # Near the end a held fault no longer fits where a kill still does: the kill is taken, and
        # a round left with nothing that fits makes way for the next.
        if not any(hold(k) <= room for k in round_):
            round_ = list(kinds)
            rng.shuffle(round_)
        kind = next(k for k in reversed(round_) if hold(k) <= room)
        round_.remove(kind)
        plan.append(PlannedRegionFault(round(at, 3), kind, rng.choice(regions), rng.randrange(shards),
                                       round(hold(kind), 3)))
    return plan


def links_of(status: Mapping[str, Any], region: str) -> tuple[list[str], list[str]]:
    """The region's links in a multi-region status (`links`), as "a-b": those cut, those not."""
    cut: list[str] = []
    linked: list[str] = []
    for link in status.get("links", []):
        if region in link["regions"]:
            (cut if link["cut"] else linked).append("-".join(link["regions"]))
    return cut, linked


@dataclass
class RegionFault:
    """One injected fault; times are time.monotonic() seconds."""

    kind: RegionFaultKind
    region: str
    target: str
    started: float
    ended: float
    detail: str = ""
    shard: int | None = None
    wall: float = field(default_factory=time.time)
    # A freeze whose every process could be stopped (else the region may still take writes); a cut
    # that every link of its region was seen cut by.
    complete: bool = True
    # Processes stopped by a freeze, continued by heal().
    stopped: list[str] = field(default_factory=list)
    # Seconds from the fault (a freeze: from its end) until the region acknowledged a write sent
    # after it; None when it never did. Filled in after the run.
    writes_again_after: float | None = None
    # A cut: seconds from its heal until the journals were linked across it again (None: not within
    # RELINK_TIMEOUT, or not healed yet).
    linked_again_after: float | None = None

    @property
    def writes_counted_from(self) -> float:
        """Where writes_again_after counts from: a frozen region can write only once continued, while
        a killed process's region fails over at once and a cut-off region is meant to go on writing."""
        return self.ended if self.kind is RegionFaultKind.FREEZE_REGION else self.started


class _Said:
    """A progress callback that keeps when it was last called."""

    # partition and heal say their last word once the links are down or up, before reading the
    # multi-region status they return, which can take seconds more (a journal server just
    # restarted, say): the time of that word is when the links went down or came back.

    def __init__(self) -> None:
        self.last: float | None = None

    def __call__(self, _message: str) -> None:
        self.last = time.monotonic()

    def since(self, moment: float) -> float:
        """Seconds from `moment` to the last word (to now, had there been none)."""
        return (time.monotonic() if self.last is None else self.last) - moment


@dataclass
class RegionFaults:
    """Injects region faults into the local multi-region cluster `name` under `base`."""

    base: Path
    name: str
    rng: random.Random
    frozen: list[RegionFault] = field(default_factory=list)
    cut: list[RegionFault] = field(default_factory=list)
    # Set before the first cut: from then on heal_all looks for links left cut, whatever happened.
    cutting: bool = False

    def cluster_of(self, region: str) -> str:
        return region_cluster(self.name, region)

    def inject(self, kind: RegionFaultKind, region: str, shard: int = 0,
               deadline: float | None = None) -> RegionFault:
        """Start the fault and return its record; a freeze returns with the region stopped, a cut
        with its links cut. Raises cluster.LocalError when the fault cannot be injected (no primary
        by `deadline`, a cut not seen by then, say)."""
        name = self.cluster_of(region)
        if deadline is None:
            deadline = time.monotonic() + VICTIM_TIMEOUT
        if kind is RegionFaultKind.KILL_PRIMARY:
            node = self._primary(name, shard, deadline)
            detail = cluster.kill(self.base, name, node, signal.SIGKILL)
            now = time.monotonic()
            return RegionFault(kind, region, node, now, now, detail, shard)
        if kind is RegionFaultKind.KILL_JOURNAL_LEADER:
            try:
                leader = LocalFaults(self.base, name, 0.0, self.rng).stream_leader(shard)
            except Exception as exc:  # a journal that does not answer skips the fault, not the run
                raise cluster.LocalError(f"{name}'s journal did not say who leads shard {shard}: "
                                         f"{exc}") from exc
            if leader is None:
                raise cluster.LocalError(f"no journal server of {name} leads shard {shard}'s stream")
            detail = cluster.kill(self.base, name, leader["target"], signal.SIGKILL)
            now = time.monotonic()
            return RegionFault(kind, region, leader["target"], now, now,
                               f"{detail}, leading shard {shard}'s stream", shard)
        if kind is RegionFaultKind.FREEZE_REGION:
            return self._freeze(region)
        if kind is RegionFaultKind.CUT_REGION:
            return self._cut(region, deadline)
        raise ValueError(f"unknown region fault kind {kind!r}")

    def _primary(self, name: str, shard: int, deadline: float) -> str:
        """The shard's live primary, awaited until `deadline`; tried at least once."""
        while True:
            for node in cluster.status(self.base, name)["nodes"]:
                live = node["pid"] and not node["halted"]
                if node["shard"] == shard and node["role"] == "primary" and live:
                    return str(node["id"])
            if time.monotonic() >= deadline:
                raise cluster.LocalError(f"{name} shard {shard} had no live primary to kill")
            time.sleep(0.5)

    def _freeze(self, region: str) -> RegionFault:
        """SIGSTOP every journal server and node of the region, one right after the other."""
        name = self.cluster_of(region)
        state = cluster.load_running(self.base, name)
        targets = [j.target for j in state.journal] + [n.id for n in state.nodes]
        stopped, missed = [], []
        for target in targets:
            try:
                cluster.kill(self.base, name, target, signal.SIGSTOP)
                stopped.append(target)
            except cluster.LocalError as exc:  # one being restarted: the region is only partly frozen
                missed.append(f"{target} ({exc})")
        now = time.monotonic()
        detail = f"sent SIGSTOP to {', '.join(stopped)}"
        if missed:
            detail += f"; could not stop {', '.join(missed)}"
        fault = RegionFault(RegionFaultKind.FREEZE_REGION, region, name, now, now, detail,
                            complete=not missed, stopped=stopped)
        self.frozen.append(fault)
        return fault

    def _cut(self, region: str, deadline: float) -> RegionFault:
        """Cut every link of the region; returns once no journal connection crosses them, waited for
        until `deadline` (the relays drop their connections within a fraction of a second)."""
        self.cutting = True
        began, wall, said = time.monotonic(), time.time(), _Said()
        try:
            doc = multi_region.partition(self.base, self.name, [region], timeout=max(deadline - began, 1.0),
                                         progress=said)
        except (cluster.LocalError, RegionsError) as exc:
            # A partition that timed out leaves its links cut: heal them before skipping the fault.
            self._heal_links(region)
            raise cluster.LocalError(f"could not cut {region} off: {exc}") from exc
        cut, linked = links_of(doc, region)
        detail = f"cut {', '.join(cut)}; no journal connection across them {said.since(began):.1f}s later"
        if linked:
            detail += f"; still linked: {', '.join(linked)}"
        fault = RegionFault(RegionFaultKind.CUT_REGION, region, f"links of {region}", began, began, detail,
                            wall=wall, complete=not linked)
        self.cut.append(fault)
        return fault

    def _heal_links(self, region: str) -> tuple[float | None, str]:
        """Heal the region's links: seconds until its journals were linked again (None: not within
        RELINK_TIMEOUT), and why not."""
        # The cut markers go before the wait, so a timeout leaves nothing cut, only slow to link again.
        began, said = time.monotonic(), _Said()
        try:
            multi_region.heal(self.base, self.name, [region], timeout=RELINK_TIMEOUT, progress=said)
        except (cluster.LocalError, RegionsError) as exc:
            return None, str(exc)
        return said.since(began), ""

    def heal(self, fault: RegionFault) -> None:
        """SIGCONT what a freeze stopped, or heal a cut (a kill needs nothing: the supervisor restarts
        the process)."""
        if any(f is fault for f in self.frozen):
            self.frozen = [f for f in self.frozen if f is not fault]
            self._thaw(fault)
        elif any(f is fault for f in self.cut):
            self.cut = [f for f in self.cut if f is not fault]
            fault.ended = time.monotonic()
            fault.linked_again_after, why = self._heal_links(fault.region)
            if why:
                fault.detail += f"; not linked again within {RELINK_TIMEOUT:g}s of the heal: {why}"

    def _thaw(self, fault: RegionFault) -> None:
        name = self.cluster_of(fault.region)
        # The freeze ends with its first SIGCONT: a write can commit as soon as the journal and the
        # primary run again, before the last process is continued.
        fault.ended = time.monotonic()
        for target in fault.stopped:
            try:
                cluster.kill(self.base, name, target, signal.SIGCONT)
            except cluster.LocalError:
                pass  # gone since (the region went down): nothing is left stopped

    def heal_all(self) -> None:
        """Never leave a region frozen or a link cut, whatever happened to the run."""
        for fault in [*self.frozen, *self.cut]:
            self.heal(fault)
        # A cut interrupted before it was recorded (or a heal that failed early) may have left a
        # marker: heal every link still cut.
        if self.cutting and cut_links(multi_region.cuts_dir(self.base, self.name)):
            with contextlib.suppress(cluster.LocalError, RegionsError):
                multi_region.heal(self.base, self.name, timeout=RELINK_TIMEOUT)
