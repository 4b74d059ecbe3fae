"""Where a durable write's milliseconds go, and whose CPU the machine spends meanwhile.

Starts plain Valkey and an Engram local cluster as `engram bench` does (3 journal servers with
`sync_interval: always`, 2 replicas), runs SET rows on the Python load generator, and prints per row:
- the client's view: throughput, mean, p50 and p99 latency;
- the module's commit wait (ENGRAM.INFO: from a batch blocking to the ack that releases it);
- the primary node's commit stages (ENGRAM.METRICS on its control port: batch, append, settle,
  per journal entry) and the writes an entry carried;
- the CPU each process used during the row, in cores (the machine has os.cpu_count()).

    .venv/bin/python scripts/commit_breakdown.py [--clients 50,256] [--seconds 4] [--replicas 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from engram.bench import loadgen
from engram.bench.endpoint import Endpoint
from engram.bench.measurement import LatencyHistogram
from engram.bench.targets import EngramTarget, plain_valkey
from engram.bench.workloads import WORKLOADS, LoadSpec
from engram.metrics import COMMIT_STAGES
from engram.node.gauges import commit_waits
from engram.platforms.local import cluster

TICKS = os.sysconf("SC_CLK_TCK")
Buckets = list[tuple[float, float]]  # (upper bound in seconds, cumulative count)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def runqueue_seconds(pid: int) -> float:
    """Seconds the process's threads have waited for a CPU while runnable (schedstat); 0 once gone."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError):
                continue
    except OSError:
        return 0.0
    return total / 1e9


def children(parent: int, name: str | None = None) -> list[int]:
    """Live processes whose parent is `parent` (named `name`, when given)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        comm, rest = text.split(" (", 1)[1].rsplit(")", 1)
        if int(rest.split()[1]) == parent and (name is None or comm == name):
            found.append(int(entry.name))
    return found


def machine_busy() -> tuple[float, float]:
    """CPU seconds the machine's cores have spent busy (not idle, not waiting on I/O), and stolen
    by the hypervisor for other machines."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return (sum(values[:7]) - values[3] - values[4]) / TICKS, values[7] / TICKS


def reaped_children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def quantile(buckets: Buckets, q: float) -> float:
    """A quantile from cumulative buckets, interpolated inside its bucket as Prometheus does."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


def delta_buckets(after: Buckets, before: Buckets) -> Buckets:
    old = dict(before)
    return [(bound, count - old.get(bound, 0.0)) for bound, count in after]


@dataclass
class Histogram:
    """A histogram's change over a row: observations, seconds and buckets."""

    count: float = 0.0
    total: float = 0.0
    buckets: Buckets = field(default_factory=list)

    def mean_ms(self) -> float:
        return self.total / self.count * 1000 if self.count else float("nan")

    def quantile_ms(self, q: float) -> float:
        return quantile(self.buckets, q) * 1000

    def minus(self, before: Histogram) -> Histogram:
        return Histogram(self.count - before.count, self.total - before.total,
                         delta_buckets(self.buckets, before.buckets))


def node_histograms(page: str) -> dict[str, Histogram]:
    """The node's commit stage and path histograms from its Prometheus page, by stage ("path": the sum)."""
    out: dict[str, Histogram] = {}
    for family in text_string_to_metric_families(page):
        if family.name not in ("engram_commit_stage_seconds", "engram_commit_path_seconds"):
            continue
        for sample in family.samples:
            stage = sample.labels.get("stage", "path")
            h = out.setdefault(stage, Histogram())
            if sample.name.endswith("_count"):
                h.count = sample.value
            elif sample.name.endswith("_sum"):
                h.total = sample.value
            elif sample.name.endswith("_bucket"):
                h.buckets.append((float(sample.labels["le"]), sample.value))
    return out


def module_histogram(info: bytes) -> Histogram:
    sampled = commit_waits(info)
    if sampled is None:
        return Histogram()
    buckets = [(float("inf") if le == "+Inf" else float(le), count) for le, count in sampled[0]]
    return Histogram(buckets[-1][1], sampled[1], buckets)


@dataclass
class Watched:
    """The processes of one target, by group, and how to read its commit figures."""

    address: str  # where the load generator connects
    groups: dict[str, list[int]]
    control: tuple[str, int] | None = None  # the primary node's control port
    valkey: tuple[str, int] | None = None  # the primary's Valkey

    def cpu(self) -> dict[str, float]:
        return {g: sum(cpu_seconds(p) for p in pids) for g, pids in self.groups.items()}

    def runqueue(self) -> dict[str, float]:
        return {g: sum(runqueue_seconds(p) for p in pids) for g, pids in self.groups.items()}

    def figures(self) -> tuple[dict[str, Histogram], Histogram]:
        if self.control is None or self.valkey is None:
            return {}, Histogram()
        with redis.Redis(*self.control) as control, redis.Redis(*self.valkey) as valkey:
            return node_histograms(control.execute_command("ENGRAM.METRICS").decode()), \
                module_histogram(valkey.execute_command("ENGRAM.INFO"))


def engram_processes(address: str, base: Path, name: str) -> Watched:
    """The cluster's primary node and Valkey, its replicas (nodes and Valkeys) and journal servers."""
    state = cluster.load_running(base, name)
    doc = cluster.status(base, name)
    roles = {n["id"]: n["role"] for n in doc["nodes"]}
    groups: dict[str, list[int]] = {"primary node": [], "primary valkey": [], "replicas": [], "journal": []}
    control = valkey = None
    for node in state.nodes:
        assert node.pid is not None
        pids = [node.pid, *children(node.pid, "valkey-server")]
        if roles.get(node.id) == "primary":
            groups["primary node"].append(pids[0])
            groups["primary valkey"] += pids[1:]
            control, valkey = (node.host, node.admin_port), (node.host, node.port)
        else:
            groups["replicas"] += pids
    groups["journal"] = [j.pid for j in state.journal if j.pid]
    return Watched(address, groups, control, valkey)


