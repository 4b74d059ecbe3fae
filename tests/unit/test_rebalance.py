"""Primary rebalancing decisions: when primaries bunch in a zone, which one switchover evens them out."""

from __future__ import annotations

from engram.orchestration.rebalance import Move, NodeView, primaries_per_zone, rebalance, settled
from engram.platforms.local.state import NodeState
from engram.platforms.local.supervisor import node_views


def _cluster(primaries: dict[int, str], shards: int = 3, zones: str = "abc") -> list[NodeView]:
    """Every shard has a node in every zone; shard s's primary sits in primaries[s]."""
    return [NodeView(f"s{s}-{z}", s, z, "primary" if primaries[s] == z else "replica", True, 100 + s)
            for s in range(shards) for z in zones]


def test_even_primaries_stay_where_they_are() -> None:
    assert rebalance(_cluster({0: "a", 1: "b", 2: "c"})) is None
    # Four shards over three zones: one zone has two, which is as even as it gets.
    assert rebalance(_cluster({0: "a", 1: "b", 2: "c", 3: "a"}, shards=4)) is None
    assert rebalance(_cluster({0: "a", 1: "a"}, shards=2, zones="ab")) is not None
    assert rebalance(_cluster({0: "a", 1: "b"}, shards=2, zones="ab")) is None


def test_two_primaries_in_a_zone_while_another_has_none_move_one_there() -> None:
    nodes = _cluster({0: "a", 1: "a", 2: "b"})
    assert primaries_per_zone(nodes) == {"a": 2, "b": 1, "c": 0}
    move = rebalance(nodes)
    # Either shard could move; shard 1's replica is the more caught up (applied 101 > 100).
    assert move == Move(shard=1, primary="s1-a", target="s1-c", from_zone="a", to_zone="c")


def test_the_most_caught_up_replica_takes_over() -> None:
    nodes = [NodeView("p", 0, "a", "primary", True, 50), NodeView("q", 1, "a", "primary", True, 50),
             NodeView("r1", 0, "b", "replica", True, 40), NodeView("r2", 0, "b", "replica", True, 49),
             NodeView("r3", 1, "c", "replica", True, 10)]
    # Zones b and c are both empty: shard 0 has the more caught-up candidate.
    assert rebalance(nodes) == Move(0, "p", "r2", "a", "b")


def test_nothing_moves_while_the_cluster_is_unsettled() -> None:
    nodes = _cluster({0: "a", 1: "a", 2: "b"})
    starting = [*nodes[:-1], NodeView(nodes[-1].id, nodes[-1].shard, nodes[-1].zone, "starting", False)]
    assert not settled(starting) and rebalance(starting) is None
    leaderless = [NodeView(n.id, n.shard, n.zone, "replica", True) if n.shard == 2 else n for n in nodes]
    assert not settled(leaderless) and rebalance(leaderless) is None


def test_a_zone_without_a_replica_of_the_crowded_shards_is_not_a_target() -> None:
    # Shards 0 and 1 have no node in zone c: nothing can move there, and a<->b is no better.
    nodes = [NodeView("s0-a", 0, "a", "primary", True), NodeView("s0-b", 0, "b", "replica", True),
             NodeView("s1-a", 1, "a", "primary", True), NodeView("s1-b", 1, "b", "replica", True),
             NodeView("s2-c", 2, "c", "primary", True), NodeView("s2-b", 2, "b", "replica", True)]
    assert primaries_per_zone(nodes) == {"a": 2, "b": 0, "c": 1}
    assert rebalance(nodes) == Move(0, "s0-a", "s0-b", "a", "b")


def test_the_local_supervisor_reads_its_status_poll_as_node_views() -> None:
    nodes = [NodeState(id="n0", shard=0, zone="a", port=1, config="", log=""),
             NodeState(id="n1", shard=0, zone="b", port=2, config="", log=""),
             NodeState(id="n2", shard=0, zone="c", port=3, config="", log="")]
    status = {"n0": {"role": "primary", "applied_seq": "9", "halted": ""},
              "n1": {"role": "replica", "applied_seq": "8", "halted": "checksum mismatch at 5"},
              "n2": None}
    views = node_views(nodes, status)
    assert [(v.role, v.healthy, v.applied_seq) for v in views] == [
        ("primary", True, 9), ("replica", False, 8), ("unknown", False, 0)
    ]
