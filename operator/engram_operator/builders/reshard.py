"""The reshard Job: `engram reshard` moves hash slots between shards when spec.shards changes.

It runs with the provisioning Job's image, journal credentials and security settings; with spec.tls
it reaches the nodes' client port over TLS, trusting the CA of the clients' certificate. Moving data
takes as long as the data set is large, and the command resumes its plan when run again, so the Job
gets hours and many attempts; bad arguments (exit 2) fail it at once.
"""

from __future__ import annotations

from typing import Any

from engram_operator import constants, labels
from engram_operator.builders.common import container_security_context, one_shot_job
from engram_operator.builders.engine import journal_security_mounts, journal_security_volumes
from engram_operator.builders.journal import journal_urls
from engram_operator.builders.provision import journal_security_args
from engram_operator.builders.tls import secret_volume
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

# spec.tls: only the ca.crt of the clients' certificate Secret, never its private key.
TLS_CA_VOLUME = "tls-ca"
TLS_CA_FILE = f"{constants.TLS_DIR}/{constants.TLS_CA}"


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
        *(["--tls-ca", TLS_CA_FILE] if cluster.tls is not None else []),
    ]


def _tls_ca(cluster: ClusterSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """spec.tls: the volume and mount of the clients' CA, which the mover verifies nodes with."""
    if cluster.tls is None:
        return [], []
    volume = secret_volume(TLS_CA_VOLUME, cluster.tls.client_secret(cluster.name), [constants.TLS_CA])
    return [volume], [{"name": TLS_CA_VOLUME, "mountPath": constants.TLS_DIR, "readOnly": True}]


def build_reshard_job(cluster: ClusterSpec, cluster_id: str, from_shards: int) -> dict[str, Any]:
    """The batch/v1 Job that reshards the cluster from ``from_shards`` (0: not known) to spec.shards."""
    job_labels = labels.cluster_labels(cluster.name, labels.RESHARD)
    job_labels[labels.VERSION] = cluster.engine.version
    tls_volumes, tls_mounts = _tls_ca(cluster)
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
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"}, *journal_security_mounts(cluster), *tls_mounts,
        ],
    }
    return one_shot_job(
        cluster, labels.reshard_job_name(cluster.name, cluster.shards), job_labels, annotations, cluster_id,
        container, [{"name": "tmp", "emptyDir": {}}, *journal_security_volumes(cluster), *tls_volumes],
        backoff_limit=BACKOFF_LIMIT, deadline_seconds=ACTIVE_DEADLINE_SECONDS,
        permanent_exit_codes=PERMANENT_EXIT_CODES,
    )
