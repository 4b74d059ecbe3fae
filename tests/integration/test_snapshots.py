"""Snapshots end to end on a local cluster: taken away from the primary, verified, the journal
truncated behind them, and nodes recovering from snapshot plus tail (issue 14)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from engram.journal.client import Journal
from engram.platforms.local.testing import run_engram, wait_for
from engram.snapshots.store import RECORD_HEADER, SnapshotStore
from tests.integration.workload import cli_status, client_for, control_for, control_status, primary_of
from tests.valkey_process import running_valkey

pytestmark = pytest.mark.integration


def _snapshot(status: dict, *extra: str) -> str:
    base = str(Path(status["dir"]).parent)
    result = run_engram("local", "snapshot", status["name"], "--dir", base, *extra, timeout=240)
    assert result.returncode == 0, f"engram local snapshot failed: {result.stderr}"
    return result.stderr


def _journal_bounds(status: dict, cluster_id: str) -> tuple[int, int]:
    async def read() -> tuple[int, int]:
        journal = await Journal.connect([j["url"] for j in status["journal"]], status["name"], 0)
        try:
            state = await journal.state()
            return state.first_seq, state.last_seq
        finally:
            await journal.close()

    return asyncio.run(read())


def _cluster_id(status: dict) -> str:
    config = Path(status["dir"]) / "nodes" / status["nodes"][0]["id"] / "node.json"
    return json.loads(config.read_text())["cluster_id"]


def _write(client: redis.Redis, prefix: str, count: int) -> dict[str, bytes]:
    pipe = client.pipeline(transaction=False)
    written = {}
    for i in range(count):
        key, value = f"{{t}}{prefix}:{i}", f"{prefix}-value-{i}".encode()
        pipe.set(key, value)
        written[key] = value
    pipe.hset("{t}hash", mapping={f"{prefix}-f{i}": i for i in range(50)})
    pipe.execute()
    return written


def _restart_and_wait(status: dict, node: dict) -> dict:
    """kill -9 a replica; the supervisor restarts it; wait until it has caught up with the primary."""
    old_pid = node["pid"]
    os.kill(old_pid, signal.SIGKILL)

    def caught_up() -> dict | None:
        nodes = cli_status(status)["nodes"]
        me = next(n for n in nodes if n["id"] == node["id"])
        primary = primary_of({"nodes": nodes})
        if me["pid"] == old_pid or me["role"] != "replica":
            return None
        fields = control_status(me)
        return me if int(fields["applied_seq"]) >= int(control_status(primary)["applied_seq"]) else None

    return wait_for(caught_up, 90, f"{node['id']} back and caught up")


def _read_on_replica(status: dict, node: dict, keys: list[str]) -> list[bytes | None]:
    """Read straight from the replica's Valkey, as the node itself does, so nothing redirects."""
    sock = Path(status["dir"]) / "nodes" / node["id"] / "valkey.sock"
    with redis.Redis(unix_socket_path=str(sock)) as conn:
        conn.execute_command("ENGRAM.INTERNAL")
        return [conn.get(key) for key in keys]


def test_a_replica_restarts_from_the_snapshot_and_the_tail_after_truncation(local_cluster) -> None:
    status = local_cluster(shards=1, replicas=2, log_level="info")
    cluster_id = _cluster_id(status)
    primary = primary_of(cli_status(status))
    with client_for(primary) as client:
        before = _write(client, "before", 2000)
        client.set("{t}ttl", "x", ex=3600)
        out = _snapshot(status)
        assert "verified" in out
        first, _ = _journal_bounds(status, cluster_id)
        assert first > 1, "the journal was not truncated behind the verified snapshot"
        after = _write(client, "after", 500)

    replica = next(n for n in cli_status(status)["nodes"] if n["role"] == "replica")
    back = _restart_and_wait(status, replica)
    written = {**before, **after}
    keys = sorted(written)
    assert _read_on_replica(status, back, keys) == [written[k] for k in keys]
    log = Path(back["log"]).read_text(errors="replace")
    assert "restored shard 0 from snapshot" in log


