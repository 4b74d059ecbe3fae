"""Primary rebalancing on a real local cluster: primaries pushed into one zone by switchovers go
back to one per zone, by planned switchovers the supervisor makes once the cluster settled."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from engram.platforms.local.testing import run_engram, status, wait_for

pytestmark = pytest.mark.integration


def _base(doc: dict[str, Any]) -> str:
    return str(Path(doc["dir"]).parent)


def _primary_zones(doc: dict[str, Any]) -> Counter[str]:
    return Counter(n["zone"] for n in status(doc["name"], _base(doc))["nodes"] if n["role"] == "primary")


def test_primaries_bunched_in_one_zone_are_spread_again(local_cluster: Any) -> None:
    doc = local_cluster(shards=3, replicas=1, rebalance_settle=10)
    wait_for(lambda: _primary_zones(doc) == {"a": 1, "b": 1, "c": 1}, 60, "one primary per zone at start")
    endpoint = redis.RedisCluster(host="127.0.0.1", port=int(doc["endpoint"].rsplit(":", 1)[1]),
                                  socket_timeout=5)
    keys = {f"k{i}": str(i) for i in range(30)}
    for key, value in keys.items():
        assert endpoint.set(key, value)
    # One replica per shard keeps the cluster small: a shard spans two zones, so the shard whose
    # replica is in zone a is handed there, and zone a holds two primaries.
    for node in status(doc["name"], _base(doc))["nodes"]:
        if node["zone"] == "a" and node["role"] == "replica":
            moved = run_engram("local", "failover", doc["name"], "--dir", _base(doc), "--shard",
                               str(node["shard"]), "--to", node["id"])
            assert moved.returncode == 0, moved.stderr
    # Roles must hold for 10 s before the supervisor acts, so this reads the bunched state.
    assert _primary_zones(doc)["a"] >= 2, _primary_zones(doc)
    # (The supervisor may already be moving one back: it acts once roles held for 10 s.)
    # It waits for roles to settle, then moves shards back, one at a time.
    wait_for(lambda: _primary_zones(doc) == {"a": 1, "b": 1, "c": 1}, 90,
             "the supervisor to spread primaries over zones again", interval=1.0)
    log = (Path(doc["dir"]) / "logs" / "supervisor.log").read_text()
    assert log.count("rebalancing primaries:") >= 1, log[-2000:]
    endpoint = redis.RedisCluster(host="127.0.0.1", port=int(doc["endpoint"].rsplit(":", 1)[1]),
                                  socket_timeout=5)
    assert {key: endpoint.get(key) for key in keys} == {k: v.encode() for k, v in keys.items()}

