"""`engram local scale` on a real local cluster: shards are added and removed while a cluster client
writes, every acknowledged write survives, and clients see nothing but the redirections they follow."""

from __future__ import annotations

import json
import random
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import PRIMARY, ClusterNode, RedisCluster

from engram.cluster.slots import SLOTS
from engram.platforms.local import processes
from engram.platforms.local.testing import run_engram, status, wait_for

pytestmark = pytest.mark.integration

KEYS = 2000


class AskFollowingCluster(RedisCluster):
    """redis-py's cluster client, made to follow an ASK to a node it has not met.

    It learns nodes from CLUSTER SLOTS, which (as in Valkey) leaves a new shard's primary out until
    it owns a slot, and its ASK handling then dereferences None (redis-py#4015); the proposed fix
    (redis-py#4214) connects to the redirect target, as this does."""

    # A shard answers TRYAGAIN while it re-checks keys after a failed MIGRATE; redis-py's default
    # 16 tries last about 0.4 s, which a loaded two-core machine can outlast. An application would
    # retry too, so this client waits longer rather than reporting the moment as an error.
    RedisClusterRequestTTL = 48

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.strangers: dict[str, ClusterNode] = {}

    def get_node(self, host: str | None = None, port: int | None = None,
                 node_name: str | None = None) -> ClusterNode | None:
        node = super().get_node(host, port, node_name)
        if node is None and not node_name and host and port:
            node_name = f"{host}:{port}"  # redis-py 8.2 asks by host and port, earlier by name
        if node is None and node_name:
            if node_name not in self.strangers:
                address, number = node_name.rsplit(":", 1)
                self.strangers[node_name] = ClusterNode(address, int(number), PRIMARY)
            node = self.strangers[node_name]
        return node

    def _record_error_metric(self, error: Exception, connection: Any, *args: Any, **kwargs: Any) -> None:
        # redis-py 8.1 reads connection.host here even when the error came before any connection was
        # made (a node refusing while it starts), so an error it would retry becomes AttributeError.
        if connection is not None:
            super()._record_error_metric(error, connection, *args, **kwargs)

    def close(self) -> None:
        for node in self.strangers.values():
            if node.redis_connection is not None:
                node.redis_connection.close()
        super().close()


def _tls(ca: str) -> dict[str, Any]:
    """redis-py's options for a cluster that serves clients over TLS (ca: its CA), none for plain."""
    return {"ssl": True, "ssl_ca_certs": ca} if ca else {}


def _cluster_client(doc: dict[str, Any], ca: str = "") -> AskFollowingCluster:
    host, port = doc["endpoint"].rsplit(":", 1)
    return AskFollowingCluster(host=host, port=int(port), socket_timeout=10, socket_connect_timeout=5,
                               **_tls(ca))


@dataclass
class ClusterWriter:
    """One thread overwriting KEYS keys through redis-py's cluster client; remembers every
    acknowledged value, and the values of failed writes (they may or may not have happened)."""

    doc: dict[str, Any]
    # The cluster's CA when it serves clients over TLS; "" for plain TCP.
    ca: str = ""
    acked: dict[str, str] = field(default_factory=dict)
    unsure: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    errors: list[str] = field(default_factory=list)
    writes: int = 0
    # What the test is doing, for the error messages.
    phase: str = "before scaling"
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def preload(self) -> None:
        client = _cluster_client(self.doc, self.ca)
        pipe = client.pipeline()
        for i in range(KEYS):
            pipe.set(f"k{i}", "0")
        assert all(pipe.execute())
        self.acked = {f"k{i}": "0" for i in range(KEYS)}
        client.close()

    def start(self) -> ClusterWriter:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        client = _cluster_client(self.doc, self.ca)
        rng = random.Random(16)
        n = 0
        while not self._stop.is_set():
            n += 1
            key, value = f"k{rng.randrange(KEYS)}", str(n)
            try:
                client.set(key, value)
            except Exception as exc:  # redirections are followed inside redis-py: this is not one
                self.errors.append(f"{self.phase}: SET {key}: {exc!r}")
                self.unsure[key].add(value)
                continue
            self.acked[key] = value
            self.writes += 1
            self.unsure.pop(key, None)  # acknowledged later: an earlier failed write is overwritten
        client.close()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)

    def lost(self) -> list[str]:
        """Keys whose value is neither the last acknowledged one nor one of a failed write after it."""
        client = _cluster_client(self.doc, self.ca)
        pipe = client.pipeline()
        keys = sorted(self.acked)
        for key in keys:
            pipe.get(key)
        values = pipe.execute()
        client.close()
        return [f"{key}: read {got!r}, acknowledged {self.acked[key]!r}"
                for key, got in zip(keys, values, strict=True)
                if got is None or (got.decode() != self.acked[key] and got.decode() not in self.unsure[key])]


