"""One benchmark run: for each shard count, start each target in turn, fill it, run its rows, stop it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import redis
import redis.cluster

from engram.bench import external, glidegen, loadgen, muxgen
from engram.bench.measurement import Measurement
from engram.bench.report import BenchReport, TargetInfo
from engram.bench.suites import GLIDE, SUITES, Case, single
from engram.bench.targets import Endpoint, EngramTarget, Target, plain_valkey, valkey_aof
from engram.bench.workloads import DEFAULT_WORKLOADS, WORKLOADS, LoadSpec, key
from engram.journal.servers import sync_interval_problem

Progress = Callable[[str], None]
TARGETS = ("valkey", "valkey-aof", "engram")
# engram-tls: an Engram cluster with a locked journal (TLS and passwords), asked for by name.
ALL_TARGETS = (*TARGETS, "engram-tls")
# auto: valkey-benchmark/redis-benchmark where it can run the row, else the Python generators
# (loadgen, or muxgen for requests in flight); python: never the tool; glide: the valkey-glide client.
GENERATORS = ("auto", "tool", "python", GLIDE)
_POPULATE_CHUNK = 1000


@dataclass
class BenchConfig:
    """What `engram bench` was asked to do."""

    spec: LoadSpec = field(default_factory=LoadSpec)
    workloads: tuple[str, ...] = DEFAULT_WORKLOADS
    targets: tuple[str, ...] = TARGETS
    shards: int = 1
    replicas: int = 2
    # The Engram target's journal fsync (docs/durability.md): "always" or a duration.
    journal_sync: str = "always"
    # auto: valkey-benchmark/redis-benchmark where it can run the workload, else the Python generator.
    generator: str = "auto"
    # An existing Engram cluster to measure instead of starting one.
    engram_endpoint: str | None = None
    seed: int = 0
    # Python generator processes (default: one per core).
    processes: int | None = None
    # A fixed list of rows (suites.SUITES) instead of `workloads` under `spec`; spec still gives the
    # value size, keyspace and bound.
    suite: str | None = None

    def __post_init__(self) -> None:
        if problem := sync_interval_problem(self.journal_sync):
            raise ValueError(f"--journal-sync: {problem}")
        unknown = [w for w in self.workloads if w not in WORKLOADS]
        unknown += [t for t in self.targets if t not in ALL_TARGETS]
        if unknown:
            raise ValueError(f"unknown workload or target {unknown[0]!r}; workloads: {', '.join(WORKLOADS)}, "
                             f"targets: {', '.join(ALL_TARGETS)}")
        if self.generator not in GENERATORS:
            raise ValueError(f"generator must be one of {', '.join(GENERATORS)}, got {self.generator!r}")
        if self.shards < 1:
            raise ValueError(f"shards must be at least 1, got {self.shards}")
        if self.suite is not None:
            if self.suite not in SUITES:
                raise ValueError(f"unknown suite {self.suite!r}; suites: {', '.join(SUITES)}")
            if self.engram_endpoint:
                raise ValueError("a suite starts its own targets of each shard count; it takes no endpoint")

    def cases(self) -> list[Case]:
        """The rows to measure, in report order."""
        if self.suite is not None:
            return SUITES[self.suite](self.spec)
        return single(self.workloads, self.spec, self.shards)


def make_target(name: str, config: BenchConfig, shards: int | None = None) -> Target:
    shards = config.shards if shards is None else shards
    if name == "valkey":
        return plain_valkey(shards)
    if name == "valkey-aof":
        return valkey_aof(shards)
    tls = name == "engram-tls"
    target = EngramTarget(shards=shards, replicas=config.replicas, endpoint=config.engram_endpoint,
                          journal_sync=config.journal_sync, tls=tls, name=name)
    if tls:
        target.description += ", journal locked (TLS and passwords on every journal link; clients plain)"
    if config.journal_sync != "always":
        target.description += f" (journal fsync every {config.journal_sync}, not before each ack)"
    return target


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
    """Chooses the generator per row and collects the measurements into a report."""

    def __init__(self, config: BenchConfig, progress: Progress) -> None:
        self.config = config
        self.progress = progress
        self.cases = config.cases()
        self.tool = external.find_tool() if config.generator not in ("python", GLIDE) else None
        if config.generator == "tool" and self.tool is None:
            raise ValueError(f"--generator tool needs one of {', '.join(external.TOOLS)} on PATH")
        if any(self._generator(c) == GLIDE for c in self.cases):
            glidegen.require()  # fail before any target starts
        config_doc = asdict(config)
        config_doc["spec"] = asdict(config.spec)
        processes = loadgen.process_count(config.spec.clients, config.processes)
        config_doc["python_generator_processes"] = processes
        cases = [{"name": c.name, "description": c.describe(), "shards": c.shards, "spec": asdict(c.spec)}
                 for c in self.cases]
        self.report = BenchReport(config=config_doc, cases=cases)
        self._notes: dict[str, list[str]] = {}

    def _generator(self, case: Case) -> str:
        return case.generator or self.config.generator

    def run(self) -> BenchReport:
        for shards in dict.fromkeys(c.shards for c in self.cases):
            cases = [c for c in self.cases if c.shards == shards]
            for name in self.config.targets:
                target = make_target(name, self.config, shards)
                self.progress(f"{name}: starting ({target.description}, {shards} shard{'s' * (shards > 1)})")
                try:
                    endpoint = target.start(self.progress)
                    self.report.targets.append(TargetInfo(name, target.description, endpoint.note, shards))
                    self._run_target(name, endpoint, cases)
                finally:
                    target.stop()
                    self.progress(f"{name}: stopped")
        return self.report

    def _run_target(self, name: str, endpoint: Endpoint, cases: list[Case]) -> None:
        fills = dict.fromkeys((c.spec.keyspace, c.spec.value_size) for c in cases if c.workload.needs_data)
        for keyspace, value_size in fills:
            populate(endpoint, LoadSpec(keyspace=keyspace, value_size=value_size), self.progress, name)
        for case in cases:
            self.progress(f"{name}/{case.name}: {case.describe()}, {case.spec.bound()}")
            m = self._measure(name, case, endpoint)
            self.report.measurements.append(m)
            self.progress(f"{name}/{case.name}: {m.throughput:,.0f} req/s, p50 {m.p50_ms:.3f} ms, "
                          f"p99 {m.p99_ms:.3f} ms, p999 {m.p999_ms:.3f} ms ({m.generator})")

    def _note(self, case: Case, why: str) -> None:
        """Say once per reason which rows ran on which generator and why."""
        rows = self._notes.setdefault(why, [])
        if case.name not in rows:
            rows.append(case.name)
        self.report.generator_notes[:] = [f"{', '.join(r)}: {w}" for w, r in self._notes.items()]

    def _measure(self, name: str, case: Case, endpoint: Endpoint) -> Measurement:
        workload, spec, generator = case.workload, case.spec, self._generator(case)
        config = self.config
        if generator == GLIDE:
            return glidegen.run(workload, spec, endpoint, name, self.progress, config.seed)
        if spec.in_flight > 1:
            if generator == "tool":
                raise ValueError(f"--generator tool cannot run {case.name}: it pipelines batches, it cannot "
                                 "keep requests in flight")
            self._note(case, "multiplexing Python generator (requests kept in flight, each sent as a reply "
                             "arrives, as valkey-glide does)")
            return muxgen.run(workload, spec, endpoint, name, self.progress, config.seed, config.processes)
        why_not = external.unsupported(workload, spec, endpoint) if self.tool else None
        if self.tool and why_not is None:
            return external.run(self.tool, workload, spec, endpoint, name, self.progress)
        if generator == "tool":
            raise ValueError(f"--generator tool cannot run {case.name} here: {why_not}")
        if why_not:
            self._note(case, f"Python generator because {why_not}")
        else:
            tools = " or ".join(external.TOOLS)
            self._note(case, f"Python generator ({tools} not on PATH, or --generator python)")
        return loadgen.run(workload, spec, endpoint, name, self.progress, config.seed, config.processes)
