"""Services: per-pod DNS (headless), the configuration endpoint, and the journal's peer discovery."""

from __future__ import annotations

from typing import Any

from engram_operator import constants, labels
from engram_operator.builders.common import metadata
from engram_operator.spec import ClusterSpec


def _service(cluster: ClusterSpec, name: str, component: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(cluster, name, labels.cluster_labels(cluster.name, component)),
        "spec": {"selector": labels.selector(cluster.name, component), **spec},
    }


def build_headless_service(cluster: ClusterSpec) -> dict[str, Any]:
    """Gives every engine pod the stable DNS name it announces in CLUSTER SLOTS."""
    return _service(
        cluster,
        labels.headless_service_name(cluster.name),
        labels.ENGINE,
        {
            "clusterIP": "None",
            # A replica catching up is not Ready yet but its peers and the operator must reach it.
            "publishNotReadyAddresses": True,
            # Clients' port only: peers reach a node's control port (ADMIN_PORT) by its pod DNS
            # name, which needs no port listed here, and the operator by pod IP.
            "ports": [{"name": "valkey", "port": constants.CLIENT_PORT, "targetPort": "valkey"}],
        },
    )


def build_endpoint_service(cluster: ClusterSpec) -> dict[str, Any]:
    """The configuration endpoint: any ready node answers CLUSTER SLOTS, so it ignores roles."""
    return _service(
        cluster,
        labels.endpoint_service_name(cluster.name),
        labels.ENGINE,
        {
            "type": "ClusterIP",
            "ports": [{"name": "valkey", "port": constants.CLIENT_PORT, "targetPort": "valkey"}],
        },
    )


def build_journal_service(cluster: ClusterSpec) -> dict[str, Any]:
    """Headless: journal servers find their routes and engine nodes find servers by pod DNS."""
    return _service(
        cluster,
        labels.journal_service_name(cluster.name),
        labels.JOURNAL,
        {
            "clusterIP": "None",
            # Routes must form before any server can report healthy.
            "publishNotReadyAddresses": True,
            "ports": [
                {"name": "client", "port": constants.JOURNAL_CLIENT_PORT, "targetPort": "client"},
                {"name": "cluster", "port": constants.JOURNAL_CLUSTER_PORT, "targetPort": "cluster"},
                {"name": "monitor", "port": constants.JOURNAL_MONITOR_PORT, "targetPort": "monitor"},
            ],
        },
    )
