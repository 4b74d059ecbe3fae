"""The cluster id: decided once, before any pod exists, and never changed (engine nodes halt on a mismatch).

Where it comes from, first match wins:
1. ``status.clusterId``, the operator's record;
2. the engine pods' node config, for clusters created before the id was recorded (operator upgrade);
3. a new id derived from the MemoryCluster's uid.

Why the uid rather than a random id: reconciles can decide from a stale body (a kopf timer running
while a change handler's status patch is in flight, or a patch lost when the operator dies after
creating the Job). A random id would then be decided twice and the second one halts every node;
the uid is unique, fixed when the object is created, and gives every reconcile the same answer.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from engram_operator.observe import PodInfo


def recorded_cluster_id(status: Mapping[str, Any] | None, pods: Iterable[PodInfo]) -> str:
    """The id already in use: the status record, else the one most engine pods carry, else ""."""
    recorded = str((status or {}).get("clusterId") or "")
    if recorded:
        return recorded
    carried = Counter(p.cluster_id for p in pods if p.cluster_id)
    if not carried:
        return ""
    # Pods of one cluster all carry the same id; should they not, the majority is the journal's.
    return min(carried.items(), key=lambda item: (-item[1], item[0]))[0]


def new_cluster_id(uid: str) -> str:
    """The id of a cluster that has none yet: its uid as 32 hex digits (random only without a uid)."""
    try:
        return uuid.UUID(uid).hex
    except ValueError:
        return uuid.uuid4().hex


def cluster_id(status: Mapping[str, Any] | None, pods: Iterable[PodInfo], uid: str) -> str:
    """The cluster's id for this reconcile (see the module docstring for the order)."""
    return recorded_cluster_id(status, pods) or new_cluster_id(uid)
