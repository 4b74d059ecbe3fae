"""Which commands of another region's journal entry the applier runs: the stamped writes that region
made itself, nothing else."""

from __future__ import annotations

import pytest

from engram.multiregion.applier import STUCK_AFTER, OriginStamps, applier_stuck, origin_stamps
from engram.multiregion.inbound import InboundError
from engram.valkey.connection import encode


def _payload(*commands: tuple[str, ...]) -> bytes:
    return b"".join(encode(list(c)) for c in commands)


def test_only_the_origins_own_stamped_writes_are_taken_in_order() -> None:
    payload = _payload(
        ("SELECT", "0"), ("MULTI",),
        ("ENGRAM.MR.APPLY", "10", "east", "string", "k", "v"),
        ("ENGRAM.MR.APPLY", "11", "ap", "string", "k", "third-region"),
        ("engram.mr.apply", "12", "east", "set", "s", "1", "m"),
        ("EXEC",), ("ENGRAM.MR.COLLECT", "9", "east"),
    )
    assert origin_stamps(payload, "east").writes == [
        [b"ENGRAM.MR.APPLY", b"10", b"east", b"string", b"k", b"v"],
        [b"engram.mr.apply", b"12", b"east", b"set", b"s", b"1", b"m"],
    ]
    assert origin_stamps(payload, "west").writes == []


def test_bytes_that_end_inside_a_command_are_refused() -> None:
    payload = _payload(("ENGRAM.MR.APPLY", "10", "east", "string", "k", "v"))
    with pytest.raises(InboundError, match="end inside a command"):
        origin_stamps(payload[:-3], "east")


def test_bytes_that_are_not_resp_are_refused() -> None:
    with pytest.raises(InboundError, match="do not parse"):
        origin_stamps(b"*1\r\n:5\r\n", "east")


def test_the_newest_origin_clock_counts_clock_stamps_and_writes_but_no_other_region() -> None:
    payload = _payload(
        ("ENGRAM.MR.APPLY", "10", "east", "string", "k", "v"),
        ("ENGRAM.MR.CLOCK", "15", "east"),
        ("ENGRAM.MR.APPLY", "99", "ap", "string", "k", "third-region"),
        ("ENGRAM.MR.CLOCK", "98", "ap"),
    )
    stamps = origin_stamps(payload, "east")
    assert stamps.hlc == 15 and [w[1] for w in stamps.writes] == [b"10"]
    assert origin_stamps(_payload(("SELECT", "0")), "east") == OriginStamps([], 0)


def test_a_clock_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(InboundError, match="not a number"):
        origin_stamps(_payload(("ENGRAM.MR.CLOCK", "soon", "east")), "east")


def test_an_applier_is_stuck_only_when_entries_wait_and_its_position_stood_still_long_enough() -> None:
    assert applier_stuck(3, STUCK_AFTER)
    assert not applier_stuck(3, STUCK_AFTER - 0.1)  # busy, or just started on a backlog
    assert not applier_stuck(0, 10 * STUCK_AFTER)  # nothing to apply: idle, not stuck (a cut link)
