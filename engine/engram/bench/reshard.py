"""`engram bench-reshard`: what moving slots online costs, Engram beside a plain Valkey cluster.

A benchmark, not a test. For each system in one run: start one shard (a 1-master Valkey cluster;
a 1-shard Engram local cluster), seed N keys, run a closed-loop client load (SET/GET over the
seeded keys through redis-py's cluster client, which follows ASK, MOVED and TRYAGAIN) for a
baseline window, then scale out to --shards under the same load: Valkey with `valkey-cli --cluster
add-node` and `rebalance --cluster-use-empty-masters`, Engram with `engram local scale`. It reports
the move's rate (keys/s, MB/s, over the moving itself) and the clients' throughput and p99 during
the move against the baseline, and Engram's figures as ratios of Valkey's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import redis
import redis.asyncio.cluster as aiocluster
import redis.exceptions

from engram import binaries
from engram.platforms.local import ports, processes
from engram.platforms.local.ports import LOOPBACK
from engram.resharding.record import MOVING, ReshardRecord

ENGRAM = [sys.executable, "-m", "engram.cli.main"]


def _say(message: str) -> None:
    print(f"engram bench-reshard: {message}", file=sys.stderr, flush=True)


@dataclass
class Window:
    """Client operations completed in one phase."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def p99_ms(self) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000


@dataclass
class Result:
    """One system's figures."""

    system: str
    move_seconds: float  # from the first key moving to the last slot handed over
    total_seconds: float  # the whole scale-out command, new nodes included
    keys_moved: int
    bytes_moved: int
    before_ops: float
    before_p99_ms: float
    during_ops: float
    during_p99_ms: float
    during_errors: int
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def keys_per_second(self) -> float:
        return self.keys_moved / max(self.move_seconds, 1e-3)

    @property
    def mb_per_second(self) -> float:
        return self.bytes_moved / 1e6 / max(self.move_seconds, 1e-3)


class System(Protocol):
    name: str

    def start(self) -> str: ...  # the endpoint

    def scale(self, shards: int) -> tuple[float, float, int, int]: ...  # move s, total s, keys, bytes

    def stop(self) -> None: ...


def _cli(*args: str, timeout: float = 600) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} {' '.join(args[1:3])} failed: "
                           f"{(done.stdout + done.stderr).strip()[-800:]}")
    return done.stdout


class ValkeyCluster:
    """Unmodified cluster-enabled valkey-servers; slots moved by valkey-cli, as an operator would."""

    name = "valkey"

    def __init__(self, value_size: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="eg-rs-valkey-"))
        self.procs: list[subprocess.Popen] = []
        self.addresses: list[str] = []
        self.value_size = value_size

    def _server(self) -> str:
        port = ports.allocate(1)[0]
        data = self.dir / str(port)
        data.mkdir()
        argv = [binaries.find("valkey-server"), "--port", str(port), "--bind", LOOPBACK, "--save", "",
                "--appendonly", "no", "--dir", str(data), "--protected-mode", "no",
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                # The bus port from the allocator too: port + 10000 can be in the ephemeral range.
                "--cluster-port", str(ports.allocate(1)[0])]
        self.procs.append(processes.spawn(argv, data / "valkey.log"))
        address = f"{LOOPBACK}:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis(host=LOOPBACK, port=port, socket_timeout=2).ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.addresses.append(address)
        return address

    def start(self) -> str:
        address = self._server()
        host, port = address.rsplit(":", 1)
        with redis.Redis(host=host, port=int(port), decode_responses=True) as r:
            r.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            while r.cluster("info").get("cluster_state") != "ok":
                time.sleep(0.1)
        return address

    def scale(self, shards: int) -> tuple[float, float, int, int]:
        cli = binaries.find("valkey-cli")
        started = time.monotonic()
        new = []
        for _ in range(shards - 1):
            address = self._server()
            # valkey-cli refuses to add a node while the others' views still differ: one at a time.
            _wait_cluster_agrees(self.addresses[:-1])
            _cli(cli, "--cluster", "add-node", address, self.addresses[0])
            new.append(address)
        _wait_cluster_agrees(self.addresses)
        moving = time.monotonic()
        _cli(cli, "--cluster", "rebalance", self.addresses[0], "--cluster-use-empty-masters", "--cluster-yes")
        done = time.monotonic()
        keys = sum(_dbsize(a) for a in new)
        return done - moving, done - started, keys, keys * _average_key_bytes(new[0])

    def stop(self) -> None:
        processes.stop_all(self.procs)
        shutil.rmtree(self.dir, ignore_errors=True)


