"""A new cluster restored from another cluster's snapshots, and snapshots exported as RDB files that
restore elsewhere: real local clusters, shared by the module (each start costs seconds)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from engram.journal.client import Journal
from engram.platforms.local.testing import run_engram
from engram.snapshots.record import SnapshotRecord
from engram.snapshots.store import SnapshotStore
from tests.integration.workload import cli_status, client_for, primary_of

pytestmark = pytest.mark.integration

Source = dict[str, Any]
Status = dict[str, Any]


def _base(status: dict) -> str:
    return str(Path(status["dir"]).parent)


def _urls(status: dict) -> list[str]:
    return [j["url"] for j in status["journal"]]


def _newest_record(status: dict) -> SnapshotRecord:
    config = Path(status["dir"]) / "nodes" / status["nodes"][0]["id"] / "node.json"
    cluster_id = json.loads(config.read_text())["cluster_id"]

    async def read() -> SnapshotRecord:
        journal = await Journal.connect(_urls(status), status["name"], 0)
        try:
            store = await SnapshotStore.open(journal.jetstream, status["name"], cluster_id)
            record = await store.newest_verified(0)
            assert record is not None
            return record
        finally:
            await journal.close()

    return asyncio.run(read())


@pytest.fixture(scope="module")
def source(local_cluster_module: Callable[..., dict[str, Any]]) -> Source:
    """A 1-shard cluster with keys (one with a time to live), a verified snapshot of them, and a key
    written after it that no restore may bring."""
    status = local_cluster_module(shards=1, replicas=1, snapshot_entries=0, snapshot_interval=0)
    written = {f"user:{i}": f"value-{i}".encode() for i in range(400)}
    with client_for(primary_of(cli_status(status))) as client:
        pipe = client.pipeline(transaction=False)  # one SET per key: MSET across slots is refused
        for key, value in written.items():
            pipe.set(key, value)
        pipe.hset("profile", mapping={"name": "ada", "lang": "en"})
        pipe.set("session", "s1", ex=3600)
        pipe.execute()
        taken = run_engram("local", "snapshot", status["name"], "--dir", _base(status), timeout=240)
        assert taken.returncode == 0, taken.stderr
        client.set("late", "after the snapshot")
    return {"status": status, "written": written, "start": local_cluster_module}


def _check_restored(status: dict, written: dict[str, bytes], shards: int) -> None:
    primary = primary_of(cli_status(status))
    host, port = primary["address"].rsplit(":", 1)
    with redis.RedisCluster(host=host, port=int(port)) as client:
        keys = sorted(written)
        assert [client.get(k) for k in keys] == [written[k] for k in keys]
        assert client.hgetall("profile") == {b"name": b"ada", b"lang": b"en"}
        assert 3000 < client.ttl("session") <= 3600
        assert client.get("late") is None, "the restore took data written after the snapshot"
        # Every key was read from the shard owning its slot above; no shard holds any other key.
        primaries = client.get_primaries()
        per_shard = [int(client.execute_command("DBSIZE", target_nodes=node)) for node in primaries]
        assert len(per_shard) == shards and sum(per_shard) == len(written) + 2, per_shard
        assert all(n > 0 for n in per_shard), per_shard


@pytest.fixture(scope="module")
def restored(source: Source) -> Status:
    """A 3-shard cluster restored from the source's snapshots; without replicas it takes none itself."""
    return source["start"](shards=3, replicas=0, restore_from_cluster=source["status"]["name"])


def test_three_shards_restore_a_one_shard_clusters_snapshots(source: Source, restored: Status) -> None:
    _check_restored(restored, source["written"], 3)


def test_export_writes_the_verified_snapshots_which_restore_into_a_new_cluster(source: Source,
                                                                               tmp_path: Path) -> None:
    src = source["status"]
    out = tmp_path / "export"
    result = run_engram("local", "snapshot", src["name"], "--dir", _base(src), "--export", str(out),
                        timeout=120)
    assert result.returncode == 0, result.stderr
    record = _newest_record(src)
    exported = out / f"{src['name']}-shard0-seq{record.seq}.rdb"
    assert [p.name for p in out.iterdir()] == [exported.name]
    assert hashlib.sha256(exported.read_bytes()).hexdigest() == record.sha256
    assert str(exported) in result.stdout and record.sha256 in result.stdout
    status = source["start"](shards=2, replicas=0, restore_from=str(exported))
    _check_restored(status, source["written"], 2)


def test_provision_restores_from_a_cluster_on_other_journal_servers(source: Source, restored: Status) -> None:
    """The operator's path: `engram provision` with the source's journal given apart from the new one
    (the new cluster's streams go to the restored cluster's journal servers)."""
    src, target = source["status"], restored
    argv = ["provision", "--cluster", "copy", "--cluster-id", "copy-id", "--shards", "2", "--journal",
            ",".join(_urls(target)), "--restore-from-cluster", src["name"], "--restore-journal",
            ",".join(_urls(src)), "--timeout", "30"]
    first = run_engram(*argv, timeout=120)
    assert first.returncode == 0, first.stderr

    async def seeded() -> list[tuple[int, int]]:
        """Each shard's (last, first) entry: seeded, then truncated behind provisioning's first snapshot."""
        journal = await Journal.connect(_urls(target), "copy", 0)
        try:
            states = [await journal.for_shard(shard).state() for shard in range(2)]
            return [(state.last_seq, state.first_seq) for state in states]
        finally:
            await journal.close()

    before = asyncio.run(seeded())
    assert all(last > 1 and first > last for last, first in before), before
    again = run_engram(*argv, timeout=120)
    assert again.returncode == 0 and "seeded by an earlier run" in again.stderr, again.stderr
    assert asyncio.run(seeded()) == before


def test_a_source_without_snapshots_or_an_unknown_one_is_refused(source: Source, restored: Status) -> None:
    src = source["status"]
    journal = ",".join(_urls(src))

    def provision(cluster: str, restore: str, journal_urls: str) -> Any:
        return run_engram("provision", "--cluster", cluster, "--shards", "1", "--journal", journal,
                          "--restore-from-cluster", restore, "--restore-journal", journal_urls, timeout=120)

    # A cluster provisioned but never snapshotted (a restored one is snapshotted by its provisioning).
    made = run_engram("provision", "--cluster", "fresh", "--shards", "3", "--journal", journal, timeout=120)
    assert made.returncode == 0, made.stderr
    bare = provision("fromfresh", "fresh", journal)
    assert bare.returncode == 3, bare.stderr
    hint = "of shards 0, 1, 2: take one first with `engram local snapshot fresh`"
    assert hint in bare.stderr, bare.stderr
    unknown = provision("fromnothing", "nosuch", journal)
    assert unknown.returncode == 3 and "no cluster nosuch on the journal" in unknown.stderr, unknown.stderr
    itself = provision(src["name"], src["name"], journal)
    assert itself.returncode == 3 and "cannot be restored from itself" in itself.stderr, itself.stderr

    up = run_engram("local", "up", "fromnothing", "--dir", _base(src), "--restore-from-cluster", "nosuch",
                    timeout=60)
    assert up.returncode == 1 and "--restore-from-cluster nosuch: cluster nosuch is not running" in up.stderr
    assert not (Path(_base(src)) / "fromnothing").exists()
