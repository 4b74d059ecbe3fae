"""The end-of-run report of a chaos run: what was done to the cluster and what the checkers found."""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engram.chaos.faults import Fault, Skipped
from engram.chaos.history import History, Kind, Operation, Outcome
from engram.chaos.journal_size import ShardJournal
from engram.chaos.linearizability import CheckResult
from engram.chaos.loss import LossReport
from engram.chaos.users import UserCheck

_SHOWN = 20


@dataclass(frozen=True)
class Failover:
    """A shard's primary changed, as seen by polling the cluster's status."""

    shard: int
    at: int
    previous: str
    current: str
    wall: float = field(default_factory=time.time)


def local_time(wall: float) -> str:
    """The format node and supervisor logs use, so a fault can be found in them."""
    return datetime.fromtimestamp(wall).isoformat(sep=" ", timespec="milliseconds")


def recovery_times(faults: list[Fault], history: History, workers: set[int | str],
                   shard_of: Callable[[str], int] | None = None, into: str = "recovered_after") -> None:
    """Fill each fault's recovered_after: when every shard it hit acknowledged a write invoked after it.

    The shard's earliest such acknowledgement counts, not that of the first write sent: one client
    still retrying a request it sent the dead primary does not stand for the shard.
    Per shard, because the other shards of a cluster keep acknowledging writes through a fault in one.
    shard_of maps a key to its shard; None treats the cluster as one shard.
    """
    by_shard: dict[int, list[Operation]] = {}
    for op in history.operations:
        if op.process in workers and op.kind in (Kind.WRITE, Kind.APPEND) and op.outcome is Outcome.OK:
            by_shard.setdefault(0 if shard_of is None else shard_of(op.key), []).append(op)
    for fault in faults:
        hit = list(by_shard) if fault.shard is None or shard_of is None else [fault.shard]
        waits = []
        for shard in hit:
            acked = (op.complete for op in by_shard.get(shard, ()) if op.invoke >= fault.started)
            first = min(acked, default=None)
            waits.append(None if first is None else (first - fault.started) / 1e9)
        setattr(fault, into, None if not waits or None in waits else max(waits))  # type: ignore[type-var]


def write_pauses(faults: list[Fault], history: History, workers: set[int | str],
                 shard_of: Callable[[str], int] | None = None) -> None:
    """Fill each fault's paused_for: the longest stretch, from the fault until the next one starts (or
    the last answer), in which a shard it hit acknowledged no write.

    Unlike recovered_after, this also sees a pause that begins after the fault: a planned hand-over
    keeps serving for a moment after SIGTERM or a switchover request, then pauses writes.
    """
    acks: dict[int, list[int]] = {}
    end = 0
    for op in history.operations:
        if op.complete != math.inf:
            end = max(end, int(op.complete))
        if op.process in workers and op.kind in (Kind.WRITE, Kind.APPEND) and op.outcome is Outcome.OK:
            acks.setdefault(0 if shard_of is None else shard_of(op.key), []).append(int(op.complete))
    for times in acks.values():
        times.sort()
    ordered = sorted(faults, key=lambda f: f.started)
    for i, fault in enumerate(ordered):
        until = ordered[i + 1].started if i + 1 < len(ordered) else end
        hit = list(acks) if fault.shard is None or shard_of is None else [fault.shard]
        longest = 0
        for shard in hit:
            points = [fault.started, *(t for t in acks.get(shard, ()) if fault.started < t < until), until]
            longest = max(longest, *(b - a for a, b in itertools.pairwise(points)))
        fault.paused_for = longest / 1e9 if hit else None


