"""The provisioning Job: `engram provision` creates the journal streams, identity and slot map, once.

Engine nodes never create their stream or the cluster metadata (a node that cannot find them may
be talking to a journal server that has not loaded them yet); this Job is the only creator.
"""

from __future__ import annotations

from typing import Any

from engram_operator import labels
from engram_operator.builders.common import (
    container_security_context,
    metadata,
    pod_security_context,
    scheduling,
)
from engram_operator.builders.journal import STREAM_REPLICAS, journal_urls
from engram_operator.spec import ClusterSpec

# One attempt waits this long for a journal quorum; the Job retries it BACKOFF_LIMIT times.
ATTEMPT_TIMEOUT_SECONDS = 60
BACKOFF_LIMIT = 4
# Bounds the whole Job, restarts and back-off included; the operator then deletes and retries it.
ACTIVE_DEADLINE_SECONDS = 600

# Creating a few streams is light; the bound only keeps a misbehaving attempt off the node.
RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}


def provision_command(cluster: ClusterSpec, cluster_id: str) -> list[str]:
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
        str(STREAM_REPLICAS),
        "--journal",
        ",".join(journal_urls(cluster)),
        "--timeout",
        str(ATTEMPT_TIMEOUT_SECONDS),
    ]


def build_provision_job(cluster: ClusterSpec, cluster_id: str) -> dict[str, Any]:
    """The batch/v1 Job the operator runs once the journal is ready and before any engine pod."""
    job_labels = labels.cluster_labels(cluster.name, labels.PROVISION)
    job_labels[labels.VERSION] = cluster.engine.version
    container = {
        "name": "provision",
        # The engine image: provisioning writes the same formats the nodes of this version read.
        "image": cluster.engine.resolved_image,
        "imagePullPolicy": cluster.engine.image_pull_policy,
        "command": provision_command(cluster, cluster_id),
        "resources": RESOURCES,
        "securityContext": container_security_context(),
        # The operator shows a failed attempt's error in the Provisioned condition.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(
            cluster,
            labels.provision_job_name(cluster.name),
            job_labels,
            {labels.CLUSTER_ID: cluster_id},
        ),
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "activeDeadlineSeconds": ACTIVE_DEADLINE_SECONDS,
            "template": {
                "metadata": {"labels": job_labels, "annotations": {labels.CLUSTER_ID: cluster_id}},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(),
                    # Not pinned to a zone: it only talks to the journal, wherever the nodes allow.
                    **scheduling(cluster, {}),
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
