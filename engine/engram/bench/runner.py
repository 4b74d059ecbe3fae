"""One benchmark run: start each target in turn, fill it, run every workload, stop it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import redis
import redis.cluster

from engram.bench import external, loadgen
from engram.bench.measurement import Measurement
from engram.bench.report import BenchReport, TargetInfo
from engram.bench.targets import Endpoint, EngramTarget, Target, plain_valkey, valkey_aof
from engram.bench.workloads import WORKLOADS, LoadSpec, Workload, key

Progress = Callable[[str], None]
TARGETS = ("valkey", "valkey-aof", "engram")
GENERATORS = ("auto", "tool", "python")
_POPULATE_CHUNK = 1000


@dataclass
class BenchConfig:
    """What `engram bench` was asked to do."""

    spec: LoadSpec = field(default_factory=LoadSpec)
    workloads: tuple[str, ...] = ("set", "get", "mixed")
    targets: tuple[str, ...] = TARGETS
    shards: int = 1
    replicas: int = 2
    # auto: valkey-benchmark/redis-benchmark where it can run the workload, else the Python generator.
    generator: str = "auto"
    # An existing Engram cluster to measure instead of starting one.
    engram_endpoint: str | None = None
    seed: int = 0
    # Python generator processes (default: one per core).
    processes: int | None = None

    def __post_init__(self) -> None:
        unknown = [w for w in self.workloads if w not in WORKLOADS]
        unknown += [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise ValueError(f"unknown workload or target {unknown[0]!r}; workloads: {', '.join(WORKLOADS)}, "
                             f"targets: {', '.join(TARGETS)}")
        if self.generator not in GENERATORS:
            raise ValueError(f"generator must be one of {', '.join(GENERATORS)}, got {self.generator!r}")
        if self.shards < 1:
            raise ValueError(f"shards must be at least 1, got {self.shards}")


def make_target(name: str, config: BenchConfig) -> Target:
    if name == "valkey":
        return plain_valkey(config.shards)
    if name == "valkey-aof":
        return valkey_aof(config.shards)
    return EngramTarget(shards=config.shards, replicas=config.replicas, endpoint=config.engram_endpoint)


def populate(endpoint: Endpoint, spec: LoadSpec, progress: Progress, label: str) -> None:
    """SET every key of the keyspace, pipelined, so GETs find values."""
    host, port = endpoint.first
    client: redis.Redis | redis.cluster.RedisCluster
    if endpoint.cluster:
        client = redis.cluster.RedisCluster(host=host, port=port, socket_timeout=30)
    else:
        client = redis.Redis(host=host, port=port, socket_timeout=30)
    started = time.monotonic()
    value = spec.value
    try:
        for first in range(0, spec.keyspace, _POPULATE_CHUNK):
            pipe = client.pipeline(transaction=False)
            for index in range(first, min(first + _POPULATE_CHUNK, spec.keyspace)):
                pipe.set(key(index), value)
            pipe.execute()
    finally:
        client.close()
    progress(f"{label}: {spec.keyspace} keys of {spec.value_size} bytes written in "
             f"{time.monotonic() - started:.1f}s")


class Bench:
    """Chooses the generator per workload and collects the measurements into a report."""

    def __init__(self, config: BenchConfig, progress: Progress) -> None:
        self.config = config
        self.progress = progress
        self.tool = external.find_tool() if config.generator != "python" else None
        if config.generator == "tool" and self.tool is None:
            raise ValueError(f"--generator tool needs one of {', '.join(external.TOOLS)} on PATH")
        config_doc = asdict(config)
        config_doc["spec"] = asdict(config.spec)
        processes = loadgen.process_count(config.spec.clients, config.processes)
        config_doc["python_generator_processes"] = processes
        self.report = BenchReport(config=config_doc)

    def run(self) -> BenchReport:
        for name in self.config.targets:
            target = make_target(name, self.config)
            self.progress(f"{name}: starting ({target.description})")
            try:
                endpoint = target.start(self.progress)
                self.report.targets.append(TargetInfo(name, target.description, endpoint.note))
                self._run_target(name, endpoint)
            finally:
                target.stop()
                self.progress(f"{name}: stopped")
        return self.report

    def _run_target(self, name: str, endpoint: Endpoint) -> None:
        workloads = [WORKLOADS[w] for w in self.config.workloads]
        if any(w.needs_data for w in workloads):
            populate(endpoint, self.config.spec, self.progress, name)
        for workload in workloads:
            self.progress(f"{name}/{workload.name}: {workload.description}, {self.config.spec.bound()}, "
                          f"{self.config.spec.clients} clients, pipeline {self.config.spec.pipeline}")
            m = self._measure(name, workload, endpoint)
            self.report.measurements.append(m)
            self.progress(f"{name}/{workload.name}: {m.throughput:,.0f} req/s, p50 {m.p50_ms:.3f} ms, "
                          f"p99 {m.p99_ms:.3f} ms, p999 {m.p999_ms:.3f} ms ({m.generator})")

    def _measure(self, name: str, workload: Workload, endpoint: Endpoint) -> Measurement:
        spec = self.config.spec
        why_not = external.unsupported(workload, spec, endpoint) if self.tool else None
        if self.tool and why_not is None:
            return external.run(self.tool, workload, spec, endpoint, name, self.progress)
        if self.config.generator == "tool":
            raise ValueError(f"--generator tool cannot run {workload.name} here: {why_not}")
        if why_not:
            note = f"{workload.name}: Python generator because {why_not}"
        else:
            tools = " or ".join(external.TOOLS)
            note = f"{workload.name}: Python generator ({tools} not on PATH, or --generator python)"
        if note not in self.report.generator_notes:
            self.report.generator_notes.append(note)
        config = self.config
        return loadgen.run(workload, spec, endpoint, name, self.progress, config.seed, config.processes)
