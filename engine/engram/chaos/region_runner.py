"""One multi-region chaos run (`engram chaos --regions`): start (or join) a local multi-region
cluster, write in every region while the seeded schedule injects faults one at a time, then heal,
wait until every region has everything, read every region and check (docs/multi-region.md)."""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from engram.chaos.faults import MIN_FAULT_INTERVAL
from engram.chaos.region_check import ReadFailed, Violation, check, read_regions
from engram.chaos.region_drain import link_name, wait_drained
from engram.chaos.region_faults import (
    ALL_REGION_KINDS,
    RELINK_TIMEOUT,
    PlannedRegionFault,
    RegionFault,
    RegionFaultKind,
    RegionFaults,
    plan_region_faults,
)
from engram.chaos.region_report import RegionChaosReport, fault_figures
from engram.chaos.region_workload import RegionKeys, RegionWriter
from engram.chaos.runner import OWN_CLUSTER, ChaosError
from engram.platforms.local import cluster, multi_region
from engram.platforms.local.plan import ClusterSpec
from engram.platforms.local.regions import load_record, region_cluster
from engram.platforms.local.state import ClusterState

Progress = Callable[[str], None]
PROGRESS_EVERY = 5.0
# The least time a fault's victim is awaited (a failover under way has no primary yet).
VICTIM_WAIT = 5.0


@dataclass
class RegionChaosConfig:
    """What `engram chaos --regions` was asked to do."""

    regions: tuple[str, ...]
    duration: float = 60.0
    interval: float = 12.0
    seed: int | None = None
    kinds: tuple[RegionFaultKind, ...] = ALL_REGION_KINDS
    # No fault in the first `warmup` seconds, none held into the last `cooldown` (writes after the
    # last fault are checked too).
    warmup: float = 4.0
    cooldown: float = 8.0
    op_timeout: float = 5.0
    # The cluster started when none is given.
    shards: int = 1
    replicas: int = 1
    lease: float = 2.0
    snapshot_interval: float = 3600.0
    snapshot_entries: int = 100_000
    counters: str = "counter:*"
    ttls: str = "session:*"
    # An existing local multi-region cluster instead.
    name: str | None = None
    dir: str | None = None
    start_timeout: float = 60.0
    drain_timeout: float = 150.0
    read_timeout: float = 30.0
    # With violations: how long to read again to tell a late region from one that diverged.
    settle_timeout: float = 30.0
    keep_evidence: bool = False

    def __post_init__(self) -> None:
        if len(self.regions) < 2 or len(set(self.regions)) != len(self.regions):
            raise ValueError(f"--regions needs two or more distinct regions, got {','.join(self.regions)!r}")
        if self.duration <= 0:
            raise ValueError("the duration must be positive")
        if self.interval < MIN_FAULT_INTERVAL:
            raise ValueError(f"the fault interval must be at least {MIN_FAULT_INTERVAL:g}s")
        if self.seed is None:
            self.seed = random.SystemRandom().randrange(1 << 31)


def key_for(patterns: list[str], preferred: str) -> str | None:
    """A key some pattern matches: `preferred` if one does, else one made from a pattern of only
    `*` and `?` wildcards; None when neither works (fnmatch reads globs as KEYS does, brackets aside)."""
    if any(fnmatchcase(preferred, p) for p in patterns):
        return preferred
    for pattern in patterns:
        if not any(c in pattern for c in "[]\\"):
            return pattern.replace("*", "chaos").replace("?", "c")
    return None


def workload_keys(regions: tuple[str, ...], counters: list[str],
                  ttls: list[str]) -> tuple[RegionKeys, list[str]]:
    """The workload's keys for a cluster with these patterns, and what cannot be checked without one."""
    # The workload's other keys: the counter and the TTL string must be none of them.
    others = RegionKeys(regions, counter=None, ttl=None)
    counter, ttl = key_for(counters, "counter:hits"), key_for(ttls, "session:chaos")
    taken = set(others.strings_read()) | {others.hash, others.set}
    notes = []
    if counter is None or counter in taken:
        notes.append("no additive counter: the cluster has no --counters pattern the workload can use")
        counter = None
    if ttl is None or ttl in taken or ttl == counter:
        notes.append("no TTL string: the cluster has no --ttls pattern the workload can use")
        ttl = None
    return RegionKeys(regions, counter=counter, ttl=ttl), notes


