"""The report of a multi-region chaos run: each region's writes, the faults, how long the regions
took to drain, their digests and every violation found; `ok` is what the exit code reflects."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from engram.chaos.region_check import RegionReading, Violation
from engram.chaos.region_faults import RegionFault, RegionFaultKind
from engram.chaos.region_workload import Ledger, RegionKeys
from engram.chaos.report import local_time

# Violations listed in the JSON; the count says how many there were.
SHOWN = 200


def fault_figures(faults: list[RegionFault], ledgers: dict[str, Ledger]) -> tuple[list[Violation], list[str]]:
    """Fill each fault's writes_again_after from its region's ledger; return the findings and notes."""
    findings: list[Violation] = []
    notes: list[str] = []
    for fault in faults:
        ledger = ledgers[fault.region]
        fault.writes_again_after = ledger.first_ack_after(fault.writes_counted_from)
        meanwhile = ledger.acks_since(fault.started, before=fault.ended)
        # A frozen region that acknowledged a write was not away: the run proved less than it says.
        if fault.kind is RegionFaultKind.FREEZE_REGION and fault.complete and meanwhile:
            findings.append(Violation("frozen", fault.region, f"{meanwhile} writes sent while it was frozen "
                                      "were acknowledged before it was continued"))
        # A cut-off region should go on writing; one that did not (a failover under way, say) showed
        # no writes taken alone, which is worth a note but loses nothing.
        if fault.kind is RegionFaultKind.CUT_REGION and fault.ended > fault.started and not meanwhile:
            notes.append(f"{fault.region} acknowledged no write sent while it was cut off "
                         f"({fault.ended - fault.started:.1f}s): the cut did not show it taking writes alone")
    return findings, notes


@dataclass
class RegionChaosReport:
    """Everything `engram chaos --regions` prints."""

    seed: int
    duration: float
    interval: float
    regions: tuple[str, ...]
    keys: RegionKeys
    settings: dict[str, Any]
    # time.monotonic() when the writers started: fault times are counted from it.
    started: float
    endpoints: dict[str, str] = field(default_factory=dict)
    ledgers: dict[str, Ledger] = field(default_factory=dict)
    faults: list[RegionFault] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # Per link ("to<-from"), seconds after the writers stopped until it had copied and applied all.
    drained: dict[str, float] = field(default_factory=dict)
    not_drained: list[str] = field(default_factory=list)
    readings: dict[str, RegionReading] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    # With violations: whether reading again for a while made them go (a late region) or not.
    settled: str = ""
    notes: list[str] = field(default_factory=list)
    evidence_dir: str | None = None
    # No operation history is kept here; the attribute is what `--seeds` looks for.
    history_path: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.readings) and not self.violations

    def _at(self, moment: float) -> float:
        return round(moment - self.started, 1)

    def region_figures(self, region: str) -> dict[str, Any]:
        ledger = self.ledgers[region]
        return {
            "endpoint": self.endpoints.get(region),
            "acknowledged": ledger.outcomes["ok"],
            "unsure": ledger.outcomes["unsure"],
            "refused": ledger.outcomes["refused"],
            "errors": dict(ledger.errors),
            "increments": {"acknowledged": ledger.increments_acked, "unsure": sum(ledger.increments_unsure)},
            "digest": self.readings[region].digest if region in self.readings else None,
        }

    def to_json(self) -> dict[str, Any]:
        per_region = {r: self.region_figures(r) for r in self.regions if r in self.ledgers}
        first = next(iter(self.readings.values()), None)
        ttl_item = ("string", self.keys.ttl, "") if self.keys.ttl else None
        return {
            "ok": self.ok,
            "mode": "regions",
            "seed": self.seed,
            "duration": self.duration,
            "interval": self.interval,
            "regions": list(self.regions),
            "settings": self.settings,
            "per_region": per_region,
            "acknowledged_writes": sum(f["acknowledged"] for f in per_region.values()),
            "unsure_writes": sum(f["unsure"] for f in per_region.values()),
            "faults_injected": [
                {"kind": str(f.kind), "region": f.region, "target": f.target, "shard": f.shard,
                 "at": self._at(f.started), "until": self._at(f.ended), "complete": f.complete,
                 "writes_again_after": _seconds(f.writes_again_after),
                 **({"linked_again_after": _seconds(f.linked_again_after)}
                    if f.kind is RegionFaultKind.CUT_REGION else {}),
                 # What every region acknowledged while a held fault lasted (sent and answered in it).
                 **({"acknowledged_meanwhile": {r: ledger.acks_since(f.started, before=f.ended)
                                                for r, ledger in self.ledgers.items()}}
                    if f.ended > f.started else {}),
                 "time": local_time(f.wall), "detail": f.detail}
                for f in self.faults
            ],
            "fault_counts": dict(Counter(str(f.kind) for f in self.faults)),
            "faults_skipped": self.skipped,
            "drained_after": self.drained,
            "drain_seconds": max(self.drained.values()) if self.drained and not self.not_drained else None,
            "not_drained": self.not_drained,
            "digests": {r: reading.digest for r, reading in self.readings.items()},
            "converged": bool(self.readings) and len({r.digest for r in self.readings.values()}) == 1,
            "counter": None if not self.keys.counter or first is None else {
                "key": self.keys.counter, "value": first.counter,
                "acknowledged": sum(f["increments"]["acknowledged"] for f in per_region.values()),
                "unsure": sum(f["increments"]["unsure"] for f in per_region.values())},
            "ttl": None if ttl_item is None or first is None else {
                "key": self.keys.ttl, "value": first.items.get(ttl_item), "deadline": first.deadline},
            "violation_count": len(self.violations),
            "violations": [v.to_json() for v in self.violations[:SHOWN]],
            "lost_acknowledged_writes": sum(1 for v in self.violations if v.kind == "lost"),
            "settled": self.settled,
            "notes": self.notes,
            "evidence": self.evidence_dir,
        }

    def text(self) -> str:
        doc = self.to_json()
        writes = "; ".join(f"{r} {f['acknowledged']}/{f['unsure']}/{f['refused']}"
                           for r, f in doc["per_region"].items())
        lines = [f"chaos run across regions {', '.join(self.regions)} of {self.duration:g}s, seed "
                 f"{self.seed}: {'OK' if self.ok else 'FAILED'}",
                 f"writes acknowledged / unsure / refused per region: {writes}",
                 "faults injected:"]
        for f in doc["faults_injected"]:
            held = f" until {f['until']:.1f}s" if f["until"] != f["at"] else ""
            again = "never" if f["writes_again_after"] is None else f"{f['writes_again_after']:.1f}s"
            # A cut region's first write is counted from the cut: it is meant to go on writing.
            what = "first write after the cut" if "linked_again_after" in f else "writes again after"
            line = (f"  {f['at']:6.1f}s{held:<14} {f['kind']:<20} {f['region']:<8} {f['target']:<22} "
                    f"{what} {again}")
            if "linked_again_after" in f:
                linked = f["linked_again_after"]
                line += f", linked again {'never' if linked is None else f'{linked:.1f}s'} after the heal"
            lines.append(line)
        lines += [f"  skipped: {s}" for s in self.skipped]
        if self.drained:
            lines.append("drained after the writers stopped: " + ", ".join(
                f"{link} {s:g}s" for link, s in self.drained.items()))
        if self.not_drained:
            lines.append(f"not drained: {', '.join(self.not_drained)}")
        if doc["digests"]:
            same = "identical" if doc["converged"] else "DIFFERENT"
            lines.append(f"digests ({same}): " + ", ".join(f"{r} {d}" for r, d in doc["digests"].items()))
        if doc["counter"]:
            c = doc["counter"]
            lines.append(f"counter {c['key']} = {c['value']} (acknowledged increments {c['acknowledged']}, "
                         f"unsure {c['unsure']})")
        if doc["ttl"]:
            lines.append(f"ttl string {doc['ttl']['key']} = {doc['ttl']['value']!r}, "
                         f"deadline {doc['ttl']['deadline']}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"violations: {len(self.violations) or 'none'}")
        lines += [f"  {v}" for v in self.violations[:40]]
        if self.settled:
            lines.append(f"  ({self.settled})")
        if self.evidence_dir:
            lines.append(f"cluster logs and journals kept in {self.evidence_dir}")
        return "\n".join(lines)


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
