"""The benchmark's result: measurements with their ratios to plain Valkey, as a table and as JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from engram.bench.measurement import Measurement

BASELINE = "valkey"
# Ratio keys and the Measurement attribute each compares.
RATIOS = {"throughput": "throughput", "p50": "p50_ms", "p99": "p99_ms", "p999": "p999_ms"}


@dataclass
class TargetInfo:
    name: str
    description: str
    # How the generator reached it (address, relay bypassed, ...).
    note: str
    shards: int = 1


@dataclass
class BenchReport:
    """Everything one `engram bench` run measured, in the order it ran."""

    config: dict[str, Any]
    targets: list[TargetInfo] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    # Why the Python generator ran where the external tool was preferred.
    generator_notes: list[str] = field(default_factory=list)
    # The rows asked for, in order: name, description, shards, spec.
    cases: list[dict[str, Any]] = field(default_factory=list)

    def ratios(self, m: Measurement) -> dict[str, float | None]:
        """Each of m's numbers divided by plain Valkey's for the same workload (None without a baseline)."""
        base = next((b for b in self.measurements if b.workload == m.workload and b.target == BASELINE), None)
        out: dict[str, float | None] = {}
        for name, attr in RATIOS.items():
            ours, theirs = getattr(m, attr), getattr(base, attr) if base else None
            ok = theirs is not None and theirs > 0 and not math.isnan(theirs) and not math.isnan(ours)
            out[name] = ours / theirs if ok else None
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "baseline": BASELINE,
            "targets": [asdict(t) for t in self.targets],
            "generators": sorted({m.generator for m in self.measurements}),
            "generator_notes": self.generator_notes,
            "cases": self.cases,
            "results": [
                {
                    "workload": m.workload,
                    "description": self._case(m.workload).get("description", ""),
                    "shards": self._case(m.workload).get("shards", 1),
                    "target": m.target,
                    "generator": m.generator,
                    "requests": m.requests,
                    "errors": m.errors,
                    "seconds": round(m.seconds, 4),
                    "throughput": round(m.throughput, 2),
                    "latency_ms": {"p50": m.p50_ms, "p99": m.p99_ms, "p999": m.p999_ms},
                    "ratio_to_valkey": self.ratios(m),
                }
                for m in self._ordered()
            ],
        }

    def _case(self, name: str) -> dict[str, Any]:
        return next((c for c in self.cases if c["name"] == name), {})

    def _ordered(self) -> list[Measurement]:
        """Row by row (each row's targets together, baseline first), in the order the rows were asked for."""
        rows = {c["name"]: i for i, c in enumerate(self.cases)}
        targets = {t.name: i for i, t in enumerate(self.targets)}
        return sorted(self.measurements, key=lambda m: (rows.get(m.workload, len(rows)),
                                                        m.target != BASELINE, targets.get(m.target, 0)))

    def table(self) -> str:
        head = ("WORKLOAD", "TARGET", "OPS/S", "P50 MS", "P99 MS", "P999 MS",
                "OPS/S x", "P50 x", "P99 x", "P999 x", "ERRORS", "GENERATOR")
        rows = [head]
        for m in self._ordered():
            r = self.ratios(m)
            rows.append((
                m.workload, m.target, f"{m.throughput:,.0f}", _ms(m.p50_ms), _ms(m.p99_ms), _ms(m.p999_ms),
                _x(r["throughput"]), _x(r["p50"]), _x(r["p99"]), _x(r["p999"]), str(m.errors), m.generator,
            ))
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.append("")
        lines.append(f"x columns: ratio to {BASELINE} for the same workload (ops/s: higher is better; "
                     "latency: lower is better)")
        lines += [f"{c['name']}: {c['description']}" for c in self.cases]
        lines += [f"{t.name} ({t.shards} shard{'s' * (t.shards > 1)}): {t.description}; {t.note}"
                  for t in self.targets]
        lines += [f"note: {n}" for n in self.generator_notes]
        return "\n".join(lines)


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
