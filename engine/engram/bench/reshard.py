"""`engram bench-reshard`: what moving slots costs, measured on a local cluster under client load.

A benchmark, not a test: it starts a 1-shard local cluster, seeds it with N keys, runs a closed-loop
client load (SET/GET over the seeded keys, redis-py's cluster client, which follows ASK, MOVED and
TRYAGAIN) for a baseline window, then scales to --shards with `engram local scale` under the same
load. It reports the migration's rate (keys/s, MB/s) and the clients' throughput and p99 during the
migration against the baseline, as ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import redis
import redis.asyncio.cluster as aiocluster
import redis.exceptions

ENGRAM = [sys.executable, "-m", "engram.cli.main"]


def _say(message: str) -> None:
    print(f"engram bench-reshard: {message}", file=sys.stderr, flush=True)


@dataclass
class Window:
    """Client operations completed in one phase."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


@dataclass
class ReshardBench:
    keys: int
    value_size: int
    shards: int
    clients: int
    migration_seconds: float
    keys_moved: int
    bytes_moved: int
    before_ops: float
    before_p99_ms: float
    during_ops: float
    during_p99_ms: float
    during_errors: int

    def table(self) -> str:
        ratio = self.during_ops / self.before_ops if self.before_ops else 0.0
        p99 = self.during_p99_ms / self.before_p99_ms if self.before_p99_ms else 0.0
        seconds = max(self.migration_seconds, 1e-3)
        rows = [
            ("data", f"{self.keys:,} keys of {self.value_size} bytes, 1 -> {self.shards} shards"),
            ("migration", f"{self.keys_moved:,} keys, {self.bytes_moved / 1e6:.1f} MB in "
                          f"{self.migration_seconds:.1f} s: {self.keys_moved / seconds:,.0f} keys/s, "
                          f"{self.bytes_moved / 1e6 / seconds:.2f} MB/s"),
            ("clients before", f"{self.before_ops:,.0f} ops/s, p99 {self.before_p99_ms:.2f} ms"),
            ("clients during", f"{self.during_ops:,.0f} ops/s ({ratio:.2f}x), p99 "
                               f"{self.during_p99_ms:.2f} ms ({p99:.2f}x), {self.during_errors} errors"),
        ]
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def _engram(*args: str, timeout: float = 900) -> str:
    result = subprocess.run([*ENGRAM, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"engram {' '.join(args[:2])} failed: {result.stderr.strip()[-800:]}")
    return result.stdout


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
            except (redis.exceptions.RedisError, OSError, AttributeError):
                # AttributeError: redis-py cannot follow an ASK to a shard it has not seen yet
                # (redis-py#4015, docs/scaling.md); counted as an error like the others.
                phase[-1].errors += 1
                continue
            phase[-1].latencies.append(time.perf_counter() - start)

    try:
        await asyncio.gather(*(worker(i) for i in range(clients)))
    finally:
        await client.aclose()


async def _measure(name: str, base: str, endpoint: str, args: argparse.Namespace) -> ReshardBench:
    value = b"x" * args.value_size
    before, during = Window(), Window()
    phase = [before]
    stop = asyncio.Event()
    load = asyncio.ensure_future(_load(endpoint, args.keys, value, args.clients, stop, phase))
    started = time.monotonic()
    await asyncio.sleep(args.baseline)
    before.seconds = time.monotonic() - started
    phase.append(during)
    _say(f"baseline {before.rate:,.0f} ops/s; scaling to {args.shards} shards")
    started = time.monotonic()
    out = await asyncio.to_thread(_engram, "local", "scale", name, "--dir", base, "--shards",
                                  str(args.shards), "--json", "--max-keys-per-second",
                                  str(args.max_keys_per_second))
    during.seconds = time.monotonic() - started
    stop.set()
    await load
    record = json.loads(out).get("resharding") or {}
    moved_keys, moved_bytes = int(record.get("keys_moved", 0)), int(record.get("bytes_moved", 0))
    return ReshardBench(args.keys, args.value_size, args.shards, args.clients, during.seconds,
                        moved_keys, moved_bytes, before.rate, before.percentile(0.99), during.rate,
                        during.percentile(0.99), during.errors)


def handle(args: argparse.Namespace) -> int:
    base = tempfile.mkdtemp(prefix="eg-rs-")
    name = "benchrs"
    try:
        doc = json.loads(_engram("local", "up", name, "--dir", base, "--shards", "1", "--replicas",
                                 str(args.replicas), "--no-rebalance", "--json", timeout=300))
        endpoint = doc["endpoint"]
        _say(f"seeding {args.keys:,} keys")
        _seed(endpoint, args.keys, b"x" * args.value_size)
        report = asyncio.run(_measure(name, base, endpoint, args))
    finally:
        subprocess.run([*ENGRAM, "local", "down", name, "--dir", base], capture_output=True, timeout=120,
                       check=False)
    print(json.dumps(asdict(report)) if args.json else report.table())
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench-reshard", help="measure an online scale-out under client load",
                              description=__doc__)
    p.add_argument("--keys", type=int, default=100_000, help="(default: %(default)s)")
    p.add_argument("--value-size", type=int, default=100, metavar="BYTES", help="(default: %(default)s)")
    p.add_argument("--shards", type=int, default=3, help="shards to scale to from 1 (default: %(default)s)")
    p.add_argument("--replicas", type=int, default=1, help="(default: %(default)s)")
    p.add_argument("--clients", type=int, default=16, help="concurrent client loops (default: %(default)s)")
    p.add_argument("--baseline", type=float, default=10.0, metavar="SECONDS", help="(default: %(default)s)")
    p.add_argument("--max-keys-per-second", type=int, default=20_000, help="(default: %(default)s)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=handle)
    return p

