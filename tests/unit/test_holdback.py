"""The truncation hold-back: a region never truncates a shard's journal past an entry a linked
region has not copied."""

from __future__ import annotations

from engram.multiregion.holdback import Copied, Hold, hold_back


def test_regions_that_copied_past_the_snapshot_hold_nothing_back() -> None:
    assert hold_back(35, [Copied("west", 34), Copied("ap", 90)]) == Hold(35)


def test_the_region_that_copied_least_sets_the_point_and_is_named() -> None:
    hold = hold_back(35, [Copied("west", 21), Copied("ap", 10), Copied("us", 50)])
    assert (hold.keep_from, hold.held_by) == (11, ("ap", "west"))
    assert "ap, west" in hold.reason and "11" in hold.reason


def test_a_region_that_copied_nothing_keeps_the_whole_journal() -> None:
    assert hold_back(35, [Copied("west", 0)]).keep_from == 1


def test_a_region_that_cannot_be_asked_stops_truncation_and_says_why() -> None:
    hold = hold_back(35, [Copied("west", 40), Copied("ap", None, "cut off")])
    assert (hold.keep_from, hold.held_by) == (None, ("ap",))
    assert "ap: cut off" in hold.reason


def test_without_a_snapshot_nothing_goes_whatever_the_regions_copied() -> None:
    assert hold_back(None, [Copied("west", 100)]) == Hold(None)


def test_without_linked_regions_the_snapshots_decide() -> None:
    assert hold_back(35, []) == Hold(35)
