"""Engine pods: a Valkey container and the engine node container, pinned to their planned zone.

Clients talk to Valkey on CLIENT_PORT, where the Engram module (copied in from the engine image by
an init container) holds each write's reply until the journal has committed it; the node talks to
Valkey on a unix socket and answers the operator and its peers on ADMIN_PORT.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

from engram.node.certificate import TlsFiles
from engram.node.config import NodeConfig
from engram.orchestration.node_config import (
    JournalClientFiles,
    JournalServer,
    NodeClusterSettings,
    NodeIdentity,
    node_config,
)
from engram.snapshots.schedule import SnapshotPolicy
from engram.valkey.process import valkey_flags
from engram_operator import constants, labels
from engram_operator.builders.common import (
    container_security_context,
    fqdn,
    metadata,
    pod_security_context,
    scheduling,
    zone_affinity,
)
from engram_operator.builders.journal import journal_urls
from engram_operator.builders.journal_auth import JOURNAL_CA_FILE, PASSWORD_FILE, PASSWORD_KEY
from engram_operator.builders.tls import secret_volume, valkey_tls_flags
from engram_operator.spec import ClusterSpec

# Ready = a primary, or a replica applying the journal (not halted) and nearly caught up; the node
# says which on its control port.
READINESS_COMMAND = ["python", "-m", "engram.node.probe", "--port", str(constants.ADMIN_PORT)]
METRICS_PORT_NAME = "metrics"
METRICS_TLS_PORT_NAME = "metrics-tls"
# The cluster's CA, mounted in both containers with spec.tls: the control port then speaks TLS.
TLS_CA_FILE = f"{constants.TLS_DIR}/{constants.TLS_CA}"


def readiness_command(cluster: ClusterSpec) -> list[str]:
    """The readiness probe; with spec.tls it speaks TLS to the control port, trusting the cluster's CA."""
    return [*READINESS_COMMAND, *(["--tls-ca", TLS_CA_FILE] if cluster.tls is not None else [])]
# Clients on every IPv4 address of the pod. Not "0.0.0.0 ::": Valkey does not start when an address
# it is told to bind (without a "-" prefix) cannot be bound, as "::" on a pod without IPv6.
VALKEY_BIND = "0.0.0.0"

# Valkey gets this share of the container's memory limit; the rest covers replication buffers.
MAXMEMORY_FRACTION = Decimal("0.75")


def cluster_settings(
    cluster: ClusterSpec, cluster_id: str, journal_zones: Mapping[str, str] | None = None
) -> NodeClusterSettings:
    """What every engine node of the cluster shares, for the orchestration core's node_config.

    ``journal_zones``: journal server name -> its real zone (decisions.journal_zones); servers not
    in it have no zone a node could share.
    """
    names = [labels.journal_pod_name(cluster.name, i) for i in range(cluster.journal.replicas)]
    zones = journal_zones or {}
    return NodeClusterSettings(
        name=cluster.name,
        cluster_id=cluster_id,
        shards=cluster.shards,
        # Zones derived from where the journal servers run, not from the spec: they never roll a pod.
        journal=tuple(JournalServer(name, url, zones.get(name, ""))
                      for name, url in zip(names, journal_urls(cluster), strict=True)),
        log_level=cluster.engine.log_level,
        # Shared by every pod, so a change rolls them (pod_spec_hash). spec.snapshots.request is not
        # here: the operator carries a request out itself, without restarting anything.
        snapshots=SnapshotPolicy(cluster.snapshots.interval_seconds, cluster.snapshots.tail_entries,
                                 cluster.snapshots.keep),
        # A fixed path: the users themselves are in the mounted Secret, which the kubelet refreshes
        # in place and the node re-reads, so a new user or password never rolls a pod.
        users_file=f"{constants.USERS_DIR}/{constants.USERS_FILE}",
        journal_files=journal_client_files(cluster),
        tls=tls_files(cluster),
        # spec.region (a MultiRegionCluster's region): nodes stamp writes and apply the other regions'.
        region=cluster.region.name if cluster.region is not None else "",
        linked_regions=cluster.region.linked_regions if cluster.region is not None else {},
        region_counters=cluster.region.counters if cluster.region is not None else (),
        region_ttls=cluster.region.ttls if cluster.region is not None else (),
    )