def test_a_corrupt_snapshot_is_skipped_for_an_older_one(local_cluster) -> None:
    status = local_cluster(shards=1, replicas=2, log_level="info")
    cluster_id = _cluster_id(status)
    primary = primary_of(cli_status(status))
    with client_for(primary) as client:
        first_batch = _write(client, "one", 300)
        _snapshot(status)
        second_batch = _write(client, "two", 300)
        _snapshot(status)
        third_batch = _write(client, "three", 300)

    async def corrupt_newest() -> int:
        journal = await Journal.connect([j["url"] for j in status["journal"]], status["name"], 0)
        try:
            store = await SnapshotStore.open(journal.jetstream, status["name"], cluster_id)
            newest, older = (await store.records(0))[:2]
            assert newest.verified and older.verified
            # The stored bytes no longer match what the record says of them, as after bit rot.
            meta, _ = await store._read_meta(newest.object_name)
            forged = replace(newest, sha256="0" * 64)
            meta["headers"] = {**meta["headers"], RECORD_HEADER: [forged.encode()]}
            await store._publish_meta(newest.object_name, meta)
            return older.seq
        finally:
            await journal.close()

    older_seq = asyncio.run(corrupt_newest())
    replica = next(n for n in cli_status(status)["nodes"] if n["role"] == "replica")
    back = _restart_and_wait(status, replica)
    written = {**first_batch, **second_batch, **third_batch}
    keys = sorted(written)
    assert _read_on_replica(status, back, keys) == [written[k] for k in keys]
    log = Path(back["log"]).read_text(errors="replace")
    assert "skipped" in log and f"from snapshot at entry {older_seq}" in log


def test_the_shard_takes_snapshots_on_its_own_and_a_failed_primary_recovers_from_one(local_cluster) -> None:
    """Past the tail threshold one replica takes a snapshot and truncates; after a kill -9 of the
    primary, the new primary has every write and the old one comes back from snapshot plus tail."""
    status = local_cluster(shards=1, replicas=2, log_level="info", snapshot_entries=60, snapshot_interval=0)
    cluster_id = _cluster_id(status)
    primary = primary_of(cli_status(status))
    written: dict[str, bytes] = {}
    with client_for(primary) as client:
        for i in range(150):  # one at a time: one journal entry each
            key, value = f"{{t}}auto:{i}", f"v{i}".encode()
            client.set(key, value)
            written[key] = value
    wait_for(lambda: _journal_bounds(status, cluster_id)[0] > 100, 120,
             "a snapshot taken by the shard itself and the journal truncated behind it")
    takers = [n for n in cli_status(status)["nodes"]
              if "snapshot of shard 0 at entry" in Path(n["log"]).read_text(errors="replace")]
    assert [n["role"] for n in takers] == ["replica"], "exactly one node, a replica, takes the snapshots"

    os.kill(primary["pid"], signal.SIGKILL)
    keys = sorted(written)

    def new_primary_serves() -> bool:
        node = primary_of(cli_status(status))
        with client_for(node, socket_timeout=2) as client:
            return node["id"] != primary["id"] and client.mget(keys) == [written[k] for k in keys]

    wait_for(new_primary_serves, 60, "a new primary serving every acknowledged write")
    def old_primary_back() -> dict | None:
        return next((n for n in cli_status(status)["nodes"] if n["id"] == primary["id"]
                     and n["role"] == "replica" and n["pid"] != primary["pid"]), None)

    back = wait_for(old_primary_back, 90, "the old primary back as a replica")
    log = Path(back["log"]).read_text(errors="replace")
    assert "restored shard 0 from snapshot" in log
    wait_for(lambda: _read_on_replica(status, back, keys) == [written[k] for k in keys], 60,
             "the old primary holding every write again")


def test_engram_snapshot_on_a_replicas_control_port_takes_one_and_the_primary_refuses(local_cluster) -> None:
    status = local_cluster(shards=1, replicas=1, snapshot_entries=0, snapshot_interval=0)
    nodes = cli_status(status)["nodes"]
    primary = primary_of({"nodes": nodes})
    replica = next(n for n in nodes if n["role"] == "replica")
    with client_for(primary) as client:
        client.set("k", "v")
    with control_for(primary) as control, pytest.raises(redis.ResponseError, match="never by the primary"):
        control.execute_command("ENGRAM.SNAPSHOT")
    with control_for(replica, socket_timeout=120) as control:
        reply = control.execute_command("ENGRAM.SNAPSHOT")
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    assert text.startswith("shard 0: snapshot at entry ") and text.endswith(" verified")
    seq = int(text.split("entry ")[1].split()[0])
    assert int(control_status(replica)["snapshot_seq"]) == seq
    # Every node learns of it, the primary too, within its status refresh.
    wait_for(lambda: control_status(primary)["snapshot_seq"] == str(seq), 40,
             "the primary's status naming it")
    assert next(n for n in cli_status(status)["nodes"] if n["id"] == replica["id"])["snapshot_seq"] == seq


