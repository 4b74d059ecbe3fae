"""The pure parts of `engram chaos --regions`: the seeded fault schedule, the ledgers, the
convergence / last-writer-wins / counter / TTL checks on hand-made readings, the drain decision,
the workload's keys from a cluster's patterns, the figures per fault, and the options refused with
--regions; and the cut's injector against a stand-in for the platform's partition and heal."""

from __future__ import annotations

import argparse
import itertools
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from engram.chaos.cli import add_parser
from engram.chaos.client import Answer
from engram.chaos.faults import HOLD_SHARE, MIN_FAULT_INTERVAL
from engram.chaos.history import Outcome as Said
from engram.chaos.region_check import RegionReading, check, possible_sums
from engram.chaos.region_drain import DrainTracker
from engram.chaos.region_faults import (
    ALL_REGION_KINDS,
    CUT_SECONDS,
    FREEZE_SECONDS,
    RegionFault,
    RegionFaultKind,
    RegionFaults,
    hold_for,
    links_of,
    plan_region_faults,
)
from engram.chaos.region_report import RegionChaosReport, fault_figures
from engram.chaos.region_runner import key_for, workload_keys
from engram.chaos.region_workload import PRESENT, Ledger, RegionKeys, failure
from engram.chaos.sweep import summarise, summary_line
from engram.platforms.local import cluster, multi_region
from engram.platforms.local.cluster import LocalError
from engram.platforms.local.link_relay import cut_links, cut_marker, links_to_cut

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
    # Kinds come in shuffled rounds: every kind once in each round (the last may be cut short).
    size = len(ALL_REGION_KINDS)
    for start in range(0, len(plan) - size + 1, size):
        assert {p.kind for p in plan[start:start + size]} == set(ALL_REGION_KINDS)


def test_a_freeze_is_held_a_few_seconds_or_shortened_to_fit_its_interval() -> None:
    for interval, hold in ((12.0, FREEZE_SECONDS), (4.0, 4.0 * HOLD_SHARE)):
        plan = plan_region_faults(1, 60.0, REGIONS, (RegionFaultKind.FREEZE_REGION,), interval)
        assert plan and all(p.hold == hold for p in plan)
    kills = plan_region_faults(1, 60.0, REGIONS, (RegionFaultKind.KILL_PRIMARY,), 6.0)
    assert all(p.hold == 0 for p in kills)
    # At 28 s with an 8 s cooldown a freeze at 16 s would end at 20.5 s, past 20 s: not planned.
    freezes = plan_region_faults(1, 28.0, REGIONS, (RegionFaultKind.FREEZE_REGION,), 6.0)
    assert [p.at for p in freezes] == [4.0, 10.0]
    # Where neither a freeze nor a cut fits any more, a kill still does: it is taken instead of
    # ending the plan.
    kills = {RegionFaultKind.KILL_PRIMARY, RegionFaultKind.KILL_JOURNAL_LEADER}
    for seed in range(1, 6):
        late = plan_region_faults(seed, 14.0, REGIONS, ALL_REGION_KINDS, 4.0)
        assert len(late) == 1 and late[0].kind in kills, late
    with pytest.raises(ValueError, match="at least"):
        plan_region_faults(1, 60.0, REGIONS, ALL_REGION_KINDS, MIN_FAULT_INTERVAL - 0.1)


def test_a_cut_is_held_like_a_freeze_and_shortened_to_fit_its_interval() -> None:
    cut = RegionFaultKind.CUT_REGION
    assert hold_for(cut, 12.0) == CUT_SECONDS and hold_for(cut, 4.0) == 4.0 * HOLD_SHARE
    assert hold_for(RegionFaultKind.KILL_PRIMARY, 12.0) == 0.0
    for interval, hold in ((12.0, CUT_SECONDS), (5.0, 5.0 * HOLD_SHARE)):
        plan = plan_region_faults(3, 60.0, REGIONS, (cut,), interval)
        assert plan and all(p.kind is cut and p.hold == hold for p in plan), plan
        assert all(p.until < following.at for p, following in itertools.pairwise(plan))
    # At 28 s with an 8 s cooldown a cut at 16 s would end at 20.5 s, past 20 s: not planned.
    assert [p.at for p in plan_region_faults(1, 28.0, REGIONS, (cut,), 6.0)] == [4.0, 10.0]


@pytest.mark.parametrize("interval", [2.0, 4.0, 5.0, 8.0, 12.0])
def test_every_kind_comes_once_a_round_and_every_held_fault_ends_before_the_cooldown(interval: float) -> None:
    regions = ("east", "west", "south")
    for seed in range(30):
        plan = plan_region_faults(seed, 60.0, regions, ALL_REGION_KINDS, interval)
        assert plan == plan_region_faults(seed, 60.0, regions, ALL_REGION_KINDS, interval)
        assert all(p.hold == hold_for(p.kind, interval) and p.until <= 60.0 - 8.0 for p in plan), plan
        # Rounds run until a held fault no longer fits: up to there, each holds every kind once.
        fits = [p for p in plan if 60.0 - 8.0 - p.at >= hold_for(RegionFaultKind.CUT_REGION, interval)]
        size = len(ALL_REGION_KINDS)
        for start in range(0, len(fits) - size + 1, size):
            assert sorted(p.kind for p in fits[start:start + size]) == sorted(ALL_REGION_KINDS), plan
    kinds = {p.kind for seed in range(30) for p in plan_region_faults(seed, 60.0, regions, ALL_REGION_KINDS,
                                                                         interval)}
    assert kinds == set(ALL_REGION_KINDS)


