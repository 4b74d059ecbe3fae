"""What the operator sees: nodes, engine pods and journal state, parsed from API objects (plain dicts)."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engram.node.peer import parse_status
from engram_operator import availability, labels
from engram_operator.availability import NodeInfo
from engram_operator.replica_progress import ProgressMark
from engram_operator.reshard_progress import ReshardProgress, parse_reshard
from engram_operator.spec import TlsSpec

__all__ = [
    "EngineStatus",
    "JobInfo",
    "NodeInfo",
    "Observed",
    "PodInfo",
    "ReshardProgress",
    "SecretData",
    "SourceCluster",
]

@dataclass(frozen=True)
class EngineStatus:
    """An engine node's answer to ENGRAM.STATUS on its control port (the fields the operator uses)."""

    role: str
    halted: str = ""
    epoch: int = 0
    applied_seq: int = 0
    committed_seq: int = 0
    leader_id: str = ""
    # The shard's newest verified snapshot as the node last read it: its entry (0 while none) and
    # its age in seconds (None while none).
    snapshot_seq: int = 0
    snapshot_age: int | None = None
    # Snapshot attempts that failed in a row on this node (0 after a success), and the last reason.
    snapshot_failures: int = 0
    snapshot_error: str = ""
    # The shard's slot ranges as the node sees the slot map ("" when none, or not known yet).
    slots: str = ""
    # The cluster's latest online reshard (None: never resharded, an older node, or unreadable).
    reshard: ReshardProgress | None = None


@dataclass(frozen=True)
class PodInfo:
    """An engine pod as the operator manages it."""

    name: str
    shard: int
    index: int
    zone: str
    phase: str = "Pending"
    ready: bool = False
    deleting: bool = False
    spec_hash: str = ""
    role_label: str = ""
    ip: str = ""
    # From the node config annotation; "" on pods made before clusters had an identity.
    cluster_id: str = ""
    # Its node serves the control port over TLS (its config names a certificate): False on pods of
    # clusters without spec.tls, and on those an older operator made, until they are rolled.
    control_tls: bool = False
    # The Kubernetes node it was scheduled to ("" while Pending).
    node: str = ""
    # Wall-clock seconds: when the pod was created, and when its Ready condition last left True
    # (None while Ready).
    created: float = 0.0
    not_ready_since: float | None = None
    # The API's uid: tells a new pod from an old one of the same name (pod names are reused).
    uid: str = ""

    @property
    def finished(self) -> bool:
        """A pod that will never run again (evicted, or its containers exited for good)."""
        return self.phase in ("Failed", "Succeeded")

    def not_ready_for(self, now: float) -> float:
        """Seconds since the pod last stopped being Ready (0 while Ready)."""
        if self.ready:
            return 0.0
        return max(0.0, now - (self.not_ready_since if self.not_ready_since is not None else self.created))


@dataclass(frozen=True)
class JobInfo:
    """The provisioning Job or a reshard Job: the cluster id it works on, and how far it got."""

    name: str
    cluster_id: str
    owner_uid: str = ""
    succeeded: bool = False
    failed: bool = False
    deleting: bool = False
    # Why the Job gave up (its Failed condition), or why its last attempt failed (the container's
    # termination message) while it retries.
    error: str = ""
    # It failed in a way no retry can help (`engram provision` exit 2 or 3: bad arguments, a name
    # held by another cluster id, a restore that failed).
    permanent: bool = False
    # What the Job seeds the cluster from (spec.restoreFrom's source as the Job was built; {} for none).
    restore: dict[str, Any] = field(default_factory=dict)
    # The shard count the Job leaves the slot map with, and (a reshard Job) the one it started from;
    # 0 when not known.
    shards: int = 0
    from_shards: int = 0
    # Wall-clock seconds when the Job was created (0: not known).
    created: float = 0.0

    @property
    def active(self) -> bool:
        """Running or about to: neither finished nor being deleted."""
        return not (self.succeeded or self.failed or self.deleting)


