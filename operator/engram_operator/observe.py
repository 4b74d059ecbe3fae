"""What the operator sees: nodes, engine pods and journal state, parsed from API objects (plain dicts)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engram.node.peer import parse_status
from engram_operator import labels


@dataclass(frozen=True)
class NodeInfo:
    """A Kubernetes node: its failure domain and whether new pods can land on it."""

    name: str
    zone: str | None
    ready: bool
    schedulable: bool

    @property
    def usable(self) -> bool:
        return self.ready and self.schedulable


@dataclass(frozen=True)
class EngineStatus:
    """An engine node's answer to ENGRAM.STATUS (the fields the operator uses)."""

    role: str
    halted: str = ""
    epoch: int = 0
    applied_seq: int = 0
    committed_seq: int = 0
    leader_id: str = ""


@dataclass(frozen=True)
class PodInfo:
    """An engine pod as the operator manages it."""

    name: str
    shard: int
    index: int
    zone: str
    phase: str = "Pending"
    ready: bool = False
    deleting: bool = False
    spec_hash: str = ""
    role_label: str = ""
    ip: str = ""

    @property
    def finished(self) -> bool:
        """A pod that will never run again (evicted, or its containers exited for good)."""
        return self.phase in ("Failed", "Succeeded")


@dataclass(frozen=True)
class Observed:
    """Everything one reconcile decides from."""

    nodes: list[NodeInfo]
    pods: list[PodInfo]
    # (kind, name) of the non-pod children that exist.
    children: frozenset[tuple[str, str]] = frozenset()
    journal_ready: int = 0
    statuses: dict[str, EngineStatus] = field(default_factory=dict)

    def known_zones(self) -> list[str]:
        """Every zone a node is labelled with, healthy or not: the stable base of the plan."""
        return sorted({n.zone for n in self.nodes if n.zone})

    def healthy_zones(self) -> list[str]:
        """Zones where a new pod can be scheduled now; a zone missing here is treated as lost."""
        return sorted({n.zone for n in self.nodes if n.zone and n.usable})

    def unlabelled(self) -> bool:
        """True when no node carries the topology label at all (single-zone or dev clusters)."""
        return bool(self.nodes) and not any(n.zone for n in self.nodes)

    def role(self, pod: PodInfo) -> str:
        status = self.statuses.get(pod.name)
        return status.role if status else (pod.role_label or "starting")


def node_from_api(node: Mapping[str, Any], topology_key: str) -> NodeInfo:
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return NodeInfo(
        name=meta.get("name", ""),
        zone=(meta.get("labels") or {}).get(topology_key),
        ready=ready,
        schedulable=not spec.get("unschedulable", False),
    )


def pod_from_api(pod: Mapping[str, Any]) -> PodInfo | None:
    """None for a pod that is not an engine pod of ours (missing slot labels)."""
    meta = pod.get("metadata") or {}
    pod_labels = meta.get("labels") or {}
    try:
        shard = int(pod_labels[labels.SHARD])
        index = int(pod_labels[labels.NODE_INDEX])
    except (KeyError, ValueError):
        return None
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    return PodInfo(
        name=meta.get("name", ""),
        shard=shard,
        index=index,
        zone=pod_labels.get(labels.ZONE, ""),
        phase=status.get("phase") or "Pending",
        ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
        deleting=bool(meta.get("deletionTimestamp")),
        spec_hash=(meta.get("annotations") or {}).get(labels.POD_SPEC_HASH, ""),
        role_label=pod_labels.get(labels.ROLE, ""),
        ip=status.get("podIP") or "",
    )


def parse_engine_status(reply: Iterable[Any]) -> EngineStatus:
    """ENGRAM.STATUS replies a flat field/value array; values may arrive as bytes or ints."""
    fields = parse_status(list(reply))

    def num(key: str) -> int:
        try:
            return int(fields.get(key) or 0)
        except (TypeError, ValueError):
            return 0

    return EngineStatus(
        role=str(fields.get("role") or "starting"),
        halted=str(fields.get("halted") or ""),
        epoch=num("epoch"),
        applied_seq=num("applied_seq"),
        committed_seq=num("committed_seq"),
        leader_id=str(fields.get("leader_id") or ""),
    )
