"""The journal: one single-server StatefulSet per journal server, each pinned to one zone.

Why not one StatefulSet of N pods: a nats-server needs its zone tag (``az:<zone>``) in its config
file, and a pod cannot learn its node's zone labels through the downward API. Reading the Node
from an init container would give every journal pod cluster-wide RBAC on Nodes. Instead the
operator, which already reads Nodes to plan engine placement, assigns each server a zone and
renders that server's config; a StatefulSet per server (replicas: 1) pins it there. The server's
volume is zonal anyway, so a server could never move zones without losing its data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engram.journal.servers import JournalAuth, JournalServerConfig, ServerTLS, render_config, route_url
from engram.multiregion.link import LinkAuth
from engram.orchestration.node_config import MAX_STREAM_REPLICAS
from engram_operator import constants, labels
from engram_operator.builders.common import (
    container_security_context,
    fqdn,
    metadata,
    opaque_secret,
    pod_security_context,
    scheduling,
    zone_affinity,
)
from engram_operator.builders.tls import SECRET_MODE, secret_volume
from engram_operator.spec import ClusterSpec

CONFIG_FILE = "server.conf"


class JournalSpreadError(ValueError):
    """The journal cannot put its stream replicas in distinct zones and spreading is Required."""


@dataclass(frozen=True)
class JournalPlacement:
    """Where one journal server runs and the zone name its server tag carries."""

    server: int
    zone: str | None  # None: the nodes carry no topology label, so the server is not pinned
    tag_zone: str


def plan_journal(zones: list[str], replicas: int, spreading: str) -> list[JournalPlacement]:
    """Servers round-robin over the sorted zones; with fewer than three zones only Preferred proceeds.

    With fewer zones than stream replicas, Preferred gives each server a distinct tag so that
    JetStream can still place three copies (on distinct servers, not distinct zones).
    """
    distinct = sorted(set(zones))
    if len(distinct) < MAX_STREAM_REPLICAS and spreading == "Required":
        raise JournalSpreadError(
            f"the journal keeps {MAX_STREAM_REPLICAS} copies in distinct zones but the cluster's nodes "
            f"span {len(distinct)} zone(s) ({', '.join(distinct) or 'none labelled'}); add nodes in "
            "more zones or set spec.placement.spreading: Preferred"
        )
    out = []
    for server in range(replicas):
        zone = distinct[server % len(distinct)] if distinct else None
        tag = zone if len(distinct) >= MAX_STREAM_REPLICAS and zone else f"{zone or 'default'}.{server}"
        out.append(JournalPlacement(server, zone, _tag_safe(tag)))
    return out


def _tag_safe(zone: str) -> str:
    """Server tags are lower-case (servers.py checks); zone labels may not be."""
    return zone.lower()


def journal_urls(cluster: ClusterSpec) -> list[str]:
    """Client URLs of every journal server, as the engine nodes dial them."""
    svc = labels.journal_service_name(cluster.name)
    port = constants.JOURNAL_CLIENT_PORT
    return [
        f"nats://{fqdn(labels.journal_pod_name(cluster.name, i), svc, cluster)}:{port}"
        for i in range(cluster.journal.replicas)
    ]


# Where a journal server's own certificate is mounted (spec.tls): it serves clients and routes with it
# and verifies its peers' routes against the CA beside it.
SERVER_TLS = ServerTLS(
    cert_file=f"{constants.JOURNAL_TLS_DIR}/{constants.TLS_CERT}",
    key_file=f"{constants.JOURNAL_TLS_DIR}/{constants.TLS_KEY}",
    ca_file=f"{constants.JOURNAL_TLS_DIR}/{constants.TLS_CA}",
)


def journal_config_in_secret(cluster: ClusterSpec) -> bool:
    """Whether the journal servers' config holds passwords, and so goes into a Secret: the journal's
    own (spec.tls), or the region link's (spec.region.link.authSecretName)."""
    return cluster.tls is not None or (cluster.region is not None and bool(cluster.region.auth_secret))