def _quantile(ordered: list[float], q: float) -> float:
    """The nearest-rank quantile: with few faults the p99 is the worst one, never an interpolation."""
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def recovery_by_kind(faults: list[Fault], field: str = "recovered_after") -> dict[str, dict[str, Any]]:
    """Per fault kind: how many were injected, how many never recovered, and p50/p99/max recovery."""
    kinds: dict[str, list[Fault]] = {}
    for fault in faults:
        kinds.setdefault(str(fault.kind), []).append(fault)
    stats: dict[str, dict[str, Any]] = {}
    for kind, hit in kinds.items():
        times = sorted(t for f in hit if (t := getattr(f, field)) is not None)
        stats[kind] = {
            "faults": len(hit), "never": len(hit) - len(times),
            **({"p50": round(_quantile(times, 0.5), 3), "p99": round(_quantile(times, 0.99), 3),
                "max": round(times[-1], 3)} if times else {"p50": None, "p99": None, "max": None}),
        }
    return stats


@dataclass
class ChaosReport:
    """Everything `engram chaos` prints; `ok` is what the exit code reflects."""

    started: int
    duration: float
    settings: dict[str, Any]
    history: History
    faults: list[Fault] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    failovers: list[Failover] = field(default_factory=list)
    redirects: int = 0
    client_errors: dict[str, int] = field(default_factory=dict)
    client_error_samples: dict[str, list[str]] = field(default_factory=dict)
    loss: LossReport | None = None
    linearizability: CheckResult | None = None
    # Each shard's journal over the run (empty when the run had no cluster to look at).
    journal: list[ShardJournal] = field(default_factory=list)
    history_path: str | None = None
    evidence_dir: str | None = None
    # Acknowledged ACL SETUSERs missing from some node at the end (None: not checked).
    users: UserCheck | None = None
    # Online shard count changes made during the run (--reshard-every), as they ended.
    reshards: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.loss and self.loss.ok and self.linearizability and self.linearizability.linearizable
                    and (self.users is None or self.users.ok))

    def _at(self, ns: int) -> float:
        return round((ns - self.started) / 1e9, 3)

    def to_json(self) -> dict[str, Any]:
        ops = self.history.operations
        outcomes = Counter(str(op.outcome) for op in ops)
        by_kind: dict[str, dict[str, int]] = {}
        for op in ops:
            by_kind.setdefault(str(op.kind), Counter())[str(op.outcome)] += 1  # type: ignore[index]
        loss, lin = self.loss, self.linearizability
        return {
            "ok": self.ok,
            "duration": self.duration,
            "settings": self.settings,
            "operations": len(ops),
            "outcomes": dict(outcomes),
            "operations_by_kind": {k: dict(v) for k, v in by_kind.items()},
            "faults_injected": [
                {"kind": str(f.kind), "target": f.target,
                 "at": self._at(f.started), "until": self._at(f.ended), "shard": f.shard,
                 "recovered_after": None if f.recovered_after is None else round(f.recovered_after, 3),
                 "probe_recovered_after": (None if f.probe_recovered_after is None
                                           else round(f.probe_recovered_after, 3)),
                 "paused_for": None if f.paused_for is None else round(f.paused_for, 3),
                 "time": local_time(f.wall), "detail": f.detail}
                for f in self.faults
            ],
            "fault_counts": dict(Counter(str(f.kind) for f in self.faults)),
            "recovery_by_kind": recovery_by_kind(self.faults),
            "probe_recovery_by_kind": recovery_by_kind(self.faults, "probe_recovered_after"),
            "pause_by_kind": recovery_by_kind(self.faults, "paused_for"),
            "faults_skipped": [{"kind": str(s.kind), "reason": s.reason} for s in self.skipped],
            "failovers": [{"shard": f.shard, "at": self._at(f.at), "time": local_time(f.wall),
                           "from": f.previous, "to": f.current}
                          for f in self.failovers],
            "redirects_followed": self.redirects,
            "reshards": self.reshards,
            "client_errors": self.client_errors,
            "client_error_samples": self.client_error_samples,
            "acknowledged_writes": loss.acknowledged if loss else None,
            "lost_acknowledged_writes": len(loss.lost) if loss else None,
            "lost": [str(w) for w in loss.lost[:_SHOWN]] if loss else [],
            "failed_but_present": len(loss.failed_but_present) if loss else None,
            "unexpected_values": [f"{k}={v!r}" for k, v in loss.unexpected[:_SHOWN]] if loss else [],
            "duplicated_appends": len(loss.duplicated) if loss else None,
            "unknown_writes": {"landed": len(loss.unknown_landed), "missing": len(loss.unknown_missing)}
            if loss else None,
            "users": self.users.to_json() if self.users else None,
            "linearizable": bool(lin and lin.linearizable),
            "linearizability": {
                "verdict": str(lin.verdict),
                "keys": len(lin.keys),
                "operations": sum(r.operations for r in lin.keys.values()),
                "seconds": round(lin.elapsed, 3),
                "explanation": "\n".join(r.explanation for r in lin.failures + lin.undecided),
            } if lin else None,
            "journal": [j.to_json() for j in self.journal],
            "history": self.history_path,
            "evidence": self.evidence_dir,
        }

    def text(self) -> str:
        doc = self.to_json()
        outcomes = doc["outcomes"].items()
        lines = [
            f"chaos run of {doc['duration']:g}s: {'OK' if self.ok else 'FAILED'}",
            f"operations: {doc['operations']} ({', '.join(f'{k} {v}' for k, v in sorted(outcomes))})",
            "faults injected:",
        ]
        for f in doc["faults_injected"]:
            rec = "never" if f["recovered_after"] is None else f"{f['recovered_after']:.2f}s"
            held = f" until {f['until']:.1f}s" if f["until"] != f["at"] else ""
            # A snapshot kill says how far in it landed (or that it missed); other details are in the JSON.
            said = f"  ({f['detail']})" if f["kind"] == "kill-snapshot" else ""
            lines.append(f"  {f['at']:7.1f}s{held}  {f['kind']:<14} {f['target']:<16} "
                         f"recovered after {rec}{said}")
        lines += [f"  skipped {s['kind']}: {s['reason']}" for s in doc["faults_skipped"]]
        for key, what in (("recovery_by_kind", "any client"),
                          ("probe_recovery_by_kind", "the probe writer, 0.5 s timeout")):
            if not doc[key]:
                continue
            lines.append(f"recovery (first acknowledged write on the shard after the fault; {what}), "
                         "per kind:")
            for kind, st in doc[key].items():
                spread = ("no recovery seen" if st["p50"] is None else
                          f"p50 {st['p50']:.2f}s  p99 {st['p99']:.2f}s  max {st['max']:.2f}s")
                never = f", {st['never']} never recovered" if st["never"] else ""
                lines.append(f"  {kind:<14} {st['faults']:>4} faults  {spread}{never}")
        if doc["pause_by_kind"]:
            lines.append("longest pause in acknowledged writes on the shard, from the fault to the next "
                         "(a planned hand-over pauses after it starts), per kind:")
            for kind, st in doc["pause_by_kind"].items():
                if st["p50"] is not None:
                    lines.append(f"  {kind:<14} {st['faults']:>4} faults  p50 {st['p50']:.2f}s  "
                                 f"p99 {st['p99']:.2f}s  max {st['max']:.2f}s")
        lines.append(f"failovers seen: {len(doc['failovers'])}")
        if self.reshards:
            lines.append("reshards: " + "; ".join(self.reshards))
        lines += [f"  {f['at']:7.1f}s  shard {f['shard']}: {f['from']} -> {f['to']}"
                  for f in doc["failovers"]]
        lines.append(f"redirects followed: {doc['redirects_followed']}; "
                     f"client errors: {doc['client_errors']}")
        if self.journal:
            lines.append("journal held:")
            lines += [f"  {j.text()}" for j in self.journal]
        if self.loss:
            lines.append(self.loss.summary())
        if self.users:
            lines.append(self.users.summary())
        if self.linearizability:
            lines.append(self.linearizability.summary())
        if self.history_path:
            lines.append(f"history: {self.history_path}")
        if self.evidence_dir:
            lines.append(f"cluster logs and journal kept in {self.evidence_dir}")
        return "\n".join(lines)
