"""A load generator that is a real application: the valkey-glide client (PyPI `valkey-glide`), unchanged.

GLIDE multiplexes every request over one connection per node. Each of `spec.clients` GLIDE clients
(GlideClusterClient against a cluster, GlideClient against one server) runs `spec.in_flight` asyncio
tasks, each awaiting one request at a time, so that many requests are in flight per client. Every
request's latency is measured around its await. valkey-glide is optional: imported only here, in the
generator's own process, and checked for up front by `require()`.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engram.bench import child
from engram.bench.endpoint import Endpoint
from engram.bench.loadgen import limit, portion, process_count
from engram.bench.measurement import LatencyHistogram, Measurement
from engram.bench.workloads import LoadSpec, Workload

INSTALL_HINT = "pip install 'valkey-glide>=2.6,<2.7'"
# GLIDE's default (250 ms) is shorter than a reply may wait for a journal commit under load.
REQUEST_TIMEOUT_MS = 10_000


class GlideMissing(RuntimeError):
    """valkey-glide is not installed."""


def require() -> str:
    """The generator's name with GLIDE's version; GlideMissing with how to install it when absent."""
    if importlib.util.find_spec("glide") is None:
        raise GlideMissing(f"the glide generator needs the valkey-glide client: {INSTALL_HINT}")
    try:
        version = importlib.metadata.version("valkey-glide")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return f"valkey-glide {version} (Python asyncio)"


@dataclass(frozen=True)
class _Plan:
    """What one generator process does."""

    clients: int
    requests: int | None
    seconds: float | None
    workload: Workload
    spec: LoadSpec
    endpoint: Endpoint
    seed: int


async def _connect(endpoint: Endpoint, in_flight: int) -> Any:
    import glide

    seeds = [glide.NodeAddress(host, int(port))
             for host, port in (address.rsplit(":", 1) for address in endpoint.addresses)]
    limit = max(in_flight, 1000)  # GLIDE refuses requests past its in-flight limit (default 1000)
    if endpoint.cluster:
        cluster_config = glide.GlideClusterClientConfiguration(
            seeds, request_timeout=REQUEST_TIMEOUT_MS, inflight_requests_limit=limit)
        return await glide.GlideClusterClient.create(cluster_config)
    config = glide.GlideClientConfiguration(seeds, request_timeout=REQUEST_TIMEOUT_MS,
                                            inflight_requests_limit=limit)
    return await glide.GlideClient.create(config)


class _Stream:
    """One in-flight slot: awaits one request at a time until the budget or the deadline runs out."""

    def __init__(self, client: Any, plan: _Plan, keys: list[bytes], rng: random.Random) -> None:
        self.client = client
        self.plan = plan
        self.keys = keys
        self.rng = rng
        self.errors = 0
        self.error_sample: str | None = None

    async def run(self, budget: list[int], deadline: float | None, hist: LatencyHistogram,
                  done: Callable[[], None]) -> None:
        workload, keys = self.plan.workload, self.keys
        n = len(keys)
        value, incr = self.plan.spec.value, workload.write == "INCR"
        client, draw, reads = self.client, self.rng.random, workload.read_fraction
        perf, monotonic, record = time.perf_counter_ns, time.monotonic, hist.record
        first = True
        while True:
            if deadline is not None:
                if monotonic() >= deadline and not first:  # one request each, however late it starts
                    return
                first = False
            elif budget[0] <= 0:
                return
            else:
                budget[0] -= 1
            k = keys[int(draw() * n)]
            read = reads >= 1.0 or (reads > 0.0 and draw() < reads)
            sent = perf()
            try:
                if read:
                    await client.get(k)
                elif incr:
                    await client.incr(k)
                else:
                    await client.set(k, value)
            except Exception as exc:  # GLIDE raises RequestError and its kin for error replies
                self.errors += 1
                self.error_sample = self.error_sample or f"{exc.__class__.__name__}: {exc}"
            record((perf() - sent) // 1000)
            done()


async def _work(plan: _Plan, gate: child.Gate) -> dict[str, Any]:
    clients = [await _connect(plan.endpoint, plan.spec.in_flight) for _ in range(plan.clients)]
    seeds = random.Random(plan.seed)
    keys = [plan.workload.key(i) for i in range(plan.spec.keyspace)]
    streams = [_Stream(c, plan, keys, random.Random(seeds.random())) for c in clients
               for _ in range(plan.spec.in_flight)]
    hist = LatencyHistogram()
    completed = [0]

    def done() -> None:
        completed[0] += 1
        if completed[0] % 256 == 0:
            gate.count(completed[0])

    await gate.opened()
    began = time.monotonic()
    deadline = None if plan.seconds is None else began + plan.seconds
    budget = [plan.requests or 0]
    try:
        await asyncio.gather(*(s.run(budget, deadline, hist, done) for s in streams))
    finally:
        ended = time.monotonic()
        for c in clients:
            await c.close()
    sample = next((s.error_sample for s in streams if s.error_sample), None)
    return child.result(hist, sum(s.errors for s in streams), began, ended, sample)


def run(
    workload: Workload,
    spec: LoadSpec,
    endpoint: Endpoint,
    target: str,
    progress: Callable[[str], None],
    seed: int = 0,
    processes: int | None = None,
) -> Measurement:
    """`spec.clients` GLIDE clients with `spec.in_flight` requests each in flight (one process by default:
    GLIDE's own core runs on threads of its own)."""
    name = require()
    if spec.pipeline > 1:
        raise ValueError("the glide generator sends single requests (GLIDE multiplexes them): no --pipeline")
    procs = process_count(spec.clients, processes or 1)
    plans = [_Plan(*portion(spec, procs, i), spec.seconds, workload, spec, endpoint, seed * 1000 + i)
             for i in range(procs)]
    label = f"{target}/{workload.name}"
    results = child.run(_work, plans, label, progress, goal=spec.requests, limit=limit(spec),
                        use_uvloop=False)
    return child.measurement(results, workload.name, target, name, progress)
