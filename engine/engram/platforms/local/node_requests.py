"""The node request by which `engram local upgrade` has the supervisor replace one node with another
command or valkey-server (only the supervisor writes state.json and starts nodes; see supervisor.py).

1. the command writes DIR/NAME/node-request.json atomically and sends SIGUSR1 (the supervisor also
   looks for the file every POLL_CHILDREN, so a lost signal only delays it);
2. the supervisor removes the file, records the node's new command and binary (rewriting its config
   for a binary), stops the node with SIGTERM (SIGKILL after STOP_TIMEOUT) and, once it has exited,
   starts it again at once with them and saves state.json with ``node_request`` = the id (at once,
   with ``node_request_error``, when it cannot): from then on only the new process can answer on
   the node's ports. A request naming no node sets what nodes started later run;
3. the command waits, with a deadline, until state.json names its id, then for the node to serve.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engram.platforms.local import requests
from engram.platforms.local.state import ClusterState

REQUEST_FILE = "node-request.json"


@dataclass(frozen=True)
class NodeRequest:
    """Run ``node`` with ``command`` and/or ``valkey_server`` (empty: keep what it has).

    With ``node`` empty: the cluster's defaults, for nodes of shards added later."""

    id: str
    node: str
    command: list[str] = field(default_factory=list)
    valkey_server: str = ""

    @classmethod
    def new(cls, node: str, command: list[str], valkey_server: str) -> NodeRequest:
        return cls(uuid.uuid4().hex, node, list(command), valkey_server)


def request_path(state: ClusterState) -> Path:
    return Path(state.dir) / REQUEST_FILE


def send_request(state: ClusterState, request: NodeRequest) -> None:
    """Ask the supervisor for the request (requests.py); ProcessLookupError when it is gone."""
    requests.send(state, REQUEST_FILE, asdict(request))


def _parse(data: dict[str, Any]) -> NodeRequest:
    command = data.get("command") or []
    if not isinstance(command, list) or not all(isinstance(word, str) for word in command):
        raise TypeError("command must be a list of strings")
    return NodeRequest(str(data["id"]), str(data["node"]), command, str(data.get("valkey_server") or ""))


def take_request(state: ClusterState) -> NodeRequest | None:
    """The waiting node request, taken once; ValueError when the file holds something else."""
    return requests.take(state, REQUEST_FILE, "node request", _parse)
