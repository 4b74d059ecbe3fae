"""What the Engram Valkey module costs: the same workloads against plain Valkey and Valkey + engram.so.

The module's replica is the node's real replication tap in its own process:
- `module-tap`: the tap, pumping stream bytes through the C scanner, acknowledging each chunk's last
  safe place at once;
- `module-pump`: only counts the stream's bytes and acknowledges them at once, the floor for any tap;
- `module-node`: the tap and the committer as the primary node runs them (entries sealed at safe
  places, acknowledged once committed), on a journal simulated in memory whose appends land at
  once or, `+N ms`, --commit-ms after being sent (about an R3 fsync append).
Prints each row's ratio to plain Valkey in the run, and the tap process's CPU time per request (a
figure that load on the machine disturbs less than throughput).

    .venv/bin/python scripts/module_bench.py [--requests 50000] [--commit-ms 1.1] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from typing import Any

from engram import binaries
from engram.bench import loadgen
from engram.bench.measurement import Measurement
from engram.bench.runner import populate
from engram.bench.targets import Endpoint, ValkeyTarget, plain_valkey
from engram.bench.workloads import WORKLOADS, LoadSpec
from engram.journal.client import Appended

CASES = [  # (label, workload, clients, pipeline)
    ("SET, 50 clients", "set", 50, 1),
    ("GET, 50 clients", "get", 50, 1),
    ("SET, 4 clients x pipeline 16", "set", 4, 16),
    ("SET, 1 connection x 1000 in flight", "set", 1, 1000),
]


class _SimulatedJournal:
    """Stands in for JetStream: appends land in the order sent, commit_ms after being sent."""

    def __init__(self, commit_ms: float) -> None:
        self.delay = commit_ms / 1000

    async def append_pipelined(self, entry: Any, expected: int, msg_id: str,
                               timeout: float | None = None) -> asyncio.Future[Appended]:
        loop = asyncio.get_running_loop()
        landed: asyncio.Future[Appended] = loop.create_future()
        if self.delay > 0:
            loop.call_later(self.delay, landed.set_result, Appended(expected + 1))
        else:
            landed.set_result(Appended(expected + 1))
        return landed

    async def append(self, entry: Any, expected: int, msg_id: str, timeout: float | None = None) -> Appended:
        return await (await self.append_pipelined(entry, expected, msg_id, timeout))


def _tap_process(socket: str, mode: str, commit_ms: float, ready: Any, stop: Any) -> None:
    """Attach the real tap and acknowledge what it receives, as `mode` says (see the docstring)."""
    from engram.replication.committer import Committer
    from engram.replication.streamscan import Scan
    from engram.replication.tap import Tap

    async def main() -> None:
        tap = Tap(socket)
        await tap.attach()
        loop = asyncio.get_running_loop()

        async def byte_pump() -> None:
            # Reaches into the tap's link: the least any tap can do, count bytes and ack them.
            reader = tap._reader
            assert reader is not None
            data, tap._leftover = tap._leftover, b""
            while True:
                tap.offset += len(data)
                tap.ack(tap.offset)
                data = await reader.read(1 << 20)
                if not data:
                    return

        def ack_at_once(data: bytes, scan: Scan) -> None:
            tap.ack(scan.safe)

        if mode == "pump":
            tasks = [loop.create_task(byte_pump())]
        elif mode == "tap":
            tasks = [loop.create_task(tap.stream(ack_at_once))]
        else:
            # The node's defaults: 512 KiB entries, 4 appends in flight; no lease entries in a run.
            committer = Committer(_SimulatedJournal(commit_ms), tap, "bench", 1, 1, 0,  # type: ignore[arg-type]
                                  3600.0, 512 * 1024, 4, lambda seq, latency: None)
            tasks = [loop.create_task(tap.stream(committer.feed)), loop.create_task(committer.run())]
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        tap.close()

    asyncio.run(main())


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ModuleTarget:
    """valkey-server --loadmodule engram.so, with the tap as its only replica."""

    def __init__(self, mode: str, commit_ms: float = 0.0) -> None:
        self.mode = mode
        self.commit_ms = commit_ms
        suffix = f"+{commit_ms:g}ms" if commit_ms > 0 else ""  # of the simulated journal
        self.name = f"module-{mode}{suffix}"
        self._valkey: ValkeyTarget | None = None
        self._tap: Any = None
        self._stop: Any = None
        self._socket_dir = ""

    def start(self, progress: Any) -> Endpoint:
        # Clients use loopback TCP like plain Valkey's; the tap attaches over a unix socket.
        self._socket_dir = tempfile.mkdtemp(prefix="egb-", dir="/tmp")
        socket = f"{self._socket_dir}/v.sock"
        extra = ("--loadmodule", binaries.valkey_module(), "--unixsocket", socket)
        self._valkey = ValkeyTarget(self.name, "Valkey + engram.so", extra)
        endpoint = self._valkey.start(progress)
        ctx = multiprocessing.get_context("spawn")
        ready, self._stop = ctx.Event(), ctx.Event()
        args = (socket, self.mode, self.commit_ms, ready, self._stop)
        self._tap = ctx.Process(target=_tap_process, args=args, daemon=True)
        self._tap.start()
        if not ready.wait(30):
            raise RuntimeError("the replication tap did not attach within 30 s")
        return endpoint

    def tap_cpu(self) -> float:
        return _cpu_seconds(self._tap.pid)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._tap is not None:
            self._tap.join(5)
            if self._tap.is_alive():
                self._tap.terminate()
        if self._valkey is not None:
            self._valkey.stop()
        shutil.rmtree(self._socket_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--commit-ms", type=float, default=1.1,
                        help="a last row with the journal's commit simulated at this latency; 0 skips it")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    targets: list[Any] = [plain_valkey(), ModuleTarget("tap"), ModuleTarget("pump"), ModuleTarget("node")]
    if args.commit_ms > 0:
        targets.append(ModuleTarget("node", args.commit_ms))
    rows: list[Measurement] = []
    tap_us: dict[tuple[str, str], float] = {}  # the tap process's CPU microseconds per request
    for target in targets:
        endpoint = target.start(say)
        try:
            for label, workload_name, clients, pipeline in CASES:
                workload = WORKLOADS[workload_name]
                spec = LoadSpec(clients=clients, pipeline=pipeline, requests=args.requests)
                if workload.needs_data:
                    populate(endpoint, spec, say, target.name)
                cpu = target.tap_cpu() if isinstance(target, ModuleTarget) else 0.0
                m = loadgen.run(workload, spec, endpoint, target.name, lambda _m: None)
                rows.append(Measurement(**{**asdict(m), "workload": label}))
                if isinstance(target, ModuleTarget):
                    tap_us[(target.name, label)] = (target.tap_cpu() - cpu) / args.requests * 1e6
                say(f"{target.name:>14} {label:<36} {m.throughput:>10,.0f}/s  p50 {m.p50_ms:.2f} ms  "
                    f"p99 {m.p99_ms:.2f} ms  errors {m.errors}")
        finally:
            target.stop()
    base = {r.workload: r.throughput for r in rows if r.target == "valkey"}
    if args.json:
        print(json.dumps([{**asdict(r), "ratio": r.throughput / base[r.workload],
                           "tap_cpu_us": tap_us.get((r.target, r.workload))} for r in rows], indent=2))
        return 0
    print("| workload | target | ops/s | p50 ms | p99 ms | vs plain Valkey | tap CPU µs/op |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cpu_us = tap_us.get((r.target, r.workload))
        print(f"| {r.workload} | {r.target} | {r.throughput:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
              f"{r.throughput / base[r.workload]:.2f}x | {'' if cpu_us is None else f'{cpu_us:.2f}'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
