"""Commands the node answers itself: ENGRAM.* introspection and control, and CLUSTER."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from engram.cluster.protocol import Me, cluster_command
from engram.cluster.slots import SLOTS, key_hash_slot
from engram.frontdoor import resp
from engram.frontdoor.session import Session
from engram.leadership.switchover import SwitchoverError
from engram.valkey.connection import ValkeyConnection

if TYPE_CHECKING:
    from engram.node.node import Node


def install(node: Node) -> None:
    """Register the node's local commands on its front door."""
    assert node.door is not None
    handlers = node.door.local_handlers

    def status(session: Session, args: list[bytes]) -> bytes:
        fields = node.status()
        return resp.array([resp.bulk(part) for pair in fields.items() for part in pair])

    async def failover(session: Session, args: list[bytes]) -> bytes:
        if len(args) != 2:
            return resp.error("ERR usage: ENGRAM.FAILOVER <target-node-id>")
        try:
            await node.switchover(args[1].decode(), keep=session)
        except SwitchoverError as exc:
            return resp.error(f"ERR {exc}")
        return resp.simple("OK")

    handlers[b"engram.status"] = status
    handlers[b"engram.failover"] = failover
    handlers[b"cluster"] = lambda session, args: cluster(node, session, args)


async def _keys_in_slot(node: Node, slot: int, limit: int | None) -> list[bytes]:
    """Valkey standalone keeps no per-slot index, so this walks the keyspace (admin use only)."""
    conn = await ValkeyConnection.open(node.config.valkey_socket)
    found: list[bytes] = []
    try:
        cursor = b"0"
        while True:
            cursor, keys = await conn.execute("SCAN", cursor, "COUNT", 1000)  # type: ignore[misc]
            for key in keys:
                if key_hash_slot(key) == slot:
                    found.append(key)
                    if limit is not None and len(found) >= limit:
                        return found
            if cursor == b"0":
                return found
    finally:
        conn.close()


def _slot_arg(raw: bytes) -> int | None:
    try:
        slot = int(raw)
    except ValueError:
        return None
    return slot if 0 <= slot < SLOTS else None


async def _slot_keys_command(node: Node, args: list[bytes]) -> bytes:
    sub = args[1].lower()
    expected = 3 if sub == b"countkeysinslot" else 4
    if len(args) != expected:
        return resp.error(f"ERR wrong number of arguments for 'cluster|{sub.decode()}' command")
    slot = _slot_arg(args[2])
    if slot is None:
        return resp.error("ERR Invalid or out of range slot")
    if sub == b"countkeysinslot":
        return resp.integer(len(await _keys_in_slot(node, slot, None)))
    try:
        count = int(args[3])
    except ValueError:
        count = -1
    if count < 0:
        return resp.error("ERR Invalid number of keys")
    keys = await _keys_in_slot(node, slot, count) if count else []
    return resp.array([resp.bulk(k) for k in keys])


def cluster(node: Node, session: Session, args: list[bytes]) -> bytes | Awaitable[bytes]:
    if len(args) >= 2 and args[1].lower() in (b"countkeysinslot", b"getkeysinslot"):
        return _slot_keys_command(node, args)
    me = Me(node.config.node_id, node.config.shard, node.config.announce, node.leader.epoch)
    return cluster_command(node.view, me, args, session.resp3)
