"""The replica request by which `engram local scale --replicas` asks the supervisor to start and stop
replicas (only the supervisor writes state.json and starts nodes; see supervisor.py and requests.py).

The command decides (engram.orchestration.replicas) and names every node: ``add`` as id, shard and
zone, ``remove`` as ids. The supervisor gives the added ones fresh ports and configs as `up` writes
them and starts them; it refuses the whole request if it last saw a node to remove lead its shard,
else forgets those nodes and stops them with SIGTERM (a replica just exits). It then sets
state.replicas and saves state.json with ``replica_request`` = the id (and ``replica_request_error``).
Carrying out a request twice changes nothing: nodes already there are not added again, nor are
nodes already gone removed.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engram.orchestration.replicas import AddNode
from engram.orchestration.zones import NodePlacement
from engram.platforms.local import plan, ports, requests
from engram.platforms.local.shard_nodes import allocate_ports, serves_tls
from engram.platforms.local.state import ClusterState, NodeState

REQUEST_FILE = "replica-request.json"


@dataclass(frozen=True)
class ReplicaRequest:
    """Start ``add``, stop and forget ``remove`` (node ids), and record ``replicas`` per shard."""

    id: str
    replicas: int
    add: list[AddNode] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)

    @classmethod
    def new(cls, replicas: int, add: list[AddNode], remove: list[str]) -> ReplicaRequest:
        return cls(uuid.uuid4().hex, replicas, list(add), list(remove))


def send_request(state: ClusterState, request: ReplicaRequest) -> None:
    """Ask the supervisor for the request (requests.py); ProcessLookupError when it is gone."""
    requests.send(state, REQUEST_FILE, asdict(request))


def _parse(data: dict[str, Any]) -> ReplicaRequest:
    add = [AddNode(str(n["id"]), int(n["shard"]), int(n["index"]), str(n["zone"])) for n in data["add"]]
    remove = data["remove"]
    if not isinstance(remove, list) or not all(isinstance(node, str) for node in remove):
        raise TypeError("remove must be a list of node ids")
    return ReplicaRequest(str(data["id"]), int(data["replicas"]), add, remove)


def take_request(state: ClusterState) -> ReplicaRequest | None:
    """The waiting replica request, taken once; ValueError when the file holds something else."""
    return requests.take(state, REQUEST_FILE, "replica request", _parse)


def request_path(state: ClusterState) -> Path:
    return Path(state.dir) / REQUEST_FILE


def plan_nodes(state: ClusterState, add: list[AddNode]) -> list[NodeState]:
    """The nodes of ``add`` not in the cluster yet, with free ports laid out as `up` does (client
    ports, then control ports, then TLS ones when the cluster serves TLS); PortBusy if none are free."""
    new = [a for a in add if state.node(a.id) is None]
    per_node = 3 if serves_tls(state) else 2
    numbers = allocate_ports(state, len(new) * per_node)
    count = len(new)
    clients, controls, tls = numbers[:count], numbers[count : 2 * count], numbers[2 * count :]
    hosts = {link.zone: link.address for link in state.network.links} if state.network else {}
    ca = state.local_tls.ca_file if state.local_tls else ""
    nodes = []
    for i, a in enumerate(new):
        node = plan.node_state(state.name, Path(state.dir), NodePlacement(a.shard, a.index, a.zone, False),
                               clients[i], controls[i], tls[i] if tls else 0,
                               hosts.get(a.zone, ports.LOOPBACK), ca)
        if node.id != a.id:
            raise ValueError(f"node {a.id} does not follow the cluster's naming ({node.id})")
        nodes.append(node)
    return nodes