def run_row(target: str, watched: Watched, clients: int, seconds: float,
            say: Any) -> dict[str, Any]:
    """One SET row: the client's view, the commit figures' change and each group's CPU, in cores."""
    spec = LoadSpec(clients=clients, seconds=seconds, requests=None)
    before: dict[str, Any] = {}
    me = os.getpid()
    # Children already running (Valkey, a cluster's supervisor) are not the generator's.
    earlier = set(children(me))

    def progress(message: str) -> None:
        say(message)
        if message.endswith("; measuring"):  # the generators are connected; the gate opens next
            generators = [p for p in children(me) if p not in earlier]
            before.update(cpu=watched.cpu(), runqueue=watched.runqueue(), machine=machine_busy(),
                          figures=watched.figures(),
                          generators=sum(cpu_seconds(p) for p in generators))

    reaped = reaped_children_cpu()
    results = loadgen.run_children(WORKLOADS["set"], spec, Endpoint((watched.address,), cluster=False),
                                   target, progress)
    cpu, runqueue, machine = watched.cpu(), watched.runqueue(), machine_busy()
    stages, module = watched.figures()
    span = max(r["ended"] for r in results) - min(r["began"] for r in results)
    hist = LatencyHistogram()
    for r in results:
        hist.merge({int(k): v for k, v in r["counts"].items()})
    total = hist.total
    mean_ms = sum(k * v for k, v in hist.counts.items()) / total / 1000 if total else float("nan")
    shares = {g: (cpu[g] - before["cpu"][g]) / span for g in cpu}
    shares["generator"] = (reaped_children_cpu() - reaped - before["generators"]) / span
    shares["machine"] = (machine[0] - before["machine"][0]) / span
    shares["other"] = shares["machine"] - sum(v for g, v in shares.items() if g != "machine")
    shares["stolen"] = (machine[1] - before["machine"][1]) / span
    row: dict[str, Any] = {
        "target": target, "clients": clients, "seconds": round(span, 2), "requests": total,
        "throughput": round(total / span), "mean_ms": round(mean_ms, 2),
        "p50_ms": round(hist.quantile(0.5) / 1000, 2), "p99_ms": round(hist.quantile(0.99) / 1000, 2),
        "cpu_cores": {g: round(v, 2) for g, v in shares.items()},
        # How long the group's threads waited for a CPU while runnable, in seconds per second.
        "runqueue_wait": {g: round((runqueue[g] - before["runqueue"][g]) / span, 3) for g in runqueue},
    }
    if watched.control is not None:
        stage_before, module_before = before["figures"]
        wait = module.minus(module_before)
        row["module_wait_ms"] = {"mean": round(wait.mean_ms(), 2), "p50": round(wait.quantile_ms(0.5), 2),
                                 "p99": round(wait.quantile_ms(0.99), 2), "waits": wait.count}
        node = {s: stages[s].minus(stage_before[s]) for s in (*COMMIT_STAGES, "path")}
        row["node_ms"] = {s: {"mean": round(h.mean_ms(), 3), "p50": round(h.quantile_ms(0.5), 2),
                              "p99": round(h.quantile_ms(0.99), 2)} for s, h in node.items()}
        entries = node["path"].count
        row["entries"] = entries
        row["writes_per_entry"] = round(total / entries, 1) if entries else None
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        lines.append(f"{r['target']}, SET {r['clients']} clients: {r['throughput']:,}/s, mean {r['mean_ms']} "
                     f"ms, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms over {r['seconds']} s")
        if "module_wait_ms" in r:
            w = r["module_wait_ms"]
            lines.append(f"  module commit wait: mean {w['mean']} ms, p50 {w['p50']}, p99 {w['p99']} "
                         f"({w['waits']:.0f} waits)")
            lines.append(f"  node, per entry ({r['entries']:.0f} entries, {r['writes_per_entry']} writes "
                         "each): " + ", ".join(f"{s} {h['mean']} ms (p50 {h['p50']}, p99 {h['p99']})"
                                     for s, h in r["node_ms"].items()))
        lines.append("  CPU, cores: " + ", ".join(f"{g} {v}" for g, v in r["cpu_cores"].items()))
        waits = r["runqueue_wait"].items()
        lines.append("  waiting for a CPU, s/s: " + ", ".join(f"{g} {v}" for g, v in waits))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="50,256",
                        help="client counts, comma-separated (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=4.0, help="per row (default: %(default)s)")
    parser.add_argument("--replicas", type=int, default=2, help="Engram replicas (default: %(default)s)")
    parser.add_argument("--journal-sync", default="always",
                        help="the journal's sync_interval (default: %(default)s)")
    parser.add_argument("--targets", default="valkey,engram", help="(default: %(default)s)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(f"commit_breakdown: {message}", file=sys.stderr, flush=True)

    rows = []
    for name in args.targets.split(","):
        if name == "valkey":
            target: Any = plain_valkey()
        else:
            target = EngramTarget(replicas=args.replicas, journal_sync=args.journal_sync)
        try:
            endpoint = target.start(say)
            if name == "valkey":
                watched = Watched(endpoint.addresses[0], {"valkey": children(os.getpid(), "valkey-server")})
            else:
                assert target._base is not None
                watched = engram_processes(endpoint.addresses[0], target._base, target._cluster_name)
            for clients in (int(c) for c in args.clients.split(",")):
                rows.append(run_row(name, watched, clients, args.seconds, say))
        finally:
            target.stop()
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
