"""Pieces every builder shares: object metadata with an owner reference, restricted security contexts."""

from __future__ import annotations

import base64
import copy
from typing import Any

from engram_operator import API_VERSION, KIND, constants, labels
from engram_operator.spec import ClusterSpec


def owner_reference(cluster: ClusterSpec) -> dict[str, Any]:
    """The MemoryCluster as controlling owner, so the garbage collector removes children with it."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": cluster.name,
        "uid": cluster.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    cluster: ClusterSpec,
    name: str,
    labels: dict[str, str],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": cluster.namespace,
        "labels": dict(labels),
        "ownerReferences": [owner_reference(cluster)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def opaque_secret(
    cluster: ClusterSpec, name: str, labels: dict[str, str], data: dict[str, str]
) -> dict[str, Any]:
    """An Opaque Secret the MemoryCluster owns, from text values (base64-encoded here)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(cluster, name, labels),
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def pod_security_context() -> dict[str, Any]:
    """Pod-level settings of the Kubernetes "restricted" Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": constants.RUN_AS_USER,
        "runAsGroup": constants.RUN_AS_USER,
        "fsGroup": constants.RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def zone_affinity(topology_key: str, zone: str) -> dict[str, Any]:
    """Pin a pod to one zone: the planner decided it, the scheduler only picks a node there."""
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": topology_key, "operator": "In", "values": [zone]}]}
                ]
            }
        }
    }


def scheduling(cluster: ClusterSpec, own: dict[str, Any]) -> dict[str, Any]:
    """A pod spec's affinity, nodeSelector and tolerations: the operator's ``own`` affinity (zone pin,
    anti-affinity) merged with the spec's placement, never weakened by it.

    Required node selector terms are ORed by the scheduler, so each of the user's terms gets the
    zone pin's expressions added (a term of theirs alone could admit another zone); everything
    preferred, and pod (anti-)affinity, is simply added to the operator's.
    """
    user = copy.deepcopy(cluster.placement.affinity)
    merged = copy.deepcopy(own)
    node = user.pop("nodeAffinity", None) or {}
    if node:
        into = merged.setdefault("nodeAffinity", {})
        key = "requiredDuringSchedulingIgnoredDuringExecution"
        theirs = (node.get(key) or {}).get("nodeSelectorTerms") or []
        ours = (into.get(key) or {}).get("nodeSelectorTerms") or []
        if theirs and ours:
            into[key] = {"nodeSelectorTerms": [_and_terms(t, o) for t in theirs for o in ours]}
        elif theirs:
            into[key] = {"nodeSelectorTerms": theirs}
        _add_preferred(into, node)
    for kind in ("podAffinity", "podAntiAffinity"):
        extra = user.pop(kind, None) or {}
        if extra:
            into = merged.setdefault(kind, {})
            _add_preferred(into, extra)
            required = "requiredDuringSchedulingIgnoredDuringExecution"
            if extra.get(required):
                into[required] = [*(into.get(required) or []), *extra[required]]
    out: dict[str, Any] = {}
    if merged:
        out["affinity"] = merged
    if cluster.placement.node_selector:
        out["nodeSelector"] = dict(cluster.placement.node_selector)
    if cluster.placement.tolerations:
        out["tolerations"] = copy.deepcopy(cluster.placement.tolerations)
    return out


def _and_terms(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """One node selector term requiring both (expressions within a term are ANDed)."""
    out: dict[str, Any] = {}
    for key in ("matchExpressions", "matchFields"):
        both = [*(a.get(key) or []), *(b.get(key) or [])]
        if both:
            out[key] = both
    return out


def _add_preferred(into: dict[str, Any], extra: dict[str, Any]) -> None:
    key = "preferredDuringSchedulingIgnoredDuringExecution"
    if extra.get(key):
        into[key] = [*(into.get(key) or []), *extra[key]]


def fqdn(pod: str, service: str, cluster: ClusterSpec) -> str:
    """A pod's DNS name through its headless Service (needs hostname + subdomain on the pod)."""
    return f"{pod}.{service}.{cluster.namespace}.svc.{constants.CLUSTER_DOMAIN}"


def one_shot_job(
    cluster: ClusterSpec, name: str, job_labels: dict[str, str], annotations: dict[str, str],
    cluster_id: str, container: dict[str, Any], volumes: list[dict[str, Any]], *,
    backoff_limit: int, deadline_seconds: int, permanent_exit_codes: list[int],
) -> dict[str, Any]:
    """A batch/v1 Job of one engine container (provisioning, resharding): retried attempts, some
    exit codes final at once, evictions not counted, scheduled wherever the nodes allow."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(cluster, name, job_labels, annotations),
        "spec": {
            "backoffLimit": backoff_limit,
            "activeDeadlineSeconds": deadline_seconds,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": container["name"],
                            "operator": "In",
                            "values": permanent_exit_codes,
                        },
                    },
                    # An evicted attempt (a node drain) is not the Job's fault: it does not count.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                ]
            },
            "template": {
                "metadata": {"labels": job_labels, "annotations": {labels.CLUSTER_ID: cluster_id}},
                "spec": {
                    # Never, not OnFailure: a podFailurePolicy needs each attempt in a pod of its own.
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(),
                    # Not pinned to a zone: it talks to the journal (and a reshard to every primary).
                    **scheduling(cluster, {}),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