@dataclass(frozen=True)
class SourceCluster:
    """The MemoryCluster a new cluster restores from (spec.restoreFrom.cluster), as last read."""

    name: str
    found: bool = False
    deleting: bool = False
    journal_replicas: int = 3
    cluster_id: str = ""
    # Its status.snapshots.allShardsSince: every shard has a verified snapshot ("" until then).
    snapshots_since: str = ""
    # Its spec.tls (None: an open journal). A locked journal is read with the source's own password
    # and CA, from the Secrets below (keys only: the operator never holds the password).
    tls: TlsSpec | None = None
    secrets: Mapping[str, SecretData] = field(default_factory=dict)


@dataclass(frozen=True)
class SecretData:
    """A Secret of the cluster's namespace as read: its values, or why it could not be read."""

    name: str
    found: bool = False
    # Decoded values by key; passwords among them, so never shown in a repr (logs, test output).
    data: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    # The uid of its controlling owner ("" for none).
    owner_uid: str = ""
    # An API error other than "not found" (the operator may not read it, say).
    error: str = ""


@dataclass(frozen=True)
class Observed:
    """Everything one reconcile decides from."""

    nodes: list[NodeInfo]
    pods: list[PodInfo]
    # (kind, name) of the non-pod children that exist.
    children: frozenset[tuple[str, str]] = frozenset()
    journal_ready: int = 0
    statuses: dict[str, EngineStatus] = field(default_factory=dict)
    # The id the journal carries (see identity.py); resolved before deciding, as it names the Job.
    cluster_id: str = ""
    provisioning: JobInfo | None = None
    # Read only while a Job restoring from another cluster is still to be created.
    restore_source: SourceCluster | None = None
    # The NAME-users Secret holding the users file (None: there is none), and the Secrets that
    # spec.users' passwordSecrets name, by name (one missing here was not found).
    users_secret: SecretData | None = None
    password_secrets: Mapping[str, SecretData] = field(default_factory=dict)
    # The NetworkPolicies the operator made for the cluster: name -> the spec hash they carry
    # (labels.SPEC_HASH). None when they could not be listed (``network_error`` says why): then
    # nothing is decided about them.
    network_policies: Mapping[str, str] | None = field(default_factory=dict)
    network_error: str = ""
    # spec.tls: the Secrets its pods mount, by name, as read (their keys only: the operator keeps no
    # private key in memory), and why the Certificates could not be listed ("" when they were, or
    # the cluster has none); the Certificates that exist are in ``children``.
    tls_secrets: Mapping[str, SecretData] = field(default_factory=dict)
    # The journal's generated credentials (NAME-journal-auth; None: there is none). Its passwords
    # are read because the operator renders them into the journal servers' config.
    journal_auth: SecretData | None = None
    # spec.region: the link's credentials Secret (spec.region.link.authSecretName; None: not read,
    # because the cluster is no region or its link has no user). Its password goes into the config.
    link_auth: SecretData | None = None
    certificate_error: str = ""
    # The cluster's reshard Jobs (any target), and status.resharding as last written ({}: none).
    reshard_jobs: list[JobInfo] = field(default_factory=list)
    resharding_record: Mapping[str, Any] = field(default_factory=dict)
    # Where each trailing replica's applied sequence last moved, by pod, as the last written status
    # remembers it (replica_progress.py): how long a replica has applied nothing spans reconciles.
    progress_marks: Mapping[str, ProgressMark] = field(default_factory=dict)
    # Wall-clock seconds when this was observed: the clock every grace period is measured with.
    now: float = 0.0

    def known_zones(self) -> list[str]:
        """Every zone a node is labelled with, healthy or not: the stable base of the plan."""
        return sorted({n.zone for n in self.nodes if n.zone})

    def healthy_zones(self) -> list[str]:
        """Zones where a new pod can be scheduled now (a Ready, schedulable node). A zone missing
        here gets no new pod, but its running pods stay unless it is lost (see lost_zones)."""
        return sorted({n.zone for n in self.nodes if n.zone and n.usable})

    def lost_zones(self) -> set[str]:
        """Zones whose pods are to be replaced elsewhere (availability.py says when)."""
        return availability.lost_zones(self.nodes, (p.zone for p in self.pods), self.now)

    def blinking_zones(self) -> set[str]:
        """Zones without a Ready node that are still within their grace: their pods are left alone."""
        return availability.blinking_zones(self.nodes, self.now)

    def node_of(self, pod: PodInfo) -> NodeInfo | None:
        return next((n for n in self.nodes if n.name == pod.node), None) if pod.node else None

    def pod_lost(self, pod: PodInfo) -> bool:
        """The pod's zone is lost, or the node it runs on is."""
        node = self.node_of(pod)
        return pod.zone in self.lost_zones() or (node is not None and node.lost(self.now))

    def pod_cordoned(self, pod: PodInfo) -> bool:
        """The pod runs on a Ready node that takes no new pods: a drain is likely coming."""
        node = self.node_of(pod)
        return node is not None and node.cordoned

    def unlabelled(self) -> bool:
        """True when no node carries the topology label at all (single-zone or dev clusters)."""
        return bool(self.nodes) and not any(n.zone for n in self.nodes)

    def role(self, pod: PodInfo) -> str:
        status = self.statuses.get(pod.name)
        return status.role if status else (pod.role_label or "starting")


