"""The reshard in progress, as the cluster metadata keeps it (key `reshard`): its plan and progress.

Every node shows it in ENGRAM.STATUS (field `reshard`), which is how the operator and
`engram local status` follow a reshard run elsewhere (docs/scaling.md).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field

from engram.records import known_fields

ADDING = "adding"
WAITING = "waiting"
MOVING = "moving"
DRAINED = "drained"
REMOVING = "removing"
DONE = "done"
FAILED = "failed"
PHASES = (ADDING, WAITING, MOVING, DRAINED, REMOVING, DONE, FAILED)


@dataclass
class ReshardRecord:
    """One change of the shard count, from its start to its end."""

    from_shards: int
    to_shards: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    phase: str = ADDING
    slots_total: int = 0
    slots_moved: int = 0
    keys_moved: int = 0
    bytes_moved: int = 0
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.phase in (DONE, FAILED)

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the rate slots moved so far; None before the first slot moved."""
        now = time.time() if now is None else now
        if self.phase != MOVING or not self.slots_moved or self.slots_moved >= self.slots_total:
            return 0.0 if self.phase in (DRAINED, REMOVING, DONE) else None
        rate = self.slots_moved / max(now - self.started, 1e-3)
        return (self.slots_total - self.slots_moved) / rate

    def summary(self) -> str:
        """One line for a progress display."""
        eta = self.eta()
        tail = f", about {eta:.0f}s left" if eta else ""
        return (f"{self.from_shards} -> {self.to_shards} shards: {self.phase}, slots {self.slots_moved}/"
                f"{self.slots_total}, {self.keys_moved} keys ({self.bytes_moved / 1e6:.1f} MB) moved{tail}")

    def dumps(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def loads(cls, data: bytes | str) -> ReshardRecord:
        record = cls(**known_fields(cls, json.loads(data)))
        if record.phase not in PHASES:
            raise ValueError(f"unknown reshard phase {record.phase!r}")
        return record


def format_duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m: how progress displays show an ETA."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
