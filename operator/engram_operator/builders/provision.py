"""The provisioning Job: `engram provision` creates the journal streams, identity and slot map, once,
and seeds a new cluster from spec.restoreFrom.

Engine nodes never create their stream or the cluster metadata (a node that cannot find them may
be talking to a journal server that has not loaded them yet); this Job is the only creator.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from engram.orchestration.node_config import stream_replicas
from engram_operator import constants, labels
from engram_operator.builders.common import container_security_context, one_shot_job
from engram_operator.builders.engine import (
    journal_client_files,
    journal_security_mounts,
    journal_security_volumes,
)
from engram_operator.builders.journal import journal_urls
from engram_operator.builders.journal_auth import JOURNAL_USER, PASSWORD_KEY
from engram_operator.builders.tls import secret_volume
from engram_operator.spec import ClusterSpec, TlsSpec

# One attempt waits this long for a journal quorum; the Job retries it BACKOFF_LIMIT times.
ATTEMPT_TIMEOUT_SECONDS = 60
BACKOFF_LIMIT = 4
# Bounds the whole Job, restarts and back-off included; the operator then deletes and retries it.
ACTIVE_DEADLINE_SECONDS = 600
# A restore writes every key of the source into the journal: hours for a large data set, not minutes.
RESTORE_ACTIVE_DEADLINE_SECONDS = 6 * 3600
# `engram provision` exits 2 (bad arguments) or 3 (a name held by another cluster id, a failed
# restore) when retrying cannot help: the Job fails at once instead of trying BACKOFF_LIMIT times.
PERMANENT_EXIT_CODES = [2, 3]

# Creating a few streams is light; the bound only keeps a misbehaving attempt off the node.
RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
# A restore loads each RDB into a scratch Valkey in this container, so it needs about the largest
# file's data in memory: no default limit (spec.restoreFrom.resources sets one).
RESTORE_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}}
# Where an rdb source's PersistentVolumeClaim is mounted, read-only.
RESTORE_MOUNT = "/restore"
# Where a locked source cluster's journal CA and password are mounted, read-only, apart from the
# new cluster's own (spec.tls): the two journals have different CAs and passwords.
SOURCE_JOURNAL_TLS_DIR = "/etc/engram-source-journal-tls"
SOURCE_JOURNAL_AUTH_DIR = "/etc/engram-source-journal-auth"


def source_journal_urls(cluster: ClusterSpec, source: str, servers: int) -> list[str]:
    """Journal URLs of another MemoryCluster of the cluster's namespace that runs ``servers`` of them."""
    return journal_urls(replace(cluster, name=source, journal=replace(cluster.journal, replicas=servers)))


def restore_args(cluster: ClusterSpec, source_journal: Sequence[str] = ()) -> list[str]:
    """`engram provision`'s restore flags for spec.restoreFrom (none without it).

    ``source_journal``: the journal URLs of the source cluster (source_journal_urls), for a
    cluster source; the operator reads that cluster's journal size before building the Job.
    """
    restore = cluster.restore
    if restore is None:
        return []
    if restore.rdb is not None:
        return [arg for path in restore.rdb.paths for arg in ("--restore-from", f"{RESTORE_MOUNT}/{path}")]
    if restore.cluster is not None:
        return ["--restore-from-cluster", restore.cluster.name, "--restore-journal", ",".join(source_journal)]
    return []


def source_journal_secrets(source: str, tls: TlsSpec) -> list[tuple[str, str]]:
    """The Secrets of a locked source cluster ``source`` that the Job mounts, and the one key it takes
    of each: its journal's CA (not the servers' private key) and its cluster user's password (not
    the routes'). The source's journal has that one client user, so it is the least that reads it."""
    return [
        (tls.journal_secret(source), constants.TLS_CA),
        (labels.journal_auth_secret_name(source), PASSWORD_KEY),
    ]


def source_security_volumes(source: str, tls: TlsSpec | None) -> list[dict[str, Any]]:
    """The source's CA and password as Secret volumes, by reference: never copied into our objects."""
    if tls is None:
        return []
    (ca_secret, ca_key), (auth_secret, auth_key) = source_journal_secrets(source, tls)
    return [
        secret_volume("source-journal-ca", ca_secret, [ca_key]),
        secret_volume("source-journal-auth", auth_secret, [auth_key]),
    ]


def source_security_mounts(tls: TlsSpec | None) -> list[dict[str, Any]]:
    if tls is None:
        return []
    return [
        {"name": "source-journal-ca", "mountPath": SOURCE_JOURNAL_TLS_DIR, "readOnly": True},
        {"name": "source-journal-auth", "mountPath": SOURCE_JOURNAL_AUTH_DIR, "readOnly": True},
    ]


