"""`engram bench` end to end on a tiny load: every target and workload measured, ratios from the numbers.

Not a timed benchmark: it checks that the harness runs and reports what it measured.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

WORKLOADS = ("set", "get", "mixed")
TARGETS = ("valkey", "valkey-aof", "engram")


def _bench(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "engram.bench", *args, "--json"],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, f"engram bench failed ({done.returncode}):\n{done.stderr[-3000:]}"
    assert "engram bench:" in done.stderr, "no progress was shown on stderr"
    return json.loads(done.stdout)


def test_bench_measures_every_workload_on_every_target_and_compares_with_plain_valkey() -> None:
    doc = _bench("--requests", "300", "--clients", "2", "--keyspace", "100", "--value-size", "32")

    assert [t["name"] for t in doc["targets"]] == list(TARGETS)
    assert all(t["note"] for t in doc["targets"]), "each target says how it was reached"
    engram = next(t for t in doc["targets"] if t["name"] == "engram")
    assert "primary" in engram["note"], "with 1 shard Engram is measured through its primary"
    assert doc["generators"], "the report names the load generator(s) used"
    results = {(r["workload"], r["target"]): r for r in doc["results"]}
    assert set(results) == {(w, t) for w in WORKLOADS for t in TARGETS}

    for (workload, _target), r in results.items():
        assert r["requests"] >= 300 and r["errors"] == 0
        assert r["throughput"] > 0 and r["seconds"] > 0
        latency = r["latency_ms"]
        assert 0 < latency["p50"] <= latency["p99"] <= latency["p999"]
        base = results[(workload, "valkey")]
        ratios = r["ratio_to_valkey"]
        assert ratios["throughput"] == pytest.approx(r["throughput"] / base["throughput"], rel=1e-3)
        for p in ("p50", "p99", "p999"):
            assert ratios[p] == pytest.approx(latency[p] / base["latency_ms"][p], rel=1e-6)
        assert not any(math.isnan(v) for v in ratios.values())
    assert all(results[(w, "valkey")]["ratio_to_valkey"]["throughput"] == 1.0 for w in WORKLOADS)


def test_bench_python_generator_runs_pipelined_duration_bounded_load() -> None:
    doc = _bench("--targets", "valkey", "--workloads", "mixed", "--seconds", "1", "--clients", "4",
                 "--pipeline", "4", "--keyspace", "100", "--generator", "python")

    (r,) = doc["results"]
    assert r["generator"].startswith("engram-loadgen")
    assert r["requests"] > 0 and r["requests"] % 4 == 0, "whole pipelines of 4 are counted"
    assert 0.5 < r["seconds"] < 10
    assert r["throughput"] == pytest.approx(r["requests"] / r["seconds"], rel=1e-3)
