"""The replica-scaling decision (engram.orchestration.replicas): where new replicas go, which go first."""

from __future__ import annotations

import pytest

from engram.orchestration.replicas import ReplicaNode, ReplicaScaleError, plan_replicas
from engram.orchestration.zones import Spreading

ZONES = ["a", "b", "c"]


def _id(shard: int, index: int) -> str:
    return f"c-s{shard}-n{index}"


def _node(shard: int, index: int, zone: str, role: str = "replica", halted: bool = False) -> ReplicaNode:
    return ReplicaNode(_id(shard, index), shard, index, zone, role, halted)


def _plan(nodes: list[ReplicaNode], replicas: int, zones: list[str] = ZONES,
          spreading: Spreading = Spreading.PREFERRED):
    return plan_replicas(nodes, zones, replicas, spreading, _id)


def test_a_new_replica_goes_to_the_zone_its_shard_does_not_use() -> None:
    plan = _plan([_node(0, 0, "a", "primary"), _node(0, 1, "b")], 2)
    assert [(n.id, n.zone) for n in plan.add] == [("c-s0-n2", "c")]
    assert plan.remove == () and plan.warnings == ()


def test_new_replicas_of_several_shards_spread_over_zones_and_take_the_lowest_free_index() -> None:
    # Shard 1 lost n1 earlier (scaled down), so its new node is n1 again.
    nodes = [_node(0, 0, "a", "primary"), _node(1, 0, "b", "primary"), _node(1, 2, "c")]
    plan = _plan(nodes, 2)
    added = {(n.shard, n.index): n.zone for n in plan.add}
    assert set(added) == {(0, 1), (0, 2), (1, 1)}
    assert {added[(0, 1)], added[(0, 2)]} == {"b", "c"}
    assert added[(1, 1)] == "a"


def test_the_same_count_again_changes_nothing() -> None:
    plan = _plan([_node(0, 0, "a", "primary"), _node(0, 1, "b")], 1)
    assert plan.unchanged


def test_preferred_spreading_shares_a_zone_and_says_so() -> None:
    plan = _plan([_node(0, 0, "a", "primary"), _node(0, 1, "b")], 2, zones=["a", "b"])
    assert len(plan.add) == 1 and plan.add[0].zone in ("a", "b")
    assert plan.warnings and "shares zone" in plan.warnings[0]


def test_required_spreading_refuses_more_replicas_than_zones_allow() -> None:
    with pytest.raises(ReplicaScaleError, match="at most 2 replicas"):
        _plan([_node(0, 0, "a", "primary")], 3, spreading=Spreading.REQUIRED)


def test_a_negative_count_is_refused() -> None:
    with pytest.raises(ReplicaScaleError, match="0 or more"):
        _plan([_node(0, 0, "a", "primary")], -1)


def test_scale_down_never_removes_the_primary_even_at_the_highest_index() -> None:
    nodes = [_node(0, 0, "a"), _node(0, 1, "b"), _node(0, 2, "c", "primary")]
    assert _plan(nodes, 0).remove == ("c-s0-n1", "c-s0-n0")


def test_scale_down_removes_unhealthy_replicas_first() -> None:
    nodes = [_node(0, 0, "a", "primary"), _node(0, 1, "b", ""), _node(0, 2, "c"),
             _node(0, 3, "b", halted=True)]
    assert set(_plan(nodes, 1).remove) == {"c-s0-n1", "c-s0-n3"}


def test_scale_down_then_empties_the_most_crowded_zone_then_takes_the_highest_index() -> None:
    nodes = [_node(0, 0, "a", "primary"), _node(0, 1, "b"), _node(0, 2, "b"), _node(0, 3, "c")]
    # Zone b holds two of the shard's nodes: one of them goes first, the higher-numbered one.
    assert _plan(nodes, 2).remove == ("c-s0-n2",)
    # Then every zone holds one: the highest index.
    assert _plan(nodes, 1).remove == ("c-s0-n2", "c-s0-n3")


def test_scale_down_of_a_shard_without_a_primary_waits_and_removes_nothing_there() -> None:
    nodes = [_node(0, 0, "a", ""), _node(0, 1, "b"), _node(1, 0, "a", "primary"), _node(1, 1, "b")]
    plan = _plan(nodes, 0)
    assert plan.remove == ("c-s1-n1",)
    assert len(plan.waiting) == 1 and "shard 0 has no node answering as its primary" in plan.waiting[0]
    # A shard that only grows needs no primary to be known.
    assert [n.id for n in _plan(nodes, 2).add] == ["c-s0-n2", "c-s1-n2"]


def test_a_halted_primary_does_not_count_as_the_shards_primary() -> None:
    plan = _plan([_node(0, 0, "a", "primary", halted=True), _node(0, 1, "b")], 0)
    assert plan.remove == () and plan.waiting
