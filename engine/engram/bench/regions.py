"""`engram bench-regions`: how long a write acknowledged in one region takes to be readable in the
others, beside plain Valkey's own asynchronous replication measured the same way.

A benchmark, not a test. One writer SETs keys in order at a paced rate through the first region's
endpoint (Valkey: a primary) and notes when each was acknowledged; one reader per other region
(Valkey: a replica) polls a window of the next keys, pipelined, and notes when each became
readable. The lag of a key is the difference; with one shard, keys apply in order, so a reader only
ever waits for the next one. Figures are p50/p99/max per destination, and Engram's as ratios of
Valkey's. Both clocks are this process's monotonic clock; the poll interval bounds the error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from engram import binaries
from engram.bench.targets import wait_ping
from engram.platforms.local import ports, processes
from engram.platforms.local.ports import LOOPBACK

ENGRAM = [sys.executable, "-m", "engram.cli.main"]
# How often a reader asks for the next keys, and how many it asks for at once.
POLL_SECONDS = 0.0005
WINDOW = 32


def _say(message: str) -> None:
    print(f"engram bench-regions: {message}", file=sys.stderr, flush=True)


@dataclass
class Lag:
    """One destination's lag figures, in milliseconds, over the keys it saw."""

    system: str
    source: str
    destination: str
    rate: int
    keys: int
    seen: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def _quantile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _client(address: str) -> redis.Redis:
    host, port = address.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), socket_timeout=10, protocol=2)


def measure(source: str, destinations: dict[str, str], rate: int, count: int, prefix: str,
            timeout: float = 60.0) -> dict[str, list[float]]:
    """Write `count` keys at `rate`/s to `source`; each destination's lag per key, in seconds."""
    acked: list[float | None] = [None] * count
    seen = {name: [None] * count for name in destinations}  # type: dict[str, list[float | None]]
    done = threading.Event()

    def write() -> None:
        client = _client(source)
        start = time.monotonic()
        for i in range(count):
            if (wait := start + i / rate - time.monotonic()) > 0:
                time.sleep(wait)
            client.set(f"{prefix}:{i}", "x")
            acked[i] = time.monotonic()
        client.close()

    def read(name: str, address: str) -> None:
        client, mine, at = _client(address), seen[name], 0
        deadline = time.monotonic() + count / rate + timeout
        while at < count and time.monotonic() < deadline:
            pipe = client.pipeline(transaction=False)
            window = range(at, min(count, at + WINDOW))
            for i in window:
                pipe.exists(f"{prefix}:{i}")
            now_seen = pipe.execute()
            now = time.monotonic()
            for i, there in zip(window, now_seen, strict=True):
                if not there:
                    break
                mine[i] = now
                at = i + 1
            else:
                continue
            if not done.is_set():
                time.sleep(POLL_SECONDS)
        client.close()

    readers = [threading.Thread(target=read, args=item, daemon=True) for item in destinations.items()]
    for reader in readers:
        reader.start()
    write()
    done.set()
    for reader in readers:
        reader.join()
    return {name: [s - a for s, a in zip(seen[name], acked, strict=True) if s is not None and a is not None]
            for name in destinations}


def _figures(system: str, source: str, lags: dict[str, list[float]], rate: int, count: int) -> list[Lag]:
    out = []
    for destination, values in lags.items():
        ordered = sorted(v * 1000 for v in values)
        top = ordered[-1] if ordered else float("nan")
        out.append(Lag(system, source, destination, rate, count, len(ordered),
                       round(_quantile(ordered, 0.5), 2), round(_quantile(ordered, 0.99), 2), round(top, 2)))
    return out


class ValkeyReplication:
    """A plain valkey-server primary and one replica per destination: Valkey's own async replication."""

    def __init__(self, replicas: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="eg-br-valkey-"))
        self.procs: list[subprocess.Popen] = []
        self.primary = self._server([])
        self.replicas = [self._server(["--replicaof", LOOPBACK, self.primary.rsplit(":", 1)[1]])
                         for _ in range(replicas)]
        for address in self.replicas:
            deadline = time.monotonic() + 30
            while _client(address).info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Valkey replica at {address} did not link to its primary")
                time.sleep(0.1)

    def _server(self, extra: list[str]) -> str:
        port = ports.allocate(1)[0]
        data = self.dir / str(port)
        data.mkdir()
        argv = [binaries.find("valkey-server"), "--port", str(port), "--bind", LOOPBACK, "--save", "",
                "--appendonly", "no", "--dir", str(data), "--protected-mode", "no", *extra]
        self.procs.append(processes.spawn(argv, data / "valkey.log"))
        wait_ping(f"{LOOPBACK}:{port}")
        return f"{LOOPBACK}:{port}"

    def stop(self) -> None:
        processes.stop_all(self.procs)
        shutil.rmtree(self.dir, ignore_errors=True)


