"""Snapshot decisions without I/O: when one is due, who takes it, what truncation and recovery may use."""

from __future__ import annotations

import json

import pytest

from engram.cluster.topology import NodeRecord
from engram.snapshots.cycle import truncation_point
from engram.snapshots.record import Position, SnapshotCorrupt, SnapshotRecord
from engram.snapshots.restore import recovery_candidates
from engram.snapshots.schedule import SnapshotPolicy, snapshot_due, snapshot_taker


def _record(seq: int, verified: bool = True, created_at: float = 1000.0, cluster_id: str = "c1",
            shard: int = 0, engine: str = "0.1.0") -> SnapshotRecord:
    return SnapshotRecord(cluster_id, shard, Position(seq, 7, 2, 3, "n0", "h:1"), "d" * 40, "s" * 64, 10, 5,
                          engine, "9.1.2", created_at, verified)


def test_a_snapshot_is_due_past_the_tail_threshold_or_the_interval_and_never_for_nothing() -> None:
    policy = SnapshotPolicy(interval=60, tail_entries=100)
    assert snapshot_due(policy, None, 1, now=10_000, since=0) == ""  # only the genesis entry
    assert snapshot_due(policy, _record(500), 500, now=10_000, since=0) == ""  # nothing since
    assert "threshold" in snapshot_due(policy, _record(500), 600, now=1001, since=0)
    assert snapshot_due(policy, _record(500), 599, now=1059, since=0) == ""
    assert "every 60s" in snapshot_due(policy, _record(500), 501 + 1, now=1060, since=0)
    # Without a snapshot yet the schedule counts from the node's start.
    assert snapshot_due(policy, None, 50, now=100, since=50) == ""
    assert "every 60s" in snapshot_due(policy, None, 50, now=110, since=50)
    assert snapshot_due(SnapshotPolicy(interval=0, tail_entries=0), None, 10**6, now=10**9, since=0) == ""


def test_a_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="negative"):
        SnapshotPolicy(interval=-1)
    with pytest.raises(ValueError, match="keep"):
        SnapshotPolicy(keep=0)


def test_the_taker_is_the_live_replica_with_the_lowest_id_never_the_primary() -> None:
    nodes = [NodeRecord("n0", 0, "a", "h:1", "primary"), NodeRecord("n2", 0, "c", "h:3", "replica"),
             NodeRecord("n1", 0, "b", "h:2", "replica"), NodeRecord("m0", 1, "a", "h:4", "replica")]
    assert snapshot_taker(0, nodes, "n0") == "n1"
    # A record still saying replica for the node the leader record names is the primary.
    assert snapshot_taker(0, nodes, "n1") == "n2"
    assert snapshot_taker(0, nodes[:1], "n0") == ""


def test_truncation_keeps_every_kept_snapshot_recoverable_and_waits_for_a_verified_one() -> None:
    assert truncation_point([_record(900, verified=False)], keep=2) is None
    records = [_record(900), _record(700, verified=False), _record(500), _record(300)]
    assert truncation_point(records, keep=2) == 501
    assert truncation_point(records, keep=1) == 901


def test_recovery_uses_the_newest_usable_snapshot_with_its_tail_still_in_the_journal() -> None:
    records = [_record(900, verified=False), _record(800, engine="9.0.0"), _record(700, cluster_id="other"),
               _record(600), _record(400), _record(200)]
    assert [r.seq for r in recovery_candidates(records, "c1", 0, first_seq=401)] == [600, 400]
    assert recovery_candidates(records, "c1", 1, first_seq=1) == []


def test_a_record_a_newer_engine_wrote_is_read_and_refused_by_its_version_not_skipped() -> None:
    newer = json.loads(_record(9).encode())
    newer["engine_version"] = "99.0.0"
    newer["compression"] = "zstd"  # fields this engine does not know
    newer["position"]["region_clock"] = 5
    record = SnapshotRecord.decode(json.dumps(newer))
    assert record.seq == 9 and record.position == _record(9).position
    assert "newer than this node's" in record.usable_by("c1", 0)
    with pytest.raises(SnapshotCorrupt):
        SnapshotRecord.decode(json.dumps({k: v for k, v in newer.items() if k != "digest"}))