def _timestamp(value: Any) -> float | None:
    """An API timestamp (RFC 3339 text, or a datetime from the client's models) as epoch seconds."""
    if isinstance(value, datetime):
        return value.timestamp() if value.tzinfo else value.replace(tzinfo=UTC).timestamp()
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _ready(conditions: Iterable[Mapping[str, Any]]) -> tuple[bool, float | None]:
    """Whether the Ready condition is True, and since when it is not (None while Ready or absent)."""
    cond = next((c for c in conditions if c.get("type") == "Ready"), None)
    if cond is None:
        return False, None
    if cond.get("status") == "True":
        return True, None
    return False, _timestamp(cond.get("lastTransitionTime"))


def node_from_api(node: Mapping[str, Any], topology_key: str) -> NodeInfo:
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    ready, since = _ready((node.get("status") or {}).get("conditions") or [])
    return NodeInfo(
        name=meta.get("name", ""),
        zone=(meta.get("labels") or {}).get(topology_key),
        ready=ready,
        schedulable=not spec.get("unschedulable", False),
        not_ready_since=since,
    )


def pod_from_api(pod: Mapping[str, Any]) -> PodInfo | None:
    """None for a pod that is not an engine pod of ours (missing slot labels)."""
    meta = pod.get("metadata") or {}
    pod_labels = meta.get("labels") or {}
    try:
        shard = int(pod_labels[labels.SHARD])
        index = int(pod_labels[labels.NODE_INDEX])
    except (KeyError, ValueError):
        return None
    status = pod.get("status") or {}
    ready, not_ready_since = _ready(status.get("conditions") or [])
    return PodInfo(
        name=meta.get("name", ""),
        shard=shard,
        index=index,
        zone=pod_labels.get(labels.ZONE, ""),
        phase=status.get("phase") or "Pending",
        ready=ready,
        deleting=bool(meta.get("deletionTimestamp")),
        spec_hash=(meta.get("annotations") or {}).get(labels.POD_SPEC_HASH, ""),
        role_label=pod_labels.get(labels.ROLE, ""),
        ip=status.get("podIP") or "",
        cluster_id=_node_config_cluster_id(meta.get("annotations") or {}),
        control_tls=_node_config_serves_tls(meta.get("annotations") or {}),
        node=(pod.get("spec") or {}).get("nodeName") or "",
        created=_timestamp(meta.get("creationTimestamp")) or 0.0,
        not_ready_since=not_ready_since,
        uid=str(meta.get("uid") or ""),
    )


