"""The pure parts of `engram chaos --regions`: the seeded fault schedule, the ledgers, the
convergence / last-writer-wins / counter / TTL checks on hand-made readings, the drain decision,
the workload's keys from a cluster's patterns, and the options refused with --regions."""

from __future__ import annotations

import argparse
import itertools

import pytest

from engram.chaos.cli import add_parser
from engram.chaos.client import Answer
from engram.chaos.faults import HOLD_SHARE, MIN_FAULT_INTERVAL
from engram.chaos.history import Outcome as Said
from engram.chaos.region_check import RegionReading, check, possible_sums
from engram.chaos.region_drain import DrainTracker
from engram.chaos.region_faults import (
    ALL_REGION_KINDS,
    FREEZE_SECONDS,
    RegionFaultKind,
    plan_region_faults,
)
from engram.chaos.region_report import RegionChaosReport
from engram.chaos.region_runner import key_for, workload_keys
from engram.chaos.region_workload import PRESENT, Ledger, RegionKeys, failure
from engram.chaos.sweep import summarise, summary_line

REGIONS = ("east", "west")
KEYS = RegionKeys(REGIONS, own_keys=2, strings=("shared:s0",), fields=("f0",), members=("m0",))
TTL_ITEM = ("string", "session:chaos", "")
NOW = 1_800_000_000.0  # a wall-clock second for the TTL windows


# ---- the schedule ----------------------------------------------------------------------------------


def test_the_schedule_is_seeded_never_overlaps_and_ends_before_the_cooldown() -> None:
    plan = plan_region_faults(7, 120.0, ("east", "west", "south"), ALL_REGION_KINDS, 8.0, shards=2)
    assert plan == plan_region_faults(7, 120.0, ("east", "west", "south"), ALL_REGION_KINDS, 8.0, shards=2)
    assert plan != plan_region_faults(8, 120.0, ("east", "west", "south"), ALL_REGION_KINDS, 8.0, shards=2)
    assert [p.at for p in plan] == [4.0 + 8 * i for i in range(len(plan))]
    for planned, following in itertools.pairwise(plan):
        assert planned.until < following.at, f"{planned} overlaps {following}"
    assert plan[-1].until <= 120.0 - 8.0
    assert {p.region for p in plan} == {"east", "west", "south"} and {p.shard for p in plan} == {0, 1}
    # Kinds come in shuffled rounds: every kind once in each round of three.
    for start in range(0, len(plan) - 2, 3):
        assert {p.kind for p in plan[start:start + 3]} == set(ALL_REGION_KINDS)


def test_a_freeze_is_held_a_few_seconds_or_shortened_to_fit_its_interval() -> None:
    for interval, hold in ((12.0, FREEZE_SECONDS), (4.0, 4.0 * HOLD_SHARE)):
        plan = plan_region_faults(1, 60.0, REGIONS, (RegionFaultKind.FREEZE_REGION,), interval)
        assert plan and all(p.hold == hold for p in plan)
    kills = plan_region_faults(1, 60.0, REGIONS, (RegionFaultKind.KILL_PRIMARY,), 6.0)
    assert all(p.hold == 0 for p in kills)
    # At 28 s with an 8 s cooldown a freeze at 16 s would end at 20.5 s, past 20 s: not planned.
    freezes = plan_region_faults(1, 28.0, REGIONS, (RegionFaultKind.FREEZE_REGION,), 6.0)
    assert [p.at for p in freezes] == [4.0, 10.0]
    # Where a freeze no longer fits, a kill still does: it is taken instead of ending the plan.
    for seed in range(1, 6):
        late = plan_region_faults(seed, 14.0, REGIONS, ALL_REGION_KINDS, 4.0)
        assert len(late) == 1 and late[0].kind is not RegionFaultKind.FREEZE_REGION, late
    with pytest.raises(ValueError, match="at least"):
        plan_region_faults(1, 60.0, REGIONS, ALL_REGION_KINDS, MIN_FAULT_INTERVAL - 0.1)


