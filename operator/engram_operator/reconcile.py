"""The one idempotent reconcile: observe, decide (pure), act, write status. Called by every handler."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kubernetes.client.exceptions import ApiException

from engram.node.peer import PeerRefused, PeerUnreachable
from engram_operator import identity, kube, labels, metrics, node_cache, probe
from engram_operator.announce import announcements
from engram_operator.builders.journal_auth import build_journal_auth_secret, generate_password
from engram_operator.builders.provision import source_journal_secrets
from engram_operator.builders.reshard import PERMANENT_EXIT_CODES as RESHARD_PERMANENT_EXIT_CODES
from engram_operator.builders.tls import tls_secret_names
from engram_operator.decisions import (
    Event,
    Plan,
    Problem,
    SnapshotResult,
    SnapshotTarget,
    decide,
    pending_snapshot_request,
    remembered_snapshot_failures,
    snapshot_failure_counts,
    snapshot_failure_events,
    snapshot_outcome_event,
    snapshot_request_event,
    snapshot_targets,
)
from engram_operator.observe import (
    PERMANENT_EXIT_CODES,
    JobInfo,
    Observed,
    SecretData,
    SourceCluster,
    job_from_api,
    node_from_api,
    pod_from_api,
    policy_hashes,
    secret_from_api,
    secret_keys_from_api,
    source_from_api,
)
from engram_operator.replica_progress import remembered_marks
from engram_operator.spec import ClusterSpec
from engram_operator.status import build_status, snapshot_request_done, snapshot_request_record

EmitEvent = Callable[[Event], None]


# Every cluster's reconcile reads Nodes from here: one list per TTL for the whole operator.
NODES = node_cache.NodeCache(lambda: kube.list_nodes())

log = logging.getLogger(__name__)


async def observe(cluster: ClusterSpec, status: Mapping[str, Any]) -> Observed:
    """Everything decide needs; ``status`` is the last written status (it records the cluster id)."""
    (
        nodes,
        pods,
        (children, journal_ready),
        (job, reshard),
        (users_secret, password_secrets),
        (policies, network_error),
        (tls_children, tls_secrets, journal_auth, certificate_error),
        (region_children, link_auth),
    ) = await asyncio.gather(
        NODES.get(),
        kube.list_engine_pods(cluster.namespace, cluster.name),
        kube.list_children(cluster.namespace, cluster.name),
        cluster_jobs(cluster),
        users_secrets(cluster),
        network_policies(cluster),
        tls_objects(cluster),
        region_objects(cluster),
    )
    pod_infos = [p for p in (pod_from_api(p) for p in pods) if p is not None]
    source = None
    restore = cluster.restore
    if restore is not None and restore.cluster is not None and restore.cluster.name and job is None:
        # Only needed to build the Job: its journal's size, and whether it has snapshots to give.
        source = await restore_source(cluster, restore.cluster.name)
    return Observed(
        nodes=[node_from_api(n, cluster.placement.topology_key) for n in nodes],
        pods=pod_infos,
        children=children | tls_children | region_children,
        journal_ready=journal_ready,
        statuses=await probe.all_statuses(pod_infos, await probe.cluster_control_tls(cluster)),
        cluster_id=identity.cluster_id(status, pod_infos, cluster.uid),
        provisioning=job,
        restore_source=source,
        users_secret=users_secret,
        password_secrets=password_secrets,
        network_policies=policies,
        network_error=network_error,
        tls_secrets=tls_secrets,
        journal_auth=journal_auth,
        link_auth=link_auth,
        certificate_error=certificate_error,
        reshard_jobs=reshard,
        resharding_record=dict(status.get("resharding") or {}),
        progress_marks=remembered_marks(status),
        # Wall clock: grace periods are measured against the API's own timestamps.
        now=time.time(),
    )


async def restore_source(cluster: ClusterSpec, name: str) -> SourceCluster:
    """The MemoryCluster spec.restoreFrom.cluster names and, when its journal is locked, the Secrets
    the Job would mount from it: their keys only, the password stays where it is."""
    source = source_from_api(name, await kube.get_memorycluster(cluster.namespace, name))
    if not source.found or source.tls is None:
        return source

    async def keys(secret: str) -> SecretData:
        try:
            return secret_keys_from_api(secret, await kube.get_secret(cluster.namespace, secret))
        except ApiException as err:
            return SecretData(secret, error=_api_error(err))

    names = [secret for secret, _ in source_journal_secrets(name, source.tls) if secret]
    read = await asyncio.gather(*(keys(n) for n in names))
    return replace(source, secrets={s.name: s for s in read})


async def users_secrets(cluster: ClusterSpec) -> tuple[SecretData | None, dict[str, SecretData]]:
    """The users Secret (None: there is none) and every Secret spec.users takes a password from.

    Read on every reconcile, the timer's included: a password changed in its Secret reaches the
    users file within one resync, without a spec change and without watching every Secret of the
    namespace. A password Secret that cannot be read is reported, not raised: the others still count.
    """
    names = sorted({u.password_secret.name for u in cluster.users if u.password_secret} - {""})

    async def password_secret(name: str) -> SecretData:
        try:
            return secret_from_api(name, await kube.get_secret(cluster.namespace, name))
        except ApiException as err:
            return SecretData(name, error=_api_error(err))

    own_name = labels.users_secret_name(cluster.name)
    own, *read = await asyncio.gather(
        kube.get_secret(cluster.namespace, own_name), *(password_secret(n) for n in names)
    )
    return (secret_from_api(own_name, own) if own is not None else None), {s.name: s for s in read}


async def network_policies(cluster: ClusterSpec) -> tuple[dict[str, str] | None, str]:
    """The operator's NetworkPolicies of the cluster (name -> spec hash), or None and why not.

    A refusal (a chart's role without networkpolicies) is reported, not raised: the rest of the
    cluster is still reconciled.
    """
    try:
        return policy_hashes(await kube.list_network_policies(cluster.namespace, cluster.name)), ""
    except ApiException as err:
        return None, _api_error(err)


async def _control_targets(cluster: ClusterSpec, seen: Observed) -> dict[str, probe.Target]:
    """Each pod's control port by name: its IP, and TLS where its node serves it."""
    tls = await probe.cluster_control_tls(cluster)
    return {p.name: probe.target(p, tls) for p in seen.pods}


async def _take_snapshots(
    cluster: ClusterSpec, seen: Observed, targets: list[SnapshotTarget]
) -> list[SnapshotResult]:
    """probe.take_snapshots, on each pod's control port as it serves it (a failure to read the
    cluster's CA ends the task: its result then reports the request interrupted)."""
    return await probe.take_snapshots(targets, await _control_targets(cluster, seen))


async def tls_objects(
    cluster: ClusterSpec,
) -> tuple[frozenset[tuple[str, str]], dict[str, SecretData], SecretData | None, str]:
    """spec.tls: the children it adds that exist (the Certificates the operator made, the journal
    config Secret), the TLS Secrets (keys only), the journal's credentials, and why the Certificates
    could not be listed (cert-manager not installed, no RBAC). Nothing is read without spec.tls.

    The Certificates are listed only with an issuerRef, so a cluster given a secretName works where
    cert-manager is not installed.
    """
    if cluster.tls is None:
        return frozenset(), {}, None, ""
    names = tls_secret_names(cluster)
    auth_name = labels.journal_auth_secret_name(cluster.name)
    config_name = labels.journal_config_secret_name(cluster.name)
    auth, config, *tls = await asyncio.gather(
        *(kube.get_secret(cluster.namespace, n) for n in (auth_name, config_name, *names))
    )
    found = {n: secret_keys_from_api(n, s) for n, s in zip(names, tls, strict=True)}
    children = {("Secret", config_name)} if config is not None else set()
    journal_auth = secret_from_api(auth_name, auth) if auth is not None else None
    error = ""
    if cluster.tls.issuer is not None:
        try:
            certificates = await kube.list_certificates(cluster.namespace, cluster.name)
            children |= {("Certificate", n) for n in certificates}
        except ApiException as err:
            error = _api_error(err)
    return frozenset(children), found, journal_auth, error


async def region_objects(cluster: ClusterSpec) -> tuple[frozenset[tuple[str, str]], SecretData | None]:
    """spec.region: the journal config Secret, when the link's password puts the config in one
    without spec.tls (tls_objects finds it otherwise), and the link's credentials Secret."""
    section = cluster.region
    if section is None or not section.auth_secret:
        return frozenset(), None
    config_name = labels.journal_config_secret_name(cluster.name)
    config, auth = await asyncio.gather(
        kube.get_secret(cluster.namespace, config_name) if cluster.tls is None else _none(),
        kube.get_secret(cluster.namespace, section.auth_secret),
    )
    children = frozenset({("Secret", config_name)} if config is not None else set())
    return children, secret_from_api(section.auth_secret, auth)


async def _none() -> None:
    return None


async def cluster_jobs(cluster: ClusterSpec) -> tuple[JobInfo | None, list[JobInfo]]:
    """The provisioning Job and the reshard Jobs, from one list; a Job's pods are read only while it
    has not succeeded, for a failed attempt's error."""
    jobs = await kube.list_jobs(cluster.namespace, cluster.name)
    name = labels.provision_job_name(cluster.name)
    provision = [j for j in jobs if j["metadata"]["name"] == name][:1]
    reshard = [j for j in jobs if (j["metadata"].get("labels") or {}).get(labels.COMPONENT) == labels.RESHARD]
    infos = await asyncio.gather(
        *(_job_info(cluster, j, labels.PROVISION, PERMANENT_EXIT_CODES) for j in provision),
        *(_job_info(cluster, j, labels.RESHARD, RESHARD_PERMANENT_EXIT_CODES) for j in reshard),
    )
    return (infos[0] if provision else None), list(infos[len(provision) :])


async def _job_info(
    cluster: ClusterSpec, job: dict[str, Any], component: str, permanent: Sequence[int]
) -> JobInfo:
    info = job_from_api(job, permanent_codes=permanent)
    if info.succeeded:
        return info
    pods = await kube.list_pods(cluster.namespace, cluster.name, component)
    return job_from_api(job, pods, permanent_codes=permanent)


async def execute(cluster: ClusterSpec, plan: Plan, seen: Observed, logger: logging.Logger) -> list[Problem]:
    """Carry out a plan. Creates tolerate AlreadyExists, deletes tolerate NotFound: safe to repeat.

    An action that fails does not stop the others nor escape: it is returned, shown in the status
    and an event, and the next reconcile decides it again (a kopf retry would skip the status and
    wait its own backoff).
    """
    failures: list[Problem] = []

    def failed(reason: str, message: str) -> None:
        # The module logger, not kopf's object logger: the failure becomes one event, not two.
        log.warning("%s/%s: %s", cluster.namespace, cluster.name, message)
        failures.append(Problem(reason, message))

    if plan.users_secret is not None:
        # Before any pod: new pods mount it. Replaced whole, so that it never mixes two renderings.
        name = plan.users_secret["metadata"]["name"]
        try:
            if seen.users_secret is None:
                await kube.create(plan.users_secret)
            else:
                await kube.replace_secret(plan.users_secret)
            logger.info("wrote the users file into Secret %s", name)
        except ApiException as err:
            failed("UsersWriteFailed", f"writing Secret {name} failed: {_api_error(err)}")
    if plan.create_journal_auth:
        # Generated here, not in decide, which stays pure; created once, never replaced.
        secret = build_journal_auth_secret(cluster, generate_password(), generate_password())
        try:
            if await kube.create(secret):
                logger.info("created the journal's credentials in Secret %s", secret["metadata"]["name"])
        except ApiException as err:
            failed("CreateFailed", f"creating Secret {secret['metadata']['name']} failed: {_api_error(err)}")
    if seen.certificate_error:
        failed(
            "CertificateReadFailed",
            f"listing cert-manager Certificates failed: {seen.certificate_error} (is cert-manager "
            "installed, and the chart's certManager.enabled true?)",
        )
    if seen.network_error:
        failed("NetworkPolicyReadFailed", f"listing NetworkPolicies failed: {seen.network_error}")
    for policy in plan.update_policies:
        name = policy["metadata"]["name"]
        try:
            await kube.replace_network_policy(policy)
            logger.info("updated NetworkPolicy %s", name)
        except ApiException as err:
            failed("UpdateFailed", f"updating NetworkPolicy {name} failed: {_api_error(err)}")
    for name in plan.delete_policies:
        try:
            await kube.delete_network_policy(cluster.namespace, name)
            logger.info("deleted NetworkPolicy %s", name)
        except ApiException as err:
            failed("DeleteFailed", f"deleting NetworkPolicy {name} failed: {_api_error(err)}")
    # Services, config, policies and the journal before pods, so a new pod's DNS and journal already
    # exist and no pod runs before its NetworkPolicy
    # (pods also wait for the provisioning Job, which decide plans in an earlier reconcile).
    for obj in sorted(plan.create, key=lambda o: o["kind"] == "Pod"):
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            if await kube.create(obj):
                logger.info("created %s %s", kind, name)
                if kind == "Pod":
                    metrics.POD_ACTIONS.labels("create").inc()
        except ApiException as err:
            failed("CreateFailed", f"creating {kind} {name} failed: {_api_error(err)}")
    for name in plan.delete_pods:
        try:
            await kube.delete_pod(cluster.namespace, name)
        except ApiException as err:
            failed("DeleteFailed", f"deleting pod {name} failed: {_api_error(err)}")
            continue
        metrics.POD_ACTIONS.labels("delete").inc()
        if name in plan.replacements:
            metrics.POD_REPLACEMENTS.labels(cluster.namespace, cluster.name, plan.replacements[name]).inc()
        logger.info("deleted pod %s", name)
    for name in plan.delete_jobs:
        try:
            await kube.delete_job(cluster.namespace, name)
        except ApiException as err:
            failed("DeleteFailed", f"deleting job {name} failed: {_api_error(err)}")
            continue
        logger.info("deleted job %s", name)
    # By pod IP on the control port (probe.switchover): no Service lists that port, none needs to.
    control = await _control_targets(cluster, seen) if plan.switchovers else {}
    for switch in plan.switchovers:
        logger.info("switchover: %s hands its shard to %s", switch.pod, switch.target)
        try:
            await probe.switchover(control[switch.pod], switch.target)
        except (PeerUnreachable, PeerRefused) as err:
            # Refused (the target fell behind, the primary stepped down meanwhile) or unreachable:
            # the primary keeps serving either way, and the next reconcile picks a target again.
            failed("SwitchoverFailed", f"switchover of {switch.pod} to {switch.target} failed: {err}")
    for pod, role in plan.role_labels.items():
        try:
            await kube.set_pod_label(cluster.namespace, pod, labels.ROLE, role)
        except ApiException as err:
            failed("LabelFailed", f"labelling pod {pod} {role} failed: {_api_error(err)}")
    return failures


@dataclass
class SnapshotRun:
    """An on-demand snapshot request being carried out, kept in the cluster's kopf memo."""

    request: str
    targets: list[SnapshotTarget]
    task: asyncio.Task[list[SnapshotResult]]


# Memo keys: the run in progress, and the last request recorded (a body read before that status
# write reached the operator still shows the previous lastRequest).
SNAPSHOT_RUN = "snapshot_run"
SNAPSHOT_RECORDED = "snapshot_recorded"
# Each pod's failed scheduled snapshot attempts in a row, as last seen (decisions.snapshot_failure_counts).
SNAPSHOT_FAILURES = "snapshot_failures"


def snapshot_requests(
    cluster: ClusterSpec,
    seen: Observed,
    previous: Mapping[str, Any],
    memo: MutableMapping[str, Any],
    plan: Plan,
) -> dict[str, Any]:
    """Carry out spec.snapshots.request; returns status.snapshots' request record.

    A snapshot takes minutes, so the reconcile never waits for one: a new request starts a task
    that asks one replica per shard at once (probe.take_snapshots, each call bounded by
    probe.SNAPSHOT_TIMEOUT), and a later reconcile (the 5 s timer) records its results once it
    has finished. The decisions (whether a request is pending, which replica) are in decisions/snapshots.py.
    After an operator restart a request still in progress is asked again (the node queues it).
    """
    record = snapshot_request_record(previous)
    run: SnapshotRun | None = memo.get(SNAPSHOT_RUN)
    if run is not None:
        if not run.task.done():
            return {**record, "inProgress": run.request}
        del memo[SNAPSHOT_RUN]
        try:
            results = run.task.result()
        except BaseException as err:  # cancelled (take_snapshots itself never raises)
            results = [SnapshotResult(t.shard, t.pod, False, f"interrupted: {err!r}") for t in run.targets]
        return _snapshots_done(cluster, seen, run.request, results, memo, plan)
    request = pending_snapshot_request(cluster, (record["lastRequest"], memo.get(SNAPSHOT_RECORDED, "")))
    if not request:
        return {**record, "inProgress": ""}
    targets = snapshot_targets(cluster, seen)
    plan.events.append(snapshot_request_event(request, targets))
    if not any(t.pod for t in targets):
        results = [SnapshotResult(t.shard, "", False, t.problem) for t in targets]
        return _snapshots_done(cluster, seen, request, results, memo, plan)
    task = asyncio.create_task(_take_snapshots(cluster, seen, targets))
    memo[SNAPSHOT_RUN] = SnapshotRun(request, targets, task)
    log.info("%s/%s: snapshot request %r started", cluster.namespace, cluster.name, request)
    return {**record, "inProgress": request}


def _snapshots_done(
    cluster: ClusterSpec,
    seen: Observed,
    request: str,
    results: list[SnapshotResult],
    memo: MutableMapping[str, Any],
    plan: Plan,
) -> dict[str, Any]:
    memo[SNAPSHOT_RECORDED] = request
    plan.events.append(snapshot_outcome_event(request, results))
    for result in results:
        outcome = "taken" if result.succeeded else "failed"
        metrics.SNAPSHOT_REQUESTS.labels(cluster.namespace, cluster.name, outcome).inc()
    return snapshot_request_done(request, results, seen.now)


def _api_error(err: ApiException) -> str:
    return f"{err.status} {err.reason}".strip()


async def reconcile(
    body: Mapping[str, Any],
    status_patch: MutableMapping[str, Any],
    emit: EmitEvent,
    logger: logging.Logger,
    memo: MutableMapping[str, Any] | None = None,
) -> Plan | None:
    """Bring one MemoryCluster one step closer to its spec; returns the plan (None when paused).

    ``memo`` is kopf's per-object memory: the lasting events posted last time, so that a state is
    announced when it appears, not on every reconcile.
    """
    meta = body.get("metadata") or {}
    if (meta.get("annotations") or {}).get(labels.RECONCILIATION) == "disabled":
        logger.info("reconciliation disabled by the %s annotation", labels.RECONCILIATION)
        return None
    memo = {} if memo is None else memo
    cluster = ClusterSpec.from_body(body)
    previous = body.get("status") or {}
    seen = await observe(cluster, previous)
    plan = decide(cluster, seen)
    before = memo.get(SNAPSHOT_FAILURES)
    if before is None:
        before = remembered_snapshot_failures(previous)
    plan.events += snapshot_failure_events(seen, before)
    memo[SNAPSHOT_FAILURES] = snapshot_failure_counts(seen, before)
    failures = await execute(cluster, plan, seen, logger)
    requests = snapshot_requests(cluster, seen, previous, memo, plan)
    events, memo["posted"] = announcements(plan, failures, previous, memo.get("posted", frozenset()))
    for event in events:
        emit(event)
    status = build_status(
        cluster,
        seen,
        plan,
        previous,
        int(meta.get("generation") or 0),
        failures=failures,
        snapshot_requests=requests,
    )
    status_patch.update(status)
    outcome = (
        "failed" if failures else "degraded" if plan.degraded else "waiting" if plan.waiting else "settled"
    )
    metrics.RECONCILES.labels(cluster.namespace, cluster.name, outcome).inc()
    metrics.READY_NODES.labels(cluster.namespace, cluster.name).set(int(status["readyNodes"].split("/")[0]))
    for shard in status["shards"]:
        metrics.SNAPSHOT_FAILURES.labels(cluster.namespace, cluster.name, str(shard["id"])).set(
            shard["snapshotFailures"]
        )
    return plan
