"""One chaos run: start (or join) a cluster, run the workload while injecting faults, then check it."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engram.chaos.client import use_client_tls
from engram.chaos.faults import (
    ALL_KINDS,
    MIN_FAULT_INTERVAL,
    Fault,
    FaultKind,
    LocalFaults,
    Skipped,
    partition_unavailable,
    schedule,
)
from engram.chaos.history import History
from engram.chaos.journal_size import JournalWatch
from engram.chaos.linearizability import check
from engram.chaos.loss import check_loss
from engram.chaos.report import ChaosReport, Failover, recovery_times, write_pauses
from engram.chaos.users import UserLog, check_users, run_users
from engram.chaos.workload import (
    PROBE,
    ClientStats,
    FinalReadFailed,
    WorkloadSpec,
    loss_operations,
    read_final,
    run_client,
    run_probe,
)
from engram.cluster.slots import key_hash_slot
from engram.platforms.local import cluster
from engram.platforms.local.network import NetworkError
from engram.platforms.local.plan import ClusterSpec
from engram.platforms.local.scale import scale, unfinished
from engram.tasks import cancel_and_wait

if TYPE_CHECKING:  # the multi-region runner raises ChaosError with its own report
    from engram.chaos.region_report import RegionChaosReport

Progress = Callable[[str], None]
STATUS_EVERY = 1.0
OWN_CLUSTER = "chaos"


class ChaosError(RuntimeError):
    """The run could not be carried out (as opposed to finding a problem); `report` is what it got to."""

    def __init__(self, message: str, report: ChaosReport | RegionChaosReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ChaosConfig:
    """What `engram chaos` was asked to do."""

    duration: float = 60.0
    clients: int = 8
    keys: int = 5
    seed: int | None = None
    faults: tuple[FaultKind, ...] = ALL_KINDS
    fault_interval: float = 12.0
    warmup: float = 4.0
    cooldown: float = 8.0
    op_timeout: float = 5.0
    think: float = 0.0
    # The cluster started when none is given.
    shards: int = 1
    replicas: int = 2
    lease: float = 2.0
    # Snapshot triggers of the cluster started here (docs/snapshots.md; 0 turns one off).
    snapshot_interval: float = 3600.0
    snapshot_entries: int = 100_000
    # An existing local cluster (faults are injected through the platform) ...
    name: str | None = None
    dir: str | None = None
    # ... or just an endpoint (no faults can be injected).
    endpoint: str | None = None
    history_path: str | None = None
    recovery_timeout: float = 90.0
    check_time_limit: float = 300.0
    # Keep the cluster's directory and save the history even when the run passes (`--seeds` decides later).
    keep_evidence: bool = False
    # Every this many seconds (0: never) the shard count goes to shards + 1 and back, online,
    # while faults go on (docs/scaling.md); bounded, so each move is long enough to be hit.
    reshard_every: float = 0.0
    reshard_keys_per_second: int = 500

    def __post_init__(self) -> None:
        if self.duration <= 0 or self.clients < 1 or self.keys < 1:
            raise ValueError("duration must be positive and clients and keys at least 1")
        if self.fault_interval < MIN_FAULT_INTERVAL:
            raise ValueError(f"the fault interval must be at least {MIN_FAULT_INTERVAL:g}s")
        if self.reshard_every < 0:
            raise ValueError("the reshard interval must not be negative (0: off)")
        if self.snapshot_interval < 0 or self.snapshot_entries < 0:
            raise ValueError("the snapshot interval and entries must not be negative (0: off)")
        if self.seed is None:
            self.seed = random.SystemRandom().randrange(1 << 31)


class _Run:
    """The asynchronous part: clients, fault injection and status polling, then the checks."""

    def __init__(self, config: ChaosConfig, endpoint: str, faults: LocalFaults | None,
                 skipped: list[Skipped], progress: Progress, journal: JournalWatch | None = None) -> None:
        self.config = config
        self.journal = journal
        self.endpoint = endpoint
        self.faults = faults
        self.progress = progress
        self.skipped = skipped
        self.injected: list[Fault] = []
        self.failovers: list[Failover] = []
        self.reshards: list[str] = []
        assert config.seed is not None
        self.spec = WorkloadSpec(
            prefix=f"chaos-{config.seed}-{int(time.time())}",
            clients=config.clients,
            keys=config.keys,
            timeout=config.op_timeout,
            think=config.think,
            seed=config.seed,
        )

    async def execute(self, settings: dict[str, Any]) -> ChaosReport:
        history = History(meta={"settings": settings})
        stats = ClientStats()
        stop = asyncio.Event()
        started = time.monotonic_ns()
        clients = [asyncio.create_task(run_client(i, self.spec, self.endpoint, history, stop, stats))
                   for i in range(self.config.clients)]
        clients.append(asyncio.create_task(run_probe(self.spec, self.endpoint, history, stop)))
        users = UserLog()
        clients.append(asyncio.create_task(
            run_users(self.spec.prefix, self.endpoint, history, stop, users, self.config.op_timeout)
        ))
        background = [asyncio.create_task(self._inject(started, stop)),
                      asyncio.create_task(self._watch_primaries(stop))]
        if self.journal is not None:
            background.append(asyncio.create_task(self.journal.run(stop)))
        resharding = asyncio.create_task(self._reshard(started))
        try:
            await self._wait(started, stop, background, history)
        finally:
            stop.set()
            # A reshard in flight ends (its thread cannot be cancelled), and one left unfinished
            # is finished: its moving slots would refuse the final read-back.
            await self._finish_reshards(resharding)
            if self.faults is not None:
                await asyncio.to_thread(self.faults.resume_all)
            _, late = await asyncio.wait(clients, timeout=self.config.op_timeout + 5)
            # The journal watch takes its last sample once stopped; the others just end.
            await asyncio.wait(background[2:], timeout=10)
            await cancel_and_wait(*late, *background)
            await asyncio.gather(*clients, *background, return_exceptions=True)
        history.close()
        report = ChaosReport(
            started=started, duration=self.config.duration, settings=settings, history=history,
            faults=self.injected, skipped=self.skipped, failovers=self.failovers, redirects=stats.redirects,
            reshards=self.reshards,
            client_errors=dict(stats.errors), client_error_samples=stats.samples,
            journal=list(self.journal.by_shard.values()) if self.journal else [],
        )
        self.progress(f"workload stopped after {len(history)} operations; reading every key back")
        deadline = time.monotonic() + self.config.recovery_timeout
        try:
            final = await read_final(self.spec, self.endpoint, history, deadline)
        except FinalReadFailed as exc:
            # A cluster that never recovered is the run to investigate: keep what led up to it.
            raise ChaosError(str(exc), report) from exc
        shard_of = await self._shard_of()
        recovery_times(self.injected, history, {*range(self.config.clients), PROBE}, shard_of)
        recovery_times(self.injected, history, {PROBE}, shard_of, into="probe_recovered_after")
        write_pauses(self.injected, history, {*range(self.config.clients), PROBE}, shard_of)
        loss_final = {k: v for k, v in final.items() if not self.spec.is_register(k)}
        report.loss = check_loss(loss_operations(history, self.spec), loss_final)
        self.progress(f"{report.loss.acknowledged} acknowledged unique writes and appends, "
                      f"{len(report.loss.lost)} lost; checking linearizability")
        report.users = await check_users(users, await self._node_addresses(), deadline)
        self.progress(f"{report.users.acknowledged} acknowledged users, missing on "
                      f"{len(report.users.missing)} of {report.users.nodes} nodes")
        registers = history.select(lambda op: self.spec.is_register(op.key))
        report.linearizability = await asyncio.to_thread(
            check, registers, time_limit=self.config.check_time_limit
        )
        self.progress(report.linearizability.summary().splitlines()[0])
        return report

    async def _node_addresses(self) -> list[str]:
        """Every node's client address; the endpoint alone where there is no cluster to ask."""
        if self.faults is None:
            return [self.endpoint]
        doc = await asyncio.to_thread(self.faults.status)
        return [n["address"] for n in doc["nodes"]]

    async def _shard_of(self) -> Callable[[str], int] | None:
        """Key to shard, from the cluster's slot map; None where there is no cluster to ask."""
        if self.faults is None:
            return None
        try:
            slots = self.faults.slot_map(await asyncio.to_thread(self.faults.status))
        except Exception as exc:  # the report still stands, with recovery measured cluster-wide
            self.progress(f"recovery times are cluster-wide: no slot map from the cluster ({exc})")
            return None
        return lambda key: slots.owner(key_hash_slot(key.encode()))

    async def _wait(self, started: int, stop: asyncio.Event, background: list[asyncio.Task],
                    history: History) -> None:
        """Let the run last its duration, reporting progress; a crashed fault injector ends it early."""
        end = started / 1e9 + self.config.duration
        running = set(background)
        while (left := end - time.monotonic()) > 0:
            if running:
                done, running = await asyncio.wait(running, timeout=min(5.0, left))
            else:
                done = set()
                await asyncio.sleep(min(5.0, left))
            for task in done:
                if task.exception() is not None:
                    raise ChaosError(f"fault injection failed: {task.exception()!r}") from task.exception()
            self.progress(f"{time.monotonic() - started / 1e9:5.1f}s: {len(history)} operations, "
                          f"{len(self.injected)} faults, {len(self.failovers)} failovers")

    async def _reshard(self, started: int) -> None:
        """Alternate the shard count between shards + 1 and shards until the cooldown."""
        faults, config = self.faults, self.config
        if faults is None or not config.reshard_every:
            return
        end = started / 1e9 + config.duration - config.cooldown
        target = config.shards + 1
        while time.monotonic() + config.reshard_every < end:
            await asyncio.sleep(config.reshard_every)
            if await self._scale_to(target):
                target = config.shards if target > config.shards else config.shards + 1

    async def _scale_to(self, shards: int) -> bool:
        faults = self.faults
        assert faults is not None
        self.progress(f"reshard: to {shards} shards")
        began = time.monotonic()
        try:
            await asyncio.to_thread(scale, faults.base, faults.name, shards,
                                    max_keys_per_second=self.config.reshard_keys_per_second, chunk_slots=1024)
        except cluster.LocalError as exc:
            self.reshards.append(f"to {shards} shards: failed after {time.monotonic() - began:.1f}s: {exc}")
            self.progress(f"reshard: to {shards} shards failed: {exc}")
            return False
        self.reshards.append(f"to {shards} shards in {time.monotonic() - began:.1f}s")
        self.progress(f"reshard: {shards} shards, after {time.monotonic() - began:.1f}s")
        return True

    async def _finish_reshards(self, task: asyncio.Task[None]) -> None:
        if self.faults is None or not self.config.reshard_every:
            await task
            return
        with contextlib.suppress(Exception):
            await task
        last = await asyncio.to_thread(unfinished, self.faults.base, self.faults.name)
        if last is not None:
            await self._scale_to(last)

    async def _inject(self, started: int, stop: asyncio.Event) -> None:
        faults = self.faults
        if faults is None:
            return
        cannot = {s.kind for s in self.skipped}
        config = self.config
        plan = schedule(config.duration, tuple(k for k in config.faults if k not in cannot),
                        config.fault_interval, config.warmup, config.cooldown, config.lease)
        start = started / 1e9
        for i, planned in enumerate(plan):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, start + planned.at - time.monotonic()))
            if stop.is_set():
                return
            # A fault must be over before the next one's slot: then each fault's effects are its own.
            slot_end = plan[i + 1].at if i + 1 < len(plan) else config.duration - config.cooldown
            latest = start + (planned.until if planned.hold else slot_end)
            kind = planned.kind
            if planned.hold and time.monotonic() >= latest:  # a kill still happens, at once
                self.skipped.append(Skipped(kind, f"at {planned.at:g}s: the previous fault overran its slot"))
                self.progress(f"skipped {kind} at {planned.at:g}s: the previous fault overran its slot")
                continue
            try:
                fault = await asyncio.to_thread(faults.inject, kind, latest)
            except cluster.LocalError as exc:
                self.skipped.append(Skipped(kind, f"at {time.monotonic() - start:.1f}s: {exc}"))
                self.progress(f"could not inject {kind}: {exc}")
                continue
            self.injected.append(fault)
            self.progress(f"fault: {kind} {fault.target} ({fault.detail})")
            if planned.hold:
                # Held until the planned end, not for `hold` after a late start, to keep the next slot free.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, start + planned.until - time.monotonic()))
                with contextlib.suppress(cluster.LocalError, NetworkError):
                    await asyncio.to_thread(faults.resume, fault)
                held = (fault.ended - fault.started) / 1e9
                self.progress(f"fault: {'healed' if kind is FaultKind.PARTITION_ZONE else 'resumed'} "
                              f"{fault.target} after {held:.1f}s")

    async def _watch_primaries(self, stop: asyncio.Event) -> None:
        """Poll the platform's status to see failovers (changes of a shard's primary)."""
        faults = self.faults
        if faults is None:
            return
        known: dict[int, str] = {}
        while not stop.is_set():
            try:
                doc = await asyncio.to_thread(faults.status)
            except Exception:  # a probe timing out during a fault must not end the run
                doc = None
            if doc is not None:
                for shard, primary in faults.primaries(doc).items():
                    if shard in known and known[shard] != primary:
                        self.failovers.append(Failover(shard, time.monotonic_ns(), known[shard], primary))
                        self.progress(f"failover: shard {shard} {known[shard]} -> {primary}")
                    known[shard] = primary
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATUS_EVERY)