class _Run:
    """The synchronous run against a running cluster: writers are threads, faults come from here."""

    def __init__(self, config: RegionChaosConfig, name: str, base: str, progress: Progress) -> None:
        self.config, self.name, self.base, self.progress = config, name, base, progress
        self._said = time.monotonic()
        states = self._states()
        self.shards = states[config.regions[0]].shards
        first = states[config.regions[0]]
        keys, notes = workload_keys(config.regions, first.region_counters, first.region_ttls)
        if any(s.region_counters != first.region_counters or s.region_ttls != first.region_ttls
               for s in states.values()):
            notes.append("the regions' --counters or --ttls patterns differ (docs/multi-region.md)")
        assert config.seed is not None
        self.keys = keys
        self.writers = {r: RegionWriter(r, states[r].endpoint, keys, config.seed, timeout=config.op_timeout)
                        for r in config.regions}
        self.faults = RegionFaults(Path(base), name, random.Random(config.seed))
        self.report = RegionChaosReport(
            seed=config.seed, duration=config.duration, interval=config.interval, regions=config.regions,
            keys=keys, settings=self._settings(states), started=time.monotonic(),
            endpoints={r: states[r].endpoint for r in config.regions}, notes=notes)

    def _states(self) -> dict[str, ClusterState]:
        record = load_record(self.base, self.name)
        if record is None:
            raise ChaosError(f"{self.name} under {self.base} is not a multi-region cluster (start one with "
                             f"`engram local up {self.name} --regions ...`)")
        if tuple(record.regions) != self.config.regions:
            raise ChaosError(f"{self.name}'s regions are {','.join(record.regions)}, not "
                             f"{','.join(self.config.regions)}")
        states = {r: cluster.load_running(self.base, region_cluster(self.name, r)) for r in record.regions}
        if any(s.local_tls is not None and any(n.tls_port for n in s.nodes) for s in states.values()):
            raise ChaosError(f"{self.name} serves clients over TLS (--tls), which the multi-region chaos "
                             "writers do not speak yet")
        return states

    def _settings(self, states: dict[str, ClusterState]) -> dict[str, Any]:
        settings = {k: v for k, v in asdict(self.config).items() if k != "kinds"}
        settings["kinds"] = [str(k) for k in self.config.kinds]
        settings["cluster"] = {"name": self.name, "dir": self.base, "shards": self.shards,
                               "replicas": states[self.config.regions[0]].replicas,
                               "counter_key": self.keys.counter, "ttl_key": self.keys.ttl}
        return settings

    def execute(self) -> RegionChaosReport:
        config, report = self.config, self.report
        plan = plan_region_faults(config.seed or 0, config.duration, config.regions, config.kinds,
                                  config.interval, self.shards, config.warmup, config.cooldown)
        self.progress(f"chaos across regions {', '.join(config.regions)}: {config.duration:g}s, seed "
                      f"{config.seed}, {len(plan)} faults planned every {config.interval:g}s")
        try:
            for writer in self.writers.values():
                writer.start()
            self._wait_first_writes()
            report.started = time.monotonic()
            self._inject(plan)
            self._wait_until(report.started + config.duration)
        finally:
            self.faults.heal_all()
            stop_errors = []
            for writer in self.writers.values():
                try:
                    writer.stop()
                except RuntimeError as exc:
                    stop_errors.append(str(exc))
            report.ledgers = {r: w.ledger for r, w in self.writers.items()}
        if stop_errors:
            raise ChaosError("; ".join(stop_errors), report)
        stopped = time.monotonic()
        findings, notes = fault_figures(report.faults, report.ledgers)
        report.notes += notes
        self.progress(f"writers stopped after {report.to_json()['acknowledged_writes']} acknowledged writes; "
                      "waiting for every region to copy and apply the others' writes")
        tracker = wait_drained(self.base, self.name, config.regions, self.shards, config.drain_timeout,
                               self.progress)
        report.drained = {link_name(link, self.shards): s for link, s in sorted(tracker.drained.items())}
        if not tracker.done:
            report.not_drained = [link_name(link, self.shards) for link in tracker.missing()]
            findings.append(Violation("drain", ", ".join(report.not_drained),
                                      f"not drained {config.drain_timeout:g}s after the writers stopped; "
                                      f"last lag rows {tracker.last_rows}"))
        else:
            self.progress(f"every link drained within {time.monotonic() - stopped:.1f}s; reading every "
                          "region")
        try:
            report.readings = read_regions(report.endpoints, self.keys, config.read_timeout)
        except ReadFailed as exc:
            report.violations = findings
            raise ChaosError(str(exc), report) from exc
        found = check(report.readings, report.ledgers, self.keys)
        report.violations = findings + found
        if found:
            report.settled = self._settle()
        self.progress(f"{len(report.violations)} violations")
        return report

    def _wait_first_writes(self) -> None:
        deadline = time.monotonic() + self.config.start_timeout
        while not all(w.acks for w in self.writers.values()):
            if time.monotonic() >= deadline:
                idle = [r for r, w in self.writers.items() if not w.acks]
                raise ChaosError(f"no write acknowledged in {', '.join(idle)} within "
                                 f"{self.config.start_timeout:g}s", self.report)
            time.sleep(0.1)

    def _wait_until(self, moment: float) -> None:
        """Sleep until `moment`, saying how the writers fare every few seconds."""
        while (left := moment - time.monotonic()) > 0:
            time.sleep(min(left, PROGRESS_EVERY))
            if time.monotonic() - self._said >= PROGRESS_EVERY:
                self._said = time.monotonic()
                acks = ", ".join(f"{r} {w.acks}" for r, w in self.writers.items())
                self.progress(f"{self._said - self.report.started:5.1f}s: acknowledged {acks}; "
                              f"{len(self.report.faults)} faults")

    def _inject(self, plan: list[PlannedRegionFault]) -> None:
        """The schedule, one fault at a time, each healed before the next starts."""
        start, end = self.report.started, self.report.started + self.config.duration - self.config.cooldown
        for i, planned in enumerate(plan):
            self._wait_until(start + planned.at)
            where = f"{planned.kind} in {planned.region} at {planned.at:g}s"
            if planned.hold and time.monotonic() >= start + planned.until:
                self.report.skipped.append(f"{where}: the previous fault overran its slot")
                continue
            for writer in self.writers.values():
                writer.set_phase(f"after {where}")
            # A victim (a primary, during a failover) is awaited until the next fault's slot, and a
            # little longer for the last one, which would otherwise get one look only.
            slot_end = start + plan[i + 1].at if i + 1 < len(plan) else end
            deadline = max(slot_end, time.monotonic() + VICTIM_WAIT)
            try:
                fault = self.faults.inject(planned.kind, planned.region, planned.shard, deadline=deadline)
            except cluster.LocalError as exc:
                self.report.skipped.append(f"{where}: {exc}")
                self.progress(f"could not inject {where}: {exc}")
                continue
            self.report.faults.append(fault)
            self.progress(f"fault: {planned.kind} in {planned.region}: {fault.detail}")
            if planned.hold:
                self._wait_until(start + planned.until)
                self.faults.heal(fault)
                self.progress(f"fault: {planned.region} {_healed(fault)}")

    def _settle(self) -> str:
        """Read again for a while: do the findings go (a late region) or stay (diverged for good)?"""
        deadline = time.monotonic() + self.config.settle_timeout
        began = time.monotonic()
        left: list[Violation] = []
        while time.monotonic() < deadline:
            time.sleep(1.0)
            with contextlib.suppress(ReadFailed):
                left = check(read_regions(self.report.endpoints, self.keys, self.config.read_timeout),
                             self.report.ledgers, self.keys)
                if not left:
                    return f"read again, the regions were right {time.monotonic() - began:.0f}s later"
        return f"still {len(left)} findings when read again {self.config.settle_timeout:g}s later"


