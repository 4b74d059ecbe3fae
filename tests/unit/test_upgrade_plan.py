"""The shared rolling-upgrade plan: replicas first, one at a time, then a switchover to an up-to-date
replica, then the old primary; waits say why."""

from __future__ import annotations

from dataclasses import replace

from engram.orchestration.upgrade import (
    Done,
    Replace,
    Switch,
    UpgradeNode,
    Wait,
    next_step,
    switchover_target,
)


def _shard(shard: int = 0, replicas: int = 2, applied: int = 100) -> list[UpgradeNode]:
    """A calm shard on the old version: n0 leads, the others replicate (n2 the most caught up)."""
    nodes = [UpgradeNode(f"s{shard}-n0", shard, 0, "primary", True, False, applied_seq=applied)]
    nodes += [UpgradeNode(f"s{shard}-n{i}", shard, i, "replica", True, False, applied_seq=applied - 10 + i)
              for i in range(1, replicas + 1)]
    return nodes


def _upgraded(nodes: list[UpgradeNode], *ids: str) -> list[UpgradeNode]:
    return [replace(n, up_to_date=True) if n.id in ids else n for n in nodes]


def test_a_cluster_on_the_target_is_done() -> None:
    assert next_step(_upgraded(_shard(), "s0-n0", "s0-n1", "s0-n2"), 2) == Done()
    assert next_step([], 2) == Done()


def test_replicas_are_replaced_first_lowest_shard_and_index_first() -> None:
    nodes = _shard(1) + _shard(0)
    assert next_step(nodes, 2) == Replace("s0-n1", 0, "replica")
    assert next_step(_upgraded(nodes, "s0-n1"), 2) == Replace("s0-n2", 0, "replica")
    # Every shard's replicas before any shard's primary moves.
    assert next_step(_upgraded(nodes, "s0-n1", "s0-n2"), 2) == Replace("s1-n1", 1, "replica")


def test_once_the_replicas_are_updated_the_primary_hands_over_to_the_most_caught_up() -> None:
    nodes = _upgraded(_shard(), "s0-n1", "s0-n2")
    assert next_step(nodes, 2) == Switch(0, "s0-n0", "s0-n2")


def test_the_old_primary_is_replaced_once_it_is_a_replica() -> None:
    nodes = _upgraded(_shard(), "s0-n1", "s0-n2")
    nodes = [replace(n, role="replica") if n.id == "s0-n0" else n for n in nodes]
    nodes = [replace(n, role="primary") if n.id == "s0-n2" else n for n in nodes]
    assert next_step(nodes, 2) == Replace("s0-n0", 0, "replica")


def test_nothing_is_replaced_while_a_node_is_not_ready() -> None:
    nodes = _shard()
    nodes[2] = replace(nodes[2], ready=False, up_to_date=True)
    assert next_step(nodes, 2) == Wait("not-ready", ("s0-n2",))


def test_an_outdated_stuck_node_is_replaced_at_once_unless_it_still_leads() -> None:
    nodes = _upgraded(_shard(), "s0-n2")
    nodes[0] = replace(nodes[0], role="replica", ready=False, halted=True, stuck=True)
    nodes[2] = replace(nodes[2], role="primary")
    assert next_step(nodes, 2) == Replace("s0-n0", 0, "stuck")
    leading = [replace(nodes[0], role="primary"), *nodes[1:]]
    assert next_step(leading, 2) == Wait("not-ready", ("s0-n0",))


def test_a_stuck_node_whose_role_is_only_remembered_may_be_replaced() -> None:
    # It did not answer: its last known role is not proof that it leads.
    nodes = _shard()
    nodes[0] = replace(nodes[0], answering=False, ready=False, stuck=True)
    assert next_step(nodes, 2) == Replace("s0-n0", 0, "stuck")


def test_without_an_updated_ready_replica_the_upgrade_waits() -> None:
    nodes = _upgraded(_shard(), "s0-n1", "s0-n2")
    nodes = [replace(n, halted=True) if n.role == "replica" else n for n in nodes]
    assert next_step(nodes, 2) == Wait("no-target", ("s0-n0",), 0)


def test_a_shard_without_replicas_replaces_its_primary_in_place() -> None:
    assert next_step(_shard(replicas=0), 0) == Replace("s0-n0", 0, "no-replica")


def test_a_running_reshard_holds_the_upgrade() -> None:
    assert next_step(_shard(), 2, resharding=True) == Wait("resharding")
    assert next_step(_upgraded(_shard(), "s0-n0", "s0-n1", "s0-n2"), 2, resharding=True) == Done()


def test_the_switchover_target_is_never_halted_excluded_lost_leaving_or_another_shard() -> None:
    nodes = _shard() + _shard(1)
    assert switchover_target(nodes, 0, "s0-n0") == "s0-n2"
    assert switchover_target(nodes, 0, "s0-n2") == "s0-n1"
    for change in ({"halted": True}, {"lost": True}, {"staying": False}, {"ready": False}):
        changed = [replace(n, **change) if n.id == "s0-n2" else n for n in nodes]
        assert switchover_target(changed, 0, "s0-n0") == "s0-n1", change


def test_up_to_date_only_skips_replicas_still_on_the_old_version() -> None:
    nodes = _upgraded(_shard(), "s0-n1")
    assert switchover_target(nodes, 0, "s0-n0") == "s0-n2"
    assert switchover_target(nodes, 0, "s0-n0", up_to_date_only=True) == "s0-n1"


def test_a_cordoned_replica_is_the_last_resort() -> None:
    nodes = [replace(n, cordoned=True) if n.id == "s0-n2" else n for n in _shard()]
    assert switchover_target(nodes, 0, "s0-n0") == "s0-n1"
    only = [n for n in nodes if n.id != "s0-n1"]
    assert switchover_target(only, 0, "s0-n0") == "s0-n2"
    assert switchover_target(only, 0, "s0-n0", allow_cordoned=False) is None


def test_ties_go_to_the_first_listed() -> None:
    nodes = [replace(n, applied_seq=5) for n in _shard()]
    assert switchover_target(nodes, 0, "s0-n0") == "s0-n1"