def _settings(config: ChaosConfig, cluster_doc: dict[str, Any] | None, endpoint: str) -> dict[str, Any]:
    settings = {k: v for k, v in asdict(config).items() if k not in ("faults",)}
    settings["faults"] = [str(k) for k in config.faults]
    settings["endpoint"] = endpoint
    if cluster_doc:
        settings["cluster"] = {"name": cluster_doc["name"], "dir": cluster_doc.get("dir"),
                               "shards": cluster_doc.get("shards"), "replicas": cluster_doc.get("replicas"),
                               "zones": cluster_doc.get("zones")}
    return settings


def run(config: ChaosConfig, progress: Progress, own_dir: Path | None = None) -> ChaosReport:
    """Run the whole scenario; a cluster started here (in own_dir, default a new temporary directory) is
    removed again, its logs kept if it failed or config.keep_evidence."""
    own_base: Path | None = None
    report: ChaosReport | None = None
    name, base = config.name, config.dir
    try:
        if config.endpoint is None and name is None:
            own_base = own_dir or Path(tempfile.mkdtemp(prefix="eg-chaos-", dir="/tmp"))
            name, base = OWN_CLUSTER, str(own_base)
            # Zones get networks of their own when a partition is wanted and can be made here.
            netns = FaultKind.PARTITION_ZONE in config.faults and not partition_unavailable()
            spec = ClusterSpec(
                name=name, shards=config.shards, replicas=config.replicas, lease_seconds=config.lease,
                netns=netns, snapshot_interval=config.snapshot_interval,
                snapshot_entries=config.snapshot_entries,
            )
            progress(f"starting a local cluster in {own_base}")
            cluster.up(spec, own_base, progress=progress)
        report = _run_against(config, name, base, progress)
        return report
    finally:
        if own_base is not None:
            _teardown(own_base, report, config.keep_evidence, progress)


