"""A multi-process load generator: one uvloop process per core, raw RESP over asyncio protocols.

Used where valkey-benchmark/redis-benchmark is missing or cannot express the workload (the 80/20 mix,
duration-bounded runs, cluster mode). Commands are pre-encoded and replies parsed by hiredis, so a
process costs a few microseconds per request and the processes together are not the bottleneck.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hiredis

from engram.bench import child
from engram.bench.endpoint import Endpoint
from engram.bench.measurement import LatencyHistogram, Measurement
from engram.bench.workloads import LoadSpec, Workload, commands
from engram.cluster.slots import key_hash_slot

NAME = "engram-loadgen (Python, multi-process)"
LoadgenFailed = child.GeneratorFailed


@dataclass(frozen=True)
class _Plan:
    """What one generator process does."""

    index: int
    clients: int
    requests: int | None
    seconds: float | None
    workload: Workload
    spec: LoadSpec
    endpoint: Endpoint
    seed: int


class _Conn(asyncio.Protocol):
    """One client connection; `exchange` sends a pipelined batch and waits for all its replies."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.waiting = 0
        self.errors = 0
        self.error_sample: str | None = None
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if isinstance(reply, hiredis.ReplyError):
                self.errors += 1
                self.error_sample = self.error_sample or str(reply)
            self.waiting -= 1
        if self.waiting <= 0 and self.done is not None and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError(f"connection lost: {exc}"))

    async def exchange(self, payload: bytes, replies: int) -> None:
        assert self.transport is not None
        self.waiting = replies
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        await self.done


async def _connect(address: str) -> _Conn:
    host, port = address.rsplit(":", 1)
    _, conn = await asyncio.get_running_loop().create_connection(_Conn, host, int(port))
    return conn


async def _slot_owners(seed: str) -> dict[int, str]:
    """slot -> "host:port" of its primary, from CLUSTER SLOTS."""
    host, port = seed.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n")
        parser = hiredis.Reader()
        while (reply := parser.gets()) is False:
            data = await reader.read(65536)
            if not data:
                raise LoadgenFailed(f"{seed} closed the connection during CLUSTER SLOTS")
            parser.feed(data)
    finally:
        writer.close()
    if isinstance(reply, hiredis.ReplyError):
        raise LoadgenFailed(f"CLUSTER SLOTS at {seed} failed: {reply}")
    owners: dict[int, str] = {}
    for start, end, primary, *_ in reply:
        address = f"{primary[0].decode()}:{primary[1]}"
        for slot in range(start, end + 1):
            owners[slot] = address
    return owners


class _Commands:
    """Every key's GET and write, encoded once per process, and the node owning each key in cluster mode."""

    def __init__(self, workload: Workload, spec: LoadSpec, owners: dict[int, str] | None) -> None:
        self.sets, self.gets = commands(workload, spec)
        keys = [workload.key(i) for i in range(spec.keyspace)]
        self.owner = [owners[key_hash_slot(k)] for k in keys] if owners else None


