"""Who takes a stopping primary's shard: the most caught-up live replica of that shard."""

from __future__ import annotations

from engram.orchestration.successor import successors


def status(shard: int, role: str, applied: int, halted: str = "") -> dict[str, str]:
    return {"shard": str(shard), "role": role, "applied_seq": str(applied), "halted": halted}


def test_the_most_caught_up_replica_of_the_shard_comes_first() -> None:
    statuses = {
        "c-s0-n0": status(0, "primary", 90),
        "c-s0-n1": status(0, "replica", 80),
        "c-s0-n2": status(0, "replica", 88),
        "c-s1-n0": status(1, "replica", 500),
    }
    assert successors("c-s0-n0", 0, statuses) == ["c-s0-n2", "c-s0-n1"]


def test_halted_starting_and_other_shards_nodes_never_take_over() -> None:
    statuses = {
        "a": status(0, "replica", 99, halted="checksum mismatch at entry 7"),
        "b": status(0, "starting", 0),
        "c": status(1, "replica", 99),
        "d": {"shard": "0", "role": "replica", "applied_seq": "soon"},
    }
    assert successors("me", 0, statuses) == []


def test_ties_go_to_the_lower_node_id() -> None:
    statuses = {"n2": status(0, "replica", 5), "n1": status(0, "replica", 5)}
    assert successors("n0", 0, statuses) == ["n1", "n2"]
