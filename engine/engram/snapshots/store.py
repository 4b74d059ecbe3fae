"""Snapshot storage: a per-cluster JetStream object store bucket of RDB files and their records.

Each object is one shard's RDB at a journal position; its SnapshotRecord (JSON) rides in the
object's meta headers, so listing reads metadata only. The bucket is created by provisioning and
carries the cluster id, like the journal streams; nodes only open it.

The object store's wire format (ADR-20) is written and read here rather than through nats-py's
ObjectStore, whose operations have no timeouts, restart a whole upload on one lost chunk ack,
leak their subscription when cancelled, and update metadata without a compare-and-set. Other
clients (the nats CLI, Go) still read the bucket as an ordinary object store.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.kv import MSG_ROLLUP_SUBJECT
from nats.js.object_store import (
    OBJ_ALL_CHUNKS_PRE_TEMPLATE,
    OBJ_ALL_META_PRE_TEMPLATE,
    OBJ_CHUNKS_PRE_TEMPLATE,
    OBJ_DIGEST_TYPE,
    OBJ_META_PRE_TEMPLATE,
    OBJ_STREAM_TEMPLATE,
)

from engram.journal.client import (
    META_CLUSTER_ID,
    STREAM_NAME_IN_USE,
    WRONG_LAST_SEQUENCE,
    _translate,
    wait_for_stream_leader,
)
from engram.journal.errors import (
    Fenced,
    IdentityMismatch,
    JournalError,
    JournalTimeout,
    NoQuorum,
    StreamMissing,
)
from engram.snapshots.record import SnapshotCorrupt, SnapshotError, SnapshotRecord

log = logging.getLogger(__name__)
T = TypeVar("T")

# The object meta header that holds the record's JSON. Values are lists: Go clients decode
# object headers as map[string][]string and would reject the whole meta otherwise.
RECORD_HEADER = "Engram-Snapshot-Record"
# Under the server's 1 MiB max_payload, and few enough chunks (~200 for a 100 MB RDB) that
# waiting for each chunk's quorum acknowledgement does not dominate the upload.
CHUNK_SIZE = 512 * 1024
DUPLICATE_WINDOW = 120.0
_READ_SIZE = 1024 * 1024
_NAME_OK = re.compile(r"^[A-Za-z0-9_-]+$")


def bucket_name(cluster: str) -> str:
    """The cluster's snapshot bucket; its stream is OBJ_<bucket>."""
    if not _NAME_OK.match(cluster):
        raise ValueError(f"cluster name {cluster!r} may only hold letters, digits, '-' and '_'")
    return f"ENGRAM_SNAP_{cluster}"


def _file_digest(path: str) -> tuple[int, str]:
    """Size and SHA-256 (hex) of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_READ_SIZE):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _digest_hex(digest: str | None) -> str:
    """An object store digest ("SHA-256=<base64url>") as lower-case hex, "" if absent or odd."""
    if not digest or not digest.upper().startswith(OBJ_DIGEST_TYPE.upper()):
        return ""
    encoded = digest[len(OBJ_DIGEST_TYPE):]
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).hex()
    except ValueError:
        return ""


def _record_of(meta: dict[str, Any]) -> SnapshotRecord:
    """The record an object's meta carries; SnapshotCorrupt if it has none or it is unreadable."""
    value = (meta.get("headers") or {}).get(RECORD_HEADER)
    if isinstance(value, list):
        value = value[0] if value else None
    if not isinstance(value, str):
        raise SnapshotCorrupt(f"object {meta.get('name')!r} carries no snapshot record")
    return SnapshotRecord.decode(value)


@contextlib.contextmanager
def _journal_errors(what: str) -> Iterator[None]:
    """Turn any NATS failure into a JournalError that says what was being done."""
    try:
        yield
    except (JournalError, SnapshotError):
        raise
    except Exception as exc:
        error = _translate(exc, None)
        if isinstance(error, Fenced):  # its constructor takes sequences, not a message
            raise error from exc
        raise type(error)(f"{what}: {error}") from exc