def region_blocks(cluster: ClusterSpec, link_auth: LinkAuth | None,
                  engine: JournalAuth | None = None) -> tuple[str, tuple[str, ...]]:
    """spec.region: the journal's JetStream domain (the region) and its accounts and leafnodes
    blocks; ("", ()) for a cluster that is no region."""
    # Imported here: builders.region_link is the operator's one door to engram.multiregion.link,
    # and spec.py reaches it too, so a module-level import here would make a cycle via spec.
    from engram_operator.builders.region_link import link_blocks

    section = cluster.region
    if section is None:
        return "", ()
    if section.auth_secret and link_auth is None:
        raise ValueError(f"a region linked with a user needs its credentials ({section.auth_secret})")
    return section.name, link_blocks(section, link_auth, bool(section.tls_secret), engine)


def journal_server_configs(
    cluster: ClusterSpec,
    placements: list[JournalPlacement],
    auth: JournalAuth | None = None,
    link_auth: LinkAuth | None = None,
) -> list[JournalServerConfig]:
    """Each server's config. With spec.tls: TLS on the client and route ports, and ``auth`` (the
    operator's generated credentials, which spec.tls requires) on both. With spec.region: the
    region's JetStream domain and its link (``link_auth``: the link's user, when it has one)."""
    if cluster.tls is not None and auth is None:
        raise ValueError("a journal with spec.tls needs its credentials (NAME-journal-auth)")
    locked = cluster.tls is not None
    domain, blocks = region_blocks(cluster, link_auth, auth if locked else None)
    svc = labels.journal_service_name(cluster.name)
    routes = tuple(
        route_url(
            fqdn(labels.journal_pod_name(cluster.name, p.server), svc, cluster),
            constants.JOURNAL_CLUSTER_PORT,
        )
        for p in placements
    )
    return [
        JournalServerConfig(
            server_name=labels.journal_pod_name(cluster.name, p.server),
            zone=p.tag_zone,
            store_dir=constants.JOURNAL_STORE_DIR,
            cluster_name=labels.journal_service_name(cluster.name),
            routes=routes,
            host="0.0.0.0",
            port=constants.JOURNAL_CLIENT_PORT,
            cluster_port=constants.JOURNAL_CLUSTER_PORT,
            http_port=constants.JOURNAL_MONITOR_PORT,
            sync_interval=cluster.journal.sync_interval,
            tls=SERVER_TLS if locked else None,
            auth=auth if locked else None,
            jetstream_domain=domain,
            extra_blocks=blocks,
            users_in_accounts=bool(blocks),
        )
        for p in placements
    ]


def build_journal_config(
    cluster: ClusterSpec,
    placements: list[JournalPlacement],
    auth: JournalAuth | None = None,
    link_auth: LinkAuth | None = None,
) -> dict[str, Any]:
    """One key per server: server-<i>.conf, rendered by the engine's own journal config renderer.

    A ConfigMap; a Secret when the config holds passwords in clear (journal_config_in_secret: the
    authorization block, route URLs and leafnode remote URLs, which NATS offers no other way to give
    credentials to).
    """
    configs = journal_server_configs(cluster, placements, auth, link_auth)
    data = {f"server-{p.server}.conf": render_config(cfg) for p, cfg in zip(placements, configs, strict=True)}
    if journal_config_in_secret(cluster):
        return opaque_secret(cluster, labels.journal_config_secret_name(cluster.name),
                             labels.cluster_labels(cluster.name, labels.JOURNAL), data)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            cluster,
            labels.journal_configmap_name(cluster.name),
            labels.cluster_labels(cluster.name, labels.JOURNAL),
        ),
        "data": data,
    }


def _journal_selector(cluster: ClusterSpec, server: int) -> dict[str, str]:
    return {**labels.selector(cluster.name, labels.JOURNAL), labels.JOURNAL_SERVER: str(server)}


