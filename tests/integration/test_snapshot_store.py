"""The snapshot store on a real 3-server JetStream cluster: identity, upload and download with digests,
records and verification, pruning, refusal of corrupt data, and a journal server lost mid-transfer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import api
from nats.js.client import JetStreamContext

from engram.journal.client import META_CLUSTER_ID, Journal
from engram.journal.errors import IdentityMismatch, StreamMissing
from engram.orchestration.provision import ProvisionRequest, provision
from engram.platforms.local.journal import LocalJournal
from engram.snapshots.record import Position, SnapshotCorrupt, SnapshotError, SnapshotRecord
from engram.snapshots.store import CHUNK_SIZE, SnapshotStore, bucket_name

pytestmark = pytest.mark.integration

CLUSTER_ID = "c0ffee"
MB = 1024 * 1024
T = TypeVar("T")


def _run(coro: Awaitable[None], timeout: float = 120) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


async def _until(predicate: Callable[[], Awaitable[T]], timeout: float, what: str) -> T:
    """Poll an async predicate until it returns something truthy; fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


def _random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, MB))
            f.write(block)
            left -= len(block)
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record(path: Path, seq: int, shard: int = 0, verified: bool = False) -> SnapshotRecord:
    """The record of an RDB file taken at journal sequence seq (the data fields are placeholders)."""
    return SnapshotRecord(
        cluster_id=CLUSTER_ID, shard=shard, position=Position(seq, seq * 7, 1, seq + 1),
        digest=f"digest-{seq}", sha256=_sha256(path), size=path.stat().st_size, keys=seq,
        engine_version="1.0.0", valkey_version="8.1.0", created_at=1_700_000_000.5 + seq, verified=verified,
    )


async def _js(urls: list[str]) -> Journal:
    """A journal connection, used for its JetStream context (as nodes and provisioning do)."""
    return await Journal.connect(urls, "snaps", 0, replicas=3)


async def _connected_first_to(urls: list[str], first: str) -> NatsClient:
    """A client whose connection is to `first` until it fails, then to the others."""
    async def quiet(exc: Exception) -> None:
        pass  # the connection errors this test provokes on purpose

    return await nats.connect(
        servers=[first, *(u for u in urls if u != first)], dont_randomize=True, connect_timeout=2,
        reconnect_time_wait=0.25, max_reconnect_attempts=-1, ping_interval=2, max_outstanding_pings=3,
        error_cb=quiet,
    )


async def _leader_zone(journal: LocalJournal, js: JetStreamContext, stream: str) -> str:
    """The zone of the server leading the stream's Raft group."""
    async def leader() -> str | None:
        try:
            info = await js.stream_info(stream)
        except Exception:
            return None
        return info.cluster.leader if info.cluster else None

    name = await _until(leader, 20, f"a leader of {stream}")
    return next(s.zone for s in journal.servers if s.name == name)


async def _subject_counts(js: JetStreamContext, store: SnapshotStore, kind: str) -> dict[str, int]:
    """Messages per chunk (kind "C") or meta ("M") subject of the bucket's stream."""
    info = await js.stream_info(store.stream, subjects_filter=f"$O.{store.bucket}.{kind}.>")
    return dict(info.state.subjects or {})


async def _meta(js: JetStreamContext, store: SnapshotStore, record: SnapshotRecord) -> dict[str, Any]:
    subject = f"$O.{store.bucket}.M.{base64.urlsafe_b64encode(record.object_name.encode()).decode()}"
    msg = await js.get_last_msg(store.stream, subject)
    return json.loads(msg.data)