class EngramCluster:
    """An Engram local cluster; slots moved by `engram local scale`."""

    name = "engram"

    def __init__(self, replicas: int, max_keys_per_second: int) -> None:
        self.base = tempfile.mkdtemp(prefix="eg-rs-engram-")
        self.cluster = "benchrs"
        self.replicas = replicas
        self.max_keys_per_second = max_keys_per_second

    def start(self) -> str:
        doc = json.loads(_cli(*ENGRAM, "local", "up", self.cluster, "--dir", self.base, "--shards", "1",
                              "--replicas", str(self.replicas), "--no-rebalance", "--json", timeout=300))
        return str(doc["endpoint"])

    def scale(self, shards: int) -> tuple[float, float, int, int]:
        from engram.platforms.local.scale import scale  # lazy: the CLI must not pay for it

        seen: dict[str, float] = {}
        last: list[ReshardRecord] = []

        def progress(record: ReshardRecord) -> None:
            if record.phase == MOVING and record.keys_moved and "moving" not in seen:
                seen["moving"] = time.monotonic()
            last[:] = [record]

        started = time.monotonic()
        scale(self.base, self.cluster, shards, max_keys_per_second=self.max_keys_per_second,
              progress=progress)
        done = time.monotonic()
        record = last[0]
        return done - seen.get("moving", started), done - started, record.keys_moved, record.bytes_moved

    def stop(self) -> None:
        subprocess.run([*ENGRAM, "local", "down", self.cluster, "--dir", self.base], capture_output=True,
                       timeout=120, check=False)
        shutil.rmtree(self.base, ignore_errors=True)


def _dbsize(address: str) -> int:
    host, port = address.rsplit(":", 1)
    with redis.Redis(host=host, port=int(port)) as r:
        return int(r.dbsize())


def _average_key_bytes(address: str) -> int:
    """MEMORY USAGE of a sample of the node's keys: the measure Engram's mover reports bytes by."""
    host, port = address.rsplit(":", 1)
    with redis.Redis(host=host, port=int(port)) as r:
        keys = [r.randomkey() for _ in range(50)]
        sizes = [int(r.memory_usage(k, samples=0) or 0) for k in keys if k]
    return sum(sizes) // max(len(sizes), 1)


def _wait_cluster_agrees(addresses: list[str], timeout: float = 60) -> None:
    """Every node knows every other, serves (cluster_state ok), and all agree on the slots' owners."""
    deadline = time.monotonic() + timeout
    while True:
        views = set()
        known = True
        for address in addresses:
            host, port = address.rsplit(":", 1)
            with redis.Redis(host=host, port=int(port), decode_responses=True) as r:
                info = r.cluster("info")
                known &= int(info.get("cluster_known_nodes", 0)) >= len(addresses)
                known &= info.get("cluster_state") == "ok"
                views.add(str(sorted(map(str, r.execute_command("CLUSTER", "SLOTS")))))
        if known and len(views) == 1:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Valkey cluster's nodes do not agree after {timeout:g}s")
        time.sleep(0.1)


def _seed(endpoint: str, keys: int, value: bytes) -> None:
    host, port = endpoint.rsplit(":", 1)
    client = redis.RedisCluster(host=host, port=int(port), socket_timeout=10)
    pipe = client.pipeline()
    for i in range(keys):
        pipe.set(f"bench:{i}", value)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    client.close()


async def _load(endpoint: str, keys: int, value: bytes, clients: int, stop: asyncio.Event,
                phase: list[Window]) -> None:
    host, port = endpoint.rsplit(":", 1)
    client = aiocluster.RedisCluster(host=host, port=int(port), socket_timeout=10)
    await client.initialize()

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            key = f"bench:{rng.randrange(keys)}"
            start = time.perf_counter()
            try:
                if rng.random() < 0.5:
                    await client.set(key, value)
                else:
                    await client.get(key)
            except (redis.exceptions.RedisError, OSError, AttributeError) as exc:
                # AttributeError: redis-py cannot follow an ASK to a master it has not seen in
                # CLUSTER SLOTS yet (redis-py#4015, docs/scaling.md); on both systems alike.
                phase[-1].errors += 1
                phase[-1].kinds[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1
                continue
            phase[-1].latencies.append(time.perf_counter() - start)

    try:
        await asyncio.gather(*(worker(i) for i in range(clients)))
    finally:
        await client.aclose()


async def _measure(system: System, endpoint: str, args: argparse.Namespace) -> Result:
    value = b"x" * args.value_size
    before, during = Window(), Window()
    phase = [before]
    stop = asyncio.Event()
    load = asyncio.ensure_future(_load(endpoint, args.keys, value, args.clients, stop, phase))
    started = time.monotonic()
    await asyncio.sleep(args.baseline)
    before.seconds = time.monotonic() - started
    phase.append(during)
    _say(f"{system.name}: baseline {before.rate:,.0f} ops/s; scaling to {args.shards} shards")
    started = time.monotonic()
    outcome: list[tuple[float, float, int, int]] = []
    failure: list[BaseException] = []

    def run_scale() -> None:
        try:
            outcome.append(system.scale(args.shards))
        except BaseException as exc:  # reported once the load has stopped
            failure.append(exc)

    thread = threading.Thread(target=run_scale, daemon=True)
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.1)
    during.seconds = time.monotonic() - started
    stop.set()
    await load
    if failure:
        raise failure[0]
    move, total, keys, size = outcome[0]
    return Result(system.name, move, total, keys, size, before.rate, before.p99_ms(), during.rate,
                  during.p99_ms(), during.errors, dict(during.kinds.most_common(5)))


