"""ENGRAM.TOPOLOGY's argv, as the node builds it from its cluster view."""

from __future__ import annotations

import struct

from engram.cluster.protocol import Me, cluster_command
from engram.cluster.push import UNASSIGNED, slot_owners, topology_command
from engram.cluster.slots import SLOTS
from engram.cluster.topology import ClusterView, LeaderRecord, NodeRecord, SlotMap, cluster_node_id


def _fields(args: list[bytes]) -> list[tuple[bytes, ...]]:
    """The argv after the command name, as (keyword, value...) groups."""
    arity = {b"SHARD": 1, b"SLOTS": 1, b"EPOCH": 1, b"MOVING": 1, b"REASON": 1,
             b"LEADER": 2, b"MIGRATE": 2, b"REPLY": 2, b"REPLICAS": 2}
    out, i = [], 1
    while i < len(args):
        n = arity[args[i]]
        out.append(tuple(args[i : i + n + 1]))
        i += n + 1
    return out


def _view() -> ClusterView:
    view = ClusterView(SlotMap([(0, 99, 1), (100, SLOTS - 1, 0)]))
    view.leaders = {0: LeaderRecord(0, "a", "10.0.0.1:6379", 2), 1: LeaderRecord(1, "b", "10.0.0.2:6379", 2)}
    view.nodes = {"a": NodeRecord("a", 0, "z", "10.0.0.1:6379", "primary")}
    return view


def test_the_slot_map_is_each_slots_shard_as_big_endian_uint16() -> None:
    owners = struct.unpack(f">{SLOTS}H", slot_owners(_view()))
    assert owners[:100] == (1,) * 100 and owners[100:] == (0,) * (SLOTS - 100)
    assert set(struct.unpack(f">{SLOTS}H", slot_owners(ClusterView()))) == {UNASSIGNED}


def test_the_push_carries_shard_map_leaders_reason_and_the_rendered_replies() -> None:
    view, me = _view(), Me("c", 0, "10.0.0.3:6379", 2)
    fields = _fields(topology_command(view, me, "10.0.0.9:6379", "no primary"))
    assert fields[:4] == [
        (b"SHARD", b"0"), (b"SLOTS", slot_owners(view)), (b"EPOCH", b"1"), (b"REASON", b"no primary")
    ]
    assert not [f for f in fields if f[0] == b"MOVING"]  # nothing moves
    # This shard's leader is the one the node knows, not the view's record.
    assert [f for f in fields if f[0] == b"LEADER"] == [
        (b"LEADER", b"1", b"10.0.0.2:6379"), (b"LEADER", b"0", b"10.0.0.9:6379")
    ]
    assert not [f for f in fields if f[0] == b"MIGRATE"]  # Valkey serves at the announced addresses
    replies = {f[1]: f[2] for f in fields if f[0] == b"REPLY"}
    assert set(replies) == {b"MYID", b"MYSHARDID", b"INFO", b"SLOTS", b"SHARDS", b"NODES"}
    assert replies[b"SHARDS"] == cluster_command(view, me, [b"CLUSTER", b"SHARDS"], resp3=True)
    replicas = {f[1]: f[2] for f in fields if f[0] == b"REPLICAS"}
    primary = cluster_node_id("a").encode()
    assert set(replicas) == {primary, cluster_node_id("b").encode()}
    assert replicas[primary] == cluster_command(view, me, [b"CLUSTER", b"REPLICAS", primary], resp3=True)


def test_slots_in_motion_are_pushed_with_their_target_shard() -> None:
    view = _view()
    assert view.slots is not None
    view.slots = SlotMap(view.slots.ranges, 7, 3, [(5, 9, 2), (200, 200, 1)])
    fields = dict((f[0], f[1]) for f in _fields(topology_command(view, Me("c", 0, "x:1", 2), "", "r"))
                  if len(f) == 2)
    assert fields[b"EPOCH"] == b"7"
    targets = struct.unpack(f">{SLOTS}H", fields[b"MOVING"])
    assert targets[5:10] == (2,) * 5 and targets[200] == 1
    assert targets.count(UNASSIGNED) == SLOTS - 6


def test_without_a_slot_map_only_the_node_ids_are_pushed() -> None:
    fields = _fields(topology_command(ClusterView(), Me("c", 3, "10.0.0.3:6379", 1), "", "starting"))
    assert (b"SLOTS", b"UNKNOWN") in fields
    assert {f[1] for f in fields if f[0] == b"REPLY"} == {b"MYID", b"MYSHARDID"}
    assert not [f for f in fields if f[0] in (b"LEADER", b"REPLICAS")]


def test_a_tls_fronted_primary_of_another_shard_is_pushed_with_its_valkeys_own_port_for_migrate() -> None:
    view = _view()
    view.leaders[0] = LeaderRecord(0, "a", "10.0.0.1:7379", 2)
    view.leaders[1] = LeaderRecord(1, "b", "10.0.0.2:7379", 2)
    view.nodes = {
        "a": NodeRecord("a", 0, "z", "10.0.0.1:7379", "primary", migrate="10.0.0.1:6379"),
        "b": NodeRecord("b", 1, "z", "10.0.0.2:7379", "primary", migrate="10.0.0.2:6379"),
    }
    fields = _fields(topology_command(view, Me("c", 0, "10.0.0.3:7379", 2), "10.0.0.1:7379", "r"))
    # Clients are still sent to the announced (TLS) addresses; only shard 1 is a MIGRATE target.
    assert (b"LEADER", b"1", b"10.0.0.2:7379") in fields
    assert [f for f in fields if f[0] == b"MIGRATE"] == [(b"MIGRATE", b"1", b"10.0.0.2:6379")]
