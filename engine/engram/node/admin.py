"""Commands the node answers itself: ENGRAM.* introspection and control, and CLUSTER."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engram.cluster.slots import SLOTS, key_hash_slot
from engram.frontdoor import resp
from engram.frontdoor.session import Session

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
        except RuntimeError as exc:
            return resp.error(f"ERR {exc}")
        return resp.simple("OK")

    def cluster(session: Session, args: list[bytes]) -> bytes:
        return cluster_command(node, session, args)

    handlers[b"engram.status"] = status
    handlers[b"engram.failover"] = failover
    handlers[b"cluster"] = cluster


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def cluster_command(node: Node, session: Session, args: list[bytes]) -> bytes:
    """The single-shard cluster view: every slot belongs to this shard's primary."""
    if len(args) < 2:
        return resp.error("ERR wrong number of arguments for 'cluster' command")
    sub = args[1].lower()
    me = node.config
    leader_id, leader_address = node.leader.leader_id, node.leader_address
    if sub == b"myid":
        return resp.bulk(me.node_id)
    if sub == b"keyslot":
        if len(args) != 3:
            return resp.error("ERR wrong number of arguments for 'cluster|keyslot' command")
        return resp.integer(key_hash_slot(args[2]))
    if sub == b"info":
        state = "ok" if leader_address else "fail"
        text = (
            f"cluster_enabled:1\r\ncluster_state:{state}\r\ncluster_slots_assigned:{SLOTS}\r\n"
            f"cluster_slots_ok:{SLOTS if leader_address else 0}\r\ncluster_known_nodes:1\r\n"
            f"cluster_size:1\r\ncluster_current_epoch:{node.leader.epoch}\r\n"
            f"cluster_my_epoch:{node.leader.epoch}\r\n"
        )
        return resp.bulk(text)
    if not leader_address:
        return resp.error("CLUSTERDOWN the shard has no primary right now")
    host, port = _host_port(leader_address)
    members = [(leader_id, host, port, True)]
    if leader_id != me.node_id:
        my_host, my_port = _host_port(me.announce)
        members.append((me.node_id, my_host, my_port, False))
    if sub == b"slots":
        nodes = [resp.array([resp.bulk(h), resp.integer(p), resp.bulk(i)]) for i, h, p, _ in members]
        return resp.array([resp.array([resp.integer(0), resp.integer(SLOTS - 1), *nodes])])
    if sub == b"nodes":
        lines = []
        for node_id, h, p, primary in members:
            flags = ("myself," if node_id == me.node_id else "") + ("master" if primary else "slave")
            master = "-" if primary else leader_id
            slots = f" 0-{SLOTS - 1}" if primary else ""
            lines.append(f"{node_id} {h}:{p}@0 {flags} {master} 0 0 {node.leader.epoch} connected{slots}")
        return resp.bulk("\n".join(lines) + "\n")
    if sub == b"shards":
        nodes = []
        for node_id, h, p, primary in members:
            pairs = [
                (resp.bulk("id"), resp.bulk(node_id)), (resp.bulk("port"), resp.integer(p)),
                (resp.bulk("ip"), resp.bulk(h)), (resp.bulk("endpoint"), resp.bulk(h)),
                (resp.bulk("role"), resp.bulk("master" if primary else "replica")),
                (resp.bulk("replication-offset"), resp.integer(node.applied_seq)),
                (resp.bulk("health"), resp.bulk("online")),
            ]
            nodes.append(resp.mapping(pairs, session.resp3))
        shard = resp.mapping(
            [(resp.bulk("slots"), resp.array([resp.integer(0), resp.integer(SLOTS - 1)])),
             (resp.bulk("nodes"), resp.array(nodes))],
            session.resp3,
        )
        return resp.array([shard])
    return resp.error(f"ERR unknown subcommand '{args[1].decode(errors='replace')}' for 'cluster'")
