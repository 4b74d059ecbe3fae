"""What a snapshot is: the RDB of a shard at a journal position, and what that position carries."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from engram import ENGINE_VERSION
from engram.journal.entries import format_version, parse_version
from engram.records import known_fields


class SnapshotError(RuntimeError):
    """A snapshot could not be taken, stored, verified or used."""


class SnapshotCorrupt(SnapshotError):
    """A snapshot's bytes or record do not match what was recorded when it was taken."""


@dataclass(frozen=True)
class Position:
    """Where a replica stands once entry `seq` is applied: all it needs to apply `seq + 1` on.

    The term chain (epoch, term_next) and the running checksum travel with the data, so a node
    restored from a snapshot skips a deposed leader's leftovers and checks checksums exactly as a
    node that replayed the journal from its genesis entry.
    """

    seq: int
    checksum: int
    epoch: int
    term_next: int
    leader_id: str = ""
    leader_address: str = ""


@dataclass(frozen=True)
class SnapshotRecord:
    """One snapshot of one shard; `verified` once a rehearsal restore reproduced `digest`."""

    cluster_id: str
    shard: int
    position: Position
    digest: str  # Valkey's DEBUG DIGEST of the data at position.seq
    sha256: str  # of the RDB file
    size: int
    keys: int
    engine_version: str
    valkey_version: str
    created_at: float
    verified: bool = False

    @property
    def seq(self) -> int:
        return self.position.seq

    @property
    def object_name(self) -> str:
        # Zero-padded so that names sort by sequence.
        return f"shard-{self.shard}/{self.seq:020d}.rdb"

    def as_verified(self) -> SnapshotRecord:
        return replace(self, verified=True)

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, text: str | bytes) -> SnapshotRecord:
        try:
            raw = json.loads(text)
            # A newer engine's snapshot is refused by version (usable_by) with that reason, not
            # skipped as unreadable.
            position = Position(**known_fields(Position, raw.pop("position")))
            return cls(position=position, **known_fields(cls, raw))
        except (TypeError, ValueError, KeyError) as exc:
            raise SnapshotCorrupt(f"unreadable snapshot record: {exc}") from None

    def usable_by(self, cluster_id: str, shard: int) -> str:
        """Why this node may not load the snapshot ("" when it may)."""
        if self.cluster_id != cluster_id or self.shard != shard:
            return (f"snapshot {self.object_name} belongs to cluster id {self.cluster_id!r} shard "
                    f"{self.shard}, not to cluster id {cluster_id!r} shard {shard}")
        if not self.verified:
            return f"snapshot {self.object_name} has not passed its rehearsal restore"
        if parse_version(self.engine_version) > ENGINE_VERSION:
            return (f"snapshot {self.object_name} was taken by engine {self.engine_version}, newer than "
                    f"this node's {format_version(ENGINE_VERSION)}")
        return ""