# ---- ledgers and readings ------------------------------------------------------------------------


def _ledgers() -> dict[str, Ledger]:
    """East and west each acknowledged their own keys, the shared items, increments and a TTL write."""
    east, west = Ledger(), Ledger()
    east.ok(("string", "east:k0", ""), "3")
    east.ok(("string", "east:k1", ""), "4")
    west.ok(("string", "west:k0", ""), "5")
    east.ok(("string", "shared:s0", ""), "east:1")
    west.ok(("string", "shared:s0", ""), "west:2")
    east.ok(("hash", "shared:h", "f0"), "east:1")
    west.ok(("set", "shared:set", "m0"), PRESENT)
    east.increments_acked, west.increments_acked = 10, 7
    east.increments_unsure, west.increments_unsure = [2, 5], [3]
    west.ok(TTL_ITEM, "west:9")
    west.ttl_windows["west:9"] = (NOW, NOW + 0.01)
    return {"east": east, "west": west}


def _reading(**changes: object) -> RegionReading:
    items = {
        ("string", "east:k0", ""): "3", ("string", "east:k1", ""): "4",
        ("string", "west:k0", ""): "5", ("string", "west:k1", ""): None,
        ("string", "shared:s0", ""): "west:2", TTL_ITEM: "west:9",
        ("hash", "shared:h", "f0"): "east:1", ("set", "shared:set", "m0"): PRESENT,
    }
    items.update({item: value for item, value in changes.pop("items", {}).items()})  # type: ignore[attr-defined]
    reading = RegionReading(items, counter=17, deadline=int((NOW + 3600) * 1000))
    for name, value in changes.items():
        setattr(reading, name, value)
    return reading


def _kinds(readings: dict[str, RegionReading], ledgers: dict[str, Ledger] | None = None) -> list[str]:
    return [v.kind for v in check(readings, ledgers or _ledgers(), KEYS)]


def test_regions_that_agree_on_allowed_outcomes_have_no_violation_and_one_digest() -> None:
    readings = {"east": _reading(), "west": _reading()}
    assert check(readings, _ledgers(), KEYS) == []
    assert readings["east"].digest == readings["west"].digest


def test_an_acknowledged_own_write_that_is_gone_is_lost() -> None:
    older = {("string", "east:k1", ""): "2"}
    violations = check({"east": _reading(items=older), "west": _reading(items=older)}, _ledgers(), KEYS)
    assert [(v.kind, v.subject) for v in violations] == [("lost", "string east:k1")]
    # A later write that may have happened (no answer) may be what is there instead.
    ledgers = _ledgers()
    ledgers["east"].failed(("string", "east:k1", ""), "9")
    later = {("string", "east:k1", ""): "9"}
    assert _kinds({"east": _reading(items=later), "west": _reading(items=later)}, ledgers) == []


def test_regions_that_differ_diverge_whatever_they_hold() -> None:
    readings = {"east": _reading(), "west": _reading(items={("string", "shared:s0", ""): "east:1"})}
    assert readings["east"].digest != readings["west"].digest
    violations = check(readings, _ledgers(), KEYS)
    assert [(v.kind, v.subject) for v in violations] == [("diverged", "string shared:s0")]
    assert "'east': 'west:2', 'west': 'east:1'" in violations[0].detail
    assert _kinds({"east": _reading(), "west": _reading(counter=19)}) == ["diverged"]
    assert _kinds({"east": _reading(), "west": _reading(deadline=-1)})[0] == "diverged"


