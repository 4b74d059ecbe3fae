"""`engram local scale --replicas` on a real local cluster under the chaos workload: a new replica
starts in a zone its shard does not use and catches up, removed replicas stop and leave the status,
the primary stays, writes keep being acknowledged and none of them is lost (docs/local-platform.md)."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from engram.chaos.history import History, Kind, Outcome
from engram.chaos.loss import check_loss
from engram.chaos.workload import (
    ClientStats,
    WorkloadSpec,
    loss_operations,
    read_final,
    run_client,
    run_probe,
)
from engram.platforms.local import processes
from engram.platforms.local.testing import run_engram, status

pytestmark = pytest.mark.integration


def _scale(doc: dict[str, Any], replicas: int) -> subprocess.CompletedProcess:
    result = run_engram("local", "scale", doc["name"], "--dir", str(Path(doc["dir"]).parent),
                        "--replicas", str(replicas), "--json", timeout=120)
    print(result.stderr)  # the progress lines, shown when a test fails
    return result


def _longest_pause(history: History, start: int, end: int) -> float:
    """Seconds between acknowledged writes within [start, end] (the history's monotonic_ns clock),
    its edges included."""
    acked = sorted(op.complete for op in history.operations
                   if op.outcome is Outcome.OK and op.kind in (Kind.WRITE, Kind.APPEND)
                   and start <= op.complete <= end)
    marks = [start, *acked, end]
    return max(b - a for a, b in itertools.pairwise(marks)) / 1e9


def test_replicas_come_and_go_under_load_without_losing_an_acknowledged_write(local_cluster: Any) -> None:
    doc = local_cluster(shards=1, replicas=1, no_rebalance=True)
    base = str(Path(doc["dir"]).parent)
    before = {n["id"]: n for n in doc["nodes"]}
    spec = WorkloadSpec(prefix="rp", clients=4, keys=5, timeout=5.0, seed=13)
    history = History()
    results: dict[int, tuple[subprocess.CompletedProcess, int, int]] = {}
    final: dict[str, Any] = {}
    committed: list[int] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        stats = ClientStats()
        tasks = [asyncio.create_task(run_client(i, spec, doc["endpoint"], history, stop, stats))
                 for i in range(spec.clients)]
        tasks.append(asyncio.create_task(run_probe(spec, doc["endpoint"], history, stop)))
        await asyncio.sleep(1.0)  # history for the new replica to replay
        now = await asyncio.to_thread(status, doc["name"], base)
        committed.append(next(n["committed_seq"] for n in now["nodes"] if n["role"] == "primary"))
        for replicas in (2, 0):
            started = time.monotonic_ns()
            result = await asyncio.to_thread(_scale, doc, replicas)
            results[replicas] = (result, started, time.monotonic_ns())
            if result.returncode != 0:
                break
        await asyncio.sleep(0.5)  # writes after the last change, to the primary alone
        stop.set()
        await asyncio.gather(*tasks)
        final.update(await read_final(spec, doc["endpoint"], history, time.monotonic() + 30))

    asyncio.run(asyncio.wait_for(scenario(), 150))

    grown, start_up, end_up = results[2]
    assert grown.returncode == 0, grown.stderr
    up = json.loads(grown.stdout)
    added = [n for n in up["nodes"] if n["id"] not in before]
    assert [n["id"] for n in added] == [f"{doc['name']}-s0-n2"], up["nodes"]
    new = added[0]
    assert new["zone"] not in {n["zone"] for n in doc["nodes"]}, up["nodes"]
    assert new["role"] == "replica" and new["pid"], new
    primary = next(n for n in up["nodes"] if n["role"] == "primary")
    # Caught up: it has applied everything its shard had committed before it was asked for.
    assert new["applied_seq"] >= committed[0] > 0, (new, committed)
    assert "is a caught-up replica" in grown.stderr, grown.stderr

    shrunk, start_down, end_down = results[0]
    assert shrunk.returncode == 0, shrunk.stderr
    down = json.loads(shrunk.stdout)
    assert [(n["id"], n["role"]) for n in down["nodes"]] == [(primary["id"], "primary")], down["nodes"]
    assert down["replicas"] == 0
    gone = [n for n in up["nodes"] if n["id"] != primary["id"]]
    assert not [n["id"] for n in gone if processes.pid_alive(n["pid"])], "removed nodes still run"
    assert [n["id"] for n in status(doc["name"], base)["nodes"]] == [primary["id"]]

    # The same count again changes nothing.
    again = _scale(doc, 0)
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr

    unique = {k: v for k, v in final.items() if not spec.is_register(k)}
    loss = check_loss(loss_operations(history, spec), unique)
    assert loss.ok and loss.acknowledged > 100, loss.summary()
    pauses = {"adding": _longest_pause(history, start_up, end_up),
              "removing": _longest_pause(history, start_down, end_down)}
    # Neither change touches the primary: a pause is the loaded machine, not the scaling.
    assert max(pauses.values()) < 2.0, f"writes stalled: longest pauses between acknowledged writes {pauses}"
    print(f"longest pauses between acknowledged writes: {pauses}")