def build_node_config(
    cluster: ClusterSpec,
    pod_name: str,
    shard: int,
    zone: str,
    *,
    cluster_id: str,
    preferred_primary: bool = False,
    journal_zones: Mapping[str, str] | None = None,
) -> NodeConfig:
    """The engine node's configuration; the pod carries it as an annotation (see build_engine_pod).

    ``cluster_id`` is the id provisioning wrote into the journal: a node finding another one halts.
    """
    headless = labels.headless_service_name(cluster.name)
    return node_config(
        cluster_settings(cluster, cluster_id, journal_zones),
        NodeIdentity(pod_name, shard, zone, preferred_primary),
        port=constants.CLIENT_PORT,
        admin_port=constants.ADMIN_PORT,
        data_dir=constants.DATA_DIR,
        host="0.0.0.0",
        announce=f"{fqdn(pod_name, headless, cluster)}:{constants.CLIENT_PORT}",
        # Valkey runs in its own container beside the node, on the shared socket.
        spawn_valkey=False,
        valkey_socket=constants.VALKEY_SOCKET,
        metrics_port=constants.METRICS_PORT,
        # spec.tls: Valkey serves clients TLS with the cluster's certificate and the node has it
        # load a renewal.
        valkey_tls=cluster.tls is not None,
    )


def tls_files(cluster: ClusterSpec) -> TlsFiles | None:
    """spec.tls: Valkey's certificate, which the node's control and metrics ports serve too; None
    without spec.tls."""
    if cluster.tls is None:
        return None
    return TlsFiles(f"{constants.TLS_DIR}/{constants.TLS_CERT}", f"{constants.TLS_DIR}/{constants.TLS_KEY}",
                    TLS_CA_FILE)


def journal_client_files(cluster: ClusterSpec) -> JournalClientFiles | None:
    """spec.tls locks the journal: fixed paths to the mounted password and CA (None: an open journal)."""
    if cluster.tls is None:
        return None
    return JournalClientFiles(PASSWORD_FILE, JOURNAL_CA_FILE)


# Node config fields that say which pod this is (its name, slot, zone, whether it led a brand-new
# shard) rather than how the cluster's nodes run: they differ from pod to pod and never roll one.
POD_IDENTITY_FIELDS = ("node_id", "shard", "zone", "announce", "preferred_primary", "cluster_id",
                       "journal_zones")


# Node config fields that change without rolling a pod: nodes serve the slot map in the journal, not
# ``shards`` (the count when the pod was made), and an online reshard must not restart every node.
UNROLLED_FIELDS = ("shards",)


def shared_node_config(cluster: ClusterSpec) -> dict[str, Any]:
    """The part of the node config every pod of the cluster shares and a change of rolls (the cluster
    id is fixed for life)."""
    config = asdict(build_node_config(cluster, "", 0, "", cluster_id=""))
    for key in (*POD_IDENTITY_FIELDS, *UNROLLED_FIELDS):
        config.pop(key)
    return config


# The slot a pod spec is rendered for when only what every pod shares matters (pod_spec_hash).
_TEMPLATE_POD = "template"


