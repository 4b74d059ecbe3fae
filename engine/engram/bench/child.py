"""Run a load generator in child processes: they connect, start together, count, and report histograms.

A generator is an async function `work(plan, gate) -> dict` at module level (children are spawned, so it
is found by name): it connects, awaits `gate.opened()` so every process starts the clock together, calls
`gate.count(total)` as requests complete, and returns `result(...)`. The parent shows progress on
stderr and merges the histograms into one Measurement: percentiles from per-request latencies.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engram.bench.measurement import LatencyHistogram, Measurement

START_TIMEOUT = 60.0
_PROGRESS_EVERY = 1.0


class GeneratorFailed(RuntimeError):
    """A generator process could not connect, crashed, or did not finish in time."""


@dataclass(frozen=True)
class Gate:
    """A child's view of the shared start signal and progress counters."""

    index: int
    start: Any  # multiprocessing Event
    counters: Any  # shared array of completed requests, one slot per child
    ready: Any  # shared array: 1 once the child is connected

    async def opened(self) -> None:
        """Say this child is connected; wait until every child is and the parent opens the gate."""
        self.ready[self.index] = 1
        if not await asyncio.to_thread(self.start.wait, START_TIMEOUT):
            raise GeneratorFailed(f"the start signal did not come within {START_TIMEOUT:g}s")

    def count(self, total: int) -> None:
        self.counters[self.index] = total


Work = Callable[[Any, Gate], Awaitable[dict[str, Any]]]


def result(hist: LatencyHistogram, errors: int, began: float, ended: float,
           error_sample: str | None = None) -> dict[str, Any]:
    """What a child returns: picklable, small (the histogram is a dict of buckets)."""
    return {"counts": dict(hist.counts), "errors": errors, "began": began, "ended": ended,
            "error_sample": error_sample}


def _child(work: Work, plan: Any, gate: Gate, results: Any, use_uvloop: bool) -> None:
    """Entry point of a generator process."""
    try:
        if use_uvloop:
            import uvloop

            outcome = uvloop.run(work(plan, gate))
        else:
            outcome = asyncio.run(work(plan, gate))
    except BaseException as exc:  # report, never hang the parent
        outcome = {"error": f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc(limit=3)}"}
    results.put((gate.index, outcome))


def run(work: Work, plans: Sequence[Any], label: str, progress: Callable[[str], None], *,
        goal: int | None, limit: float, use_uvloop: bool = True) -> list[dict[str, Any]]:
    """Run `work(plan, gate)` in one spawned process per plan; the children's results, in plan order.

    `goal` (a request count, or None for a duration) is for progress; `limit` bounds the whole run so a
    stalled target cannot hang the benchmark."""
    ctx = multiprocessing.get_context("spawn")  # no inherited event loops, sockets or client threads
    start, results = ctx.Event(), ctx.Queue()
    counters, ready = ctx.Array("q", len(plans), lock=False), ctx.Array("b", len(plans), lock=False)
    gates = [Gate(i, start, counters, ready) for i in range(len(plans))]
    procs = [ctx.Process(target=_child, args=(work, plan, gate, results, use_uvloop), daemon=True)
             for plan, gate in zip(plans, gates, strict=True)]
    for p in procs:
        p.start()
    try:
        _open(procs, start, ready, results, label, progress)
        got = _collect(procs, results, counters, label, progress, goal, limit)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(5)
    failures = [r["error"] for r in got.values() if "error" in r]
    if failures:
        raise GeneratorFailed(f"{label}: {failures[0]}")
    return [got[i] for i in range(len(plans))]


def _open(procs: list[Any], start: Any, ready: Any, results: Any, label: str,
          progress: Callable[[str], None]) -> None:
    """Start the clock once every child has connected: no child measures while others still connect."""
    began = time.monotonic()
    while sum(ready) < len(procs):
        if not results.empty() or not all(p.is_alive() for p in procs):
            break  # a child failed before it was ready: _collect reports why
        if time.monotonic() - began >= START_TIMEOUT:
            raise GeneratorFailed(f"{label}: generator processes did not connect within {START_TIMEOUT:g}s")
        time.sleep(0.01)
    progress(f"{label}: {len(procs)} generator process{'es' * (len(procs) > 1)} connected in "
             f"{time.monotonic() - began:.1f}s; measuring")
    start.set()


def _collect(procs: list[Any], results: Any, counters: Any, label: str,
             progress: Callable[[str], None], goal: int | None, limit: float) -> dict[int, dict[str, Any]]:
    deadline = time.monotonic() + limit
    got: dict[int, dict[str, Any]] = {}
    last_total, last_at = 0, time.monotonic()
    while len(got) < len(procs):
        try:
            index, outcome = results.get(timeout=_PROGRESS_EVERY)
            got[index] = outcome
            if "error" in outcome:
                break
        except queue.Empty:
            pass
        now = time.monotonic()
        if now >= deadline:
            raise GeneratorFailed(f"{label}: generator processes did not finish within "
                                  f"{START_TIMEOUT + limit:.0f}s")
        if now - last_at >= _PROGRESS_EVERY:
            total = sum(counters)
            of = f" of {goal}" if goal else ""
            rate = (total - last_total) / (now - last_at)
            progress(f"{label}: {total}{of} requests, {rate:,.0f} req/s now")
            last_total, last_at = total, now
        if not any(p.is_alive() for p in procs) and results.empty() and len(got) < len(procs):
            raise GeneratorFailed(f"{label}: a generator process died without reporting")
    return got


def measurement(results: Sequence[dict[str, Any]], workload: str, target: str, generator: str,
                progress: Callable[[str], None] | None = None) -> Measurement:
    """The children's histograms merged; throughput over the span from the first start to the last end."""
    hist = LatencyHistogram()
    for r in results:
        hist.merge({int(k): v for k, v in r["counts"].items()})
    seconds = max(r["ended"] for r in results) - min(r["began"] for r in results)
    errors = sum(r["errors"] for r in results)
    sample = next((r["error_sample"] for r in results if r.get("error_sample")), None)
    if sample and progress is not None:
        progress(f"{target}/{workload}: {errors} error replies, e.g. {sample}")
    return Measurement.from_histogram(workload, target, generator, hist, errors, seconds)
