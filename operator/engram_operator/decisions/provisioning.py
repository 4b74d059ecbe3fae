"""What a cluster needs before its engine pods start: its Services, journal and disruption budgets,
and the provisioning Job that creates its streams and slot map (seeding them on a restore)."""

from __future__ import annotations

from typing import Any

from engram_operator import builders, labels
from engram_operator.builders.provision import source_journal_secrets, source_journal_urls
from engram_operator.builders.tls import build_certificates
from engram_operator.conditions import Condition
from engram_operator.decisions.plan import Event, Plan, Problem
from engram_operator.decisions.region import apply_region
from engram_operator.decisions.tls import apply_tls
from engram_operator.observe import JobInfo, Observed, SourceCluster
from engram_operator.spec import ClusterSpec, TlsSpec, restore_problems


def _create_missing_children(cluster: ClusterSpec, seen: Observed, journal: list, plan: Plan) -> None:
    # spec.tls: the journal servers start locked or not at all, so they wait for their credentials.
    ready, auth = apply_tls(cluster, seen, plan)
    # spec.region: likewise, linked or not, so they wait for the link's credentials.
    linkable, link_auth = apply_region(cluster, seen, plan)
    servers = (
        [
            builders.build_journal_config(cluster, journal, auth, link_auth),
            *(builders.build_journal_statefulset(cluster, p) for p in journal),
        ]
        if ready and linkable
        else []
    )
    wanted = [
        builders.build_headless_service(cluster),
        builders.build_endpoint_service(cluster),
        builders.build_journal_service(cluster),
        *servers,
        builders.build_journal_pdb(cluster),
        *(builders.build_shard_pdb(cluster, s) for s in range(cluster.shards)),
        # cert-manager issues while the rest starts; pods mounting its Secret wait for it (waiting.py).
        *(build_certificates(cluster) if not seen.certificate_error else []),
    ]
    for obj in wanted:
        if (obj["kind"], obj["metadata"]["name"]) not in seen.children:
            plan.create.append(obj)


def _provision(cluster: ClusterSpec, seen: Observed, plan: Plan) -> bool:
    """Whether new engine pods may start: the provisioning Job succeeded for this cluster's id.

    Nodes never create their stream or the slot map; the Job does, once the journal is ready.
    """
    name = labels.provision_job_name(cluster.name)
    job = seen.provisioning

    def pending(reason: str, message: str) -> bool:
        plan.provisioned = Condition("Provisioned", "False", reason, message)
        plan.waiting.append(f"provisioning: {message}")
        return False

    if job is not None and job.deleting:
        return pending("Provisioning", f"job {name} is being deleted; a new one follows")
    if job is not None and (job.cluster_id != seen.cluster_id or job.owner_uid != cluster.uid):
        # Left by an earlier MemoryCluster of this name that the garbage collector has not removed
        # yet: its success says nothing about this cluster's journal.
        plan.delete_jobs.append(job.name)
        message = f"job {name} belongs to cluster id {job.cluster_id or '(none)'}, not {seen.cluster_id}"
        plan.events.append(Event("Warning", "StaleProvisionJob", f"{message}; replacing it"))
        return pending("StaleJob", f"{message}; replacing it")
    if job is not None and job.succeeded:
        seeded = f" and seeded it from {_restored_text(job.restore)}" if job.restore else ""
        plan.provisioned = Condition(
            "Provisioned",
            "True",
            "Restored" if job.restore else "Provisioned",
            f"job {name} created the journal streams and slot map of cluster id {seen.cluster_id}{seeded}",
        )
        plan.restored_from = dict(job.restore) if job.restore else None
        return True
    if job is not None and job.failed and job.permanent:
        return _provisioning_refused(cluster, job, plan)
    if job is not None and job.failed:
        # Retry with a fresh Job: the journal may have been slow, or an attempt was killed.
        plan.delete_jobs.append(job.name)
        message = f"job {name} failed ({job.error or 'no reason given'}); retrying with a new job"
        plan.events.append(Event("Warning", "ProvisioningFailed", message))
        return pending("ProvisioningFailed", message)
    if job is not None:
        tail = f"; last attempt failed: {job.error}" if job.error else ""
        return pending("Provisioning", f"job {name} is running{tail}")
    if not seen.cluster_id:
        plan.provisioned = Condition("Provisioned", "Unknown", "NoClusterId", "the cluster id is not decided")
        plan.waiting.append("provisioning: the cluster id is not decided")
        return False
    want = cluster.journal.replicas
    if seen.journal_ready < want:
        # _wait_reasons already reports the journal; the condition says what comes after it.
        plan.provisioned = Condition(
            "Provisioned",
            "False",
            "WaitingForJournal",
            f"job {name} starts once every journal server is ready ({seen.journal_ready}/{want})",
        )
        return False
    problems = restore_problems(cluster)
    if problems:
        message = (
            "; ".join(problems) + ". Restoring happens only when a cluster is created: fix it by "
            "deleting this MemoryCluster and creating it again with a valid spec.restoreFrom"
        )
        plan.degraded = plan.degraded or Problem("InvalidRestore", message)
        plan.events.append(Event("Warning", "InvalidRestore", message, standing=True))
        plan.provisioned = Condition("Provisioned", "False", "InvalidRestore", message)
        return False
    source_journal: list[str] = []
    source_id = ""
    source_tls: TlsSpec | None = None
    if cluster.restore is not None and cluster.restore.cluster is not None:
        source = seen.restore_source
        wait = _restore_source_wait(cluster, source)
        if wait or source is None:
            return pending("WaitingForRestoreSource", wait)
        if missing := _source_secrets_missing(source):
            # Its pod would wait on a volume that cannot mount; nothing starts until they are there.
            plan.events.append(Event("Warning", "RestoreSourceSecretMissing", missing, standing=True))
            return pending("RestoreSourceSecretMissing", missing)
        source_journal = source_journal_urls(cluster, source.name, source.journal_replicas)
        source_id = source.cluster_id
        source_tls = source.tls
    plan.create.append(
        builders.build_provision_job(cluster, seen.cluster_id, source_journal, source_id, source_tls)
    )
    seeding = f", seeding it from {cluster.restore.describe()}" if cluster.restore else ""
    plan.events.append(
        Event("Normal", "Provisioning", f"creating job {name} for cluster id {seen.cluster_id}{seeding}")
    )
    return pending("Provisioning", f"creating job {name}{seeding}")