def _node_config_cluster_id(annotations: Mapping[str, str]) -> str:
    try:
        config = json.loads(annotations.get(labels.NODE_CONFIG) or "{}")
    except ValueError:
        return ""
    return str(config.get("cluster_id") or "") if isinstance(config, dict) else ""


def _node_config_serves_tls(annotations: Mapping[str, str]) -> bool:
    try:
        config = json.loads(annotations.get(labels.NODE_CONFIG) or "{}")
    except ValueError:
        return False
    return isinstance(config, dict) and bool(config.get("tls_cert_file"))


# A termination message is up to 4 KiB of log; the condition shows its last lines.
ERROR_CHARS = 600
# `engram provision` exit codes after which retrying cannot help (2: bad arguments; 3: the name is
# held by another cluster id, or the restore failed). The Job's podFailurePolicy fails at once on them.
PERMANENT_EXIT_CODES = (2, 3)


def job_from_api(
    job: Mapping[str, Any],
    pods: Iterable[Mapping[str, Any]] = (),
    permanent_codes: Iterable[int] = PERMANENT_EXIT_CODES,
) -> JobInfo:
    """A Job the operator runs, with the last failed attempt's error read from its pods.

    ``permanent_codes``: the command's exit codes after which retrying cannot help.
    """
    meta = job.get("metadata") or {}
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    gave_up = conditions.get("Failed") or conditions.get("FailureTarget")
    error = ""
    if gave_up:
        error = ": ".join(x for x in (gave_up.get("reason") or "Failed", gave_up.get("message")) if x)
    mine = [p for p in pods if meta.get("uid") in _owner_uids(p)]
    attempt = _last_attempt_error(mine)
    owners = meta.get("ownerReferences") or []
    permanent = bool(gave_up) and (
        gave_up.get("reason") == "PodFailurePolicy" or bool(_exit_codes(mine) & set(permanent_codes))
    )
    annotations = meta.get("annotations") or {}
    try:
        restore = json.loads((meta.get("annotations") or {}).get(labels.RESTORE_FROM) or "{}")
    except ValueError:
        restore = {}
    return JobInfo(
        name=meta.get("name", ""),
        cluster_id=(meta.get("annotations") or {}).get(labels.CLUSTER_ID, ""),
        owner_uid=next((o.get("uid", "") for o in owners if o.get("controller")), ""),
        succeeded=int(status.get("succeeded") or 0) >= 1 or "Complete" in conditions,
        failed=bool(gave_up),
        deleting=bool(meta.get("deletionTimestamp")),
        error="; ".join(e for e in (error, attempt) if e),
        permanent=permanent,
        restore=restore if isinstance(restore, dict) else {},
        shards=_count(annotations.get(labels.SHARDS)) or _shards_flag(job),
        from_shards=_count(annotations.get(labels.FROM_SHARDS)),
        created=_timestamp(meta.get("creationTimestamp")) or 0.0,
    )


