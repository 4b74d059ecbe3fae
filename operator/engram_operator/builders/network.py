"""NetworkPolicies: who may reach the engine pods' and the journal servers' ports (ingress only).

Egress is left open: nodes reach the journal and object storage (and, resharding, each other's
Valkey), the provisioning Job may read another cluster's journal, and everything needs DNS, whose
address differs between clusters.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from engram_operator import constants, labels
from engram_operator.builders.common import metadata
from engram_operator.spec import ClusterSpec

# Set on every namespace by the API server (Kubernetes 1.21+): selects one namespace by name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


class SelectorError(ValueError):
    """The operator's pod selector (ENGRAM_OPERATOR_POD_SELECTOR) is not k=v[,k=v...]."""


@dataclass(frozen=True)
class OperatorPeer:
    """The operator's pods, which probe every node's control port: their namespace and labels."""

    namespace: str
    pod_labels: dict[str, str]

    @classmethod
    def from_settings(
        cls, namespace: str = constants.OPERATOR_NAMESPACE, selector: str = constants.OPERATOR_POD_SELECTOR
    ) -> OperatorPeer:
        return cls(namespace, parse_selector(selector))

    def peer(self) -> dict[str, Any]:
        """Both selectors in one peer: these pods in that namespace (two peers would OR them)."""
        return {
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: self.namespace}},
            "podSelector": {"matchLabels": dict(self.pod_labels)},
        }


def parse_selector(text: str) -> dict[str, str]:
    """``k=v,k=v`` as a dict; an empty selector would admit every pod of the namespace, so it is refused."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise SelectorError(f"operator pod selector {text!r}: {part!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def engine_policy_name(cluster: str) -> str:
    return f"{cluster}-engine"


def journal_policy_name(cluster: str) -> str:
    return f"{cluster}-journal"


def _pods(match: dict[str, str]) -> dict[str, Any]:
    """A peer: pods of the policy's own namespace with these labels."""
    return {"podSelector": {"matchLabels": dict(match)}}


def _rule(port: int | str, peers: Iterable[dict[str, Any]] | None) -> dict[str, Any]:
    """One ingress rule; ``peers`` None admits every source (a rule without ``from``)."""
    rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": port}]}
    if peers is not None:
        rule["from"] = [dict(p) for p in peers]
    return rule


def _policy(cluster: ClusterSpec, name: str, component: str, ingress: list[dict[str, Any]]) -> dict[str, Any]:
    spec = {
        "podSelector": {"matchLabels": labels.selector(cluster.name, component)},
        "policyTypes": ["Ingress"],
        "ingress": ingress,
    }
    # The API server adds defaults to what it stores, so a comparison of specs would always differ:
    # the hash of what the operator built tells a changed spec.network from that.
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(
            cluster, name, labels.cluster_labels(cluster.name, component), {labels.SPEC_HASH: digest}
        ),
        "spec": spec,
    }


def _client_peers(cluster: ClusterSpec) -> list[dict[str, Any]] | None:
    """Who reaches Valkey's client port: spec.network.clients (None: everyone), and always the
    cluster's own engine pods and reshard Jobs. An online reshard moves keys with Valkey's MIGRATE,
    which the source primary's Valkey sends to the target primary's client port, directed by the
    reshard Job over the same port; a spec that lists only the application must not stop that."""
    if cluster.network.clients is None:
        return None
    return [
        *cluster.network.clients,
        _pods(labels.selector(cluster.name, labels.ENGINE)),
        _pods(labels.selector(cluster.name, labels.RESHARD)),
    ]


def build_engine_policy(cluster: ClusterSpec, operator: OperatorPeer) -> dict[str, Any]:
    """Engine pods: Valkey's port for clients and for peers and the reshard Job moving slots, the
    control port for peers and the operator, metrics."""
    engine = _pods(labels.selector(cluster.name, labels.ENGINE))
    return _policy(
        cluster,
        engine_policy_name(cluster.name),
        labels.ENGINE,
        [
            _rule(constants.CLIENT_PORT, _client_peers(cluster)),
            # ENGRAM.STATUS/FAILOVER/SNAPSHOT: a node hands its shard to a peer on SIGTERM
            # (engram.leadership.on_stop, switchover), and the operator probes and commands every
            # node (probe.py). Nothing else needs it: the readiness probe and Valkey's preStop hook
            # ask over the pod's loopback, and `kubectl engram switchover` comes through port-forward.
            _rule(constants.ADMIN_PORT, [engine, operator.peer()]),
            _rule(constants.METRICS_PORT, cluster.network.metrics),
        ],
    )


def build_journal_policy(cluster: ClusterSpec) -> dict[str, Any]:
    """Journal servers: clients only from the cluster's engine pods, its reshard Jobs and provisioning
    Jobs; routes only between the cluster's own servers; the monitoring port for scraping."""
    provisioning = _pods(
        {labels.NAME: "engram", labels.COMPONENT: labels.PROVISION, labels.MANAGED_BY: labels.MANAGER}
    )
    return _policy(
        cluster,
        journal_policy_name(cluster.name),
        labels.JOURNAL,
        [
            # Any provisioning Job of the namespace, not only this cluster's: a new cluster restored
            # from this one (spec.restoreFrom.cluster) reads its snapshots from here, and this
            # cluster cannot know the names of clusters that will restore from it.
            _rule(
                constants.JOURNAL_CLIENT_PORT,
                [
                    _pods(labels.selector(cluster.name, labels.ENGINE)),
                    # The reshard plan and its progress live in the cluster's metadata bucket.
                    _pods(labels.selector(cluster.name, labels.RESHARD)),
                    provisioning,
                ],
            ),
            _rule(constants.JOURNAL_CLUSTER_PORT, [_pods(labels.selector(cluster.name, labels.JOURNAL))]),
            # Read by the kubelet's probes (not subject to policies in common plugins) and by
            # whoever scrapes the servers; the operator reads StatefulSet status, never this port.
            _rule(constants.JOURNAL_MONITOR_PORT, cluster.network.metrics),
        ],
    )


def build_network_policies(cluster: ClusterSpec, operator: OperatorPeer) -> list[dict[str, Any]]:
    """The cluster's policies; none when spec.network.policies is false (the operator deletes its own)."""
    if not cluster.network.policies:
        return []
    return [build_engine_policy(cluster, operator), build_journal_policy(cluster)]
