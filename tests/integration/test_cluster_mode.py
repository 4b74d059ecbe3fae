"""Cluster mode: stock cluster clients against a 3-shard local cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import MovedError

from engram import binaries
from engram.cluster.slots import SLOTS, key_hash_slot
from engram.platforms.local.testing import wait_for
from tests.integration.workload import cli_status, client_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(local_cluster_module) -> dict:
    return local_cluster_module(shards=3, replicas=1, lease=2.0)


def _seed(status: dict) -> tuple[str, int]:
    host, port = status["nodes"][0]["address"].rsplit(":", 1)
    return host, int(port)


def _cluster_client(status: dict) -> RedisCluster:
    host, port = _seed(status)
    return RedisCluster(host=host, port=port, socket_timeout=10)


def _primaries(status: dict) -> dict[int, dict]:
    fresh = cli_status(status)
    return {n["shard"]: n for n in fresh["nodes"] if n["role"] == "primary"}


def _slot_owners(status: dict) -> dict[int, int]:
    """Slot -> shard, from CLUSTER SLOTS and the nodes' addresses."""
    shard_at = {n["address"]: n["shard"] for n in cli_status(status)["nodes"]}
    host, port = _seed(status)
    owners = {}
    for first, last, primary, *_ in redis.Redis(host=host, port=port).execute_command("CLUSTER", "SLOTS"):
        shard = shard_at[f"{primary[0].decode()}:{primary[1]}"]
        for slot in range(first, last + 1):
            owners[slot] = shard
    return owners


def test_redis_py_cluster_client_reads_and_writes_across_all_shards(cluster) -> None:
    client = _cluster_client(cluster)
    for i in range(600):
        client.set(f"key:{i}", i)
    assert [client.get(f"key:{i}") for i in range(600)] == [str(i).encode() for i in range(600)]
    owners = _slot_owners(cluster)
    assert {owners[key_hash_slot(f"key:{i}".encode())] for i in range(600)} == {0, 1, 2}

    pipe = client.pipeline()
    for i in range(300):
        pipe.incr(f"counter:{i}")
    assert pipe.execute() == [1] * 300

    assert client.mset_nonatomic({"{user:7}name": "ada", "{user:7}city": "london"})
    assert client.mget(["{user:7}name", "{user:7}city"]) == [b"ada", b"london"]
    node = client.get_node_from_key("{user:7}name")
    direct = redis.Redis(host=node.host, port=node.port)
    direct.sadd("{user:7}a", "x", "y")
    direct.sadd("{user:7}b", "y", "z")
    assert direct.sunionstore("{user:7}all", ["{user:7}a", "{user:7}b"]) == 3


def _normalise_slots(reply: list) -> list[tuple[int, int, str, tuple[str, ...]]]:
    out = []
    for first, last, primary, *replicas in reply:
        members = tuple(sorted(f"{r[0]}:{r[1]}" for r in replicas))
        out.append((first, last, f"{primary[0]}:{primary[1]}", members))
    return sorted(out)


def test_cluster_slots_cover_every_slot_once_and_every_node_agrees(cluster) -> None:
    views = []
    for node in cli_status(cluster)["nodes"]:
        views.append(_normalise_slots(client_for(node).execute_command("CLUSTER", "SLOTS")))
    assert all(view == views[0] for view in views), "nodes disagree on CLUSTER SLOTS"
    covered = [0] * SLOTS
    for first, last, _, replicas in views[0]:
        assert len(replicas) == 1, "each shard lists its replica"
        for slot in range(first, last + 1):
            covered[slot] += 1
    assert covered == [1] * SLOTS

    shards = client_for(cli_status(cluster)["nodes"][0]).execute_command("CLUSTER", "SHARDS")
    assert len(shards) == 3
    nodes_text = client_for(cli_status(cluster)["nodes"][1]).execute_command("CLUSTER", "NODES").decode()
    lines = nodes_text.strip().splitlines()
    assert len(lines) == 6 and sum("master" in line for line in lines) == 3
    assert sum("myself" in line for line in lines) == 1


