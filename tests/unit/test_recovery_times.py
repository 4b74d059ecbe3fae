"""How a chaos report measures recovery: per shard, since other shards keep serving through a fault."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from engram.chaos.faults import Fault, FaultKind, LocalFaults
from engram.chaos.history import History, Kind, Operation, Outcome
from engram.chaos.report import recovery_by_kind, recovery_times, write_pauses
from engram.cluster.topology import TopologyError

SECOND = 1_000_000_000


def _history(*writes: tuple[str, float, str]) -> History:
    """Writes as (key, seconds invoked, outcome), each answered 0.01s after its invocation."""
    history = History()
    for key, at, outcome in writes:
        invoke = int(at * SECOND)
        history.record(Operation(0, key, Kind.WRITE, "v", invoke, invoke + SECOND // 100, Outcome(outcome)))
    return history


def _shard_of(key: str) -> int:
    return int(key.split(":")[0])


def _fault(kind: FaultKind, at: float, shard: int | None) -> Fault:
    return Fault(kind, "victim", int(at * SECOND), int(at * SECOND), shard=shard)


def test_a_node_fault_recovers_when_its_own_shard_acknowledges_again() -> None:
    # Shard 0 keeps acknowledging right through the fault; shard 1 only 2 s later.
    history = _history(("0:a", 10.1, "ok"), ("1:a", 10.2, "fail"), ("1:b", 12.0, "ok"))
    fault = _fault(FaultKind.KILL_PRIMARY, 10.0, shard=1)
    recovery_times([fault], history, {0}, _shard_of)
    assert fault.recovered_after is not None
    assert abs(fault.recovered_after - 2.01) < 1e-6


def test_a_cluster_wide_fault_recovers_when_the_slowest_shard_does() -> None:
    history = _history(("0:a", 5.5, "ok"), ("1:a", 8.0, "ok"), ("2:a", 6.0, "ok"))
    fault = _fault(FaultKind.KILL_JOURNAL, 5.0, shard=None)
    recovery_times([fault], history, {0}, _shard_of)
    assert fault.recovered_after is not None
    assert abs(fault.recovered_after - 3.01) < 1e-6


def test_a_shard_that_never_acknowledges_again_never_recovered() -> None:
    history = _history(("0:a", 5.5, "ok"), ("1:a", 4.0, "ok"), ("1:b", 6.0, "unknown"))
    for shard in (1, None):
        fault = _fault(FaultKind.PAUSE_PRIMARY, 5.0, shard=shard)
        recovery_times([fault], history, {0}, _shard_of)
        assert fault.recovered_after is None


def test_without_a_slot_map_the_first_acknowledged_write_counts() -> None:
    history = _history(("0:a", 3.0, "ok"), ("1:a", 1.5, "ok"))
    fault = _fault(FaultKind.KILL_PRIMARY, 1.0, shard=1)
    recovery_times([fault], history, {0})
    assert fault.recovered_after is not None
    assert abs(fault.recovered_after - 0.51) < 1e-6


def test_writes_of_other_processes_are_not_counted() -> None:
    history = _history(("0:a", 2.0, "ok"))
    history.record(Operation("reader", "0:b", Kind.WRITE, "v", SECOND, SECOND + 1, Outcome.OK))
    fault = _fault(FaultKind.KILL_PRIMARY, 0.5, shard=0)
    recovery_times([fault], history, {0}, _shard_of)
    assert fault.recovered_after is not None
    assert abs(fault.recovered_after - 1.51) < 1e-6


def test_the_slot_map_is_read_from_the_nodes_status() -> None:
    doc = {"nodes": [
        {"shard": 0, "slots": "0-5460"}, {"shard": 0, "slots": ""},
        {"shard": 1, "slots": "5461-10922"},
        {"shard": 2, "slots": ""}, {"shard": 2, "slots": "10923-16382,16383"},
    ]}
    faults = LocalFaults(Path("/nonexistent"), "demo", 2.0, random.Random(0))
    slots = faults.slot_map(doc)
    assert [slots.owner(s) for s in (0, 5460, 5461, 10922, 10923, 16383)] == [0, 0, 1, 1, 2, 2]


def test_a_status_missing_a_shards_slots_is_refused() -> None:
    doc = {"nodes": [{"shard": 0, "slots": "0-8191"}, {"shard": 1, "slots": ""}]}
    faults = LocalFaults(Path("/nonexistent"), "demo", 2.0, random.Random(0))
    with pytest.raises(TopologyError, match="not assigned"):
        faults.slot_map(doc)


def test_recovery_by_kind_gives_nearest_rank_quantiles_and_counts_faults_never_recovered() -> None:
    def fault(kind: FaultKind, after: float | None) -> Fault:
        return Fault(kind, "x", 0, 0, recovered_after=after)

    kills = [fault(FaultKind.KILL_PRIMARY, t) for t in (1.0, 3.0, 2.0, 4.0)]
    stats = recovery_by_kind([*kills, fault(FaultKind.KILL_JOURNAL, None)])
    assert stats["kill-primary"] == {"faults": 4, "never": 0, "p50": 2.0, "p99": 4.0, "max": 4.0}
    assert stats["kill-journal"] == {"faults": 1, "never": 1, "p50": None, "p99": None, "max": None}


def test_a_pause_that_starts_after_the_fault_is_measured_to_the_next_fault() -> None:
    # A planned hand-over: shard 1 keeps acknowledging for 0.5 s after SIGTERM, then pauses 0.8 s.
    history = _history(("1:a", 10.1, "ok"), ("1:b", 10.5, "ok"), ("1:c", 11.3, "ok"), ("1:d", 11.5, "ok"),
                       ("0:a", 10.9, "ok"), ("1:e", 30.0, "ok"))
    term = _fault(FaultKind.TERM_PRIMARY, 10.0, shard=1)
    later = _fault(FaultKind.KILL_REPLICA, 12.0, shard=1)
    write_pauses([later, term], history, {0}, _shard_of)
    assert term.paused_for is not None and abs(term.paused_for - 0.8) < 1e-6
    # From the second fault nothing was acknowledged on shard 1 until 30 s: the run's last answer.
    assert later.paused_for is not None and abs(later.paused_for - 18.01) < 1e-6


def test_a_cluster_wide_fault_pauses_as_long_as_its_worst_shard() -> None:
    history = _history(("0:a", 5.2, "ok"), ("0:b", 5.4, "ok"), ("1:a", 7.0, "ok"), ("1:b", 7.1, "ok"))
    fault = _fault(FaultKind.TERM_JOURNAL, 5.0, shard=None)
    write_pauses([fault], history, {0}, _shard_of)
    assert fault.paused_for is not None and abs(fault.paused_for - 2.01) < 1e-6


def test_the_shards_earliest_acknowledgement_counts_not_the_first_write_sent() -> None:
    # One client's write sent at 10.1 s was retried until 16 s; another's, sent at 12 s, was
    # acknowledged at 12.01 s: the shard took writes again 2.01 s after the fault.
    history = _history(("1:b", 12.0, "ok"))
    history.record(Operation(0, "1:a", Kind.WRITE, "v", int(10.1 * SECOND), 16 * SECOND, Outcome.OK))
    fault = _fault(FaultKind.KILL_PRIMARY, 10.0, shard=1)
    recovery_times([fault], history, {0}, _shard_of)
    assert fault.recovered_after is not None
    assert abs(fault.recovered_after - 2.01) < 1e-6
