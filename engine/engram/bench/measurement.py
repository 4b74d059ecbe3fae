"""What one generator run measured, and the mergeable latency histogram behind the Python generator."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

# Buckets keep this many significant bits of a latency in microseconds: under 1% error at any scale.
_SIGNIFICANT_BITS = 7


@dataclass
class LatencyHistogram:
    """Latencies in microseconds, bucketed log-linearly so processes can send theirs as a small dict."""

    counts: Counter[int] = field(default_factory=Counter)

    def record(self, micros: int, times: int = 1) -> None:
        shift = max(0, micros.bit_length() - _SIGNIFICANT_BITS)
        self.counts[(micros >> shift) << shift | ((1 << shift) >> 1)] += times

    def merge(self, other: LatencyHistogram | dict[int, int]) -> None:
        self.counts.update(other.counts if isinstance(other, LatencyHistogram) else other)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def quantile(self, q: float) -> float:
        """The latency (µs) at or below which a fraction q of the requests completed."""
        total = self.total
        if not total:
            return math.nan
        rank = max(1, math.ceil(q * total))
        seen = 0
        for micros in sorted(self.counts):
            seen += self.counts[micros]
            if seen >= rank:
                return float(micros)
        return float(max(self.counts))


@dataclass
class Measurement:
    """One workload against one target: throughput and latency percentiles in milliseconds."""

    workload: str
    target: str
    generator: str
    requests: int
    errors: int
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float
    p999_ms: float

    @classmethod
    def from_histogram(
        cls, workload: str, target: str, generator: str, hist: LatencyHistogram, errors: int, seconds: float
    ) -> Measurement:
        requests = hist.total
        return cls(
            workload=workload,
            target=target,
            generator=generator,
            requests=requests,
            errors=errors,
            seconds=seconds,
            throughput=requests / seconds if seconds > 0 else 0.0,
            p50_ms=hist.quantile(0.50) / 1000,
            p99_ms=hist.quantile(0.99) / 1000,
            p999_ms=hist.quantile(0.999) / 1000,
        )
