"""`engram local scale --replicas R`: add or remove replicas of every shard of a running local cluster.

The shared decision (engram.orchestration.replicas) names the nodes; a replica request
(replica_nodes.py) has the supervisor start or stop them. A new replica restores from its shard's
newest snapshot and the journal after it, like any restarted node; the command returns once each
is a replica that has applied what its shard had committed when it was started. Removed replicas
are stopped and forgotten, so nothing restarts them. Running it again with the same R resumes an
interrupted run or, when every shard has R replicas, changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engram.orchestration.replicas import (
    PRIMARY,
    REPLICA,
    ReplicaNode,
    ReplicaPlan,
    ReplicaScaleError,
    plan_replicas,
)
from engram.orchestration.zones import Spreading
from engram.platforms.local import plan, probe, processes, requests
from engram.platforms.local.cluster import (
    CRASH_LOOP_RESTARTS,
    LocalError,
    describe,
    load_running,
)
from engram.platforms.local.replica_nodes import ReplicaRequest, send_request
from engram.platforms.local.scale import ScaleRefused
from engram.platforms.local.state import NODES_STARTED, ClusterState, NodeState

Say = Callable[[str], None]
Live = list[dict[str, str] | None]

# For every new replica to restore, replay and catch up (a large shard takes longer: --timeout).
CATCH_UP_TIMEOUT = 120.0
# For the supervisor to carry out the request: starting is quick, a replica stops in well under its
# STOP_TIMEOUT (then SIGKILL).
REQUEST_TIMEOUT = 30.0
PROGRESS_EVERY = 5.0
POLL = 0.2


def scale_replicas(base: str | Path, name: str, replicas: int, *, timeout: float = CATCH_UP_TIMEOUT,
                   say: Say = lambda _m: None) -> dict[str, Any]:
    """Give every shard of the running cluster `replicas` replicas; its status afterwards.

    ScaleRefused when the count cannot be had; LocalError when the cluster cannot be changed now."""
    if replicas < 0:
        raise ScaleRefused(f"--replicas must be 0 or more, got {replicas}")
    state = load_running(base, name)
    if state.phase != NODES_STARTED:
        raise LocalError(f"cluster {name} is still starting (phase {state.phase}); scale it once it serves")
    if "replica_request" not in json.loads(state.path.read_text()):
        raise LocalError(f"cluster {name}'s supervisor predates `engram local scale --replicas`: restart the "
                         "cluster (`engram local down --keep-data`, then `up`) to scale its replicas")
    with requests.exclusive(state):
        live = _probe(state.nodes)
        record = describe(state, live)["resharding"]
        if record is not None and record["phase"] != "done":
            shards = record["to_shards"]
            raise LocalError(f"cluster {name} is resharding to {shards} shards ({record['phase']}); finish "
                             f"that first (`engram local scale {name} --shards {shards}`), then change the "
                             "replicas; nothing was changed")
        try:
            decision = replica_decision(state, live, replicas)
        except ReplicaScaleError as exc:
            raise ScaleRefused(str(exc)) from None
        if decision.waiting:
            raise LocalError(f"{'; '.join(decision.waiting)}; run the same command again once it has one "
                             "(`engram local status`); nothing was changed")
        for warning in decision.warnings:
            say(f"warning: {warning}")
        if decision.unchanged and state.replicas == replicas:
            say(f"cluster {name} already has {_count(replicas)} per shard; nothing to do")
            return describe(state, live)
        for node in decision.add:
            say(f"shard {node.shard}: adding {node.id} in zone {node.zone}")
        for node_id in decision.remove:
            node = state.node(node_id)
            assert node is not None
            say(f"shard {node.shard}: removing {node_id} (zone {node.zone})")
        started = time.monotonic()
        state = _ask(state, ReplicaRequest.new(replicas, list(decision.add), list(decision.remove)))
        if decision.remove:
            say(f"stopped {', '.join(decision.remove)}")
        _CatchUp(state, [a.id for a in decision.add], timeout, say).run()
        say(f"cluster {name} has {_count(replicas)} per shard ({time.monotonic() - started:.1f}s)")
        current = ClusterState.load(state.path)
        return describe(current, _probe(current.nodes))


def replica_decision(state: ClusterState, live: Live, replicas: int) -> ReplicaPlan:
    """The shared decision for this cluster as it runs: which replicas to start where, which to stop."""
    return plan_replicas(replica_views(state, live), state.zones, replicas, Spreading.PREFERRED,
                         lambda shard, index: plan.node_id(state.name, shard, index))


def replica_views(state: ClusterState, live: Live) -> list[ReplicaNode]:
    """Each node as the shared decision sees it: its place, zone and what it said it is."""
    views = []
    for position, (node, st) in enumerate(zip(state.nodes, live, strict=True)):
        index = node_index(node.id)
        views.append(ReplicaNode(node.id, node.shard, position if index is None else index, node.zone,
                                 (st or {}).get("role", ""), bool(st and st.get("halted"))))
    return views


def node_index(node_id: str) -> int | None:
    """k of NAME-s<shard>-n<k> (plan.node_id), or None for an id of another shape."""
    _, _, tail = node_id.rpartition("-n")
    return int(tail) if tail.isdigit() else None


def _count(replicas: int) -> str:
    return f"{replicas} replica" + ("" if replicas == 1 else "s")


def _probe(nodes: list[NodeState]) -> Live:
    return asyncio.run(probe.fetch_all(probe.control_addresses(nodes)))


def _ask(state: ClusterState, request: ReplicaRequest) -> ClusterState:
    """Send the request; the state file once the supervisor has carried it out."""
    requests.delivered(state, lambda: send_request(state, request), "start or stop its nodes")
    deadline = time.monotonic() + REQUEST_TIMEOUT
    doing = "changing its replicas"
    while (current := requests.carried_out(state, request.id, _replica_answer, doing)) is None:
        if time.monotonic() >= deadline:
            raise LocalError(f"cluster {state.name}'s supervisor did not change its replicas within "
                             f"{REQUEST_TIMEOUT:g}s (log: {Path(state.logs) / 'supervisor.log'}); run the "
                             "same command again to resume")
        time.sleep(POLL)
    return current


def _replica_answer(state: ClusterState) -> tuple[str, str]:
    return state.replica_request, state.replica_request_error


class _CatchUp:
    """Wait until every new node is a replica that applied its shard's committed entry of the moment
    it was first seen (writes go on meanwhile, so a later mark would never be reached for sure)."""

    def __init__(self, state: ClusterState, added: list[str], timeout: float, say: Say) -> None:
        self.state, self.waiting, self.timeout, self.say = state, list(added), timeout, say
        self.goals: dict[str, int] = {}
        self.restarts = {n: node.restarts for n in added if (node := state.node(n)) is not None}

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        shown = time.monotonic()
        begun = time.monotonic()
        while self.waiting:
            state = ClusterState.load(self.state.path)
            live = dict(zip((n.id for n in state.nodes), _probe(state.nodes), strict=True))
            for node_id in list(self.waiting):
                done = self._check(state, live, node_id)
                if done:
                    self.waiting.remove(node_id)
                    self.say(f"{done} ({time.monotonic() - begun:.1f}s)")
            if not self.waiting:
                return
            now = time.monotonic()
            if now >= deadline:
                raise LocalError(f"timed out after {self.timeout:g}s waiting for {', '.join(self.waiting)} "
                                 f"to catch up: {self._where(state, live)}; run the same command again to "
                                 "resume")
            if now - shown >= PROGRESS_EVERY:
                shown = now
                self.say(f"waiting: {self._where(state, live)}")
            time.sleep(POLL)

    def _check(self, state: ClusterState, live: dict[str, dict[str, str] | None], node_id: str) -> str:
        """What the node says once it is a caught-up replica ("" until then); LocalError if it cannot be."""
        node = state.node(node_id)
        if node is None:
            raise LocalError(f"{node_id} is gone from cluster {state.name}; run the same command again")
        if node.restarts >= self.restarts.get(node_id, 0) + CRASH_LOOP_RESTARTS:
            raise LocalError(f"{node_id} keeps crashing (last exit code {node.last_exit}); log {node.log}:\n"
                             f"{processes.tail(node.log, 8)}")
        mine = live.get(node_id)
        primary = next((live[n.id] for n in state.nodes if n.shard == node.shard and live.get(n.id)
                        and (live[n.id] or {}).get("role") == PRIMARY), None)
        if primary is not None:
            self.goals.setdefault(node_id, _seq(primary, "committed_seq"))
        if mine is None:
            return ""
        if mine.get("halted"):
            raise LocalError(f"{node_id} halted: {mine['halted']} (log: {node.log})")
        if mine.get("role") != REPLICA or node_id not in self.goals:
            return ""
        applied = _seq(mine, "applied_seq")
        if applied < self.goals[node_id]:
            return ""
        return (f"shard {node.shard}: {node_id} is a caught-up replica in zone {node.zone} "
                f"(applied entry {applied})")

    def _where(self, state: ClusterState, live: dict[str, dict[str, str] | None]) -> str:
        parts = []
        for node_id in self.waiting:
            st = live.get(node_id)
            if st is None:
                parts.append(f"{node_id} not answering yet (starting, restoring)")
            else:
                goal = self.goals.get(node_id)
                parts.append(f"{node_id} {st.get('role') or '?'}, applied entry {_seq(st, 'applied_seq')}"
                             + (f" of {goal}" if goal is not None else ""))
        return "; ".join(parts)


def _seq(st: dict[str, str] | None, key: str) -> int:
    with contextlib.suppress(ValueError, TypeError):
        return int((st or {}).get(key) or 0)
    return 0
