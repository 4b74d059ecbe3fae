"""What `kubectl engram` shows and asks, decided from the objects kubectl returns (no calls here)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from engram.resharding.record import format_duration
from engram_operator import constants, labels


class PluginError(Exception):
    """Something the user asked cannot be done; the message says why."""


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _restarts(pod: Mapping[str, Any]) -> int:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return sum(int(c.get("restartCount", 0)) for c in statuses)


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def status_doc(cluster: Mapping[str, Any], pods: Sequence[Mapping[str, Any]],
               journal_pods: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The cluster in the shape of `engram local status --json`, plus the operator's per-shard view."""
    meta, spec, status = cluster["metadata"], cluster.get("spec") or {}, cluster.get("status") or {}
    name, namespace = meta["name"], meta.get("namespace", "default")
    shard_status = list(status.get("shards") or [])
    halted = {pod for s in shard_status for pod in s.get("halted") or []}
    nodes = []
    for pod in pods:
        lab, ip = _labels(pod), (pod.get("status") or {}).get("podIP") or ""
        pod_name = pod["metadata"]["name"]
        nodes.append({
            "id": pod_name,
            "shard": int(lab.get(labels.SHARD, -1)),
            "index": int(lab.get(labels.NODE_INDEX, -1)),
            "zone": lab.get(labels.ZONE, ""),
            "role": lab.get(labels.ROLE, "unknown"),
            "address": f"{ip}:{constants.CLIENT_PORT}" if ip else "",
            "admin": f"{ip}:{constants.ADMIN_PORT}" if ip else "",
            "pid": None,
            "applied_seq": None,
            "restarts": _restarts(pod),
            "ready": _ready(pod),
            "halted": "halted" if pod_name in halted else "",
        })
    nodes.sort(key=lambda n: (n["shard"], n["index"], n["id"]))
    journal = []
    for pod in sorted(journal_pods, key=lambda p: p["metadata"]["name"]):
        ip = (pod.get("status") or {}).get("podIP") or ""
        journal.append({
            "target": pod["metadata"]["name"],
            "zone": _labels(pod).get(labels.ZONE, ""),
            "url": f"nats://{ip}:{constants.JOURNAL_CLIENT_PORT}" if ip else "",
            "pid": None,
            "restarts": _restarts(pod),
        })
    return {
        "name": name,
        "namespace": namespace,
        "endpoint": f"{labels.endpoint_service_name(name)}.{namespace}.svc:{constants.CLIENT_PORT}",
        "phase": status.get("phase", ""),
        "shards": int(spec.get("shards", 1)),
        "replicas": int(spec.get("replicasPerShard", 1)),
        "zones": sorted({n["zone"] for n in nodes if n["zone"]}),
        "nodes": nodes,
        "journal": journal,
        "shard_status": shard_status,
        "conditions": list(status.get("conditions") or []),
        # status.resharding as the operator writes it (camelCase, eta in seconds), or None.
        "resharding": dict(status["resharding"]) if status.get("resharding") else None,
    }



def reshard_progress_line(record: Mapping[str, Any], width: int = 20) -> str:
    """status.resharding on one line, as `engram local scale` draws it: shard counts, phase, a bar of
    slots moved, keys moved, the ETA when the operator knows one."""
    total, moved = int(record.get("slotsTotal") or 0), int(record.get("slotsMoved") or 0)
    filled = min(width, round(moved / total * width)) if total else 0
    line = (f"{record.get('fromShards', '?')} -> {record.get('toShards', '?')} shards  "
            f"{record.get('phase', ''):<8} [{'#' * filled}{'.' * (width - filled)}] {moved}/{total} slots  "
            f"{int(record.get('keysMoved') or 0)} keys")
    eta = record.get("eta")
    return line + (f"  ETA {format_duration(float(eta))}" if eta is not None else "")


def resharding_lines(doc: Mapping[str, Any]) -> list[str]:
    """What `status` prints below the tables: the last reshard's progress and the Resharding condition;
    nothing for a cluster whose shard count never changed."""
    record = doc.get("resharding") or {}
    condition = next((c for c in doc.get("conditions") or [] if c.get("type") == "Resharding"), {})
    lines = [f"resharding: {reshard_progress_line(record)}"] if record else []
    status, reason = condition.get("status", "Unknown"), condition.get("reason", "")
    if condition and (record or (status, reason) != ("False", "NotResharded")):
        message = " ".join(str(condition.get("message") or "").split())
        lines.append(f"condition Resharding: {status} ({reason})" + (f": {message}" if message else ""))
    return lines


def switchover_pair(doc: Mapping[str, Any], target: str) -> tuple[str, str]:
    """(the primary that hands over, the replica that takes over) for a switchover to ``target``."""
    nodes = {n["id"]: n for n in doc["nodes"]}
    node = nodes.get(target)
    if node is None:
        raise PluginError(f"{target} is not a node of MemoryCluster {doc['name']}; nodes: "
                          f"{', '.join(sorted(nodes)) or 'none'}")
    def takes_over(n: Mapping[str, Any]) -> bool:
        return n["role"] == "replica" and n["ready"] and not n["halted"]

    if not takes_over(node):
        replicas = [n["id"] for n in doc["nodes"] if n["shard"] == node["shard"] and takes_over(n)]
        raise PluginError(f"{target} is a {'halted ' if node['halted'] else ''}{node['role']}"
                          f"{'' if node['ready'] else ', not ready'}: a switchover goes to a ready replica "
                          f"(shard {node['shard']}: {', '.join(replicas) or 'none'})")
    primary = next((n for n in doc["nodes"] if n["shard"] == node["shard"] and n["role"] == "primary"), None)
    if primary is None:
        raise PluginError(f"shard {node['shard']} has no primary to hand over from; the engine elects one "
                          "by itself")
    return primary["id"], target


def snapshot_patch(request: str) -> dict[str, Any]:
    """The merge patch that asks the operator for a snapshot of every shard (spec.snapshots.request)."""
    return {"spec": {"snapshots": {"request": request}}}


def snapshot_progress(cluster: Mapping[str, Any], request: str) -> tuple[bool, list[dict[str, Any]]]:
    """Whether the operator finished ``request``, and the per-shard results it recorded."""
    record = (cluster.get("status") or {}).get("snapshots") or {}
    done = record.get("lastRequest") == request and bool(record.get("completedAt"))
    return done, [dict(r) for r in record.get("results") or []] if done else []


def event_rows(events: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    """Events oldest first: when, type, reason, object, message."""
    def when(e: Mapping[str, Any]) -> str:
        return str(e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or "")

    rows = []
    for e in sorted(events, key=when):
        involved = e.get("involvedObject") or {}
        rows.append((when(e), str(e.get("type", "")), str(e.get("reason", "")),
                     f"{involved.get('kind', '')}/{involved.get('name', '')}",
                     " ".join(str(e.get("message", "")).split())))
    return rows


_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) ->")


def forwarded_port(line: str) -> int | None:
    """The local port in kubectl port-forward's "Forwarding from 127.0.0.1:PORT -> REMOTE" line."""
    match = _FORWARDING.search(line)
    return int(match[1]) if match else None