class SnapshotStore:
    """A cluster's snapshots in a JetStream object store bucket; safe to share between tasks."""

    def __init__(
        self, js: JetStreamContext, cluster: str, cluster_id: str,
        patience: float = 60.0, stall: float = 20.0,
    ) -> None:
        if patience >= DUPLICATE_WINDOW:
            raise ValueError(f"patience must stay under the {DUPLICATE_WINDOW:.0f}s duplicate window")
        self._js = js
        self.cluster = cluster
        self.cluster_id = cluster_id
        self.bucket = bucket_name(cluster)
        self.stream = OBJ_STREAM_TEMPLATE.format(bucket=self.bucket)
        # How long an operation retries while the journal has no quorum or does not answer.
        self.patience = patience
        # How long a download waits for its next chunk before it starts again.
        self.stall = stall

    # -- provisioning and identity --------------------------------------------------------

    @classmethod
    async def create(
        cls, js: JetStreamContext, cluster: str, cluster_id: str, replicas: int, **options: float
    ) -> SnapshotStore:
        """Provisioning only: create the bucket, owned by cluster_id (idempotent), and open it."""
        store = cls(js, cluster, cluster_id, **options)
        # Built by hand rather than by create_object_store: that API can set neither stream
        # metadata (the owner's id) nor allow_direct=False.
        config = api.StreamConfig(
            name=store.stream,
            description=f"Engram snapshots of cluster {cluster} (id {cluster_id})",
            subjects=[
                OBJ_ALL_CHUNKS_PRE_TEMPLATE.format(bucket=store.bucket),
                OBJ_ALL_META_PRE_TEMPLATE.format(bucket=store.bucket),
            ],
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            discard=api.DiscardPolicy.NEW,
            allow_rollup_hdrs=True,
            # Every read goes to the stream leader: a lagging replica must not answer with an
            # old record (e.g. one not yet marked verified, or an object already deleted).
            allow_direct=False,
            # Chunks carry message ids so that a retried publish lands once: the window must
            # outlast a put's retries (patience).
            duplicate_window=DUPLICATE_WINDOW,
            metadata={META_CLUSTER_ID: cluster_id},
        )
        async def _add() -> None:
            # A retry after a timeout is safe: the stream then exists, with this configuration.
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != STREAM_NAME_IN_USE:
                    raise
                # Held already: by this cluster (a re-run of provisioning) or by another; checked next.

        await store._retrying(f"creating snapshot bucket {store.bucket}", _add)
        await store._check_identity()
        return store

    @classmethod
    async def open(
        cls, js: JetStreamContext, cluster: str, cluster_id: str, **options: float
    ) -> SnapshotStore:
        """A node's handle on the provisioned bucket; never creates it."""
        store = cls(js, cluster, cluster_id, **options)
        await store._check_identity()
        return store

    async def _check_identity(self) -> None:
        async def _info() -> api.StreamInfo:
            try:
                return await self._js.stream_info(self.stream)
            except nats.js.errors.NotFoundError:
                raise StreamMissing(
                    f"snapshot bucket {self.bucket} not found: it is created by provisioning, not by nodes"
                ) from None

        info = await self._retrying(f"opening snapshot bucket {self.bucket}", _info)
        owner = (info.config.metadata or {}).get(META_CLUSTER_ID)
        if owner != self.cluster_id:
            raise IdentityMismatch(
                f"snapshot bucket {self.bucket} belongs to cluster id {owner!r}, not {self.cluster_id!r}"
            )
        await wait_for_stream_leader(self._js, self.stream, 10.0)

    # -- the interface ----------------------------------------------------------------------

    async def put(self, record: SnapshotRecord, rdb_path: str) -> None:
        """Upload rdb_path, which must match the record's size and SHA-256, as the record's object.

        Replaces an object of the same name; visible once complete; a failed upload leaves nothing."""
        name = record.object_name
        if record.cluster_id != self.cluster_id:
            raise SnapshotError(
                f"snapshot {name} belongs to cluster id {record.cluster_id!r}, not to this bucket's "
                f"{self.cluster_id!r}"
            )
        try:
            size, sha256 = await asyncio.get_running_loop().run_in_executor(None, _file_digest, rdb_path)
        except OSError as exc:
            raise SnapshotError(f"cannot read {rdb_path} to upload as {name}: {exc}") from exc
        _check_matches(record, size, sha256, f"file {rdb_path}")
        nuid = uuid.uuid4().hex
        try:
            previous = await self._upload(record, rdb_path, nuid)
        except BaseException:
            await asyncio.shield(self._abandon(name, nuid))
            raise
        if previous and previous != nuid:
            # The object replaced an older one of the same name: its chunks are garbage now.
            try:
                await self._retrying(f"purging the replaced chunks of {name}",
                                     lambda: self._purge(self._chunk_subject(previous)))
            except JournalError as exc:
                log.warning("snapshot bucket %s: chunks %s of the replaced %s stay behind: %s",
                            self.bucket, previous, name, exc)

    async def mark_verified(self, record: SnapshotRecord) -> SnapshotRecord:
        """Rewrite the stored record with verified=True (metadata only); returns the stored record."""
        name = record.object_name
        wanted = replace(record, verified=False)

        async def _mark() -> SnapshotRecord:
            for _ in range(10):
                found = await self._read_meta(name)
                if found is None or found[0].get("deleted"):
                    raise SnapshotCorrupt(f"snapshot object {name} is missing from bucket {self.bucket}")
                meta, seq = found
                stored = _record_of(meta)
                if replace(stored, verified=False) != wanted:
                    raise SnapshotError(
                        f"snapshot object {name} holds another snapshot (sha256 {stored.sha256}, taken "
                        f"at {stored.created_at}) than the one being marked verified "
                        f"(sha256 {record.sha256}, taken at {record.created_at})"
                    )
                if stored.verified:
                    return stored  # marked already (e.g. a retry whose first try landed)
                verified = stored.as_verified()
                meta["headers"] = {**(meta.get("headers") or {}), RECORD_HEADER: [verified.encode()]}
                try:
                    # Conditional on the meta read: a concurrent delete or re-upload wins, and
                    # a deleted object is never brought back with its chunks gone.
                    await self._publish_meta(name, meta, expected_seq=seq)
                except nats.js.errors.APIError as exc:
                    if exc.err_code == WRONG_LAST_SEQUENCE:
                        continue
                    raise
                return verified
            raise SnapshotError(f"could not mark {name} verified: its metadata kept changing")

        return await self._retrying(f"marking {name} verified", _mark)

    async def records(self, shard: int) -> list[SnapshotRecord]:
        """Every stored record of the shard, newest (highest sequence) first."""
        return await self._retrying(f"listing snapshots of shard {shard}", lambda: self._records(shard))

    async def newest_verified(self, shard: int) -> SnapshotRecord | None:
        """The shard's newest snapshot that passed its rehearsal restore, if any."""
        return next((r for r in await self.records(shard) if r.verified), None)

    async def fetch(self, record: SnapshotRecord, dest_path: str) -> None:
        """Download the record's object to dest_path (via a temporary file), checked against the
        record's size and SHA-256; on failure nothing is left at dest_path."""
        dest = Path(dest_path)
        try:
            await self._retrying(f"fetching {record.object_name}", lambda: self._fetch(record, dest))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()  # a stale file there must not pass for this snapshot
            raise

    async def delete(self, record: SnapshotRecord) -> None:
        """Delete the record's object (its chunks and metadata); deleting a missing one is a no-op."""
        await self._retrying(f"deleting {record.object_name}", lambda: self._delete(record.object_name))

    async def prune(self, shard: int, keep: int) -> list[SnapshotRecord]:
        """Keep the newest `keep` verified snapshots; delete older verified ones and every unverified
        one older than the oldest kept. Returns what was deleted, newest first."""
        if keep < 1:
            # The journal is truncated up to the newest verified snapshot: removing them all
            # would leave nothing to recover from.
            raise ValueError(f"prune must keep at least one verified snapshot, got keep={keep}")
        records = await self.records(shard)
        kept = [r for r in records if r.verified][:keep]
        if not kept:
            return []
        oldest_kept = kept[-1].seq
        doomed = [r for r in records if r.seq < oldest_kept]
        for record in doomed:
            await self.delete(record)
        return doomed

    # -- internals ---------------------------------------------------------------------------

    async def _retrying(
        self, what: str, attempt: Callable[[], Awaitable[T]], patience: float | None = None
    ) -> T:
        """Retry while the journal has no quorum or does not answer, up to `patience` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.patience if patience is None else patience)
        delay = 0.1
        while True:
            try:
                with _journal_errors(what):
                    return await attempt()
            except (NoQuorum, JournalTimeout) as exc:
                if loop.time() + delay > deadline:
                    raise
                log.info("%s waits for the journal: %s", what, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _meta_subject(self, name: str) -> str:
        encoded = base64.urlsafe_b64encode(name.encode()).decode()
        return OBJ_META_PRE_TEMPLATE.format(bucket=self.bucket, obj=encoded)

    def _chunk_subject(self, nuid: str) -> str:
        return OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self.bucket, obj=nuid)

    async def _read_meta(self, name: str) -> tuple[dict[str, Any], int] | None:
        """An object's meta (raw, to keep fields nats-py does not know) and its stream sequence."""
        return await self._read_meta_subject(self._meta_subject(name))

    async def _read_meta_subject(self, subject: str) -> tuple[dict[str, Any], int] | None:
        try:
            msg = await self._js.get_last_msg(self.stream, subject, direct=False)
        except nats.js.errors.NotFoundError:
            return None
        try:
            meta = json.loads(msg.data or b"")
        except ValueError as exc:
            raise SnapshotCorrupt(f"unreadable object metadata on {subject}: {exc}") from None
        if not isinstance(meta, dict):
            raise SnapshotCorrupt(f"unreadable object metadata on {subject}: not an object")
        return meta, msg.seq or 0

    async def _publish_meta(self, name: str, meta: dict[str, Any], expected_seq: int | None = None) -> None:
        headers = {api.Header.ROLLUP: MSG_ROLLUP_SUBJECT}
        if expected_seq is not None:
            headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected_seq)
        await self._js.publish(self._meta_subject(name), json.dumps(meta).encode(), headers=headers)

    async def _records(self, shard: int) -> list[SnapshotRecord]:
        info = await self._js.stream_info(
            self.stream, subjects_filter=OBJ_ALL_META_PRE_TEMPLATE.format(bucket=self.bucket)
        )
        prefix = f"shard-{shard}/"
        found: list[SnapshotRecord] = []
        for subject in sorted(info.state.subjects or {}):
            token = subject.rsplit(".", 1)[-1]
            try:
                name = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            except ValueError:
                log.warning("snapshot bucket %s: skipping meta subject %s with an undecodable name",
                            self.bucket, subject)
                continue
            if not name.startswith(prefix):
                continue  # read only this shard's metadata
            try:
                read = await self._read_meta_subject(subject)
                if read is None or read[0].get("deleted"):
                    continue
                record = _record_of(read[0])
            except SnapshotCorrupt as exc:
                log.warning("snapshot bucket %s: skipping object %s: %s", self.bucket, name, exc)
                continue
            if record.object_name != name or record.cluster_id != self.cluster_id:
                log.warning(
                    "snapshot bucket %s: skipping object %s: its record names %s of cluster id %r",
                    self.bucket, name, record.object_name, record.cluster_id,
                )
                continue
            found.append(record)
        found.sort(key=lambda r: r.seq, reverse=True)
        return found

    async def _fetch(self, record: SnapshotRecord, dest: Path) -> None:
        name = record.object_name
        found = await self._read_meta(name)
        if found is None or found[0].get("deleted"):
            raise SnapshotCorrupt(f"snapshot object {name} is missing from bucket {self.bucket}")
        meta = found[0]
        # The stored object's own size and digest: a mismatch is known before any download.
        _check_matches(record, int(meta.get("size") or 0), _digest_hex(meta.get("digest")),
                       f"stored object {name}")
        nuid = str(meta.get("nuid") or "")
        chunks = int(meta.get("chunks") or 0)
        subject = self._chunk_subject(nuid)
        if chunks:
            info = await self._js.stream_info(self.stream, subjects_filter=subject)
            held = (info.state.subjects or {}).get(subject, 0)
            if held != chunks:
                raise SnapshotCorrupt(
                    f"snapshot object {name} has {held} of its {chunks} chunks in bucket {self.bucket}"
                )
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        except OSError as exc:
            raise SnapshotError(f"cannot write {name} to {dest}: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as out:
                size, sha256 = await self._download(name, subject, chunks, out)
            _check_matches(record, size, sha256, f"downloaded object {name}")
            os.replace(tmp, dest)
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                raise
            raise SnapshotError(f"cannot write {name} to {dest}: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    async def _download(self, name: str, subject: str, chunks: int, out: BinaryIO) -> tuple[int, str]:
        """Write the object's chunks to out in order; returns the size and SHA-256 written."""
        loop = asyncio.get_running_loop()
        h = hashlib.sha256()
        size = 0
        if chunks:
            # An ordered consumer re-creates itself from the last chunk it delivered when the
            # journal server or stream leader it was using goes away.
            sub = await self._js.subscribe(
                subject, stream=self.stream, ordered_consumer=True, idle_heartbeat=1.0,
                deliver_policy=api.DeliverPolicy.ALL,
            )
            try:
                while True:
                    try:
                        msg = await sub.next_msg(timeout=self.stall)
                    except nats.errors.TimeoutError:
                        raise JournalTimeout(
                            f"no chunk of {name} arrived for {self.stall:.0f}s after {size} bytes"
                        ) from None
                    await loop.run_in_executor(None, self._write_chunk, out, h, msg.data)
                    size += len(msg.data)
                    if msg.metadata.num_pending == 0:
                        break
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        await loop.run_in_executor(None, _flush, out)
        return size, h.hexdigest()

    def _write_chunk(self, out: BinaryIO, h: Any, data: bytes) -> None:
        """Append a downloaded chunk to the file and the running digest (in an executor thread)."""
        out.write(data)
        h.update(data)

    async def _delete(self, name: str) -> None:
        found = await self._read_meta(name)
        if found is None:
            return
        meta, _ = found
        nuid = str(meta.get("nuid") or "")
        if not meta.get("deleted"):
            # A tombstone first, so the object vanishes from listings at once and a retry still
            # knows which chunks to purge.
            tombstone = {**meta, "deleted": True, "size": 0, "chunks": 0, "digest": "", "mtime": ""}
            await self._publish_meta(name, tombstone)
        if nuid:
            await self._purge(self._chunk_subject(nuid))
        # No tombstone is left behind: deleted objects would otherwise pile up forever.
        await self._purge(self._meta_subject(name))

    async def _upload(self, record: SnapshotRecord, rdb_path: str, nuid: str) -> str:
        """Stream the file as chunks under nuid, then write the meta; returns the replaced nuid."""
        name = record.object_name
        subject = self._chunk_subject(nuid)
        loop = asyncio.get_running_loop()
        h = hashlib.sha256()
        size = chunks = 0
        try:
            with open(rdb_path, "rb") as f:
                while data := await loop.run_in_executor(None, _read_chunk, f, h):
                    # A chunk is retried on its own: its message id makes a try that landed
                    # unacknowledged count once, so an outage does not restart the upload.
                    headers = {api.Header.MSG_ID: f"{nuid}.{chunks}"}
                    await self._retrying(
                        f"uploading {name} (chunk {chunks})",
                        lambda data=data, headers=headers: self._js.publish(subject, data, headers=headers),
                    )
                    size += len(data)
                    chunks += 1
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                raise
            raise SnapshotError(f"cannot read {rdb_path} to upload as {name}: {exc}") from exc
        sha256 = h.hexdigest()
        _check_matches(record, size, sha256, f"file {rdb_path} as uploaded (it changed meanwhile)")
        # The object store meta as every client writes it (ADR-20), with the record in its headers.
        meta = {
            "name": name,
            "bucket": self.bucket,
            "nuid": nuid,
            "size": size,
            "mtime": datetime.now(UTC).isoformat(),
            "chunks": chunks,
            "digest": OBJ_DIGEST_TYPE + base64.urlsafe_b64encode(bytes.fromhex(sha256)).decode(),
            "deleted": False,
            "description": f"shard {record.shard} at journal sequence {record.seq}",
            "headers": {RECORD_HEADER: [record.encode()]},
            "options": {"max_chunk_size": CHUNK_SIZE},
        }
        previous = await self._retrying(f"uploading {name}", lambda: self._read_meta(name))
        await self._retrying(f"uploading {name}", lambda: self._publish_meta(name, meta))
        return str(previous[0].get("nuid") or "") if previous else ""

    async def _abandon(self, name: str, nuid: str) -> None:
        """Remove what a failed upload stored: its chunks, and its meta if that landed."""
        what = f"removing the failed upload of {name}"
        # Briefly: the upload has already waited out its patience if the journal is the cause.
        patience = min(10.0, self.patience)
        try:
            found = await self._retrying(what, lambda: self._read_meta(name), patience)
            if found is not None and found[0].get("nuid") == nuid:
                await self._retrying(what, lambda: self._delete(name), patience)
            await self._retrying(what, lambda: self._purge(self._chunk_subject(nuid)), patience)
        except (JournalError, SnapshotError) as exc:
            log.warning("snapshot bucket %s: chunks %s of the failed upload of %s stay behind: %s",
                        self.bucket, nuid, name, exc)

    async def _purge(self, subject: str) -> None:
        await self._js.purge_stream(self.stream, subject=subject)


def _read_chunk(f: BinaryIO, h: Any) -> bytes:
    """The file's next chunk, added to the running digest (in an executor thread)."""
    data = f.read(CHUNK_SIZE)
    h.update(data)
    return data


def _flush(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())


def _check_matches(record: SnapshotRecord, size: int, sha256: str, what: str) -> None:
    """SnapshotCorrupt naming what differs when size or SHA-256 are not the record's."""
    differences = []
    if size != record.size:
        differences.append(f"size {size} bytes, recorded {record.size}")
    if sha256.lower() != record.sha256.lower():
        differences.append(f"sha256 {sha256 or 'missing'}, recorded {record.sha256}")
    if differences:
        raise SnapshotCorrupt(f"{what} does not match its snapshot record: {'; '.join(differences)}")