def _provisioning_refused(cluster: ClusterSpec, job: JobInfo, plan: Plan) -> bool:
    """A Job that failed for good (`engram provision` exit 2 or 3) stays, and is not retried.

    Another attempt would fail the same way (a file that is not an RDB, a source without snapshots,
    a name held by another cluster id), so the operator keeps the failed Job and its pods for their
    logs and says how to go on. Deleting the Job is the way to ask for a new attempt.
    """
    what = f"restoring from {cluster.restore.describe()}" if cluster.restore else "provisioning"
    reason = "RestoreFailed" if cluster.restore else "ProvisioningFailed"
    message = (
        f"{what} failed and retrying cannot help: {job.error or 'no reason given'}. Fix the cause, then "
        f"delete job {job.name} to try again (kubectl delete job {job.name}), or delete this MemoryCluster"
    )
    plan.degraded = plan.degraded or Problem(reason, message)
    plan.events.append(Event("Warning", reason, message, standing=True))
    plan.provisioned = Condition("Provisioned", "False", reason, message)
    return False


def _restore_source_wait(cluster: ClusterSpec, source: SourceCluster | None) -> str:
    """Why a restore from another cluster cannot start yet ("" when it can).

    The Job would fail for good on a source that is missing or has a shard without a verified
    snapshot, so it is not created before the source can give what it needs.
    """
    name = cluster.restore.cluster.name if cluster.restore and cluster.restore.cluster else ""
    if source is None or not source.found:
        return (
            f"MemoryCluster {name} (spec.restoreFrom.cluster) does not exist in namespace "
            f"{cluster.namespace}; provisioning waits for it"
        )
    if source.deleting:
        return f"MemoryCluster {name} (spec.restoreFrom.cluster) is being deleted: restore from another one"
    if not source.snapshots_since:
        return (
            f"MemoryCluster {name} (spec.restoreFrom.cluster) does not have a verified snapshot of every "
            f"shard yet (its status.snapshots.allShardsSince); set its spec.snapshots.request to take one now"
        )
    return ""


def _source_secrets_missing(source: SourceCluster) -> str:
    """Why a locked source's journal cannot be read yet ("" when it can, or is open): the Job mounts
    that cluster's own CA and password Secrets, which must exist with their keys."""
    if source.tls is None:
        return ""
    problems = []
    for name, key in source_journal_secrets(source.name, source.tls):
        secret = source.secrets.get(name)
        if not name:
            problems.append("its spec.tls names no Secret for the journal's certificate")
        elif secret is not None and secret.error:
            problems.append(f"Secret {name} cannot be read ({secret.error})")
        elif secret is None or not secret.found:
            problems.append(f"Secret {name} does not exist")
        elif key not in secret.data:
            problems.append(f"Secret {name} lacks key {key}")
    if not problems:
        return ""
    return (
        f"MemoryCluster {source.name} (spec.restoreFrom.cluster) has a locked journal (spec.tls), which "
        f"the provisioning Job reads with that cluster's own CA and password: {'; '.join(problems)}. "
        "The Job is created once they are there"
    )


def _restored_text(restore: dict[str, Any]) -> str:
    """status.restoredFrom (the Job's record of its source) in words."""
    if "cluster" in restore:
        return f"the snapshots of MemoryCluster {restore['cluster'].get('name', '')}"
    rdb = restore.get("rdb") or {}
    return f"{', '.join(rdb.get('paths') or [])} in PersistentVolumeClaim {rdb.get('claimName', '')}"
