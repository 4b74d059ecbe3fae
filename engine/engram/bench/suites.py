"""The rows a benchmark run measures: one workload under one load shape, on targets of one shard count.

`engram bench` without `--suite` measures each named workload with the options given; a suite is a
fixed list of rows, each with its own load shape, reported in one table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from engram.bench.workloads import WORKLOADS, LoadSpec, Workload

# Which generator runs a row; None: the run's --generator.
GLIDE = "glide"


@dataclass(frozen=True)
class Case:
    """One row of the report: `workload` (named after the row) under `spec`, against `shards` shards."""

    workload: Workload
    spec: LoadSpec
    shards: int = 1
    generator: str | None = None

    @property
    def name(self) -> str:
        return self.workload.name

    def describe(self) -> str:
        via = ", valkey-glide client" if self.generator == GLIDE else ""
        where = f", {self.shards} shards" if self.shards > 1 else ""
        return f"{self.workload.description}, {self.spec.shape()}{via}{where}"


def _row(name: str, workload: str, base: LoadSpec, *, clients: int, pipeline: int = 1, in_flight: int = 1,
         shards: int = 1, generator: str | None = None) -> Case:
    spec = replace(base, clients=clients, pipeline=pipeline, in_flight=in_flight)
    return Case(replace(WORKLOADS[workload], name=name), spec, shards, generator)


def datapath(base: LoadSpec) -> list[Case]:
    """Issue 12's data-path rows: request/reply, many clients, pipelines, a multiplexed connection, GLIDE."""
    return [
        _row("set-c50", "set", base, clients=50),
        _row("get-c50", "get", base, clients=50),
        _row("set-c256", "set", base, clients=256),
        _row("set-c4-p16", "set", base, clients=4, pipeline=16),
        _row("get-c4-p16", "get", base, clients=4, pipeline=16),
        _row("incr-get-mux1000", "incr-get", base, clients=1, in_flight=1000),
        _row("glide-set", "set", base, clients=1, in_flight=500, shards=3, generator=GLIDE),
        _row("glide-get", "get", base, clients=1, in_flight=500, shards=3, generator=GLIDE),
    ]


SUITES: dict[str, Callable[[LoadSpec], list[Case]]] = {"datapath": datapath}
# A suite's rows run this long each unless --seconds or --requests says otherwise.
SUITE_SECONDS = 3.0


def single(workloads: tuple[str, ...], spec: LoadSpec, shards: int) -> list[Case]:
    """The rows of a run without a suite: each named workload under the same options."""
    return [Case(WORKLOADS[w], spec, shards) for w in workloads]