def test_a_shared_item_holds_some_regions_newest_write_that_happened() -> None:
    # Either region's last acknowledged write may win; one that nobody wrote may not.
    for value, kinds in (("east:1", []), ("west:2", []), ("east:0", ["lww"]), (None, ["lww"])):
        item = {("string", "shared:s0", ""): value}
        assert _kinds({"east": _reading(items=item), "west": _reading(items=item)}) == kinds, value
    # An item no region acknowledged may be absent, or hold an unsure write.
    ledgers = _ledgers()
    ledgers["west"].failed(("hash", "shared:h", "f1"), "west:7")
    keys = RegionKeys(REGIONS, own_keys=2, strings=("shared:s0",), fields=("f0", "f1"), members=("m0",))
    for value in (None, "west:7"):
        item = {("hash", "shared:h", "f1"): value}
        assert check({"east": _reading(items=item), "west": _reading(items=item)}, ledgers, keys) == []


@pytest.mark.parametrize(("value", "ok"), [
    (17, True), (19, True), (20, True), (22, True), (25, True),  # 17 acked, + a subset of {2, 5, 3}
    (16, False), (18, False), (26, False), ("abc", False),
])
def test_the_counter_holds_every_acknowledged_increment_and_a_subset_of_the_unsure(value: object,
                                                                                   ok: bool) -> None:
    kinds = _kinds({"east": _reading(counter=value), "west": _reading(counter=value)})
    assert kinds == ([] if ok else ["counter"])


def test_possible_sums_are_the_subset_sums() -> None:
    mask = possible_sums([2, 5, 3])
    assert {s for s in range(12) if mask >> s & 1} == {0, 2, 3, 5, 7, 8, 10}


def test_the_ttl_string_keeps_the_deadline_its_winning_write_set() -> None:
    late = int((NOW + 3600 + 60) * 1000)
    for deadline, kinds in ((late, ["ttl"]), (-1, ["ttl"])):
        assert _kinds({"east": _reading(deadline=deadline), "west": _reading(deadline=deadline)}) == kinds
    gone = {TTL_ITEM: None}
    ledgers = _ledgers()
    ledgers["west"].acked.pop(TTL_ITEM)
    ledgers["west"].failed(TTL_ITEM, "west:9")
    assert _kinds({"east": _reading(items=gone, deadline=-2), "west": _reading(items=gone, deadline=-2)},
                  ledgers) == []


def test_a_write_refused_with_an_error_no_failover_gives_is_a_violation() -> None:
    ledgers = _ledgers()
    ledgers["west"].unexpected.append("west before the faults: SET west:k0 1: ERR out of memory")
    assert _kinds({"east": _reading(), "west": _reading()}, ledgers) == ["error"]


@pytest.mark.parametrize(("answer", "category", "expected", "may_have_happened"), [
    (Answer(Said.UNKNOWN, error="x: no answer in 5s", category="timeout"), "timeout", True, True),
    (Answer(Said.FAIL, error="connect x", category="connect"), "connect", True, False),
    (Answer(Said.FAIL, error="TRYAGAIN engram: no lease", category="TRYAGAIN"), "TRYAGAIN", True, False),
    (Answer(Said.UNKNOWN, error="UNKNOWN the outcome of this command is unknown", category="UNKNOWN"),
     "UNKNOWN", True, True),
    (Answer(Said.UNKNOWN, error="ERR engram: SET with a TTL is refused", category="ERR"), "ERR", False, True),
])
def test_failures_are_classified_as_a_failover_answers_or_as_findings(
        answer: Answer, category: str, expected: bool, may_have_happened: bool) -> None:
    assert failure(answer) == (category, expected)
    assert (answer.outcome is not Said.FAIL) == may_have_happened


def test_acks_are_counted_by_when_they_were_sent_and_answered() -> None:
    ledger = Ledger(sent=[1.0, 2.0, 3.0, 4.0], done=[1.5, 2.5, 3.5, 6.0])
    assert ledger.acks_since(2.0) == 3 and ledger.acks_since(2.0, before=5.0) == 2
    assert ledger.first_ack_after(2.1) == pytest.approx(1.4) and ledger.first_ack_after(4.5) is None


