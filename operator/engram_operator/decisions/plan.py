"""What one reconcile decides to do: the Plan, and the events, problems, halted and lagging nodes
and switchovers it carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engram_operator.conditions import Condition
from engram_operator.replica_progress import ProgressMark


@dataclass(frozen=True)
class Problem:
    """Why the spec cannot be (fully) satisfied: a condition reason and a human message."""

    reason: str
    message: str


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str
    # A state that lasts (a wait, a halted node kept for now) rather than an action taken: posted
    # when it first appears, not again on every reconcile that still sees it (announce.py).
    standing: bool = False


@dataclass(frozen=True)
class Halted:
    """An engine node that stopped applying the journal (ENGRAM.STATUS ``halted``), and why."""

    pod: str
    shard: int
    reason: str


@dataclass(frozen=True)
class Lagging:
    """A replica far behind its shard's commit, or stuck: it has applied nothing for a sustained
    time while its shard committed beyond it (decisions/lag.py says how far and how long)."""

    pod: str
    shard: int
    lag: int
    applied_seq: int
    stuck: bool = False
    # Seconds since its applied sequence last moved while it trailed (0 when not known).
    idle_for: float = 0.0


@dataclass(frozen=True)
class Switchover:
    """Ask a shard's primary (``pod``) to hand leadership to ``target`` (an engine node id)."""

    pod: str
    target: str


@dataclass
class Plan:
    """What one reconcile does. Empty lists mean nothing changes."""

    create: list[dict[str, Any]] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    delete_jobs: list[str] = field(default_factory=list)
    switchovers: list[Switchover] = field(default_factory=list)
    role_labels: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    degraded: Problem | None = None
    spread: Problem | None = None
    rolling: bool = False
    provisioned: Condition | None = None
    halted: list[Halted] = field(default_factory=list)
    lagging: list[Lagging] = field(default_factory=list)
    # The progress marks to remember for the next reconcile (status.shards[].replicaProgress).
    progress: dict[str, ProgressMark] = field(default_factory=dict)
    # Pods deleted to be replaced, and why (the replacements metric's reason label): finished, lost,
    # halted, stuck. Scale-downs and rolling updates are not replacements.
    replacements: dict[str, str] = field(default_factory=dict)
    # What the provisioning Job that succeeded seeded the cluster from (status.restoredFrom).
    restored_from: dict[str, Any] | None = None
    # The NAME-users Secret to write (create or replace) when the users file changes, and the
    # UsersReady condition (decisions/users.py). Not a change in the sense of ``changes``: it
    # touches no pod, and the kubelet carries it to the nodes.
    users_secret: dict[str, Any] | None = None
    users: Condition | None = None
    # NetworkPolicies to rewrite (their spec changed) and to delete (spec.network.policies turned
    # off), by name; new ones go to ``create`` with the other children. Neither touches a pod.
    update_policies: list[dict[str, Any]] = field(default_factory=list)
    delete_policies: list[str] = field(default_factory=list)
    # spec.tls: make the NAME-journal-auth Secret with new random passwords (execute generates them,
    # so that this stays a pure decision); the journal is configured from it on a later reconcile.
    create_journal_auth: bool = False
    # Online resharding (decisions/resharding.py): status.resharding to write (None: keep the last
    # one), the Resharding condition, and whether a reshard Job runs, which holds back rolling
    # updates, rebalancing and switchovers.
    resharding: dict[str, Any] | None = None
    resharding_condition: Condition | None = None
    resharding_active: bool = False

    @property
    def changes(self) -> bool:
        """Whether anything running or existing is touched (labels excluded)."""
        return bool(self.create or self.delete_pods or self.delete_jobs or self.switchovers)