def _run_against(config: ChaosConfig, name: str | None, base: str | None, progress: Progress) -> ChaosReport:
    skipped: list[Skipped] = []
    faults: LocalFaults | None = None
    journal: JournalWatch | None = None
    doc: dict[str, Any] | None = None
    if name is not None:
        if base is None:
            raise ChaosError("--name needs --dir (where `engram local up` put the cluster)")
        doc = cluster.status(base, name)
        state = cluster.load_running(base, name)
        # The cluster's own lease decides how long a pause must last to outlive it.
        config = replace(config, lease=state.lease_seconds)
        faults = LocalFaults(Path(base), name, config.lease, random.Random(config.seed))
        journal = JournalWatch(state.journal_urls, name, state.shards, security=state.journal_security)
        served_tls = state.local_tls is not None and any(n.tls_port for n in state.nodes)
        use_client_tls(state.local_tls.ca_file if state.local_tls and served_tls else None)
    else:
        use_client_tls(None)
    endpoint = config.endpoint or (doc["endpoint"] if doc else None)
    if endpoint is None:
        raise ChaosError("give --endpoint, or --name and --dir of a local cluster")
    if faults is None:
        skipped += [Skipped(k, "no platform access: only an --endpoint was given; pass --name/--dir of a "
                               "local cluster to inject faults") for k in config.faults]
    elif FaultKind.PARTITION_ZONE in config.faults:
        assert name is not None and base is not None
        zone_networks = cluster.load_running(base, name).network is not None
        if why := partition_unavailable(zone_networks):
            skipped.append(Skipped(FaultKind.PARTITION_ZONE, why))
    settings = _settings(config, doc, endpoint)
    progress(f"chaos: {config.duration:g}s, {config.clients} clients on {config.keys} register keys, "
             f"seed {config.seed}, endpoint {endpoint}")
    try:
        report = asyncio.run(_Run(config, endpoint, faults, skipped, progress, journal).execute(settings))
    except ChaosError as exc:
        if exc.report is not None:
            _save_history(exc.report, config, doc)
        raise
    _save_history(report, config, doc)
    return report