def table(results: list[Result], args: argparse.Namespace) -> str:
    lines = [f"{args.keys:,} keys of {args.value_size} bytes, 1 -> {args.shards} shards, "
             f"{args.clients} client loops (SET/GET 50/50)", ""]
    head = ("", "moved", "move", "keys/s", "MB/s", "ops/s before", "ops/s during", "p99 before",
            "p99 during", "errors")
    rows = [head]
    for r in results:
        rows.append((r.system, f"{r.keys_moved:,}", f"{r.move_seconds:.1f} s ({r.total_seconds:.1f} s)",
                     f"{r.keys_per_second:,.0f}", f"{r.mb_per_second:.2f}", f"{r.before_ops:,.0f}",
                     f"{r.during_ops:,.0f} ({r.during_ops / max(r.before_ops, 1e-9):.2f}x)",
                     f"{r.before_p99_ms:.1f} ms", f"{r.during_p99_ms:.1f} ms", str(r.during_errors)))
    by = {r.system: r for r in results}
    if "valkey" in by and "engram" in by:
        v, e = by["valkey"], by["engram"]
        rows.append(("engram/valkey", "", "", f"{e.keys_per_second / max(v.keys_per_second, 1e-9):.2f}x",
                     f"{e.mb_per_second / max(v.mb_per_second, 1e-9):.2f}x",
                     f"{e.before_ops / max(v.before_ops, 1e-9):.2f}x",
                     f"{e.during_ops / max(v.during_ops, 1e-9):.2f}x",
                     f"{e.before_p99_ms / max(v.before_p99_ms, 1e-9):.2f}x",
                     f"{e.during_p99_ms / max(v.during_p99_ms, 1e-9):.2f}x", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append("move: from the first key moved to the last slot handed over (whole command in brackets)")
    for r in results:
        for kind, count in r.error_kinds.items():
            lines.append(f"{r.system} client error: {count} x {kind}")
    return "\n".join(lines)


def handle(args: argparse.Namespace) -> int:
    systems: list[System] = []
    if "valkey" in args.systems:
        systems.append(ValkeyCluster(args.value_size))
    if "engram" in args.systems:
        systems.append(EngramCluster(args.replicas, args.max_keys_per_second))
    results = []
    for system in systems:
        try:
            endpoint = system.start()
            _say(f"{system.name}: seeding {args.keys:,} keys")
            _seed(endpoint, args.keys, b"x" * args.value_size)
            results.append(asyncio.run(_measure(system, endpoint, args)))
        finally:
            system.stop()
    print(json.dumps([asdict(r) for r in results]) if args.json else table(results, args))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench-reshard", help="an online scale-out under client load, beside Valkey",
                              description=__doc__)
    p.add_argument("--keys", type=int, default=100_000, help="(default: %(default)s)")
    p.add_argument("--value-size", type=int, default=100, metavar="BYTES", help="(default: %(default)s)")
    p.add_argument("--shards", type=int, default=3, help="shards to scale to from 1 (default: %(default)s)")
    p.add_argument("--replicas", type=int, default=1, help="Engram replicas per shard (default: %(default)s)")
    p.add_argument("--clients", type=int, default=16, help="concurrent client loops (default: %(default)s)")
    p.add_argument("--baseline", type=float, default=10.0, metavar="SECONDS", help="(default: %(default)s)")
    p.add_argument("--max-keys-per-second", type=int, default=20_000,
                   help="Engram's bound on keys moved per second, 0 for none (default: %(default)s)")
    p.add_argument("--systems", default="valkey,engram", help="(default: %(default)s)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=handle)
    return p