def _count(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _shards_flag(job: Mapping[str, Any]) -> int:
    """``--shards N`` of the Job's command: provisioning Jobs made before they carried labels.SHARDS."""
    containers = (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    for container in containers:
        command = list(container.get("command") or [])
        for flag, value in itertools.pairwise(command):
            if flag == "--shards":
                return _count(value)
    return 0


def source_from_api(name: str, obj: Mapping[str, Any] | None) -> SourceCluster:
    """The restore source MemoryCluster as read (None: it does not exist)."""
    if obj is None:
        return SourceCluster(name)
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    spec = obj.get("spec") or {}
    journal = spec.get("journal") or {}
    tls = spec.get("tls")
    return SourceCluster(
        name=name,
        found=True,
        deleting=bool(meta.get("deletionTimestamp")),
        journal_replicas=int(journal.get("replicas") or 3),
        cluster_id=str(status.get("clusterId") or ""),
        snapshots_since=str((status.get("snapshots") or {}).get("allShardsSince") or ""),
        tls=TlsSpec.from_dict(tls) if isinstance(tls, Mapping) else None,
    )


def policy_hashes(policies: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Each NetworkPolicy's name and the spec hash the operator wrote on it ("" for none)."""
    out = {}
    for policy in policies:
        meta = policy.get("metadata") or {}
        out[str(meta.get("name", ""))] = str((meta.get("annotations") or {}).get(labels.SPEC_HASH) or "")
    return out


def secret_from_api(name: str, obj: Mapping[str, Any] | None) -> SecretData:
    """A Secret as read (None: it does not exist); values decoded from the API's base64."""
    if obj is None:
        return SecretData(name)
    meta = obj.get("metadata") or {}
    data = {}
    for key, value in (obj.get("data") or {}).items():
        try:
            data[str(key)] = base64.b64decode(value or "", validate=True)
        except (ValueError, TypeError):
            continue  # the API server only stores valid base64: nothing to read here
    owners = meta.get("ownerReferences") or []
    return SecretData(
        name=name,
        found=True,
        data=data,
        owner_uid=next((o.get("uid", "") for o in owners if o.get("controller")), ""),
    )


def secret_keys_from_api(name: str, obj: Mapping[str, Any] | None) -> SecretData:
    """A Secret's presence and keys, its values left out (a TLS Secret holds a private key)."""
    if obj is None:
        return SecretData(name)
    return SecretData(name, found=True, data={str(k): b"" for k in obj.get("data") or {}})


def _owner_uids(obj: Mapping[str, Any]) -> set[str]:
    return {o.get("uid", "") for o in (obj.get("metadata") or {}).get("ownerReferences") or []}


def _exit_codes(pods: Iterable[Mapping[str, Any]]) -> set[int]:
    """Every non-zero exit code the pods' containers ended with."""
    codes = set()
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            for state in (container.get("state") or {}, container.get("lastState") or {}):
                code = (state.get("terminated") or {}).get("exitCode", 0)
                if code:
                    codes.add(int(code))
    return codes


def _last_attempt_error(pods: Iterable[Mapping[str, Any]]) -> str:
    """The newest non-zero exit's termination message among the Job's pods, trimmed to its tail."""
    found: list[tuple[str, str]] = []
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            for state in (container.get("state") or {}, container.get("lastState") or {}):
                ended = state.get("terminated") or {}
                if ended and ended.get("exitCode", 0) != 0:
                    text = (ended.get("message") or ended.get("reason") or "").strip()
                    found.append((str(ended.get("finishedAt") or ""), text))
    if not found:
        return ""
    text = max(found)[1]
    return text[-ERROR_CHARS:] if len(text) > ERROR_CHARS else text


def parse_engine_status(reply: Iterable[Any]) -> EngineStatus:
    """ENGRAM.STATUS replies a flat field/value array; values may arrive as bytes or ints."""
    fields = parse_status(list(reply))

    def num(key: str) -> int:
        try:
            return int(fields.get(key) or 0)
        except (TypeError, ValueError):
            return 0

    def optional(key: str) -> int | None:
        # "" while there is nothing to say (and absent from nodes older than the field).
        try:
            return int(fields[key])
        except (KeyError, TypeError, ValueError):
            return None

    return EngineStatus(
        role=str(fields.get("role") or "starting"),
        halted=str(fields.get("halted") or ""),
        epoch=num("epoch"),
        applied_seq=num("applied_seq"),
        committed_seq=num("committed_seq"),
        leader_id=str(fields.get("leader_id") or ""),
        snapshot_seq=num("snapshot_seq"),
        snapshot_age=optional("snapshot_age"),
        snapshot_failures=num("snapshot_failures"),
        snapshot_error=str(fields.get("snapshot_error") or ""),
        slots=str(fields.get("slots") or ""),
        reshard=parse_reshard(str(fields.get("reshard") or "")),
    )