def test_create_is_idempotent_and_open_refuses_another_clusters_bucket(nats_journal, short_tmp) -> None:
    async def scenario() -> None:
        journal = await _js(nats_journal.urls)
        js = journal.jetstream
        try:
            first = await SnapshotStore.create(js, "idem", CLUSTER_ID, replicas=3)
            rdb = _random_file(short_tmp / "s.rdb", 1000)
            await first.put(_record(rdb, 5), str(rdb))
            again = await SnapshotStore.create(js, "idem", CLUSTER_ID, replicas=3)  # a re-run
            assert [r.seq for r in await again.records(0)] == [5]  # the re-run kept what was stored
            info = await js.stream_info(first.stream)
            assert info.config.num_replicas == 3 and info.config.storage == api.StorageType.FILE
            assert (info.config.metadata or {})[META_CLUSTER_ID] == CLUSTER_ID
            assert [s.config.name for s in await js.streams_info()] == [f"OBJ_{bucket_name('idem')}"]
            with pytest.raises(IdentityMismatch, match="belongs to cluster id 'c0ffee', not 'another'"):
                await SnapshotStore.open(js, "idem", "another")
            with pytest.raises(IdentityMismatch, match="belongs to cluster id 'c0ffee'"):
                await SnapshotStore.create(js, "idem", "another", replicas=3)
            opened = await SnapshotStore.open(js, "idem", CLUSTER_ID)
            assert [r.seq for r in await opened.records(0)] == [5]
        finally:
            await journal.close()

    _run(scenario())


def test_open_of_a_missing_bucket_raises_stream_missing_and_creates_nothing(nats_journal) -> None:
    async def scenario() -> None:
        journal = await _js(nats_journal.urls)
        try:
            with pytest.raises(StreamMissing, match="created by provisioning"):
                await SnapshotStore.open(journal.jetstream, "nowhere", CLUSTER_ID)
            assert await journal.jetstream.streams_info() == []
        finally:
            await journal.close()

    _run(scenario())


def test_provisioning_creates_the_snapshot_bucket_and_a_rerun_keeps_it(nats_journal, short_tmp) -> None:
    async def scenario() -> None:
        request = ProvisionRequest("prov", CLUSTER_ID, shards=2, replicas=3)
        await provision(nats_journal.urls, request, timeout=60)
        journal = await _js(nats_journal.urls)
        try:
            store = await SnapshotStore.open(journal.jetstream, "prov", CLUSTER_ID)
            rdb = _random_file(short_tmp / "p.rdb", 4096)
            await store.put(_record(rdb, 3, shard=1), str(rdb))
            await provision(nats_journal.urls, request, timeout=60)  # idempotent
            assert [r.seq for r in await store.records(1)] == [3]
            info = await journal.jetstream.stream_info(store.stream)
            assert info.config.num_replicas == 3
        finally:
            await journal.close()

    _run(scenario())


