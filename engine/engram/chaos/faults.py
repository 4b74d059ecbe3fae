"""Faults a chaos run injects into a local cluster, and the schedule it injects them on.

Faults go through the local platform (`engram local kill`'s code path), so the supervisor restarts
what was killed exactly as it would after a real crash. Blocking calls: run them in a thread.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from engram.cluster.topology import SlotMap
from engram.journal.client import Journal
from engram.journal.errors import JournalError
from engram.node.peer import PeerRefused, PeerUnreachable, call, control_tls
from engram.platforms.local import cluster, network, processes
from engram.platforms.local.probe import FailoverFailed

# How long to wait for a fault's victim to exist (e.g. a primary, during a failover) when the
# schedule sets no deadline.
VICTIM_TIMEOUT = 15.0
# Below this, faults come faster than a status probe and a kill can complete under load.
MIN_FAULT_INTERVAL = 2.0
# The share of the interval a pause or partition may last, so it is lifted before the next fault.
HOLD_SHARE = 0.75
# A snapshot asked for by KILL_SNAPSHOT must have started within this long to be killed.
SNAPSHOT_START_TIMEOUT = 10.0
# How long a SWITCHOVER may take before the chaos run counts it as failed.
SWITCHOVER_TIMEOUT = 30.0
# Until one has been seen to finish, how long a snapshot is guessed to take (the kill lands within it).
SNAPSHOT_GUESS = 2.0


class FaultKind(StrEnum):
    KILL_PRIMARY = "kill-primary"
    KILL_REPLICA = "kill-replica"
    KILL_JOURNAL = "kill-journal"
    PAUSE_PRIMARY = "pause-primary"
    PARTITION_ZONE = "partition-zone"
    # SIGKILL of a replica's snapshot child (docs/snapshots.md) part-way through replaying, saving,
    # uploading, rehearsing, pruning or truncating the journal.
    KILL_SNAPSHOT = "kill-snapshot"
    # Planned work, as upgrades and evictions do it: these must cost well under a second.
    # SIGTERM of a primary (it hands leadership over before exiting; the supervisor restarts it).
    TERM_PRIMARY = "term-primary"
    # SIGTERM of the journal server leading a shard's stream (nats-server steps down first).
    TERM_JOURNAL = "term-journal"
    # `engram local failover`: a switchover to the shard's most caught-up replica.
    SWITCHOVER = "switchover"


ALL_KINDS = tuple(FaultKind)


@dataclass
class Fault:
    """One injected fault; times are time.monotonic_ns(), like the history's."""

    kind: FaultKind
    target: str
    started: int
    # When the fault was lifted (SIGCONT); a kill is instantaneous and ends when it starts.
    ended: int
    detail: str = ""
    # Wall-clock time.time() at `started`, to find the moment in node logs.
    wall: float = field(default_factory=time.time)
    # The shard a node fault hits; None for faults that reach every shard (journal server, zone).
    shard: int | None = None
    # Seconds from `started` until every shard it hit acknowledged a write invoked after it (None: never).
    recovered_after: float | None = None
    # The same, for the impatient probe writer alone (workload.run_probe).
    probe_recovered_after: float | None = None
    # The longest stretch from the fault to the next in which a shard it hit acknowledged no write.
    paused_for: float | None = None


@dataclass(frozen=True)
class Skipped:
    kind: FaultKind
    reason: str


def partition_unavailable(zone_networks: bool | None = None) -> str:
    """Why a zone partition cannot be injected (empty when it can). zone_networks: whether the cluster
    runs each zone in its own network namespace (None: a cluster still to be started here)."""
    if zone_networks is False:
        return "the cluster shares one network namespace; start it with `engram local up --netns` (root)"
    return network.unavailable()


