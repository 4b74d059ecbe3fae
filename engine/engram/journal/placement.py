"""Where a shard's stream leader should be: out of its primary's zone (docs/failover.md).

When the stream leader and the primary share a zone, losing that zone costs an engine failover and
a journal election one after the other; apart, a zone loss costs only one of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class StreamPeer:
    """One server holding a copy of the stream, as the stream's leader reports it."""

    name: str
    leader: bool = False
    current: bool = True
    offline: bool = False


def leader_move(shard: int, primary_zone: str, peers: list[StreamPeer],
                zones: Mapping[str, str]) -> str | None:
    """The zone to move the shard's stream leader to, or None to leave it where it is.

    ``zones`` maps journal server names to their zone tags; a server it does not name is treated as
    unknown and never chosen. Only current, online followers outside the primary's zone qualify;
    shards rotate over them so that their stream leaders spread over the zones left.
    """
    # Zone tags are lower-case (journal/servers.py); zone names from node labels may not be.
    home = primary_zone.lower()
    leader = next((p for p in peers if p.leader), None)
    if leader is None or not home or zones.get(leader.name, "").lower() != home:
        return None
    candidates = sorted({zones[p.name] for p in peers
                         if not p.leader and p.current and not p.offline
                         and p.name in zones and zones[p.name].lower() != home})
    if not candidates:
        return None
    return candidates[shard % len(candidates)]
