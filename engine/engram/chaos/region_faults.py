"""Faults a multi-region chaos run injects into one region at a time, and the seeded schedule that
decides them (plan_region_faults, pure) apart from the code that injects them (RegionFaults).

- kill-primary: SIGKILL of the primary of one of a region's shards; the region fails over.
- kill-journal-leader: SIGKILL of the journal server leading a region's shard stream; the region's
  journal elects another leader and the supervisor restarts the server.
- freeze-region: SIGSTOP of every journal server and node of a region, SIGCONT a few seconds later.
  Its Valkey servers (children of the nodes, which `engram local kill` does not target) keep
  answering: its writes time out, then get TRYAGAIN once its lease has lapsed.

Not here: cutting a region's links while it keeps taking writes. The local platform can take a
region away (`engram local down NAME-<region>`) but not bring it back while the others run, a zone
partition needs `--netns`, which `up --regions` refuses, and nothing local cuts only the leaf links
between regions. A freeze stands in for a cut: to the others the link goes silent, and when it
returns everything both sides committed must flow; what it cannot show is a cut-off region that
keeps taking writes. A link cut would be one more kind here.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from engram.chaos.faults import HOLD_SHARE, MIN_FAULT_INTERVAL, LocalFaults
from engram.platforms.local import cluster
from engram.platforms.local.regions import region_cluster

# How long a region stays frozen when the interval leaves room: well beyond a lease (2 s by
# default), so its primaries lose them and the other regions' links go silent.
FREEZE_SECONDS = 6.0
# How long to wait for a victim (a primary, during a failover) before the fault is skipped.
VICTIM_TIMEOUT = 15.0


class RegionFaultKind(StrEnum):
    KILL_PRIMARY = "kill-primary"
    KILL_JOURNAL_LEADER = "kill-journal-leader"
    FREEZE_REGION = "freeze-region"


ALL_REGION_KINDS = tuple(RegionFaultKind)


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
    # A short interval shortens the freeze rather than overlapping faults.
    freeze = min(FREEZE_SECONDS, interval * HOLD_SHARE)

    def hold(kind: RegionFaultKind) -> float:
        return freeze if kind is RegionFaultKind.FREEZE_REGION else 0.0

    plan: list[PlannedRegionFault] = []
    round_: list[RegionFaultKind] = []
    while True:
        at = warmup + len(plan) * interval
        room = duration - cooldown - at
        if not any(hold(k) <= room for k in kinds):
            break
        # Near the end a freeze no longer fits where a kill still does: the kill is taken, and a
        # round left with nothing that fits makes way for the next.
        if not any(hold(k) <= room for k in round_):
            round_ = list(kinds)
            rng.shuffle(round_)
        kind = next(k for k in reversed(round_) if hold(k) <= room)
        round_.remove(kind)
        plan.append(PlannedRegionFault(round(at, 3), kind, rng.choice(regions), rng.randrange(shards),
                                       round(hold(kind), 3)))
    return plan


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
    # A freeze whose every process could be stopped (else the region may still take writes).
    complete: bool = True
    # Processes stopped by a freeze, continued by heal().
    stopped: list[str] = field(default_factory=list)
    # Seconds from the fault (a freeze: from its end) until the region acknowledged a write sent
    # after it; None when it never did. Filled in after the run.
    writes_again_after: float | None = None


@dataclass
class RegionFaults:
    """Injects region faults into the local multi-region cluster `name` under `base`."""

    base: Path
    name: str
    rng: random.Random
    frozen: list[RegionFault] = field(default_factory=list)

    def cluster_of(self, region: str) -> str:
        return region_cluster(self.name, region)

    def inject(self, kind: RegionFaultKind, region: str, shard: int = 0,
               deadline: float | None = None) -> RegionFault:
        """Start the fault and return its record; a freeze returns with the region stopped. Raises
        cluster.LocalError when the fault cannot be injected (no primary by `deadline`, say)."""
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

    def heal(self, fault: RegionFault) -> None:
        """SIGCONT what a freeze stopped (a kill needs nothing: the supervisor restarts the process)."""
        if not any(f is fault for f in self.frozen):
            return
        self.frozen = [f for f in self.frozen if f is not fault]
        name = self.cluster_of(fault.region)
        for target in fault.stopped:
            try:
                cluster.kill(self.base, name, target, signal.SIGCONT)
            except cluster.LocalError:
                pass  # gone since (the region went down): nothing is left stopped
        fault.ended = time.monotonic()

    def heal_all(self) -> None:
        """Never leave a region frozen, whatever happened to the run."""
        for fault in list(self.frozen):
            self.heal(fault)
