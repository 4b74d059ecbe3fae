"""Cluster metadata in a JetStream key-value bucket, watched by every node.

Keys: `slots` (the slot map), `leader.<shard>` (its primary), `node.<id>` (a node's record).
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from engram.cluster.topology import ClusterView, LeaderRecord, NodeRecord, SlotMap, TopologyError
from engram.journal.client import wait_for_stream_leader
from engram.journal.errors import JournalError, NoQuorum

log = logging.getLogger(__name__)

SLOTS_KEY = "slots"


def bucket_name(cluster: str) -> str:
    return f"ENGRAM_META_{cluster}"


class ClusterMetadata:
    """Reads and writes the cluster's metadata and keeps a ClusterView current."""

    def __init__(self, kv: KeyValue, view: ClusterView) -> None:
        self._kv = kv
        self.view = view
        self.changed = asyncio.Event()

    @classmethod
    async def open(cls, js: JetStreamContext, cluster: str, replicas: int) -> ClusterMetadata:
        name = bucket_name(cluster)
        try:
            kv = await js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            try:
                kv = await js.create_key_value(
                    api.KeyValueConfig(
                        bucket=name, history=1, replicas=replicas, storage=api.StorageType.FILE
                    )
                )
            except nats.js.errors.BadRequestError:
                kv = await js.key_value(name)  # a peer created it first
        except nats.errors.Error as exc:
            raise NoQuorum(f"cluster metadata bucket {name} unavailable: {exc!r}") from exc
        await wait_for_stream_leader(js, f"KV_{name}", 10.0)
        return cls(kv, ClusterView())

    async def ensure_slot_map(self, shards: int) -> SlotMap:
        """Create the initial even slot map unless the cluster already has one."""
        try:
            await self._kv.create(SLOTS_KEY, SlotMap.even(shards).dumps())
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        except nats.js.errors.APIError as exc:
            if exc.err_code != 10071:
                raise JournalError(f"cannot write the slot map: {exc}") from exc
        except nats.errors.Error as exc:
            raise NoQuorum(f"cannot write the slot map: {exc!r}") from exc
        try:
            entry = await self._kv.get(SLOTS_KEY)
        except nats.errors.Error as exc:
            raise NoQuorum(f"cannot read the slot map: {exc!r}") from exc
        slots = SlotMap.loads(entry.value or b"")
        self.view.slots = slots
        return slots

    async def publish_leader(self, record: LeaderRecord) -> None:
        """Record a shard's new primary, unless a later epoch is already recorded."""
        key = f"leader.{record.shard}"
        for _ in range(10):
            try:
                current = await self._kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                try:
                    await self._kv.create(key, record.dumps())
                    return
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue
            if current.value and LeaderRecord.loads(current.value).epoch > record.epoch:
                return
            try:
                await self._kv.update(key, record.dumps(), last=current.revision)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        raise JournalError(f"could not publish the leader of shard {record.shard}: too much contention")

    async def register(self, record: NodeRecord) -> None:
        await self._kv.put(f"node.{record.node}", record.dumps())

    async def forget(self, node: str) -> None:
        await self._kv.delete(f"node.{node}")

    async def watch(self) -> None:
        """Apply every metadata change to the view, forever."""
        while True:
            try:
                watcher = await self._kv.watchall()
                async for entry in watcher:
                    if entry is not None:
                        self._apply(entry)
                    self.changed.set()
            except (TimeoutError, nats.errors.Error, JournalError) as exc:
                log.warning("metadata watch interrupted (%s); resuming", exc)
                await asyncio.sleep(0.5)

    def _apply(self, entry: KeyValue.Entry) -> None:
        key, value = entry.key, entry.value
        deleted = entry.operation in ("DEL", "PURGE") or not value
        try:
            if key == SLOTS_KEY and not deleted:
                self.view.slots = SlotMap.loads(value)
            elif key.startswith("leader."):
                shard = int(key.split(".", 1)[1])
                if deleted:
                    self.view.leaders.pop(shard, None)
                else:
                    self.view.leaders[shard] = LeaderRecord.loads(value)
            elif key.startswith("node."):
                name = key.split(".", 1)[1]
                if deleted:
                    self.view.nodes.pop(name, None)
                else:
                    self.view.nodes[name] = NodeRecord.loads(value)
        except (TopologyError, ValueError, TypeError) as exc:
            log.error("ignoring malformed metadata %s: %s", key, exc)
