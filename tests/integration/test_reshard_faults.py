"""1 -> 3 -> 2 shards under the chaos workload, with primaries killed in the middle of each migration
(the source's while scaling out, the target's while scaling in): no acknowledged write is lost, every
register stays linearizable, and the slots end balanced over the remaining shards (docs/scaling.md)."""

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
from engram.platforms.local.scale import scale
from engram.platforms.local.testing import run_engram, status, wait_for
from engram.resharding.record import ReshardRecord

pytestmark = pytest.mark.integration


def _primary(name: str, base: str, shard: int) -> str:
    for node in status(name, base)["nodes"]:
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
    final: dict[str, Any] = {}

    def resize(shards: int, kill_shard: int) -> None:
        """Scale, killing kill_shard's primary once a quarter of the slots have moved."""
        progress: list[ReshardRecord] = []
        done = threading.Event()

        def killer() -> None:
            wait_for(lambda: done.is_set() or (progress and progress[-1].phase == "moving"
                                               and progress[-1].slots_moved >= progress[-1].slots_total // 4
                                               and progress[-1].slots_total > 0), 180,
                     f"a quarter of the slots to move to {shards} shards", interval=0.05)
            if done.is_set():
                return
            node = wait_for(lambda: _primary(name, base, kill_shard), 30, f"shard {kill_shard}'s primary")
            result = run_engram("local", "kill", name, "--dir", base, node)
            assert result.returncode == 0, result.stderr
            killed.append(node)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        # A bounded rate: each migration lasts long enough to be hit in the middle.
        scale(base, name, shards, max_keys_per_second=500, progress=progress.append)
        done.set()
        thread.join(30)
        records[shards] = progress[-1]

    async def scenario() -> None:
        stop = asyncio.Event()
        stats = ClientStats()
        clients = [asyncio.create_task(run_client(i, spec, doc["endpoint"], history, stop, stats))
                   for i in range(spec.clients)]
        await asyncio.sleep(2.0)  # keys to move
        await asyncio.to_thread(resize, 3, 0)  # out: the source (shard 0) loses its primary
        await asyncio.to_thread(resize, 2, 1)  # in: a target (shard 1) loses its primary
        stop.set()
        await asyncio.gather(*clients)
        final.update(await read_final(spec, doc["endpoint"], history, time.monotonic() + 60))

    asyncio.run(asyncio.wait_for(scenario(), 300))
    assert len(killed) == 2, f"a migration ended before its primary was killed: {killed}"
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
