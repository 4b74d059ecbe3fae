"""`engram bench`: throughput and latency of Engram next to plain Valkey and fsync-always Valkey."""

from engram.bench.measurement import LatencyHistogram, Measurement
from engram.bench.report import BenchReport
from engram.bench.runner import Bench, BenchConfig
from engram.bench.workloads import WORKLOADS, LoadSpec, Workload

__all__ = [
    "WORKLOADS",
    "Bench",
    "BenchConfig",
    "BenchReport",
    "LatencyHistogram",
    "LoadSpec",
    "Measurement",
    "Workload",
]