def default_hold(kind: FaultKind, lease: float) -> float:
    """How long a pause or a partition lasts when there is time: beyond the lease, with room for a replica
    elsewhere to notice and take over (a partition may also move the journal's stream leader first)."""
    if kind is FaultKind.PAUSE_PRIMARY:
        return lease * 2 + 1.0
    if kind is FaultKind.PARTITION_ZONE:
        return lease * 2 + 3.0
    return 0.0


@dataclass(frozen=True)
class Planned:
    """A fault of the schedule: seconds after the start, and how long it is held (0 for a kill)."""

    at: float
    kind: FaultKind
    hold: float

    @property
    def until(self) -> float:
        return self.at + self.hold


def schedule(
    duration: float, kinds: tuple[FaultKind, ...], interval: float, warmup: float, cooldown: float,
    lease: float,
) -> list[Planned]:
    """Kinds in turn every `interval`, none in the first `warmup` seconds and each lifted before the
    next starts and before the last `cooldown` seconds (so the last fault's recovery is seen)."""
    if interval < MIN_FAULT_INTERVAL:
        raise ValueError(f"the fault interval must be at least {MIN_FAULT_INTERVAL:g}s, not {interval:g}s")
    plan: list[Planned] = []
    while kinds:
        at = warmup + len(plan) * interval
        kind = kinds[len(plan) % len(kinds)]
        # Short intervals shorten holds rather than overlap faults: a fault's effects are then its own.
        hold = min(default_hold(kind, lease), interval * HOLD_SHARE)
        if at + hold > duration - cooldown:
            break
        plan.append(Planned(at, kind, hold))
    return plan


