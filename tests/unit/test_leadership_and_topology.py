"""Leadership as seen from the journal, and the cluster's slot map and records."""

from __future__ import annotations

import pytest

from engram.cluster.slots import SLOTS
from engram.cluster.topology import ClusterView, LeaderRecord, NodeRecord, SlotMap, TopologyError
from engram.journal.entries import Entry, EntryType
from engram.leadership.view import LeaderView


def test_a_replica_campaigns_only_after_a_backoff_longer_than_the_lease() -> None:
    view = LeaderView(lease_seconds=2.0)
    view.observe(Entry(EntryType.LEADER, 3, "n1", address="h:1"), now=100.0)
    assert view.epoch == 3 and view.leader_address == "h:1"
    assert 2.5 <= view.backoff <= 3.0
    assert not view.campaign_due(100.0 + 2.0)
    assert view.campaign_due(100.0 + 3.01)


def test_renewals_count_only_from_the_current_leader_and_epoch() -> None:
    view = LeaderView(lease_seconds=1.0)
    view.observe(Entry(EntryType.LEADER, 2, "n1", address="h:1"), now=10.0)
    view.observe(Entry(EntryType.LEASE, 1, "n0"), now=50.0)  # a stale leader's entry
    assert view.campaign_due(11.6)
    view.observe(Entry(EntryType.DATA, 2, "n1", b"x"), now=11.0)
    assert not view.campaign_due(12.0)


def test_a_handoff_names_the_new_leader_whose_lease_entry_brings_its_address() -> None:
    view = LeaderView(lease_seconds=1.0)
    view.observe(Entry(EntryType.LEADER, 5, "target"), now=1.0)
    assert view.leader_id == "target" and view.leader_address == ""
    view.observe(Entry(EntryType.LEASE, 5, "target", address="t:9"), now=1.1)
    assert view.leader_address == "t:9"


@pytest.mark.parametrize("shards", [1, 2, 3, 7, 500])
def test_even_slot_map_assigns_every_slot_to_exactly_one_shard(shards: int) -> None:
    slots = SlotMap.even(shards)
    counts = [0] * shards
    for slot in range(SLOTS):
        counts[slots.owner(slot)] += 1
    assert sum(counts) == SLOTS and max(counts) - min(counts) <= 1
    assert SlotMap.loads(slots.dumps()).ranges == slots.ranges


def test_slot_maps_with_gaps_or_overlaps_are_refused() -> None:
    with pytest.raises(TopologyError, match="not assigned"):
        SlotMap([(0, 100, 0)])
    with pytest.raises(TopologyError, match="assigned to shards 0 and 1"):
        SlotMap([(0, 9000, 0), (9000, SLOTS - 1, 1)])
    with pytest.raises(TopologyError, match="between 1 and 500"):
        SlotMap.even(501)


def test_ranges_text_reads_back_as_the_same_slot_map() -> None:
    split = SlotMap([(0, 99, 0), (100, 100, 1), (101, 8000, 0), (8001, SLOTS - 1, 1)])
    assert split.ranges_text(0) == "0-99,101-8000"
    assert split.ranges_text(1) == f"100,8001-{SLOTS - 1}"
    for original in (split, SlotMap.even(3)):
        again = SlotMap.from_ranges_text({shard: original.ranges_text(shard) for shard in original.shards()})
        assert [again.owner(slot) for slot in range(SLOTS)] == [original.owner(slot) for slot in range(SLOTS)]


def test_cluster_view_lists_fresh_nodes_leader_first() -> None:
    view = ClusterView(SlotMap.even(2))
    view.leaders[1] = LeaderRecord(1, "b", "h:2", 4)
    view.nodes["a"] = NodeRecord("a", 1, "z1", "h:1", "replica", updated=1000.0)
    view.nodes["b"] = NodeRecord("b", 1, "z2", "h:2", "primary", updated=1000.0)
    view.nodes["old"] = NodeRecord("old", 1, "z3", "h:3", "replica", updated=900.0)
    assert [n.node for n in view.live_nodes(1, now=1001.0)] == ["b", "a"]
    assert view.leader_address(1) == "h:2" and view.leader_address(0) == ""
    assert view.owner(SLOTS - 1) == 1


def test_records_from_a_newer_engine_are_read_without_the_fields_this_one_does_not_know() -> None:
    # While a cluster is rolled, an older node must follow a leader a newer node published.
    leader = LeaderRecord.loads(b'{"shard": 2, "node": "n", "address": "h:1", "epoch": 7, "zone": "b"}')
    assert leader == LeaderRecord(2, "n", "h:1", 7)
    node = NodeRecord.loads(b'{"node": "n", "shard": 2, "zone": "b", "address": "h:1", "role": "primary",'
                            b' "spare": 1}')
    assert (node.node, node.role, node.admin) == ("n", "primary", "")
    with pytest.raises(TypeError):
        LeaderRecord.loads(b'{"shard": 2, "node": "n", "address": "h:1"}')  # a field it needs is missing
