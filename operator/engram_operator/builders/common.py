"""Pieces every builder shares: object metadata with an owner reference, restricted security contexts."""

from __future__ import annotations

from typing import Any

from engram_operator import API_VERSION, KIND, constants
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


def fqdn(pod: str, service: str, cluster: ClusterSpec) -> str:
    """A pod's DNS name through its headless Service (needs hostname + subdomain on the pod)."""
    return f"{pod}.{service}.{cluster.namespace}.svc.{constants.CLUSTER_DOMAIN}"
