"""A multiplexing load generator: each connection keeps N requests in flight, as valkey-glide does.

Unlike a pipeline (send a batch, wait for every reply), a new request goes out as soon as a reply frees
a slot, so the server always has N of the connection's requests queued. Every request's latency is
measured from the write that carried it to the read that brought its reply: requests sharing a write
and a read share one measurement, recorded once per request.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hiredis

from engram.bench import child
from engram.bench.endpoint import Endpoint
from engram.bench.loadgen import limit, portion, process_count
from engram.bench.measurement import LatencyHistogram, Measurement
from engram.bench.workloads import LoadSpec, Workload, commands

NAME = "engram-mux (Python, multiplexed connections)"


@dataclass(frozen=True)
class _Plan:
    """What one generator process does: `clients` connections, each with `in_flight` outstanding."""

    clients: int
    requests: int | None
    seconds: float | None
    workload: Workload
    spec: LoadSpec
    address: str
    seed: int


class _Budget:
    """Requests left to send, shared by one process's connections (None: until the deadline)."""

    def __init__(self, requests: int | None, deadline: float | None) -> None:
        self.left = requests
        self.deadline = deadline

    def take(self, wanted: int) -> int:
        if self.deadline is not None:
            return wanted if time.monotonic() < self.deadline else 0
        assert self.left is not None
        n = min(wanted, self.left)
        self.left -= n
        return n


class _MuxConn(asyncio.Protocol):
    """One connection: refills its window of outstanding requests from every read of replies."""

    def __init__(self, table: list[bytes], pick: Callable[[], int], hist: LatencyHistogram,
                 counted: Callable[[int], None]) -> None:
        self.table = table
        self.pick = pick
        self.hist = hist
        self.counted = counted
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        # (send time in ns, requests) per write still awaiting replies, oldest first: replies come in order.
        self.sent: deque[list[int]] = deque()
        self.outstanding = 0
        self.errors = 0
        self.error_sample: str | None = None
        self.budget: _Budget | None = None
        self.finished: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def start(self, window: int, budget: _Budget) -> asyncio.Future[None]:
        """Fill the window (even past a deadline on a machine too busy to start in time), then refill."""
        self.budget = budget
        self.finished = asyncio.get_running_loop().create_future()
        self._send(window if budget.deadline is not None else budget.take(window))
        if self.outstanding == 0:
            self.finished.set_result(None)
        return self.finished

    def _send(self, n: int) -> None:
        if n <= 0:
            return
        assert self.transport is not None
        table, pick = self.table, self.pick
        payload = table[pick()] if n == 1 else b"".join([table[pick()] for _ in range(n)])
        self.sent.append([time.perf_counter_ns(), n])
        self.outstanding += n
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        replies = 0
        while (reply := reader.gets()) is not False:
            replies += 1
            if isinstance(reply, hiredis.ReplyError):
                self.errors += 1
                self.error_sample = self.error_sample or str(reply)
        if not replies:
            return
        now = time.perf_counter_ns()
        left = replies
        sent, record = self.sent, self.hist.record
        while left:
            batch = sent[0]
            n = min(batch[1], left)
            record((now - batch[0]) // 1000, n)
            left -= n
            batch[1] -= n
            if batch[1] == 0:
                sent.popleft()
        self.outstanding -= replies
        self.counted(replies)
        assert self.budget is not None
        self._send(self.budget.take(replies))
        if self.outstanding == 0 and self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.finished is not None and not self.finished.done():
            self.finished.set_exception(ConnectionError(f"connection lost: {exc}"))


async def _work(plan: _Plan, gate: child.Gate) -> dict[str, Any]:
    writes, reads = commands(plan.workload, plan.spec)
    table = writes + reads
    n, reads_fraction = plan.spec.keyspace, plan.workload.read_fraction
    hist = LatencyHistogram()
    completed = [0]

    def counted(replies: int) -> None:
        completed[0] += replies
        gate.count(completed[0])

    def picker(rng: random.Random) -> Callable[[], int]:
        draw = rng.random

        def pick() -> int:  # a key uniformly at random; reads are the table's second half
            index = int(draw() * n)
            return index + n if reads_fraction > 0.0 and draw() < reads_fraction else index

        return pick

    seeds = random.Random(plan.seed)
    host, port = plan.address.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    conns: list[_MuxConn] = []
    for _ in range(plan.clients):
        rng = random.Random(seeds.random())
        _, conn = await loop.create_connection(lambda r=rng: _MuxConn(table, picker(r), hist, counted),
                                               host, int(port))
        conns.append(conn)
    await gate.opened()
    began = time.monotonic()
    budget = _Budget(plan.requests, None if plan.seconds is None else began + plan.seconds)
    try:
        await asyncio.gather(*(c.start(plan.spec.in_flight, budget) for c in conns))
    finally:
        for c in conns:
            if c.transport is not None:
                c.transport.close()
    sample = next((c.error_sample for c in conns if c.error_sample), None)
    return child.result(hist, sum(c.errors for c in conns), began, time.monotonic(), sample)


def run(
    workload: Workload,
    spec: LoadSpec,
    endpoint: Endpoint,
    target: str,
    progress: Callable[[str], None],
    seed: int = 0,
    processes: int | None = None,
) -> Measurement:
    """`spec.clients` connections with `spec.in_flight` requests each in flight, over a few processes."""
    if endpoint.cluster:
        raise ValueError("the multiplexing generator talks to one server; for a cluster, --generator glide")
    procs = process_count(spec.clients, processes)
    address = endpoint.addresses[0]
    plans = [_Plan(*portion(spec, procs, i), spec.seconds, workload, spec, address, seed * 1000 + i)
             for i in range(procs)]
    label = f"{target}/{workload.name}"
    results = child.run(_work, plans, label, progress, goal=spec.requests, limit=limit(spec))
    return child.measurement(results, workload.name, target, NAME, progress)
