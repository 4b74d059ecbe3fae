"""Slots move between running shards under the chaos workload, with the source's primary and then the
target's primary killed in the middle of the migration: no acknowledged write is lost, every register
stays linearizable, and the slots end balanced (docs/scaling.md)."""

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
from engram.cluster.metadata import ClusterMetadata
from engram.cluster.topology import SlotMap
from engram.journal.client import Journal
from engram.platforms.local.testing import run_engram, status, wait_for
from engram.resharding.mover import MoveOptions
from engram.resharding.record import ReshardRecord
from engram.resharding.run import ReshardOptions, reshard

pytestmark = pytest.mark.integration


async def _all_slots_on_shard_0(urls: list[str], name: str) -> None:
    """The state right after a shard is added: shard 1 exists and owns nothing yet."""
    journal = await Journal.connect(urls, name, 0, 3, name="test")
    try:
        meta = await ClusterMetadata.open(journal.jetstream, name, await ClusterMetadata.identify(
            journal.jetstream, name))
        await meta.update_slot_map(lambda current: SlotMap([(0, 16383, 0)], 0, current.count))
    finally:
        await journal.close()


def _primary(doc: dict[str, Any], base: str, shard: int) -> str:
    for node in status(doc["name"], base)["nodes"]:
        if node["shard"] == shard and node["role"] == "primary":
            return str(node["id"])
    return ""


def test_slots_move_without_loss_while_source_and_target_primaries_are_killed(local_cluster: Any) -> None:
    doc = local_cluster(shards=2, replicas=1, no_rebalance=True)
    name, base = doc["name"], str(Path(doc["dir"]).parent)
    urls = [j["url"] for j in doc["journal"]]
    asyncio.run(_all_slots_on_shard_0(urls, name))
    wait_for(lambda: all(n["slots"] in ("0-16383", "") for n in status(name, base)["nodes"]), 30,
             "every node to take the slot map with all slots on shard 0")

    progress: list[ReshardRecord] = []
    killed: list[str] = []
    spec = WorkloadSpec(prefix="rs", clients=6, keys=5, timeout=5.0, seed=16)
    history = History()
    outcome: dict[str, Any] = {}

    async def scenario() -> None:
        stop = asyncio.Event()
        stats = ClientStats()
        clients = [asyncio.create_task(run_client(i, spec, doc["endpoint"], history, stop, stats))
                   for i in range(spec.clients)]
        await asyncio.sleep(2.0)  # keys to move
        # Small chunks at a bounded rate: the migration lasts long enough to be hit twice.
        options = ReshardOptions(move=MoveOptions(max_keys_per_second=150, batch_keys=20), chunk_slots=512)
        outcome["record"] = await reshard(urls, name, 2, progress=progress.append, options=options)
        stop.set()
        await asyncio.gather(*clients)
        outcome["final"] = await read_final(spec, doc["endpoint"], history, time.monotonic() + 60)

    def faults() -> None:
        # The source's primary once a few chunks moved, the target's a few chunks later.
        for shard, after in ((0, 1024), (1, 3072)):
            wait_for(lambda after=after: progress and progress[-1].slots_moved >= after, 120,
                     f"{after} slots to move", interval=0.05)
            node = wait_for(lambda shard=shard: _primary(doc, base, shard), 30, f"shard {shard}'s primary")
            result = run_engram("local", "kill", name, "--dir", base, node)
            assert result.returncode == 0, result.stderr
            killed.append(node)

    killer = threading.Thread(target=faults, daemon=True)
    killer.start()
    asyncio.run(asyncio.wait_for(scenario(), 240))
    killer.join(5)
    assert len(killed) == 2, f"the migration ended before both primaries were killed: {killed}"

    record: ReshardRecord = outcome["record"]
    assert record.phase == "done" and record.slots_moved == 8192, record
    assert record.keys_moved > 0
    unique = {k: v for k, v in outcome["final"].items() if not spec.is_register(k)}
    loss = check_loss(loss_operations(history, spec), unique)
    assert loss.ok and loss.acknowledged > 100, loss.summary()
    verdict = check([op for op in history.operations if spec.is_register(op.key)])
    assert verdict.linearizable, verdict.summary()
    layout = {n["shard"]: n["slots"] for n in status(name, base)["nodes"] if n["role"] == "primary"}
    assert layout == {0: "0-8191", 1: "8192-16383"}, layout
