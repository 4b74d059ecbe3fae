"""Rolling upgrade: the one next step, replicas first, then a switchover, then the old primary.

Every journal entry carries the engine version that wrote it, and a replica halts on entries of a
newer engine. So no node may be left applying a newer primary's entries on the old version: replicas
are replaced first, one at a time, then each shard is handed to an up-to-date replica, and only
then is its old primary (a replica by now) replaced. Both platforms ask this module what to do next
and carry it out: `engram local upgrade` with processes, the operator with pods (docs/operator.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engram.orchestration.successor import caught_up_rank

PRIMARY = "primary"
REPLICA = "replica"


@dataclass(frozen=True)
class UpgradeNode:
    """One node as the platform sees it now, and whether it already runs the target."""

    id: str
    shard: int
    index: int
    # What the node says it is; a platform may fill in its last known role when it did not answer.
    role: str
    # Answers and serves its role (a Ready pod; a local node that answers and is not halted).
    ready: bool
    up_to_date: bool
    # The role above came from the node itself this time, not from what the platform remembers.
    answering: bool = True
    zone: str = ""
    halted: bool = False
    applied_seq: int = 0
    # Unusable for longer than the platform waits: waiting for it would hold the upgrade up forever.
    stuck: bool = False
    # Keeps its place in the layout (False: about to be removed, so never a switchover target).
    staying: bool = True
    # On a lost node or zone; on a cordoned node (a drain is likely coming).
    lost: bool = False
    cordoned: bool = False

    @property
    def answers_as_primary(self) -> bool:
        return self.answering and self.role == PRIMARY


@dataclass(frozen=True)
class Replace:
    """Replace ``node`` with one on the target; ``why`` is "replica", "stuck" or "no-replica"."""

    node: str
    shard: int
    why: str


@dataclass(frozen=True)
class Switch:
    """Hand ``shard`` from ``primary`` (still on the old version) to ``target`` (up to date)."""

    shard: int
    primary: str
    target: str


@dataclass(frozen=True)
class Wait:
    """Nothing to do until something changes; ``why`` is "resharding", "not-ready" or "no-target"."""

    why: str
    nodes: tuple[str, ...] = ()
    shard: int | None = None


@dataclass(frozen=True)
class Done:
    """Every node runs the target."""


Step = Replace | Switch | Wait | Done


def _order(node: UpgradeNode) -> tuple[int, int]:
    return (node.shard, node.index)


def next_step(nodes: Sequence[UpgradeNode], replicas_per_shard: int, resharding: bool = False) -> Step:
    """The one step the upgrade takes next; the caller carries it out, waits for the cluster to settle
    and asks again. replicas_per_shard: the layout's (0: a shard's primary is replaced in place)."""
    outdated = [n for n in nodes if not n.up_to_date]
    if not outdated:
        return Done()
    if resharding:
        # A replaced node or a moved primary would fail the reshard's MIGRATEs.
        return Wait("resharding")
    # An outdated node that has been unusable for long is replaced at once: it serves nothing and may
    # never recover (an old primary halts on the new primary's entries). Never one that still leads.
    stuck = [n for n in outdated if n.stuck and not n.answers_as_primary]
    if stuck:
        node = min(stuck, key=_order)
        return Replace(node.id, node.shard, "stuck")
    not_ready = tuple(sorted(n.id for n in nodes if not n.ready))
    if not_ready:
        return Wait("not-ready", not_ready)
    replicas = [n for n in outdated if n.role != PRIMARY]
    if replicas:
        node = min(replicas, key=_order)
        return Replace(node.id, node.shard, "replica")
    primary = min(outdated, key=_order)
    target = switchover_target(nodes, primary.shard, primary.id, up_to_date_only=True)
    if target is not None:
        return Switch(primary.shard, primary.id, target)
    if replicas_per_shard == 0:
        return Replace(primary.id, primary.shard, "no-replica")
    return Wait("no-target", (primary.id,), primary.shard)


def switchover_target(nodes: Sequence[UpgradeNode], shard: int, exclude: str, *,
                      up_to_date_only: bool = False, allow_cordoned: bool = True) -> str | None:
    """The most caught-up ready replica of the shard that stays, or None.

    Never a halted one, one on a lost node, or ``exclude``; with up_to_date_only only those on the
    target; one on a cordoned node only as a last resort, when allowed. Ranked by successor.caught_up_rank.
    """
    ranked = []
    for node in nodes:
        if node.shard != shard or node.id == exclude or not node.ready or not node.staying:
            continue
        if node.role != REPLICA or node.halted or node.lost:
            continue
        if (up_to_date_only and not node.up_to_date) or (node.cordoned and not allow_cordoned):
            continue
        ranked.append(caught_up_rank(node.applied_seq, node.id, last_resort=node.cordoned))
    return min(ranked)[2] if ranked else None