def _rdb_file(directory: Path) -> tuple[Path, dict[str, bytes]]:
    """A dump.rdb written by a stock valkey-server: strings, a hash, a key with a time to live."""
    written = {f"user:{i}": f"value-{i}".encode() for i in range(3000)}
    with running_valkey() as (sock, data_dir), redis.Redis(unix_socket_path=str(sock)) as conn:
        conn.mset(written)
        conn.hset("profile", mapping={"name": "ada", "lang": "en"})
        conn.set("session", "s1", ex=3600)
        conn.set("gone", "x", px=1)  # expired before the save: Valkey drops it on load
        conn.save()
        target = directory / "seed.rdb"
        target.write_bytes((data_dir / "dump.rdb").read_bytes())
    return target, written


@pytest.mark.parametrize("shards", [1, 3])
def test_a_new_cluster_restores_an_rdb_file_into_any_shard_count(local_cluster, short_tmp: Path,
                                                                  shards: int) -> None:
    rdb, written = _rdb_file(short_tmp)
    status = local_cluster(shards=shards, replicas=1, restore_from=str(rdb))
    primary = primary_of(cli_status(status))
    host, port = primary["address"].rsplit(":", 1)
    with redis.RedisCluster(host=host, port=int(port)) as client:
        keys = sorted(written)
        assert [client.get(k) for k in keys] == [written[k] for k in keys]
        assert client.hgetall("profile") == {b"name": b"ada", b"lang": b"en"}
        assert 3500 < client.ttl("session") <= 3600
        assert client.get("gone") is None
        if shards > 1:
            owners = {n["shard"] for n in cli_status(status)["nodes"] if n["role"] == "primary"}
            assert owners == set(range(shards))
            per_shard = [int(client.execute_command("DBSIZE", target_nodes=node))
                         for node in client.get_primaries()]
            assert len(per_shard) == shards and all(n > 500 for n in per_shard), per_shard
        # The seeded data is a write like any other: new writes go on after it.
        client.set("user:0", "changed")
        assert client.get("user:0") == b"changed"
    # Provisioning snapshotted every shard before the nodes started: they loaded it rather than
    # replaying each seeded entry, and the seeded entries behind it could go.
    nodes = cli_status(status)["nodes"]
    assert all(n["snapshot_seq"] for n in nodes), nodes


def test_restore_refuses_a_file_that_is_not_an_rdb(local_cluster, short_tmp: Path) -> None:
    bogus = short_tmp / "bogus.rdb"
    bogus.write_bytes(b"this is not an rdb file")
    with pytest.raises(pytest.fail.Exception, match="restore failed"):
        local_cluster(shards=1, replicas=1, restore_from=str(bogus), timeout=60)


def test_engram_status_reports_snapshot_failures_and_a_success_clears_them(local_cluster) -> None:
    """ENGRAM.STATUS carries snapshot_failures and snapshot_error on every node: 0 and "" while
    no attempt failed, and again after a verified snapshot (the operator reads both)."""
    status = local_cluster(shards=1, replicas=1, snapshot_entries=0, snapshot_interval=0)
    nodes = cli_status(status)["nodes"]
    replica = next(n for n in nodes if n["role"] == "replica")
    for node in nodes:
        fields = control_status(node)
        assert (fields["snapshot_failures"], fields["snapshot_error"]) == ("0", ""), node["id"]
    with control_for(replica, socket_timeout=120) as control:
        control.execute_command("ENGRAM.SNAPSHOT")
    fields = control_status(replica)
    assert (fields["snapshot_failures"], fields["snapshot_error"]) == ("0", "")
