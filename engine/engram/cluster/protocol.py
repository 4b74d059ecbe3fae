"""The CLUSTER command family, answered from the node's ClusterView the way Valkey does."""

from __future__ import annotations

from dataclasses import dataclass

from engram import resp
from engram.cluster.slots import SLOTS, key_hash_slot
from engram.cluster.topology import ClusterView, NodeRecord, cluster_node_id


@dataclass
class Me:
    """The answering node."""

    name: str
    shard: int
    address: str
    epoch: int


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _members(view: ClusterView, shard: int, me: Me) -> list[tuple[NodeRecord, bool]]:
    """The shard's live nodes with their role; the leader record decides who is primary."""
    leader = view.leaders.get(shard)
    members = view.live_nodes(shard)
    if leader and not any(n.node == leader.node for n in members):
        members.insert(0, NodeRecord(leader.node, shard, "", leader.address, "primary"))
    if shard == me.shard and not any(n.node == me.name for n in members):
        members.append(NodeRecord(me.name, shard, "", me.address, "replica"))
    return [(n, bool(leader and n.node == leader.node)) for n in members]


def cluster_command(view: ClusterView, me: Me, args: list[bytes], resp3: bool) -> bytes:
    if len(args) < 2:
        return resp.error("ERR wrong number of arguments for 'cluster' command")
    sub = args[1].lower()
    if sub == b"myid":
        return resp.bulk(cluster_node_id(me.name))
    if sub == b"myshardid":
        return resp.bulk(_shard_id(me.shard))
    if sub == b"keyslot":
        if len(args) != 3:
            return resp.error("ERR wrong number of arguments for 'cluster|keyslot' command")
        return resp.integer(key_hash_slot(args[2]))
    slots = view.slots
    if slots is None:
        return resp.error("CLUSTERDOWN the slot map is not known yet")
    if sub == b"info":
        return resp.bulk(_info(view, me))
    if sub == b"slots":
        entries = []
        for first, last, shard in sorted(slots.ranges):
            members = _members(view, shard, me)
            if not any(primary for _, primary in members):
                continue  # Valkey leaves out slots whose shard has no primary
            nodes = [
                resp.array([resp.bulk(h), resp.integer(p), resp.bulk(cluster_node_id(n.node))])
                for n, _ in members
                for h, p in [_host_port(n.address)]
            ]
            entries.append(resp.array([resp.integer(first), resp.integer(last), *nodes]))
        return resp.array(entries)
    if sub == b"shards":
        return resp.array([_shard(view, shard, me, resp3) for shard in slots.shards()])
    if sub == b"nodes":
        return resp.bulk(_nodes(view, me))
    if sub == b"replicas" or sub == b"slaves":
        return _replicas(view, me, args)
    return resp.error(
        f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. Try CLUSTER HELP."
    )


def _shard_id(shard: int) -> str:
    return cluster_node_id(f"shard-{shard}")


def _info(view: ClusterView, me: Me) -> str:
    assert view.slots is not None
    served = sum(
        last - first + 1 for first, last, shard in view.slots.ranges if view.leader_address(shard)
    )
    state = "ok" if served == SLOTS else "fail"
    shards = len(view.slots.shards())
    known = sum(len(view.live_nodes(s)) for s in view.slots.shards())
    return (
        f"cluster_enabled:1\r\ncluster_state:{state}\r\ncluster_slots_assigned:{SLOTS}\r\n"
        f"cluster_slots_ok:{served}\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:{SLOTS - served}\r\n"
        f"cluster_known_nodes:{known}\r\ncluster_size:{shards}\r\n"
        f"cluster_current_epoch:{view.slots.epoch}\r\ncluster_my_epoch:{me.epoch}\r\n"
    )


def _nodes(view: ClusterView, me: Me) -> str:
    assert view.slots is not None
    lines = []
    for shard in view.slots.shards():
        members = _members(view, shard, me)
        primary = next((n for n, is_primary in members if is_primary), None)
        ranges = " ".join(
            f"{a}-{b}" if a != b else str(a) for a, b in view.slots.ranges_of(shard)
        )
        for node, is_primary in members:
            host, port = _host_port(node.address)
            flags = ("myself," if node.node == me.name else "") + ("master" if is_primary else "slave")
            master = "-" if is_primary or primary is None else cluster_node_id(primary.node)
            tail = f" {ranges}" if is_primary and ranges else ""
            if is_primary and node.node == me.name:
                tail += _moving_marks(view, shard)
            lines.append(
                f"{cluster_node_id(node.node)} {host}:{port}@0,{node.node} {flags} {master} 0 0 "
                f"{view.slots.epoch} connected{tail}"
            )
    return "\n".join(lines) + "\n"


def _moving_marks(view: ClusterView, shard: int) -> str:
    """Valkey's marks on its own line for slots in motion: [slot->-target] and [slot-<-source]."""
    assert view.slots is not None
    marks = []
    for first, last, target in view.slots.moving:
        for slot in range(first, last + 1):
            owner = view.slots.owner(slot)
            if owner == shard and (peer := view.leaders.get(target)):
                marks.append(f"[{slot}->-{cluster_node_id(peer.node)}]")
            elif target == shard and (peer := view.leaders.get(owner)):
                marks.append(f"[{slot}-<-{cluster_node_id(peer.node)}]")
    return "".join(f" {m}" for m in marks)


def _shard(view: ClusterView, shard: int, me: Me, resp3: bool) -> bytes:
    assert view.slots is not None
    ranges = []
    for first, last in view.slots.ranges_of(shard):
        ranges += [resp.integer(first), resp.integer(last)]
    nodes = []
    for node, is_primary in _members(view, shard, me):
        host, port = _host_port(node.address)
        pairs = [
            (resp.bulk("id"), resp.bulk(cluster_node_id(node.node))),
            (resp.bulk("port"), resp.integer(port)),
            (resp.bulk("ip"), resp.bulk(host)),
            (resp.bulk("endpoint"), resp.bulk(host)),
            (resp.bulk("hostname"), resp.bulk(node.node)),
            (resp.bulk("role"), resp.bulk("master" if is_primary else "replica")),
            (resp.bulk("replication-offset"), resp.integer(node.applied_seq)),
            (resp.bulk("health"), resp.bulk("online")),
        ]
        nodes.append(resp.mapping(pairs, resp3))
    return resp.mapping(
        [(resp.bulk("slots"), resp.array(ranges)), (resp.bulk("nodes"), resp.array(nodes))], resp3
    )


def _replicas(view: ClusterView, me: Me, args: list[bytes]) -> bytes:
    if len(args) != 3:
        return resp.error("ERR wrong number of arguments for 'cluster|replicas' command")
    wanted = args[2].decode(errors="replace")
    assert view.slots is not None
    for shard in view.slots.shards():
        members = _members(view, shard, me)
        if any(cluster_node_id(n.node) == wanted and p for n, p in members):
            text = _nodes(view, me).splitlines()
            replica_ids = {cluster_node_id(n.node) for n, p in members if not p}
            return resp.array([resp.bulk(line) for line in text if line.split(" ", 1)[0] in replica_ids])
    return resp.error(f"ERR Unknown node {wanted}")