def _shards_seen(address: str, ca: str = "") -> dict[frozenset[str], int]:
    """CLUSTER SHARDS as one node tells it: each shard's node ids (the hostname field) and its slot count."""
    host, port = address.rsplit(":", 1)
    client = redis.Redis(host=host, port=int(port), socket_timeout=5, protocol=2, **_tls(ca))
    try:
        reply = client.execute_command("CLUSTER", "SHARDS")
    finally:
        client.close()
    seen = {}
    for shard in reply:
        fields = _pairs(shard)
        ranges = fields["slots"]
        slots = sum(int(ranges[i + 1]) - int(ranges[i]) + 1 for i in range(0, len(ranges), 2))
        names = frozenset(_text(_pairs(n)["hostname"]) for n in fields["nodes"])
        seen[names] = slots
    return seen


def _pairs(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return {_text(k): v for k, v in item.items()}
    return {_text(item[i]): item[i + 1] for i in range(0, len(item), 2)}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _layout_everywhere(doc: dict[str, Any], shards: int, ca: str = "") -> dict[str, Any] | None:
    """The cluster's status once every node tells the same CLUSTER SHARDS: `shards` shards, each of
    the nodes status lists for it, holding between them every slot as evenly as chunks allow."""
    current = status(doc["name"], str(Path(doc["dir"]).parent))
    members: dict[int, set[str]] = defaultdict(set)
    for node in current["nodes"]:
        members[node["shard"]].add(node["id"])
    if sorted(members) != list(range(shards)) or any(n["role"] not in ("primary", "replica")
                                                     for n in current["nodes"]):
        return None
    expected = {frozenset(ids) for ids in members.values()}
    for node in current["nodes"]:
        seen = _shards_seen(node["address"], ca)
        if set(seen) != expected or sum(seen.values()) != SLOTS or min(seen.values()) < SLOTS // shards - 1:
            return None
    return current


def _scale(doc: dict[str, Any], shards: int) -> dict[str, Any]:
    result = run_engram("local", "scale", doc["name"], "--dir", str(Path(doc["dir"]).parent),
                        "--shards", str(shards), "--json", timeout=180)
    assert result.returncode == 0, f"engram local scale --shards {shards} failed:\n{result.stderr}"
    assert "shards  moving" in result.stderr, result.stderr  # the progress line was shown
    return json.loads(result.stdout)


def test_shards_are_added_and_removed_while_a_cluster_client_writes(local_cluster: Any) -> None:
    doc = local_cluster(shards=1, replicas=1)
    base = str(Path(doc["dir"]).parent)
    writer = ClusterWriter(doc)
    writer.preload()
    writer.start()
    try:
        wait_for(lambda: writer.writes >= 50, 30, "the writer's first acknowledged writes")

        writer.phase = "scaling 1 -> 3"
        out = _scale(doc, 3)
        assert out["shards"] == 3 and out["resharding"]["phase"] == "done", out["resharding"]
        assert out["resharding"]["slots_moved"] > 0
        writer.phase = "after scaling to 3"
        wait_for(lambda: _layout_everywhere(doc, 3), 60, "every node to tell 3 shards in CLUSTER SHARDS")
        _writes_go_on(writer, "scaling to 3")
        removed = {n["id"]: n["pid"] for n in status(doc["name"], base)["nodes"] if n["shard"] == 2}
        assert len(removed) == 2
        # A snapshot of shard 2, which is removed next and added again at the end: the new shard 2
        # must not start from it (it holds keys that moved away long before).
        snap = run_engram("local", "snapshot", doc["name"], "--dir", base, "--shard", "2")
        assert snap.returncode == 0, snap.stderr

        writer.phase = "scaling 3 -> 2"
        out = _scale(doc, 2)
        assert out["shards"] == 2 and out["resharding"]["to_shards"] == 2, out["resharding"]
        writer.phase = "after scaling to 2"
        final = wait_for(lambda: _layout_everywhere(doc, 2), 60,
                         "every node to tell 2 shards in CLUSTER SHARDS")
        _writes_go_on(writer, "scaling to 2")
        gone = {n["id"]: n["pid"] for n in final["nodes"] if n["id"] in removed}

        writer.phase = "scaling 2 -> 3 again"
        out = _scale(doc, 3)
        assert out["resharding"]["phase"] == "done", out["resharding"]
        writer.phase = "after scaling to 3 again"
        wait_for(lambda: _layout_everywhere(doc, 3), 60, "every node to tell 3 shards again")
        again_nodes = [n for n in status(doc["name"], base)["nodes"] if n["shard"] == 2]
        assert all(n["snapshot_seq"] in ("", None) or int(n["snapshot_seq"]) <= int(n["applied_seq"])
                   for n in again_nodes), again_nodes
        _writes_go_on(writer, "scaling to 3 again")
    finally:
        writer.stop()

    assert gone == {}, final["nodes"]
    assert not any(processes.pid_alive(pid) for pid in removed.values())
    assert writer.errors == [], writer.errors[:10]
    assert writer.lost() == []
    again = run_engram("local", "scale", doc["name"], "--dir", base, "--shards", "3")
    assert again.returncode == 2 and "already has 3 shards" in again.stderr, again.stderr


def _writes_go_on(writer: ClusterWriter, after: str) -> None:
    before = writer.writes
    wait_for(lambda: writer.writes >= before + 50, 30, f"acknowledged writes after {after}")


def test_a_tls_cluster_reshards_while_a_tls_cluster_client_writes(local_cluster: Any) -> None:
    """With --tls every node serves clients over TLS only: the mover reaches them over TLS, and the
    source Valkeys MIGRATE to the targets' own ports behind their TLS fronts."""
    doc = local_cluster(shards=1, replicas=0, tls=True)
    ca = str(Path(doc["dir"]) / "tls" / "ca.pem")
    writer = ClusterWriter(doc, ca)
    writer.preload()
    writer.start()
    try:
        wait_for(lambda: writer.writes >= 50, 30, "the writer's first acknowledged writes")

        writer.phase = "scaling 1 -> 2"
        out = _scale(doc, 2)
        assert out["shards"] == 2 and out["resharding"]["phase"] == "done", out["resharding"]
        assert out["resharding"]["keys_moved"] > 0
        writer.phase = "after scaling to 2"
        wait_for(lambda: _layout_everywhere(doc, 2, ca), 60, "every node to tell 2 shards over TLS")
        _writes_go_on(writer, "scaling to 2")

        writer.phase = "scaling 2 -> 1"
        out = _scale(doc, 1)
        assert out["shards"] == 1 and out["resharding"]["phase"] == "done", out["resharding"]
        writer.phase = "after scaling to 1"
        wait_for(lambda: _layout_everywhere(doc, 1, ca), 60, "every node to tell 1 shard over TLS")
        _writes_go_on(writer, "scaling to 1")
    finally:
        writer.stop()

    assert writer.errors == [], writer.errors[:10]
    assert writer.lost() == []
