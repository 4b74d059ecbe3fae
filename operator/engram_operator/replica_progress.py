"""Where each trailing replica's applied sequence stood when it last moved: the memory that telling a
stuck replica from a slow one needs across reconciles.

The operator keeps no state of its own, so the marks live in the MemoryCluster's status
(``status.shards[].replicaProgress``), written with every reconcile's status and read back from the
body by the next one. Not pod annotations: a mark changes whenever a replica applies something, and
the status is written on every reconcile anyway, where an annotation would cost one more API write
per replica per tick. A mark names its pod's uid, so a new pod under a reused name starts afresh.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class ProgressMark:
    """A replica behind its shard's commit: the applied sequence it was first seen at, and since
    when (wall-clock seconds, whole, so that they survive the status's RFC 3339 text unchanged)."""

    pod: str
    uid: str
    applied_seq: int
    since: float

    def as_status(self) -> dict[str, Any]:
        return {
            "pod": self.pod,
            "uid": self.uid,
            "appliedSeq": self.applied_seq,
            "since": datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def whole_seconds(now: float) -> float:
    """``now`` rounded up: a mark written and read back never says it began earlier than it did."""
    return float(math.ceil(now))


def _mark(entry: Mapping[str, Any]) -> ProgressMark | None:
    try:
        since = datetime.fromisoformat(str(entry["since"]).replace("Z", "+00:00"))
        return ProgressMark(
            pod=str(entry["pod"]),
            uid=str(entry.get("uid") or ""),
            applied_seq=int(entry["appliedSeq"]),
            since=since.timestamp() if since.tzinfo else since.replace(tzinfo=UTC).timestamp(),
        )
    except (KeyError, TypeError, ValueError):
        # Unreadable (edited by hand, say): no mark, so that replica's clock starts again.
        return None


def remembered_marks(status: Mapping[str, Any] | None) -> dict[str, ProgressMark]:
    """The marks the last written status holds, by pod name (none on a new cluster)."""
    entries: Iterable[Mapping[str, Any]] = (
        entry
        for shard in (status or {}).get("shards") or []
        for entry in (shard.get("replicaProgress") or [] if isinstance(shard, Mapping) else [])
        if isinstance(entry, Mapping)
    )
    return {mark.pod: mark for mark in map(_mark, entries) if mark is not None}