def test_a_regions_links_are_read_from_the_multi_region_status() -> None:
    status = {"links": [{"regions": ["east", "south"], "cut": True},
                        {"regions": ["east", "west"], "cut": False},
                        {"regions": ["south", "west"], "cut": True}]}
    assert links_of(status, "south") == (["east-south", "south-west"], [])
    assert links_of(status, "east") == (["east-south"], ["east-west"])
    assert links_of({}, "east") == ([], [])


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


# ---- figures per fault ---------------------------------------------------------------------------


def _fault(kind: RegionFaultKind, region: str, started: float, ended: float) -> RegionFault:
    return RegionFault(kind, region, "target", started, ended)


def test_a_cut_region_goes_on_writing_and_its_first_write_counts_from_the_cut() -> None:
    # West wrote through its cut from 2.0 s to 5.0 s; east went on too.
    ledgers = {"east": Ledger(sent=[1.0, 2.5, 4.0], done=[1.1, 2.6, 4.1]),
               "west": Ledger(sent=[1.0, 2.2, 3.0, 6.0], done=[1.1, 2.3, 3.1, 6.1])}
    cut = _fault(RegionFaultKind.CUT_REGION, "west", 2.0, 5.0)
    findings, notes = fault_figures([cut], ledgers)
    assert (findings, notes) == ([], [])
    assert cut.writes_again_after == pytest.approx(0.3)  # counted from the cut, not from its heal
    # The same writes under a freeze are a finding, and its first write counts from its end.
    frozen = _fault(RegionFaultKind.FREEZE_REGION, "west", 2.0, 5.0)
    findings, notes = fault_figures([frozen], ledgers)
    assert [(v.kind, v.subject) for v in findings] == [("frozen", "west")]
    assert "2 writes" in findings[0].detail
    assert frozen.writes_again_after == pytest.approx(1.1)
    # A freeze that could not stop everything may have let writes through: no finding.
    frozen.complete = False
    assert fault_figures([frozen], ledgers) == ([], [])


def test_a_cut_region_that_took_no_write_alone_gets_a_note_not_a_violation() -> None:
    ledgers = {"east": Ledger(sent=[1.0, 3.0], done=[1.1, 3.1]),
               "west": Ledger(sent=[1.0, 6.0], done=[1.1, 6.1])}
    cut = _fault(RegionFaultKind.CUT_REGION, "west", 2.0, 5.0)
    findings, notes = fault_figures([cut], ledgers)
    assert findings == [] and len(notes) == 1 and notes[0].startswith("west acknowledged no write"), notes
    assert cut.writes_again_after == pytest.approx(4.1)
    # A kill is over at once: no note, and its first write counts from it.
    kill = _fault(RegionFaultKind.KILL_PRIMARY, "west", 2.0, 2.0)
    assert fault_figures([kill], ledgers) == ([], []) and kill.writes_again_after == pytest.approx(4.1)


def test_the_report_shows_a_cut_with_what_every_region_took_meanwhile_and_when_it_linked_again() -> None:
    ledgers = {"east": Ledger(sent=[1.0, 3.0], done=[1.1, 3.1]),
               "west": Ledger(sent=[2.5, 3.5], done=[2.6, 3.6])}
    cut = _fault(RegionFaultKind.CUT_REGION, "west", 2.0, 5.0)
    cut.target, cut.linked_again_after = "links of west", 1.24
    kill = _fault(RegionFaultKind.KILL_PRIMARY, "east", 7.0, 7.0)
    report = RegionChaosReport(seed=5, duration=30, interval=6, regions=REGIONS, keys=KEYS, settings={},
                               started=0.0, ledgers=ledgers, faults=[cut, kill])
    fault_figures(report.faults, ledgers)
    shown = report.to_json()["faults_injected"]
    assert shown[0]["acknowledged_meanwhile"] == {"east": 1, "west": 2}
    assert (shown[0]["linked_again_after"], shown[0]["writes_again_after"]) == (1.2, 0.6)
    assert "linked_again_after" not in shown[1] and "acknowledged_meanwhile" not in shown[1]
    assert report.to_json()["fault_counts"] == {"cut-region": 1, "kill-primary": 1}
    assert "first write after the cut 0.6s, linked again 1.2s after the heal" in report.text()


# ---- the cut's injector, against a stand-in for the platform ---------------------------------------


