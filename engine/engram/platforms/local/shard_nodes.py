"""The nodes of shards added to or removed from a running local cluster, and the shard request by
which `engram local scale` asks the supervisor to start or stop them (see supervisor.py)."""

from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from engram.orchestration.zones import Spreading, plan_zones
from engram.platforms.local import plan, ports, requests
from engram.platforms.local.state import ClusterState, NodeState

log = logging.getLogger(__name__)

REQUEST_FILE = "shard-request.json"


@dataclass(frozen=True)
class ShardRequest:
    """Run nodes for shards 0..shards-1 and for no other shard; id names this request in state.json."""

    id: str
    shards: int

    @classmethod
    def new(cls, shards: int) -> ShardRequest:
        return cls(uuid.uuid4().hex, shards)


def request_path(state: ClusterState) -> Path:
    return Path(state.dir) / REQUEST_FILE


def send_request(state: ClusterState, request: ShardRequest) -> None:
    """Ask the supervisor for the request (requests.py); ProcessLookupError when it is gone."""
    requests.send(state, REQUEST_FILE, {"id": request.id, "shards": request.shards})


def take_request(state: ClusterState) -> ShardRequest | None:
    """The waiting shard request, taken once; ValueError when the file holds something else."""
    return requests.take(state, REQUEST_FILE, "shard request",
                         lambda data: ShardRequest(str(data["id"]), int(data["shards"])))


def added_shards(state: ClusterState, shards: int) -> list[int]:
    """Shards below `shards` that have no node yet."""
    have = {n.shard for n in state.nodes}
    return [s for s in range(shards) if s not in have]


def removed_nodes(state: ClusterState, shards: int) -> list[NodeState]:
    """The nodes of shards numbered `shards` and above: scale-in removes the highest shards."""
    return [n for n in state.nodes if n.shard >= shards]


def serves_tls(state: ClusterState) -> bool:
    """Whether the cluster's nodes serve clients over TLS, so new nodes need a TLS port too."""
    return any(n.tls_port for n in state.nodes)


def ports_needed(state: ClusterState, shards: int) -> int:
    """Ports the nodes of the added shards take: client and control ports, and TLS ones if served."""
    nodes = len(added_shards(state, shards)) * (state.replicas + 1)
    return nodes * (3 if serves_tls(state) else 2)


def taken_ports(state: ClusterState) -> set[int]:
    """Every port the cluster's processes were given, listening right now or not (a node restarting)."""
    taken = {state.endpoint_port}
    for n in state.nodes:
        taken |= {n.port, n.control_port, n.tls_port}
    for j in state.journal:
        taken |= {j.port, j.cluster_port, j.http_port}
    return taken - {0}


def allocate_ports(state: ClusterState, count: int) -> list[int]:
    """count free ports none of the cluster's processes holds; PortBusy if there are none.

    A cluster started with --port BASE takes the ports after its highest, as `up` lays ports out
    contiguously; if one of those is busy it takes free ones instead rather than refuse to scale."""
    if count == 0:
        return []
    taken = taken_ports(state)
    if state.base_port is not None:
        try:
            return ports.allocate(count, max(taken) + 1)
        except ports.PortBusy as exc:
            log.warning("%s; the new nodes take free ports instead", exc)
    for _ in range(10):
        numbers = ports.allocate(count)
        # The kernel may hand out a port a crashed node of this cluster is about to listen on again.
        if not taken.intersection(numbers):
            return numbers
    raise ports.PortBusy(f"no {count} free ports outside the {len(taken)} cluster {state.name} holds")


def plan_added_nodes(state: ClusterState, shards: int, numbers: list[int]) -> list[NodeState]:
    """Nodes for the shards below `shards` that have none: the cluster's replica count, zones from
    the zone planner (its placement of a shard depends only on the shard's number) and the given
    ports, laid out as port_layout does: client ports, then control ports, then TLS ports."""
    new = added_shards(state, shards)
    count = len(new) * (state.replicas + 1)
    if len(numbers) != ports_needed(state, shards):
        raise ValueError(f"the added nodes need {ports_needed(state, shards)} ports, got {len(numbers)}")
    clients, controls, tls = numbers[:count], numbers[count : 2 * count], numbers[2 * count :]
    zones = plan_zones(state.zones, shards, state.replicas, Spreading.PREFERRED)
    hosts = {link.zone: link.address for link in state.network.links} if state.network else {}
    nodes: list[NodeState] = []
    for shard in new:
        for placement in zones.shards[shard]:
            i = len(nodes)
            nodes.append(plan.node_state(state.name, Path(state.dir), placement, clients[i], controls[i],
                                         tls[i] if tls else 0, hosts.get(placement.zone, ports.LOOPBACK),
                                         state.local_tls.ca_file if state.local_tls else ""))
    return nodes


def clear_data(nodes: list[NodeState]) -> None:
    """Empty the data directories of nodes about to start: a shard removed earlier under the same
    number left its node's files there, which belong to a journal stream that no longer exists."""
    for node in nodes:
        shutil.rmtree(Path(node.config).parent, ignore_errors=True)