def _healed(fault: RegionFault) -> str:
    held = f"after {fault.ended - fault.started:.1f}s"
    if fault.kind is not RegionFaultKind.CUT_REGION:
        return f"continued {held}"
    if fault.linked_again_after is None:
        return f"healed {held}, not linked again within {RELINK_TIMEOUT:g}s"
    return f"healed {held}, linked again {fault.linked_again_after:.1f}s later"


def run(config: RegionChaosConfig, progress: Progress, own_dir: Path | None = None) -> RegionChaosReport:
    """Run the whole scenario; a cluster started here (under own_dir, default a new temporary
    directory, in OWN_CLUSTER) is stopped again, its logs kept if it failed or config.keep_evidence."""
    own_base: Path | None = None
    report: RegionChaosReport | None = None
    name, base = config.name, config.dir
    try:
        if name is None:
            own_base = own_dir or Path(tempfile.mkdtemp(prefix="eg-chaos-regions-", dir="/tmp"))
            # The clusters' directories go under OWN_CLUSTER, which `--seeds` keeps as evidence.
            name, base = OWN_CLUSTER, str(own_base / OWN_CLUSTER)
            spec = ClusterSpec(name=name, shards=config.shards, replicas=config.replicas,
                               lease_seconds=config.lease, snapshot_interval=config.snapshot_interval,
                               snapshot_entries=config.snapshot_entries, region_counters=(config.counters,),
                               region_ttls=(config.ttls,))
            progress(f"starting a local multi-region cluster in {base}")
            multi_region.up(spec, config.regions, base, progress=progress)
        elif base is None:
            raise ChaosError("--name needs --dir (where `engram local up` put the cluster)")
        try:
            report = _Run(config, name, base, progress).execute()
        except ChaosError as exc:
            report = exc.report if isinstance(exc.report, RegionChaosReport) else None
            raise
        return report
    finally:
        if own_base is not None:
            _teardown(own_base, config, report, progress)


def _teardown(own_base: Path, config: RegionChaosConfig, report: RegionChaosReport | None,
              progress: Progress) -> None:
    keep = report is None or not report.ok or config.keep_evidence
    base = own_base / OWN_CLUSTER
    try:
        multi_region.down(base, OWN_CLUSTER, keep_data=keep)
    except cluster.LocalError as exc:
        progress(f"stopping the chaos cluster: {exc}")
    finally:
        from engram.platforms.local.testing import force_cleanup  # last resort after a failed `down`

        for region in config.regions:
            with contextlib.suppress(Exception):
                force_cleanup(region_cluster(OWN_CLUSTER, region), base)
    if keep:
        if report is not None:
            report.evidence_dir = str(base)
        progress(f"kept the regions' logs and journals in {base} as evidence")
    else:
        shutil.rmtree(own_base, ignore_errors=True)