def pod_spec_hash(cluster: ClusterSpec) -> str:
    """A digest of everything that requires replacing a running pod when it changes (rolling update).

    The whole pod spec as rendered for one fixed slot (images, resources, Valkey's command line,
    probes, hooks, scheduling), and the node config every pod shares: a pod's spec is immutable
    and its config annotation is read once, at start, so a change from the spec or from a new
    operator's rendering reaches running nodes only through a roll. Slot and zone are left out,
    so that every pod of a cluster on the same spec carries the same hash.
    """
    relevant = {
        "pod": _engine_pod_spec(cluster, _TEMPLATE_POD, 0, None),
        "nodeConfig": shared_node_config(cluster),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def valkey_args(cluster: ClusterSpec) -> list[str]:
    """Standalone Valkey with the Engram module, serving clients on CLIENT_PORT and the node on the
    shared socket; no persistence (the journal is the durability). spec.region puts the module in
    multi-region mode, with its additive counters and converging TTLs.

    With spec.tls the client port speaks TLS only (the plain port is 0: off). The node's socket and
    the cluster protocol's replies are unchanged: they announce the same port, so cluster clients
    follow MOVED and CLUSTER SLOTS with TLS too.
    """
    tls = cluster.tls is not None
    # Valkey runs in its own container here, not spawned by the node: the module's region arguments
    # must be on this command line, or a region's writes are neither stamped nor replicated.
    region = cluster.region
    flags = valkey_flags(
        constants.VALKEY_SOCKET,
        constants.RUN_DIR,
        port=0 if tls else constants.CLIENT_PORT,
        bind=VALKEY_BIND,
        module=constants.MODULE_PATH,
        region=region.name if region is not None else "",
        counters=region.counters if region is not None else (),
        ttls=region.ttls if region is not None else (),
    )
    args = ["valkey-server", *flags, *(valkey_tls_flags() if tls else [])]
    limit = cluster.valkey_resources.limits.get("memory")
    if limit:
        args += ["--maxmemory", str(int(parse_quantity(limit) * MAXMEMORY_FRACTION))]
    return args


# How long Valkey's preStop waits for its node to stop leading: past the node's own bound on the
# hand-over (engram.leadership.on_stop.STOP_HANDOVER_TIMEOUT), within the pod's grace period.
PRE_STOP_WAIT_SECONDS = 15
TERMINATION_GRACE_SECONDS = 30


def valkey_pre_stop(tls: bool = False) -> str:
    """sh: wait (bounded) while the node on this pod's control port answers that it is primary.

    valkey-cli speaks RESP to the control port; without a terminal it prints ENGRAM.STATUS's
    field/value array one item per line, so a line "primary" is the role field's value. With
    ``tls`` it speaks TLS, verifying the chain with the cluster's CA (valkey-cli checks no name).
    """
    polls = PRE_STOP_WAIT_SECONDS * 2
    secure = f" --tls --cacert {TLS_CA_FILE}" if tls else ""
    return (
        f"i=0; while [ $i -lt {polls} ]; do "
        f"valkey-cli{secure} -p {constants.ADMIN_PORT} ENGRAM.STATUS 2>/dev/null "
        "| grep -qx primary || exit 0; "
        "sleep 0.5; i=$((i+1)); done"
    )


def build_engine_pod(
    cluster: ClusterSpec,
    *,
    name: str,
    shard: int,
    index: int,
    zone: str | None,
    cluster_id: str,
    preferred_primary: bool = False,
    journal_zones: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One engine node. ``zone`` None means the nodes carry no topology label: the pod is not pinned.

    ``preferred_primary``: the zone planner chose this node as its shard's first primary.
    """
    node_config = build_node_config(
        cluster, name, shard, zone or "", cluster_id=cluster_id, preferred_primary=preferred_primary,
        journal_zones=journal_zones,
    )
    pod_labels = labels.engine_pod_labels(cluster.name, shard, index, zone or "", role="starting")
    pod_labels[labels.VERSION] = cluster.engine.version
    annotations = {
        labels.NODE_CONFIG: json.dumps(asdict(node_config), sort_keys=True),
        labels.POD_SPEC_HASH: pod_spec_hash(cluster),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata(cluster, name, pod_labels, annotations),
        "spec": _engine_pod_spec(cluster, name, shard, zone),
    }


def _engine_pod_spec(cluster: ClusterSpec, name: str, shard: int, zone: str | None) -> dict[str, Any]:
    """The pod spec of one engine node: everything but its metadata (labels, node config, hash)."""
    affinity: dict[str, Any] = {
        # Two nodes of one shard on one host would fail together.
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {
                            "matchLabels": {
                                **labels.selector(cluster.name, labels.ENGINE),
                                labels.SHARD: str(shard),
                            }
                        },
                    },
                }
            ]
        }
    }
    if zone:
        affinity.update(zone_affinity(cluster.placement.topology_key, zone))
    run_mount = {"name": "run", "mountPath": constants.RUN_DIR}
    module = {
        "name": "module",
        "image": cluster.engine.resolved_image,
        "imagePullPolicy": cluster.engine.image_pull_policy,
        # engram.so must be loadable in the valkey container, which runs Valkey's own image.
        "command": ["cp", constants.MODULE_PATH, f"{constants.MODULE_STAGING_DIR}/{constants.MODULE_FILE}"],
        # The node's: an init container's requests only count where they exceed the pod's sum, so
        # these change no scheduling, and they satisfy quotas that demand limits on every container.
        "resources": cluster.node_resources.to_manifest(),
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "module", "mountPath": constants.MODULE_STAGING_DIR}],
    }
    valkey = {
        "name": "valkey",
        "image": cluster.engine.resolved_valkey_image,
        "imagePullPolicy": cluster.engine.image_pull_policy,
        # Bypass the image's entrypoint: it would chown and switch users, which restricted pods forbid.
        # Probes use the unix socket and the node's control port, never the client port: TLS on it
        # changes none of them.
        "command": valkey_args(cluster),
        # Valkey serves the clients: the Services' "valkey" target port is here.
        "ports": [{"name": "valkey", "containerPort": constants.CLIENT_PORT}],
        "resources": cluster.valkey_resources.to_manifest(),
        "securityContext": container_security_context(),
        "volumeMounts": [
            run_mount,
            {"name": "module", "mountPath": constants.MODULE_DIR, "readOnly": True},
            *([{"name": "tls", "mountPath": constants.TLS_DIR, "readOnly": True}] if cluster.tls else []),
        ],
        "livenessProbe": {
            "exec": {"command": ["valkey-cli", "-s", constants.VALKEY_SOCKET, "ping"]},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 6,
        },
        # A deleted pod's containers get SIGTERM together: Valkey would exit under a primary that is
        # handing its shard over (the node does so on SIGTERM). Hold Valkey's SIGTERM back until the
        # node no longer leads, or stops answering.
        "lifecycle": {
            "preStop": {"exec": {"command": ["sh", "-c", valkey_pre_stop(cluster.tls is not None)]}},
        },
    }
    node = {
        "name": "node",
        "image": cluster.engine.resolved_image,
        "imagePullPolicy": cluster.engine.image_pull_policy,
        "command": [
            "python",
            "-m",
            "engram.node",
            "--config",
            f"{constants.NODE_CONFIG_DIR}/{constants.NODE_CONFIG_FILE}",
        ],
        "ports": [
            # The control port: the operator and peers reach it by pod IP or pod DNS name.
            {"name": "admin", "containerPort": constants.ADMIN_PORT},
            # Named for its scheme: the chart's PodMonitor scrapes "metrics" over HTTP and
            # "metrics-tls" (spec.tls) over HTTPS.
            {"name": METRICS_TLS_PORT_NAME if cluster.tls else METRICS_PORT_NAME,
             "containerPort": constants.METRICS_PORT},
        ],
        "resources": cluster.node_resources.to_manifest(),
        "securityContext": container_security_context(),
        "volumeMounts": [
            run_mount,
            {"name": "config", "mountPath": constants.NODE_CONFIG_DIR, "readOnly": True},
            {"name": "users", "mountPath": constants.USERS_DIR, "readOnly": True},
            {"name": "data", "mountPath": constants.DATA_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
            *journal_security_mounts(cluster),
            # The certificate the node's control and metrics ports serve, and whose renewal it watches.
            *([{"name": "tls", "mountPath": constants.TLS_DIR, "readOnly": True}] if cluster.tls else []),
        ],
        # The node's own port, which it opens before anything that can wait (Valkey, a journal
        # that is away, replaying the journal): a node that waits answers "starting" and passes,
        # while its readiness stays false until it has a role.
        "startupProbe": {
            "tcpSocket": {"port": constants.ADMIN_PORT},
            "periodSeconds": 5,
            "failureThreshold": 120,
        },
        "readinessProbe": {
            "exec": {"command": readiness_command(cluster)},
            "periodSeconds": 5,
            "timeoutSeconds": 4,
            "failureThreshold": 2,
        },
        # Liveness only asks whether the node's port answers: a halted replica is alive and must not
        # restart.
        "livenessProbe": {
            "tcpSocket": {"port": constants.ADMIN_PORT},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
    }
    return {
        # hostname + subdomain give the pod the DNS name it announces to clients.
        "hostname": name,
        "subdomain": labels.headless_service_name(cluster.name),
        "restartPolicy": "Always",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # Room for the node's hand-over on SIGTERM, which Valkey's preStop waits for.
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": pod_security_context(),
        **scheduling(cluster, affinity),
        "initContainers": [module],
        "containers": [valkey, node],
        "volumes": [
            {"name": "run", "emptyDir": {}},
            # engram.so, copied from the engine image by the init container.
            {"name": "module", "emptyDir": {}},
            {"name": "data", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            # The node's config travels in the pod itself: no per-pod ConfigMap to create,
            # adopt and clean up, and it can never disagree with the pod it belongs to.
            {
                "name": "config",
                "downwardAPI": {
                    "items": [
                        {
                            "path": constants.NODE_CONFIG_FILE,
                            "fieldRef": {"fieldPath": f"metadata.annotations['{labels.NODE_CONFIG}']"},
                        }
                    ]
                },
            },
            # The users file, readable by the node's group (fsGroup) only. Not optional: a node
            # started without it would restore the default user's open access.
            {
                "name": "users",
                "secret": {"secretName": labels.users_secret_name(cluster.name), "defaultMode": 0o440},
            },
            *_tls_volumes(cluster),
        ],
    }


def _tls_volumes(cluster: ClusterSpec) -> list[dict[str, Any]]:
    """spec.tls: Valkey's certificate, key and CA (the valkey and node containers), and the journal's."""
    if cluster.tls is None:
        return []
    return [secret_volume("tls", cluster.tls.client_secret(cluster.name)), *journal_security_volumes(cluster)]


def journal_security_volumes(cluster: ClusterSpec) -> list[dict[str, Any]]:
    """What a client of a locked journal mounts: the journal's CA (not its servers' private key) and
    the cluster user's password (not the routes'). Shared by engine pods and the provisioning Job."""
    if cluster.tls is None:
        return []
    return [
        secret_volume("journal-ca", cluster.tls.journal_secret(cluster.name), [constants.TLS_CA]),
        secret_volume("journal-auth", labels.journal_auth_secret_name(cluster.name), [PASSWORD_KEY]),
    ]


def journal_security_mounts(cluster: ClusterSpec) -> list[dict[str, Any]]:
    if cluster.tls is None:
        return []
    return [
        {"name": "journal-ca", "mountPath": constants.JOURNAL_TLS_DIR, "readOnly": True},
        {"name": "journal-auth", "mountPath": constants.JOURNAL_AUTH_DIR, "readOnly": True},
    ]
