"""The valkey-glide cluster client (PyPI `valkey-glide`), unchanged, against a 3-shard Engram cluster.

GLIDE discovers the cluster from one node's client address, routes every key to its shard's primary and
multiplexes all requests over one connection per node. What it wrote is read back through redis-py.
"""

from __future__ import annotations

import asyncio
from typing import Any

# valkey-glide is a test dependency (pyproject.toml): a missing install fails here, never skips.
import glide
import pytest
from redis.cluster import RedisCluster

from tests.integration.workload import cli_status

pytestmark = pytest.mark.integration

KEYS = [f"glide:{i}" for i in range(300)]
TAG = "{cart:7}"


@pytest.fixture(scope="module")
def cluster(local_cluster_module) -> dict:
    return local_cluster_module(shards=3, replicas=1, lease=2.0)


def _seed(status: dict) -> str:
    """One node's client address: a replica's, so GLIDE must find every primary from what it says."""
    return next(n for n in status["nodes"] if n["role"] == "replica")["address"]


async def _connect(status: dict) -> Any:
    """A GlideClusterClient seeded with one node's client address, as an application would configure it."""
    host, port = _seed(status).rsplit(":", 1)
    seed = glide.NodeAddress(host, int(port))
    config = glide.GlideClusterClientConfiguration([seed], request_timeout=10_000)
    return await glide.GlideClusterClient.create(config)


def _redis_py(status: dict) -> RedisCluster:
    host, port = _seed(status).rsplit(":", 1)
    return RedisCluster(host=host, port=int(port), socket_timeout=10)


async def _write_and_read(status: dict) -> dict[str, Any]:
    client = await _connect(status)
    try:
        assert await client.set(KEYS[0], "first") == glide.OK
        # Many requests in flight at once over GLIDE's multiplexed connections, to every shard.
        replies = await asyncio.gather(*(client.set(k, f"value-{i}") for i, k in enumerate(KEYS)))
        read = await asyncio.gather(*(client.get(k) for k in KEYS))
        # A multi-key read across shards: GLIDE splits it by slot and joins the replies.
        spread = await client.mget(KEYS[:50])
        # Multi-key commands on hash-tagged keys: one slot, one shard, one command.
        tagged = await client.mset({f"{TAG}a": "x", f"{TAG}b": "y", f"{TAG}c": "z"})
        tagged_read = await client.mget([f"{TAG}a", f"{TAG}b", f"{TAG}c"])
        await client.sadd(f"{TAG}s1", ["p", "q"])
        await client.sadd(f"{TAG}s2", ["q", "r"])
        union = await client.sunionstore(f"{TAG}all", [f"{TAG}s1", f"{TAG}s2"])
        # An atomic batch (MULTI/EXEC) on the tag's slot.
        batch = glide.ClusterBatch(is_atomic=True)
        batch.set(f"{TAG}n", "1")
        batch.incr(f"{TAG}n")
        batch.get(f"{TAG}n")
        transaction = await client.exec(batch, raise_on_error=True)
        return {"replies": replies, "read": read, "spread": spread, "tagged": tagged,
                "tagged_read": tagged_read, "union": union, "transaction": transaction}
    finally:
        await client.close()


def test_glide_cluster_client_works_unchanged_against_a_multi_shard_cluster(cluster) -> None:
    got = asyncio.run(_write_and_read(cluster))

    assert got["replies"] == [glide.OK] * len(KEYS)
    expected = [f"value-{i}".encode() for i in range(len(KEYS))]
    assert got["read"] == expected
    assert got["spread"] == expected[:50]
    assert got["tagged"] == glide.OK
    assert got["tagged_read"] == [b"x", b"y", b"z"]
    assert got["union"] == 3
    assert got["transaction"] == [glide.OK, 2, b"2"]

    # What GLIDE acknowledged is there for another client, and the keys really span every shard.
    rc = _redis_py(cluster)
    try:
        assert [rc.get(k) for k in KEYS] == expected
        assert rc.mget_nonatomic([f"{TAG}a", f"{TAG}b", f"{TAG}c"]) == [b"x", b"y", b"z"]
        assert rc.smembers(f"{TAG}all") == {b"p", b"q", b"r"}
        assert rc.get(f"{TAG}n") == b"2"
        shard_at = {n["address"]: n["shard"] for n in cli_status(cluster)["nodes"]}
        owners = {shard_at[f"{node.host}:{node.port}"] for node in map(rc.get_node_from_key, KEYS)}
        assert owners == {0, 1, 2}, "the keys must land on every shard"
    finally:
        rc.close()
