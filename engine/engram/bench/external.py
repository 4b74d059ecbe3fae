"""Drive valkey-benchmark (or redis-benchmark) and read its latency distribution."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from engram.bench.endpoint import Endpoint
from engram.bench.measurement import Measurement
from engram.bench.workloads import LoadSpec, Workload

TOOLS = ("valkey-benchmark", "redis-benchmark")
# "99.902% <= 49.407 milliseconds (cumulative count 19981)": both distributions the tool prints.
_POINT = re.compile(r"([\d.]+)% <= ([\d.]+) milliseconds \(cumulative count (\d+)\)")
_THROUGHPUT = re.compile(r"throughput summary: ([\d.]+) requests per second")
_PROGRESS = re.compile(r"^\s*(\S+): rps=([\d.]+) \(overall: ([\d.na-]+)\)")
_PROGRESS_EVERY = 1.0


class ToolFailed(RuntimeError):
    """The benchmark tool exited with an error or printed nothing we can read."""


def find_tool() -> str | None:
    """valkey-benchmark or redis-benchmark on PATH, else None."""
    for name in TOOLS:
        found = shutil.which(name)
        if found:
            return found
    return None


def unsupported(workload: Workload, spec: LoadSpec, endpoint: Endpoint) -> str | None:
    """Why the tool cannot run this workload faithfully, or None when it can."""
    if workload.read_fraction not in (0.0, 1.0):
        return "the tool runs one command per test, so a GET/SET mix needs the Python generator"
    if workload.write != "SET":
        return f"the tool's {workload.write} test does not share keys with pre-population"
    if spec.in_flight > 1:
        return "the tool pipelines batches; it cannot keep requests in flight on a multiplexed connection"
    if spec.seconds is not None:
        return "the tool is bounded by a request count, not a duration"
    if endpoint.cluster:
        return "in cluster mode the tool's keys carry per-node hash tags that pre-population cannot match"
    return None


@dataclass(frozen=True)
class Distribution:
    """The (latency ms, cumulative count) points the tool printed, and how many requests completed."""

    points: tuple[tuple[float, int], ...]
    total: int

    def quantile(self, q: float) -> float:
        rank = max(1, math.ceil(q * self.total))
        for latency, count in self.points:
            if count >= rank:
                return latency
        return self.points[-1][0] if self.points else math.nan


def parse(output: str) -> tuple[float, Distribution]:
    """Throughput and latency distribution from the tool's full (not --csv, not -q) output."""
    throughput = _THROUGHPUT.search(output)
    points = sorted({(float(ms), int(count)) for _, ms, count in _POINT.findall(output)})
    if throughput is None or not points:
        raise ToolFailed(f"no throughput or latency distribution in the tool's output: {output[-800:]}")
    return float(throughput[1]), Distribution(tuple(points), max(c for _, c in points))


def run(
    tool: str,
    workload: Workload,
    spec: LoadSpec,
    endpoint: Endpoint,
    target: str,
    progress: Callable[[str], None],
) -> Measurement:
    """Run one workload; the tool's live `rps=` lines become progress messages."""
    assert spec.requests is not None and workload.read_fraction in (0.0, 1.0)
    host, port = endpoint.first
    argv = [
        tool, "-h", host, "-p", str(port), "-c", str(spec.clients), "-n", str(spec.requests),
        "-d", str(spec.value_size), "-r", str(spec.keyspace), "-P", str(spec.pipeline),
        "-t", "get" if workload.read_fraction else "set", "--precision", "3",
    ]
    started = time.monotonic()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        output, errors = _follow(proc.stdout, f"{target}/{workload.name}", progress)
        code = proc.wait()
    if code != 0:
        raise ToolFailed(f"{' '.join(argv)} exited with {code}: {output[-800:]}")
    throughput, dist = parse(output)
    seconds = dist.total / throughput if throughput else time.monotonic() - started
    return Measurement(
        workload=workload.name,
        target=target,
        generator=tool.rsplit("/", 1)[-1],
        requests=dist.total,
        errors=errors,
        seconds=seconds,
        throughput=throughput,
        p50_ms=dist.quantile(0.50),
        p99_ms=dist.quantile(0.99),
        p999_ms=dist.quantile(0.999),
    )


def _follow(stream: object, label: str, progress: Callable[[str], None]) -> tuple[str, int]:
    """Read the tool's output to the end; it redraws its progress line with carriage returns."""
    kept: list[str] = []
    errors = 0
    last = 0.0
    pending = b""
    while chunk := stream.read1(65536):  # type: ignore[attr-defined]
        pending += chunk
        *lines, pending = re.split(rb"[\r\n]", pending)
        for raw in lines:
            line = raw.decode(errors="replace")
            match = _PROGRESS.match(line)
            if match:
                now = time.monotonic()
                if now - last >= _PROGRESS_EVERY and float(match[2]) > 0:
                    last = now
                    progress(f"{label}: {float(match[2]):,.0f} req/s now, {match[3]} overall")
                continue
            if line.startswith("Error from server"):
                errors += 1
            kept.append(line)
    kept.append(pending.decode(errors="replace"))
    return "\n".join(kept), errors
