"""An online reshard as the engine nodes report it: ENGRAM.STATUS's ``reshard`` field, read defensively."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from engram.resharding.record import PHASES as RESHARD_PHASES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReshardProgress:
    """An online reshard as an engine node reports it (ENGRAM.STATUS ``reshard``: a JSON object).

    Every node reads it from the cluster metadata, so any node that answers tells the same plan;
    a node that has not caught up tells an older one (``updated`` says which is newer).
    """

    id: str
    from_shards: int
    to_shards: int
    phase: str
    slots_total: int = 0
    slots_moved: int = 0
    keys_moved: int = 0
    bytes_moved: int = 0
    started: float = 0.0
    updated: float = 0.0
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "failed")

    @property
    def drained(self) -> bool:
        """The shards beyond to_shards hold no slot any more: their pods may go."""
        return self.phase in ("drained", "removing", "done")


def parse_reshard(text: str) -> ReshardProgress | None:
    """ENGRAM.STATUS's ``reshard`` field: "" (none) or a JSON object; anything malformed is ignored,
    as a node that cannot say is no reason to stop reconciling."""
    if not text:
        return None
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        phase = str(data["phase"])
        progress = ReshardProgress(
            id=str(data.get("id") or ""),
            from_shards=_whole(data["from_shards"]),
            to_shards=_whole(data["to_shards"]),
            phase=phase,
            slots_total=_whole(data.get("slots_total")),
            slots_moved=_whole(data.get("slots_moved")),
            keys_moved=_whole(data.get("keys_moved")),
            bytes_moved=_whole(data.get("bytes_moved")),
            started=_seconds(data.get("started")),
            updated=_seconds(data.get("updated")),
            error=str(data.get("error") or ""),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        log.debug("ignoring an unreadable reshard report %r: %s", text[:200], err)
        return None
    if phase not in RESHARD_PHASES or progress.to_shards < 1:
        log.debug("ignoring a reshard report with phase %r and to_shards %d", phase, progress.to_shards)
        return None
    return progress


def _whole(value: Any) -> int:
    """A non-negative count from JSON; ``None`` is 0, anything else not a number raises ValueError."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{value!r} is not a count")
    return max(0, int(value))


def _seconds(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{value!r} is not a time")
    return float(value)
