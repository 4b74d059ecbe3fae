"""`engram bench` end to end on a tiny load: every target and workload measured, ratios from the numbers.

Not a timed benchmark: it checks that the harness runs and reports what it measured.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from engram.bench import glidegen, muxgen
from engram.bench.targets import Endpoint, plain_valkey
from engram.bench.workloads import WORKLOADS as ALL_WORKLOADS
from engram.bench.workloads import LoadSpec

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


# ---- the data-path suite and its generators ------------------------------------------------------

DATAPATH_ROWS = ["set-c50", "get-c50", "set-c256", "set-c4-p16", "get-c4-p16", "incr-get-mux1000",
                 "glide-set", "glide-get"]


def _needs_glide() -> None:
    # A test dependency (pyproject.toml): without it these tests fail, they never skip.
    assert importlib.util.find_spec("glide") is not None, "install the test extra: valkey-glide is missing"


def test_datapath_suite_reports_every_row_in_one_run() -> None:
    _needs_glide()
    doc = _bench("--suite", "datapath", "--targets", "valkey", "--seconds", "0.5", "--keyspace", "100",
                 "--value-size", "16")

    assert [r["workload"] for r in doc["results"]] == DATAPATH_ROWS
    assert [(t["name"], t["shards"]) for t in doc["targets"]] == [("valkey", 1), ("valkey", 3)]
    by_row = {r["workload"]: r for r in doc["results"]}
    assert by_row["glide-set"]["shards"] == by_row["glide-get"]["shards"] == 3
    assert by_row["glide-set"]["generator"].startswith("valkey-glide")
    assert by_row["incr-get-mux1000"]["generator"].startswith("engram-mux")
    assert "1000 in flight" in by_row["incr-get-mux1000"]["description"]
    assert "pipeline 16" in by_row["set-c4-p16"]["description"]
    for r in doc["results"]:
        assert r["requests"] > 0 and r["errors"] == 0, r
        latency = r["latency_ms"]
        assert 0 < latency["p50"] <= latency["p99"] <= latency["p999"], r
        assert r["ratio_to_valkey"]["throughput"] == 1.0


def test_suite_refuses_options_that_shape_its_rows() -> None:
    done = subprocess.run([sys.executable, "-m", "engram.bench", "--suite", "datapath", "--clients", "5"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "drop --clients" in done.stderr


@contextmanager
def _valkey(shards: int = 1) -> Iterator[Endpoint]:
    """Plain Valkey, one server or a cluster of `shards` primaries, for a generator to load."""
    target = plain_valkey(shards)
    try:
        yield target.start(lambda _m: None)
    finally:
        target.stop()


def test_multiplexing_generator_keeps_requests_in_flight_and_its_incrs_land() -> None:
    spec = LoadSpec(clients=1, in_flight=64, requests=2000, keyspace=50)
    with _valkey() as endpoint:
        m = muxgen.run(ALL_WORKLOADS["incr-get"], spec, endpoint, "valkey", lambda _m: None)
        host, port = endpoint.first
        with redis.Redis(host=host, port=port) as r:
            incrs = sum(int(r.get(f"counter:{i:012d}") or 0) for i in range(50))
    assert m.requests == 2000 and m.errors == 0
    assert 0 < m.p50_ms <= m.p99_ms
    # Every request is an INCR (3 in 4) or a GET; the counters add up to the INCRs.
    assert 1200 <= incrs <= 1800


def test_glide_generator_spreads_requests_over_a_valkey_cluster() -> None:
    _needs_glide()
    spec = LoadSpec(clients=1, in_flight=20, requests=600, keyspace=60, value_size=8)
    with _valkey(shards=3) as endpoint:
        m = glidegen.run(ALL_WORKLOADS["set"], spec, endpoint, "valkey", lambda _m: None)
        sizes = []
        for address in endpoint.addresses:
            host, port = address.rsplit(":", 1)
            with redis.Redis(host=host, port=int(port)) as r:
                sizes.append(r.dbsize())
    assert m.requests == 600 and m.errors == 0
    assert m.generator.startswith("valkey-glide")
    assert all(sizes) and sum(sizes) <= 60, f"keys per node: {sizes}"
