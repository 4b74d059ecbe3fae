"""What the Engram Valkey module costs: the same workloads against plain Valkey and Valkey + engram.so.

The module's replica is the node's real replication tap in its own process, acknowledging what it
receives either at once (the module's own cost) or after a simulated journal commit (group commit:
one timer per batch); `module-tap` parses the stream per command as today's tap does, `module-pump`
only counts its bytes, as phase 2's tap will. Prints each row's ratio to plain Valkey in the run.

    .venv/bin/python scripts/module_bench.py [--requests 50000] [--commit-ms 1.1] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
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

CASES = [  # (label, workload, clients, pipeline)
    ("SET, 50 clients", "set", 50, 1),
    ("GET, 50 clients", "get", 50, 1),
    ("SET, 4 clients x pipeline 16", "set", 4, 16),
    ("SET, 1 connection x 1000 in flight", "set", 1, 1000),
]


def _tap_process(socket: str, commit_ms: float, pump: bool, ready: Any, stop: Any) -> None:
    """Attach the real tap and acknowledge: at once, or commit_ms after the first unacked batch.

    With pump, stream bytes are counted instead of parsed into commands, as phase 2's tap will."""
    from engram.replication.tap import Tap

    async def main() -> None:
        tap = Tap(socket)
        await tap.attach()
        loop = asyncio.get_running_loop()
        pending: list[asyncio.TimerHandle] = []

        def flush() -> None:
            pending.clear()
            tap.ack(tap.offset)

        def on_commands(commands: list[Any]) -> None:
            if commit_ms <= 0:
                tap.ack(commands[-1].end_offset)
            elif not pending:
                pending.append(loop.call_later(commit_ms / 1000, flush))

        async def byte_pump() -> None:
            # Reaches into the tap's link: a stand-in for the byte-pump tap phase 2 builds.
            reader = tap._reader
            assert reader is not None
            data, tap._leftover = tap._leftover, b""
            while True:
                tap.offset += len(data)
                if commit_ms <= 0:
                    tap.ack(tap.offset)
                elif not pending and data:
                    pending.append(loop.call_later(commit_ms / 1000, flush))
                data = await reader.read(1 << 20)
                if not data:
                    return

        task = loop.create_task(byte_pump() if pump else tap.stream(on_commands))
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        task.cancel()
        tap.close()

    asyncio.run(main())


class ModuleTarget:
    """valkey-server --loadmodule engram.so, with the tap as its only replica."""

    def __init__(self, commit_ms: float, pump: bool) -> None:
        self.commit_ms = commit_ms
        self.pump = pump
        suffix = f"+{commit_ms:g}ms" if commit_ms > 0 else ""
        self.name = ("module-pump" if pump else "module-tap") + suffix
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
        args = (socket, self.commit_ms, self.pump, ready, self._stop)
        self._tap = ctx.Process(target=_tap_process, args=args, daemon=True)
        self._tap.start()
        if not ready.wait(30):
            raise RuntimeError("the replication tap did not attach within 30 s")
        return endpoint

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
    parser.add_argument("--commit-ms", type=float, default=1.1, help="simulated journal commit; 0 skips it")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    targets: list[Any] = [plain_valkey(), ModuleTarget(0.0, pump=False), ModuleTarget(0.0, pump=True)]
    if args.commit_ms > 0:
        targets.append(ModuleTarget(args.commit_ms, pump=True))
    rows: list[Measurement] = []
    for target in targets:
        endpoint = target.start(say)
        try:
            for label, workload_name, clients, pipeline in CASES:
                workload = WORKLOADS[workload_name]
                spec = LoadSpec(clients=clients, pipeline=pipeline, requests=args.requests)
                if workload.needs_data:
                    populate(endpoint, spec, say, target.name)
                m = loadgen.run(workload, spec, endpoint, target.name, lambda _m: None)
                rows.append(Measurement(**{**asdict(m), "workload": label}))
                say(f"{target.name:>14} {label:<36} {m.throughput:>10,.0f}/s  p50 {m.p50_ms:.2f} ms  "
                    f"p99 {m.p99_ms:.2f} ms  errors {m.errors}")
        finally:
            target.stop()
    base = {r.workload: r.throughput for r in rows if r.target == "valkey"}
    if args.json:
        print(json.dumps([{**asdict(r), "ratio": r.throughput / base[r.workload]} for r in rows], indent=2))
        return 0
    print("| workload | target | ops/s | p50 ms | p99 ms | vs plain Valkey |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.workload} | {r.target} | {r.throughput:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
              f"{r.throughput / base[r.workload]:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
