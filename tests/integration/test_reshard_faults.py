"""1 -> 3 -> 2 shards under the chaos workload, with faults in the middle of each migration (the
source's primary and a journal server while scaling out, a target's primary while scaling in): no
acknowledged write is lost, every register stays linearizable, and the slots end balanced over the
remaining shards (docs/scaling.md)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engram.chaos.history import History
from engram.chaos.linearizability import check
from engram.chaos.loss import check_loss
from engram.chaos.workload import ClientStats, WorkloadSpec, loss_operations, read_final, run_client
from engram.platforms.local import cluster as local
from engram.platforms.local.scale import scale
from engram.platforms.local.testing import status, wait_for
from engram.resharding.record import ReshardRecord

pytestmark = pytest.mark.integration


def _primary(name: str, base: str, shard: int) -> str:
    for node in local.status(base, name)["nodes"]:
        if node["shard"] == shard and node["role"] == "primary":
            return str(node["id"])
    return ""


def test_shards_come_and_go_without_loss_while_primaries_are_killed_mid_migration(local_cluster: Any) -> None:
    doc = local_cluster(shards=1, replicas=1, no_rebalance=True)
    name, base = doc["name"], str(Path(doc["dir"]).parent)
    spec = WorkloadSpec(prefix="rs", clients=6, keys=5, timeout=5.0, seed=16)
    history = History()
    records: dict[int, ReshardRecord] = {}
    killed: list[str] = []
    problems: list[str] = []
    final: dict[str, Any] = {}

    def resize(shards: int, faults: list[tuple[float, str]]) -> None:
        """Scale, killing each fault's target once that fraction of the slots has moved: "shard N"
        for that shard's primary, else a process `engram local kill` knows (journal-a)."""
        progress: list[ReshardRecord] = []
        done = threading.Event()

        def moved(fraction: float) -> bool:
            if done.is_set():
                return True
            last = progress[-1] if progress else None
            return bool(last and last.phase == "moving" and last.slots_total
                        and last.slots_moved >= last.slots_total * fraction)

        def killer() -> None:
            try:
                inject()
            except Exception as exc:  # reported by the test, not lost in the thread
                problems.append(f"injecting {faults}: {exc!r}")

        def inject() -> None:
            for fraction, target in faults:
                wait_for(lambda f=fraction: moved(f), 180, f"{fraction:.0%} of the slots to move",
                         interval=0.05)
                if done.is_set():
                    last = progress[-1] if progress else None
                    problems.append(f"{shards} shards: done before {fraction:.0%} ({last})")
                    return
                if target.startswith("shard "):
                    shard = int(target.split()[1])
                    target = wait_for(lambda s=shard: _primary(name, base, s), 30,
                                      f"shard {shard}'s primary")
                # In this process, not through the CLI: the fault lands where the progress was seen.
                local.kill(base, name, target)
                killed.append(target)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        # A bounded rate and small chunks: each migration lasts long enough, and reports progress
        # often enough, to be hit in the middle.
        scale(base, name, shards, max_keys_per_second=500, chunk_slots=1024, progress=progress.append)
        done.set()
        thread.join(30)
        records[shards] = progress[-1]

    async def scenario() -> None:
        stop = asyncio.Event()
        stats = ClientStats()
        clients = [asyncio.create_task(run_client(i, spec, doc["endpoint"], history, stop, stats))
                   for i in range(spec.clients)]
        await asyncio.sleep(2.0)  # keys to move
        # Out: the source (shard 0) loses its primary, then a journal server goes.
        await asyncio.to_thread(resize, 3, [(0.25, "shard 0"), (0.6, "journal-a")])
        # In: a target (shard 1) loses its primary.
        await asyncio.to_thread(resize, 2, [(0.25, "shard 1")])
        stop.set()
        await asyncio.gather(*clients)
        final.update(await read_final(spec, doc["endpoint"], history, time.monotonic() + 60))

    asyncio.run(asyncio.wait_for(scenario(), 300))
    assert not problems, problems
    assert len(killed) == 3, f"a migration ended before its faults were all injected: {killed}"
    for shards, record in records.items():
        assert record.phase == "done" and record.to_shards == shards and record.keys_moved > 0, record
    unique = {k: v for k, v in final.items() if not spec.is_register(k)}
    loss = check_loss(loss_operations(history, spec), unique)
    assert loss.ok and loss.acknowledged > 100, loss.summary()
    verdict = check([op for op in history.operations if spec.is_register(op.key)])
    assert verdict.linearizable, verdict.summary()
    layout = {n["shard"]: n["slots"] for n in status(name, base)["nodes"] if n["role"] == "primary"}
    # Shard 2 gave its slots to the two others, which now hold half each.
    assert layout == {0: "0-5461,10923-13652", 1: "5462-10922,13653-16383"}, layout