def _save_history(report: ChaosReport, config: ChaosConfig, doc: dict[str, Any] | None) -> None:
    """Where asked, or beside the cluster's logs when the run is evidence (failed, or keep_evidence)."""
    if config.history_path:
        report.history.save(config.history_path)
        report.history_path = config.history_path
    elif (not report.ok or config.keep_evidence) and doc is not None and doc.get("dir"):
        path = Path(doc["dir"]) / f"chaos-history-{config.seed}.json"
        report.history.save(path)
        report.history_path = str(path)


def _teardown(base: Path, report: ChaosReport | None, keep_evidence: bool, progress: Progress) -> None:
    keep = report is None or not report.ok or keep_evidence
    try:
        cluster.down(base, OWN_CLUSTER, keep_data=keep)
    except cluster.LocalError as exc:
        progress(f"stopping the chaos cluster: {exc}")
    finally:
        from engram.platforms.local.testing import force_cleanup  # last resort after a failed `down`

        with contextlib.suppress(Exception):
            force_cleanup(OWN_CLUSTER, base)
    if keep:
        if report is not None:
            report.evidence_dir = str(base / OWN_CLUSTER)
        progress(f"kept the cluster's logs and journal in {base / OWN_CLUSTER} as evidence")
    else:
        shutil.rmtree(base, ignore_errors=True)