class EngramRegions:
    """A local multi-region Engram cluster (`engram local up --regions`), one shard per region."""

    def __init__(self, regions: list[str], replicas: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="eg-br-engram-"))
        self.name = "bench"
        up = subprocess.run([*ENGRAM, "local", "up", self.name, "--regions", ",".join(regions), "--replicas",
                             str(replicas), "--dir", str(self.dir), "--json"],
                            capture_output=True, text=True, timeout=300)
        if up.returncode != 0:
            self.stop()
            raise RuntimeError(f"engram local up --regions failed:\n{up.stderr}")
        doc = json.loads(up.stdout)
        self.endpoints = {r: doc["regions"][r]["endpoint"] for r in regions}

    def stop(self) -> None:
        subprocess.run([*ENGRAM, "local", "down", self.name, "--dir", str(self.dir)], capture_output=True,
                       timeout=180)
        shutil.rmtree(self.dir, ignore_errors=True)


def run(regions: list[str], rates: list[int], count: int, replicas: int, systems: list[str]) -> list[Lag]:
    results: list[Lag] = []
    source, others = regions[0], regions[1:]
    if "valkey" in systems:
        _say(f"valkey: a primary and {len(others)} replica(s) on loopback")
        valkey = ValkeyReplication(len(others))
        try:
            for rate in rates:
                lags = measure(valkey.primary, dict(zip(others, valkey.replicas, strict=True)), rate, count,
                               f"lag:{rate}")
                results += _figures("valkey", source, lags, rate, count)
                _say(f"valkey at {rate}/s done")
        finally:
            valkey.stop()
    if "engram" in systems:
        _say(f"engram: regions {', '.join(regions)} (engram local up --regions)")
        engram = EngramRegions(regions, replicas)
        try:
            # The first writes of a new link wait for its source consumers: warm it up first.
            readers = {r: engram.endpoints[r] for r in others}
            measure(engram.endpoints[source], readers, 50, 50, "warm")
            for rate in rates:
                lags = measure(engram.endpoints[source], readers, rate, count, f"lag:{rate}")
                results += _figures("engram", source, lags, rate, count)
                _say(f"engram at {rate}/s done")
        finally:
            engram.stop()
    return results


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.1f}x" if base else "-"


def report(results: list[Lag]) -> str:
    lines = [f"{'system':<8}{'from':<8}{'to':<8}{'rate/s':>8}{'seen':>8}{'p50 ms':>9}{'p99 ms':>9}"
             f"{'max ms':>9}{'p50 x':>8}{'p99 x':>8}"]
    base = {(r.destination, r.rate): r for r in results if r.system == "valkey"}
    for r in results:
        b = base.get((r.destination, r.rate))
        lines.append(f"{r.system:<8}{r.source:<8}{r.destination:<8}{r.rate:>8}{r.seen:>8}{r.p50_ms:>9}"
                     f"{r.p99_ms:>9}{r.max_ms:>9}{_ratio(r.p50_ms, b.p50_ms if b else None):>8}"
                     f"{_ratio(r.p99_ms, b.p99_ms if b else None):>8}")
    return "\n".join(lines)


def handle(args: argparse.Namespace) -> int:
    regions = [r for r in args.regions.split(",") if r]
    if len(regions) < 2:
        print("engram bench-regions: --regions needs at least two regions", file=sys.stderr)
        return 2
    rates = [int(r) for r in args.rates.split(",") if r]
    results = run(regions, rates, args.keys, args.replicas, args.systems.split(","))
    print(json.dumps([asdict(r) for r in results], indent=2) if args.json else report(results))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench-regions", help="cross-region lag of a multi-region cluster, beside "
                              "Valkey's replication", description=__doc__)
    p.add_argument("--regions", default="east,west,south",
                   help="the first one is written (default: %(default)s)")
    p.add_argument("--rates", default="200,1000",
                   help="writes per second, one run each (default: %(default)s)")
    p.add_argument("--keys", type=int, default=3000, help="keys written per run (default: %(default)s)")
    p.add_argument("--replicas", type=int, default=1, help="Engram replicas per shard (default: %(default)s)")
    p.add_argument("--systems", default="valkey,engram", help="(default: %(default)s)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=handle)
    return p
