"""Status conditions in the Kubernetes format, built in one place (kopf's merge patch replaces lists)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Every type is set on the first visit, even as Unknown, so `kubectl wait` and humans see them all.
CONDITION_TYPES = (
    "Ready",
    "Progressing",
    "Degraded",
    "JournalReady",
    "Provisioned",
    "ZoneSpreadSatisfied",
    "NodesHealthy",
    "SnapshotsHealthy",
    "UsersReady",
    "Resharding",
)
# A MultiRegionCluster's (multiregion_status.py).
MULTIREGION_CONDITION_TYPES = ("Linked", "RegionsReady", "Degraded")


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str  # one CamelCase word
    message: str = ""


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_conditions(
    previous: Sequence[Mapping[str, Any]] | None,
    current: Sequence[Condition],
    generation: int,
    now: str | None = None,
    types: Sequence[str] = CONDITION_TYPES,
) -> list[dict[str, Any]]:
    """The complete conditions list of ``types`` (a MemoryCluster's by default); lastTransitionTime
    only moves when a status flips."""
    now = now or now_iso()
    before = {c.get("type"): c for c in previous or []}
    given = {c.type: c for c in current}
    out = []
    for ctype in types:
        cond = given.get(ctype) or Condition(ctype, "Unknown", "Reconciling", "not evaluated yet")
        old = before.get(ctype)
        changed = old is None or old.get("status") != cond.status
        out.append(
            {
                "type": ctype,
                "status": cond.status,
                "reason": cond.reason,
                "message": cond.message,
                "lastTransitionTime": now if changed else old.get("lastTransitionTime", now),
                "observedGeneration": generation,
            }
        )
    return out
