"""The zone planner: distinct zones per shard, balanced primaries and load, and replacements."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engram.orchestration.zones import (
    Spreading,
    ZonePlan,
    ZonePlanError,
    ZoneSpreadError,
    plan_zones,
    replacement_zone,
)

ZONE_NAMES = ["eu-west-1a", "eu-west-1b", "eu-west-1c", "eu-west-1d", "eu-west-1e", "eu-west-1f"]

zone_lists = st.integers(1, 6).flatmap(lambda n: st.permutations(ZONE_NAMES).map(lambda z: z[:n]))
shard_counts = st.integers(1, 50)
replica_counts = st.integers(0, 5)
spreadings = st.sampled_from(list(Spreading))



def replace_lost_zones(plan: ZonePlan, lost_zones: Iterable[str], live_zones: Iterable[str]) -> ZonePlan:
    """The plan with every node in a lost zone moved by replacement_zone, shard by shard: what the
    operator does one pod at a time, done to a whole plan so that properties can be checked on it."""
    lost = set(lost_zones)
    live = sorted(set(live_zones) - lost)
    result = plan
    degraded: list[str] = []
    for shard in plan.shards:
        for node in shard:
            if node.zone in lost:
                zone = replacement_zone(result, node.shard, node.index, lost, live)
                result = result.moved(node.shard, node.index, zone)
                if any(n.zone == zone for n in result.shards[node.shard] if n.index != node.index):
                    degraded.append(f"shard {node.shard} node {node.index} shares zone {zone}")
    if degraded:
        warning = (
            f"spreading Preferred: with zones {', '.join(sorted(lost))} lost, only {len(live)} live zone(s) "
            f"({', '.join(live)}) remain, so some shards have two nodes in one zone: {'; '.join(degraded)}; "
            f"bring a lost zone back or add a zone"
        )
        result = replace(result, warnings=(*result.warnings, warning))
    return result

def spread(values: dict[str, int]) -> int:
    return max(values.values()) - min(values.values())


def zones_of(plan: ZonePlan) -> list[list[str]]:
    return [plan.shard_zones(s) for s in range(len(plan.shards))]


# --- examples ------------------------------------------------------------------------------------


def test_three_zones_two_replicas_put_every_shard_in_every_zone() -> None:
    plan = plan_zones(["a", "b", "c"], shards=3, replicas=2)
    assert zones_of(plan) == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert [n.zone for n in plan.nodes if n.primary] == ["a", "b", "c"]
    assert plan.warnings == ()


def test_primaries_and_nodes_are_balanced_when_shards_do_not_divide_evenly() -> None:
    plan = plan_zones(["a", "b", "c", "d"], shards=5, replicas=1)
    assert dict(plan.zone_load()) == {"a": 3, "b": 3, "c": 2, "d": 2}
    assert dict(plan.primary_load()) == {"a": 2, "b": 1, "c": 1, "d": 1}
    assert all(len(set(zones)) == 2 for zones in zones_of(plan))


def test_node_zero_of_every_shard_is_its_planned_primary() -> None:
    plan = plan_zones(["a", "b", "c"], shards=4, replicas=2)
    for shard in plan.shards:
        assert [n.primary for n in shard] == [True, False, False]
        assert [n.index for n in shard] == [0, 1, 2]


def test_zone_order_does_not_change_the_plan() -> None:
    assert plan_zones(["c", "a", "b"], 7, 2) == plan_zones(["a", "b", "c"], 7, 2)
    assert plan_zones(("b", "c", "a"), 7, 2).zones == ("a", "b", "c")


def test_adding_shards_never_moves_existing_ones() -> None:
    small = plan_zones(["a", "b", "c", "d"], shards=3, replicas=2)
    large = plan_zones(["a", "b", "c", "d"], shards=9, replicas=2)
    assert large.shards[:3] == small.shards


def test_required_spreading_refuses_more_nodes_than_zones() -> None:
    with pytest.raises(ZoneSpreadError) as refused:
        plan_zones(["a", "b"], shards=3, replicas=2, spreading="Required")
    message = str(refused.value)
    assert "3 nodes" in message and "only 2 zones" in message
    assert "add 1 zone" in message and "lower replicas to 1" in message and "Preferred" in message


def test_preferred_spreading_shares_zones_evenly_and_says_so() -> None:
    plan = plan_zones(["a", "b"], shards=2, replicas=2, spreading=Spreading.PREFERRED)
    assert zones_of(plan) == [["a", "b", "a"], ["b", "a", "b"]]
    assert len(plan.warnings) == 1
    assert "3 nodes" in plan.warnings[0] and "only 2 zones" in plan.warnings[0]
    assert "2 of its 3 nodes" in plan.warnings[0]


def test_one_zone_without_replicas_is_not_degraded() -> None:
    plan = plan_zones(["only"], shards=2, replicas=0, spreading="Preferred")
    assert plan.warnings == ()
    assert zones_of(plan) == [["only"], ["only"]]


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"zones": []}, "zones is empty"),
        ({"zones": ["a", "b", "a"]}, "a listed more than once"),
        ({"zones": ["a", ""]}, "non-empty strings"),
        ({"zones": "abc"}, "single string"),
        ({"shards": 0}, "shards must be at least 1"),
        ({"replicas": -1}, "replicas must be 0 or more"),
        ({"spreading": "Sometimes"}, "Required or Preferred"),
    ],
)
def test_bad_inputs_are_refused_with_clear_errors(kwargs: dict, complaint: str) -> None:
    args = {"zones": ["a", "b", "c"], "shards": 1, "replicas": 1, "spreading": "Required", **kwargs}
    with pytest.raises(ZonePlanError, match=complaint):
        plan_zones(**args)


def test_spreading_is_read_in_any_case() -> None:
    assert Spreading.parse("required") is Spreading.REQUIRED
    assert Spreading.parse("PREFERRED") is Spreading.PREFERRED
    assert Spreading.parse(Spreading.PREFERRED) is Spreading.PREFERRED


def test_replacement_goes_to_the_live_zone_the_shard_does_not_use() -> None:
    plan = plan_zones(["a", "b", "c", "d"], shards=1, replicas=2)
    assert plan.shard_zones(0) == ["a", "b", "c"]
    assert replacement_zone(plan, 0, 0, lost_zones=["a"], live_zones=["b", "c", "d"]) == "d"


def test_replacement_prefers_the_least_loaded_unused_zone() -> None:
    plan = plan_zones(["a", "b", "c", "d", "e"], shards=4, replicas=1)
    # Shard 0 sits in a and b; c..e are free for it, and the emptiest of them wins.
    assert plan.shard_zones(0) == ["a", "b"]
    load = plan.zone_load()
    zone = replacement_zone(plan, 0, 0, lost_zones=["a"], live_zones=["b", "c", "d", "e"])
    assert load[zone] == min(load[z] for z in ("c", "d", "e"))


def test_replacement_may_use_a_new_zone() -> None:
    plan = plan_zones(["a", "b", "c"], shards=2, replicas=2)
    assert replacement_zone(plan, 1, 2, lost_zones=["a"], live_zones=["b", "c", "z"]) == "z"


def test_replacement_under_required_refuses_when_every_live_zone_is_taken() -> None:
    plan = plan_zones(["a", "b", "c"], shards=1, replicas=2)
    with pytest.raises(ZoneSpreadError) as refused:
        replacement_zone(plan, 0, 0, lost_zones=["a"], live_zones=["b", "c"])
    message = str(refused.value)
    assert "shard 0" in message and "b, c" in message and "Preferred" in message


def test_replacement_under_preferred_shares_the_least_crowded_zone() -> None:
    plan = plan_zones(["a", "b", "c"], shards=3, replicas=2, spreading="Preferred")
    zone = replacement_zone(plan, 0, 0, lost_zones=["a"], live_zones=["b", "c"])
    assert zone in ("b", "c")
    moved = replace_lost_zones(plan, ["a"], ["b", "c"])
    assert all(n.zone != "a" for n in moved.nodes)
    assert len(moved.warnings) == 1 and "zones a lost" in moved.warnings[0]


def test_replacement_with_no_live_zone_is_refused_even_when_preferred() -> None:
    plan = plan_zones(["a", "b"], shards=1, replicas=1, spreading="Preferred")
    with pytest.raises(ZoneSpreadError, match="every zone is lost"):
        replacement_zone(plan, 0, 0, lost_zones=["a", "b"], live_zones=["a", "b"])


def test_replacing_an_unknown_node_names_the_nodes_the_plan_has() -> None:
    plan = plan_zones(["a", "b"], shards=2, replicas=1)
    with pytest.raises(ZonePlanError, match=r"shards 0\.\.1"):
        replacement_zone(plan, 5, 0, ["a"], ["b"])
    with pytest.raises(ZonePlanError, match=r"it has nodes 0, 1$"):
        replacement_zone(plan, 0, 3, ["a"], ["b"])


# --- properties ----------------------------------------------------------------------------------


@given(zones=zone_lists, shards=shard_counts, replicas=replica_counts, spreading=spreadings)
def test_shard_nodes_sit_in_distinct_zones_when_there_are_enough(
    zones: list[str], shards: int, replicas: int, spreading: Spreading
) -> None:
    if replicas + 1 > len(zones):
        return
    plan = plan_zones(zones, shards, replicas, spreading)
    assert all(len(set(z)) == replicas + 1 for z in zones_of(plan))


@given(zones=zone_lists, shards=shard_counts, replicas=replica_counts)
def test_primaries_and_nodes_are_balanced_within_one(zones: list[str], shards: int, replicas: int) -> None:
    plan = plan_zones(zones, shards, replicas, "Preferred")
    assert spread(plan.primary_load()) <= 1
    assert spread(plan.zone_load()) <= 1
    assert sum(plan.primary_load().values()) == shards
    assert sum(plan.zone_load().values()) == shards * (replicas + 1)


@given(zones=zone_lists, shards=shard_counts, replicas=replica_counts)
def test_every_shard_has_one_primary_first_and_numbered_nodes(
    zones: list[str], shards: int, replicas: int
) -> None:
    plan = plan_zones(zones, shards, replicas, "Preferred")
    assert len(plan.shards) == shards
    for s, shard in enumerate(plan.shards):
        assert [(n.shard, n.index, n.primary) for n in shard] == [(s, i, i == 0) for i in range(replicas + 1)]
        assert all(n.zone in plan.zones for n in shard)


@given(zones=zone_lists, shards=shard_counts, replicas=replica_counts)
def test_required_refuses_exactly_the_impossible_layouts(
    zones: list[str], shards: int, replicas: int
) -> None:
    if replicas + 1 > len(zones):
        with pytest.raises(ZoneSpreadError) as refused:
            plan_zones(zones, shards, replicas, "Required")
        assert f"{replicas + 1} nodes" in str(refused.value)
        assert f"only {len(zones)} zones" in str(refused.value)
    else:
        assert plan_zones(zones, shards, replicas, "Required").warnings == ()


@given(zones=zone_lists, shards=shard_counts, replicas=replica_counts)
def test_preferred_never_refuses_and_warns_exactly_when_it_degrades(
    zones: list[str], shards: int, replicas: int
) -> None:
    plan = plan_zones(zones, shards, replicas, "Preferred")
    degraded = any(len(set(z)) < len(z) for z in zones_of(plan))
    assert degraded == (replicas + 1 > len(zones))
    assert bool(plan.warnings) == degraded


@given(zones=zone_lists, shards=shard_counts, replicas=replica_counts)
def test_preferred_shares_zones_as_little_as_possible(zones: list[str], shards: int, replicas: int) -> None:
    plan = plan_zones(zones, shards, replicas, "Preferred")
    per_shard = replicas + 1
    low, high = per_shard // len(zones), -(-per_shard // len(zones))
    for shard_zones in zones_of(plan):
        counts = [shard_zones.count(z) for z in plan.zones]
        assert all(low <= c <= high for c in counts)


@given(zones=zone_lists, shards=shard_counts, replicas=replica_counts, spreading=spreadings, data=st.data())
def test_plans_are_deterministic_and_ignore_zone_order(
    zones: list[str], shards: int, replicas: int, spreading: Spreading, data: st.DataObject
) -> None:
    if spreading is Spreading.REQUIRED and replicas + 1 > len(zones):
        return
    shuffled = data.draw(st.permutations(zones))
    assert plan_zones(zones, shards, replicas, spreading) == plan_zones(shuffled, shards, replicas, spreading)


@given(zones=zone_lists, shards=shard_counts, more=st.integers(0, 20), replicas=replica_counts)
def test_growing_the_shard_count_keeps_existing_placements(
    zones: list[str], shards: int, more: int, replicas: int
) -> None:
    small = plan_zones(zones, shards, replicas, "Preferred")
    large = plan_zones(zones, shards + more, replicas, "Preferred")
    assert large.shards[:shards] == small.shards


@given(
    zones=zone_lists,
    shards=st.integers(1, 20),
    replicas=replica_counts,
    spreading=spreadings,
    data=st.data(),
)
def test_replacement_picks_a_live_unused_least_loaded_zone_or_refuses_under_required(
    zones: list[str], shards: int, replicas: int, spreading: Spreading, data: st.DataObject
) -> None:
    if spreading is Spreading.REQUIRED and replicas + 1 > len(zones):
        return
    plan = plan_zones(zones, shards, replicas, spreading)
    lost = data.draw(st.sets(st.sampled_from(plan.zones), min_size=1, max_size=len(zones)))
    extra = data.draw(st.sets(st.sampled_from(["new-1", "new-2"]), max_size=2))
    live = sorted((set(plan.zones) - lost) | extra)
    shard = data.draw(st.integers(0, shards - 1))
    index = data.draw(st.integers(0, replicas))
    node = plan.node(shard, index)
    others = {n.zone for n in plan.shards[shard] if n.index != index}
    unused = [z for z in live if z not in others]
    if not live:
        with pytest.raises(ZoneSpreadError):
            replacement_zone(plan, shard, index, lost, live)
        return
    if not unused and spreading is Spreading.REQUIRED:
        with pytest.raises(ZoneSpreadError):
            replacement_zone(plan, shard, index, lost, live)
        return
    zone = replacement_zone(plan, shard, index, lost, live)
    assert zone in live and zone not in lost
    assert zone == replacement_zone(plan, shard, index, list(reversed(sorted(lost))), list(reversed(live)))
    load = {z: sum(1 for n in plan.nodes if n.zone == z and n is not node) for z in live}
    if unused:
        assert zone in unused
        assert load[zone] == min(load[z] for z in unused)
    else:
        crowding = {z: sum(1 for n in plan.shards[shard] if n.zone == z and n.index != index) for z in live}
        assert crowding[zone] == min(crowding.values())


@given(zones=zone_lists, shards=st.integers(1, 20), replicas=replica_counts, data=st.data())
def test_replacing_lost_zones_restores_distinct_zones_whenever_enough_remain(
    zones: list[str], shards: int, replicas: int, data: st.DataObject
) -> None:
    per_shard = replicas + 1
    if per_shard > len(zones) or len(zones) < 2:
        return
    plan = plan_zones(zones, shards, replicas, "Required")
    lost = data.draw(st.sets(st.sampled_from(plan.zones), min_size=1, max_size=len(zones) - 1))
    live = sorted(set(plan.zones) - lost)
    used_lost = any(n.zone in lost for n in plan.nodes)
    if len(live) < per_shard and used_lost:
        with pytest.raises(ZoneSpreadError):
            replace_lost_zones(plan, lost, live)
        preferred = replace_lost_zones(plan_zones(zones, shards, replicas, "Preferred"), lost, live)
        assert all(n.zone in live for n in preferred.nodes)
        assert preferred.warnings
        return
    moved = replace_lost_zones(plan, lost, live)
    assert all(n.zone in live for n in moved.nodes)
    assert all(len(set(z)) == per_shard for z in zones_of(moved))
    assert moved.warnings == ()
    # Nodes outside the lost zones stay where they were.
    for before, after in zip(plan.nodes, moved.nodes, strict=True):
        if before.zone not in lost:
            assert after == before