class _Client:
    """One simulated client: its connection(s) and its request loop."""

    def __init__(self, plan: _Plan, rng: random.Random, commands: _Commands) -> None:
        self.plan = plan
        self.rng = rng
        self.commands = commands
        self.conns: dict[str, _Conn] = {}

    async def connect(self) -> None:
        owner = self.commands.owner
        addresses = set(owner) if owner else {self.plan.endpoint.addresses[0]}
        for address in sorted(addresses):
            self.conns[address] = await _connect(address)

    def _pick(self) -> int:
        """A command index: keys uniformly at random; GETs carry the keyspace size as offset."""
        rng, reads, n = self.rng.random, self.plan.workload.read_fraction, self.plan.spec.keyspace
        index = int(rng() * n)
        return index + n if reads >= 1.0 or (reads > 0.0 and rng() < reads) else index

    async def run(self, budget: list[int], deadline: float | None, hist: LatencyHistogram,
                  done: Callable[[int], None]) -> None:
        pipeline, n = self.plan.spec.pipeline, self.plan.spec.keyspace
        table = self.commands.sets + self.commands.gets
        owner = self.commands.owner
        single = next(iter(self.conns.values())) if owner is None else None
        perf, monotonic, record, pick = time.perf_counter_ns, time.monotonic, hist.record, self._pick
        first = True
        while True:
            if deadline is not None:
                # Each client's first batch goes out even on a machine too busy to start it in time.
                if monotonic() >= deadline and not first:
                    return
                first = False
                size = pipeline
            else:
                size = min(pipeline, budget[0])
                if size <= 0:
                    return
                budget[0] -= size
            picks = [pick() for _ in range(size)]
            if single is not None:
                payload = table[picks[0]] if size == 1 else b"".join([table[i] for i in picks])
                sent = perf()
                await single.exchange(payload, size)
            else:
                assert owner is not None
                groups: dict[str, list[bytes]] = {}
                for i in picks:
                    groups.setdefault(owner[i % n], []).append(table[i])
                sent = perf()
                conns = self.conns
                await asyncio.gather(*(conns[a].exchange(b"".join(c), len(c)) for a, c in groups.items()))
            record((perf() - sent) // 1000, size)
            done(size)

    @property
    def errors(self) -> int:
        return sum(c.errors for c in self.conns.values())

    @property
    def error_sample(self) -> str | None:
        return next((c.error_sample for c in self.conns.values() if c.error_sample), None)

    def close(self) -> None:
        for conn in self.conns.values():
            if conn.transport is not None:
                conn.transport.close()


async def _work(plan: _Plan, gate: child.Gate) -> dict[str, Any]:
    owners = await _slot_owners(plan.endpoint.addresses[0]) if plan.endpoint.cluster else None
    rng = random.Random(plan.seed)
    commands = _Commands(plan.workload, plan.spec, owners)
    clients = [_Client(plan, random.Random(rng.random()), commands) for _ in range(plan.clients)]
    await asyncio.gather(*(c.connect() for c in clients))
    await gate.opened()  # everyone connects first; the clock starts when every process is ready
    hist = LatencyHistogram()
    completed = [0]

    def done(n: int) -> None:
        completed[0] += n
        gate.count(completed[0])

    budget = [plan.requests or 0]
    began = time.monotonic()
    deadline = began + plan.seconds if plan.seconds is not None else None
    try:
        await asyncio.gather(*(c.run(budget, deadline, hist, done) for c in clients))
    finally:
        for c in clients:
            c.close()
    sample = next((c.error_sample for c in clients if c.error_sample), None)
    return child.result(hist, sum(c.errors for c in clients), began, time.monotonic(), sample)


def process_count(clients: int, wanted: int | None = None) -> int:
    """Generator processes: `wanted`, else one per core; never more than there are clients."""
    return max(1, min(wanted or os.cpu_count() or 1, clients))


def share(total: int, parts: int, index: int) -> int:
    """Part `index` of `total` split as evenly as possible into `parts`."""
    return total // parts + (1 if index < total % parts else 0)


def portion(spec: LoadSpec, parts: int, index: int) -> tuple[int, int | None]:
    """Process `index`'s clients and requests (None: bounded by time) out of `parts` processes."""
    requests = None if spec.requests is None else share(spec.requests, parts, index)
    return share(spec.clients, parts, index), requests


def limit(spec: LoadSpec) -> float:
    """Generous bound on a run: a stalled target must not hang the benchmark for ever."""
    return (spec.seconds or 0) + (spec.requests or 0) / 100 + 60


def run_children(
    workload: Workload,
    spec: LoadSpec,
    endpoint: Endpoint,
    target: str,
    progress: Callable[[str], None],
    seed: int = 0,
    processes: int | None = None,
) -> list[dict[str, Any]]:
    """The generator processes' own results (child.result), for callers that want more than run()'s
    Measurement (scripts/commit_breakdown.py: the mean latency, the measured span)."""
    n = process_count(spec.clients, processes)
    plans = [_Plan(i, *portion(spec, n, i), spec.seconds, workload, spec, endpoint, seed * 1000 + i)
             for i in range(n)]
    label = f"{target}/{workload.name}"
    return child.run(_work, plans, label, progress, goal=spec.requests, limit=limit(spec))


def run(
    workload: Workload,
    spec: LoadSpec,
    endpoint: Endpoint,
    target: str,
    progress: Callable[[str], None],
    seed: int = 0,
    processes: int | None = None,
) -> Measurement:
    """Run one workload on `processes` generator processes (default: one per core) sharing the clients."""
    results = run_children(workload, spec, endpoint, target, progress, seed, processes)
    return child.measurement(results, workload.name, target, NAME, progress)
