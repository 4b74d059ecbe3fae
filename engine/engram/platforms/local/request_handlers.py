"""How the supervisor carries out what `engram local scale` and `engram local upgrade` ask of it.

Each request has one shape: take the waiting request file (shard_nodes.py, node_requests.py,
replica_nodes.py), change the cluster's nodes, then answer in state.json with the request's id and
an error ("" when done), which the command waits for. The supervisor's loop calls carry_out_requests;
the process work (starting, stopping, replacing a node) stays the supervisor's, behind Nodes.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from typing import Protocol, TypeVar

from engram.orchestration.zones import ZonePlanError
from engram.platforms.local import node_requests, replica_nodes, shard_nodes
from engram.platforms.local.plan import PlanError
from engram.platforms.local.ports import PortBusy
from engram.platforms.local.state import ClusterState, NodeState

log = logging.getLogger("engram.supervisor")

R = TypeVar("R")


class Nodes(Protocol):
    """What carrying out a request needs of the supervisor: the state it owns and its node processes."""

    state: ClusterState
    # The last status poll: node id -> its ENGRAM.STATUS answer, None while it does not answer.
    status: dict[str, dict[str, str] | None]

    def save(self) -> None: ...

    def start_nodes(self, added: list[NodeState], shards: int | None = None) -> None: ...

    async def stop_nodes(self, gone: set[str]) -> None: ...

    def replace_node(self, request: node_requests.NodeRequest) -> None: ...


async def carry_out_requests(nodes: Nodes) -> None:
    """Carry out whichever requests are waiting, shards first (stopping a shard's nodes may wait)."""
    await carry_out_shard_request(nodes)
    carry_out_node_request(nodes)
    await carry_out_replica_request(nodes)


def _take(take_request: Callable[[ClusterState], R | None], state: ClusterState) -> R | None:
    """The waiting request, or None; an unreadable one is logged and dropped (the command times out)."""
    try:
        return take_request(state)
    except ValueError as exc:
        log.error("%s; ignored", exc)
        return None


async def carry_out_shard_request(nodes: Nodes) -> None:
    """Run nodes for exactly the shards a waiting shard request names (see the supervisor's docstring)."""
    s = nodes.state
    request = _take(shard_nodes.take_request, s)
    if request is None:
        return
    log.info("shard request %s: nodes for %d shards (now %d)", request.id, request.shards, s.shards)
    error = ""
    try:
        if request.shards < 1:
            raise PlanError(f"a cluster keeps at least one shard, not {request.shards}")
        added = shard_nodes.plan_added_nodes(s, request.shards, shard_nodes.allocate_ports(
            s, shard_nodes.ports_needed(s, request.shards)))
        nodes.start_nodes(added, request.shards)
        # Forgotten before they stop (the relay stops routing to them first); data and logs stay until `down`.
        await nodes.stop_nodes({n.id for n in shard_nodes.removed_nodes(s, request.shards)})
        s.shards = request.shards
        s.record_identity()  # `up` after `down --keep-data` must be given the new shard count
    except (PlanError, PortBusy, ZonePlanError, OSError) as exc:
        error = f"the nodes of {request.shards} shards could not be laid out: {exc}"
        log.error("shard request %s failed: %s", request.id, error)
    s.shard_request, s.shard_request_error = request.id, error
    nodes.save()


def carry_out_node_request(nodes: Nodes) -> None:
    """Replace the node a waiting node request names with its command and binary (node_requests.py)."""
    s = nodes.state
    request = _take(node_requests.take_request, s)
    if request is None:
        return
    error = ""
    try:
        if not request.node:
            s.node_command = request.command or s.node_command
            s.valkey_server = request.valkey_server or s.valkey_server
            log.info("node request %s: nodes started from now on run %s with %s", request.id,
                     shlex.join(s.node_command) or "the default command", s.valkey_server)
        else:
            nodes.replace_node(request)
            return  # answered by the supervisor once the new process runs
    except (LookupError, OSError, ValueError, TypeError) as exc:
        error = f"node {request.node} could not be replaced: {exc}"
        log.error("node request %s failed: %s", request.id, error)
    s.node_request, s.node_request_error = request.id, error
    nodes.save()


async def carry_out_replica_request(nodes: Nodes) -> None:
    """Start and stop the replicas a waiting replica request names (replica_nodes.py)."""
    s = nodes.state
    request = _take(replica_nodes.take_request, s)
    if request is None:
        return
    log.info("replica request %s: %d replicas per shard, adding %s, removing %s", request.id,
             request.replicas, ", ".join(a.id for a in request.add) or "none",
             ", ".join(request.remove) or "none")
    error = ""
    try:
        # Checked before anything changes: the command decided on roles a moment ago, and a
        # failover or a rebalance since may have made one of these nodes its shard's primary.
        leading = [key for key in request.remove if (nodes.status.get(key) or {}).get("role") == "primary"]
        if leading:
            raise PlanError(f"{', '.join(leading)} now {'lead' if len(leading) > 1 else 'leads'} "
                            "its shard, and a primary is never removed; run the command again")
        nodes.start_nodes(replica_nodes.plan_nodes(s, request.add))
        await nodes.stop_nodes(set(request.remove))
        s.replicas = request.replicas
    except (PlanError, PortBusy, OSError, ValueError) as exc:
        error = f"the replicas could not be changed: {exc}"
        log.error("replica request %s failed: %s", request.id, error)
    s.replica_request, s.replica_request_error = request.id, error
    nodes.save()