def source_security_args(tls: TlsSpec | None) -> list[str]:
    """`engram provision`'s credentials for a locked source's journal, as mounted (none for an open
    one: provision then reads the source's servers without credentials, whatever its own are)."""
    if tls is None:
        return []
    return [
        "--restore-journal-user", JOURNAL_USER,
        "--restore-journal-password-file", f"{SOURCE_JOURNAL_AUTH_DIR}/{PASSWORD_KEY}",
        "--restore-journal-ca", f"{SOURCE_JOURNAL_TLS_DIR}/{constants.TLS_CA}",
    ]


def provision_command(cluster: ClusterSpec, cluster_id: str, source_journal: Sequence[str] = (),
                      source_tls: TlsSpec | None = None) -> list[str]:
    """`engram provision` for every shard of the cluster against its journal Service."""
    return [
        "engram",
        "provision",
        "--cluster",
        cluster.name,
        "--cluster-id",
        cluster_id,
        "--shards",
        str(cluster.shards),
        "--journal-replicas",
        str(stream_replicas(cluster.journal.replicas)),
        "--journal",
        ",".join(journal_urls(cluster)),
        "--timeout",
        str(ATTEMPT_TIMEOUT_SECONDS),
        *journal_security_args(cluster),
        *restore_args(cluster, source_journal),
        *(source_security_args(source_tls) if _cluster_source(cluster) else []),
    ]


def _cluster_source(cluster: ClusterSpec) -> str:
    """The name of the MemoryCluster spec.restoreFrom.cluster names ("" for none)."""
    restore = cluster.restore
    return restore.cluster.name if restore is not None and restore.cluster is not None else ""


def journal_security_args(cluster: ClusterSpec) -> list[str]:
    """`engram provision`'s credentials for a locked journal (spec.tls): the password stays in its
    mounted file, never on the command line."""
    files = journal_client_files(cluster)
    if files is None:
        return []
    return [
        "--journal-user", JOURNAL_USER,
        "--journal-password-file", files.password_file,
        "--journal-ca", files.ca_file,
    ]


def build_provision_job(
    cluster: ClusterSpec, cluster_id: str, source_journal: Sequence[str] = (), source_id: str = "",
    source_tls: TlsSpec | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job the operator runs once the journal is ready and before any engine pod.

    With spec.restoreFrom it also seeds the cluster: ``source_journal``, ``source_id`` and
    ``source_tls`` are the source cluster's journal URLs, cluster id and spec.tls (for a cluster
    source), as the operator read them; a locked source's CA and password are mounted from its Secrets.
    """
    job_labels = labels.cluster_labels(cluster.name, labels.PROVISION)
    job_labels[labels.VERSION] = cluster.engine.version
    restore = cluster.restore
    # The shard count it provisions: the slot map's until a reshard Job changes it (decisions/resharding.py).
    annotations = {labels.CLUSTER_ID: cluster_id, labels.SHARDS: str(cluster.shards)}
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}, *journal_security_volumes(cluster)]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}, *journal_security_mounts(cluster)]
    resources: dict[str, Any] = RESOURCES
    deadline = ACTIVE_DEADLINE_SECONDS
    if restore is not None:
        source = restore.source()
        if "cluster" in source and source_id:
            source["cluster"]["clusterId"] = source_id
        annotations[labels.RESTORE_FROM] = json.dumps(source, sort_keys=True)
        resources = restore.resources.to_manifest() or RESTORE_RESOURCES
        deadline = RESTORE_ACTIVE_DEADLINE_SECONDS
        if restore.rdb is not None:
            # Read-only twice over: the claim as mounted, and the mount in the container.
            claim = {"claimName": restore.rdb.claim_name, "readOnly": True}
            volumes.append({"name": "restore", "persistentVolumeClaim": claim})
            mounts.append({"name": "restore", "mountPath": RESTORE_MOUNT, "readOnly": True})
        if source_name := _cluster_source(cluster):
            volumes += source_security_volumes(source_name, source_tls)
            mounts += source_security_mounts(source_tls)
    container = {
        "name": "provision",
        # The engine image: provisioning writes the same formats the nodes of this version read.
        "image": cluster.engine.resolved_image,
        "imagePullPolicy": cluster.engine.image_pull_policy,
        "command": provision_command(cluster, cluster_id, source_journal, source_tls),
        "resources": resources,
        "securityContext": container_security_context(),
        # The operator shows a failed attempt's error in the Provisioned condition.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    return one_shot_job(
        cluster, labels.provision_job_name(cluster.name), job_labels, annotations, cluster_id, container,
        volumes, backoff_limit=BACKOFF_LIMIT, deadline_seconds=deadline,
        permanent_exit_codes=PERMANENT_EXIT_CODES,
    )