def build_journal_statefulset(cluster: ClusterSpec, placement: JournalPlacement) -> dict[str, Any]:
    """One journal server: a one-replica StatefulSet with its own volume, pinned to its zone."""
    server = placement.server
    pod_labels = {**labels.cluster_labels(cluster.name, labels.JOURNAL), labels.JOURNAL_SERVER: str(server)}
    if placement.zone is not None:
        pod_labels[labels.ZONE] = placement.zone
    http = constants.JOURNAL_MONITOR_PORT
    pod_spec: dict[str, Any] = {
        "securityContext": pod_security_context(),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # Lets an old stream leader hand over instead of being killed mid-write.
        "terminationGracePeriodSeconds": 60,
        "containers": [
            {
                "name": "nats",
                "image": cluster.journal.resolved_image,
                "imagePullPolicy": "IfNotPresent",
                "args": ["--config", f"/etc/nats/{CONFIG_FILE}"],
                # Go sizes its thread pool to the node's cores, not the pod's limit; idle threads
                # then spin on cores the pod may not use and the server is throttled.
                "env": [
                    {
                        "name": "GOMAXPROCS",
                        "valueFrom": {
                            "resourceFieldRef": {
                                "containerName": "nats", "resource": "limits.cpu", "divisor": "1"
                            }
                        },
                    }
                ],
                "ports": [
                    {"name": "client", "containerPort": constants.JOURNAL_CLIENT_PORT},
                    {"name": "cluster", "containerPort": constants.JOURNAL_CLUSTER_PORT},
                    {"name": "monitor", "containerPort": http},
                    # spec.region: other regions' journals link here (when this region listens).
                    *([{"name": "leafnode", "containerPort": constants.LEAFNODE_PORT}]
                      if cluster.region is not None else []),
                ],
                "startupProbe": _healthz(http, "js-enabled-only=true", period=5, failures=60),
                "readinessProbe": _healthz(http, "js-server-only=true", period=5, failures=3),
                "livenessProbe": _healthz(http, "js-enabled-only=true", period=10, failures=6),
                "resources": cluster.journal.resources.to_manifest(),
                "securityContext": container_security_context(),
                "volumeMounts": [
                    {"name": "config", "mountPath": "/etc/nats", "readOnly": True},
                    {"name": "data", "mountPath": "/data"},
                    *([{"name": "tls", "mountPath": constants.JOURNAL_TLS_DIR, "readOnly": True}]
                      if cluster.tls is not None else []),
                    *([{"name": "link-tls", "mountPath": constants.LINK_TLS_DIR, "readOnly": True}]
                      if _link_tls_secret(cluster) else []),
                ],
            }
        ],
        "volumes": [_config_volume(cluster, server), *_tls_volumes(cluster)],
    }
    own = zone_affinity(cluster.placement.topology_key, placement.zone) if placement.zone is not None else {}
    pod_spec.update(scheduling(cluster, own))
    claim: dict[str, Any] = {
        "metadata": {"name": "data", "labels": dict(pod_labels)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": cluster.journal.storage_size}},
        },
    }
    if cluster.journal.storage_class:
        claim["spec"]["storageClassName"] = cluster.journal.storage_class
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(cluster, labels.journal_statefulset_name(cluster.name, server), pod_labels),
        "spec": {
            "replicas": 1,
            "serviceName": labels.journal_service_name(cluster.name),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": _journal_selector(cluster, server)},
            # Deleting the MemoryCluster must not leave journal volumes behind.
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
            "volumeClaimTemplates": [claim],
        },
    }


def _config_volume(cluster: ClusterSpec, server: int) -> dict[str, Any]:
    """This server's key of the journal config (build_journal_config), as /etc/nats/server.conf."""
    items = [{"key": f"server-{server}.conf", "path": CONFIG_FILE}]
    if journal_config_in_secret(cluster):
        name = labels.journal_config_secret_name(cluster.name)
        return {"name": "config", "secret": {"secretName": name, "items": items, "defaultMode": SECRET_MODE}}
    name = labels.journal_configmap_name(cluster.name)
    return {"name": "config", "configMap": {"name": name, "items": items}}


def _link_tls_secret(cluster: ClusterSpec) -> str:
    """spec.region.link.tlsSecretName: the link's certificate ("" for a plain-text link or no region)."""
    return cluster.region.tls_secret if cluster.region is not None else ""


def _tls_volumes(cluster: ClusterSpec) -> list[dict[str, Any]]:
    """spec.tls: the server's certificate, key and CA; spec.region's link certificate likewise."""
    volumes = []
    if cluster.tls is not None:
        volumes.append(secret_volume("tls", cluster.tls.journal_secret(cluster.name)))
    if link := _link_tls_secret(cluster):
        volumes.append(secret_volume("link-tls", link))
    return volumes


def _healthz(port: int, query: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": f"/healthz?{query}", "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 3,
    }
