"""Which slots move where when the shard count changes, and the reshard record's round trip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engram.cli.main import main
from engram.cluster.slots import SLOTS
from engram.cluster.topology import SlotMap, TopologyError
from engram.resharding.plan import (
    Move,
    apply_moves,
    chunks,
    desired_counts,
    moves_in_motion,
    plan_moves,
    start_moves,
)
from engram.resharding.record import DONE, MOVING, ReshardRecord


def _grown(slots: SlotMap, shards: int) -> SlotMap:
    return SlotMap(slots.ranges, slots.epoch, max(slots.count, shards))


def test_scaling_out_an_even_map_gives_the_even_map_of_the_new_count() -> None:
    one = SlotMap.even(1)
    moves = plan_moves(_grown(one, 3), 3)
    assert moves == [Move(5462, 10922, 0, 1), Move(10923, 16383, 0, 2)]
    assert apply_moves(_grown(one, 3), moves).ranges == SlotMap.even(3).ranges


def test_scaling_in_empties_the_highest_shards_and_balances_the_rest() -> None:
    three = SlotMap.even(3)
    moves = plan_moves(three, 2)
    assert {m.source for m in moves} == {2}
    after = apply_moves(three, moves)
    assert [after.slot_count(s) for s in range(3)] == [8192, 8192, 0]
    assert plan_moves(after, 2) == []


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12))
def test_any_change_of_count_moves_only_surplus_and_ends_balanced(before: int, after: int) -> None:
    slots = _grown(SlotMap.even(before), after)
    moves = plan_moves(slots, after)
    done = apply_moves(slots, moves)
    assert [done.slot_count(s) for s in range(after)] == desired_counts(after)
    assert all(done.slot_count(s) == 0 for s in range(after, slots.count))
    # Nothing moves that did not have to: each shard loses at most its surplus.
    for shard in range(slots.count):
        lost = sum(m.slots for m in moves if m.source == shard)
        wanted = desired_counts(after)[shard] if shard < after else 0
        assert lost == max(0, slots.slot_count(shard) - wanted)
    assert sum(m.slots for g in chunks(moves, 700) for m in g) == sum(m.slots for m in moves)
    assert all(sum(m.slots for m in g) <= 700 and len({m.source for m in g}) == 1 for g in chunks(moves, 700))


def test_slots_in_motion_round_trip_through_the_slot_map() -> None:
    slots = SlotMap([(0, 9999, 0), (10000, SLOTS - 1, 1)], 4, 3)
    moves = [Move(100, 199, 0, 2), Move(10000, 10010, 1, 2)]
    moving = start_moves(slots, moves)
    again = SlotMap.loads(moving.dumps())
    assert again.moving == [(100, 199, 2), (10000, 10010, 2)] and again.count == 3
    assert moves_in_motion(again) == moves
    assert again.target(150) == 2 and again.target(200) == -1


def test_a_slot_cannot_move_to_its_owner_or_to_a_shard_that_does_not_exist() -> None:
    with pytest.raises(TopologyError, match="which owns it"):
        SlotMap([(0, SLOTS - 1, 0)], 1, 2, [(5, 5, 0)])
    with pytest.raises(TopologyError, match="out of range"):
        SlotMap([(0, SLOTS - 1, 0)], 1, 2, [(5, 5, 2)])
    with pytest.raises(TopologyError, match="of a 1-shard cluster"):
        SlotMap([(0, 99, 1), (100, SLOTS - 1, 0)], 1, 1)


def test_a_reshard_record_round_trips_and_estimates_what_is_left() -> None:
    record = ReshardRecord(1, 3, phase=MOVING, slots_total=1000, slots_moved=250, started=100.0)
    again = ReshardRecord.loads(record.dumps())
    assert again == record
    assert again.eta(now=110.0) == pytest.approx(30.0)
    assert "slots 250/1000" in again.summary()
    again.phase = DONE
    assert again.finished and again.eta() == 0.0
    with pytest.raises(ValueError, match="unknown reshard phase"):
        ReshardRecord.loads(b'{"from_shards": 1, "to_shards": 2, "phase": "flying"}')


def test_the_cli_refuses_a_shard_count_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reshard", "--cluster", "x", "--shards", "0", "--journal", "nats://127.0.0.1:1"]) == 2
    assert "--shards must be between 1 and 500" in capsys.readouterr().err


def test_cluster_nodes_marks_slots_in_motion_on_the_answering_primarys_own_line() -> None:
    from engram.cluster.protocol import Me, cluster_command
    from engram.cluster.topology import ClusterView, LeaderRecord, NodeRecord, cluster_node_id

    view = ClusterView(SlotMap([(0, SLOTS - 1, 0)], 3, 2, [(10, 11, 1)]))
    view.leaders = {0: LeaderRecord(0, "a", "10.0.0.1:6379", 2), 1: LeaderRecord(1, "b", "10.0.0.2:6379", 2)}
    view.nodes = {"a": NodeRecord("a", 0, "z", "10.0.0.1:6379", "primary"),
                  "b": NodeRecord("b", 1, "z", "10.0.0.2:6379", "primary")}
    source = cluster_command(view, Me("a", 0, "10.0.0.1:6379", 2), [b"CLUSTER", b"NODES"], resp3=False)
    mine = next(line for line in source.decode().splitlines() if "myself" in line)
    assert mine.endswith(f"0-16383 [10->-{cluster_node_id('b')}] [11->-{cluster_node_id('b')}]")
    target = cluster_command(view, Me("b", 1, "10.0.0.2:6379", 2), [b"CLUSTER", b"NODES"], resp3=False)
    mine = next(line for line in target.decode().splitlines() if "myself" in line)
    assert mine.endswith(f"connected [10-<-{cluster_node_id('a')}] [11-<-{cluster_node_id('a')}]")