# ---- draining ------------------------------------------------------------------------------------


def _row(to: str, source: str, copied: int | None, applied: int | None, idle: float | None = 0.5,
         error: str | None = None) -> dict[str, object]:
    return {"to": to, "from": source, "shard": 0, "not_copied": copied, "not_applied": applied, "idle": idle,
            "error": error}


def test_a_link_drains_when_nothing_is_left_to_copy_and_a_later_reading_has_nothing_to_apply() -> None:
    tracker = DrainTracker.of(REGIONS, 1)
    # Both zero in one reading is not enough: the copy may have landed after the applier was read.
    assert not tracker.feed([_row("east", "west", 0, 0), _row("west", "east", 3, 0)], 0.5)
    assert not tracker.feed([_row("east", "west", 2, 0), _row("west", "east", 0, 4)], 1.0)
    assert tracker.drained == {("east", "west", 0): 1.0}
    # An erroring or long-silent row says nothing.
    assert not tracker.feed([_row("west", "east", 0, 0, error="no inbound stream yet")], 1.5)
    assert not tracker.feed([_row("west", "east", 0, 0, idle=30.0)], 2.0)
    assert tracker.missing() == [("west", "east", 0)]
    assert tracker.feed([_row("west", "east", 1, 0)], 2.5)
    assert tracker.drained == {("east", "west", 0): 1.0, ("west", "east", 0): 2.5}


# ---- keys and options ----------------------------------------------------------------------------


def test_the_counter_and_ttl_keys_come_from_the_clusters_patterns() -> None:
    assert key_for(["counter:*"], "counter:hits") == "counter:hits"
    assert key_for(["hits:*"], "counter:hits") == "hits:chaos"
    assert key_for(["n?"], "counter:hits") == "nc"
    assert key_for(["[ab]*"], "counter:hits") is None
    keys, notes = workload_keys(REGIONS, ["counter:*"], ["session:*"])
    assert (keys.counter, keys.ttl, notes) == ("counter:hits", "session:chaos", [])
    keys, notes = workload_keys(REGIONS, [], ["shared:s0"])  # a pattern only a workload key matches
    assert (keys.counter, keys.ttl) == (None, None) and len(notes) == 2


def _handle(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="engram")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["chaos", *argv])
    return int(args.func(args))


def test_options_of_the_single_region_scenario_are_refused_with_regions(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert _handle(["--regions", "east,west", "--clients", "3", "--history", "h.json"]) == 2
    err = capsys.readouterr().err
    assert "--clients, --history cannot be used with --regions" in err
    assert _handle(["--regions", "east,west", "--faults", "pause-primary"]) == 2
    err = capsys.readouterr().err
    assert "choose from kill-primary, kill-journal-leader, freeze-region with --regions" in err
    assert _handle(["--regions", "east", "--duration", "1"]) == 2
    assert "two or more distinct regions" in capsys.readouterr().err
    assert _handle(["--regions", "east,west", "--seeds", "1-2", "--name", "x"]) == 2
    assert "drop --name" in capsys.readouterr().err


def test_a_sweep_line_of_a_multi_region_run_counts_violations_not_linearizability() -> None:
    ledgers = _ledgers()
    ledgers["east"].outcomes["ok"], ledgers["west"].outcomes["ok"] = 4, 3
    readings = {"east": _reading(), "west": _reading()}
    report = RegionChaosReport(seed=5, duration=30, interval=6, regions=REGIONS, keys=KEYS, settings={},
                               started=0.0, ledgers=ledgers, readings=readings)
    line = summary_line(summarise(5, report, 41.0))
    assert line == "seed 5: ok, 7 acknowledged writes, 0 lost, 0 violations, 0 faults, 41s"
    report.violations = check({"east": _reading(), "west": _reading(counter=16)}, _ledgers(), KEYS)
    assert "FAILED" in summary_line(summarise(5, report, 41.0))