@dataclass
class LocalFaults:
    """Injects faults into the local cluster `name` under `base`."""

    base: Path
    name: str
    lease_seconds: float
    rng: random.Random
    # Processes we stopped and zones we cut off, not yet undone: `resume_all` always undoes them.
    stopped: dict[str, str] = field(default_factory=dict)
    isolated: set[str] = field(default_factory=set)
    # How long the last snapshot seen to finish took: kills are spread over that span.
    snapshot_seconds: float = SNAPSHOT_GUESS

    def status(self) -> dict[str, Any]:
        return cluster.status(self.base, self.name)

    def slot_map(self, doc: dict[str, Any]) -> SlotMap:
        """The cluster's slot ranges per shard, as its nodes report them."""
        texts: dict[int, str] = {}
        for node in doc["nodes"]:
            if node.get("slots"):
                texts.setdefault(node["shard"], node["slots"])
        return SlotMap.from_ranges_text(texts)

    def primaries(self, doc: dict[str, Any]) -> dict[int, str]:
        return {n["shard"]: n["id"] for n in doc["nodes"] if n["role"] == "primary" and not n.get("halted")}

    def _victim(self, role: str, deadline: float) -> dict[str, Any]:
        """A live node of that role, awaited until `deadline` (time.monotonic()); tried at least once."""
        first = time.monotonic()
        while True:
            doc = self.status()
            nodes = [n for n in doc["nodes"] if n["role"] == role and n["pid"] and not n.get("halted")]
            if nodes:
                return self.rng.choice(sorted(nodes, key=lambda n: n["id"]))
            if time.monotonic() >= deadline:
                raise cluster.LocalError(
                    f"no live {role} to inject a fault into within {time.monotonic() - first:.1f}s")
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def inject(self, kind: FaultKind, deadline: float | None = None) -> Fault:
        """Start the fault and return its record; PAUSE_PRIMARY returns with the victim stopped. A victim
        is awaited until `deadline` (time.monotonic(); default VICTIM_TIMEOUT from now).

        The fault's time is taken once the signal is sent: an operation invoked later surely saw it."""
        if deadline is None:
            deadline = time.monotonic() + VICTIM_TIMEOUT
        if kind is FaultKind.KILL_PRIMARY or kind is FaultKind.KILL_REPLICA:
            node = self._victim("primary" if kind is FaultKind.KILL_PRIMARY else "replica", deadline)
            detail = cluster.kill(self.base, self.name, node["id"], signal.SIGKILL)
            now = time.monotonic_ns()
            return Fault(kind, node["id"], now, now, f"{detail}, shard {node['shard']}, zone {node['zone']}",
                         shard=node["shard"])
        if kind is FaultKind.KILL_JOURNAL:
            server = self.rng.choice(sorted(self.status()["journal"], key=lambda j: j["zone"]))
            detail = cluster.kill(self.base, self.name, server["target"], signal.SIGKILL)
            now = time.monotonic_ns()
            return Fault(kind, server["target"], now, now, detail)
        if kind is FaultKind.PAUSE_PRIMARY:
            node = self._victim("primary", deadline)
            detail = cluster.kill(self.base, self.name, node["id"], signal.SIGSTOP)
            now = time.monotonic_ns()
            self.stopped[node["id"]] = node["id"]
            return Fault(kind, node["id"], now, now, f"{detail}, shard {node['shard']}, zone {node['zone']}",
                         shard=node["shard"])
        if kind is FaultKind.PARTITION_ZONE:
            # The zone of a primary: the partition then costs a failover, the case worth checking.
            zone = self._victim("primary", deadline)["zone"]
            detail = cluster.partition(self.base, self.name, zone)
            now = time.monotonic_ns()
            self.isolated.add(zone)
            return Fault(kind, f"zone-{zone}", now, now, detail.split(";")[0])
        if kind is FaultKind.KILL_SNAPSHOT:
            return self._kill_snapshot(deadline)
        if kind is FaultKind.TERM_PRIMARY:
            node = self._victim("primary", deadline)
            detail = cluster.kill(self.base, self.name, node["id"], signal.SIGTERM)
            now = time.monotonic_ns()
            return Fault(kind, node["id"], now, now, f"{detail}, shard {node['shard']}, zone {node['zone']}",
                         shard=node["shard"])
        if kind is FaultKind.TERM_JOURNAL:
            shard = self.rng.randrange(cluster.load_running(self.base, self.name).shards)
            server = self.stream_leader(shard) or self.rng.choice(sorted(self.status()["journal"],
                                                                          key=lambda j: j["zone"]))
            detail = cluster.kill(self.base, self.name, server["target"], signal.SIGTERM)
            now = time.monotonic_ns()
            return Fault(kind, server["target"], now, now, f"{detail}, leading shard {shard}'s stream")
        if kind is FaultKind.SWITCHOVER:
            node = self._victim("primary", deadline)
            now = time.monotonic_ns()
            # Recovery counts from the request: the hand-over itself is what planned work costs.
            try:
                detail = cluster.failover(self.base, self.name, node["shard"], timeout=SWITCHOVER_TIMEOUT)
            except FailoverFailed as exc:  # refused (no caught-up replica, say): nothing was changed
                raise cluster.LocalError(str(exc)) from exc
            return Fault(kind, node["id"], now, now, detail, shard=node["shard"])
        raise ValueError(f"unknown fault kind {kind!r}")

    def _kill_snapshot(self, deadline: float) -> Fault:
        """Ask a replica for a snapshot (unless one is under way) and SIGKILL its child part-way through.

        Half the kills land anywhere in the snapshot, half in its last sixth, where the snapshot is
        rehearsed, marked verified and older ones pruned, and the journal truncated."""
        node = self._victim("replica", deadline)
        child = snapshot_child(node["pid"])
        if child is None:
            host, port = node["admin"].rsplit(":", 1)
            threading.Thread(target=_ask_for_snapshot, args=(host, int(port), node.get("admin_ca", "")),
                             daemon=True).start()
            wait_until = min(deadline, time.monotonic() + SNAPSHOT_START_TIMEOUT)
            while (child := snapshot_child(node["pid"])) is None:
                if time.monotonic() >= wait_until:
                    raise cluster.LocalError(f"{node['id']} started no snapshot when asked")
                time.sleep(0.02)
        began = time.monotonic()
        span = self.snapshot_seconds
        low = 0.0 if self.rng.random() < 0.5 else span * 5 / 6
        delay = self.rng.uniform(low, span)
        delay = min(delay, max(0.0, deadline - began))
        while time.monotonic() - began < delay:
            if not processes.pid_alive(child):
                self.snapshot_seconds = time.monotonic() - began
                now = time.monotonic_ns()
                return Fault(FaultKind.KILL_SNAPSHOT, node["id"], now, now,
                             f"missed: the snapshot finished in {self.snapshot_seconds:.2f}s, before the "
                             f"kill at {delay:.2f}s, shard {node['shard']}", shard=node["shard"])
            time.sleep(0.01)
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass  # finished at the last moment: the kill is still reported, the snapshot stands
        now = time.monotonic_ns()
        return Fault(FaultKind.KILL_SNAPSHOT, node["id"], now, now,
                     f"sent SIGKILL to the snapshot child (pid {child}) of {node['id']} {delay:.2f}s in "
                     f"(of ~{span:.1f}s), shard {node['shard']}", shard=node["shard"])

    def stream_leader(self, shard: int) -> dict[str, Any] | None:
        """The journal server (its status entry) leading the shard's stream; None if none leads, or
        the journal cannot say."""
        state = cluster.load_running(self.base, self.name)
        servers = self.status()["journal"]

        async def ask() -> str:
            journal = await Journal.connect(state.journal_urls, self.name, shard,
                                            security=state.journal_security)
            try:
                peers = await journal.peers(5.0)
            finally:
                await journal.close()
            return next((p.name for p in peers if p.leader), "")

        try:
            leader = asyncio.run(ask())
        except JournalError:
            leader = ""
        return next((j for j in servers if j["name"] == leader), None)

    def resume(self, fault: Fault) -> None:
        """SIGCONT a paused primary or reconnect a cut-off zone, and note when."""
        try:
            if fault.kind is FaultKind.PARTITION_ZONE:
                zone = fault.target.removeprefix("zone-")
                self.isolated.discard(zone)
                cluster.heal(self.base, self.name, zone)
            else:
                self.stopped.pop(fault.target, None)
                cluster.kill(self.base, self.name, fault.target, signal.SIGCONT)
        finally:
            fault.ended = time.monotonic_ns()

    def resume_all(self) -> None:
        """Never leave a process stopped or a zone cut off, whatever happened to the run."""
        for zone in list(self.isolated):
            self.isolated.discard(zone)
            try:
                cluster.heal(self.base, self.name, zone)
            except (cluster.LocalError, network.NetworkError):
                pass  # the cluster is gone, and its network with it
        for target in list(self.stopped):
            self.stopped.pop(target, None)
            try:
                cluster.kill(self.base, self.name, target, signal.SIGCONT)
            except cluster.LocalError:
                pass  # gone or restarted: nothing left stopped


def snapshot_child(parent: int | None) -> int | None:
    """The pid of the snapshot process (`python -m engram.snapshots`) a node runs, or None."""
    if not parent:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # The command name is in parentheses and may hold spaces; the parent's pid follows it.
            if int(stat.rsplit(")", 1)[1].split()[1]) != parent:
                continue
            if any("engram.snapshots" in arg for arg in processes.cmdline(int(entry.name))):
                return int(entry.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


def _ask_for_snapshot(host: str, port: int, ca_file: str) -> None:
    """ENGRAM.SNAPSHOT on a node's control port (TLS with the CA, when given); the reply (an error
    once killed) is not needed."""
    try:
        asyncio.run(call(host, port, "ENGRAM.SNAPSHOT", timeout=300.0,
                         tls=control_tls(ca_file) if ca_file else None))
    except (PeerRefused, PeerUnreachable, OSError):
        pass
