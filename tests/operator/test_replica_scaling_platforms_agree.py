"""Issue 13: for the same shard state the local platform (`engram local scale --replicas`) and the operator
(spec.replicasPerShard) remove the same replicas and add them at the same indices in the same zones.

Both call engram.orchestration.replicas; this test keeps either platform from choosing for itself.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest
from cluster_state import CLUSTER_ID, NOW, ZONES, running, spec

from engram.platforms.local.replicas import replica_decision
from engram.platforms.local.state import NodeState
from engram_operator import builders
from engram_operator.decisions import decide
from engram_operator.observe import EngineStatus, PodInfo

# (shard, index, zone, what the node answers: "primary", "replica", "halted", or "" for no answer)
Node = tuple[int, int, str, str]
A, B, C = ZONES

STATES: dict[str, tuple[list[Node], int]] = {
    "a primary at the highest index stays; the highest replica goes": (
        [(0, 0, A, "replica"), (0, 1, B, "replica"), (0, 2, C, "primary"),
         (1, 0, A, "primary"), (1, 1, B, "replica"), (1, 2, C, "replica")], 1),
    "a halted replica and one that does not answer go first": (
        [(0, 0, A, "primary"), (0, 1, B, "halted"), (0, 2, C, "replica"),
         (1, 0, A, "primary"), (1, 1, B, "replica"), (1, 2, C, "")], 1),
    "a replica in a crowded zone goes before a higher index": (
        [(0, 0, B, "primary"), (0, 1, B, "replica"), (0, 2, A, "replica"), (0, 3, C, "replica"),
         (1, 0, A, "primary"), (1, 1, B, "replica"), (1, 2, C, "replica")], 2),
    "down to no replicas": (
        [(0, 0, A, "replica"), (0, 1, B, "primary"), (0, 2, C, "replica"),
         (1, 0, A, "primary"), (1, 1, B, "replica")], 0),
    "new replicas fill gaps in the zones their shards lack": (
        [(0, 0, A, "primary"), (0, 2, C, "replica"), (1, 1, B, "primary"), (1, 2, C, "replica")], 2),
    "up from no replicas": (
        [(0, 0, B, "primary"), (1, 0, C, "primary")], 2),
}


Choice = tuple[set[tuple[int, int]], set[tuple[int, int, str]]]


def local_choice(nodes: list[Node], replicas: int) -> Choice:
    """(shard, index) removed and (shard, index, zone) added by `engram local scale --replicas`."""
    state = SimpleNamespace(name="demo", zones=list(ZONES), nodes=[
        NodeState(id=f"demo-s{s}-n{i}", shard=s, zone=z, port=0, config="", log="") for s, i, z, _ in nodes])
    # What each node's ENGRAM.STATUS said, as the scale command's probe returns it.
    live = [{"role": _role(a), "halted": "checksum" if a == "halted" else ""} if a else None
            for *_, a in nodes]
    decision = replica_decision(state, live, replicas)  # type: ignore[arg-type]
    index = {n.id: (n.shard, int(n.id.rpartition("-n")[2])) for n in state.nodes}
    return {index[r] for r in decision.remove}, {(a.shard, a.index, a.zone) for a in decision.add}


def operator_choice(nodes: list[Node], replicas: int) -> Choice:
    """(shard, index) whose pods the operator deletes and (shard, index, zone) of the pods it creates."""
    cluster = spec(shards=2, replicasPerShard=replicas)
    pods = [PodInfo(name=f"demo-{s}-{i}", shard=s, index=i, zone=z, phase="Running", ready=True,
                    spec_hash=builders.pod_spec_hash(cluster), role_label=_role(a) or "replica",
                    ip="10.0.0.1", cluster_id=CLUSTER_ID, node=f"{z}-0", created=NOW - 3600)
            for s, i, z, a in nodes]
    answers = {f"demo-{s}-{i}": EngineStatus(role=_role(a), halted="checksum" if a == "halted" else "",
                                             applied_seq=100, committed_seq=100)
               for s, i, z, a in nodes if a}
    plan = decide(cluster, dataclasses.replace(running(cluster), pods=pods, statuses=answers))
    at = {p.name: (p.shard, p.index) for p in pods}
    return {at[name] for name in plan.delete_pods}, {_placed(o) for o in plan.create if o["kind"] == "Pod"}


def _role(answer: str) -> str:
    return "replica" if answer == "halted" else answer


def _placed(pod: dict[str, Any]) -> tuple[int, int, str]:
    lab = pod["metadata"]["labels"]
    return int(lab["engram.io/shard"]), int(lab["engram.io/node-index"]), lab["engram.io/zone"]


@pytest.mark.parametrize("case", list(STATES))
def test_both_platforms_remove_and_add_the_same_replicas(case: str) -> None:
    nodes, replicas = STATES[case]
    local = local_choice(nodes, replicas)
    assert operator_choice(nodes, replicas) == local
    # Every case changes something, so agreeing on nothing cannot pass.
    assert local != (set(), set())
