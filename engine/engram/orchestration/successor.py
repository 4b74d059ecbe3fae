"""Who takes a shard over in a planned switchover: its most caught-up healthy replica
(docs/upgrades.md, "The switchover target"). Rolling upgrades, replica removal, rebalancing,
`engram local failover` and a primary's hand-over on SIGTERM all rank replicas by this one key;
each decides only which replicas may be chosen at all."""

from __future__ import annotations

from collections.abc import Mapping


def caught_up_rank(applied_seq: int, node_id: str, last_resort: bool = False) -> tuple[bool, int, str]:
    """Sort key, best first: last resorts (a replica on a cordoned node) after every other replica,
    then the most entries applied, then the node id, so that every caller breaks ties alike."""
    return (last_resort, -applied_seq, node_id)


def successors(node_id: str, shard: int, statuses: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Replicas that may take the shard over from node_id, best first, from the ENGRAM.STATUS fields
    of each answering node (by id): replicas of the shard, not halted."""
    ranked = []
    for other, fields in statuses.items():
        if other == node_id or fields.get("shard") != str(shard):
            continue
        if fields.get("role") != "replica" or fields.get("halted"):
            continue
        try:
            applied = int(fields.get("applied_seq") or 0)
        except ValueError:
            continue
        ranked.append(caught_up_rank(applied, other))
    return [other for _, _, other in sorted(ranked)]
