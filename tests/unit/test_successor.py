"""Every kind of planned switchover ranks a shard's replicas alike: the most caught up first, ties
to the lower node id, a replica on a cordoned node last (orchestration/successor.py)."""

from __future__ import annotations

from engram.orchestration.rebalance import NodeView, rebalance
from engram.orchestration.successor import caught_up_rank, successors
from engram.orchestration.upgrade import UpgradeNode, switchover_target

# Shard 0: primary n0; replicas n2 and n1 equally caught up (a tie), n3 behind.
APPLIED = {"n1": 90, "n2": 90, "n3": 40}


def test_the_rank_puts_last_resorts_last_then_the_most_applied_then_the_lower_id() -> None:
    ranked = sorted([caught_up_rank(90, "n2"), caught_up_rank(90, "n1"), caught_up_rank(99, "n9", True),
                     caught_up_rank(40, "n3")])
    assert [r[2] for r in ranked] == ["n1", "n2", "n3", "n9"]


def test_hand_over_on_stop_local_failover_upgrades_and_rebalancing_choose_the_same_replica() -> None:
    statuses = {"n0": {"shard": "0", "role": "primary", "applied_seq": "90"}}
    statuses |= {n: {"shard": "0", "role": "replica", "applied_seq": str(a)} for n, a in APPLIED.items()}
    on_stop = successors("n0", 0, statuses)

    upgrade_nodes = [UpgradeNode("n0", 0, 0, "primary", True, False, applied_seq=90)]
    upgrade_nodes += [UpgradeNode(n, 0, i + 1, "replica", True, False, applied_seq=a)
                      for i, (n, a) in enumerate(sorted(APPLIED.items(), reverse=True))]
    upgrade = switchover_target(upgrade_nodes, 0, exclude="n0")

    # Zone a holds two more primaries than zones b and c: the move goes to b or c, whichever
    # replica ranks first; n1 and n2 are in those zones.
    views = [NodeView("p1", 1, "a", "primary", True), NodeView("r1", 1, "b", "replica", True),
             NodeView("n0", 0, "a", "primary", True), NodeView("n1", 0, "c", "replica", True, 90),
             NodeView("n2", 0, "b", "replica", True, 90), NodeView("p2", 2, "a", "primary", True),
             NodeView("r2", 2, "a", "replica", True)]
    move = rebalance(views)

    assert on_stop[0] == upgrade == "n1"
    assert move is not None and move.target == "n1"
    assert on_stop == ["n1", "n2", "n3"]


def test_a_halted_replica_is_never_a_successor() -> None:
    statuses = {"n1": {"shard": "0", "role": "replica", "applied_seq": "99", "halted": "newer engine"},
                "n2": {"shard": "0", "role": "replica", "applied_seq": "10"}}
    assert successors("n0", 0, statuses) == ["n2"]
