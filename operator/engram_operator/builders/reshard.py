"""The reshard Job: `engram reshard` moves hash slots between shards when spec.shards changes.

It runs with the provisioning Job's image, journal credentials and security settings. Moving data
takes as long as the data set is large, and the command resumes its plan when run again, so the Job
gets hours and many attempts; bad arguments (exit 2) fail it at once.
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
from engram_operator.builders.engine import journal_security_mounts, journal_security_volumes
from engram_operator.builders.journal import journal_urls
from engram_operator.builders.provision import journal_security_args
from engram_operator.spec import ClusterSpec

# An attempt that dies (a node drained, the journal away) is run again and continues the same plan.
BACKOFF_LIMIT = 30
# Bounds the whole Job; slots move at the speed of MIGRATE, hours for a large data set.
ACTIVE_DEADLINE_SECONDS = 24 * 3600
# `engram reshard` exits 2 on bad arguments: no retry can help.
PERMANENT_EXIT_CODES = [2]
CONTAINER = "reshard"

# The Job only directs the move (Valkey MIGRATEs between the engine pods): a small, bounded container.
RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}


def reshard_command(cluster: ClusterSpec) -> list[str]:
    """`engram reshard` to spec.shards against the cluster's journal, with provisioning's credentials."""
    return [
        "engram",
        "reshard",
        "--journal",
        ",".join(journal_urls(cluster)),
        "--cluster",
        cluster.name,
        "--shards",
        str(cluster.shards),
        *journal_security_args(cluster),
    ]


def build_reshard_job(cluster: ClusterSpec, cluster_id: str, from_shards: int) -> dict[str, Any]:
    """The batch/v1 Job that reshards the cluster from ``from_shards`` (0: not known) to spec.shards."""
    job_labels = labels.cluster_labels(cluster.name, labels.RESHARD)
    job_labels[labels.VERSION] = cluster.engine.version
    annotations = {
        labels.CLUSTER_ID: cluster_id,
        labels.SHARDS: str(cluster.shards),
        labels.FROM_SHARDS: str(from_shards),
    }
    container = {
        "name": CONTAINER,
        # The engine image: the plan it writes is read by the nodes of this version.
        "image": cluster.engine.resolved_image,
        "imagePullPolicy": cluster.engine.image_pull_policy,
        "command": reshard_command(cluster),
        "resources": RESOURCES,
        "securityContext": container_security_context(),
        # The operator shows a failed attempt's error in the Resharding condition.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *journal_security_mounts(cluster)],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(
            cluster, labels.reshard_job_name(cluster.name, cluster.shards), job_labels, annotations
        ),
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "activeDeadlineSeconds": ACTIVE_DEADLINE_SECONDS,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONTAINER,
                            "operator": "In",
                            "values": PERMANENT_EXIT_CODES,
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
                    # Not pinned to a zone: it talks to the journal and to every shard's primary.
                    **scheduling(cluster, {}),
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}, *journal_security_volumes(cluster)],
                },
            },
        },
    }
