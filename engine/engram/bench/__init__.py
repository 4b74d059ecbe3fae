"""`engram bench`: throughput and latency of Engram next to plain Valkey and fsync-always Valkey.

The names below load on first use: generator processes import `engram.bench.<generator>` and must
not pay for the runner's imports (the local platform, the journal client).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "WORKLOADS": "engram.bench.workloads",
    "LoadSpec": "engram.bench.workloads",
    "Workload": "engram.bench.workloads",
    "LatencyHistogram": "engram.bench.measurement",
    "Measurement": "engram.bench.measurement",
    "BenchReport": "engram.bench.report",
    "Bench": "engram.bench.runner",
    "BenchConfig": "engram.bench.runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engram.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
