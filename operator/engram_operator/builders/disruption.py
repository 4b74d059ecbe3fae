"""PodDisruptionBudgets: voluntary evictions take at most one node per shard and one journal server."""

from __future__ import annotations

from typing import Any

from engram_operator import labels
from engram_operator.builders.common import metadata
from engram_operator.spec import ClusterSpec


def shard_pdb_name(cluster: str, shard: int) -> str:
    return f"{cluster}-shard-{shard}"


def build_shard_pdb(cluster: ClusterSpec, shard: int) -> dict[str, Any]:
    """One node of a shard at a time: a drain never takes a shard's primary and its only replica."""
    match = {**labels.selector(cluster.name, labels.ENGINE), labels.SHARD: str(shard)}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(
            cluster,
            shard_pdb_name(cluster.name, shard),
            {**labels.cluster_labels(cluster.name, labels.ENGINE), labels.SHARD: str(shard)},
        ),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": match}},
    }


def build_journal_pdb(cluster: ClusterSpec) -> dict[str, Any]:
    """One journal server at a time keeps a Raft quorum for every stream."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(
            cluster,
            labels.journal_service_name(cluster.name),
            labels.cluster_labels(cluster.name, labels.JOURNAL),
        ),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": labels.selector(cluster.name, labels.JOURNAL)},
        },
    }