class _Links:
    """multi_region.partition and heal as markers only: a partition can be made to fail once its
    markers are written, as one that times out does."""

    def __init__(self, regions: tuple[str, ...], fail: BaseException | None = None) -> None:
        self.regions, self.fail, self.heals = regions, fail, 0

    def partition(self, base: Path, name: str, named: list[str], timeout: float = 0.0,
                  progress: Callable[[str], None] = lambda _m: None) -> dict[str, object]:
        cuts = multi_region.cuts_dir(base, name)
        cuts.mkdir(parents=True, exist_ok=True)
        for a, b in links_to_cut(self.regions, named):
            cut_marker(cuts, a, b).touch()
            progress(f"cutting the link {a}-{b}")
        if self.fail is not None:
            raise self.fail
        cut = set(cut_links(cuts))
        return {"links": [{"regions": list(pair), "cut": pair in cut}
                          for pair in itertools.combinations(sorted(self.regions), 2)]}

    def heal(self, base: Path, name: str, named: tuple[str, ...] | list[str] = (), timeout: float = 0.0,
             progress: Callable[[str], None] = lambda _m: None) -> dict[str, object]:
        self.heals += 1
        cuts = multi_region.cuts_dir(base, name)
        for a, b in links_to_cut(self.regions, named) if named else cut_links(cuts):
            cut_marker(cuts, a, b).unlink(missing_ok=True)
            progress(f"healing the link {a}-{b}")
        return {}


def _injector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: _Links) -> RegionFaults:
    monkeypatch.setattr(multi_region, "partition", links.partition)
    monkeypatch.setattr(multi_region, "heal", links.heal)
    return RegionFaults(tmp_path, "mr", random.Random(1))


def _cut_now(tmp_path: Path) -> list[tuple[str, str]]:
    return cut_links(multi_region.cuts_dir(tmp_path, "mr"))


def test_a_cut_isolates_its_region_until_healed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    links = _Links(("east", "west", "south"))
    faults = _injector(tmp_path, monkeypatch, links)
    fault = faults.inject(RegionFaultKind.CUT_REGION, "south")
    assert (fault.kind, fault.region, fault.target, fault.complete) == (
        RegionFaultKind.CUT_REGION, "south", "links of south", True)
    assert fault.detail.startswith("cut east-south, south-west;"), fault.detail
    assert _cut_now(tmp_path) == [("east", "south"), ("south", "west")]
    faults.heal(fault)
    assert _cut_now(tmp_path) == [] and fault.ended >= fault.started and fault.linked_again_after is not None
    faults.heal(fault)  # healed once only
    assert links.heals == 1


def test_a_cut_that_cannot_be_seen_is_healed_and_skipped(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    faults = _injector(tmp_path, monkeypatch, _Links(REGIONS, fail=LocalError("the links did not go down")))
    with pytest.raises(LocalError, match="could not cut west off: the links did not go down"):
        faults.inject(RegionFaultKind.CUT_REGION, "west")
    assert _cut_now(tmp_path) == [] and faults.cut == []


def test_heal_all_leaves_no_link_cut_whatever_happened(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    links = _Links(("east", "west", "south"))
    faults = _injector(tmp_path, monkeypatch, links)
    held = faults.inject(RegionFaultKind.CUT_REGION, "east")
    # A second cut interrupted before it was recorded leaves its markers behind.
    links.fail = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        faults.inject(RegionFaultKind.CUT_REGION, "west")
    assert ("south", "west") in _cut_now(tmp_path)
    faults.heal_all()
    assert _cut_now(tmp_path) == [] and faults.cut == [] and held.ended >= held.started
    # With nothing left cut there is nothing to heal.
    heals = links.heals
    faults.heal_all()
    assert links.heals == heals


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
    assert "choose from kill-primary, kill-journal-leader, freeze-region, cut-region with --regions" in err
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


def test_a_freeze_ends_with_its_first_sigcont_not_its_last(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A write can commit once the journal and the primary run again: an answer that comes while the
    # last processes are still being continued is not one the frozen region gave.
    state = SimpleNamespace(journal=[SimpleNamespace(target=f"journal-{z}") for z in "abc"],
                            nodes=[SimpleNamespace(id="mr-east-s0-n0"), SimpleNamespace(id="mr-east-s0-n1")])
    sent: list[tuple[str, signal.Signals, float]] = []

    def kill(_base: object, _name: str, target: str, sig: signal.Signals) -> str:
        sent.append((target, sig, time.monotonic()))
        return ""

    monkeypatch.setattr(cluster, "load_running", lambda _base, _name: state)
    monkeypatch.setattr(cluster, "kill", kill)
    faults = RegionFaults(tmp_path, "mr", random.Random(1))
    fault = faults.inject(RegionFaultKind.FREEZE_REGION, "east")
    stops = [t for _target, sig, t in sent if sig is signal.SIGSTOP]
    assert fault.complete and len(stops) == 5 and fault.started >= max(stops)
    faults.heal(fault)
    conts = [t for _target, sig, t in sent if sig is signal.SIGCONT]
    assert len(conts) == 5 and fault.started <= fault.ended <= min(conts)
    assert faults.frozen == []
