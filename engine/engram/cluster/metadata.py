"""Cluster metadata in a JetStream key-value bucket, watched by every node.

Keys: `cluster` (the cluster's unique id), `slots` (the slot map), `leader.<shard>` (its primary),
`node.<id>` (a node's record), `reshard` (a change of the shard count and its progress). The bucket,
`cluster` and the first `slots` are written by provisioning; afterwards only a reshard changes
`slots`, each time with a higher epoch and a compare-and-set. Nodes only read them, and wait while
they cannot be found.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from engram.cluster.topology import ClusterView, LeaderRecord, NodeRecord, SlotMap, TopologyError
from engram.cluster.users import USER_PREFIX, dump_rules, load_rules, user_key, user_name
from engram.journal.client import wait_for_stream_leader
from engram.journal.errors import IdentityMismatch, JournalError, NoQuorum, StreamMissing

log = logging.getLogger(__name__)

SLOTS_KEY = "slots"
CLUSTER_KEY = "cluster"
RESHARD_KEY = "reshard"
# Written once a restore has seeded every shard: a re-run of provisioning must not seed again.
RESTORED_KEY = "restored"


def bucket_name(cluster: str) -> str:
    return f"ENGRAM_META_{cluster}"


class ClusterMetadata:
    """Reads and writes the cluster's metadata and keeps a ClusterView current."""

    def __init__(self, kv: KeyValue, view: ClusterView) -> None:
        self._kv = kv
        self.view = view
        self.changed = asyncio.Event()

    @classmethod
    async def open(cls, js: JetStreamContext, cluster: str, cluster_id: str) -> ClusterMetadata:
        """A node's view of provisioned metadata; raises StreamMissing until provisioning ran."""
        name = bucket_name(cluster)
        try:
            kv = await js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            raise StreamMissing(f"metadata bucket {name} not found: provisioning creates it") from None
        except nats.errors.Error as exc:
            raise NoQuorum(f"cluster metadata bucket {name} unavailable: {exc!r}") from exc
        await wait_for_stream_leader(js, f"KV_{name}", 10.0)
        meta = cls(kv, ClusterView())
        found = await meta._read(CLUSTER_KEY)
        if found is None:
            raise StreamMissing(f"cluster metadata {name} has no identity record yet: provisioning writes it")
        recorded = json.loads(found).get("id")
        if recorded != cluster_id:
            raise IdentityMismatch(f"metadata {name} belongs to cluster id {recorded!r}, not {cluster_id!r}")
        return meta

    @classmethod
    async def identify(cls, js: JetStreamContext, cluster: str) -> str:
        """The id recorded under a cluster name, for a reader that knows only the name (a restore's
        source); raises StreamMissing when no cluster of that name was provisioned."""
        name = bucket_name(cluster)
        try:
            kv = await js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            raise StreamMissing(f"metadata bucket {name} not found: no cluster {cluster!r} was provisioned "
                                "on this journal") from None
        except nats.errors.Error as exc:
            raise NoQuorum(f"cluster metadata bucket {name} unavailable: {exc!r}") from exc
        await wait_for_stream_leader(js, f"KV_{name}", 10.0)
        found = await cls(kv, ClusterView())._read(CLUSTER_KEY)
        if found is None:
            raise StreamMissing(f"cluster metadata {name} has no identity record: its provisioning failed")
        return str(json.loads(found).get("id") or "")

    @classmethod
    async def provision(
        cls, js: JetStreamContext, cluster: str, cluster_id: str, replicas: int, shards: int
    ) -> ClusterMetadata:
        """Create the bucket, record the cluster's id and write the first slot map; idempotent."""
        name = bucket_name(cluster)
        # No direct gets: any replica, a lagging one too, could answer them with an old value.
        config = api.KeyValueConfig(
            bucket=name, history=1, replicas=replicas, storage=api.StorageType.FILE, direct=False
        )
        try:
            kv = await js.create_key_value(config)
        except nats.js.errors.BadRequestError:
            kv = await js.key_value(name)  # provisioned before (a re-run)
        except nats.errors.Error as exc:
            raise NoQuorum(f"cannot create the cluster metadata bucket {name}: {exc!r}") from exc
        await wait_for_stream_leader(js, f"KV_{name}", 10.0)
        meta = cls(kv, ClusterView())
        await meta._create_once(CLUSTER_KEY, json.dumps({"id": cluster_id, "name": cluster}).encode())
        found = await meta._read(CLUSTER_KEY)
        if found is None:
            raise NoQuorum(f"the identity record of {name} was written but cannot be read back yet")
        recorded = json.loads(found).get("id")
        if recorded != cluster_id:
            raise IdentityMismatch(f"cluster name {cluster!r} is held by cluster id {recorded!r}")
        await meta._create_once(SLOTS_KEY, SlotMap.even(shards).dumps())
        return meta

    async def _read(self, key: str) -> bytes | None:
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        except nats.errors.Error as exc:
            raise NoQuorum(f"cannot read {key} from the cluster metadata: {exc!r}") from exc
        return entry.value or None

    async def _create_once(self, key: str, value: bytes) -> None:
        try:
            await self._kv.create(key, value)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            # Written before: the first write stands. (The client answers KeyNotFound when the
            # server refused the create but its read-back reached a replica without the key.)
            pass
        except nats.errors.Error as exc:
            raise NoQuorum(f"cannot write {key} to the cluster metadata: {exc!r}") from exc

    async def mark_restored(self, source: str) -> None:
        """Record, once, that the cluster's journals were seeded from `source`."""
        await self._create_once(RESTORED_KEY, json.dumps({"from": source}).encode())

    async def restored(self) -> str | None:
        """What the cluster was seeded from, once its restore completed; None otherwise."""
        found = await self._read(RESTORED_KEY)
        return str(json.loads(found).get("from", "")) if found else None

    async def load_slot_map(self) -> SlotMap:
        """The slot map provisioning wrote; raises StreamMissing while there is none."""
        found = await self._read(SLOTS_KEY)
        if found is None:
            raise StreamMissing("the cluster metadata has no slot map yet: provisioning writes it")
        slots = SlotMap.loads(found)
        self.view.slots = slots
        self.view.changes += 1
        return slots

    async def update_slot_map(self, change: Callable[[SlotMap], SlotMap | None]) -> SlotMap:
        """Replace the slot map by change(current) with a compare-and-set, retried on contention;
        change returns None when nothing is to be written. The new map's epoch is raised by one."""
        for _ in range(20):
            try:
                entry = await self._kv.get(SLOTS_KEY)
            except nats.js.errors.KeyNotFoundError:
                raise StreamMissing("the cluster metadata has no slot map: provisioning writes it") from None
            except nats.errors.Error as exc:
                raise NoQuorum(f"cannot read the slot map: {exc!r}") from exc
            current = SlotMap.loads(entry.value or b"")
            wanted = change(current)
            if wanted is None:
                return current
            wanted.epoch = current.epoch + 1
            try:
                await self._kv.update(SLOTS_KEY, wanted.dumps(), last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            except nats.errors.Error as exc:
                raise NoQuorum(f"cannot write the slot map: {exc!r}") from exc
            self.view.slots = wanted
            self.view.changes += 1
            return wanted
        raise JournalError("could not update the slot map: too much contention")

    async def load_reshard(self) -> bytes | None:
        """The reshard record's text, None when no reshard was ever recorded."""
        return await self._read(RESHARD_KEY)

    async def store_reshard(self, record: bytes) -> None:
        try:
            await self._kv.put(RESHARD_KEY, record)
        except nats.errors.Error as exc:
            raise NoQuorum(f"cannot record the reshard's progress: {exc!r}") from exc

    async def forget_shard(self, shard: int) -> None:
        """Drop a removed shard's leader record and the records of its nodes."""
        nodes = [n.node for n in list(self.view.nodes.values()) if n.shard == shard]
        keys = [f"leader.{shard}"] + [f"node.{name}" for name in nodes]
        for key in keys:
            try:
                await self._kv.delete(key)
            except nats.js.errors.KeyNotFoundError:
                pass
            except nats.errors.Error as exc:
                raise NoQuorum(f"cannot delete {key} from the cluster metadata: {exc!r}") from exc

    def recorded_epoch(self, shard: int) -> int:
        """The highest leadership epoch of the shard recorded in the metadata (0 if none)."""
        record = self.view.leaders.get(shard)
        return record.epoch if record is not None else 0

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
                    if entry is None:
                        self.view.users.loaded = True  # every stored value has been delivered
                    elif entry.key.startswith(USER_PREFIX):
                        self._apply_user(entry)  # not topology: CLUSTER replies stay as they are
                    else:
                        self._apply(entry)
                        self.view.changes += 1
                    self.changed.set()
            except (TimeoutError, nats.errors.Error, JournalError) as exc:
                log.warning("metadata watch interrupted (%s); resuming", exc)
                await asyncio.sleep(0.5)

    def _apply_user(self, entry: KeyValue.Entry) -> None:
        try:
            rules = None if entry.operation in ("DEL", "PURGE") else load_rules(entry.value)
            self.view.users.offer(user_name(entry.key), entry.revision or 0, rules)
        except (ValueError, TypeError) as exc:
            log.error("ignoring malformed user record %s: %s", entry.key, exc)

    async def store_user(self, name: str, rules: str | None) -> None:
        """Store a user's rules (None: deleted) and show them in the view at once."""
        revision = await self._kv.put(user_key(name), dump_rules(rules))
        self.view.users.offer(name, revision, rules)

    def _apply(self, entry: KeyValue.Entry) -> None:
        key, value = entry.key, entry.value
        deleted = entry.operation in ("DEL", "PURGE") or not value
        try:
            if key == SLOTS_KEY and not deleted:
                self.view.slots = SlotMap.loads(value)
            elif key == RESHARD_KEY:
                self.view.reshard = "" if deleted else value.decode()
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