def test_put_records_and_fetch_round_trip_a_multi_megabyte_rdb(nats_journal, short_tmp) -> None:
    async def scenario() -> None:
        journal = await _js(nats_journal.urls)
        try:
            store = await SnapshotStore.create(journal.jetstream, "rt", CLUSTER_ID, replicas=3)
            rdb = _random_file(short_tmp / "dump.rdb", 5 * MB + 123)
            record = _record(rdb, 4242)
            await store.put(record, str(rdb))
            assert await store.records(0) == [record]
            assert await store.records(1) == []
            chunks = await _subject_counts(journal.jetstream, store, "C")
            chunks_each = -(-record.size // CHUNK_SIZE)
            assert list(chunks.values()) == [chunks_each]  # streamed in chunks
            out = short_tmp / "restore"
            out.mkdir()
            await store.fetch(record, str(out / "got.rdb"))
            assert _sha256(out / "got.rdb") == record.sha256
            assert (out / "got.rdb").stat().st_size == record.size
            assert [p.name for p in out.iterdir()] == ["got.rdb"]  # no temporary file left behind
            await store.put(record, str(rdb))  # replaced: the old chunks go
            assert await store.records(0) == [record]
            assert list((await _subject_counts(journal.jetstream, store, "C")).values()) == [chunks_each]
        finally:
            await journal.close()

    _run(scenario())


def test_records_are_newest_first_and_mark_verified_shows_in_them(nats_journal, short_tmp) -> None:
    async def scenario() -> None:
        journal = await _js(nats_journal.urls)
        try:
            store = await SnapshotStore.create(journal.jetstream, "ver", CLUSTER_ID, replicas=3)
            records = {}
            for seq in (10, 300, 20):  # stored out of order on purpose
                rdb = _random_file(short_tmp / f"{seq}.rdb", 10_000 + seq)
                records[seq] = _record(rdb, seq)
                await store.put(records[seq], str(rdb))
            other = _random_file(short_tmp / "other.rdb", 100)
            await store.put(_record(other, 999, shard=1), str(other))
            assert [r.seq for r in await store.records(0)] == [300, 20, 10]
            assert await store.newest_verified(0) is None

            marked = await store.mark_verified(records[20])
            assert marked == records[20].as_verified()
            listed = [(r.seq, r.verified) for r in await store.records(0)]
            assert listed == [(300, False), (20, True), (10, False)]
            assert await store.newest_verified(0) == marked
            assert await store.mark_verified(records[20]) == marked  # idempotent
            await store.mark_verified(records[300])
            assert (await store.newest_verified(0)).seq == 300
            # Marking rewrote metadata only: the object still downloads with its digest.
            await store.fetch(records[20], str(short_tmp / "20.back"))
            assert _sha256(short_tmp / "20.back") == records[20].sha256

            with pytest.raises(SnapshotError, match="holds another snapshot"):
                await store.mark_verified(replace(records[10], sha256="ab" * 32))
            await store.delete(records[10])
            with pytest.raises(SnapshotCorrupt, match="missing"):
                await store.mark_verified(records[10])
            assert [r.seq for r in await store.records(0)] == [300, 20]  # not brought back
        finally:
            await journal.close()

    _run(scenario())


def test_an_undecodable_record_is_skipped_when_listing(nats_journal, short_tmp, caplog) -> None:
    async def scenario() -> None:
        journal = await _js(nats_journal.urls)
        try:
            store = await SnapshotStore.create(journal.jetstream, "bad", CLUSTER_ID, replicas=3)
            good, bad = (_random_file(short_tmp / f"{n}.rdb", 2000) for n in ("good", "bad"))
            await store.put(_record(good, 1), str(good))
            await store.put(_record(bad, 2), str(bad))
            # Damage the second object's record in place, as a faulty writer could.
            meta = await _meta(journal.jetstream, store, _record(bad, 2))
            meta["headers"]["Engram-Snapshot-Record"] = ['{"cluster_id": "c0ffee", "shard": 0}']
            await store._publish_meta(_record(bad, 2).object_name, meta)
            assert [r.seq for r in await store.records(0)] == [1]
            assert "skipping object shard-0/00000000000000000002.rdb" in caplog.text
        finally:
            await journal.close()

    _run(scenario())


def test_fetch_of_a_record_whose_sha256_differs_fails_and_leaves_no_file(nats_journal, short_tmp) -> None:
    async def scenario() -> None:
        journal = await _js(nats_journal.urls)
        try:
            store = await SnapshotStore.create(journal.jetstream, "sha", CLUSTER_ID, replicas=3)
            rdb = _random_file(short_tmp / "a.rdb", MB)
            record = _record(rdb, 7)
            await store.put(record, str(rdb))
            out = short_tmp / "out"
            out.mkdir()
            dest = out / "restore.rdb"
            dest.write_bytes(b"a stale file that must not pass for the snapshot")
            wrong = replace(record, sha256="0" * 64)
            with pytest.raises(SnapshotCorrupt, match=r"shard-0/0+7\.rdb .*sha256 .*recorded 0{64}"):
                await store.fetch(wrong, str(dest))
            assert list(out.iterdir()) == []
            with pytest.raises(SnapshotCorrupt, match=r"size 1048576 bytes, recorded 5"):
                await store.fetch(replace(record, size=5), str(dest))
            assert list(out.iterdir()) == []
            missing = replace(record, position=replace(record.position, seq=8))
            with pytest.raises(SnapshotCorrupt, match=r"shard-0/0+8\.rdb is missing"):
                await store.fetch(missing, str(dest))
            assert list(out.iterdir()) == []
        finally:
            await journal.close()

    _run(scenario())


def test_fetch_detects_altered_or_missing_chunks(nats_journal, short_tmp) -> None:
    async def scenario() -> None:
        journal = await _js(nats_journal.urls)
        js = journal.jetstream
        try:
            store = await SnapshotStore.create(js, "alt", CLUSTER_ID, replicas=3)
            rdb = _random_file(short_tmp / "a.rdb", 3 * CHUNK_SIZE + 10)
            record = _record(rdb, 9)
            await store.put(record, str(rdb))
            meta = await _meta(js, store, record)
            subject = f"$O.{store.bucket}.C.{meta['nuid']}"
            # Replace the chunks by as many of the same sizes with one byte flipped: the meta
            # still claims the original digest, so only the downloaded bytes can tell.
            data = bytearray(rdb.read_bytes())
            data[CHUNK_SIZE + 5] ^= 0xFF
            await js.purge_stream(store.stream, subject=subject)
            for at in range(0, len(data), CHUNK_SIZE):
                await js.publish(subject, bytes(data[at:at + CHUNK_SIZE]))
            out = short_tmp / "out"
            out.mkdir()
            dest = out / "x.rdb"
            with pytest.raises(SnapshotCorrupt, match=r"downloaded object shard-0/0+9\.rdb .*sha256"):
                await store.fetch(record, str(dest))
            assert list(out.iterdir()) == []
            await js.purge_stream(store.stream, subject=subject)
            with pytest.raises(SnapshotCorrupt, match=r"has 0 of its 4 chunks"):
                await store.fetch(record, str(dest))
            assert list(out.iterdir()) == []  # neither the file nor a temporary one
        finally:
            await journal.close()

    _run(scenario())


def test_put_refuses_a_file_that_does_not_match_its_record(nats_journal, short_tmp) -> None:
    async def scenario() -> None:
        journal = await _js(nats_journal.urls)
        try:
            store = await SnapshotStore.create(journal.jetstream, "put", CLUSTER_ID, replicas=3)
            rdb = _random_file(short_tmp / "a.rdb", 50_000)
            record = _record(rdb, 3)
            mismatch = r"file .*a\.rdb does not match .*size 50000 bytes, recorded 49999$"
            with pytest.raises(SnapshotCorrupt, match=mismatch):
                await store.put(replace(record, size=49_999), str(rdb))
            with pytest.raises(SnapshotCorrupt, match=r"sha256 [0-9a-f]{64}, recorded f{64}"):
                await store.put(replace(record, sha256="f" * 64), str(rdb))
            with pytest.raises(SnapshotError, match="belongs to cluster id 'other'"):
                await store.put(replace(record, cluster_id="other"), str(rdb))
            with pytest.raises(SnapshotError, match="cannot read"):
                await store.put(record, str(short_tmp / "absent.rdb"))
            assert await store.records(0) == []
            assert await _subject_counts(journal.jetstream, store, "C") == {}  # nothing uploaded

            # A file that changes after its check (same size, other bytes) is caught as it is
            # uploaded, and its chunks are removed.
            upload = store._upload

            async def rewritten_first(*args: Any) -> str:
                _random_file(rdb, 50_000)
                return await upload(*args)

            store._upload = rewritten_first  # type: ignore[method-assign]
            with pytest.raises(SnapshotCorrupt, match=r"as uploaded \(it changed meanwhile\).*sha256"):
                await store.put(record, str(rdb))
            assert await store.records(0) == []
            assert await _subject_counts(journal.jetstream, store, "C") == {}
        finally:
            await journal.close()

    _run(scenario())


def test_prune_keeps_newest_verified_and_drops_older_and_stale_unverified(nats_journal, short_tmp) -> None:
    async def scenario() -> None:
        journal = await _js(nats_journal.urls)
        js = journal.jetstream
        try:
            store = await SnapshotStore.create(js, "prune", CLUSTER_ID, replicas=3)
            records = {}
            # seq: verified? 10 v, 20 u, 30 v, 40 u, 50 v, 60 u; and one verified of shard 1.
            for seq, verified in ((10, True), (20, False), (30, True), (40, False), (50, True), (60, False)):
                rdb = _random_file(short_tmp / f"{seq}.rdb", CHUNK_SIZE + seq)
                records[seq] = _record(rdb, seq)
                await store.put(records[seq], str(rdb))
                if verified:
                    records[seq] = await store.mark_verified(records[seq])
            other = _random_file(short_tmp / "o.rdb", 10)
            await store.put(_record(other, 5, shard=1), str(other))
            await store.mark_verified(_record(other, 5, shard=1))

            with pytest.raises(ValueError, match="at least one"):
                await store.prune(0, keep=0)
            deleted = await store.prune(0, keep=2)
            assert [r.seq for r in deleted] == [20, 10]
            assert [(r.seq, r.verified) for r in await store.records(0)] == [
                (60, False), (50, True), (40, False), (30, True)
            ]
            assert await store.prune(0, keep=2) == []
            assert [r.seq for r in await store.records(1)] == [5]  # another shard is untouched
            # Deleted objects leave neither chunks nor a tombstone behind.
            assert len(await _subject_counts(js, store, "M")) == 5
            assert sum((await _subject_counts(js, store, "C")).values()) == 4 * 2 + 1
            await store.delete(records[10])  # idempotent
            with pytest.raises(SnapshotCorrupt, match="missing"):
                await store.fetch(records[10], str(short_tmp / "gone.rdb"))
            assert [r.seq for r in await store.prune(0, keep=1)] == [40, 30]
            assert [r.seq for r in await store.records(0)] == [60, 50]
        finally:
            await journal.close()

    _run(scenario())


def test_a_journal_server_killed_mid_transfer_does_not_stop_put_or_fetch(nats_journal, short_tmp) -> None:
    """The server the client talks to, which also leads the bucket's stream, dies during an upload;
    then, with it back, the same happens during a download. R3 keeps both going."""

    async def scenario() -> None:
        setup = await _js(nats_journal.urls)
        store = await SnapshotStore.create(setup.jetstream, "kill", CLUSTER_ID, replicas=3)
        small = _random_file(short_tmp / "small.rdb", 5 * MB)
        big = _random_file(short_tmp / "big.rdb", 48 * MB)
        small_record, big_record = _record(small, 100), _record(big, 200)
        await store.put(small_record, str(small))
        zone = await _leader_zone(nats_journal, setup.jetstream, store.stream)
        await setup.close()

        nc = await _connected_first_to(nats_journal.urls, nats_journal.server(zone).url)
        js = nc.jetstream(timeout=5)
        client = await SnapshotStore.open(js, "kill", CLUSTER_ID)
        before = (await js.stream_info(store.stream)).state.bytes
        upload = asyncio.ensure_future(client.put(big_record, str(big)))

        async def upload_under_way() -> bool:
            return (await js.stream_info(store.stream)).state.bytes > before + 4 * MB

        await _until(upload_under_way, 30, "the upload to be under way")
        assert not upload.done(), "the upload finished before the server could be killed"
        await asyncio.to_thread(nats_journal.kill, zone)
        await asyncio.wait_for(upload, 90)
        assert [r.seq for r in await client.records(0)] == [200, 100]
        # Chunks were retried one by one, not the upload restarted: nothing is left over.
        assert sorted((await _subject_counts(js, store, "C")).values()) == [10, 96]
        await client.fetch(small_record, str(short_tmp / "small.back"))
        assert _sha256(short_tmp / "small.back") == small_record.sha256
        await nc.close()

        await asyncio.to_thread(nats_journal.restart, zone)
        await asyncio.to_thread(nats_journal.wait_ready, 30)
        probe = await _js(nats_journal.urls)
        zone = await _leader_zone(nats_journal, probe.jetstream, store.stream)
        await probe.close()
        nc = await _connected_first_to(nats_journal.urls, nats_journal.server(zone).url)
        client = await SnapshotStore.open(nc.jetstream(timeout=5), "kill", CLUSTER_ID)
        # Downloads run at hundreds of MB/s on loopback: slow the writer (our code, not NATS's)
        # to about a second for this file, so that the kill lands in the middle.
        write_chunk = client._write_chunk

        def slow_write(out: BinaryIO, h: Any, data: bytes) -> None:
            time.sleep(0.01)
            write_chunk(out, h, data)

        client._write_chunk = slow_write  # type: ignore[method-assign]
        out = short_tmp / "out"
        out.mkdir()
        download = asyncio.ensure_future(client.fetch(big_record, str(out / "big.back")))

        async def download_under_way() -> bool:
            return any(p.stat().st_size > 4 * MB for p in out.glob(".big.back.*.part"))

        await _until(download_under_way, 30, "the download to be under way")
        assert not download.done(), "the download finished before the server could be killed"
        await asyncio.to_thread(nats_journal.kill, zone)
        await asyncio.wait_for(download, 90)
        assert _sha256(out / "big.back") == big_record.sha256
        assert [p.name for p in out.iterdir()] == ["big.back"]
        await nc.close()

    _run(scenario(), timeout=240)
