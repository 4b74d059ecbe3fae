"""Labels and names of everything the operator creates (app.kubernetes.io/* plus engram.io/*)."""

from __future__ import annotations

from engram_operator import GROUP

NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "app.kubernetes.io/managed-by"
PART_OF = "app.kubernetes.io/part-of"
VERSION = "app.kubernetes.io/version"

CLUSTER = f"{GROUP}/cluster"
SHARD = f"{GROUP}/shard"
NODE_INDEX = f"{GROUP}/node-index"
ROLE = f"{GROUP}/role"
ZONE = f"{GROUP}/zone"
JOURNAL_SERVER = f"{GROUP}/journal-server"
# On what a MultiRegionCluster makes (its regions' MemoryClusters, their link Secrets and leafnode
# Services): which MultiRegionCluster, and which of its regions. Two labels, because a label value
# cannot hold namespace/name.
MULTIREGION = f"{GROUP}/multiregioncluster"
MULTIREGION_NAMESPACE = f"{GROUP}/multiregioncluster-namespace"
REGION = f"{GROUP}/region"

# Annotations.
NODE_CONFIG = f"{GROUP}/node-config"
POD_SPEC_HASH = f"{GROUP}/pod-spec-hash"
# On a child the operator rewrites when its spec changes (a NetworkPolicy): the hash of the spec
# the operator built, compared instead of the stored spec, which the API server has defaulted.
SPEC_HASH = f"{GROUP}/spec-hash"
# The cluster id a provisioning Job wrote into the journal (engine pods carry it in their node config).
CLUSTER_ID = f"{GROUP}/cluster-id"
# On the provisioning Job: what it seeds the cluster from (JSON, spec.restoreFrom's source), so that
# status.restoredFrom says what the Job that succeeded really did.
RESTORE_FROM = f"{GROUP}/restore-from"
# On the provisioning and reshard Jobs: the shard count the Job leaves the slot map with, and (reshard
# Jobs) the one it started from. How the operator knows the slot map's count (decisions/resharding.py).
SHARDS = f"{GROUP}/shards"
FROM_SHARDS = f"{GROUP}/from-shards"
# The escape hatch: "disabled" stops the operator touching this cluster (CloudNativePG does the same).
RECONCILIATION = f"{GROUP}/reconciliation"

ENGINE = "engine"
JOURNAL = "journal"
PROVISION = "provision"
RESHARD = "reshard"
USERS = "users"
TLS = "tls"
MANAGER = "engram-operator"


def cluster_labels(cluster: str, component: str) -> dict[str, str]:
    """Labels every child of a cluster carries."""
    return {
        NAME: "engram",
        INSTANCE: cluster,
        COMPONENT: component,
        MANAGED_BY: MANAGER,
        PART_OF: "engram",
        CLUSTER: cluster,
    }


def selector(cluster: str, component: str) -> dict[str, str]:
    """The stable subset that Services and PDBs select on (never the role, which moves)."""
    return {INSTANCE: cluster, COMPONENT: component, CLUSTER: cluster}


def engine_pod_labels(
    cluster: str, shard: int, index: int, zone: str, role: str = "replica"
) -> dict[str, str]:
    return {
        **cluster_labels(cluster, ENGINE),
        SHARD: str(shard),
        NODE_INDEX: str(index),
        ZONE: zone,
        ROLE: role,
    }


def headless_service_name(cluster: str) -> str:
    return f"{cluster}-nodes"


def endpoint_service_name(cluster: str) -> str:
    """The configuration endpoint: clients bootstrap cluster discovery here."""
    return cluster


def journal_service_name(cluster: str) -> str:
    return f"{cluster}-journal"


def journal_statefulset_name(cluster: str, server: int) -> str:
    return f"{cluster}-journal-{server}"


def journal_pod_name(cluster: str, server: int) -> str:
    return f"{journal_statefulset_name(cluster, server)}-0"


def journal_configmap_name(cluster: str) -> str:
    return f"{cluster}-journal"


def journal_config_secret_name(cluster: str) -> str:
    """The journal servers' config under spec.tls, where it holds passwords (a ConfigMap otherwise)."""
    return f"{cluster}-journal-config"


def users_secret_name(cluster: str) -> str:
    """The Secret holding the users file the operator renders from spec.users."""
    return f"{cluster}-users"


def tls_secret_name(cluster: str) -> str:
    """The clients' certificate Secret, and the cert-manager Certificate that writes it (issuerRef)."""
    return f"{cluster}-tls"


def journal_tls_secret_name(cluster: str) -> str:
    """The journal servers' certificate Secret, and its Certificate (issuerRef)."""
    return f"{cluster}-journal-tls"


def journal_auth_secret_name(cluster: str) -> str:
    """The journal's generated passwords (nodes' user, routes), made once by the operator."""
    return f"{cluster}-journal-auth"


def link_auth_secret_name(cluster: str) -> str:
    """A region's copy of its MultiRegionCluster's link credentials (spec.link.secretName)."""
    return f"{cluster}-link"


def link_tls_secret_name(cluster: str) -> str:
    """A region's copy of its MultiRegionCluster's link certificate (spec.link.tls.secretName)."""
    return f"{cluster}-link-tls"


def leafnode_service_name(cluster: str, server: int) -> str:
    """The Service other regions' journals dial to reach journal server ``server``'s leafnode port."""
    return f"{cluster}-leafnode-{server}"


def provision_job_name(cluster: str) -> str:
    return f"{cluster}-provision"


def reshard_job_name(cluster: str, shards: int) -> str:
    """The Job that reshards the cluster to ``shards`` shards (one target, one name)."""
    return f"{cluster}-reshard-{shards}"


def engine_pod_base_name(cluster: str, shard: int, index: int) -> str:
    return f"{cluster}-{shard}-{index}"


def engine_pod_name(
    cluster: str, shard: int, index: int, taken: set[str] | frozenset[str] = frozenset()
) -> str:
    """The slot's name, or base-rN while a pod that is still terminating holds it (a lost zone's pod)."""
    base = engine_pod_base_name(cluster, shard, index)
    if base not in taken:
        return base
    n = 1
    while f"{base}-r{n}" in taken:
        n += 1
    return f"{base}-r{n}"