def test_a_key_of_another_shard_is_redirected_never_executed(cluster) -> None:
    primaries = _primaries(cluster)
    shard0 = client_for(primaries[0])
    slots = shard0.execute_command("CLUSTER", "SLOTS")
    owner_of = {}
    for first, last, primary, *_ in slots:
        owner_of[(first, last)] = f"{primary[0].decode()}:{primary[1]}"
    foreign = next(
        f"foreign:{i}" for i in range(10000)
        if _owner_address(slots, key_hash_slot(f"foreign:{i}".encode())) != primaries[0]["address"]
    )
    with pytest.raises(MovedError) as moved:
        shard0.set(foreign, "x")
    assert moved.value.slot_id == key_hash_slot(foreign.encode())
    assert f"{moved.value.host}:{moved.value.port}" == _owner_address(slots, moved.value.slot_id)
    owner = next(n for n in cli_status(cluster)["nodes"]
                 if n["address"] == _owner_address(slots, key_hash_slot(foreign.encode())))
    assert client_for(owner).get(foreign) is None, "a redirected write must not have executed anywhere"
    with pytest.raises(redis.ResponseError, match="don't hash to the same slot"):
        shard0.execute_command("MSET", "a", "1", "b", "2")


def _owner_address(slots: list, slot: int) -> str:
    for first, last, primary, *_ in slots:
        if first <= slot <= last:
            return f"{primary[0].decode()}:{primary[1]}"
    raise AssertionError(slot)


def test_crossslot_inside_multi_dooms_the_transaction(cluster) -> None:
    primaries = _primaries(cluster)
    client = client_for(primaries[0])
    local = [k for k in (f"m:{i}" for i in range(5000)) if _is_local(client, k)][:2]
    assert key_hash_slot(local[0].encode()) != key_hash_slot(local[1].encode())
    pipe = client.pipeline(transaction=True)
    pipe.set(local[0], "1").set(local[1], "2")
    with pytest.raises(redis.ResponseError):
        pipe.execute()
    assert client.get(local[0]) is None


def _is_local(client: redis.Redis, key: str) -> bool:
    try:
        client.exists(key)
        return True
    except MovedError:
        return False


def test_valkey_cli_in_cluster_mode_follows_redirects(cluster) -> None:
    host, port = _seed(cluster)
    cli = binaries.find("valkey-cli")
    for i in range(20):
        out = subprocess.run([cli, "-c", "-h", host, "-p", str(port), "SET", f"cli:{i}", f"v{i}"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "OK", out
    for i in range(20):
        out = subprocess.run([cli, "-c", "-h", host, "-p", str(port), "GET", f"cli:{i}"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == f"v{i}"


def test_killing_one_shards_primary_loses_nothing_and_clients_follow(local_cluster) -> None:
    status = local_cluster(shards=3, replicas=1, lease=1.0)
    owners = _slot_owners(status)
    acked: dict[str, tuple[int, float]] = {}
    # The writers add to acked while the test reads it: a read must not see it change size.
    acked_lock = threading.Lock()
    stop = threading.Event()

    def write(index: int) -> None:
        n = 0
        mine = _cluster_client(status)
        while not stop.is_set():
            key = f"fo:{index}:{n}"
            try:
                mine.set(key, n)
                with acked_lock:
                    acked[key] = (n, time.monotonic())
            except redis.RedisError:
                time.sleep(0.05)
            n += 1

    def shards_writing_since(since: float) -> set[int]:
        with acked_lock:
            recent = [k for k, (_, at) in acked.items() if at > since]
        return {owners[key_hash_slot(k.encode())] for k in recent}

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    wait_for(lambda: shards_writing_since(started) == {0, 1, 2}, 30, "every shard to take writes first")
    victim = _primaries(status)[1]
    killed_at = time.monotonic()
    os.kill(victim["pid"], signal.SIGKILL)

    def shards_writing_after_kill() -> set[int]:
        return shards_writing_since(killed_at + 0.1)

    deadline = time.monotonic() + 30
    while (after := shards_writing_after_kill()) != {0, 1, 2} and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)

    assert _primaries(status)[1]["id"] != victim["id"]
    assert after == {0, 1, 2}, f"shards that took writes after the kill: {after}"
    client = _cluster_client(status)
    lost = [k for k, (v, _) in acked.items() if client.get(k) != str(v).encode()]
    assert lost == []
